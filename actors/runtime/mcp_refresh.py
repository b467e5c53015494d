"""What a strict MCP refresh adds to the one per-thread refresh path
(`ThreadManager.reload_user_config`): a `required` server that fails to start is an error naming
the thread and the server.

The refresh itself, for every trigger (`config/mcpServer/reload`, `reload_user_config`, a config
write with reload): each loaded thread's effective config is rebuilt from fresh disk layers for
its own cwd plus its own session layer (so a server an app injected at `thread/start` survives);
the thread applies it (`ThreadActor.apply_config`), its MCP server set included, at once when
idle, else when its turn ends.
"""

from __future__ import annotations

import structlog
import trio

from spindle.protocol.config import McpServerConfig

from .handle import ThreadHandle
from .mcp_manager import startup_timeout

log = structlog.get_logger(__name__)

REQUIRED_SLACK_S = 5.0
"""How much longer than its startup timeout a strict refresh waits for a required server."""


class McpRefreshError(Exception):
    """A strict refresh failed; the message names the thread (and server)."""


async def check_required_servers(applied: list[tuple[ThreadHandle, dict[str, McpServerConfig]]]) -> None:
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
