"""The MCP servers of one thread: start, status, tools, calls, stop, and a new server set applied.

Each enabled server is one task in the nursery the manager is given (the thread actor's, so
the actor's shutdown stops them), holding its connection for its life. Start-up never blocks
the thread: a server goes `starting` -> `ready` | `failed` | `cancelled`, and each change is
reported through `on_status`. A server that cannot start (missing command, immediate exit, no
answer within `startup_timeout_sec`, garbage) fails alone, with the reason.
"""

from __future__ import annotations

import importlib
import json
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from spindle.protocol.config import McpServerConfig
from spindle.protocol.events import McpStartupUpdateEvent
from spindle.protocol.mcp import McpStartupStatus

if TYPE_CHECKING:  # the SDK is imported when a server starts: `spindle app-server` starts faster
    from mcp import types
    from mcp.client.session import ClientSession

log = structlog.get_logger(__name__)

DEFAULT_STARTUP_TIMEOUT_S = 10.0
MAX_TOOL_PAGES = 100
"""The most pages of `tools/list` read from one server (a server whose cursor never ends)."""
MAX_TOOL_SCHEMA_BYTES = 64 * 1024
"""The biggest input schema of a tool offered to the model (it goes with every request)."""
STDERR_TAIL_BYTES = 2048
"""How much of a server's stderr a start-up failure quotes."""

StatusCallback = Callable[[str, McpStartupStatus, "str | None"], None]


def startup_timeout(config: McpServerConfig) -> float:
    if config.startup_timeout_sec is not None:
        return config.startup_timeout_sec
    if config.startup_timeout_ms is not None:
        return config.startup_timeout_ms / 1000
    return DEFAULT_STARTUP_TIMEOUT_S


def tool_allowed(config: McpServerConfig, tool: str) -> bool:
    if config.enabled_tools is not None and tool not in config.enabled_tools:
        return False
    return tool not in config.disabled_tools


