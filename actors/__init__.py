"""Spindle's actors: thread actors, the turn loop, the model client, the manager."""

from .manager import ThreadManager, ThreadShutdownReport, open_runtime
from .thread import ThreadClosedError, ThreadHandle, TurnAbortedError, TurnError

__all__ = [
    "ThreadClosedError",
    "ThreadHandle",
    "ThreadManager",
    "ThreadShutdownReport",
    "TurnAbortedError",
    "TurnError",
    "open_runtime",
]
