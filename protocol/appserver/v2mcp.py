"""App-server v2 wire types of the MCP methods: `mcpServerStatus/list`, `config/mcpServer/reload`,
and the `mcpServer/startupStatus/updated` notification (the `mcpToolCall` item is in `v2`)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .v2 import Inbound, Wire


class McpServerStatusListParams(Inbound, kw_only=True, frozen=True):
    cursor: str | None = None
    limit: int | None = None
    detail: Literal["full", "toolsAndAuthOnly"] | None = None
    thread_id: str | None = None
    server_name: str | None = None
    environment_id: str | None = None


class NoParams(Inbound, kw_only=True, frozen=True):
    """Methods whose params are typed `null` (absent or null accepted)."""


McpRuntimeStatusV2 = Literal["notStarted", "starting", "connected", "authenticationRequired", "failed", "cancelled", "disabled"]


class McpServerStatus(Wire, kw_only=True):
    name: str
    tools: dict[str, Any]
    resources: list[Any] = msgspec.field(default_factory=list)
    resource_templates: list[Any] = msgspec.field(default_factory=list)
    auth_status: Literal["unknown", "unsupported", "notLoggedIn", "bearerToken", "oAuth"] = "unsupported"
    runtime_status: McpRuntimeStatusV2 | None = None
    tools_error: str | None = None
    server_info: dict[str, Any] | None = None
    server_capabilities: dict[str, Any] | None = None
    tool_list_meta: Any = None
    http_origin: str | None = None
    plugin_id: str | None = None
    environment_id: str | None = None


class McpServerStatusListResult(Wire, kw_only=True):
    data: list[McpServerStatus]
    next_cursor: str | None = None


class McpStartupStatusNotice(Wire, kw_only=True):
    """mcpServer/startupStatus/updated."""

    name: str
    status: Literal["starting", "ready", "failed", "cancelled"]
    thread_id: str | None = None
    environment_id: str | None = None
    error: str | None = None
    failure_reason: str | None = None
