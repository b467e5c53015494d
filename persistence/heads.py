"""What the index needs from one rollout file, read from its head and its tail. Pure and blocking.

The head is read `HEAD_CHUNK` at a time up to and including `session_meta` and the first user
message (at most `HEAD_CAP`; Codex's session_meta alone is ~21 KB): the preview is the text of a
`user_message` event if there is one, else of the first user message that is a real turn (not
injected context; `history.is_user_turn_boundary`). Lines of any other type, or that do not
parse, are passed over. The tail (`TAIL_BYTES`, more if the last line is longer) gives the
timestamp of the last whole line: `updated_at` (the file's mtime if no line has one); a torn last
line is ignored. Thread names come from `session_index.jsonl`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from spindle.protocol.ids import parse_thread_id
from spindle.protocol.items import Message

from .history import is_user_turn_boundary
from .paths import timestamp
from .query import classify_source

PREVIEW_CHARS = 200
HEAD_CHUNK = 64 * 1024
HEAD_CAP = 512 * 1024
"""How far into a file the head is looked for."""
TAIL_BYTES = 4 * 1024
TAIL_CAP = 1024 * 1024
NAMES_FILE = "session_index.jsonl"
"""Thread names, one JSON line per rename (last one wins)."""
_CANONICAL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rollout's head and tail say: a row of the index's `files` table."""

    thread_id: str
    created_at: str
    updated_at: str
    cwd: str
    preview: str
    model_provider: str
    source_kind: str
    interactive: bool
    forked_from_id: str | None
    head_done: bool



class _Line(msgspec.Struct):
    type: str = ""
    timestamp: str = ""
    payload: msgspec.Raw = msgspec.Raw(b"null")


class _Meta(msgspec.Struct):
    id: str
    timestamp: str = ""
    cwd: str = ""
    source: Any = msgspec.UNSET
    model_provider: str | None = None
    forked_from_id: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: Any = None


class _Stamp(msgspec.Struct):
    timestamp: str = ""


_line = msgspec.json.Decoder(_Line)
_meta = msgspec.json.Decoder(_Meta)
_event = msgspec.json.Decoder(_Event)
_message = msgspec.json.Decoder(Message)
_stamp = msgspec.json.Decoder(_Stamp)


def normalize_timestamp(value: str) -> str | None:
    """`value` as UTC ISO-8601 with milliseconds and `Z` (the form the index sorts), or None."""
    if _CANONICAL.match(value):
        return value
    try:
        at = datetime.fromisoformat(value)
        return timestamp((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC))
    except (ValueError, OverflowError):  # not a date, or one past the calendar's ends in UTC
        return None


def _mtime_stamp(mtime_ns: int) -> str:
    try:
        return timestamp(datetime.fromtimestamp(mtime_ns / 1e9, UTC))
    except (ValueError, OverflowError, OSError):
        return timestamp(datetime.fromtimestamp(0, UTC))


def preview_of(items: Iterable[object]) -> str:
    """The first user message's text, clipped: what a thread list shows."""
    for item in items:
        if is_user_turn_boundary(item) and isinstance(item, Message):
            return item.text()[:PREVIEW_CHARS]
    return ""


class _Head:
    """The head of a rollout, read a chunk at a time."""

    def __init__(self) -> None:
        self.meta: _Meta | None = None
        self.event_text: str | None = None
        self.message_text: str | None = None
        self.lines = 0

    def feed(self, data: bytes, start: int, end: int) -> None:
        """Parse the whole lines in `data[start:end]`; once the first user message is found, only
        the lines already read are searched for a `user_message` event to prefer."""
        for raw in data[start:end].split(b"\n"):
            if not raw:
                continue
            self.lines += 1
            if self.message_text is not None and self.meta is not None:
                if b"user_message" not in raw:
                    continue
            elif b"session_meta" not in raw and b'"user' not in raw:
                continue  # cannot be session_meta, a user message or a user_message event
            try:
                line = _line.decode(raw)
                if line.type == "session_meta" and self.meta is None:
                    self.meta = _meta.decode(line.payload)
                elif line.type == "event_msg" and self.event_text is None:
                    event = _event.decode(line.payload)
                    if event.type == "user_message" and isinstance(event.message, str):
                        self.event_text = event.message
                elif line.type == "response_item" and self.message_text is None:
                    item = _message.decode(line.payload)
                    if is_user_turn_boundary(item):
                        self.message_text = item.text()
            except msgspec.DecodeError:
                continue  # a foreign or damaged line: the head is still read

    @property
    def preview(self) -> str | None:
        text = self.event_text if self.event_text is not None else self.message_text
        return None if text is None else text[:PREVIEW_CHARS]

    @property
    def found(self) -> bool:
        return self.meta is not None and self.preview is not None