class ServerProcess:
    """A stdio server's process: its pid, and the last bytes it wrote to stderr (for failure reasons)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.ended = trio.Event()
        """Set when the server exits or its stdout ends: the connection is over."""
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= STDERR_TAIL_BYTES:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        return b"".join(self._chunks)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()


class McpCallError(Exception):
    """A tool call that got no answer (transport, timeout, server gone); the message says why."""


@dataclass(eq=False)
class McpServer:
    """One server of a thread, as long as this config of it lives."""

    name: str
    config: McpServerConfig
    status: McpStartupStatus | None = None
    """None while disabled (never started)."""
    error: str | None = None
    tools: list[types.Tool] = field(default_factory=list)
    server_info: types.Implementation | None = None
    capabilities: types.ServerCapabilities | None = None
    session: ClientSession | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    settled: trio.Event = field(default_factory=trio.Event)
    process: ServerProcess = field(default_factory=ServerProcess)

    def allowed_tools(self) -> list[types.Tool]:
        return [tool for tool in self.tools if tool_allowed(self.config, tool.name)]

    async def call(self, tool: str, arguments: dict[str, Any] | None, timeout: float) -> types.CallToolResult:  # noqa: ASYNC109
        """Call `tool`; McpCallError when no answer comes (the server's `isError` is an answer)."""
        session = self.session
        if session is None or self.status != "ready":
            raise McpCallError(f"MCP server `{self.name}` is not running ({self.status or 'disabled'})")
        try:
            with trio.move_on_after(timeout):
                return await self._call_while_alive(session, tool, arguments)
        except Exception as exc:  # an MCP error, or the connection broke (anyio errors, groups)
            raise McpCallError(describe(exc)) from None
        raise McpCallError(f"timed out awaiting tools/call after {timeout:g}s")

    async def _call_while_alive(
        self, session: ClientSession, tool: str, arguments: dict[str, Any] | None
    ) -> types.CallToolResult:
        """The call, cut short if the server's process ends meanwhile (the SDK would wait on)."""
        result: types.CallToolResult | None = None

        async def watch() -> None:
            await self.process.ended.wait()
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            result = await session.call_tool(tool, arguments)
            nursery.cancel_scope.cancel()
        if result is None:
            raise McpCallError("the MCP server exited during the call")
        return result


def describe(exc: BaseException) -> str:
    """The first real cause in `exc` (exception groups flattened)."""
    from mcp.shared.exceptions import McpError

    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, McpError):
        return exc.error.message
    if isinstance(exc, McpCallError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def list_all_tools(session: ClientSession) -> list[types.Tool]:
    """Every page of the server's `tools/list`, up to `MAX_TOOL_PAGES` pages, less the tools whose
    input schema is over `MAX_TOOL_SCHEMA_BYTES`."""
    from mcp import types

    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        listed = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += [tool for tool in listed.tools if _schema_fits(tool)]
        cursor = listed.nextCursor
        if not cursor:
            return tools
    log.warning("MCP server lists too many pages of tools; the rest are ignored", pages=MAX_TOOL_PAGES)
    return tools


def _schema_fits(tool: types.Tool) -> bool:
    """Whether `tool`'s input schema is small enough to send the model with every request."""
    size = len(json.dumps(tool.inputSchema, ensure_ascii=False))
    if size <= MAX_TOOL_SCHEMA_BYTES:
        return True
    log.warning("MCP tool left out: its input schema is too big", tool=tool.name, bytes=size,
                limit=MAX_TOOL_SCHEMA_BYTES)
    return False


class McpManager:
    """The MCP servers of one thread."""

    def __init__(self, on_status: StatusCallback) -> None:
        self._on_status = on_status
        self._servers: dict[str, McpServer] = {}
        self._nursery: trio.Nursery | None = None

    def bind(self, nursery: trio.Nursery) -> None:
        """Run the servers' tasks in `nursery` from now on (cancelling it stops them all)."""
        self._nursery = nursery

    # --- the server set -------------------------------------------------
    @property
    def servers(self) -> Mapping[str, McpServer]:
        return self._servers

    def apply(self, configs: Mapping[str, McpServerConfig]) -> list[str]:
        """Make `configs` the server set: start new ones, stop removed ones, restart changed and
        failed ones, keep the others. Returns the names of the servers (re)started."""
        started: list[str] = []
        for name in [n for n in self._servers if n not in configs]:
            self._stop(self._servers.pop(name))
        for name, config in configs.items():
            old = self._servers.get(name)
            if old is not None and old.config == config and old.status != "failed":
                continue
            if old is not None:
                self._stop(old)
            server = McpServer(name=name, config=config)
            self._servers[name] = server
            if config.enabled:
                assert self._nursery is not None, "McpManager.bind has not been called"
                server.status = "starting"
                self._on_status(name, "starting", None)
                self._nursery.start_soon(self._serve, server)
                started.append(name)
            else:
                server.settled.set()
        return started

    def status_replay(self) -> list[McpStartupUpdateEvent]:
        """The start-up statuses so far of the current servers, as a new subscriber hears them."""
        events: list[McpStartupUpdateEvent] = []
        for server in self.servers.values():
            if server.status is None:
                continue
            events.append(McpStartupUpdateEvent(server=server.name, status="starting"))
            if server.status != "starting":
                events.append(McpStartupUpdateEvent(server=server.name, status=server.status, error=server.error))
        return events

    def _stop(self, server: McpServer) -> None:
        server.scope.cancel()

    async def wait_started(self, names: list[str] | None = None) -> None:
        """Until the servers named (default: all) have left `starting`."""
        for name in names if names is not None else list(self._servers):
            server = self._servers.get(name)
            if server is not None:
                await server.settled.wait()

    def tools(self) -> list[tuple[McpServer, types.Tool]]:
        """The tools of every ready server, allow- and deny-lists applied."""
        return [
            (server, tool) for server in self._servers.values() if server.status == "ready"
            for tool in server.allowed_tools()
        ]

    # --- one server -----------------------------------------------------
    def _settle(self, server: McpServer, status: McpStartupStatus, error: str | None = None) -> None:
        """Record how `server`'s start-up ended and report it; a server stopped while starting is
        reported `cancelled` only when removed (a replaced one's successor reports for it)."""
        if server.settled.is_set():
            server.status = status if status == "cancelled" else server.status
            return
        server.status, server.error = status, error
        server.settled.set()
        if status != "cancelled" or server.name not in self._servers:
            self._on_status(server.name, status, error)
        if error:
            log.warning("MCP server failed", server=server.name, error=error)

    async def _serve(self, server: McpServer) -> None:
        # The SDK takes ~0.5 s to import: in a worker thread, so the loop (every thread) runs on.
        await trio.to_thread.run_sync(importlib.import_module, f"{__package__}.mcp_client")
        from .mcp_client import McpClientError, open_session, transport_of

        name, config = server.name, server.config
        timeout = startup_timeout(config)
        problem = transport_of(config)
        if problem is not None:
            return self._settle(server, "failed", f"MCP server `{name}`: {problem}")
        startup = trio.CancelScope(deadline=trio.current_time() + timeout)
        try:
            with server.scope, startup:
                async with open_session(name, config, server.process) as (session, init):
                    tools = await list_all_tools(session)
                    startup.deadline = math.inf
                    server.session, server.tools = session, tools
                    server.server_info, server.capabilities = init.serverInfo, init.capabilities
                    self._settle(server, "ready")
                    await server.process.ended.wait()  # never set for HTTP: it lives until stopped
                    server.status, server.error = "failed", self._failure(server, "the MCP server exited", "")
        except McpClientError as exc:
            return self._settle(server, "failed", f"MCP startup failed: {exc}")
        except Exception as exc:
            return self._settle(server, "failed", self._failure(server, describe(exc)))
        finally:
            server.session = None
        if startup.cancelled_caught:
            self._settle(server, "failed", (
                f"MCP client for `{name}` timed out after {timeout:g} seconds. Add or adjust "
                f"`startup_timeout_sec` in your config.toml:\n[mcp_servers.{name}]\nstartup_timeout_sec = XX"))
        elif server.scope.cancelled_caught:
            self._settle(server, "cancelled")

    def _failure(self, server: McpServer, reason: str,
                 prefix: str = "MCP startup failed: handshaking with MCP server failed: ") -> str:
        text = prefix + reason
        stderr = server.process.text()
        return f"{text}; stderr: {stderr}" if stderr else text
