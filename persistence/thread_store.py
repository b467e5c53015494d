"""`ThreadStore`: the one interface over where threads live (files, memory, PostgreSQL).

A thread is its metadata (`ThreadMetadata`: what `thread/list` shows) and its rollout: records
(`RolloutRecord`), each one line of a Codex JSONL rollout, numbered by `ordinal`. The first record
is the thread's `session_meta`, written by `create`. Records are appended in batches (one per
turn boundary, as the file writer does) and read forward from an ordinal, a page at a time.

**Leases.** One node writes a thread at a time. It `acquire`s the thread's lease
(`Lease`: thread, node, epoch, expiry) before it loads the thread, `renew`s it while the thread
is loaded, and `release`s it on unload. A lease no one renewed past its expiry (or one
released) can be taken by another node, with the epoch plus one. Every `create` and `append`
carries the writer's lease and is fenced: it commits only if that lease's epoch is still the
thread's current one (and still this node's), else `FencedError` and nothing is written. A lease
past its expiry that nobody has taken yet is still current: its holder may renew it and write.

Implementations: `memory_store.InMemoryThreadStore`, `pg_store.PostgresThreadStore`,
`local_adapter.LocalStoreAdapter` (the files and SQLite index of CODEX_HOME). This module is the
interface, its value types, its errors and the record codec; it does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from spindle.protocol.rollout import RolloutItem, SessionMeta, line_type

from .heads import normalize_timestamp, preview_of
from .paths import ThreadStoreError, timestamp
from .query import ThreadEntry, ThreadPage, ThreadQuery, classify_source
from .source import decode_items

__all__ = [
    "DEFAULT_LEASE_TTL_S", "READ_PAGE", "FencedError", "Lease", "LeaseHeldError", "MetadataUpdate",
    "OrdinalConflictError", "RolloutRecord", "ThreadExistsError", "ThreadMetadata", "ThreadNotFoundError",
    "ThreadStore", "ThreadStoreError", "UnsupportedUpdateError", "iter_records", "records_of",
]

READ_PAGE = 1000
"""Records one `read` returns at most, by default."""
DEFAULT_LEASE_TTL_S = 30.0
"""How long a lease lasts unless renewed (a node renews well within it)."""
METADATA_FIELDS = frozenset({"name", "archived", "preview", "cwd", "model_provider", "source", "updated_at"})


# --- values ------------------------------------------------------------------


class RolloutRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One rollout line: `{"timestamp", "ordinal", "type", "payload"}`, and the `metadata` Codex
    adds to some lines (`history_sequence`...). Payload and metadata are kept as the JSON they were
    written as, so lines Spindle does not know, or writes differently, round-trip."""

    ordinal: int
    timestamp: str
    type: str
    payload: msgspec.Raw
    metadata: msgspec.Raw | None = None

    def line(self) -> bytes:
        """The JSONL line (with its newline), as the file writer (or Codex's) puts it down."""
        out = _LineOut(timestamp=self.timestamp, ordinal=self.ordinal, type=self.type, payload=self.payload,
                       metadata=self.metadata)
        return _encoder.encode(out) + b"\n"

    def item(self) -> RolloutItem | None:
        """The decoded item; None for a line of a kind (or shape) Spindle does not know."""
        items, _ = decode_items(self.line())
        return items[0] if items else None


class _RawLine(msgspec.Struct):
    type: str
    payload: msgspec.Raw
    timestamp: str = ""
    ordinal: int | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"")
    """Empty when the line has none (msgspec decodes `Raw` only on its own, not in a union)."""


class _LineOut(msgspec.Struct, omit_defaults=True):
    """A line as written: the keys in Codex's order, `metadata` only when there is some."""

    timestamp: str
    ordinal: int
    type: str
    payload: msgspec.Raw
    metadata: msgspec.Raw | None = None


_encoder = msgspec.json.Encoder()
_raw_line = msgspec.json.Decoder(_RawLine)


def record_of_line(raw: bytes, ordinal: int) -> RolloutRecord:
    """A JSONL line as a record; `ordinal` when the line has none (older Codex files).
    msgspec.DecodeError if it is not a rollout line."""
    line = _raw_line.decode(raw)
    return RolloutRecord(ordinal=line.ordinal if line.ordinal is not None else ordinal, timestamp=line.timestamp,
                         type=line.type, payload=line.payload, metadata=line.metadata or None)


def records_of(items: Iterable[RolloutItem], first_ordinal: int, *, at: str | None = None) -> list[RolloutRecord]:
    """Items as records numbered from `first_ordinal`, stamped `at` (default: now)."""
    ts = at or timestamp()
    return [
        RolloutRecord(ordinal=first_ordinal + n, timestamp=ts, type=line_type(item), payload=msgspec.Raw(_encoder.encode(item)))
        for n, item in enumerate(items)
    ]


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A node's right to write a thread. `expires_at` is Unix seconds (inf: until released)."""

    thread_id: str
    node_id: str
    epoch: int
    expires_at: float = math.inf

    def describe(self) -> str:
        return f"node {self.node_id!r} (epoch {self.epoch})"


