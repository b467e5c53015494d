"""The app-server: Codex v2 JSON-RPC connections on top of the thread runtime.

`AppServer` (subscriptions, thread closing) <- `Connection` (reader, worker, pumps, writer) <-
`methods` (the method table) <- `thread_methods` / `turn_methods` (handlers) <- `context`
(what a handler gets), `views` (v2 thread objects), `turns` (turns rebuilt from rollouts),
`notify` (events to notifications), `errors` (Spindle errors to JSON-RPC codes). Under the
connections: `transport` (JSON lines or WebSocket frames), and `listeners` (`serve`: stdio,
`ws://` and `unix://` listeners, the HTTP gate, limits) with `unix_socket` (the socket file).
"""

from .connection import Connection
from .listeners import Bound, Limits, ListenError, serve
from .server import AppServer

__all__ = ["AppServer", "Bound", "Connection", "Limits", "ListenError", "serve"]
