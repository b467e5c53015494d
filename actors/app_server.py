"""The app-server: Codex v2 JSON-RPC over JSON lines, on top of the thread manager.

One `AppServer` per runtime holds who is subscribed to which thread. Each transport connection
(stdio, or an in-memory stream in tests) is a `Connection` with three kinds of task:

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

import os
import signal
from collections.abc import Iterable

import structlog
import trio
from trio_typing import TaskStatus

from protocol import v2
from protocol.config import Config
from protocol.events import Event
from protocol.jsonrpc import (
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

from .app_methods import HANDLERS, rpc_error
from .handle import ThreadHandle
from .manager import SPINDLE_VERSION, ThreadManager, open_runtime
from .notify import EventTranslator, Notice
from .signals import cancel_on_signal
from .subscriptions import Lagged, Subscription

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
CLOSE_THREAD_S = 10.0
"""How long closing an unsubscribed thread (flushing its rollout) may take."""


class Connection:
    """One client: its handshake, its request queue, its subscriptions and its output."""

    def __init__(self, server: AppServer, name: str) -> None:
        self.server = server
        self.name = name
        self.handshake = Handshake()
        self.writer = Writer()
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](OUTGOING_QUEUE)
        self._req_send, self._req_recv = trio.open_memory_channel[Request](REQUEST_QUEUE)
        self._pumps: dict[str, trio.CancelScope] = {}
        self._after: list[tuple[Notice, Iterable[Connection]]] = []
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

    def after(self, notice: Notice, *, also: Iterable[Connection] = ()) -> None:
        """Send `notice`, to this client and to `also`, once the answer to the current request is out."""
        self._after.append((notice, also))

    # --- subscriptions ----------------------------------------------------
    def follows(self, thread_id: str) -> bool:
        """Whether this client is subscribed to `thread_id` (its pump runs until the thread ends)."""
        return thread_id in self._pumps

    def follow(self, handle: ThreadHandle) -> None:
        if handle.thread_id in self._pumps or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._pumps[handle.thread_id] = scope
        self._nursery.start_soon(self._pump, handle, scope, handle.events(PUMP_BUFFER))

    def unfollow(self, thread_id: str) -> None:
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
                    await self.notify("warning", v2.WarningNotice(
                        message=f"{lag.missed} events of thread {handle.thread_id} were dropped because this client read too slowly",
                        thread_id=handle.thread_id))
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
                self.server.unsubscribe(self, thread_id)
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
        self._after = []
        try:
            handler = HANDLERS.get(request.method)
            if handler is None:
                raise method_error(request.method)
            self.handshake.check(request.method)
            params = decode_params(request.method, request.params)
            result = await handler(self.server, self, params)
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
        for (method, notice), others in self._after:
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


class AppServer:
    """Subscriptions of connections to threads, over one `ThreadManager`."""

    def __init__(self, manager: ThreadManager) -> None:
        self.manager = manager
        self.version = SPINDLE_VERSION
        self._connections: set[Connection] = set()
        self._connection_count = 0
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()

    async def run(self, *, task_status: TaskStatus[AppServer] = trio.TASK_STATUS_IGNORED) -> None:
        """The server's own task: it owns the closing of threads that lost their last subscriber.

        After `stop()` it returns once every closing in flight has flushed its rollout.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()

    def subscribers(self, thread_id: str) -> set[Connection]:
        """The connections subscribed to `thread_id`: those whose pump for it runs."""
        return {conn for conn in self._connections if conn.follows(thread_id)}

    def subscribe(self, conn: Connection, handle: ThreadHandle) -> None:
        conn.follow(handle)

    def unsubscribe(self, conn: Connection, thread_id: str) -> bool:
        """Drop `conn`'s subscription; the last one out closes the thread (seed 004)."""
        if not conn.follows(thread_id):
            return False
        conn.unfollow(thread_id)
        if not self.subscribers(thread_id):
            handle = self.manager.remove_thread(thread_id)
            if handle is not None:
                assert self._nursery is not None, "AppServer.run is not running"
                self._nursery.start_soon(self._close_thread, conn, handle)
        return True

    async def _close_thread(self, conn: Connection, handle: ThreadHandle) -> None:
        with trio.move_on_after(CLOSE_THREAD_S) as scope:
            scope.shield = True
            try:
                await handle.shutdown_and_wait()
            except Exception as exc:
                log.warning("thread did not shut down cleanly", thread_id=handle.thread_id, error=str(exc))
        if scope.cancelled_caught:
            log.warning("thread did not shut down in time", thread_id=handle.thread_id)
        conn.notify_nowait("thread/status/changed", v2.ThreadStatusChanged(thread_id=handle.thread_id, status=v2.NOT_LOADED))
        conn.notify_nowait("thread/closed", v2.ThreadIdNotice(thread_id=handle.thread_id))

    def drop_subscribers(self, thread_id: str) -> None:
        """End every subscription to `thread_id` now (archive), not when each pump sees the thread end,
        so a resume that follows at once starts with no stale subscriber."""
        for conn in self.subscribers(thread_id):
            conn.unfollow(thread_id)

    async def serve(
        self,
        receive: trio.abc.ReceiveStream,
        send: trio.abc.SendStream,
        *,
        task_status: TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one connection until its input closes."""
        self._connection_count += 1
        conn = Connection(self, f"conn-{self._connection_count}")
        self._connections.add(conn)
        task_status.started(conn)
        try:
            await conn.run(receive, send)
        finally:
            self._connections.discard(conn)


async def serve_stdio(config: Config) -> int:
    """`spindle app-server`: one connection on stdin/stdout until stdin closes or SIGTERM/SIGINT.

    Either way every thread is shut down and its rollout flushed before the process exits 0.
    """
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    async with open_runtime(config) as manager, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(manager).run)
        async with trio.open_nursery() as serving:
            serving.start_soon(cancel_on_signal, serving.cancel_scope, signal.SIGTERM, signal.SIGINT)
            await server.serve(stdin, stdout)
            serving.cancel_scope.cancel()
        server.stop()  # `run` ends once the threads this connection let go of are flushed
    return 0
