"""Spindle's actors, in rooms that import only downward.

`runtime` (threads, turns, manager) <- `appserver` (JSON-RPC connections) <- `testing` (mock
model, RPC client) <- `loadtest` (`spindle load`) <- `cli` (the `spindle` command, REPL helpers).
"""
