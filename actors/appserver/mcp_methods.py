"""Handlers of the MCP methods: `mcpServerStatus/list` and `config/mcpServer/reload`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from spindle.actors.runtime.mcp_manager import McpServer
from spindle.actors.runtime.mcp_refresh import McpRefreshError
from spindle.protocol.appserver import v2, v2mcp
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from spindle.protocol.config import McpServerConfig
from spindle.protocol.mcp import RUNTIME_STATUS

from .context import RequestContext, loaded, thread_id_param


async def mcp_server_status_list(ctx: RequestContext, params: v2mcp.McpServerStatusListParams) -> v2mcp.McpServerStatusListResult:
    """With `threadId`: that thread's servers (its session layer included) and how they run;
    without: the servers of the runtime's config, `runtimeStatus` null."""
    if params.thread_id is not None:
        handle = loaded(ctx, thread_id_param(params.thread_id))
        statuses = [_running(server) for server in handle.mcp_servers.values()]
    else:
        statuses = [_configured(name, cfg) for name, cfg in ctx.manager.config.mcp_servers.items()]
    if params.server_name is not None:
        statuses = [s for s in statuses if s.name == params.server_name]
    statuses.sort(key=lambda s: s.name)
    return _page(statuses, params.cursor, params.limit)


def _page(statuses: list[v2mcp.McpServerStatus], cursor: str | None, limit: int | None) -> v2mcp.McpServerStatusListResult:
    try:
        start = int(cursor) if cursor else 0
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"Invalid params: bad cursor {cursor!r}") from None
    size = limit if limit and limit > 0 else len(statuses) or 1
    end = start + size
    return v2mcp.McpServerStatusListResult(data=statuses[start:end], next_cursor=str(end) if end < len(statuses) else None)


def _base(name: str, cfg: McpServerConfig) -> v2mcp.McpServerStatus:
    origin = None
    if cfg.url:
        parts = urlsplit(cfg.url)
        origin = f"{parts.scheme}://{parts.netloc}"
    auth = "bearerToken" if cfg.bearer_token_env_var else "unsupported"
    return v2mcp.McpServerStatus(name=name, tools={}, auth_status=auth, http_origin=origin)  # type: ignore[arg-type]


def _configured(name: str, cfg: McpServerConfig) -> v2mcp.McpServerStatus:
    return _base(name, cfg)


def _running(server: McpServer) -> v2mcp.McpServerStatus:
    status = _base(server.name, server.config)
    if server.status is None:
        status.runtime_status = "disabled"
        return status
    status.runtime_status = RUNTIME_STATUS[server.status]
    status.tools = {tool.name: _dump(tool) for tool in server.allowed_tools()}
    status.tools_error = server.error
    if server.server_info is not None:
        status.server_info = _dump(server.server_info)
    if server.capabilities is not None:
        status.server_capabilities = _dump(server.capabilities)
    return status


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


async def config_mcp_server_reload(ctx: RequestContext, params: v2mcp.NoParams) -> v2.EmptyResult:
    """The strict refresh of every loaded thread's MCP servers; -32600 names the thread at fault."""
    try:
        await ctx.manager.refresh_mcp_servers(strict=True)
    except McpRefreshError as exc:
        raise invalid_request(str(exc)) from None
    return v2.EmptyResult()


