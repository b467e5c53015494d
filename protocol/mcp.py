"""MCP servers as the model and the client see them: statuses, and the model-visible tool names.

Pure data. A tool `t` of server `s` is offered to the model as the flat function
`mcp__<s>__<t>`: characters outside `[A-Za-z0-9_-]` become `_`, and a name over 64 bytes, or one
that collides with a name already taken, has its tool part cut and suffixed with `_` and 12 hex
digits of the SHA-1 of the raw `server/tool` (Codex's `mcp_tool_names.rs` rule).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container
from typing import Literal

McpStartupStatus = Literal["starting", "ready", "failed", "cancelled"]
"""A server's start-up as `mcpServer/startupStatus/updated` reports it."""
McpRuntimeStatus = Literal["notStarted", "starting", "connected", "failed", "cancelled", "disabled"]
"""A server's state as `mcpServerStatus/list` reports it."""

RUNTIME_STATUS: dict[str, McpRuntimeStatus] = {
    "starting": "starting", "ready": "connected", "failed": "failed", "cancelled": "cancelled",
}

TOOL_NAME_MAX_BYTES = 64
_PREFIX = "mcp"
_DELIMITER = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 12


def sanitize(part: str) -> str:
    return _UNSAFE.sub("_", part)


def tool_name(server: str, tool: str, taken: Container[str] = ()) -> str:
    """The model-visible name of `server`'s `tool`, unique among `taken`."""
    head = f"{_PREFIX}{_DELIMITER}{sanitize(server)}{_DELIMITER}"
    name = head + sanitize(tool)
    if len(name.encode()) <= TOOL_NAME_MAX_BYTES and name not in taken:
        return name
    digest = hashlib.sha1(f"{server}/{tool}".encode()).hexdigest()[:_HASH_CHARS]
    room = TOOL_NAME_MAX_BYTES - len(head) - 1 - _HASH_CHARS
    return f"{head}{sanitize(tool)[:max(room, 0)]}_{digest}"[:TOOL_NAME_MAX_BYTES]