@dataclass(frozen=True, kw_only=True)
class ThreadMetadata:
    """What a store knows of a thread besides its records. `source` is `session_meta.source` as
    written (a string or an object); its list kind and interactivity follow from it."""

    id: str
    created_at: str
    updated_at: str
    cwd: str = ""
    preview: str = ""
    model_provider: str = ""
    source: Any = "vscode"
    name: str | None = None
    archived: bool = False
    forked_from_id: str | None = None
    path: str = ""
    """Where the rollout lives, for stores that have a file for it ("" otherwise)."""

    @property
    def source_kind(self) -> str:
        return classify_source(self.source)[0]

    @property
    def interactive(self) -> bool:
        return classify_source(self.source)[1]

    def entry(self) -> ThreadEntry:
        return ThreadEntry(
            id=self.id, path=self.path, created_at=self.created_at, updated_at=self.updated_at, cwd=self.cwd,
            preview=self.preview, model_provider=self.model_provider, archived=self.archived,
            forked_from_id=self.forked_from_id, name=self.name, source_kind=self.source_kind,
        )

    def row(self) -> tuple[object, ...]:
        """The entry as a row of `query.ENTRY_COLUMNS` (what `ThreadQuery.page` takes)."""
        return (self.id, self.path, self.created_at, self.updated_at, self.cwd, self.preview, self.model_provider,
                self.archived, self.forked_from_id, self.name, self.source_kind)


def metadata_of(head: RolloutRecord, thread_id: str) -> ThreadMetadata:
    """A new thread's metadata, from its `session_meta` record (ThreadStoreError if it is not one,
    or names another thread)."""
    meta = head.item()
    if head.type != "session_meta" or not isinstance(meta, SessionMeta):
        raise ThreadStoreError(f"thread {thread_id}: the first record must be a readable session_meta, not {head.type!r}")
    if meta.id != thread_id:
        raise ThreadStoreError(f"the session_meta names thread {meta.id}, but the lease is for thread {thread_id}")
    created = normalize_timestamp(meta.timestamp) or normalize_timestamp(head.timestamp) or timestamp()
    return ThreadMetadata(
        id=thread_id, created_at=created, updated_at=normalize_timestamp(head.timestamp) or created, cwd=meta.cwd,
        model_provider=meta.model_provider or "", source=meta.source, forked_from_id=meta.forked_from_id,
    )


def batch_facts(records: Sequence[RolloutRecord]) -> tuple[str, str]:
    """(updated_at, preview) a batch gives its thread: its last record's time, and the first user
    message among its records ("" if none; a thread keeps the first preview it had)."""
    updated = normalize_timestamp(records[-1].timestamp) or timestamp()
    candidates = [r for r in records if r.type == "response_item" and b"\"user\"" in bytes(r.payload)]
    preview = preview_of(item for r in candidates if (item := r.item()) is not None) if candidates else ""
    return updated, preview


def check_batch(thread_id: str, next_ordinal: int, records: Sequence[RolloutRecord]) -> int:
    """The thread's next ordinal after `records`; OrdinalConflictError unless they come after
    `next_ordinal` in increasing order (a gap is allowed: files Codex and Spindle both appended
    to may have them; a node seeds a thread whole before its writer appends)."""
    expected = next_ordinal
    for record in records:
        if record.ordinal < expected:
            raise OrdinalConflictError(thread_id, record.ordinal, expected)
        expected = record.ordinal + 1
    return expected


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True, kw_only=True)
class MetadataUpdate:
    """The metadata fields to change; a field left UNSET is kept (`name=None` clears the name)."""

    name: str | None = UNSET
    archived: bool = UNSET
    preview: str = UNSET
    cwd: str = UNSET
    model_provider: str = UNSET
    source: Any = UNSET
    updated_at: str = UNSET
    changes: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        changes = {name: getattr(self, name) for name in sorted(METADATA_FIELDS) if getattr(self, name) is not UNSET}
        if "updated_at" in changes:
            stamp = normalize_timestamp(changes["updated_at"])
            if stamp is None:
                raise ThreadStoreError(f"updated_at {changes['updated_at']!r} is not an ISO-8601 time")
            changes["updated_at"] = stamp
        object.__setattr__(self, "changes", changes)


# --- errors ------------------------------------------------------------------


class ThreadNotFoundError(ThreadStoreError):
    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        super().__init__(f"no thread {thread_id} in the store")


