"""Export and import: a thread between any `ThreadStore` and the Codex JSONL rollout format.

Export writes each record as the line the file writer would (`RolloutRecord.line`). Import reads
a rollout file a batch of lines at a time (in a worker thread), takes the thread's lease in the
target store, creates the thread from its first line (which must be its `session_meta`), appends
the rest in batches, and lets go. Lines keep their timestamps, ordinals and payloads as written; a
line without an ordinal (older Codex files) takes its position. So a thread exported from one
store and imported into another reads back the same, line for line. An import that fails
part-way leaves the thread with the batches appended so far.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import msgspec
import trio

from spindle.protocol.ids import new_id

from .paths import ThreadStoreError, ThreadStoreUnavailableError
from .thread_store import (
    READ_PAGE,
    RolloutRecord,
    ThreadMetadata,
    ThreadStore,
    iter_records,
    record_of_line,
)

IMPORT_BATCH = 500
"""Lines read, and records appended, at a time by an import."""
IMPORT_LEASE_TTL_S = 300.0


async def export_lines(store: ThreadStore, thread_id: str) -> AsyncIterator[bytes]:
    """The thread's rollout, a page of whole JSONL lines at a time."""
    page: list[bytes] = []
    async for record in iter_records(store, thread_id):
        page.append(record.line())
        if len(page) >= READ_PAGE:
            yield b"".join(page)
            page = []
    if page:
        yield b"".join(page)


async def export_thread(store: ThreadStore, thread_id: str, out: BinaryIO) -> None:
    """Write the thread's rollout to `out` (written to in a worker thread)."""
    async for chunk in export_lines(store, thread_id):
        await trio.to_thread.run_sync(out.write, chunk)
    await trio.to_thread.run_sync(out.flush)


class _Lines:
    """A rollout file's records, a batch at a time, read in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.line = 0

    def _batch(self, file: BinaryIO) -> list[RolloutRecord]:
        records = []
        for raw in islice(file, IMPORT_BATCH):
            self.line += 1
            if not raw.strip():
                continue
            try:
                records.append(record_of_line(raw, self.line - 1))
            except msgspec.DecodeError as exc:
                raise ThreadStoreError(f"{self.path} line {self.line} is not a rollout line ({exc})") from None
        return records

    async def batches(self) -> AsyncGenerator[list[RolloutRecord], None]:
        try:
            file = await trio.to_thread.run_sync(open, self.path, "rb")
        except OSError as exc:
            raise ThreadStoreUnavailableError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            while batch := await trio.to_thread.run_sync(self._batch, file):
                yield batch
        finally:
            await trio.to_thread.run_sync(file.close)


async def import_thread(store: ThreadStore, path: Path, *, node_id: str | None = None,
                        on_batch: Callable[[int], None] = lambda count: None) -> ThreadMetadata:
    """Import the rollout at `path` into `store` as a new thread (ThreadExistsError if the store
    has it); its metadata after. `on_batch` hears how many records each batch appended."""
    node = node_id or f"import-{new_id()}"
    async with aclosing(_Lines(path).batches()) as batches:
        first = await anext(batches, None)
        if not first or first[0].type != "session_meta":
            raise ThreadStoreError(f"{path} does not start with a session_meta line: it is not a rollout")
        head = first[0]
        tid = _thread_id(head, path)
        lease = await store.acquire(tid, node, IMPORT_LEASE_TTL_S)
        try:
            await store.create(lease, head)
            batch: list[RolloutRecord] | None = first[1:]
            while batch is not None:
                if batch:
                    await store.append(lease, batch)
                    on_batch(len(batch))
                batch = await anext(batches, None)
                if batch is not None:
                    lease = await store.renew(lease, IMPORT_LEASE_TTL_S)
        finally:
            with trio.CancelScope(shield=True):
                await store.release(lease)
    return await store.metadata(tid)


class _Id(msgspec.Struct):
    id: str


def _thread_id(head: RolloutRecord, path: Path) -> str:
    try:
        return msgspec.json.decode(head.payload, type=_Id).id
    except msgspec.DecodeError:
        raise ThreadStoreError(f"{path}: its session_meta has no thread id") from None
