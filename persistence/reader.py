"""The tolerant rollout reader.

A torn last line (a crash mid-write: no final newline) is ignored and reported through
`good_size`, so a writer resuming the file truncates it away before appending. Lines that do not
parse, or whose kind Spindle does not know, are skipped and counted. The first `session_meta`
defines the thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from spindle.protocol.rollout import RolloutItem, RolloutLine, SessionMeta

from .source import InMemoryRolloutSource

_lines = msgspec.json.Decoder(RolloutLine)
_COMPACTED = re.compile(rb'"type"\s*:\s*"compacted"')


class RolloutReadError(ValueError):
    """A rollout that cannot define a thread (missing file, no session_meta)."""


@dataclass(frozen=True)
class RolloutRead:
    path: Path
    meta: SessionMeta
    source: InMemoryRolloutSource
    skipped: int
    torn: bool
    good_size: int
    next_ordinal: int
    """The ordinal the next appended line takes: past every ordinal in the file, including those
    of lines Spindle skips (Codex's `world_state`, say), so none is ever repeated."""
    lost_compaction: bool = False
    """A `compacted` line could not be read (torn or corrupt): the history rebuilt from this
    rollout is the full one from before that compaction."""


def parse_rollout(data: bytes) -> tuple[list[RolloutItem], int, bool, int]:
    """(items, skipped lines, torn tail?, size of the whole-line prefix)."""
    good_size = data.rfind(b"\n") + 1
    torn = good_size < len(data) and bool(data[good_size:].strip())
    body = data[:good_size]
    try:
        return [line.payload for line in _lines.decode_lines(body)], 0, torn, good_size
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
    return items, skipped, torn, good_size


def read_rollout(path: Path) -> RolloutRead:
    """Read a rollout file once into an in-memory source."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RolloutReadError(f"no rollout file at {path}") from None
    except OSError as exc:
        raise RolloutReadError(f"cannot read rollout {path}: {exc.strerror}") from None
    items, skipped, torn, good_size = parse_rollout(data)
    meta = next((item for item in items if isinstance(item, SessionMeta)), None)
    if meta is None:
        raise RolloutReadError(f"rollout {path} has no session_meta line")
    ordinal = next_ordinal(data[:good_size]) if skipped else len(items)
    lost = (torn or skipped > 0) and _lost_compaction(data, good_size, skipped)
    return RolloutRead(path, meta, InMemoryRolloutSource(items), skipped, torn, good_size, ordinal, lost)


def _lost_compaction(data: bytes, good_size: int, skipped: int) -> bool:
    """Whether the torn tail, or a line that did not parse, was a `compacted` line."""
    if _COMPACTED.search(data, good_size):
        return True
    if not skipped:
        return False
    for raw in data[:good_size].split(b"\n"):
        if _COMPACTED.search(raw):
            try:
                _lines.decode(raw)
            except msgspec.MsgspecError:
                return True
    return False


class _Ordinal(msgspec.Struct):
    ordinal: int | None = None


_ordinals = msgspec.json.Decoder(_Ordinal)


def next_ordinal(body: bytes) -> int:
    """One past the highest `ordinal` among the whole lines of `body` (their count if none has one)."""
    highest, count = -1, 0
    for raw in body.split(b"\n"):
        if not raw.strip():
            continue
        count += 1
        try:
            ordinal = _ordinals.decode(raw).ordinal
        except msgspec.MsgspecError:
            continue
        if ordinal is not None and ordinal > highest:
            highest = ordinal
    return highest + 1 if highest >= 0 else count
