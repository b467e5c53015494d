"""The app-server: one per runtime, it holds who is subscribed to which thread across its
connections, and closes a thread when its last subscriber lets go."""

from __future__ import annotations

import contextlib

import structlog
import trio
from trio_typing import TaskStatus

from spindle.actors.runtime import ThreadClosedError, ThreadHandle, ThreadManager
from spindle.protocol.appserver import v2
from spindle.protocol.events import DynamicToolCallRequestEvent
from spindle.protocol.ops import DynamicToolResponseOp

from .connection import Connection
from .context import Peer
from .transport import LineTransport, MessageTransport

log = structlog.get_logger(__name__)

CLOSE_THREAD_S = 10.0
"""How long closing an unsubscribed thread (flushing its rollout) may take."""


class AppServer:
    """Subscriptions of connections to threads, over one `ThreadManager`."""

    def __init__(self, manager: ThreadManager) -> None:
        self.manager = manager
        self._connections: set[Connection] = set()
        self._connection_count = 0
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        self._tool_owners: dict[str, Peer] = {}

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
        return {conn for conn in self._connections if conn.is_subscribed(thread_id)}

    def register_tools(self, thread_id: str, peer: Peer) -> None:
        self._tool_owners[thread_id] = peer

    def tool_owner(self, thread_id: str) -> Peer | None:
        """The client that runs the thread's dynamic tools: the one that registered them while it
        is here, else the first subscribed client with `experimentalApi` (a resume, a fork), which
        then keeps them; None if there is none (the call waits for one)."""
        owner = self._tool_owners.get(thread_id)
        if owner is not None and owner in self._connections and owner.is_subscribed(thread_id):
            return owner
        able = sorted((c for c in self.subscribers(thread_id) if c.handshake.experimental_api), key=lambda c: c.serial)
        if not able:
            return None
        self._tool_owners[thread_id] = able[0]
        return able[0]

    def unsubscribe(self, peer: Peer, thread_id: str) -> bool:
        """Drop `peer`'s subscription; the last one out closes the thread, unless an approval (or a
        question) of it waits for a client: then it stays loaded, and the next client to resume it
        is asked."""
        if not peer.is_subscribed(thread_id):
            return False
        peer.end_subscription(thread_id)
        if self._tool_owners.get(thread_id) is peer:  # its tools have no one to run them now
            del self._tool_owners[thread_id]
            handle = self.manager.running(thread_id)
            if handle is not None:
                assert self._nursery is not None, "AppServer.run is not running"
                self._nursery.start_soon(self._fail_tool_calls, handle)
        if not self.subscribers(thread_id):
            handle = self.manager.running(thread_id)  # tracked until closed: a resume waits for it
            if handle is not None and (handle.waiting_on_approval or handle.waiting_on_user_input):
                log.info("thread kept loaded: an approval or a question waits for a client", thread_id=thread_id)
            elif handle is not None:
                assert self._nursery is not None, "AppServer.run is not running"
                self._nursery.start_soon(self._close_thread, peer, handle)
        return True

    async def _fail_tool_calls(self, handle: ThreadHandle) -> None:
        """Fail the thread's pending calls of dynamic tools: the client that runs them has left."""
        for _, request in handle.pending_requests():
            if isinstance(request, DynamicToolCallRequestEvent):
                gone = [{"type": "inputText", "text": "the client that registered this tool has disconnected"}]
                with contextlib.suppress(ThreadClosedError):
                    await handle.submit(DynamicToolResponseOp(id=request.call_id, content_items=gone, success=False))

    async def _close_thread(self, conn: Peer, handle: ThreadHandle) -> None:
        with trio.move_on_after(CLOSE_THREAD_S) as scope:
            scope.shield = True
            try:
                await handle.shutdown_and_wait()
            except Exception as exc:
                log.warning("thread did not shut down cleanly", thread_id=handle.thread_id, error=str(exc))
        if scope.cancelled_caught:
            log.warning("thread did not shut down in time", thread_id=handle.thread_id)
        else:
            self.manager.registry.forget(handle)
        conn.notify_nowait("thread/status/changed", v2.ThreadStatusChanged(thread_id=handle.thread_id, status=v2.NOT_LOADED))
        conn.notify_nowait("thread/closed", v2.ThreadIdNotice(thread_id=handle.thread_id))

    def drop_subscribers(self, thread_id: str) -> None:
        """End every subscription to `thread_id` now (archive), not when each pump sees the thread end,
        so a resume that follows at once starts with no stale subscriber."""
        for conn in self.subscribers(thread_id):
            conn.end_subscription(thread_id)

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


