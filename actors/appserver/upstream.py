"""This node as a client of another: one WebSocket to the node that runs threads a client of ours
asked for (see `forward.py`), initialized with that client's own `initialize` params, so the
owner serves it as it would serve the client itself.

A forwarded request goes up with an id of this connection's own; the owner's answer comes back
to the client with the client's id. Everything else the owner sends is the client's: its
notifications are relayed as they are (they name their thread), its server requests (approvals)
with ids from the client's connection (`Downstream.relay_ask`), and the client's answers go back
with the owner's ids. One reader relays all of it in the order the owner sent it, answers
included, so a client sees a forwarded `turn/start` answered before that turn's events, as from a
node of its own. When the client does not read, the reader waits, and the owner's subscriptions
for this connection lag (the owner's rule, not ours).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from spindle.actors.runtime.cluster import Owner
from spindle.protocol.appserver import v2approvals

from .transport import CLOSE_S, SEND_DEADLINE_S

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

log = structlog.get_logger(__name__)

FORWARD_WAIT_S = 120.0
"""How long a forwarded request waits for the owner's answer (a host that vanished sends no FIN)."""

CONNECT_S = 10.0
"""How long connecting to an owner node, and its `initialize`, may take."""
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""The largest message taken from an owner node (what a Codex client accepts)."""
RPC_PATH = "/rpc"


class UpstreamError(Exception):
    """The owner node cannot be reached, or it went away; the message says which."""


class Downstream(Protocol):
    """The client connection an upstream relays to."""

    async def relay(self, line: bytes) -> None:
        """Queue `line` (a whole message ending in `\\n`) for the client, waiting while its queue is full."""

    def relay_ask(self, source: object, source_id: Any) -> int:
        """The client's id for the server request `source_id` of `source`."""

    def relay_resolved(self, source: object, source_id: Any) -> int | None:
        """The client's id for `source`'s request `source_id`, now settled (forgotten); None if unknown."""

    async def upstream_ended(self, source: object, reason: str) -> None:
        """`source` went away: its requests are forgotten and the client is told."""


_ABSENT = msgspec.Raw(b"")
"""A member the message lacks (a Raw member cannot be None: it takes any JSON, `null` too)."""


def _present(raw: msgspec.Raw) -> msgspec.Raw | None:
    return None if raw == _ABSENT else raw


class _Inbound(msgspec.Struct):
    """Any message an owner node sends: an answer, a notification or a server request."""

    id: Any = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: msgspec.Raw = _ABSENT
    result: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


class _Call(msgspec.Struct, omit_defaults=True):
    id: int
    method: str
    params: msgspec.Raw | None = None


class _Hello(msgspec.Struct, omit_defaults=True):
    method: str
    params: msgspec.Raw | None = None


class _Answer(msgspec.Struct, omit_defaults=True):
    id: Any
    result: msgspec.Raw | None = None
    error: msgspec.Raw | None = None


class _Resolved(msgspec.Struct, rename="camel"):
    thread_id: str
    request_id: Any


class _ResolvedNote(msgspec.Struct, rename="camel"):
    method: str
    params: _Resolved


_inbound = msgspec.json.Decoder(_Inbound)
_resolved = msgspec.json.Decoder(_Resolved)
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class _Pending:
    """A forwarded request waiting for the owner's answer."""

    client_id: Any
    done: trio.Event = field(default_factory=trio.Event)
    answered: bool = False


