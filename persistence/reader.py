"""The tolerant rollout reader: one streaming pass over a rollout, never holding it whole.

The pass reads the file a chunk at a time and decodes only the lines it needs, found by a byte
search for their kind (`_MARKERS`) and then decoded as far as their head (`type`, the payload's
`type`, a turn id): `task_started` lines build the turn index (`TurnIndex`), rollbacks drop
turns from it, and the facts the thread needs later (`LoadFacts`: approvals for the session, the
last `turn_context`, the turn the file ends in the middle of) are gathered. Then the model's
history is rebuilt from the last `compacted` line on, a chunk at a time. Memory stays bounded by
that history and the index, whatever the file's size; the lines passed over are never decoded.

A torn last line (a crash mid-write: no final newline) is ignored and reported through
`good_size`, so a writer resuming the file truncates it away before appending. A `compacted`
line that does not decode is passed over, with a warning: the history is rebuilt from before it.
Lines the pass decodes that do not parse are counted in `skipped`. The first `session_meta`,
among the first lines, defines the thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import structlog

from spindle.protocol.events import ApprovalResolvedEvent
from spindle.protocol.items import ResponseItem
from spindle.protocol.rollout import CompactedItem, RolloutItem, SessionMeta, TurnContextItem

from .blobs import BLOB_MIN, BlobIndex
from .heads import preview_of
from .history import rebuild_history, unfinished_turn
from .source import (
    STREAM_CHUNK,
    LoadFacts,
    RolloutSource,
    SpanRead,
    decode_items,
    iter_items,
    read_items,
)
from .turn_index import TurnIndex

T = TypeVar("T")
log = structlog.get_logger(__name__)


class RolloutReadError(ValueError):
    """A rollout that cannot define a thread (missing file, no session_meta)."""


@dataclass(frozen=True)
class RolloutRead:
    path: Path
    meta: SessionMeta
    source: RolloutSource
    skipped: int
    torn: bool
    good_size: int
    next_ordinal: int
    """The ordinal the next appended line takes: past every ordinal in the file, including those
    of lines Spindle skips (Codex's `world_state`, say), so none is ever repeated."""
    history: list[ResponseItem] = field(default_factory=list, repr=False)
    """The model's history (empty unless asked for), rebuilt from the last `compacted` line on."""
    history_from: int = 0
    """Where in the file the lines the history was rebuilt from begin."""
    lost_compaction: bool = False
    """A `compacted` line could not be read (torn or corrupt): the history rebuilt from this
    rollout is the one from before that compaction."""


class _Payload(msgspec.Struct):
    type: str = ""
    turn_id: str | None = None
    num_turns: int = 0
    decision: str | None = None


class _Head(msgspec.Struct):
    type: str = ""
    ordinal: int | None = None
    payload: _Payload = msgspec.field(default_factory=_Payload)


_heads = msgspec.json.Decoder(_Head)
WRITTEN_HEAD = 120
"""How far into a line Spindle's and Codex's writers have put its kinds (`timestamp`, `ordinal`,
`type`, then the payload's `type`)."""
META_LINES = 16
"""How far into a file `read_session_meta` looks for its `session_meta`."""


def line_head(raw: bytes) -> _Head | None:
    """A line decoded only as far as its kinds; None if it is not a JSON object."""
    try:
        return _heads.decode(raw)
    except msgspec.DecodeError:
        return None


_MARKERS = (b'"task_started"', b'"thread_rolled_back"', b'"approved_for_session"')
"""What a line the index or the facts need holds, quoted as a JSON string (a string value
holding such a word has its quotes escaped, so a match is the line's own key or value). Lines
holding none are passed over without being decoded; those holding one are decoded as far as
their head to confirm."""


_BLOB_MARKERS = (b'"input_image"', b'_call_output"')
"""What a line that may hold a string stored once (`persistence.blobs`) holds; only long ones are decoded."""


class _Scan:
    """What one pass over the file has found so far."""

    def __init__(self) -> None:
        self.index = TurnIndex()
        self.skipped = 0
        self.lines = 0
        self.last_context: bytes | None = None
        self.compactions: list[int] = []
        """Where each `compacted` line begins."""
        self.approvals: list[ApprovalResolvedEvent] = []
        self.memory_mode: str | None = None
        self.preview = ""
        self.blobs = BlobIndex()
        self.before: tuple[bytes, int] = (b"", 0)
        """The last whole line of the previous chunk, and its offset."""

    def feed(self, body: bytes, offset: int) -> None:
        """`body`, whole lines read at `offset`: only the lines holding a marker are decoded."""
        self.lines += body.count(b"\n")
        found = sorted(
            (line_start, n)
            for n, marker in enumerate(_MARKERS)
            for line_start in _line_starts(body, marker)
        )
        for line_start, n in found:
            self._marked(body, line_start, offset, n)
        self.compactions += [offset + at for at in _line_starts(body, b'"compacted"') if _is(body, at, "compacted")]
        at = body.rfind(b'"turn_context"')
        while at != -1:
            start = body.rfind(b"\n", 0, at) + 1
            if _is(body, start, "turn_context"):
                self.last_context = body[start : body.index(b"\n", at) + 1]
                break
            at = body.rfind(b'"turn_context"', 0, start)
        for marker in _BLOB_MARKERS:
            for start in _line_starts(body, marker):
                end = body.index(b"\n", start) + 1
                if end - start >= BLOB_MIN:
                    self.blobs.note(body[start:end], offset + start)
        for start in _line_starts(body, b'"memory_mode"'):  # a memory-mode update: a later session_meta
            meta = _whole(body[start : body.index(b"\n", start) + 1], SessionMeta)
            if meta is not None and meta.memory_mode in ("enabled", "disabled"):
                self.memory_mode = str(meta.memory_mode)
        if not self.preview:
            self.preview = _first_preview(body)
        last = body.rfind(b"\n", 0, len(body) - 1) + 1
        self.before = (body[last:], offset + last)

    def _marked(self, body: bytes, start: int, offset: int, n: int) -> None:
        raw = body[start : body.index(b"\n", start) + 1]
        head = line_head(raw)
        if head is None:
            self.skipped += 1
            return
        payload = head.payload
        if n == 0 and payload.type == "task_started" and payload.turn_id is not None:
            self.index.open_turn(payload.turn_id, offset + self._opening(body, start, offset))
        elif n == 1 and payload.type == "thread_rolled_back":
            self.index.roll_back(payload.num_turns)
        elif n == 2 and payload.type == "approval_resolved" and payload.decision == "approved_for_session":
            approval = _whole(raw, ApprovalResolvedEvent)
            if approval is not None:
                self.approvals.append(approval)

    def _opening(self, body: bytes, start: int, offset: int) -> int:
        """Where the turn whose `task_started` line begins at `start` begins: at the
        `turn_context` line right before it, if there is one, else at that line."""
        if start == 0:
            raw, at = self.before
            return at - offset if _is(raw, 0, "turn_context") else 0
        previous = body.rfind(b"\n", 0, start - 1) + 1
        return previous if _is(body, previous, "turn_context") else start

    def facts(self, path: Path, end: int) -> LoadFacts:
        """The load facts, reading the last turn again from where the index says it begins."""
        start = self.index.last_start()
        last_turn = read_items(SpanRead(path, start, end, [])) if start is not None else []
        context = _whole(self.last_context, TurnContextItem) if self.last_context is not None else None
        return LoadFacts(approvals=self.approvals, last_context=context, unfinished=unfinished_turn(last_turn),
                         memory_mode=self.memory_mode)


def _line_starts(body: bytes, marker: bytes) -> list[int]:
    """Where each line holding `marker` begins (once per line)."""
    starts: list[int] = []
    at = body.find(marker)
    while at != -1:
        starts.append(body.rfind(b"\n", 0, at) + 1)
        at = body.find(marker, body.index(b"\n", at))
    return starts


def _is(body: bytes, start: int, kind: str) -> bool:
    """Whether the line at `start` is of `kind` (a line type, or an event's type)."""
    end = body.find(b"\n", start)
    raw = body[start : end + 1 if end != -1 else len(body)]
    name = kind.encode()
    if name not in raw:
        return False
    if raw.startswith(b'{"timestamp":"'):  # as the writers put it down: the kind comes first
        first = raw[:WRITTEN_HEAD]
        if b',"type":"%s","payload":' % name in first or b'"payload":{"type":"%s"' % name in first:
            return True
    head = line_head(raw)
    return head is not None and (head.type == kind or (head.type == "event_msg" and head.payload.type == kind))


def _whole(raw: bytes, kind: type[T]) -> T | None:
    items, _ = decode_items(raw if raw.endswith(b"\n") else raw + b"\n")
    return next((item for item in items if isinstance(item, kind)), None)


def _first_preview(body: bytes) -> str:
    """The preview of the first user message in `body`, if it holds one."""
    for start in _line_starts(body, b'"user"'):
        raw = body[start : body.index(b"\n", start) + 1]
        preview = preview_of(decode_items(raw)[0])
        if preview:
            return preview
    return ""


def replay_history(path: Path, start: int, end: int, blobs: BlobIndex) -> list[ResponseItem]:
    """The model's history rebuilt from the file's bytes `start` to `end`, decoded a chunk at a
    time (so only the history is held, not the items it is rebuilt from); a compaction gets back
    the big strings it refers to."""
    items = iter_items(SpanRead(path, start, end, []))
    return rebuild_history(blobs.resolve(path, item) if isinstance(item, CompactedItem) else item for item in items)


def _history_from(path: Path, scan: _Scan) -> tuple[int, bool]:
    """Where the history is rebuilt from: the last `compacted` line; if that line does not decode
    (corrupt), the one before it (or the start), with a warning. And whether one was passed over."""
    lost = False
    for at in reversed(scan.compactions):
        with open(path, "rb") as file:
            file.seek(at)
            line = file.readline()
        if _whole(line, CompactedItem) is not None:
            return at, lost
        lost = True
        log.warning("a compacted line of the rollout does not decode; the history is rebuilt from before it",
                    path=str(path), offset=at)
    return 0, lost


def read_rollout(path: Path, *, history: bool = True) -> RolloutRead:
    """Scan a rollout file once, streaming, into a source (its turn index and load facts) and,
    with `history`, the model's history. Blocking: run it in a worker thread."""
    scan = _Scan()
    offset, rest = 0, b""
    try:
        meta = read_session_meta(path)
        with open(path, "rb") as file:
            while chunk := file.read(STREAM_CHUNK):
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    scan.feed(data[:cut], offset)
                    offset += cut
    except FileNotFoundError:
        raise RolloutReadError(f"no rollout file at {path}") from None
    except OSError as exc:
        raise RolloutReadError(f"cannot read rollout {path}: {exc.strerror}") from None
    facts = scan.facts(path, offset)
    source = RolloutSource(path, index=scan.index, written=offset, lines=scan.lines, facts=facts, preview=scan.preview,
                           blobs=scan.blobs.lines)
    last = line_head(scan.before[0])
    ordinal = last.ordinal + 1 if last is not None and last.ordinal is not None else scan.lines  # ordinals grow line by line
    start, lost = _history_from(path, scan) if history else (0, False)
    replay = replay_history(path, start, offset, scan.blobs) if history else []
    torn = bool(rest.strip())
    lost = lost or (torn and b'"compacted"' in rest)  # the process died writing a compaction
    return RolloutRead(path, meta, source, scan.skipped, torn, offset, ordinal, replay, start, lost)


def read_session_meta(path: Path) -> SessionMeta:
    """The `session_meta` of a rollout, from its first lines (RolloutReadError if it has none)."""
    try:
        with open(path, "rb") as file:
            for _, raw in zip(range(META_LINES), file, strict=False):
                meta = _whole(raw, SessionMeta)
                if isinstance(meta, SessionMeta):
                    return meta
    except FileNotFoundError:
        raise RolloutReadError(f"no rollout file at {path}") from None
    except OSError as exc:
        raise RolloutReadError(f"cannot read rollout {path}: {exc.strerror}") from None
    raise RolloutReadError(f"rollout {path} has no session_meta line")


def parse_rollout(data: bytes) -> tuple[list[RolloutItem], int, bool, int]:
    """(items, skipped lines, torn tail?, size of the whole-line prefix) of a rollout in memory."""
    good_size = data.rfind(b"\n") + 1
    torn = good_size < len(data) and bool(data[good_size:].strip())
    items, skipped = decode_items(data[:good_size])
    return items, skipped, torn, good_size
