"""The reconcile's scan: what changed under CODEX_HOME since the index last looked. Pure and
blocking; the store runs it in a worker thread and writes what it finds to the index.

**What is looked at, and when.** The index keeps the mtime (ns) of `sessions/`, each year, month
and day folder and `archived_sessions/`, and the size and mtime of every file it has seen.
- A folder is listed only when its mtime changed. A folder whose mtime is less than
  `RACY_NS` old is listed again next time (file-system clocks are coarse: a second file created
  in the same tick would leave the mtime as it was).
- New files (and changed files whose head is not known yet) are read: their head, up to and
  including `session_meta` and the first user message, and their tail (`heads.py`). A changed
  file whose head is known has only its tail read.
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

import structlog

from .heads import (
    Facts,
    NotRollout,
    names_stamp,
    read_facts,
    read_facts_fd,
    read_names,
    read_updated_at,
)
from .paths import ARCHIVED_SESSIONS_SUBDIR, SESSIONS_SUBDIR

log = structlog.get_logger(__name__)

RACY_NS = 1_000_000_000
"""A folder whose mtime is younger than this is listed again at the next scan."""
RECENT_DAYS = 2
"""How many of the most recent day folders have their files stat'ed on every scan."""
_ROLLOUT_NAME = re.compile(r"^rollout-.*\.jsonl$")


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
class FileChange:
    """A new or changed file: `facts` when its head was read, else `updated_at` when only its tail
    was, else neither (not a rollout)."""

    path: str
    archived: bool
    size: int
    mtime_ns: int
    facts: Facts | None = None
    updated_at: str | None = None
    was: str | None = None
    """The thread the file belonged to before (for a tail read: still does)."""

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
        archived_mtime = self._dir_mtime(archived)
        if archived_mtime is not None:
            self._leaf(archived, archived_mtime, archived=True, stat_all=False)
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
                names = [e.name for e in entries if (e.is_dir() if dirs else e.is_file())]
        except OSError as exc:
            log.warning("cannot list a rollout folder", path=path, error=exc.strerror or str(exc))
            return None
        usable = [name for name in names if _usable(name)]
        for name in set(names) - set(usable):
            log.warning("skipping a name that is not one line of UTF-8 text", folder=path, name=ascii(name))
        return usable

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
        if seen is None and _ROLLOUT_NAME.match(name):
            self._visit_new(path, archived)
            return
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
        was = seen.thread_id if seen is not None else None
        change = FileChange(path, archived, size, mtime, was=was)
        try:
            if not _ROLLOUT_NAME.match(name):
                raise NotRollout("its name is not rollout-*.jsonl")
            if seen is not None and seen.thread_id and seen.head_done and size >= seen.size:
                change = FileChange(path, archived, size, mtime, updated_at=read_updated_at(path, size, mtime), was=was)
            else:
                change = FileChange(path, archived, size, mtime, facts=read_facts(path, size, mtime), was=was)
        except NotRollout as exc:
            if exc.warn:
                log.warning("skipping a file that is not a rollout", path=path, reason=str(exc))
        except OSError as exc:
            log.warning("skipping a rollout that cannot be read", path=path, error=exc.strerror or str(exc))
        self.result.changes.append(change)

    def _visit_new(self, path: str, archived: bool) -> None:
        """A file the index has not seen: opened first, then stat'ed (one path lookup, not two)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("skipping a rollout that cannot be read", path=path, error=exc.strerror or str(exc))
            return
        try:
            st = os.fstat(fd)
            change = FileChange(path, archived, st.st_size, st.st_mtime_ns)
            try:
                facts = read_facts_fd(fd, st.st_size, st.st_mtime_ns)
                change = FileChange(path, archived, st.st_size, st.st_mtime_ns, facts=facts)
            except NotRollout as exc:
                if exc.warn:
                    log.warning("skipping a file that is not a rollout", path=path, reason=str(exc))
            except OSError as exc:
                log.warning("skipping a rollout that cannot be read", path=path, error=exc.strerror or str(exc))
        finally:
            os.close(fd)
        self.result.changes.append(change)


def _usable(name: str) -> bool:
    """Whether a file name can be indexed: valid UTF-8 (no undecodable bytes) on one line."""
    if "\n" in name or "\r" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
