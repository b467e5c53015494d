"""A thread's side of persistence: its source, its outbox, and the channel to its writer.

The thread actor records items here as it goes; at each await point the outbox goes to the
`RolloutWriter` as one batch. Nothing reaches disk before `materialize` (the first user turn).

Before its writer starts, the rollout holds the thread's writer lease (`Leases`); it lets go when
the rollout is shut down, so no other process appends meanwhile.

The thread index hears about the rollout from a reporter task beside the writer: `touch()` only
marks the rollout changed (it never waits), and the reporter sends the rollout's state to the
index off the loop. Marks that arrive while an update is queued are folded into it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog
import trio
from trio_typing import TaskStatus

from spindle.protocol.rollout import RolloutItem, SessionMeta

from .lease import WriterLease
from .paths import ThreadStoreError, timestamp
from .replica import LeaseLostError, StoreReplica
from .source import RolloutSource
from .writer import (
    WRITER_CHANNEL_CAPACITY,
    AddItems,
    Command,
    Flush,
    Reply,
    RolloutWriteError,
    RolloutWriter,
    Shutdown,
)

log = structlog.get_logger(__name__)

REPLY_TIMEOUT_S = 30.0
"""How long a flush or shutdown waits for the writer's answer."""
WRITER_END_WAIT_S = 1.0
"""How long letting go of the lease waits for the writer to close its file after answering shutdown;
past it, the lease is let go when the writer ends."""
INDEX_MARK_CAPACITY = 1
"""Index updates queued for a rollout's reporter: one, since each carries the rollout's whole state."""
INDEX_REPORT_DEADLINE_S = 2.0
"""How long closing a rollout waits for its last index update (the index is rebuilt from files)."""


