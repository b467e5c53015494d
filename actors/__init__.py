"""Spindle's actors, in rooms that import only downward.

`runtime` (threads, turns, manager) <- `appserver` (JSON-RPC connections) and `testing` (mock
model, RPC client) <- `loadtest` (`spindle load`) <- `cli` (the `spindle` command, REPL helpers).
README's architecture section draws it; tests/test_layout.py enforces it.
"""
