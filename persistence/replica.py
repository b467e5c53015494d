"""A loaded thread's copy in a shared thread store (PostgreSQL), for nodes that share threads.

The store is the thread's truth; the node's rollout file is its working copy. Each batch the
writer drains goes to the store first, under the thread's lease, then to the file, so the store
never lacks a line the node has acted on, and a node that lost the lease writes nothing anywhere:
the store refuses its batch (`FencedError`) inside the append's transaction, and the writer stops.

The lease is taken before the writer starts and renewed every third of its TTL while the thread
is loaded. A renewal that is refused, or that cannot reach the store before the lease expires,
means another node may own the thread now: `on_lost` is told once, and every later append fails
at once. A batch the store did not take stays queued with the writer and is sent again with the
next one; one the store took whose answer was lost is recognised by its ordinals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from .paths import ThreadStoreError
from .thread_store import (
    FencedError,
    Lease,
    OrdinalConflictError,
    RolloutRecord,
    ThreadExistsError,
    ThreadNotFoundError,
    ThreadStore,
    record_of_line,
)

log = structlog.get_logger(__name__)

DEFAULT_TTL_S = 15.0
"""How long a lease lasts without renewal: a node that stops (killed, paused, cut off) loses its
threads to another node this long after its last renewal."""
RETRY_S = 0.5
"""How soon a renewal that could not reach the store is tried again."""


class LeaseLostError(ThreadStoreError):
    """This node no longer owns the thread; nothing more of it is written here."""


class StoreReplica:
    """One loaded thread's lease and its batches to the shared store (see the module doc)."""

    def __init__(self, store: ThreadStore, thread_id: str, node_id: str, *, ttl_s: float = DEFAULT_TTL_S,
                 on_lost: Callable[[str], None] = lambda reason: None) -> None:
        self.store = store
        self.thread_id = thread_id
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.on_lost = on_lost
        self.lease: Lease | None = None
        self.lost: str | None = None
        """Why this node lost the thread, once it has."""
        self._valid_until = 0.0
        self._next = 0
        """The ordinal the store expects next: lines before it are in the store already."""
        self._releasing = False

    async def acquire(self) -> Lease:
        """Take the thread's lease (LeaseHeldError naming the holder while another node has it)."""
        self.lease = await self.store.acquire(self.thread_id, self.node_id, self.ttl_s)
        self._valid_until = time.monotonic() + self.ttl_s
        await self._catch_up()
        return self.lease

    @property
    def next_ordinal(self) -> int:
        """The ordinal the store expects next for this thread (as of the last call)."""
        return self._next

    async def seed(self, path: Path) -> None:
        """A thread the store does not have whole (one this node had before it shared its threads,
        a fork copied here, or a seed cut short): the rollout file's lines it lacks go in first."""
        data = await trio.to_thread.run_sync(path.read_bytes)
        whole = data[: data.rfind(b"\n") + 1]  # a torn last line is the writer's to cut
        if whole:
            await self.append_lines(whole, first_ordinal=0)  # Codex's older lines carry no ordinal

    async def _catch_up(self) -> None:
        try:
            self._next = await self.store.next_ordinal(self.thread_id)
        except ThreadNotFoundError:
            self._next = 0

    def _lose(self, reason: str) -> None:
        if self.lost is None and not self._releasing:  # a renewal that lands after our release is no loss
            self.lost = reason
            log.warning("this node lost the thread", thread_id=self.thread_id, reason=reason)
            self.on_lost(reason)

    def _held(self) -> Lease:
        if self.lost is not None:
            raise LeaseLostError(f"thread {self.thread_id}: this node no longer owns it ({self.lost}); nothing was written")
        if self.lease is None:
            raise LeaseLostError(f"thread {self.thread_id}: this node holds no lease on it; nothing was written")
        return self.lease

    async def append_lines(self, data: bytes, *, first_ordinal: int = -1) -> None:
        """Store the writer's batch (whole JSONL lines; lines the store has already are skipped),
        under the lease; ThreadStoreError if the store did not take it. A batch that begins the
        thread (ordinal 0, its session_meta) creates it."""
        lease = self._held()
        lines = [line for line in data.splitlines() if line]
        try:
            records = [record_of_line(line, first_ordinal + n if first_ordinal >= 0 else -1) for n, line in enumerate(lines)]
        except msgspec.DecodeError as exc:
            raise ThreadStoreError(f"thread {self.thread_id}: a line of its rollout is not a rollout line, so it cannot"
                                   f" be copied to the thread store ({exc}); mend or remove the line, then resume it") from None
        try:
            for attempt in range(2):
                fresh = [record for record in records if record.ordinal >= self._next]
                if not fresh:
                    return
                try:
                    if fresh[0].ordinal == 0:
                        await self._create(lease, fresh[0])
                        self._next = 1
                        fresh = fresh[1:]
                    if fresh:
                        self._next = await self.store.append(lease, fresh)
                    return
                except OrdinalConflictError:
                    if attempt:
                        raise
                    await self._catch_up()  # the store took an earlier send whose answer was lost
        except FencedError as exc:
            self._lose(str(exc))
            raise

    async def _create(self, lease: Lease, head: RolloutRecord) -> None:
        try:
            await self.store.create(lease, head)
        except ThreadExistsError:
            await self._catch_up()
            if self._next < 1:
                raise

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease every third of its TTL until cancelled, or until it is lost."""
        task_status.started()
        while self.lost is None and self.lease is not None:
            await trio.sleep(self.ttl_s / 3)
            await self._renew()

    async def _renew(self) -> None:
        assert self.lease is not None
        while True:
            if time.monotonic() >= self._valid_until:
                self._lose("the lease ran out before it could be renewed")
                return
            try:
                self.lease = await self.store.renew(self.lease, self.ttl_s)
                self._valid_until = time.monotonic() + self.ttl_s
                return
            except FencedError as exc:
                self._lose(str(exc))
                return
            except ThreadStoreError as exc:
                if time.monotonic() + RETRY_S >= self._valid_until:
                    self._lose(f"the lease could not be renewed before it expired: {exc}")
                    return
                log.warning("could not renew the thread's lease; trying again", thread_id=self.thread_id, error=str(exc))
                await trio.sleep(RETRY_S)

    async def release(self) -> None:
        """Let go of the lease (best effort: an unreachable store lets it expire instead)."""
        self._releasing = True
        lease, self.lease = self.lease, None
        if lease is None or self.lost is not None:
            return
        try:
            await self.store.release(lease)
        except ThreadStoreError as exc:
            log.warning("could not let go of the thread's lease; it expires instead", thread_id=self.thread_id,
                        error=str(exc), expires_in_s=round(max(0.0, self._valid_until - time.monotonic()), 1))
