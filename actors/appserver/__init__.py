"""The app-server: Codex v2 JSON-RPC connections on top of the thread runtime.

`AppServer` (subscriptions, thread closing) <- `Connection` (reader, worker, pumps, writer) <-
`methods` (the method table) <- `thread_methods` / `turn_methods` (handlers) <- `context`
(what a handler gets), `views` (v2 thread objects), `turns` (turns rebuilt from rollouts),
`notify` (events to notifications), `errors` (Spindle errors to JSON-RPC codes).
"""

from .connection import Connection
from .server import AppServer

__all__ = ["AppServer", "Connection"]
