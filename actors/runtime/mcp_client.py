"""One MCP server connection: our own Trio stdio transport, or the SDK's streamable HTTP client,
feeding the `mcp` SDK's `ClientSession` (the protocol itself is the SDK's).

The stdio transport exists because the SDK's leaves a server's children running and splits
lines quadratically. Ours reads lines with a byte cap (`MAX_LINE_BYTES`): an oversized line is
skipped as it streams, without being buffered, and the request it answered gets an error, so only
that call fails. The server runs in its own session (process group); closing the transport sends
the group SIGTERM, then SIGKILL after `KILL_GRACE_S`, so its children go too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import structlog
import trio
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from spindle.protocol.config import McpServerConfig

from .mcp_manager import ServerProcess
from .version import SPINDLE_VERSION

log = structlog.get_logger(__name__)

MAX_LINE_BYTES = 8 * 1024 * 1024
"""The longest message a server may send; a longer one fails the request it answers."""
READ_CHUNK = 64 * 1024
KILL_GRACE_S = 2.0
"""How long a server's process group has between SIGTERM and SIGKILL."""
HTTP_MAX_RESPONSE_BYTES = MAX_LINE_BYTES
_ID = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


class McpClientError(Exception):
    """A server that cannot be started or reached; the message says why."""


class LineSplitter:
    """Bytes in, whole lines out; a line longer than `limit` comes out as `Oversized` (its first
    bytes only), and its remainder is dropped as it arrives. Sans-IO; linear in the input."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping: Oversized | None = None

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if self._skipping is not None:
                self._skipping.size += len(piece)
            elif len(self._buf) + len(piece) > self.limit:
                self._skipping = Oversized(head=bytes(self._buf[:1024] + piece[:1024]), size=len(self._buf) + len(piece))
                self._buf.clear()
            else:
                self._buf += piece
            if end < 0:
                break
            if self._skipping is not None:
                out.append(self._skipping)
                self._skipping = None
            elif self._buf.strip():
                out.append(bytes(self._buf))
            self._buf.clear()
            start = end + 1
        return out


class Oversized:
    """A line over the cap: its head (to find the request id) and its size."""

    def __init__(self, *, head: bytes, size: int) -> None:
        self.head = head
        self.size = size

    def error_reply(self) -> types.JSONRPCMessage | None:
        """An error answering the request this line answered, if its id can be found."""
        match = _ID.search(self.head)
        if match is None:
            return None
        raw = match.group(1)
        request_id: int | str = int(raw) if raw[:1] != b'"' else raw[1:-1].decode("utf-8", "replace")
        return types.JSONRPCMessage(types.JSONRPCError(
            jsonrpc="2.0", id=request_id,
            error=types.ErrorData(code=-32000, message=f"the MCP server's answer is over the {_limit()} limit"),
        ))


def _limit() -> str:
    return f"{MAX_LINE_BYTES // (1024 * 1024)} MiB"


def server_env(config: McpServerConfig) -> dict[str, str]:
    """A stdio server's environment: the SDK's default allow-list, `env_vars` from ours, `env`."""
    env = get_default_environment()
    env.update({name: os.environ[name] for name in config.env_vars if name in os.environ})
    env.update(config.env)
    return env


@asynccontextmanager
async def stdio_transport(config: McpServerConfig, process: ServerProcess) -> AsyncIterator[tuple[Any, Any]]:
    """(read, write) streams for `ClientSession` over a server process's stdin/stdout."""
    assert config.command is not None
    argv = [config.command, *config.args]
    try:
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=server_env(config), cwd=config.cwd, start_new_session=True,
        )
    except OSError as exc:
        raise McpClientError(f"failed to start `{' '.join(argv)}`: {exc.strerror or exc}") from None
    process.pid = proc.pid
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_stdout, proc, read_send, process.ended)
            nursery.start_soon(_write_stdin, proc, write_recv)
            nursery.start_soon(_drain_stderr, proc, process)
            nursery.start_soon(_watch_exit, proc, process.ended)
            try:
                yield read_recv, write_send
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await kill_group(proc)


async def kill_group(proc: trio.Process) -> None:
    """SIGTERM the server's process group, SIGKILL what is left of it after the grace period (the
    server if it hung, its children either way), reap the server and close its pipes."""
    _killpg(proc.pid, signal.SIGTERM)
    with trio.move_on_after(KILL_GRACE_S):
        await proc.wait()
    _killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _read_stdout(proc: trio.Process, send: Any, ended: trio.Event) -> None:
    assert proc.stdout is not None
    splitter = LineSplitter()
    try:
        async with send:
            while chunk := await proc.stdout.receive_some(READ_CHUNK):
                for line in splitter.feed(chunk):
                    message = _message(line)
                    if message is not None:
                        await send.send(SessionMessage(message))
    finally:
        ended.set()


async def _watch_exit(proc: trio.Process, ended: trio.Event) -> None:
    """The connection is over when the server exits, even if a child of it holds stdout open."""
    await proc.wait()
    ended.set()