class ThreadExistsError(ThreadStoreError):
    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        super().__init__(f"thread {thread_id} already exists in the store")


class LeaseHeldError(ThreadStoreError):
    """Another node holds the thread's lease, and it has not expired."""

    def __init__(self, thread_id: str, holder: str, *, epoch: int | None = None, expires_at: float = math.inf) -> None:
        self.thread_id, self.holder, self.epoch, self.expires_at = thread_id, holder, epoch, expires_at
        until = "until it lets go" if math.isinf(expires_at) else f"until Unix time {expires_at:.3f} unless renewed"
        at = f" at epoch {epoch}" if epoch is not None else ""
        super().__init__(f"thread {thread_id} is leased to {holder}{at} {until}")


class FencedError(ThreadStoreError):
    """The writer's lease is no longer the thread's current one: the write was refused whole. The
    node lost the thread (it expired and was taken over, or was let go) and must drop it."""

    def __init__(self, lease: Lease, current: str, *, action: str = "write") -> None:
        self.lease, self.current = lease, current
        super().__init__(
            f"thread {lease.thread_id}: {lease.describe()} may no longer {action} it: {current}; nothing was"
            " written, and this node must drop the thread"
        )


class OrdinalConflictError(ThreadStoreError):
    """A batch whose ordinals do not follow the thread's last record (a retried batch that was in
    fact written, or two writers that were not fenced)."""

    def __init__(self, thread_id: str, ordinal: int, expected: int) -> None:
        self.thread_id, self.ordinal, self.expected = thread_id, ordinal, expected
        super().__init__(
            f"thread {thread_id}: record ordinal {ordinal} does not follow the stored records (next is {expected});"
            " nothing was written"
        )


class UnsupportedUpdateError(ThreadStoreError):
    """A metadata field this store derives from the rollout itself and cannot set."""


# --- the interface -----------------------------------------------------------


class ThreadStore(Protocol):
    """Where threads live. Every failure is a ThreadStoreError whose message says what to do."""

    MUTABLE_FIELDS: frozenset[str]
    """The `MetadataUpdate` fields `update_metadata` can set (others: UnsupportedUpdateError)."""

    async def create(self, lease: Lease, head: RolloutRecord) -> ThreadMetadata:
        """Create `lease.thread_id` with its `session_meta` record (ordinal 0 by convention).
        ThreadExistsError if it exists; FencedError unless `lease` is current."""
        ...

    async def append(self, lease: Lease, records: Sequence[RolloutRecord]) -> int:
        """Append one batch, whole or not at all; the thread's next ordinal after it. Ordinals
        must follow the stored ones (OrdinalConflictError). FencedError unless `lease` is current:
        then nothing is written. Marks the thread updated at the last record's time, and gives it
        its preview from the first user message if it had none."""
        ...

    async def read(self, thread_id: str, *, from_ordinal: int = 0, limit: int = READ_PAGE) -> list[RolloutRecord]:
        """Up to `limit` records with ordinal >= `from_ordinal`, oldest first (archived threads too)."""
        ...

    async def next_ordinal(self, thread_id: str) -> int:
        """The ordinal the next appended record takes (one past the last stored)."""
        ...

    async def list_threads(self, query: ThreadQuery | None = None) -> ThreadPage:
        """One page of `thread/list`: its filters, sort and cursors."""
        ...

    async def metadata(self, thread_id: str) -> ThreadMetadata:
        """ThreadNotFoundError if the store has no such thread."""
        ...

    async def update_metadata(self, thread_id: str, update: MetadataUpdate) -> ThreadMetadata:
        """Change the fields `update` sets; the metadata after. Not fenced (any node may rename)."""
        ...

    async def archive(self, thread_id: str) -> None: ...

    async def unarchive(self, thread_id: str) -> None:
        """Back in the live list, marked updated now."""
        ...

    async def acquire(self, thread_id: str, node_id: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        """Take the thread's lease for `ttl_s` seconds: a new one at epoch 1, or one released or
        expired at its epoch + 1. LeaseHeldError if another holder's lease is live."""
        ...

    async def renew(self, lease: Lease, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        """Extend a current lease; FencedError if it is not current any more."""
        ...

    async def release(self, lease: Lease) -> None:
        """Let go (idempotent; a lease that is not current any more is left alone)."""
        ...


async def iter_records(store: ThreadStore, thread_id: str, *, from_ordinal: int = 0,
                       page: int = READ_PAGE) -> AsyncIterator[RolloutRecord]:
    """Every record from `from_ordinal` on, read a page at a time."""
    while True:
        records = await store.read(thread_id, from_ordinal=from_ordinal, limit=page)
        for record in records:
            yield record
        if len(records) < page:
            return
        from_ordinal = records[-1].ordinal + 1
