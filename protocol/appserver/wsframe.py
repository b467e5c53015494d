"""The client side of a WebSocket (RFC 6455), sans-IO and stdlib only: what `spindle app-server
proxy` speaks to the control socket.

`Handshake` writes the upgrade request and checks the server's `101`; `encode_frame` writes one
frame (a client's frames are masked); `FrameReader` takes the bytes read from the server
(`receive_data`) and hands back whole events (`next_event`): a `Message` (its fragments joined),
a `Ping`, a `Pong` or a `Close`. Nothing here does I/O, and nothing heavier than `struct` is
imported (not even hashlib), so a proxy starts in a few milliseconds.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import NamedTuple

try:
    from _sha1 import sha1  # CPython's own: 2 ms sooner than hashlib, which loads OpenSSL
except ImportError:  # pragma: no cover - another Python
    from hashlib import sha1

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
"""Frame opcodes."""
NORMAL_CLOSURE, GOING_AWAY, PROTOCOL_ERROR, MESSAGE_TOO_BIG = 1000, 1001, 1002, 1009
"""Close codes."""
NO_STATUS = 1005
"""The code a `Close` reports when its frame carried none."""
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""Longest message a Codex client accepts (remote-clients.md §2.1); the proxy takes as much."""
MAX_HEAD_BYTES = 16 * 1024
"""Longest reply head to the upgrade request."""
MAX_CONTROL_PAYLOAD = 125
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DATA_OPCODES = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL_OPCODES = frozenset({CLOSE, PING, PONG})


class WebSocketError(Exception):
    """The server broke the protocol; `code` is the close code to answer with."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Message(NamedTuple):
    """A whole data message: `opcode` TEXT or BINARY, its fragments' payloads joined."""

    opcode: int
    payload: bytes


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Close(NamedTuple):
    """The peer's close frame: its code (NO_STATUS when it had none) and reason."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close


def accept_key(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` a server must answer the request key `key` with."""
    return base64.b64encode(sha1(key + _GUID).digest())


class Handshake:
    """One client upgrade: `request()` to send, then `receive_data` until `done` (or an error)."""

    def __init__(self, *, host: str = "localhost", target: str = "/rpc", key: bytes | None = None) -> None:
        self.host = host
        self.target = target
        self.key = key if key is not None else base64.b64encode(os.urandom(16))
        self.headers: dict[str, str] = {}
        """The `101` reply's headers, names lowercased, once `done`."""
        self.rest = b""
        """Bytes after the reply head: the first frames, for a `FrameReader`."""
        self.done = False
        self._buffer = b""

    def request(self) -> bytes:
        return (
            f"GET {self.target} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def receive_data(self, data: bytes) -> bool:
        """Take bytes of the reply; True once the upgrade is complete. WebSocketError if the
        reply is not a valid `101` for this request (its status line and body in the message),
        or if `data` is empty (the server closed before replying)."""
        if not data:
            raise WebSocketError("the server closed the connection before answering the WebSocket upgrade")
        self._buffer += data
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise WebSocketError("the server's reply to the WebSocket upgrade is not HTTP")
            return False
        status_line, *lines = head.decode("latin-1").split("\r\n")
        if status_line.split(" ", 2)[1:2] != ["101"]:
            body = rest.decode("utf-8", "replace").strip()
            raise WebSocketError(f"the server refused the WebSocket upgrade: {status_line}" + (f": {body}" if body else ""))
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("sec-websocket-accept", "").encode() != accept_key(self.key):
            raise WebSocketError("the server's WebSocket upgrade reply has a wrong Sec-WebSocket-Accept")
        self.rest, self.done = rest, True
        return True


def mask_bytes(payload: bytes, mask: bytes) -> bytes:
    """`payload` XORed with the 4-byte `mask` repeated (its own inverse)."""
    size = len(payload)
    if not size:
        return b""
    repeated = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. A client masks every frame: `mask` is its 4-byte key (random when None); pass
    `mask=b""` for an unmasked (server's) frame."""
    if mask is None:
        mask = os.urandom(4)
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    return header + mask + mask_bytes(payload, mask) if mask else header + payload


def close_payload(code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
    """A close frame's payload: the code, then the reason in UTF-8 (cut to fit 125 bytes)."""
    return struct.pack("!H", code) + reason.encode()[: MAX_CONTROL_PAYLOAD - 2]


class FrameReader:
    """Frames from the server, as events. `receive_data(bytes)`, then `next_event()` until None
    (it needs more bytes). WebSocketError on a broken frame: a masked one (`expect_masked` False),
    a reserved bit, a fragmented or long control frame, a stray continuation, a message past
    `max_message_bytes` (code 1009)."""

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES, expect_masked: bool = False) -> None:
        self.max_message_bytes = max_message_bytes
        self.expect_masked = expect_masked
        self._buffer = bytearray()
        self._opcode: int | None = None
        """The opcode of the message whose fragments are being gathered."""
        self._fragments: list[bytes] = []
        self._gathered = 0

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Event | None:
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode in _CONTROL_OPCODES:
                return _control(opcode, payload)
            if (event := self._gather(fin, opcode, payload)) is not None:
                return event
        return None

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin, opcode, masked, size = bool(first & 0x80), first & 0x0F, bool(second & 0x80), second & 0x7F
        if first & 0x70:
            raise WebSocketError("the server set a reserved bit (no extension was agreed)")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
            raise WebSocketError(f"the server sent an unknown opcode {opcode:#x}")
        if masked != self.expect_masked:
            raise WebSocketError("a masked frame from the server" if masked else "an unmasked frame from the client")
        offset = 2
        if size == 126:
            if len(buffer) < 4:
                return None
            (size,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif size == 127:
            if len(buffer) < 10:
                return None
            (size,) = struct.unpack_from("!Q", buffer, 2)
            offset = 10
        if opcode in _CONTROL_OPCODES and (size > MAX_CONTROL_PAYLOAD or not fin):
            raise WebSocketError("a control frame that is fragmented or longer than 125 bytes")
        if opcode in _DATA_OPCODES and self._gathered + size > self.max_message_bytes:
            raise WebSocketError(f"a message longer than {self.max_message_bytes} bytes", MESSAGE_TOO_BIG)
        mask = b""
        if masked:
            if len(buffer) < offset + 4:
                return None
            mask, offset = bytes(buffer[offset:offset + 4]), offset + 4
        if len(buffer) < offset + size:
            return None
        payload = bytes(buffer[offset:offset + size])
        del buffer[:offset + size]
        return fin, opcode, mask_bytes(payload, mask) if mask else payload

    def _gather(self, fin: bool, opcode: int, payload: bytes) -> Message | None:
        if opcode == CONTINUATION:
            if self._opcode is None:
                raise WebSocketError("a continuation frame with no message to continue")
        elif self._opcode is not None:
            raise WebSocketError("a new message began before the fragmented one ended")
        else:
            self._opcode = opcode
        if fin and not self._fragments:
            self._opcode = None
            return Message(opcode, payload)
        self._fragments.append(payload)
        self._gathered += len(payload)
        if not fin:
            return None
        message = Message(self._opcode, b"".join(self._fragments))
        self._opcode, self._fragments, self._gathered = None, [], 0
        return message


def _control(opcode: int, payload: bytes) -> Ping | Pong | Close:
    if opcode == PING:
        return Ping(payload)
    if opcode == PONG:
        return Pong(payload)
    if not payload:
        return Close(NO_STATUS, "")
    if len(payload) == 1:
        raise WebSocketError("a close frame with a one-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    return Close(code, payload[2:].decode("utf-8", "replace"))
