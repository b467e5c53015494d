"""One app-server client: Codex v2 JSON-RPC over JSON lines.

Each transport connection (stdio, or an in-memory stream in tests) is a `Connection` with three
kinds of task:

* the reader splits input into lines and puts requests on a bounded queue; when the queue is full
  it answers `-32001` at once, so a flood never grows memory;
* the worker takes requests in order, runs their handler and queues the answer;
* one pump per subscribed thread turns its events into notifications.

Everything the connection says goes through one bounded outgoing channel to the writer task,
which batches lines into a single write. A client that stops reading fills that channel; the
pumps then wait, their thread subscriptions lag and drop events, and the thread actors never
wait for anyone.
"""

from __future__ import annotations

import structlog
import trio

from spindle.actors.runtime import Lagged, Subscription, ThreadHandle, ThreadManager
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import (
    INTERNAL_ERROR,
    Handshake,
    Invalid,
    Notification,
    Reply,
    Request,
    RpcError,
    Writer,
    decode_params,
    method_error,
    overloaded,
    parse_line,
)
from spindle.protocol.events import Event

from .context import RequestContext, SubscriberIndex
from .errors import rpc_error
from .methods import HANDLERS
from .notify import EventTranslator

log = structlog.get_logger(__name__)

REQUEST_QUEUE = 256
"""Requests read ahead of the worker before the server answers "overloaded"."""
OUTGOING_QUEUE = 4096
"""Lines queued for the writer before producers wait."""
MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest input line accepted; a longer one is dropped with an error on stderr."""
PUMP_BUFFER = 4096
"""Events buffered per (connection, thread) before that subscription lags."""
CLOSE_DRAIN_S = 5.0
"""How long a closing connection may spend writing what it still has queued."""


class Connection:
    """One client: its handshake, its request queue, its subscriptions and its output."""

    def __init__(self, manager: ThreadManager, index: SubscriberIndex, name: str) -> None:
        self.manager = manager
        self.index = index
        self.name = name
        self.handshake = Handshake()
        self.writer = Writer()
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](OUTGOING_QUEUE)
        self._req_send, self._req_recv = trio.open_memory_channel[Request](REQUEST_QUEUE)
        self._pumps: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._writer_done = trio.Event()

    # --- output ---------------------------------------------------------
    def _emit_nowait(self, line: bytes) -> None:
        try:
            self._out_send.send_nowait(line)
        except trio.WouldBlock:
            log.warning("client is not reading; dropped a message", connection=self.name)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _emit(self, line: bytes) -> None:
        try:
            await self._out_send.send(line)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def notify(self, method: str, params: object) -> None:
        await self._emit(self.writer.notification(method, params))

    def notify_nowait(self, method: str, params: object) -> None:
        self._emit_nowait(self.writer.notification(method, params))

    # --- subscriptions ----------------------------------------------------
    def is_subscribed(self, thread_id: str) -> bool:
        """Whether this client is subscribed to `thread_id` (its pump runs until the thread ends)."""
        return thread_id in self._pumps

    def subscribe(self, handle: ThreadHandle) -> None:
        """Start the pump that turns the thread's events into this client's notifications."""
        if handle.thread_id in self._pumps or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._pumps[handle.thread_id] = scope
        self._nursery.start_soon(self._pump, handle, scope, handle.events(PUMP_BUFFER))

    def end_subscription(self, thread_id: str) -> None:
        """Stop the thread's pump (the server decides whether the thread closes)."""
        scope = self._pumps.pop(thread_id, None)
        if scope is not None:
            scope.cancel()

    async def _pump(self, handle: ThreadHandle, scope: trio.CancelScope, events: Subscription[Event]) -> None:
        translator = EventTranslator(handle.thread_id)
        with scope, events:
            while True:
                try:
                    event = await events.receive()
                except Lagged as lag:
                    await self.notify("warning", v2.WarningNotice(message=_lag_warning(handle.thread_id, lag), thread_id=handle.thread_id))
                    continue
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    break
                for method, params in translator.translate(event):
                    await self.notify(method, params)
        if self._pumps.get(handle.thread_id) is scope:
            del self._pumps[handle.thread_id]

    # --- the three loops --------------------------------------------------
    async def run(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream) -> None:
        """Serve this connection until its input ends; then let go of its threads."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_loop, send)
            async with trio.open_nursery() as work:
                work.start_soon(self._work_loop)
                await self._read_loop(receive)
            # input ended and every queued request is answered: let go of the threads
            for thread_id in list(self._pumps):
                self.index.unsubscribe(self, thread_id)
            self._out_send.close()
            with trio.move_on_after(CLOSE_DRAIN_S):
                await self._writer_done.wait()
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(send)

    async def _read_loop(self, receive: trio.abc.ReceiveStream) -> None:
        buffer = bytearray()
        try:
            async for chunk in receive:
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    self._take(buffer[start:end])
                    start = end + 1
                del buffer[:start]
                if len(buffer) > MAX_LINE_BYTES:
                    log.error("input line too long; dropped", connection=self.name, bytes=len(buffer))
                    buffer.clear()
        except trio.BrokenResourceError:
            pass
        self._take(buffer)
        self._req_send.close()

    def _take(self, line: bytearray) -> None:
        """Handle one input line (a copy: decoded params may keep a reference to it)."""
        if not line or line.isspace():
            return
        match parse_line(line):
            case Request() as request:
                try:
                    self._req_send.send_nowait(request)
                except trio.WouldBlock:
                    self._emit_nowait(self.writer.error(request.id, overloaded()))
            case Invalid(error=error, id=request_id):
                if request_id is None:
                    log.warning("ignored input line", connection=self.name, reason=error.message, line=line[:200].decode("utf-8", "replace"))
                else:
                    self._emit_nowait(self.writer.error(request_id, error))
            case Notification(method=method):
                if method != "initialized":
                    log.info("ignored client notification", connection=self.name, method=method)
            case Reply(id=reply_id):
                log.info("ignored response to an unknown server request", connection=self.name, id=reply_id)

    async def _work_loop(self) -> None:
        async with self._req_recv:
            async for request in self._req_recv:
                await self._handle(request)

    async def _handle(self, request: Request) -> None:
        ctx = RequestContext(manager=self.manager, peer=self, index=self.index)
        try:
            handler = HANDLERS.get(request.method)
            if handler is None:
                raise method_error(request.method)
            self.handshake.check(request.method)
            params = decode_params(request.method, request.params)
            result = await handler(ctx, params)
        except RpcError as exc:
            await self._emit(self.writer.error(request.id, exc))
            return
        except Exception as exc:
            error = rpc_error(exc)
            if error is None:  # a bug must not kill the server: answer, log, go on
                log.exception("request failed", method=request.method)
                error = RpcError(INTERNAL_ERROR, f"internal error in {request.method}: {exc}")
            await self._emit(self.writer.error(request.id, error))
            return
        await self._emit(self.writer.response(request.id, result))
        for (method, notice), others in ctx.notices:
            await self.notify(method, notice)
            for other in others:
                if other is not self:
                    other.notify_nowait(method, notice)

    async def _write_loop(self, send: trio.abc.SendStream) -> None:
        try:
            async with self._out_recv:
                async for line in self._out_recv:
                    batch = [line]
                    while len(batch) < 256:
                        try:
                            batch.append(self._out_recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await send.send_all(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client output closed", connection=self.name)
        finally:
            self._writer_done.set()


def _lag_warning(thread_id: str, lag: Lagged) -> str:
    """What a lagging client is told: what it lost, and how to catch up when it matters."""
    if lag.lifecycle_missed:
        return (
            f"{lag.missed} events of thread {thread_id} were dropped because this client read too slowly, "
            f"{lag.lifecycle_missed} of them item, turn or status events; re-read the thread with thread/read"
        )
    return f"{lag.missed} streaming deltas or token counts of thread {thread_id} were dropped because this client read too slowly"
