"""The one refresh path of MCP servers, for every trigger (`config/mcpServer/reload`, the
`refresh_mcp_servers` op, config reloads and writes).

Per loaded thread: its effective config is rebuilt with `RuntimeResources.thread_config` from its
own cwd and its own session layer (so a server an app injected at `thread/start` survives), and
the thread gets a `RefreshMcpServersOp` with the server set it derives; the thread actor applies
it at once when idle, else when its turn ends. Strict: every thread is planned first, and a
thread whose config cannot be rebuilt aborts the refresh before any thread changes; a `required`
server that then fails to start is an error too. Best-effort: failures become warnings and the
thread keeps its previous servers.
"""

from __future__ import annotations

import structlog
import trio

from spindle.protocol.config import McpServerConfig
from spindle.protocol.ops import RefreshMcpServersOp

from .config import ConfigError
from .errors import ThreadClosedError
from .handle import ThreadHandle
from .mcp_manager import startup_timeout
from .registry import ThreadRegistry

log = structlog.get_logger(__name__)

REQUIRED_SLACK_S = 5.0
"""How much longer than its startup timeout a strict refresh waits for a required server."""


class McpRefreshError(Exception):
    """A strict refresh failed; the message names the thread (and server)."""


async def refresh_mcp_servers(registry: ThreadRegistry, *, strict: bool) -> list[str]:
    """Refresh the MCP servers of every loaded thread; returns the warnings (best-effort).

    McpRefreshError (strict) names the thread, and the server where one is at fault."""
    plans: list[tuple[ThreadHandle, dict[str, McpServerConfig]]] = []
    warnings: list[str] = []
    for thread_id in registry.list_thread_ids():
        handle = registry.running(thread_id)
        if handle is None:
            continue
        try:
            config = await registry.resources.thread_config(handle.settings.cwd, handle.session_config)
        except ConfigError as exc:
            if strict:
                raise McpRefreshError(f"failed to load thread {thread_id}: {exc}") from None
            warnings.append(f"failed to build MCP refresh config for thread {thread_id}: {exc}")
            continue
        plans.append((handle, config.mcp_servers))
    applied: list[tuple[ThreadHandle, dict[str, McpServerConfig]]] = []
    for handle, servers in plans:
        try:
            outcome = await handle.submit_and_wait(RefreshMcpServersOp(mcp_servers=servers))
        except (ThreadClosedError, trio.TooSlowError) as exc:
            problem = str(exc) or type(exc).__name__
        else:
            problem = outcome.error.message if outcome.error is not None else ""
        if problem:
            message = f"failed to queue MCP refresh for thread {handle.thread_id}: {problem}"
            if strict:
                raise McpRefreshError(message)
            warnings.append(message)
            continue
        applied.append((handle, servers))
    if strict:
        await _check_required(applied)
    for warning in warnings:
        log.warning("MCP refresh", warning=warning)
    return warnings


async def _check_required(applied: list[tuple[ThreadHandle, dict[str, McpServerConfig]]]) -> None:
    """Wait for each required server of an idle thread to start; McpRefreshError for the first
    that failed. (A busy thread applies the refresh when its turn ends: nothing to wait for yet.)"""
    failures: list[str] = []
    for handle, servers in applied:
        if handle.active_turn_id is not None:
            continue
        required = [name for name, cfg in servers.items() if cfg.required and cfg.enabled]
        if not required:
            continue
        limit = max(startup_timeout(servers[name]) for name in required) + REQUIRED_SLACK_S
        with trio.move_on_after(limit):
            await handle.wait_mcp_started(required)
        for name in required:
            server = handle.mcp_servers.get(name)
            if server is not None and server.status != "ready":
                reason = server.error or server.status or "not started"
                failures.append(f"thread {handle.thread_id}: required MCP server `{name}` failed to start: {reason}")
    if failures:
        raise McpRefreshError("; ".join(failures))