def _message(line: bytes | Oversized) -> types.JSONRPCMessage | None:
    """The message of one line: an error reply for an oversized answer; None to skip the line."""
    if isinstance(line, Oversized):
        log.warning("MCP server sent an oversized line", bytes=line.size)
        return line.error_reply()
    try:
        return types.JSONRPCMessage.model_validate_json(line)
    except ValueError as exc:
        log.debug("MCP server sent a line that is not JSON-RPC", error=str(exc)[:200])
        return None


async def _write_stdin(proc: trio.Process, receive: Any) -> None:
    assert proc.stdin is not None
    async with receive:
        async for message in receive:
            data = message.message.model_dump_json(by_alias=True, exclude_none=True) + "\n"
            try:
                await proc.stdin.send_all(data.encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def _drain_stderr(proc: trio.Process, tail: ServerProcess) -> None:
    assert proc.stderr is not None
    while chunk := await proc.stderr.receive_some(READ_CHUNK):
        tail.add(chunk)


def http_headers(config: McpServerConfig) -> dict[str, str]:
    headers = dict(config.http_headers)
    headers.update({h: os.environ[v] for h, v in config.env_http_headers.items() if v in os.environ})
    if config.bearer_token_env_var:
        token = os.environ.get(config.bearer_token_env_var)
        if not token:
            raise McpClientError(f"environment variable {config.bearer_token_env_var} (bearer_token_env_var) is not set")
        headers["Authorization"] = f"Bearer {token}"
    return headers


class _CappedTransport(httpx.AsyncBaseTransport):
    """Caps the answers from the server: an SSE event (or a JSON body) over
    `HTTP_MAX_RESPONSE_BYTES` is dropped unread past the cap, and the POST it answers gets a
    JSON-RPC error instead (the SDK would otherwise wait for an answer until the tool timeout).
    The server's own stream (GET) is cut off at an oversized event."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        reply = None
        if request.method == "POST":
            try:
                match = _ID.search(request.content[:4096])
            except httpx.RequestNotRead:
                match = None
            reply = Oversized(head=match.group(0) if match else b"", size=0).error_reply()
        sse = response.headers.get("content-type", "").startswith("text/event-stream")
        response.stream = _CappedStream(response.stream, reply, sse=sse)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


_EVENT_END = re.compile(rb"\r?\n\r?\n")


class _CappedStream(httpx.AsyncByteStream):
    """Passes whole SSE events (or the whole JSON body) through; one past the cap becomes the
    error `reply` for the request, and the rest of the response is not read. Linear in the input:
    each byte is searched for an event end once."""

    def __init__(self, inner: httpx.AsyncByteStream, reply: types.JSONRPCMessage | None, *, sse: bool) -> None:
        self._inner = inner
        self._reply = reply
        self._sse = sse

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = bytearray()
        searched = 0
        async for chunk in self._inner:
            pending += chunk
            if self._sse:
                cut = 0
                for end in _EVENT_END.finditer(pending, max(0, searched - 3)):
                    cut = end.end()
                searched = len(pending)
                if cut:
                    yield bytes(pending[:cut])
                    del pending[:cut]
                    searched -= cut
            if len(pending) > HTTP_MAX_RESPONSE_BYTES:
                log.warning("MCP server sent an oversized answer over HTTP", limit=HTTP_MAX_RESPONSE_BYTES)
                if self._reply is None:
                    raise httpx.ReadError(f"answer over the {HTTP_MAX_RESPONSE_BYTES} byte limit")
                body = self._reply.model_dump_json(by_alias=True, exclude_none=True).encode()
                yield b"event: message\r\ndata: " + body + b"\r\n\r\n" if self._sse else body
                return
        if pending:
            yield bytes(pending)

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def http_transport(config: McpServerConfig) -> AsyncIterator[tuple[Any, Any]]:
    assert config.url is not None
    async with httpx.AsyncClient(
        headers=http_headers(config), transport=_CappedTransport(), follow_redirects=True,
        timeout=httpx.Timeout(30.0, read=300.0),
    ) as client, streamable_http_client(config.url, http_client=client) as (read, write, _session_id):
        yield read, write


class _Session(ClientSession):
    """The SDK's session without its client-side check of `structuredContent` against the tool's
    `outputSchema`: Codex passes results on unchecked, and the check runs a server's regex patterns
    on the event loop, where a backtracking one would stall every thread."""

    async def _validate_tool_result(self, name: str, result: types.CallToolResult) -> None:
        return None


@asynccontextmanager
async def open_session(
    name: str, config: McpServerConfig, process: ServerProcess
) -> AsyncIterator[tuple[ClientSession, types.InitializeResult]]:
    """An initialized session with server `name`, and what it answered to `initialize` (no
    timeout of its own: the caller sets it)."""
    transport = http_transport(config) if config.url else stdio_transport(config, process)
    async with transport as (read, write), _Session(
        read, write, client_info=types.Implementation(name="spindle", version=SPINDLE_VERSION)
    ) as session:
        yield session, await session.initialize()


def transport_of(config: McpServerConfig) -> str | None:
    """Why `config` names no usable transport, or None."""
    if config.command and config.url:
        return "set either `command` (stdio) or `url` (streamable HTTP), not both"
    if not config.command and not config.url:
        return "set `command` (stdio) or `url` (streamable HTTP)"
    return None
