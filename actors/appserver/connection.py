"""One app-server client: Codex v2 JSON-RPC messages over a `MessageTransport`.

Each transport connection (stdio lines, a WebSocket, or an in-memory stream in tests) is a
`Connection` with four kinds of task:

* the reader takes whole messages from the transport, answers at once the ones that are not
  usable requests, and puts each request in its lane; when the lane, or the thread lanes together,
  hold too many it answers `-32001`, so a flood never grows memory;
* the lanes: the connection's own, for the requests that name no thread, and one per thread that
  requests name (their params' `threadId`), started on demand and ended once empty. A lane runs
  its requests one at a time in arrival order, and lanes run side by side, so a thread that is
  stuck holds up only its own requests;
* one feed per subscribed thread, whose pump turns its events into notifications (`feeds.py`);
* the writer hands the transport what one bounded outgoing channel holds, in batches.

Every answer is awaited onto the outgoing channel, never dropped. A client that stops reading
fills that channel: the lanes and then the reader wait, so the server stops reading that client's
input (backpressure), and the pumps wait too, their thread subscriptions lagging, while the
thread actors never wait for anyone.
"""

from __future__ import annotations

import itertools

import structlog
import trio

from spindle.actors.runtime import ThreadClosedError, ThreadHandle, ThreadManager
from spindle.protocol.appserver import v2, v2approvals
from spindle.protocol.appserver.jsonrpc import (
    INTERNAL_ERROR,
    AnswerId,
    Handshake,
    Invalid,
    Notification,
    Reply,
    Request,
    RpcError,
    Writer,
    decode_params,
    invalid_request,
    method_error,
    overloaded,
    parse_line,
    recover_id,
    thread_timeout,
)
from spindle.protocol.ops import Op

from .context import RequestContext, SubscriberIndex
from .errors import rpc_error
from .feeds import Feed
from .forward import Forwarder
from .idempotency import run_once
from .methods import HANDLERS
from .server_requests import AskedRequest, ServerRequests
from .transport import MessageTransport, TooLong
from .upstream import Upstream, UpstreamError

log = structlog.get_logger(__name__)

REQUEST_QUEUE = 256
"""Requests waiting in the connection's own lane, and requests in all thread lanes together, before
the server answers "overloaded"."""
THREAD_QUEUE = 32
"""Requests waiting in one thread's lane before the server answers "overloaded"."""
OUTGOING_QUEUE = 4096
"""Messages queued for the writer before producers wait (notifications past it are dropped)."""
WRITE_BATCH = 256
"""Most messages handed to the transport in one batch."""
PUMP_BUFFER = 4096
"""Events buffered per (connection, thread) before that subscription lags."""
CLOSE_DRAIN_S = 5.0
"""How long a closing connection may spend writing what it still has queued."""


