"""Where the app-server listens, and who may come in: sans-IO.

`parse_listen(url)` reads one `--listen` URL, in the forms Codex's app-server takes: `stdio://`,
`ws://IP:PORT` (WebSocket over TCP) and `unix://` or `unix://PATH` (WebSocket over a Unix socket;
bare `unix://` is the control socket under CODEX_HOME that a plain `codex` probes).
`check_exposure` refuses a plan that would serve a non-loopback address without a token.
`gate(...)` decides what an HTTP request on a listener gets before any WebSocket exists: the
health answers, the refusals (an `Origin`, a missing or wrong bearer token, a full server), or the
go-ahead to upgrade. Nothing here does I/O.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

HEALTH_PATHS = frozenset({b"/readyz", b"/healthz"})
"""Plain `GET`s a listener answers `200` with an empty body while it is up."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Longest message (text frame, or fragments together) the server reads; a longer one closes the
connection with 1009. Codex's app-server advertises the same number on its upgrade reply."""
MAX_MESSAGE_HEADER = b"x-codex-websocket-max-unfragmented-message-bytes"
"""The reply header that tells a Codex client `MAX_MESSAGE_BYTES`."""


class ListenUrlError(ValueError):
    """A `--listen` URL that is not one of the forms, or a plan that may not start; the message
    says which and what to write instead."""


@dataclass(frozen=True, slots=True)
class StdioListen:
    """JSON lines on stdin and stdout: one connection, for the process that started the server."""

    url: str = "stdio://"


@dataclass(frozen=True, slots=True)
class WebSocketListen:
    """WebSocket over TCP on `host:port` (port 0: any free port)."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    @property
    def url(self) -> str:
        return ws_url(self.host, self.port)


@dataclass(frozen=True, slots=True)
class UnixListen:
    """WebSocket over a Unix socket at `path`; None is the control socket under CODEX_HOME."""

    path: str | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path or ''}"


Listen = StdioListen | WebSocketListen | UnixListen

FORMS = "stdio://, ws://IP:PORT, unix:// or unix://PATH"


def parse_listen(url: str) -> Listen:
    """The listener `url` names; ListenUrlError naming the accepted forms if it names none."""
    if url == "stdio://":
        return StdioListen()
    if url.startswith("unix://"):
        return UnixListen(url.removeprefix("unix://") or None)
    if url.startswith("wss://"):
        raise ListenUrlError(f"--listen {url}: Spindle serves no TLS; listen on ws:// and put a TLS proxy in front")
    if not url.startswith("ws://"):
        raise ListenUrlError(f"--listen {url}: not a listener URL; use {FORMS}")
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ListenUrlError(f"--listen {url}: a ws:// listener is ws://IP:PORT, with nothing after the port")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ListenUrlError(f"--listen {url}: name the port (ws://IP:PORT; 0 picks a free one)")
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ListenUrlError(f"--listen {url}: the host must be an IP address (such as 127.0.0.1 or ::1), not {host!r}") from None
    return WebSocketListen(host, port)


def check_exposure(listens: Sequence[Listen], *, token: bytes | None) -> None:
    """ListenUrlError if a `ws://` listener would take connections from other machines without a
    token, or if stdio is named twice."""
    for listen in listens:
        if isinstance(listen, WebSocketListen) and not listen.loopback and token is None:
            raise ListenUrlError(
                f"--listen {listen.url}: {listen.host} is not a loopback address, so anyone who can reach it "
                "could drive this server; add --ws-auth capability-token --ws-token-file FILE"
            )
    if sum(isinstance(listen, StdioListen) for listen in listens) > 1:
        raise ListenUrlError("--listen stdio:// may be given once")


def ws_url(host: str, port: int) -> str:
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"


# --- the HTTP gate -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A plain HTTP answer, after which the connection closes."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Go ahead: accept the WebSocket upgrade."""


def gate(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], *, token: bytes | None, room: bool
) -> HttpReply | Upgrade:
    """What the request `method target` with `headers` (names lower-case) gets.

    `token`: the bearer token upgrades must present (None: no auth on this listener). `room`:
    whether the server has room for one more connection.
    """
    names = {name for name, _ in headers}
    if b"origin" in names:  # a browser page: never let a web origin drive the server
        return HttpReply(403, b"requests with an Origin header are refused\n")
    path = target.split(b"?", 1)[0]
    if path in HEALTH_PATHS and method in (b"GET", b"HEAD"):
        return HttpReply(200)
    if method != b"GET":
        return HttpReply(405, b"only GET: a WebSocket upgrade, or /readyz and /healthz\n", ((b"allow", b"GET"),))
    if not _is_upgrade(headers):
        return HttpReply(400, b"expected a WebSocket upgrade (GET /rpc), or GET /readyz or /healthz\n")
    if _header(headers, b"sec-websocket-version") != b"13":
        return HttpReply(426, b"WebSocket version 13 only\n", ((b"sec-websocket-version", b"13"),))
    if not _header(headers, b"sec-websocket-key"):
        return HttpReply(400, b"a WebSocket upgrade needs Sec-WebSocket-Key\n")
    if token is not None:
        problem = _auth_problem(headers, token)
        if problem is not None:
            return HttpReply(401, problem, ((b"www-authenticate", b"Bearer"),))
    if not room:
        return HttpReply(503, b"too many connections; retry later\n", ((b"retry-after", b"1"),))
    return Upgrade()


def _is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    upgrade = any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers)
    connection = any(name == b"connection" and b"upgrade" in value.lower() for name, value in headers)
    return upgrade and connection


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value.strip() for key, value in headers if key == name), None)


def _auth_problem(headers: Sequence[tuple[bytes, bytes]], token: bytes) -> bytes | None:
    """Why the request's `Authorization: Bearer <token>` does not admit it; None if it does.

    The token is taken only from that header, as Codex's clients send it, and compared in
    constant time.
    """
    given = _header(headers, b"authorization")
    if given is None:
        return b"missing bearer token: send Authorization: Bearer <token>\n"
    scheme, _, presented = given.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(), token):
        return b"invalid bearer token\n"
    return None
