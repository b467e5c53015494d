"""A thread's rollout source: one per live thread, kept in step with every write.

Its items live in the rollout file; in memory it keeps only what is not written yet (all of an
ephemeral thread's items, which never are), the turn index (where each turn begins in the file),
and the few facts the resume scan found (`LoadFacts`). Turns are read back from the file through
the index, on demand: `read_span` plans a read on the event loop, `read_items` does it, blocking,
in a worker thread. The writer tells the source what it wrote (`wrote`), so the index grows as
lines reach the disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from spindle.protocol.events import ApprovalResolvedEvent, TaskStartedEvent, ThreadRolledBackEvent
from spindle.protocol.rollout import CompactedItem, RolloutItem, RolloutLine, TurnContextItem

from .blobs import remember, shrink
from .heads import preview_of
from .history import UnfinishedTurn
from .turn_index import TurnIndex

_lines = msgspec.json.Decoder(RolloutLine)


def decode_items(body: bytes) -> tuple[list[RolloutItem], int]:
    """The items of the whole lines in `body`, and how many lines were skipped (unreadable, or of
    a kind Spindle does not know)."""
    try:
        return [line.payload for line in _lines.decode_lines(body)], 0
    except msgspec.MsgspecError:
        pass
    items: list[RolloutItem] = []
    skipped = 0
    for raw in body.split(b"\n"):
        if not raw.strip():
            continue
        try:
            items.append(_lines.decode(raw).payload)
        except msgspec.MsgspecError:
            skipped += 1
    return items, skipped


@dataclass(frozen=True)
class LoadFacts:
    """What the resume scan found that the thread needs later, so the file is not read again."""

    approvals: list[ApprovalResolvedEvent] = field(default_factory=list)
    """The approvals the user gave for the session (`approved_for_session`)."""
    last_context: TurnContextItem | None = None
    unfinished: UnfinishedTurn | None = None
    """The turn the rollout ends in the middle of, if it does."""
    memory_mode: str | None = None
    """The memory mode the last `session_meta` carrying one recorded (`enabled` or `disabled`)."""


@dataclass(frozen=True)
class SpanRead:
    """A planned read: the file's bytes `start` to `end`, then the items not written yet (`tail`)."""

    path: Path | None
    start: int
    end: int
    tail: list[RolloutItem]


STREAM_CHUNK = 1 << 22
"""Bytes read (and decoded) at a time when a rollout is streamed: the resume scan, `iter_items`."""


def iter_items(read: SpanRead) -> Iterator[RolloutItem]:
    """The items of a planned read, decoded a chunk of whole lines at a time (so a long span is
    never held whole). Blocking: iterate it in a worker thread."""
    if read.path is not None and read.end > read.start:
        with open(read.path, "rb") as file:
            file.seek(read.start)
            left = read.end - read.start
            while left > 0 and (lines := file.readlines(min(STREAM_CHUNK, left))):
                body = b"".join(lines)[:left]
                left -= len(body)
                yield from decode_items(body[: body.rfind(b"\n") + 1])[0]
    yield from read.tail


def read_items(read: SpanRead) -> list[RolloutItem]:
    """The items of a planned read. Blocking: run it in a worker thread."""
    items: list[RolloutItem] = []
    if read.path is not None and read.end > read.start:
        with open(read.path, "rb") as file:
            body = os.pread(file.fileno(), read.end - read.start, read.start)
        items = decode_items(body[: body.rfind(b"\n") + 1])[0]
    return items + read.tail


class RolloutSource:
    """The items of one rollout, in file order: line `i` of the file is item `i`."""

    __slots__ = ("path", "index", "facts", "preview", "blobs", "_written", "_lines", "_unwritten", "_opening")

    def __init__(
        self, path: Path | None = None, unwritten: Iterable[RolloutItem] = (), *, index: TurnIndex | None = None,
        written: int = 0, lines: int = 0, facts: LoadFacts | None = None, preview: str = "",
        blobs: Iterable[str] = (),
    ) -> None:
        self.path = path
        self.blobs: set[str] = set(blobs)
        """The digests of the big strings the rollout holds in full (`persistence.blobs`)."""
        self.index = index if index is not None else TurnIndex()
        self.facts = facts if facts is not None else LoadFacts()
        self.preview = preview
        """The first user message's text, clipped (what a thread list shows); "" before one."""
        self._written = written
        self._lines = lines
        self._unwritten: list[RolloutItem] = []
        self._opening: int | None = None
        """Where the `turn_context` line just written begins, while the turn it opens waits for its `task_started`."""
        self.append(unwritten)

    @property
    def written(self) -> int:
        """The bytes of whole lines on disk."""
        return self._written

    def __len__(self) -> int:
        return self._lines

    def append(self, items: Iterable[RolloutItem]) -> list[RolloutItem]:
        """Items recorded, not yet written: kept until the writer says they are on disk. Returned
        as they will be written: a compaction of a rollout on disk refers to the big strings the
        rollout already holds rather than copying them (`persistence.blobs`)."""
        recorded: list[RolloutItem] = []
        for item in items:
            if isinstance(item, CompactedItem) and self.path is not None:
                item = shrink(item, self.blobs)
            else:
                remember([item], self.blobs)
            recorded.append(item)
            self._unwritten.append(item)
            self._lines += 1
            if isinstance(item, TaskStartedEvent):
                self.index.open_turn(item.turn_id)
            elif isinstance(item, ThreadRolledBackEvent):
                self.index.roll_back(item.num_turns)
            elif not self.preview:
                self.preview = preview_of([item])
        return recorded

    def wrote(self, items: Sequence[RolloutItem], offsets: Sequence[int], size: int) -> None:
        """The writer appended `items` (the oldest unwritten ones), their lines at `offsets`; the
        file now holds `size` bytes. A turn begins at its `turn_context` line, if one is right
        before its `task_started`."""
        del self._unwritten[: len(items)]
        for item, offset in zip(items, offsets, strict=True):
            if isinstance(item, TurnContextItem):
                self._opening = offset if self._opening is None else self._opening
                continue
            if isinstance(item, TaskStartedEvent):
                self.index.placed(self._opening if self._opening is not None else offset)
            self._opening = None
        self._written = size

    def read_turns(self, positions: Sequence[int]) -> SpanRead:
        """The read of the visible turns at `positions` (and any between them): their lines on
        disk, then what is not written yet if the last of them reaches it."""
        span = self.index.span(min(positions), max(positions))
        start = self._written if span.start is None else span.start
        if span.end is not None:
            return SpanRead(self.path, start, span.end, [])
        return SpanRead(self.path, start, self._written, list(self._unwritten))

    def read_all(self) -> SpanRead:
        """The read of every item, `session_meta` first."""
        return SpanRead(self.path, 0, self._written, list(self._unwritten))

    def items(self) -> list[RolloutItem]:
        """Every item, oldest first. Blocking (it reads the whole file): for tests and tools."""
        return read_items(self.read_all())

    def iter_forward_from(self, index: int) -> Iterator[RolloutItem]:
        """Items from `index` (clamped to 0) to the end. Blocking, as `items`."""
        return iter(self.items()[max(index, 0):])
