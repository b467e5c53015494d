"""A JSON-RPC client for `spindle app-server`: used by `spindle load`, the bench and the tests.

It speaks JSON lines to an `AppServer` over in-memory streams or to a real `spindle app-server`
child over its stdin/stdout (`LineWire`), or WebSocket text frames to a `ws://` or `unix://`
listener (`WebSocketWire`, through `websocket_client`).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import h11
import trio
import trio_websocket

from .mock_model import MockModel

WAIT_S = 10.0


class RpcFailure(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = error.get("message", "")
        self.error = error


class Wire(Protocol):
    """How the client's messages travel."""

    async def send_raw(self, data: bytes) -> None:
        """Send `data`: JSON lines, each ending in `\\n`."""

    def messages(self) -> AsyncGenerator[bytes, None]:
        """Each message from the server, until the connection ends."""


class LineWire:
    """JSON lines on a pair of byte streams."""

    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream) -> None:
        self.send = send
        self.receive = receive

    async def send_raw(self, data: bytes) -> None:
        await self.send.send_all(data)

    async def messages(self) -> AsyncGenerator[bytes, None]:
        buffer = b""
        try:
            async for chunk in self.receive:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class RpcClient:
    """Sends requests, routes responses by id, keeps every notification in arrival order."""

    def __init__(self, send: trio.abc.SendStream | None = None, receive: trio.abc.ReceiveStream | None = None, *,
                 wire: Wire | None = None, keep: bool = True) -> None:
        """Over `send` and `receive` (JSON lines), or over `wire`."""
        if wire is None:
            assert send is not None and receive is not None, "RpcClient needs streams or a wire"
            wire = LineWire(send, receive)
        self.wire = wire
        self._ids = itertools.count(1)
        self._waiting: dict[Any, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.server_requests: list[dict[str, Any]] = []
        """Requests from the server (approvals, tool calls), in arrival order; answer with `answer`."""
        self.lines: list[dict[str, Any]] = []
        self._changed = trio.Event()
        self._send_lock = trio.StrictFIFOLock()
        self.closed = trio.Event()
        self.timeout = WAIT_S
        """Seconds any one call or wait may take before TooSlowError."""
        self.keep = keep
        """Keep every message in `lines` / `notifications` (off for long load runs)."""
        self._completed: dict[str, dict[str, Any]] = {}
        self._turn_waiters: dict[str, trio.Event] = {}

    async def read_loop(self) -> None:
        try:
            async with aclosing(self.wire.messages()) as messages:
                async for message in messages:
                    self._route(json.loads(message))
        finally:
            self.closed.set()
            self._changed.set()

    def _route(self, message: dict[str, Any]) -> None:
        if self.keep:
            self.lines.append(message)
        if "method" in message and "id" not in message:
            if self.keep:
                self.notifications.append(message)
            if message["method"] == "turn/completed":
                self._turn_completed(message["params"]["turn"])
        elif "method" in message:
            self.server_requests.append(message)
        elif (waiter := self._waiting.pop(message.get("id"), None)) is not None:
            waiter.send_nowait(message)
        self._changed.set()
        self._changed = trio.Event()

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.wire.send_raw(data)

    async def send_message(self, message: dict[str, Any]) -> dict[str, Any]:
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[message["id"]] = send
        await self.send_raw(json.dumps(message).encode() + b"\n")
        with trio.fail_after(self.timeout):
            return await receive.receive()

    async def call(self, method: str, params: dict[str, Any] | None = None, *, request_id: Any = None) -> dict[str, Any]:
        """The result of `method`; RpcFailure with the error when it fails."""
        message: dict[str, Any] = {"id": request_id if request_id is not None else next(self._ids), "method": method}
        if params is not None:
            message["params"] = params
        reply = await self.send_message(message)
        if "error" in reply:
            raise RpcFailure(reply["error"])
        return reply["result"]  # type: ignore[no-any-return]

    async def initialize(self, *, experimental: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {"clientInfo": {"name": "spindle-tests", "version": "1.0"}}
        if experimental:
            params["capabilities"] = {"experimentalApi": True}
        result = await self.call("initialize", params)
        await self.send_raw(b'{"method":"initialized"}\n')
        return result

    async def wait_for(self, method: str, predicate: Callable[[dict[str, Any]], bool] = lambda _: True, *, after: int = 0) -> dict[str, Any]:
        """The first notification `method` (from index `after`) whose params satisfy `predicate`."""
        with trio.fail_after(self.timeout):
            while True:
                for note in self.notifications[after:]:
                    if note["method"] == method and predicate(note.get("params", {})):
                        return note
                if self.closed.is_set():
                    raise AssertionError(f"connection closed before {method}")
                await self._changed.wait()

    async def wait_request(self, method: str, *, after: int = 0) -> dict[str, Any]:
        """The first server request `method` (from index `after` of `server_requests`)."""
        await self.wait_until(lambda: any(r["method"] == method for r in self.server_requests[after:]))
        return next(r for r in self.server_requests[after:] if r["method"] == method)

    async def answer(self, request_id: Any, result: Any) -> None:
        """Answer a server request with `result`."""
        await self.send_raw(json.dumps({"id": request_id, "result": result}).encode() + b"\n")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking after each message."""
        with trio.fail_after(self.timeout):
            while not predicate():
                await self._changed.wait()

    def methods(self, after: int = 0) -> list[str]:
        return [note["method"] for note in self.notifications[after:]]

    def _turn_completed(self, turn: dict[str, Any]) -> None:
        # turn/completed may arrive before the turn/start answer: kept until `wait_turn` claims it
        self._completed[turn["id"]] = turn
        if (waiter := self._turn_waiters.pop(turn["id"], None)) is not None:
            waiter.set()

    async def wait_turn(self, turn_id: str) -> dict[str, Any]:
        """The turn of the `turn/completed` for `turn_id`, once it has arrived."""
        if turn_id not in self._completed:
            with trio.fail_after(self.timeout):
                await self._turn_waiters.setdefault(turn_id, trio.Event()).wait()
        return self._completed.pop(turn_id)

    async def run_turn(self, thread_id: str, text: str) -> dict[str, Any]:
        """Start a turn and wait for its `turn/completed`; returns that turn."""
        turn = (await self.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text}]}))["turn"]
        return await self.wait_turn(turn["id"])


@asynccontextmanager
async def in_memory(server: Any) -> AsyncIterator[RpcClient]:
    """A client on a fresh in-memory connection to `server` (an `AppServer`)."""
    import trio.testing  # imports pytest: only where in-memory connections are wanted

    client_side, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve, server_side, server_side)
        client = RpcClient(client_side, client_side)
        nursery.start_soon(client.read_loop)
        yield client
        await client_side.send_stream.aclose()
        with trio.fail_after(WAIT_S):
            await client.closed.wait()


class WebSocketWire:
    """One JSON-RPC message per text frame on a trio-websocket connection."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send_raw(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line.strip():
                await self.ws.send_message(line.decode())

    async def messages(self) -> AsyncGenerator[bytes, None]:
        while True:
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            yield message.encode() if isinstance(message, str) else message

    @property
    def closed(self) -> tuple[int, str | None] | None:
        """(code, reason) of the close, once the connection is closed."""
        reason = self.ws.closed
        return None if reason is None else (reason.code, reason.reason)


CLIENT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""What a Codex client accepts in one message; the test client takes as much."""


async def open_socket(url: str) -> trio.SocketStream:
    """A stream to the listener `url`: `ws://HOST:PORT` or `unix://PATH`."""
    if url.startswith("unix://"):
        return await trio.open_unix_socket(url.removeprefix("unix://"))
    host, _, port = url.removeprefix("ws://").rstrip("/").rpartition(":")
    return await trio.open_tcp_stream(host.strip("[]"), int(port))


@asynccontextmanager
async def websocket_client(
    url: str, *, token: str | None = None, headers: Sequence[tuple[str, str]] = (), path: str = "/rpc", keep: bool = True
) -> AsyncIterator[RpcClient]:
    """A client on a WebSocket to the listener `url` (`ws://HOST:PORT` or `unix://PATH`), upgraded
    on `GET path`; `token` goes in `Authorization: Bearer`, as Codex's clients send it.

    For a refused upgrade use `http_request`: here a refusal surfaces inside an exception group.
    """
    extra = [(name.encode(), value.encode()) for name, value in headers]
    if token is not None:
        extra.append((b"authorization", f"Bearer {token}".encode()))
    stream = await open_socket(url)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, "localhost", path, extra_headers=extra, max_message_size=CLIENT_MAX_MESSAGE_BYTES,
            )
            client = RpcClient(wire=WebSocketWire(ws), keep=keep)
            nursery.start_soon(client.read_loop)
            yield client
            with trio.move_on_after(WAIT_S):
                await ws.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


UPGRADE_HEADERS = (
    ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
)
"""What a client sends to ask for a WebSocket (the key is RFC 6455's example)."""


async def http_request(
    url: str, target: str, *, headers: Sequence[tuple[str, str]] = (), method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one plain HTTP request to the listener `url`; a `101` comes back
    with an empty body (the connection is then closed)."""
    stream = await open_socket(url)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=method, target=target, headers=[("Host", "localhost"), *headers])
    body = b""
    async with stream:
        await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        with trio.fail_after(WAIT_S):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some())
                elif isinstance(event, h11.InformationalResponse | h11.Response):
                    status, response_headers = event.status_code, {k.decode(): v.decode() for k, v in event.headers}
                    if status == 101:
                        return status, response_headers, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, response_headers, body


MOCK_PROVIDER = "mock_provider"
"""The model provider `write_config` names: a rollout made for such a home carries it."""


def write_config(home: Path, mock: MockModel | str, **extra: object) -> None:
    """A config.toml in `home` whose model is `mock` (a MockModel or its base URL), with `extra`
    top-level keys."""
    base_url = mock if isinstance(mock, str) else mock.base_url
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        'model = "mock-model"',
        'approval_policy = "never"',
        'sandbox_mode = "read-only"',
        f'model_provider = "{MOCK_PROVIDER}"',
        *(f"{key} = {json.dumps(value)}" for key, value in extra.items()),
        "",
        f"[model_providers.{MOCK_PROVIDER}]",
        'name = "Mock provider for test"',
        f'base_url = "{base_url}"',
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
    ]
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def spindle_argv() -> list[str]:
    """How to run this installation's `spindle` (the interpreter running now, so no PATH lookup)."""
    return [sys.executable, "-m", "spindle.actors.cli"]


@asynccontextmanager
async def subprocess_server(home: Path, cwd: Path | None = None, *, log_level: str = "info",
                            args: Sequence[str] = ()) -> AsyncIterator[tuple[RpcClient, trio.Process]]:
    """A `spindle app-server` child with CODEX_HOME=`home` (and `args`); stdin is closed on exit."""
    env = {**os.environ, "CODEX_HOME": str(home), "SPINDLE_LOG": log_level}
    argv = [*spindle_argv(), "app-server", "--listen", "stdio://", *args]
    async with stdio_child(argv, env=env, cwd=cwd or home) as running:
        yield running


@asynccontextmanager
async def stdio_child(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, stderr: int | None = None,
                      call_timeout_s: float | None = None) -> AsyncIterator[tuple[RpcClient, trio.Process]]:
    """An RPC client on a child's stdio (JSON lines); on exit its stdin is closed and its end awaited
    (killed if it does not end within WAIT_S, or if the block failed)."""
    process = await trio.lowlevel.open_process(list(argv), stdin=-1, stdout=-1, stderr=stderr, env=dict(env), cwd=str(cwd))
    assert process.stdin is not None and process.stdout is not None
    client = RpcClient(process.stdin, process.stdout)
    if call_timeout_s is not None:
        client.timeout = call_timeout_s
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_loop)
            yield client, process
            await process.stdin.aclose()
            with trio.fail_after(WAIT_S):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