def _last_stamp(data: bytes, *, from_start: bool) -> str | None | Literal[False]:
    """The timestamp of the last whole line in `data` that has one; False when no whole line is
    visible (the window began mid-line and needs to grow)."""
    end = data.rfind(b"\n")
    seen_line = False
    while end > 0:
        start = data.rfind(b"\n", 0, end) + 1
        if start == 0 and not from_start:
            return None if seen_line else False
        seen_line = True
        try:
            stamp = normalize_timestamp(_stamp.decode(data[start:end]).timestamp)
        except msgspec.DecodeError:
            stamp = None
        if stamp is not None:
            return stamp
        end = start - 1
    return None


def read_tail(fd: int, size: int) -> str | None:
    """The last whole line's timestamp, reading back from the end of the file."""
    window = TAIL_BYTES
    while True:
        start = max(0, size - window)
        found = _last_stamp(os.pread(fd, size - start, start), from_start=start == 0)
        if found is not False:
            return found
        if window >= TAIL_CAP:
            return None
        window *= 8


class NotRollout(Exception):
    """A file that cannot define a thread; `warn` is False while it may still be being written."""

    def __init__(self, reason: str, *, warn: bool = True) -> None:
        super().__init__(reason)
        self.warn = warn


def read_facts(path: str, size: int, mtime_ns: int) -> Facts:
    """Read a rollout's head and tail (NotRollout when it is none)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_facts_fd(fd, size, mtime_ns)
    finally:
        os.close(fd)


def read_facts_fd(fd: int, size: int, mtime_ns: int) -> Facts:
    """`read_facts` of an open file."""
    head = _Head()
    data, parsed = b"", 0
    while True:
        chunk = os.read(fd, HEAD_CHUNK)
        data += chunk
        whole = data.rfind(b"\n") + 1
        head.feed(data, parsed, whole)
        parsed = whole
        at_end = not chunk or len(data) >= size
        if head.found or at_end or len(data) >= HEAD_CAP:
            break
    if head.meta is None:
        if whole == 0 and len(data) < HEAD_CAP:
            raise NotRollout("no whole line yet", warn=False)
        raise NotRollout("no session_meta line in its head" if head.lines else "not JSON lines")
    updated = _last_stamp(data, from_start=True) if len(data) >= size else read_tail(fd, size)
    meta = head.meta
    tid = meta.id if _CANONICAL_ID.match(meta.id) else None
    if tid is None:
        try:
            tid = parse_thread_id(meta.id)
        except ValueError as exc:
            raise NotRollout(f"its session_meta has {exc}") from None
    created = normalize_timestamp(meta.timestamp) or _mtime_stamp(mtime_ns)
    kind, interactive = classify_source(meta.source)
    preview = head.preview
    return Facts(
        thread_id=tid, created_at=created, updated_at=updated if isinstance(updated, str) else _mtime_stamp(mtime_ns),
        cwd=meta.cwd, preview=preview or "", model_provider=meta.model_provider or "", source_kind=kind,
        interactive=interactive, forked_from_id=meta.forked_from_id,
        head_done=preview is not None or len(data) >= HEAD_CAP,
    )


def read_updated_at(path: str, size: int, mtime_ns: int) -> str:
    """`updated_at` of a rollout whose head is known: from its tail only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_tail(fd, size) or _mtime_stamp(mtime_ns)
    finally:
        os.close(fd)


def read_names(home: str) -> tuple[dict[str, str], tuple[int, int] | None]:
    """The thread names in `session_index.jsonl` (last rename wins) and the file's stamp."""
    path = os.path.join(home, NAMES_FILE)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return {}, None
    names: dict[str, str] = {}
    for line in data.splitlines():
        try:
            entry = _name.decode(line)
        except msgspec.DecodeError:
            continue
        names[entry.id] = entry.thread_name
    return names, (st.st_size, st.st_mtime_ns)


def names_stamp(home: str) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(home, NAMES_FILE))
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


class NameEntry(msgspec.Struct, kw_only=True):
    id: str
    thread_name: str
    updated_at: str = ""


_name = msgspec.json.Decoder(NameEntry)
