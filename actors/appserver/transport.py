"""How a connection's messages travel: one interface, two adapters.

A `Connection` reads whole JSON-RPC messages from a `MessageTransport` and hands it batches of
encoded messages (each ending in `\\n`, as `Writer` makes them). `LineTransport` carries them as
JSON lines on a pair of byte streams (stdio, or an in-memory stream in tests); `WebSocketTransport`
as one text frame each on a trio-websocket connection (ws:// and unix:// listeners).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

if TYPE_CHECKING:  # trio-websocket is imported only once a WebSocket connection exists (start-up)
    from trio_websocket import WebSocketConnection

from spindle.protocol.appserver.jsonrpc import ID_SCAN_BYTES

log = structlog.get_logger(__name__)

MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest input line accepted on stdio; a longer one is refused (`-32600`) and skipped to its end."""
CLOSE_S = 5.0
"""How long a WebSocket close handshake may take before the socket is dropped."""

SEND_DEADLINE_S = 60.0
"""How long one batch of messages may take to reach a WebSocket client before it counts as gone."""
POLICY_VIOLATION = 1008
"""WebSocket close code for a client that broke the server's rules (no `initialize` in time)."""
UNSUPPORTED_DATA = 1003
"""WebSocket close code for a binary frame: JSON-RPC travels in text frames only."""


@dataclass(frozen=True, slots=True)
class TooLong:
    """An input message over the transport's limit, skipped; `head` is its start (to find its id)."""

    head: bytes
    limit: int


Inbound = bytes | bytearray | TooLong


class MessageTransport(Protocol):
    """A connection's wire, as the `Connection` sees it."""

    async def receive(self) -> Inbound | None:
        """The next whole message (without framing); None once the input has ended."""

    async def send_batch(self, messages: list[bytes]) -> None:
        """Send `messages` (each ending in `\\n`) in order. trio.BrokenResourceError once the peer
        is gone."""

    async def aclose(self, reason: str | None = None) -> None:
        """Close the wire; `reason` says why when the server, not the client, ends it."""


class LineTransport:
    """JSON lines on a receive stream and a send stream."""

    def __init__(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream, *, max_line: int | None = None) -> None:
        self._receive = receive
        self._send = send
        self._max_line = max_line
        """Longest line kept (None: `MAX_LINE_BYTES`)."""
        self._buffer = bytearray()
        self._searched = 0  # bytes of `_buffer` known to hold no newline
        self._skipping = False  # in the rest of a line too long to keep
        self._ready: deque[Inbound] = deque()
        self._ended = False

    async def receive(self) -> Inbound | None:
        while not self._ready:
            if self._ended:
                return None
            try:
                chunk = await self._receive.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if chunk:
                self._feed(chunk)
            else:
                self._ended = True
                if not self._skipping and self._buffer:  # a last line without its newline
                    self._ready.append(bytes(self._buffer))
        return self._ready.popleft()

    def _feed(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", max(start, self._searched))) >= 0:
            if not self._skipping:
                self._ready.append(buffer[start:end])  # a copy: decoded params may keep it
            self._skipping = False
            start = end + 1
        del buffer[:start]
        self._searched = len(buffer)
        limit = self._max_line or MAX_LINE_BYTES
        if len(buffer) > limit:
            if not self._skipping:
                self._ready.append(TooLong(bytes(buffer[:ID_SCAN_BYTES]), limit))
            self._skipping = True
            buffer.clear()
            self._searched = 0

    async def send_batch(self, messages: list[bytes]) -> None:
        await self._send.send_all(b"".join(messages))

    async def aclose(self, reason: str | None = None) -> None:
        await trio.aclose_forcefully(self._send)


class WebSocketTransport:
    """One JSON-RPC message per text frame on a WebSocket connection.

    A binary frame closes the connection (1003); a message over the connection's limit is closed
    by trio-websocket itself (1009); ping and pong are answered underneath.
    """

    def __init__(self, ws: WebSocketConnection, name: str) -> None:
        self.ws = ws
        self.name = name

    async def receive(self) -> Inbound | None:
        from trio_websocket import ConnectionClosed

        try:
            message = await self.ws.get_message()
        except ConnectionClosed:
            return None
        if isinstance(message, str):
            return message.encode()
        log.warning("binary frame: connection closed", connection=self.name, bytes=len(message))
        await self._close(UNSUPPORTED_DATA, "binary frames are not accepted: send each JSON-RPC message as one text frame")
        return None

    async def send_batch(self, messages: list[bytes]) -> None:
        """Send `messages`; a client that takes no part of them within `SEND_DEADLINE_S` counts as
        gone (BrokenResourceError), so a dead peer never holds the connection open."""
        from trio_websocket import ConnectionClosed

        try:
            with trio.fail_after(SEND_DEADLINE_S):
                for message in messages:
                    await self.ws.send_message(message[:-1].decode())
        except ConnectionClosed as exc:
            raise trio.BrokenResourceError(f"WebSocket closed: {exc.reason}") from None
        except trio.TooSlowError:
            raise trio.BrokenResourceError(f"the client took no message for {SEND_DEADLINE_S:.0f} s") from None

    async def aclose(self, reason: str | None = None) -> None:
        if reason is None:
            await self._close(1000, None)
        else:
            await self._close(POLICY_VIOLATION, reason)

    async def _close(self, code: int, reason: str | None) -> None:
        """Send the close frame and wait (a bounded time) for the client's."""
        with trio.move_on_after(CLOSE_S):
            await self.ws.aclose(code, reason)