_serials = itertools.count()


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
        self._own_pending = 0  # requests in the connection's own lane, waiting or running
        self._lanes: dict[str, trio.MemorySendChannel[Request]] = {}
        self._in_lanes = 0  # requests in thread lanes, waiting or running
        self._threads_apart = False  # whether requests naming a thread go to that thread's lane
        self._feeds: dict[str, Feed] = {}
        self._asks = ServerRequests()
        cluster = manager.cluster
        self._forwarder = Forwarder(cluster, self) if cluster is not None and cluster.directory is not None else None
        """Requests for threads another node runs go there (`forward.py`); None unless a node."""
        self.serial = next(_serials)
        """The order the connection came in (the first able client runs a thread's orphaned tools)."""
        self._nursery: trio.Nursery | None = None
        self._lanes_nursery: trio.Nursery | None = None
        self._writer_done = trio.Event()
        self.initialized = trio.Event()
        """Set once the client's `initialize` has succeeded."""

    # --- output ---------------------------------------------------------
    def _emit_nowait(self, line: bytes) -> None:
        """Queue a notification without waiting; dropped, with a log line, if the queue is full."""
        try:
            self._out_send.send_nowait(line)
        except trio.WouldBlock:
            log.warning("client is not reading; dropped a message", connection=self.name)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _emit(self, line: bytes) -> None:
        """Queue `line`, waiting while the queue is full; only a closed client loses it."""
        try:
            await self._out_send.send(line)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _answer_error(self, request_id: AnswerId, error: RpcError) -> None:
        await self._emit(self.writer.error(request_id, error))

    async def _refuse(self, request_id: AnswerId, error: RpcError) -> None:
        """The reader's answer to a line: queued at once while there is room, so a burst is read
        without a pause per line; when the queue is full the reader waits, and stops reading."""
        line = self.writer.error(request_id, error)
        try:
            self._out_send.send_nowait(line)
        except trio.WouldBlock:
            await self._emit(line)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def notify(self, method: str, params: object, seq: int = 0) -> None:
        """Send a notification (`seq`: the number of the thread event it comes from, if one)."""
        if method not in self.handshake.opted_out:
            await self._emit(self.writer.notification(method, params, seq))

    def notify_nowait(self, method: str, params: object) -> None:
        if method not in self.handshake.opted_out:
            self._emit_nowait(self.writer.notification(method, params))

    # --- subscriptions ----------------------------------------------------
    def is_subscribed(self, thread_id: str) -> bool:
        """Whether this client is subscribed to `thread_id` (its feed runs until the thread ends)."""
        return thread_id in self._feeds

    def retains(self, thread_id: str) -> bool:
        """Whether this client's subscription to `thread_id` keeps the thread loaded."""
        feed = self._feeds.get(thread_id)
        return feed is not None and feed.retaining

    def subscribe(self, handle: ThreadHandle, *, observe: bool = False, after: int | None = None) -> int:
        """Follow the thread: its events become this client's notifications from now on, or with
        `after` from the event after that number on (`ReplayTooOld` if they are not all kept).
        The subscription retains the thread, or with `observe` only observes it; subscribing again
        changes only that, unless `after` asks for a replay. Returns how many events it replays."""
        if self._nursery is None:
            return 0
        feed = self._feeds.get(handle.thread_id)
        if feed is not None and after is None:
            self._retain(feed, not observe)
            return 0
        if after is None:
            missed, events = None, handle.events(PUMP_BUFFER)
        else:
            missed, events = handle.events_after(after, PUMP_BUFFER)
        if feed is not None:
            feed.end()  # its requests stay open here: the client has them
        fresh = Feed(handle, events, retaining=False, missed=missed)
        self._feeds[handle.thread_id] = fresh
        self._nursery.start_soon(fresh.run, self)
        self._retain(fresh, not observe, was=feed is not None and feed.retaining)
        return len(missed or ())

    def _retain(self, feed: Feed, retaining: bool, *, was: bool | None = None) -> None:
        """Make `feed` retaining or observing, and tell the server when that changes who holds the thread."""
        was = feed.retaining if was is None else was
        feed.retaining = retaining
        if retaining and not was:
            self.index.hold(feed.thread_id)
        elif was and not retaining:
            self.index.let_go(self, feed.thread_id)

    def end_subscription(self, thread_id: str) -> None:
        """Stop the thread's feed (the server decides whether the thread unloads)."""
        feed = self._feeds.pop(thread_id, None)
        if feed is not None:
            feed.end()

    def feed_ended(self, feed: Feed) -> None:
        if self._feeds.get(feed.thread_id) is feed:
            del self._feeds[feed.thread_id]
        if feed.thread_id not in self._feeds:
            self._asks.forget_thread(feed.thread_id)

    async def ask(self, thread_id: str, key: str, method: str, params: object) -> None:
        if method == v2approvals.TOOL_CALL and self.index.tool_owner(thread_id) is not self:
            return  # a tool call goes to one client: the one that runs the thread's tools
        request_id = self._asks.open(thread_id, key, method)
        if request_id is not None:
            await self._emit(self.writer.request(request_id, method, params))

    async def settle(self, thread_id: str, key: str, *, announce: bool, seq: int) -> None:
        request_id = self._asks.close(thread_id, key)
        if request_id is not None and announce:
            await self.notify(v2approvals.RESOLVED, v2approvals.ServerRequestResolved(
                thread_id=thread_id, request_id=request_id), seq)

    # --- what another node sends this client (`upstream.py`) --------------------
    async def relay(self, line: bytes) -> None:
        await self._emit(line)

    def relay_ask(self, source: object, source_id: object) -> int:
        return self._asks.open_relay(source, source_id)

    def relay_resolved(self, source: object, source_id: object) -> int | None:
        return self._asks.close_relay(source, source_id)

    async def upstream_ended(self, source: object, reason: str) -> None:
        """An owner node this client followed threads on went away: its requests are void, and
        the client is told that those threads send nothing more until it resumes them."""
        self._asks.forget_source(source)
        if isinstance(source, Upstream) and self._forwarder is not None:
            self._forwarder.ended(source)
            log.warning("an owner node went away", connection=self.name, node=source.owner.node_id, reason=reason)
            await self.notify("warning", v2.WarningNotice(message=(
                f"{source.describe()}, which ran threads this client follows, went away ({reason}): they send"
                " nothing more until resumed, which another node does once that node's leases run out")))

    # --- answers to server requests ------------------------------------------
    async def _take_reply(self, reply: Reply) -> None:
        """A client's answer to a server request: checked here, then handed to the thread (which
        settles the request for every client). An error answer declines an approval, fails a tool
        call and tells the model its questions went unanswered; a bad decision, malformed answers
        or an unexpected answer change nothing and the client is told so in a `warning`. The
        answer to another node's request goes back to that node."""
        relayed = self._asks.relayed(reply.id)
        if relayed is not None and isinstance(relayed[0], Upstream):
            assert self._nursery is not None, "Connection.run is not running"
            self._nursery.start_soon(self._answer_upstream, reply, relayed[0], relayed[1])
            return
        asked = self._asks.get(reply.id)
        if asked is None:
            await self._warn_reply(reply.id, None, "no such request is pending on this connection "
                                   "(it was answered or resolved already, or never sent)")
            return
        try:
            op = v2approvals.answer_op(asked.method, asked.key, reply.result, reply.error)
        except v2approvals.BadAnswer as exc:
            await self._warn_reply(reply.id, asked.thread_id, f"{exc}; the request is still pending")
            return
        if reply.error is not None:
            log.warning("client answered a server request with an error", connection=self.name, method=asked.method,
                        error=bytes(reply.error)[:200].decode("utf-8", "replace"))
        assert self._nursery is not None, "Connection.run is not running"
        self._nursery.start_soon(self._deliver_answer, reply.id, asked, op)

    async def _deliver_answer(self, reply_id: int, asked: AskedRequest, op: Op) -> None:
        handle = self.manager.running(asked.thread_id)
        problem = f"thread {asked.thread_id} is not loaded"
        if handle is not None:
            try:
                outcome = await handle.submit_and_wait(op)
            except (ThreadClosedError, trio.TooSlowError) as exc:
                problem = str(exc) or type(exc).__name__
            else:
                if outcome.error is None:
                    return
                problem = outcome.error.message
        await self._warn_reply(reply_id, asked.thread_id, problem)

    async def _answer_upstream(self, reply: Reply, upstream: Upstream, upstream_id: object) -> None:
        try:
            await upstream.answer(upstream_id, reply.result, reply.error)
        except UpstreamError as exc:
            await self._warn_reply(reply.id, None, str(exc))

    async def _warn_reply(self, reply_id: object, thread_id: str | None, problem: str) -> None:
        """Tell the client its answer was not taken. A `warning`, not an error response: the id
        is the server's, and an error with it could be read as the answer to a client request."""
        log.warning("answer to a server request refused", connection=self.name, id=reply_id, problem=problem)
        message = f"answer to server request {reply_id!r:.40} refused: {problem}"
        await self.notify("warning", v2.WarningNotice(message=message, thread_id=thread_id))

    # --- reader, lanes, writer ---------------------------------------------
    async def run(self, transport: MessageTransport, *, initialize_within: float | None = None) -> None:
        """Serve this connection until its input ends; then let go of its threads.

        With `initialize_within`, a client that has not initialized by then is disconnected.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_loop, transport)
            if initialize_within is not None:
                nursery.start_soon(self._initialize_deadline, transport, initialize_within)
            async with trio.open_nursery() as lanes:
                self._lanes_nursery = lanes
                lanes.start_soon(self._work_loop)
                with self._req_send:
                    await self._read_loop(transport)
            # input ended and every request read is answered: let go of the threads
            for thread_id in list(self._feeds):
                self.index.unsubscribe(self, thread_id)
            self._out_send.close()
            with trio.move_on_after(CLOSE_DRAIN_S):
                await self._writer_done.wait()
            nursery.cancel_scope.cancel()
        await transport.aclose()

    async def _initialize_deadline(self, transport: MessageTransport, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self.initialized.wait()
            return
        log.warning("client did not initialize in time; disconnected", connection=self.name, seconds=seconds)
        await transport.aclose(f"no initialize request within {seconds:g} s")

    async def _read_loop(self, transport: MessageTransport) -> None:
        while (message := await transport.receive()) is not None:
            if isinstance(message, TooLong):
                await self._refuse_too_long(message)
            else:
                await self._take(message)

    async def _refuse_too_long(self, message: TooLong) -> None:
        log.error("input line too long; skipped", connection=self.name, limit=message.limit)
        error = invalid_request(f"Invalid request: line longer than {message.limit} bytes")
        await self._refuse(recover_id(message.head), error)

    async def _take(self, line: bytes | bytearray) -> None:
        """Handle one input message (a copy: decoded params may keep a reference to it).

        Waits while the outgoing queue is full, so a client that does not read stops being read.
        """
        if not line or line.isspace():
            return
        match parse_line(line):
            case Request() as request:
                await self._admit(request)
            case Invalid(error=error, id=request_id):
                if request_id is None:
                    log.warning("unusable input line", connection=self.name, reason=error.message, line=line[:200].decode("utf-8", "replace"))
                await self._refuse(request_id, error)
            case Notification(method=method):
                if method != "initialized":
                    log.info("ignored client notification", connection=self.name, method=method)
            case Reply() as reply:
                await self._take_reply(reply)

    async def _admit(self, request: Request) -> None:
        """Put `request` in its lane, or answer "overloaded" if too many are waiting."""
        thread_id = self._thread_lane_of(request)
        if thread_id is None:
            admitted = _offer(self._req_send, request)
            self._own_pending += admitted
        else:
            admitted = self._in_lanes < REQUEST_QUEUE and _offer(self._thread_lane(thread_id), request)
            self._in_lanes += admitted
        if not admitted:
            await self._refuse(request.id, overloaded())

    def _thread_lane_of(self, request: Request) -> str | None:
        """The thread whose lane `request` joins; None for the connection's own lane.

        Until the handshake is done and every request read before it is answered, all requests
        go to the connection's lane, so none overtakes `initialize`.
        """
        if not self._threads_apart:
            self._threads_apart = self.handshake.initialized and self._own_pending == 0
        return request.thread_id if self._threads_apart else None

    def _thread_lane(self, thread_id: str) -> trio.MemorySendChannel[Request]:
        lane = self._lanes.get(thread_id)
        if lane is None:
            assert self._lanes_nursery is not None, "Connection.run is not running"
            lane, requests = trio.open_memory_channel[Request](THREAD_QUEUE)
            self._lanes[thread_id] = lane
            self._lanes_nursery.start_soon(self._run_thread_lane, thread_id, lane, requests)
        return lane

    async def _work_loop(self) -> None:
        """The connection's own lane: the requests that name no thread, in order, for as long as
        the reader runs."""
        with self._req_recv:
            async for request in self._req_recv:
                try:
                    await self._handle(request)
                finally:
                    self._own_pending -= 1

    async def _run_thread_lane(
        self, thread_id: str, lane: trio.MemorySendChannel[Request], requests: trio.MemoryReceiveChannel[Request]
    ) -> None:
        """One thread's requests, in order; the lane ends (and is forgotten) once it is empty."""
        try:
            with lane, requests:
                while True:
                    try:
                        request = requests.receive_nowait()
                    except trio.WouldBlock:
                        return
                    try:
                        await self._handle(request)
                    finally:
                        self._in_lanes -= 1
                    await trio.lowlevel.checkpoint()  # a turn for the others between requests
        finally:  # on return, no checkpoint since the lane was found empty: nothing was added since
            del self._lanes[thread_id]

    async def _handle(self, request: Request) -> None:
        ctx = RequestContext(manager=self.manager, peer=self, index=self.index)
        try:
            handler = HANDLERS.get(request.method)
            if handler is None:
                raise method_error(request.method)
            self.handshake.check(request.method)
            if await self._forwarded(request):
                return
            params = decode_params(request.method, request.params)
            async with self.index.claim(request.method, request.thread_id):
                result = await run_once(self.index.answers, request, self.handshake, lambda: handler(ctx, params))
            answer = self.writer.response(request.id, result)
            if request.method == "initialize" and self._forwarder is not None:
                self._forwarder.hello = request.params
            if self.handshake.initialized:
                self.initialized.set()
        except RpcError as exc:
            await self._answer_error(request.id, exc)
            return
        except trio.TooSlowError:  # a thread did not take the request up within its deadline
            log.warning("thread did not take up a request in time", method=request.method, thread_id=request.thread_id)
            await self._answer_error(request.id, thread_timeout(request.method, request.thread_id))
            return
        except Exception as exc:
            error = rpc_error(exc)
            if error is None:  # a bug must not kill the server: answer, log, go on
                log.exception("request failed", method=request.method)
                error = RpcError(INTERNAL_ERROR, f"internal error in {request.method}: {exc}")
            await self._answer_error(request.id, error)
            return
        await self._emit(answer)
        for (method, notice), others in ctx.notices:
            await self.notify(method, notice)
            for other in others:
                if other is not self:
                    other.notify_nowait(method, notice)

    async def _forwarded(self, request: Request) -> bool:
        """Whether another node ran `request` (it names a thread that node runs; its answer has
        gone to the client)."""
        if self._forwarder is None or request.thread_id is None or self.manager.running(request.thread_id) is not None:
            return False
        assert self._nursery is not None, "Connection.run is not running"
        return await self._forwarder.forward(self._nursery, request)

    async def _write_loop(self, transport: MessageTransport) -> None:
        try:
            async with self._out_recv:
                async for line in self._out_recv:
                    batch = [line]
                    while len(batch) < WRITE_BATCH:
                        try:
                            batch.append(self._out_recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await transport.send_batch(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client output closed", connection=self.name)
        finally:
            self._writer_done.set()


def _offer(lane: trio.MemorySendChannel[Request], request: Request) -> bool:
    """Whether `lane` had room for `request` (it is in the lane if so)."""
    try:
        lane.send_nowait(request)
    except trio.WouldBlock:
        return False
    return True
