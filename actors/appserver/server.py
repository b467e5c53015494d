"""The app-server: one per runtime, it holds who is subscribed to which thread across its
connections, unloads a thread once no client retains it and it has been idle for the unload delay
(`unload.py`), and remembers the answers to requests with an idempotency key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
import trio
from trio_typing import TaskStatus

from spindle.actors.runtime import ThreadClosedError, ThreadHandle, ThreadManager
from spindle.protocol.appserver import v2
from spindle.protocol.events import DynamicToolCallRequestEvent
from spindle.protocol.ops import DynamicToolResponseOp

from .connection import Connection
from .context import Peer
from .idempotency import Answers
from .transport import LineTransport, MessageTransport
from .unload import IdleUnloader

log = structlog.get_logger(__name__)

RETAINING_METHODS = frozenset({"thread/resume", "thread/subscribe", "turn/start", "review/start", "thread/shellCommand"})
"""Requests that may make their client retain the thread they name: while one runs, the thread's
countdown pauses (an unloading under way ends first), so the thread it finds stays loaded."""


class AppServer:
    """Subscriptions of connections to threads, over one `ThreadManager`."""

    def __init__(self, manager: ThreadManager, *, unload_delay: float | None = None) -> None:
        """`unload_delay`: seconds an idle thread no client retains stays loaded (default: the
        config's `thread_unload_delay_secs`)."""
        self.manager = manager
        self.answers = Answers()
        self._connections: set[Connection] = set()
        self._connection_count = 0
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        self._tool_owners: dict[str, Peer] = {}
        self._unloader = IdleUnloader(manager, unload_delay)
        self._let_go_by: dict[str, set[Peer]] = {}
        """The clients that let go of a thread whose countdown runs: told when it unloads."""

    async def run(self, *, task_status: TaskStatus[AppServer] = trio.TASK_STATUS_IGNORED) -> None:
        """The server's own task: it owns the countdowns and unloading of the threads no client retains.

        After `stop()` it returns once every unloading in flight has flushed its rollout (the
        countdowns stop: the runtime closes the threads they were waiting on).
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await self._stopping.wait()
            self._unloader.cancel_all()

    def stop(self) -> None:
        self._stopping.set()

    def subscribers(self, thread_id: str) -> set[Connection]:
        """The connections subscribed to `thread_id` (retaining it or observing it)."""
        return {conn for conn in self._connections if conn.is_subscribed(thread_id)}

    def retainers(self, thread_id: str) -> set[Connection]:
        """The connections whose subscription keeps `thread_id` loaded."""
        return {conn for conn in self._connections if conn.retains(thread_id)}

    def register_tools(self, thread_id: str, peer: Peer) -> None:
        self._tool_owners[thread_id] = peer

    def tool_owner(self, thread_id: str) -> Peer | None:
        """The client that runs the thread's dynamic tools: the one that registered them while it
        is here and retains the thread, else the first retaining client with `experimentalApi` (a
        resume, a fork), which then keeps them (an observer never runs them); None if there is none
        (the call waits for one)."""
        owner = self._tool_owners.get(thread_id)
        if owner is not None and owner in self._connections and owner.retains(thread_id):
            return owner
        able = sorted((c for c in self.retainers(thread_id) if c.handshake.experimental_api), key=lambda c: c.serial)
        if not able:
            return None
        self._tool_owners[thread_id] = able[0]
        return able[0]

    def unsubscribe(self, peer: Peer, thread_id: str) -> bool:
        """Drop `peer`'s subscription; once no client retains the thread, it unloads when idle
        for the delay (an approval or a question waiting for a client keeps its turn, and so the
        thread, loaded: the next client to resume it is asked)."""
        if not peer.is_subscribed(thread_id):
            return False
        peer.end_subscription(thread_id)
        if self._tool_owners.get(thread_id) is peer:  # its tools have no one to run them now
            del self._tool_owners[thread_id]
            handle = self.manager.running(thread_id)
            if handle is not None:
                assert self._nursery is not None, "AppServer.run is not running"
                self._nursery.start_soon(self._fail_tool_calls, handle)
        self.let_go(peer, thread_id)
        return True

    def hold(self, thread_id: str) -> None:
        """A client retains `thread_id` again: its countdown, if one runs, stops."""
        self._unloader.cancel(thread_id)
        self._let_go_by.pop(thread_id, None)

    def let_go(self, peer: Peer, thread_id: str) -> None:
        """`peer` no longer retains `thread_id`: if no client does, the countdown to unloading it starts."""
        handle = self.manager.running(thread_id)  # tracked until closed: a resume waits for it
        if handle is None or self.retainers(thread_id):
            return
        self._let_go_by.setdefault(thread_id, set()).add(peer)
        assert self._nursery is not None, "AppServer.run is not running"
        self._unloader.start(self._nursery, handle, self._countdown_ended)

    @contextlib.asynccontextmanager
    async def claim(self, method: str, thread_id: str | None) -> AsyncIterator[None]:
        """Around a request: a `RETAINING_METHODS` one pauses its thread's countdown; after it, the
        countdown starts again from the beginning if no client retains the thread then."""
        if thread_id is None or method not in RETAINING_METHODS or not self._unloader.counting(thread_id):
            yield
            return
        await self._unloader.pause(thread_id)
        try:
            yield
        finally:
            handle = self.manager.running(thread_id)
            if handle is not None and not self.retainers(thread_id):
                assert self._nursery is not None, "AppServer.run is not running"
                self._unloader.start(self._nursery, handle, self._countdown_ended)

    def _countdown_ended(self, handle: ThreadHandle, unloaded: bool) -> None:
        """Tell the clients that let go of the thread that it unloaded (observers hear it through
        their feeds)."""
        for peer in self._let_go_by.pop(handle.thread_id, set()):
            if unloaded and peer in self._connections and not peer.is_subscribed(handle.thread_id):
                peer.notify_nowait("thread/status/changed", v2.ThreadStatusChanged(thread_id=handle.thread_id, status=v2.NOT_LOADED))
                peer.notify_nowait("thread/closed", v2.ThreadIdNotice(thread_id=handle.thread_id))

    async def _fail_tool_calls(self, handle: ThreadHandle) -> None:
        """Fail the thread's pending calls of dynamic tools: the client that runs them has left."""
        for _, request in handle.pending_requests():
            if isinstance(request, DynamicToolCallRequestEvent):
                gone = [{"type": "inputText", "text": "the client that registered this tool has disconnected"}]
                with contextlib.suppress(ThreadClosedError):
                    await handle.submit(DynamicToolResponseOp(id=request.call_id, content_items=gone, success=False))

    def drop_subscribers(self, thread_id: str) -> None:
        """End every subscription to `thread_id` now (archive), not when each pump sees the thread end,
        so a resume that follows at once starts with no stale subscriber."""
        for conn in self.subscribers(thread_id):
            conn.end_subscription(thread_id)
        self.hold(thread_id)  # the archive closes it

    async def serve(
        self,
        receive: trio.abc.ReceiveStream,
        send: trio.abc.SendStream,
        *,
        task_status: TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one connection of JSON lines until its input closes."""
        await self.serve_transport(LineTransport(receive, send), task_status=task_status)

    async def serve_transport(
        self,
        transport: MessageTransport,
        *,
        name: str | None = None,
        initialize_within: float | None = None,
        task_status: TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one connection until its input closes (see `Connection.run`)."""
        self._connection_count += 1
        conn = Connection(self.manager, self, name or f"conn-{self._connection_count}")
        self._connections.add(conn)
        task_status.started(conn)
        try:
            await conn.run(transport, initialize_within=initialize_within)
        finally:
            self._connections.discard(conn)

    @property
    def connection_count(self) -> int:
        """Connections being served now."""
        return len(self._connections)


