"""`LocalStoreAdapter`: today's `LocalThreadStore` (rollout files and the SQLite index under
CODEX_HOME) seen through the `ThreadStore` interface. The store itself stays as it is, the
embedded default, and its current users keep calling it directly.

Leases are the writer leases of `lease.py` (`flock`s in `thread-writer-locks/`, which the real
Codex honours too): they never expire (the kernel drops one when its process ends, however it
ends), so a lease's epoch is always 1 and its `expires_at` infinite. Fencing checks that this
adapter still holds the lock for that lease; a lease let go (or taken anew) fences its old token.

Appends write whole lines with one `write` and `fsync` (the file writer syncs only on flush; an
append here is acknowledged, so it is durable), cutting a torn last line away first, then index
the file. Reads stream the file. The metadata the file itself holds (cwd, provider, source,
preview, updated_at) cannot be set here without rewriting it: only the name and archiving can.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import msgspec
import trio

from spindle.protocol.ids import parse_thread_id

from .heads import normalize_timestamp
from .lease import WriterLease, WriterLeaseHeldError
from .paths import ThreadStoreUnavailableError, now_utc, rollout_path, store_error, thread_id_of
from .query import ThreadPage, ThreadQuery
from .reader import RolloutReadError, read_session_meta
from .store import LocalThreadStore
from .thread_store import (
    DEFAULT_LEASE_TTL_S,
    READ_PAGE,
    FencedError,
    Lease,
    LeaseHeldError,
    MetadataUpdate,
    RolloutRecord,
    ThreadExistsError,
    ThreadMetadata,
    ThreadNotFoundError,
    UnsupportedUpdateError,
    check_batch,
    metadata_of,
    record_of_line,
)

LOCAL_EPOCH = 1
TAIL_CHUNK = 64 * 1024
"""Bytes read at a time, from the end, to find a rollout's last line."""


