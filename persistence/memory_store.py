"""`InMemoryThreadStore`: a `ThreadStore` held in this process's memory, for ephemeral threads and
tests. Each operation runs on the event loop without awaiting in its middle, so each is atomic
with respect to the others; it checkpoints first, like any trio call.

Lease expiry reads `clock` (Unix seconds; `time.time` by default).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import trio

from spindle.protocol.ids import parse_thread_id

from .paths import timestamp
from .query import ThreadPage, ThreadQuery
from .thread_store import (
    DEFAULT_LEASE_TTL_S,
    METADATA_FIELDS,
    READ_PAGE,
    FencedError,
    Lease,
    LeaseHeldError,
    MetadataUpdate,
    RolloutRecord,
    ThreadExistsError,
    ThreadMetadata,
    ThreadNotFoundError,
    batch_facts,
    check_batch,
    metadata_of,
)


@dataclass
class _Thread:
    meta: ThreadMetadata
    records: list[RolloutRecord] = field(default_factory=list)
    ordinals: list[int] = field(default_factory=list)

    @property
    def next_ordinal(self) -> int:
        return self.ordinals[-1] + 1 if self.ordinals else 0


@dataclass
class _LeaseRow:
    node_id: str | None
    epoch: int
    expires_at: float


class InMemoryThreadStore:
    """Threads, their records and their leases, in dictionaries."""

    MUTABLE_FIELDS = METADATA_FIELDS

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._threads: dict[str, _Thread] = {}
        self._leases: dict[str, _LeaseRow] = {}

    def _thread(self, thread_id: str) -> _Thread:
        tid = parse_thread_id(thread_id)
        thread = self._threads.get(tid)
        if thread is None:
            raise ThreadNotFoundError(tid)
        return thread

    def _fence(self, lease: Lease, action: str = "write") -> None:
        row = self._leases.get(lease.thread_id)
        if row is None or row.epoch != lease.epoch or row.node_id != lease.node_id:
            raise FencedError(lease, _describe(row), action=action)

    # --- records ----------------------------------------------------------
    async def create(self, lease: Lease, head: RolloutRecord) -> ThreadMetadata:
        await trio.lowlevel.checkpoint()
        tid = parse_thread_id(lease.thread_id)
        meta = metadata_of(head, tid)
        self._fence(lease)
        if tid in self._threads:
            raise ThreadExistsError(tid)
        self._threads[tid] = _Thread(meta, [head], [head.ordinal])
        return meta

    async def append(self, lease: Lease, records: Sequence[RolloutRecord]) -> int:
        await trio.lowlevel.checkpoint()
        thread = self._thread(lease.thread_id)
        self._fence(lease)
        if not records:
            return thread.next_ordinal
        after = check_batch(lease.thread_id, thread.next_ordinal, records)
        updated, preview = batch_facts(records)
        thread.records.extend(records)
        thread.ordinals.extend(r.ordinal for r in records)
        thread.meta = replace(thread.meta, updated_at=updated, preview=thread.meta.preview or preview)
        return after

    async def read(self, thread_id: str, *, from_ordinal: int = 0, limit: int = READ_PAGE) -> list[RolloutRecord]:
        await trio.lowlevel.checkpoint()
        thread = self._thread(thread_id)
        start = bisect.bisect_left(thread.ordinals, from_ordinal)
        return thread.records[start : start + limit]

    async def next_ordinal(self, thread_id: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._thread(thread_id).next_ordinal

    # --- metadata ---------------------------------------------------------
    async def list_threads(self, query: ThreadQuery | None = None) -> ThreadPage:
        await trio.lowlevel.checkpoint()
        query = query or ThreadQuery()
        found = [t.meta for t in self._threads.values() if query.accepts(t.meta.entry(), interactive=t.meta.interactive)]
        found.sort(key=lambda m: query.sort_value(m.entry()), reverse=query.sort_direction == "desc")
        return query.page([m.row() for m in found[: query.limit + 1]])

    async def metadata(self, thread_id: str) -> ThreadMetadata:
        await trio.lowlevel.checkpoint()
        return self._thread(thread_id).meta

    async def update_metadata(self, thread_id: str, update: MetadataUpdate) -> ThreadMetadata:
        await trio.lowlevel.checkpoint()
        thread = self._thread(thread_id)
        thread.meta = replace(thread.meta, **update.changes)
        return thread.meta

    async def archive(self, thread_id: str) -> None:
        await self.update_metadata(thread_id, MetadataUpdate(archived=True))

    async def unarchive(self, thread_id: str) -> None:
        await self.update_metadata(thread_id, MetadataUpdate(archived=False, updated_at=timestamp()))

    # --- leases -----------------------------------------------------------
    async def acquire(self, thread_id: str, node_id: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        await trio.lowlevel.checkpoint()
        tid = parse_thread_id(thread_id)
        now = self._clock()
        row = self._leases.get(tid)
        if row is not None and row.node_id is not None and row.expires_at > now:
            raise LeaseHeldError(tid, f"node {row.node_id!r}", epoch=row.epoch, expires_at=row.expires_at)
        epoch = row.epoch + 1 if row is not None else 1
        self._leases[tid] = _LeaseRow(node_id, epoch, now + ttl_s)
        return Lease(thread_id=tid, node_id=node_id, epoch=epoch, expires_at=now + ttl_s)

    async def renew(self, lease: Lease, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        await trio.lowlevel.checkpoint()
        self._fence(lease, "renew")
        row = self._leases[lease.thread_id]
        row.expires_at = self._clock() + ttl_s
        return replace(lease, expires_at=row.expires_at)

    async def release(self, lease: Lease) -> None:
        await trio.lowlevel.checkpoint()
        row = self._leases.get(lease.thread_id)
        if row is not None and row.epoch == lease.epoch and row.node_id == lease.node_id:
            row.node_id, row.expires_at = None, self._clock()


def _describe(row: _LeaseRow | None) -> str:
    if row is None:
        return "the thread has no lease"
    if row.node_id is None:
        return f"the lease was let go at epoch {row.epoch}"
    return f"the current lease is node {row.node_id!r}'s, epoch {row.epoch}"
