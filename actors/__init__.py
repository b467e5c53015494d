"""Spindle's actors: thread actors, the turn loop, the model client, the manager."""

from .handle import ThreadClosedError, ThreadHandle, TurnAbortedError, TurnError
from .manager import ThreadManager, ThreadShutdownReport, open_runtime

__all__ = [
    "ThreadClosedError",
    "ThreadHandle",
    "ThreadManager",
    "ThreadShutdownReport",
    "TurnAbortedError",
    "TurnError",
    "open_runtime",
]
