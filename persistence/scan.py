"""The reconcile's scan: what changed under CODEX_HOME since the index last looked. Pure and
blocking; the store runs it in a worker thread and writes what it finds to the index.

**What is looked at, and when.** The index keeps the mtime (ns) of `sessions/`, each year, month
and day folder and `archived_sessions/`, and the size and mtime of every file it has seen.
- A folder is listed only when its mtime changed. A folder whose mtime is less than
  `RACY_NS` old is listed again next time (file-system clocks are coarse: a second file created
  in the same tick would leave the mtime as it was).
- New files (and changed files whose head is not known yet) are read: their head, up to and
  including `session_meta` and the first user message (`HEAD_CHUNK` at a time, at most
  `HEAD_CAP`), and their tail (the last line's timestamp is `updated_at`; the file's mtime when
  no line has one). A changed file whose head is known has only its tail read.
- Appending to a file does not change its folder's mtime, so appends are found by stat-ing
  files: on every scan the files of the `RECENT_DAYS` most recent day folders (where live
  threads write); every file in `sweep`, the full stat pass the store runs at start-up and,
  while a runtime is open, in the background at most every few seconds.
- A file that is not a rollout (a name not `rollout-*.jsonl`, no `session_meta` in its head, not
  JSON) is skipped with one warning and remembered by size and mtime, so it is not read (or
  warned about) again until it changes. A file with no whole line yet is skipped silently.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec
import structlog

from spindle.protocol.ids import parse_thread_id
from spindle.protocol.items import Message

from .history import is_user_turn_boundary
from .paths import ARCHIVED_SESSIONS_SUBDIR, SESSIONS_SUBDIR, timestamp
from .query import classify_source

log = structlog.get_logger(__name__)

PREVIEW_CHARS = 200
HEAD_CHUNK = 64 * 1024
HEAD_CAP = 512 * 1024
"""How far into a file the head is looked for (Codex's session_meta alone is ~21 KB)."""
TAIL_BYTES = 4 * 1024
TAIL_CAP = 1024 * 1024
RACY_NS = 1_000_000_000
RECENT_DAYS = 2
NAMES_FILE = "session_index.jsonl"
"""Thread names, one JSON line per rename (last one wins)."""
_ROLLOUT_NAME = re.compile(r"^rollout-.*\.jsonl$")
_CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@dataclass(frozen=True, slots=True)
class KnownFile:
    """What the index knows of a file: its stat, its thread (None: not a rollout), and whether its
    head (session_meta and first user message) has been read for good."""

    size: int
    mtime_ns: int
    thread_id: str | None
    head_done: bool


@dataclass(frozen=True)
class Known:
    """A snapshot of what the index knows. The mappings are never changed once handed over."""

    dirs: Mapping[str, int] = field(default_factory=dict)
    subdirs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    files: Mapping[str, Mapping[str, KnownFile]] = field(default_factory=dict)
    names_stamp: tuple[int, int] | None = None


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


@dataclass(frozen=True, slots=True)
class FileChange:
    """A new or changed file: `facts` when its head was read, else `updated_at` when only its tail
    was, else neither (not a rollout)."""

    path: str
    archived: bool
    size: int
    mtime_ns: int
    facts: Facts | None = None
    updated_at: str | None = None

    @property
    def known(self) -> KnownFile:
        tid = self.facts.thread_id if self.facts else None
        return KnownFile(self.size, self.mtime_ns, tid, bool(self.facts and self.facts.head_done))


@dataclass
class ScanResult:
    dirs: dict[str, int] = field(default_factory=dict)
    subdirs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    changes: list[FileChange] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    names: dict[str, str] | None = None
    names_stamp: tuple[int, int] | None = None

    @property
    def empty(self) -> bool:
        return not (self.changes or self.removed or self.names is not None)


# --- reading one file -------------------------------------------------------


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
    except ValueError:
        return None
    return timestamp((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC))


def _mtime_stamp(mtime_ns: int) -> str:
    return timestamp(datetime.fromtimestamp(mtime_ns / 1e9, UTC))


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
            if not raw.strip():
                continue
            self.lines += 1
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


def _last_stamp(data: bytes, *, from_start: bool) -> str | None | bool:
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


def read_tail(f: BinaryIO, size: int) -> str | None:
    """The last whole line's timestamp, reading back from the end of the file."""
    window = TAIL_BYTES
    while True:
        start = max(0, size - window)
        f.seek(start)
        found = _last_stamp(f.read(size - start), from_start=start == 0)
        if found is not False:
            return found or None
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
    head = _Head()
    with open(path, "rb") as f:
        data, parsed = b"", 0
        while True:
            chunk = f.read(HEAD_CHUNK)
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
        updated = _last_stamp(data, from_start=True) if len(data) >= size else read_tail(f, size)
    meta = head.meta
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
    with open(path, "rb") as f:
        return read_tail(f, size) or _mtime_stamp(mtime_ns)


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


# --- the walk ---------------------------------------------------------------


def sweep(known: Known) -> frozenset[str]:
    """The full stat pass: every known file whose size or mtime changed, or that is gone."""
    changed = []
    for folder, files in known.files.items():
        for name, seen in files.items():
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                changed.append(path)
                continue
            if st.st_size != seen.size or st.st_mtime_ns != seen.mtime_ns:
                changed.append(path)
    return frozenset(changed)


def scan(home: str, known: Known, *, suspects: Iterable[str] = (), recent_days: int = RECENT_DAYS) -> ScanResult:
    """What changed since `known`: new, changed and removed files, folder mtimes, names."""
    return _Scan(home, known, suspects).run(recent_days)


class _Scan:
    def __init__(self, home: str, known: Known, suspects: Iterable[str]) -> None:
        self.home, self.known = home, known
        self.result = ScanResult()
        self.now_ns = time.time_ns()
        self.suspects: dict[str, set[str]] = {}
        for path in suspects:
            folder, name = os.path.split(path)
            self.suspects.setdefault(folder, set()).add(name)

    def run(self, recent_days: int) -> ScanResult:
        days = self._tree(os.path.join(self.home, SESSIONS_SUBDIR), depth=3)
        recent = {path for path, _ in sorted(days)[-recent_days:]} if recent_days else set()
        for path, mtime in days:
            self._leaf(path, mtime, archived=False, stat_all=path in recent)
        archived = os.path.join(self.home, ARCHIVED_SESSIONS_SUBDIR)
        mtime = self._dir_mtime(archived)
        if mtime is not None:
            self._leaf(archived, mtime, archived=True, stat_all=False)
        for folder, files in self.known.files.items():
            if folder not in self.result.dirs:  # the folder is gone, and its files with it
                self.result.removed += [os.path.join(folder, name) for name in files]
        stamp = names_stamp(self.home)
        if stamp != self.known.names_stamp:
            self.result.names, self.result.names_stamp = read_names(self.home)
        else:
            self.result.names_stamp = stamp
        return self.result

    def _dir_mtime(self, path: str) -> int | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns

    def _settled(self, mtime: int) -> int:
        """The mtime to remember: 0 (list it again) while it is too recent to trust."""
        return 0 if self.now_ns - mtime < RACY_NS else mtime

    def _list(self, path: str, *, dirs: bool) -> list[str] | None:
        try:
            with os.scandir(path) as entries:
                return [e.name for e in entries if (e.is_dir() if dirs else e.is_file())]
        except OSError as exc:
            log.warning("cannot list a rollout folder", path=path, error=exc.strerror or str(exc))
            return None

    def _tree(self, path: str, depth: int) -> list[tuple[str, int]]:
        """The day folders under `path` (`depth` levels down), with their mtimes."""
        mtime = self._dir_mtime(path)
        if mtime is None:
            return []
        if depth == 0:
            return [(path, mtime)]
        children = self.known.subdirs.get(path)
        if children is None or self.known.dirs.get(path) != mtime:
            listed = self._list(path, dirs=True)
            children = tuple(sorted(listed)) if listed is not None else children or ()
            if listed is None:
                mtime = 0
        self.result.dirs[path] = self._settled(mtime)
        self.result.subdirs[path] = children
        return [leaf for child in children for leaf in self._tree(os.path.join(path, child), depth - 1)]

    def _leaf(self, path: str, mtime: int, *, archived: bool, stat_all: bool) -> None:
        """A folder of rollouts: list it if it changed; stat its files if asked."""
        seen = self.known.files.get(path, {})
        suspects = self.suspects.get(path, set())
        check: Iterable[str] = seen if stat_all else suspects & seen.keys()
        if self.known.dirs.get(path) != mtime:
            listed = self._list(path, dirs=False)
            if listed is None:
                mtime = 0
            else:
                names = set(listed)
                self.result.removed += [os.path.join(path, name) for name in seen.keys() - names]
                for name in names - seen.keys():
                    self._visit(path, name, None, archived)
                check = [name for name in check if name in names]
        for name in check:
            self._visit(path, name, seen[name], archived)
        self.result.dirs[path] = self._settled(mtime)

    def _visit(self, folder: str, name: str, seen: KnownFile | None, archived: bool) -> None:
        path = os.path.join(folder, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if seen is not None:
                self.result.removed.append(path)
            return
        except OSError:
            return
        size, mtime = st.st_size, st.st_mtime_ns
        if seen is not None and seen.size == size and seen.mtime_ns == mtime:
            return
        change = FileChange(path, archived, size, mtime)
        try:
            if not _ROLLOUT_NAME.match(name):
                raise NotRollout("its name is not rollout-*.jsonl")
            if seen is not None and seen.thread_id and seen.head_done and size >= seen.size:
                change = FileChange(path, archived, size, mtime, updated_at=read_updated_at(path, size, mtime))
            else:
                change = FileChange(path, archived, size, mtime, facts=read_facts(path, size, mtime))
        except NotRollout as exc:
            if exc.warn:
                log.warning("skipping a file that is not a rollout", path=path, reason=str(exc))
        except OSError as exc:
            log.warning("skipping a rollout that cannot be read", path=path, error=exc.strerror or str(exc))
        self.result.changes.append(change)
