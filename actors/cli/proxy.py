"""`spindle app-server proxy`: JSON-RPC lines on stdio relayed to an app-server's Unix socket.

Each line from stdin goes to the server as one WebSocket text frame; each text frame from the
server comes out as one line on stdout. Standard library only, and no trio, structlog or msgspec:
the proxy answers `initialize` as soon as the daemon behind it does, without Spindle's start-up.
When stdin ends the proxy waits for the answers to the requests it relayed (as `spindle
app-server` on stdio answers those before it exits), sends a close frame, waits for the server's
and exits 0; when the server goes away first, or cannot be reached, it says so on stderr and
exits non-zero.

A client that speaks WebSocket itself (its first bytes are the upgrade request) gets the bytes
relayed as they are, as `codex app-server proxy` relays them for every client.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import time

from spindle.protocol.appserver import wsframe as ws

from .early import early

CONNECT_TIMEOUT_S = 10.0
"""Time for the connect and the WebSocket upgrade (Codex's clients give up after 10 s)."""
SNIFF_S = 1.0
"""How long the proxy waits for stdin's first bytes (an upgrade request, or JSON) before it
upgrades the connection itself: well within the server's 10 s for a handshake."""
CLOSE_TIMEOUT_S = 5.0
"""After stdin ends: how long the proxy waits for the server to answer its close frame."""
READ_BYTES = 256 * 1024
"""Bytes asked of stdin or the socket per read."""
HIGH_WATER = 4 * 1024 * 1024
"""Bytes waiting to go to the server above which the proxy stops reading stdin."""
EXIT_LOST = 1
"""Exit code: the server closed the connection, or broke the protocol, before stdin ended."""
EXIT_UNREACHABLE = 2
"""Exit code: nothing answered on the socket, or it refused the WebSocket upgrade."""
_NOTHING_THERE = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK})
"""A connect failed this way: no server listens at the path."""
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 0}
"""As `spindle app-server`: 130 for Ctrl-C, 0 for SIGTERM."""


class ProxyError(Exception):
    """Why the proxy stops: one line for stderr, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class NothingListens(ProxyError):
    """Nothing answers on the socket (no file, or a stale one): a daemon may be started there."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signal.Signals(signum)


