"""The app-server's listeners: stdio, WebSocket over TCP (`ws://IP:PORT`) and WebSocket over a
Unix socket (`unix://`), any number of them served by one `AppServer` on one runtime.

`serve(manager, *urls)` is the whole of it, for `spindle app-server` and for embedding. Each
socket connection goes through three steps:

1. its HTTP request is read (at most `MAX_HEAD_BYTES`, within `handshake_timeout_s`; at most
   `max_handshakes` sockets at this step at once, the accept loop waits for a free one);
2. `listen.gate` decides: `/readyz` and `/healthz` get `200`, a request with an `Origin` `403`, a
   missing or wrong bearer token `401`, a full server (`max_connections`) `503`, anything else that
   is not a WebSocket upgrade `400`; each of those closes the socket;
3. an upgrade is handed to trio-websocket (the bytes already read are replayed to it) and the
   WebSocket becomes a `Connection` of the server, which closes it (1008) if it sends no
   `initialize` within `initialize_timeout_s`.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio
from trio_typing import TaskStatus

from spindle.actors.runtime import ThreadManager
from spindle.protocol.appserver.control import CONTROL_SOCKET
from spindle.protocol.appserver.listen import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_HEADER,
    HttpReply,
    Listen,
    ListenUrlError,
    StdioListen,
    UnixListen,
    WebSocketListen,
    check_exposure,
    gate,
    parse_listen,
    ws_url,
)

from .server import AppServer
from .transport import POLICY_VIOLATION, WebSocketTransport
from .unix_socket import SocketPathError, UnixSocket, bind_unix

if TYPE_CHECKING:
    import h11
    from trio_websocket import WebSocketConnection

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 256
"""WebSocket connections served at once, over all the socket listeners of one `serve`; the next
upgrade gets `503`."""
MAX_HANDSHAKES = 128
"""Sockets still sending their HTTP request at once; the accept loop waits for one to finish."""
HANDSHAKE_TIMEOUT_S = 10.0
"""Time a socket has to send its HTTP request (Codex's clients give up connecting after 10 s)."""
INITIALIZE_TIMEOUT_S = 30.0
"""Time a WebSocket client has, once connected, to send `initialize` before it is disconnected."""
MAX_HEAD_BYTES = 16 * 1024
"""Longest HTTP request head (request line and headers) read; a longer one gets `431`."""
WS_RECEIVE_QUEUE = 1
"""Messages trio-websocket holds for a connection before it stops reading the socket."""
RECEIVE_BYTES = 64 * 1024
"""Bytes asked of a socket per read."""
ACCEPT_RETRY_S = 0.1
PING_INTERVAL_S = 30.0
"""How often the server pings each WebSocket client."""
PONG_TIMEOUT_S = 30.0
"""How long a ping may go unanswered before the client counts as gone."""
"""Pause of an accept loop after the process ran out of file descriptors (or memory)."""
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one `serve` allows; the defaults are the named constants above."""

    max_connections: int = MAX_CONNECTIONS
    max_handshakes: int = MAX_HANDSHAKES
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    initialize_timeout_s: float = INITIALIZE_TIMEOUT_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    ping_interval_s: float = PING_INTERVAL_S
    pong_timeout_s: float = PONG_TIMEOUT_S
    idle_exit_s: float | None = None
    """With no socket client connected for this long, `serve` returns (a daemon's end); None:
    never. Not with `stdio://`, whose client is there until stdin ends."""


@dataclass(frozen=True, slots=True)
class Bound:
    """A listener that is up: its URL (with the port the system gave), port or socket path."""

    url: str
    port: int | None = None
    path: Path | None = None


class ListenError(Exception):
    """The server cannot listen as asked; the message names the address and why."""


async def serve(
    manager: ThreadManager,
    *urls: str,
    token: str | None = None,
    limits: Limits | None = None,
    stdio: tuple[trio.abc.ReceiveStream, trio.abc.SendStream] | None = None,
    task_status: TaskStatus[tuple[Bound, ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the app-server on `manager` at every listener `urls` names (default `stdio://`).

    Starts once all are listening, with a `Bound` for each; runs until cancelled, until stdin
    ends when `stdio://` is one of them, or else after `limits.idle_exit_s` with no client. `token`: the bearer token `ws://` clients must present
    (required for a non-loopback address). ListenError if a listener cannot start. On the way out
    the threads its clients left are closed and their rollouts flushed.
    """
    try:
        listens = [parse_listen(url) for url in urls or ("stdio://",)]
        check_exposure(listens, token=None if token is None else token.encode())
    except ListenUrlError as exc:
        raise ListenError(str(exc)) from None
    if token is not None and not token.strip():
        raise ListenError("the WebSocket token is empty")
    listening = await Listening.bind(listens, manager.home)  # before anything runs: a refusal is one error
    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(AppServer(manager).run)
            gatekeeper = Gatekeeper(server, limits or Limits(), None if token is None else token.strip().encode())
            try:
                await gatekeeper.serve(listening, stdio, task_status=task_status)
            finally:
                server.stop()  # `run` returns once the threads that lost their clients are flushed
    finally:
        await listening.close()


@dataclass(frozen=True, slots=True)
class Listening:
    """The listeners of one `serve`, bound: TCP and Unix sockets, and whether stdio is one."""

    bound: tuple[Bound, ...]
    tcp: tuple[trio.SocketListener, ...]
    unix: tuple[UnixSocket, ...]
    stdio: bool

    @classmethod
    async def bind(cls, listens: list[Listen], home: Path) -> Listening:
        """Listen at each of `listens`; ListenError, with none left listening, if one cannot."""
        bound: list[Bound] = []
        tcp: list[trio.SocketListener] = []
        unix: list[UnixSocket] = []
        try:
            for listen in listens:
                match listen:
                    case WebSocketListen():
                        tcp.append(await _listen_tcp(listen))
                        port = tcp[-1].socket.getsockname()[1]
                        bound.append(Bound(ws_url(listen.host, port), port=port))
                    case UnixListen(path=path):
                        unix.append(await _listen_unix(Path(path) if path else home / CONTROL_SOCKET))
                        bound.append(Bound(f"unix://{unix[-1].path}", path=unix[-1].path))
                    case StdioListen():
                        bound.append(Bound("stdio://"))
        except BaseException:
            await cls(tuple(bound), tuple(tcp), tuple(unix), False).close()
            raise
        return cls(tuple(bound), tuple(tcp), tuple(unix), any(isinstance(each, StdioListen) for each in listens))

    async def close(self) -> None:
        """Stop listening (a socket file is removed)."""
        with trio.CancelScope(shield=True):
            for listener in self.tcp:
                await listener.aclose()
            for unix in self.unix:
                await unix.close()


class Gatekeeper:
    """Serves the bound listeners of one `serve`: accepts, the HTTP gate, WebSocket connections."""

    def __init__(self, server: AppServer, limits: Limits, token: bytes | None) -> None:
        self.server = server
        self.limits = limits
        self.token = token
        self.open = 0
        """WebSocket connections past the gate, being served."""
        self.connected = 0
        """Sockets accepted and not yet closed, at any step (what keeps an idle server up)."""
        self._connections_changed = trio.Event()
        self._serials = itertools.count(1)

    async def serve(
        self, listening: Listening, stdio: tuple[trio.abc.ReceiveStream, trio.abc.SendStream] | None,
        *, task_status: TaskStatus[tuple[Bound, ...]],
    ) -> None:
        """Accept on every listener until cancelled, until stdin ends if stdio is one of them, or
        else until no client has come for `idle_exit_s`."""
        async with trio.open_nursery() as nursery:
            for listener in listening.tcp:
                nursery.start_soon(self._accept_loop, listener, True, nursery)
            for unix in listening.unix:
                nursery.start_soon(self._accept_loop, unix.listener, False, nursery)
            for each in listening.bound:
                log.info("listening", url=each.url)
            task_status.started(listening.bound)
            if self.limits.idle_exit_s is not None and not listening.stdio:
                await self._wait_idle(self.limits.idle_exit_s)
                log.info("no client for a while: stopping", idle_exit_s=self.limits.idle_exit_s)
                nursery.cancel_scope.cancel()
            if listening.stdio:
                receive, send = stdio or (trio.lowlevel.FdStream(os.dup(0)), trio.lowlevel.FdStream(os.dup(1)))
                await self.server.serve(receive, send)  # stdin's end is the server's end
                nursery.cancel_scope.cancel()

    async def _wait_idle(self, idle_s: float) -> None:
        """Return once no socket has been connected for `idle_s` seconds on end."""
        while True:
            changed = self._connections_changed
            with trio.move_on_after(idle_s if self.connected == 0 else math.inf) as idle:
                await changed.wait()
            if idle.cancelled_caught:
                return

    def _count(self, change: int) -> None:
        self.connected += change
        self._connections_changed.set()
        self._connections_changed = trio.Event()

    async def _accept_loop(self, listener: trio.SocketListener, tcp: bool, handlers: trio.Nursery) -> None:
        """Accept on one listener. Its handshakes in progress have a budget of their own, so
        clients that stall on one listener (a public TCP port) never lock out another (the
        control socket, a loopback port)."""
        handshakes = trio.Semaphore(self.limits.max_handshakes)
        while True:
            await handshakes.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                handshakes.release()
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("cannot accept a connection: out of file descriptors or memory", error=str(exc))
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            handlers.start_soon(self._handle, stream, tcp, handshakes)

    async def _handle(self, stream: trio.SocketStream, tcp: bool, handshakes: trio.Semaphore) -> None:
        name = f"{'ws' if tcp else 'unix'}-{next(self._serials)}"
        self._count(+1)
        try:
            try:
                head = await self._read_head(stream, name)
            finally:
                handshakes.release()
            if head is None:
                return
            request, raw = head
            verdict = gate(request.method, request.target, request.headers, token=self.token if tcp else None,
                           room=self.open < self.limits.max_connections)
            if isinstance(verdict, HttpReply):
                if verdict.status >= 400:
                    log.info("request refused", connection=name, status=verdict.status, target=request.target.decode("latin-1")[:200])
                await stream.send_all(http_response(verdict))
                return
            self.open += 1
            try:
                await self._serve_websocket(stream, raw, name)
            finally:
                self.open -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a fault with one client must not end the listener
            log.exception("connection failed", connection=name)
        finally:
            self._count(-1)
            await trio.aclose_forcefully(stream)

    async def _read_head(self, stream: trio.SocketStream, name: str) -> tuple[h11.Request, bytes] | None:
        """The socket's HTTP request and the bytes read so far; None, after answering if it can,
        when there is none in time or it is not HTTP."""
        import h11  # with the first socket client: a stdio server never needs it

        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        raw = bytearray()
        with trio.move_on_after(self.limits.handshake_timeout_s):
            while True:
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    log.info("bad HTTP request", connection=name, status=status, error=str(exc))
                    await stream.send_all(http_response(HttpReply(status, f"bad HTTP request: {exc}\n".encode())))
                    return None
                if isinstance(event, h11.Request):
                    return event, bytes(raw)
                if event is not h11.NEED_DATA:
                    return None
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return None
                raw += data
                http.receive_data(data)
        log.info("no HTTP request in time; closed", connection=name)
        timeout = self.limits.handshake_timeout_s
        await stream.send_all(http_response(HttpReply(408, f"no complete HTTP request within {timeout:g} s\n".encode())))
        return None

    async def _serve_websocket(self, stream: trio.SocketStream, raw: bytes, name: str) -> None:
        import trio_websocket  # here, not at start-up: a stdio server never needs it

        limit = self.limits.max_message_bytes
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task
            with trio.move_on_after(self.limits.handshake_timeout_s) as upgrade:
                request = await trio_websocket.wrap_server_stream(
                    nursery, Replayed(stream, raw), message_queue_size=WS_RECEIVE_QUEUE, max_message_size=limit,
                    receive_buffer_size=RECEIVE_BYTES,
                )
                ws = await request.accept(extra_headers=[(MAX_MESSAGE_HEADER, str(limit).encode())])
            if upgrade.cancelled_caught:
                log.info("WebSocket upgrade did not complete", connection=name)
            else:
                log.info("client connected", connection=name)
                nursery.start_soon(_heartbeat, ws, name, self.limits)
                await self.server.serve_transport(
                    WebSocketTransport(ws, name), name=name, initialize_within=self.limits.initialize_timeout_s,
                )
                log.info("client disconnected", connection=name)
            nursery.cancel_scope.cancel()


async def _heartbeat(ws: WebSocketConnection, name: str, limits: Limits) -> None:
    """Ping the client every `ping_interval_s`; one that has not answered within `pong_timeout_s`
    is gone (a dead NAT, a suspended laptop): its connection is closed, so it stops holding a slot
    and keeping its threads loaded."""
    from trio_websocket import ConnectionClosed

    while not ws.closed:
        await trio.sleep(limits.ping_interval_s)
        with trio.move_on_after(limits.pong_timeout_s) as waited:
            try:
                await ws.ping()
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if waited.cancelled_caught:
            log.info("client did not answer a ping: connection closed", connection=name)
            with trio.move_on_after(limits.pong_timeout_s):
                await ws.aclose(POLICY_VIOLATION, "no answer to ping")
            return


async def _listen_tcp(listen: WebSocketListen) -> trio.SocketListener:
    try:
        (listener,) = await trio.open_tcp_listeners(listen.port, host=listen.host)
    except OSError as exc:
        raise ListenError(f"cannot listen on {listen.url}: {exc.strerror or exc}") from None
    return listener


async def _listen_unix(path: Path) -> UnixSocket:
    try:
        return await bind_unix(path)
    except SocketPathError as exc:
        raise ListenError(str(exc)) from None


def http_response(reply: HttpReply) -> bytes:
    """`reply` as an HTTP/1.1 response that closes the connection."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(reply.body)).encode()),
        (b"connection", b"close"), *reply.headers,
    ]
    status = f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n".encode()
    return status + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + reply.body


class Replayed(trio.abc.Stream):
    """`stream`, with the bytes already read from it (`head`) read again first."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._head:
            return await self._stream.receive_some(max_bytes)
        size = len(self._head) if max_bytes is None else max_bytes
        data, self._head = self._head[:size], self._head[size:]
        await trio.lowlevel.checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(bytes(data) if isinstance(data, bytearray) else data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