class LocalStoreAdapter:
    """A `ThreadStore` over a `LocalThreadStore`."""

    MUTABLE_FIELDS = frozenset({"name", "archived"})

    def __init__(self, store: LocalThreadStore) -> None:
        self.store = store
        self.home = store.home
        self._held: dict[str, tuple[Lease, WriterLease]] = {}
        self._next: dict[str, int] = {}
        """Each held thread's next ordinal, once known (no one else appends while the lock is held)."""
        self._locks: dict[str, trio.Lock] = {}

    def _lock(self, tid: str) -> trio.Lock:
        return self._locks.setdefault(tid, trio.Lock())

    def _fence(self, lease: Lease, action: str = "write") -> None:
        held = self._held.get(lease.thread_id)
        if held is None or held[0] != lease:
            now = f"{held[0].describe()} holds it now" if held else "this process does not hold its writer lock"
            raise FencedError(lease, now, action=action)

    async def _path(self, tid: str) -> tuple[Path, bool]:
        """The thread's rollout and whether it is archived; ThreadNotFoundError if none."""
        for archived in (False, True):
            path = await self.store.find_path(tid, archived=archived)
            if path is not None:
                return path, archived
        raise ThreadNotFoundError(tid)

    # --- records ----------------------------------------------------------
    async def create(self, lease: Lease, head: RolloutRecord) -> ThreadMetadata:
        tid = parse_thread_id(lease.thread_id)
        meta = metadata_of(head, tid)
        async with self._lock(tid):
            self._fence(lease)
            for archived in (False, True):
                if await self.store.find_path(tid, archived=archived) is not None:
                    raise ThreadExistsError(tid)
            path = rollout_path(self.home, tid, _created(meta.created_at))
            await trio.to_thread.run_sync(self._write, path, head.line(), True)
            self._next[tid] = head.ordinal + 1
            await self.store.index_file(path)
        return await self.metadata(tid)

    async def append(self, lease: Lease, records: Sequence[RolloutRecord]) -> int:
        tid = parse_thread_id(lease.thread_id)
        async with self._lock(tid):
            self._fence(lease)
            path, archived = await self._path(tid)
            if tid not in self._next:
                self._next[tid] = await trio.to_thread.run_sync(_next_ordinal, path)
            if not records:
                return self._next[tid]
            after = check_batch(tid, self._next[tid], records)
            await trio.to_thread.run_sync(self._write, path, b"".join(r.line() for r in records), False)
            self._next[tid] = after
            await self.store.index_file(path, archived=archived)
            return after

    def _write(self, path: Path, data: bytes, create: bool) -> None:
        """Append `data` whole and sync it (creating the file, when `create`); a torn last line is
        cut away first, and a failed write cut back. Blocking: in a worker thread."""
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0), 0o644)
        except FileExistsError:
            raise ThreadExistsError(thread_id_of(path) or str(path)) from None
        except OSError as exc:
            raise store_error("open rollout", path, exc, home=self.home) from None
        try:
            size = _whole_lines(fd)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(28, "short write")
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, size)
                raise store_error("append to rollout", path, exc, home=self.home) from None
        finally:
            os.close(fd)

    async def read(self, thread_id: str, *, from_ordinal: int = 0, limit: int = READ_PAGE) -> list[RolloutRecord]:
        path, _ = await self._path(parse_thread_id(thread_id))
        return await trio.to_thread.run_sync(_read_records, path, from_ordinal, limit)

    async def next_ordinal(self, thread_id: str) -> int:
        tid = parse_thread_id(thread_id)
        if tid in self._held and tid in self._next:
            return self._next[tid]
        path, _ = await self._path(tid)
        return await trio.to_thread.run_sync(_next_ordinal, path)

    # --- metadata ---------------------------------------------------------
    async def list_threads(self, query: ThreadQuery | None = None) -> ThreadPage:
        return await self.store.list_threads(query)

    async def metadata(self, thread_id: str) -> ThreadMetadata:
        tid = parse_thread_id(thread_id)
        entry = await self.store.entry(tid)
        if entry is None:
            await self.store.reconcile()
            entry = await self.store.entry(tid)
        if entry is None:
            raise ThreadNotFoundError(tid)
        try:
            source = (await trio.to_thread.run_sync(read_session_meta, Path(entry.path))).source
        except RolloutReadError:
            source = None
        return ThreadMetadata(
            id=entry.id, path=entry.path, created_at=entry.created_at, updated_at=entry.updated_at, cwd=entry.cwd,
            preview=entry.preview, model_provider=entry.model_provider, source=source, name=entry.name or None,
            archived=entry.archived, forked_from_id=entry.forked_from_id,
        )

    async def update_metadata(self, thread_id: str, update: MetadataUpdate) -> ThreadMetadata:
        tid = parse_thread_id(thread_id)
        fixed = sorted(set(update.changes) - self.MUTABLE_FIELDS)
        if fixed:
            raise UnsupportedUpdateError(
                f"thread {tid}: the local store reads {', '.join(fixed)} from the rollout file itself and cannot"
                " set it; only the name and archiving can be changed"
            )
        await self._path(tid)
        if "name" in update.changes:
            await self.store.set_name(tid, update.changes["name"] or "")
        if update.changes.get("archived") is True:
            await self.archive(tid)
        elif update.changes.get("archived") is False:
            await self.unarchive(tid)
        return await self.metadata(tid)

    async def archive(self, thread_id: str) -> None:
        tid = parse_thread_id(thread_id)
        _, archived = await self._path(tid)
        if not archived:
            await self.store.archive(tid)

    async def unarchive(self, thread_id: str) -> None:
        tid = parse_thread_id(thread_id)
        _, archived = await self._path(tid)
        if archived:
            await self.store.unarchive(tid)

    # --- leases -----------------------------------------------------------
    async def acquire(self, thread_id: str, node_id: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        """The writer lock; `ttl_s` is ignored (a lock lasts until let go, or its process ends)."""
        tid = parse_thread_id(thread_id)
        try:
            writer = await self.store.acquire_lease(tid)
        except WriterLeaseHeldError as held:
            raise LeaseHeldError(tid, held.holder.describe(), epoch=LOCAL_EPOCH) from None
        lease = Lease(thread_id=tid, node_id=node_id, epoch=LOCAL_EPOCH, expires_at=math.inf)
        self._held[tid] = (lease, writer)
        self._next.pop(tid, None)
        return lease

    async def renew(self, lease: Lease, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        await trio.lowlevel.checkpoint()
        self._fence(lease, "renew")
        return lease

    async def release(self, lease: Lease) -> None:
        async with self._lock(lease.thread_id):
            held = self._held.get(lease.thread_id)
            if held is None or held[0] != lease:
                return
            del self._held[lease.thread_id]
            self._next.pop(lease.thread_id, None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(held[1].release)

    async def aclose(self) -> None:
        """Let go of every lease still held."""
        for lease, _ in list(self._held.values()):
            await self.release(lease)


def _created(stamp: str) -> datetime:
    canonical = normalize_timestamp(stamp)
    return datetime.fromisoformat(canonical.replace("Z", "+00:00")) if canonical else now_utc()


def _whole_lines(fd: int) -> int:
    """The size of the file's whole lines, a torn last line (no newline) cut away."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    good = _last_newline(fd, size) + 1
    os.ftruncate(fd, good)
    return good


def _last_newline(fd: int, end: int) -> int:
    """Where the last newline before `end` is (-1: none)."""
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at != -1:
            return start + at
        end = start
    return -1


def _next_ordinal(path: Path) -> int:
    """One past the ordinal of the rollout's last whole line (past its line count if it has none)."""
    try:
        return _tail_ordinal(path)
    except OSError as exc:
        raise ThreadStoreUnavailableError(f"cannot read rollout {path}: {exc.strerror or exc}") from None


def _tail_ordinal(path: Path) -> int:
    with open(path, "rb") as file:
        fd = file.fileno()
        size = os.fstat(fd).st_size
        end = _last_newline(fd, size)
        if end == -1:
            return 0
        start = _last_newline(fd, end) + 1
        try:
            return record_of_line(os.pread(fd, end - start, start), -1).ordinal + 1
        except msgspec.DecodeError:
            pass
    return len(_read_records(path, 0, 1 << 62))


def _read_records(path: Path, from_ordinal: int, limit: int) -> list[RolloutRecord]:
    """Up to `limit` records at or past `from_ordinal`; lines that are not rollout lines (a torn
    tail, damage) are passed over. Blocking: in a worker thread."""
    found: list[RolloutRecord] = []
    ordinal = 0
    try:
        with open(path, "rb") as file:
            for raw in file:
                if not raw.endswith(b"\n"):
                    break
                try:
                    record = record_of_line(raw, ordinal)
                except msgspec.DecodeError:
                    ordinal += 1
                    continue
                ordinal = record.ordinal + 1
                if record.ordinal >= from_ordinal:
                    found.append(record)
                    if len(found) >= limit:
                        break
    except OSError as exc:
        raise ThreadStoreUnavailableError(f"cannot read rollout {path}: {exc.strerror or exc}") from None
    return found