def connect(path: str, *, timeout: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A connection to the Unix socket `path`, blocking with `timeout`. NothingListens if no
    server is there; ProxyError if it cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno in _NOTHING_THERE:
            raise NothingListens(f"no app-server listens on {path}", EXIT_UNREACHABLE) from None
        raise ProxyError(f"cannot connect to {path}: {exc.strerror or exc}", EXIT_UNREACHABLE) from None
    return sock


def upgrade(sock: socket.socket, path: str) -> ws.FrameReader:
    """Upgrade the connection `sock` to a WebSocket; its reader (holding any frame that came with
    the `101`). ProxyError if the server will not talk; `sock` is non-blocking after."""
    handshake = ws.Handshake()
    try:
        sock.sendall(handshake.request())
        while not handshake.receive_data(sock.recv(READ_BYTES)):
            pass
    except TimeoutError:
        raise ProxyError(f"the app-server on {path} did not answer the WebSocket upgrade in time", EXIT_UNREACHABLE) from None
    except OSError as exc:
        raise ProxyError(f"the app-server on {path} dropped the connection: {exc.strerror or exc}", EXIT_UNREACHABLE) from None
    except ws.WebSocketError as exc:
        raise ProxyError(f"{path}: {exc}", EXIT_UNREACHABLE) from None
    sock.setblocking(False)
    reader = ws.FrameReader()
    reader.receive_data(handshake.rest)
    return reader


class Relay:
    """Stdin lines to text frames and text frames to stdout lines, over one connected socket.

    stdin is read only when poll says it is readable, and stdout written with blocking writes, so
    neither descriptor (shared with the parent) is made non-blocking; the socket is.
    """

    def __init__(self, sock: socket.socket, reader: ws.FrameReader, *, stdin: int = 0, stdout: int = 1) -> None:
        self.sock = sock
        self.reader = reader
        self.stdin = stdin
        self.stdout = stdout
        self.outgoing = bytearray()
        """Frames not yet sent to the server."""
        self.partial = b""
        """The start of a stdin line whose end has not come yet."""
        self.pending: set[object] = set()
        """Ids of the requests relayed to the server and not answered yet."""
        self.stdin_open = True
        self.closing_since: float | None = None
        """When the close frame was queued (stdin ended)."""

    def run(self) -> int:
        """Relay until stdin ends (0) or the server goes away (ProxyError)."""
        with selectors.PollSelector() as selector:  # poll: stdin may be a regular file (epoll refuses those)
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self.stdin, selectors.EVENT_READ)
            reading_stdin = True
            while True:
                wants_stdin = self.stdin_open and len(self.outgoing) < HIGH_WATER
                if wants_stdin != reading_stdin:
                    if wants_stdin:
                        selector.register(self.stdin, selectors.EVENT_READ)
                    else:
                        selector.unregister(self.stdin)
                    reading_stdin = wants_stdin
                selector.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0))
                timeout = None
                if self.closing_since is not None:
                    timeout = self.closing_since + CLOSE_TIMEOUT_S - time.monotonic()
                    if timeout <= 0:
                        return 0  # our close went unanswered: stdin has ended all the same
                for key, mask in selector.select(timeout):
                    if key.fileobj is self.sock:
                        if mask & selectors.EVENT_WRITE:
                            self._send()
                        if mask & selectors.EVENT_READ and self._receive():
                            return 0
                    else:
                        self._read_stdin()
                if not self.stdin_open and not self.pending and self.closing_since is None:
                    self.outgoing += ws.encode_frame(ws.CLOSE, ws.close_payload(ws.NORMAL_CLOSURE))
                    self.closing_since = time.monotonic()

    def _read_stdin(self) -> None:
        self.take(os.read(self.stdin, READ_BYTES))

    def take(self, chunk: bytes) -> None:
        """Queue a frame per whole line of `chunk` read from stdin; at stdin's end (`b""`), the
        last unfinished line."""
        if not chunk:
            self._queue(self.partial)
            self.partial = b""
            self.stdin_open = False
            return
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            self._queue(line)

    def _queue(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        self.outgoing += ws.encode_frame(ws.TEXT, line)
        try:
            message = json.loads(line)
        except ValueError:
            return  # the server answers it with an error of its own
        if isinstance(message, dict) and "method" in message and "id" in message:
            self.pending.add(_key(message["id"]))

    def _send(self) -> None:
        try:
            sent = self.sock.send(self.outgoing)
        except BlockingIOError:
            return
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        del self.outgoing[:sent]

    def _receive(self) -> bool:
        """Read the socket and act on its events; True once the server answered our close."""
        try:
            data = self.sock.recv(READ_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        if not data:
            if self.closing_since is not None:
                return True
            raise self._lost("it closed the connection")
        self.reader.receive_data(data)
        try:
            while (event := self.reader.next_event()) is not None:
                if self._on_event(event):
                    return True
        except ws.WebSocketError as exc:
            self._send_now(ws.encode_frame(ws.CLOSE, ws.close_payload(exc.code)))
            raise ProxyError(f"the app-server broke the WebSocket protocol: {exc}", EXIT_LOST) from None
        return False

    def _on_event(self, event: ws.Event) -> bool:
        match event:
            case ws.Message(opcode=ws.TEXT, payload=payload):
                if self.pending:
                    self._note_answer(payload)
                self._write_stdout(payload + b"\n")
            case ws.Ping(payload=payload):
                self.outgoing += ws.encode_frame(ws.PONG, payload)
            case ws.Close(code=code, reason=reason):
                if self.closing_since is not None:
                    return True
                self._send_now(ws.encode_frame(ws.CLOSE, ws.close_payload(code if code != ws.NO_STATUS else ws.NORMAL_CLOSURE)))
                said = f"{code}" + (f" {reason}" if reason else "")
                raise self._lost(f"it closed the connection ({said})")
        return False  # a binary message or a pong: Codex's clients ignore them too

    def _note_answer(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict) and "id" in message and "method" not in message:
            self.pending.discard(_key(message["id"]))

    def _write_stdout(self, data: bytes) -> None:
        _write_all(self.stdout, data)

    def _send_now(self, frame: bytes) -> None:
        """Best effort, before giving up on the connection."""
        try:
            self.sock.send(bytes(self.outgoing) + frame)
        except OSError:
            pass

    def _lost(self, why: str) -> ProxyError:
        return ProxyError(f"the app-server went away: {why}", EXIT_LOST)


def _key(request_id: object) -> object:
    """A request id as a set member: 1 and "1" are different ids, and a malformed one still hashes."""
    return (type(request_id).__name__, json.dumps(request_id))


class ByteRelay:
    """Bytes as they are, both ways, for a client that speaks WebSocket itself (its first bytes
    are the upgrade request), as through `codex app-server proxy`."""

    def __init__(self, sock: socket.socket, first: bytes, *, stdin: int = 0, stdout: int = 1) -> None:
        self.sock = sock
        self.stdin = stdin
        self.stdout = stdout
        self.first = first

    def run(self) -> int:
        """Until the server ends the connection (0); stdin's end is passed on as a half-close."""
        sock = self.sock
        sock.setblocking(True)
        sock.settimeout(None)
        try:
            sock.sendall(self.first)
            with selectors.PollSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                selector.register(self.stdin, selectors.EVENT_READ)
                while True:
                    for key, _ in selector.select():
                        if key.fileobj is not sock:
                            if chunk := os.read(self.stdin, READ_BYTES):
                                sock.sendall(chunk)
                            else:
                                selector.unregister(self.stdin)
                                sock.shutdown(socket.SHUT_WR)
                        elif data := sock.recv(READ_BYTES):
                            _write_all(self.stdout, data)
                        else:
                            return 0
        except OSError as exc:
            raise ProxyError(f"the app-server went away: {exc.strerror or exc}", EXIT_LOST) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise ProxyError("stdout was closed: nothing reads the server's messages", EXIT_LOST) from None


def relay(path: str, *, stdin: int = 0, stdout: int = 1) -> int:
    """Connect to `path` and relay stdio until one side ends; the exit code.

    JSON-RPC lines are carried as WebSocket text frames; a client whose first bytes are a
    WebSocket upgrade request (`GET `) speaks WebSocket itself, and gets the bytes as they are
    (what `codex app-server proxy` does for every client)."""
    sock = connect(path)
    with sock:
        first = _first_bytes(stdin)
        if first is not None and first.startswith(b"GET "):
            return ByteRelay(sock, first, stdin=stdin, stdout=stdout).run()
        lines = Relay(sock, upgrade(sock, path), stdin=stdin, stdout=stdout)
        if first is not None:
            lines.take(first)
        return lines.run()


def _first_bytes(stdin: int) -> bytes | None:
    """What stdin has within `SNIFF_S` (`b""` if it ended), or None if nothing came: a client
    writes its first request, or its upgrade, as soon as the proxy starts."""
    with selectors.PollSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        if not selector.select(SNIFF_S):
            return None
    return os.read(stdin, READ_BYTES)


def on_stop_signals() -> None:
    """SIGINT and SIGTERM end the relay at once (the server sees the connection end); one that
    came while Python started is acted on now."""

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    for signum in SIGNAL_EXIT:
        signal.signal(signum, stop)
    if early:
        raise Stopped(early[0])