class Upstream:
    """One connection to `owner` on behalf of one client (`downstream`). Start it with `run`."""

    def __init__(self, owner: Owner, downstream: Downstream, hello: msgspec.Raw | None) -> None:
        self.owner = owner
        self.downstream = downstream
        self.hello = hello
        self.gone: str | None = None
        """Why the connection ended, once it has."""
        self._ws: WebSocketConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}

    def describe(self) -> str:
        return f"node {self.owner.node_id!r} at {self.owner.url}"

    # --- the service ------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[Upstream] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and initialize (UpstreamError if that fails), then relay until either side ends."""
        import trio_websocket

        host, port = _address(self.owner.url)
        try:
            with trio.fail_after(CONNECT_S):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise UpstreamError(f"cannot connect to {self.describe()}: {getattr(exc, 'strerror', None) or exc or 'timed out'}") from None
        failure: UpstreamError | None = None
        try:
            async with trio.open_nursery() as nursery:  # trio-websocket's reader task
                try:
                    with trio.fail_after(CONNECT_S):
                        ws = await trio_websocket.wrap_client_stream(
                            nursery, stream, host, RPC_PATH, max_message_size=MAX_MESSAGE_BYTES)
                        await self._initialize(ws)
                except (trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, trio.TooSlowError,
                        trio.BrokenResourceError, OSError, msgspec.DecodeError, UpstreamError) as exc:
                    failure = exc if isinstance(exc, UpstreamError) else UpstreamError(
                        f"cannot open an app-server connection to {self.describe()}: {exc or 'timed out'}")
                else:
                    self._ws = ws
                    task_status.started(self)
                    await self._serve(ws)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
        if failure is not None:
            raise failure

    async def _initialize(self, ws: WebSocketConnection) -> None:
        await ws.send_message(_encoder.encode(_Call(id=0, method="initialize", params=self.hello)).decode())
        while True:
            message = _inbound.decode(await ws.get_message())
            if message.id == 0 and message.method is msgspec.UNSET:
                break
        if message.error != _ABSENT:
            raise UpstreamError(f"{self.describe()} refused the client's initialize: {bytes(message.error).decode()[:200]}")
        await ws.send_message(_encoder.encode(_Hello(method="initialized")).decode())

    async def _serve(self, ws: WebSocketConnection) -> None:
        reason = "it closed the connection"
        try:
            reason = await self._read_loop(ws)
        finally:
            self._end(reason)
            with trio.move_on_after(CLOSE_S) as closing:
                closing.shield = True
                await ws.aclose()
        await self.downstream.upstream_ended(self, reason)

    def _end(self, reason: str) -> None:
        """No more answers come: every forwarded request still waiting fails."""
        self.gone = reason
        for pending in self._pending.values():
            pending.done.set()
        self._pending.clear()

    # --- from the owner -----------------------------------------------------
    async def _read_loop(self, ws: WebSocketConnection) -> str:
        """Relay what the owner sends until it closes; why it ended."""
        from trio_websocket import ConnectionClosed

        while True:
            try:
                text = await ws.get_message()
            except ConnectionClosed as closed:
                why = closed.reason
                return "its connection closed" + ("" if why is None else f" ({why.code}{': ' + why.reason if why.reason else ''})")
            data = text.encode() if isinstance(text, str) else text
            try:
                message = _inbound.decode(data)
            except msgspec.DecodeError as exc:
                log.warning("unusable message from an owner node; skipped", node=self.owner.node_id, error=str(exc))
                continue
            await self._take(message, data)

    async def _take(self, message: _Inbound, data: bytes) -> None:
        if message.method is msgspec.UNSET:
            await self._answered(message)
        elif message.id is msgspec.UNSET:
            await self.downstream.relay(self._notification(message, data))
        else:
            if not isinstance(message.id, int | str):  # ids are keys here: refuse what cannot be one
                log.warning("an owner node sent a request with an unusable id", node=self.owner.node_id,
                            id=repr(message.id)[:40])
                return
            client_id = self.downstream.relay_ask(self, message.id)
            line = _encoder.encode(_Call(id=client_id, method=message.method, params=_present(message.params))) + b"\n"
            await self.downstream.relay(line)

    async def _answered(self, message: _Inbound) -> None:
        pending = self._pending.pop(message.id, None) if isinstance(message.id, int) else None
        if pending is None:
            log.warning("an owner node answered a request not pending", node=self.owner.node_id, id=repr(message.id)[:40])
            return
        error = _present(message.error)
        result = _present(message.result) or (msgspec.Raw(b"null") if error is None else None)
        answer = _Answer(id=pending.client_id, result=result, error=error)
        try:
            await self.downstream.relay(_encoder.encode(answer) + b"\n")
            pending.answered = True
        finally:  # the forwarding request ends either way
            pending.done.set()

    def _notification(self, message: _Inbound, data: bytes) -> bytes:
        """The notification as the client gets it: as sent, except that a settled server request
        is named by the client's id for it."""
        if message.method == v2approvals.RESOLVED and message.params != _ABSENT:
            try:
                resolved = _resolved.decode(message.params)
            except msgspec.DecodeError:
                return data + b"\n"
            client_id = self.downstream.relay_resolved(self, resolved.request_id)
            if client_id is not None:
                note = _ResolvedNote(method=message.method, params=_Resolved(thread_id=resolved.thread_id, request_id=client_id))
                return _encoder.encode(note) + b"\n"
        return data + b"\n"

    # --- to the owner -------------------------------------------------------
    async def forward(self, client_id: Any, method: str, params: msgspec.Raw | None) -> None:
        """Send the client's request on; returns once the owner's answer has been relayed to the
        client (with `client_id`). UpstreamError if the owner went away before answering."""
        if self.gone is not None:
            raise UpstreamError(f"{self.describe()} went away: {self.gone}")
        upstream_id = next(self._ids)
        pending = self._pending[upstream_id] = _Pending(client_id)
        try:
            await self._send(_Call(id=upstream_id, method=method, params=params))
        except UpstreamError:
            self._pending.pop(upstream_id, None)
            raise
        with trio.move_on_after(FORWARD_WAIT_S) as waiting:
            await pending.done.wait()
        if waiting.cancelled_caught:
            self._pending.pop(upstream_id, None)
            raise UpstreamError(f"{self.describe()} did not answer {method} within {FORWARD_WAIT_S:g} s")
        if not pending.answered:
            raise UpstreamError(f"{self.describe()} went away before it answered: {self.gone}")

    async def answer(self, upstream_id: Any, result: msgspec.Raw | None, error: msgspec.Raw | None) -> None:
        """The client's answer to the owner's server request `upstream_id`."""
        await self._send(_Answer(id=upstream_id, result=result, error=error))

    async def _send(self, message: msgspec.Struct) -> None:
        from trio_websocket import ConnectionClosed

        if self._ws is None or self.gone is not None:
            raise UpstreamError(f"{self.describe()} went away: {self.gone}")
        try:
            with trio.fail_after(SEND_DEADLINE_S):
                await self._ws.send_message(_encoder.encode(message).decode())
        except ConnectionClosed as exc:
            raise UpstreamError(f"{self.describe()} went away: {exc.reason}") from None
        except trio.TooSlowError:
            raise UpstreamError(f"{self.describe()} took no message for {SEND_DEADLINE_S:.0f} s") from None


def _address(url: str) -> tuple[str, int]:
    """(host, port) of a `ws://HOST:PORT` URL; UpstreamError for anything else."""
    rest = url.removeprefix("ws://").split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not url.startswith("ws://") or not host or not port.isdigit():
        raise UpstreamError(f"cannot forward to {url!r}: a node advertises a ws://HOST:PORT address")
    return host.strip("[]"), int(port)