class ThreadRollout:
    """A thread's side of persistence: its source, its outbox and (once materialized) the channel
    to its writer actor, which tells the source what it wrote. `ephemeral` rollouts keep their
    items in the source and never touch disk.

    The source always starts with `session_meta`, so its indices match the file's lines.
    """

    def __init__(
        self,
        *,
        path: Path,
        meta: SessionMeta,
        source: RolloutSource | None = None,
        materialized: bool = False,
        ephemeral: bool = False,
        good_size: int | None = None,
        next_ordinal: int | None = None,
        index: RolloutIndex | None = None,
        leases: Leases | None = None,
        lease: WriterLease | None = None,
        replica: StoreReplica | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.source = source if source is not None else RolloutSource(None if ephemeral else path, [meta])
        self.ephemeral = ephemeral
        self.materialized = materialized
        self.index = index
        self.leases = leases
        self.lease = lease
        self.replica = replica
        """The thread's copy in a shared store, written first, under that store's lease."""
        self._renewing: trio.CancelScope | None = None
        self._told_loss = False
        self._good_size = good_size
        self._next_ordinal = next_ordinal
        self._outbox: list[RolloutItem] = []
        self._send: trio.MemorySendChannel[Command] | None = None
        self._writer: RolloutWriter | None = None
        self._batches_sent = 0
        self._marks: trio.MemorySendChannel[None] | None = None
        self._reporter: tuple[trio.CancelScope, trio.Event] | None = None
        self._writer_nursery: trio.Nursery | None = None
        self._updated_at = meta.timestamp
        self.on_error: Callable[[str], None] = lambda message: None

    @property
    def persisted(self) -> bool:
        return self.materialized and not self.ephemeral

    def record(self, items: Sequence[RolloutItem]) -> None:
        """Add items to the source now; they reach the writer at the next `drain()`."""
        recorded = self.source.append(items)
        if not self.ephemeral:
            self._outbox.extend(recorded)

    async def start(self, nursery: trio.Nursery, *, create: bool) -> None:
        """Take the writer lease (unless held already), then start the writer actor (creating the
        file when `create`). OSError if the file cannot be opened; WriterLeaseHeldError if another
        process writes this thread."""
        if self.lease is None and self.leases is not None:
            self.lease = await self.leases.acquire_lease(self.meta.id)
        try:
            if self.replica is not None:
                await self._start_replica(nursery, create=create)
            await self._start_writer(nursery, create=create)
        except BaseException:
            await self.release_lease()
            raise
        self._writer_nursery = nursery

    async def _start_replica(self, nursery: trio.Nursery, *, create: bool) -> None:
        """Take the shared store's lease (unless held), seed the store with a file it lacks, and
        renew the lease while the rollout is open."""
        assert self.replica is not None
        if not self._told_loss:  # once: a rollout started again (after `write_now`) keeps it
            self._told_loss = True
            then = self.replica.on_lost

            def lost(reason: str) -> None:
                self.on_error(f"this node lost thread {self.meta.id} to another and unloads it: {reason}")
                then(reason)

            self.replica.on_lost = lost
        if self.replica.lease is None:
            await self.replica.acquire()
        if not create and self.replica.next_ordinal < self._appended_from():  # the store lacks lines the file has
            await self.replica.seed(self.path)
        scope = self._renewing = trio.CancelScope()

        async def renew(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            assert self.replica is not None
            with scope:
                await self.replica.run(task_status=task_status)

        await nursery.start(renew)

    async def _start_writer(self, nursery: trio.Nursery, *, create: bool) -> None:
        send, receive = trio.open_memory_channel[Command](WRITER_CHANNEL_CAPACITY)
        writer = RolloutWriter(
            self.path,
            create=create,
            next_ordinal=0 if create else self._appended_from(),
            truncate_to=self._good_size,
            on_error=self.on_error,
            on_written=self.source.wrote,
            replica=self.replica,
        )
        try:
            await nursery.start(writer.run, receive)
        except BaseException:
            send.close()
            raise
        self._send, self._writer, self._batches_sent = send, writer, 0
        self._start_reporter(nursery)

    @property
    def next_ordinal(self) -> int:
        """The ordinal the next recorded item takes once written."""
        if self._writer is not None:
            return self._writer.next_ordinal + len(self._outbox)
        return self._appended_from() + len(self._outbox)

    def _appended_from(self) -> int:
        """The ordinal of the next line of an existing file: as its reader found it, else one per
        item already written."""
        written = len(self.source) - len(self._outbox)
        return max(self._next_ordinal or 0, written)

    def _start_reporter(self, nursery: trio.Nursery) -> None:
        if self.index is None or self._marks is not None:
            return
        marks, receive = trio.open_memory_channel[None](INDEX_MARK_CAPACITY)
        scope, done = trio.CancelScope(), trio.Event()
        self._marks, self._reporter = marks, (scope, done)
        nursery.start_soon(self._report, self.index, receive, scope, done)

    async def _report(
        self, index: RolloutIndex, marks: trio.MemoryReceiveChannel[None], scope: trio.CancelScope, done: trio.Event
    ) -> None:
        """The reporter: for each mark, the rollout's current state goes to the index."""
        try:
            with scope, marks:
                async for _ in marks:
                    try:
                        await index.record(self, updated_at=self._updated_at)
                    except ThreadStoreError as exc:  # the file is the record; the index catches up later
                        log.warning("could not update the thread index", path=str(self.path), error=str(exc))
        finally:
            done.set()

    async def _stop_reporter(self) -> None:
        """Let the reporter deliver what is marked (within a deadline), then end it."""
        marks, self._marks = self._marks, None
        reporter, self._reporter = self._reporter, None
        if marks is None or reporter is None:
            return
        marks.close()
        scope, done = reporter
        try:
            with trio.move_on_after(INDEX_REPORT_DEADLINE_S):
                await done.wait()
        finally:
            scope.cancel()

    async def materialize(self, nursery: trio.Nursery) -> None:
        """Create the file: `session_meta` first, then whatever was recorded so far; then index it.
        If that fails after the writer started, the writer is shut down and the lease let go."""
        if self.materialized or self.ephemeral:
            return
        await self.start(nursery, create=True)
        self.materialized = True
        self._outbox.insert(0, self.meta)
        try:
            await self.drain()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.shutdown()
            raise
        self.touch()

    def touch(self) -> None:
        """Mark the thread updated now; the index hears of it soon, off the loop. Never waits."""
        if not self.persisted or self._marks is None:
            return
        self._updated_at = timestamp()
        try:
            self._marks.send_nowait(None)
        except trio.WouldBlock:
            pass  # an update is already queued; it carries this state too
        except trio.BrokenResourceError:
            log.debug("thread index reporter has ended", path=str(self.path))

    async def drain(self) -> None:
        """Hand the outbox to the writer as one batch, once the previous batch is handled: one
        batch is in flight at a time, so a failed write is reported before the thread goes on,
        and items recorded meanwhile join this batch. Cancelled, the items stay in the outbox."""
        if self._send is None or not self._outbox:
            return
        if self._writer is not None:
            await self._writer.wait_handled(self._batches_sent)
        items, self._outbox = self._outbox, []
        try:
            await self._send.send(AddItems(items))
        except BaseException:
            self._outbox[:0] = items
            raise
        self._batches_sent += 1

    async def settle(self) -> None:
        """`drain`, then wait until the writer has handled that batch: written (to the shared
        store first, on a node) or failed and reported. No sync: a crash of the process does not
        lose it; only power loss could. LeaseLostError once this node has lost the thread: what
        comes next (asking the model, running a tool) must not happen here any more."""
        await self.drain()
        if self._writer is not None:
            await self._writer.wait_handled(self._batches_sent)
        if self.replica is not None and self.replica.lost is not None:
            raise LeaseLostError(f"this node lost thread {self.meta.id} to another: {self.replica.lost}")

    async def _call(self, make: Callable[[Reply], Command]) -> None:
        if self._send is None:
            return
        await self.drain()
        reply = Reply()
        with trio.fail_after(REPLY_TIMEOUT_S):
            await self._send.send(make(reply))
            await reply.done.wait()
        if reply.error is not None:
            raise RolloutWriteError(reply.error)

    async def flush(self) -> None:
        """Everything recorded so far is written and synced; RolloutWriteError if not."""
        await self._call(lambda reply: Flush(reply))

    async def shutdown(self, *, keep_lease: bool = False) -> None:
        """Flush, sync and close the file; the writer actor ends. The lease is let go once the
        writer has ended (at once, or when a writer that did not answer in time ends), unless
        `keep_lease`: a new thread's creator hands the held lease on to the thread's actor."""
        writer = self._writer
        try:
            if self._send is not None:
                try:
                    await self._call(lambda reply: Shutdown(reply))
                finally:
                    self._send.close()
                    self._send, self._writer = None, None
                    await self._stop_reporter()
        finally:
            if not keep_lease:
                await self._release_after(writer)
            elif self._renewing is not None:  # the lease is handed on; its new holder renews it
                self._renewing.cancel()
                self._renewing = None

    async def _release_after(self, writer: RolloutWriter | None) -> None:
        holds = self.lease is not None or self.replica is not None
        if writer is not None and holds:
            with trio.move_on_after(WRITER_END_WAIT_S) as wait:  # it is closing its file after its answer
                wait.shield = True
                await writer.done.wait()
        if writer is None or writer.done.is_set() or self._writer_nursery is None or not holds:
            await self.release_lease()
            return
        # a writer still busy keeps the leases until it ends; nothing lets go of them before
        lease, self.lease = self.lease, None
        replica, self.replica = self.replica, None
        renewing, self._renewing = self._renewing, None
        log.warning("the rollout writer is still busy; its leases are let go when it ends", path=str(self.path))

        async def release_when_done() -> None:
            try:
                await writer.done.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await _let_go(lease, replica, renewing)

        self._writer_nursery.start_soon(release_when_done)

    async def release_lease(self) -> None:
        """Let go of the writer lease and the shared store's, if held (shielded: a cancelled
        caller still lets go)."""
        lease, self.lease = self.lease, None
        renewing, self._renewing = self._renewing, None
        with trio.CancelScope(shield=True):
            await _let_go(lease, self.replica, renewing)


async def _let_go(lease: WriterLease | None, replica: StoreReplica | None, renewing: trio.CancelScope | None) -> None:
    """Stop renewing, let go of the shared store's lease, then of the writer lease."""
    if renewing is not None:
        renewing.cancel()
    if replica is not None:
        await replica.release()
    if lease is not None:
        await trio.to_thread.run_sync(lease.release)


class Leases(Protocol):
    """Hands out writer leases (the thread store). Raises WriterLeaseHeldError naming the holder
    when another process writes the thread."""

    async def acquire_lease(self, thread_id: str) -> WriterLease: ...


class RolloutIndex(Protocol):
    """Told, by the rollout's reporter, that a rollout file exists and was updated at `updated_at`
    (the thread store's index). Each call carries the whole state, so a lost one is repaired by
    the next. Raises ThreadStoreError when the index cannot be written."""

    async def record(self, rollout: ThreadRollout, *, updated_at: str) -> None: ...
