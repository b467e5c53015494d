"""The thread store: rollout files under CODEX_HOME plus a SQLite index for fast listing.

The index (`$CODEX_HOME/spindle_index_2.sqlite`) holds id, path, created/updated time, cwd, name,
preview, model provider and archived. It is written only after the file exists and can always
be rebuilt from the files (`rebuild_index`). Listing is paginated by update time with a cursor.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from spindle.protocol.ids import parse_thread_id
from spindle.protocol.items import Message
from spindle.protocol.rollout import SessionMeta

from .history import is_user_turn_boundary
from .paths import (
    ARCHIVED_SESSIONS_SUBDIR,
    SESSIONS_SUBDIR,
    archived_path,
    find_thread_path_by_id,
    thread_id_of,
    timestamp,
    unarchived_path,
)
from .reader import RolloutReadError, read_rollout
from .rollout import ThreadRollout

INDEX_FILE = "spindle_index_2.sqlite"
NAMES_FILE = "session_index.jsonl"
"""Thread names, one JSON line per rename (last one wins): the source the index rebuilds names from."""
PREVIEW_CHARS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    cwd TEXT NOT NULL DEFAULT '',
    preview TEXT NOT NULL DEFAULT '',
    model_provider TEXT NOT NULL DEFAULT '',
    archived INTEGER NOT NULL DEFAULT 0,
    forked_from_id TEXT,
    name TEXT
);
CREATE INDEX IF NOT EXISTS threads_by_update ON threads (archived, updated_at DESC, id DESC);
"""


class ThreadStoreError(Exception):
    """A store operation that cannot be done; the message says why."""


@dataclass(frozen=True, kw_only=True)
class ThreadEntry:
    id: str
    path: str
    created_at: str
    updated_at: str
    cwd: str
    preview: str
    model_provider: str
    archived: bool
    forked_from_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ThreadPage:
    entries: list[ThreadEntry]
    next_cursor: str | None


def preview_of(items: Iterable[object]) -> str:
    """The first user message's text, clipped: what a thread list shows."""
    for item in items:
        if is_user_turn_boundary(item) and isinstance(item, Message):
            return item.text()[:PREVIEW_CHARS]
    return ""


class LocalThreadStore:
    """JSONL rollouts plus the SQLite index. Also the `RolloutIndex` every rollout reports to."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self._db = _open_index(home / INDEX_FILE)
        self._previews: dict[str, str] = {}
        self._names: dict[str, str] | None = None

    def close(self) -> None:
        self._db.close()

    # --- RolloutIndex ---------------------------------------------------
    def materialized(self, rollout: ThreadRollout) -> None:
        meta = rollout.meta
        now = timestamp()
        self._db.execute(
            "INSERT OR REPLACE INTO threads (id, path, created_at, updated_at, cwd, preview, model_provider, archived, forked_from_id, name)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (meta.id, str(rollout.path), meta.timestamp, now, meta.cwd, preview_of(rollout.source.iter_forward_from(0)),
             meta.model_provider or "", meta.forked_from_id, self.name(meta.id)),
        )

    def touched(self, rollout: ThreadRollout) -> None:
        tid = rollout.meta.id
        preview = self._previews.get(tid)
        if not preview:
            preview = self._previews[tid] = preview_of(rollout.source.iter_forward_from(0))
        self._db.execute(
            "UPDATE threads SET updated_at = ?, preview = CASE WHEN preview = '' THEN ? ELSE preview END WHERE id = ?",
            (timestamp(), preview, tid),
        )

    # --- lookups --------------------------------------------------------
    def entry(self, thread_id: str) -> ThreadEntry | None:
        row = self._db.execute("SELECT * FROM threads WHERE id = ?", (parse_thread_id(thread_id),)).fetchone()
        return _entry(row) if row else None

    def find_path(self, thread_id: str, *, archived: bool = False) -> Path | None:
        """The rollout of `thread_id` (live or archived), by index, else by scanning."""
        tid = parse_thread_id(thread_id)
        entry = self.entry(tid)
        if entry is not None and entry.archived == archived and Path(entry.path).exists():
            return Path(entry.path)
        return find_thread_path_by_id(self.home, tid, archived=archived)

    def list_threads(self, *, limit: int = 50, cursor: str | None = None, archived: bool = False) -> ThreadPage:
        """Newest-updated first; `next_cursor` continues where this page stopped."""
        if limit < 1:
            raise ThreadStoreError("limit must be at least 1")
        args: list[object] = [int(archived)]
        where = "archived = ?"
        if cursor:
            updated, sep, tid = cursor.partition("|")
            if not sep:
                raise ThreadStoreError(f"invalid cursor {cursor!r}")
            where += " AND (updated_at < ? OR (updated_at = ? AND id < ?))"
            args += [updated, updated, tid]
        rows = self._db.execute(
            f"SELECT * FROM threads WHERE {where} ORDER BY updated_at DESC, id DESC LIMIT ?", (*args, limit + 1)
        ).fetchall()
        entries = [_entry(row) for row in rows[:limit]]
        next_cursor = f"{entries[-1].updated_at}|{entries[-1].id}" if len(rows) > limit else None
        return ThreadPage(entries, next_cursor)

    # --- archive --------------------------------------------------------
    def archive(self, thread_id: str) -> Path:
        """Move the rollout to `archived_sessions/` (same name); returns the new path."""
        tid = parse_thread_id(thread_id)
        live = self.find_path(tid)
        if live is None:
            raise ThreadStoreError(f"no rollout found for thread id {tid}")
        target = archived_path(self.home, live)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(live, target)
        self._index_file(target, archived=True)
        return target

    def unarchive(self, thread_id: str) -> Path:
        """Move an archived rollout back under `sessions/YYYY/MM/DD/` and mark it updated."""
        tid = parse_thread_id(thread_id)
        archived = self.find_path(tid, archived=True)
        if archived is None:
            raise ThreadStoreError(f"no archived rollout found for thread id {tid}")
        target = unarchived_path(self.home, archived)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(archived, target)
        os.utime(target)
        self._index_file(target, archived=False)
        return target

    def _index_file(self, path: Path, *, archived: bool) -> None:
        """Point the index at a moved file; only a thread the index lacks costs a file read."""
        tid = thread_id_of(path)
        moved = self._db.execute(
            "UPDATE threads SET path = ?, archived = ?, updated_at = ? WHERE id = ?",
            (str(path), int(archived), timestamp(), tid),
        )
        if moved.rowcount:
            return
        try:
            read = read_rollout(path)
        except RolloutReadError:
            return
        self._upsert(read.meta, path, archived=archived, preview=preview_of(read.source.items()),
                     updated_at=timestamp())

    def _upsert(self, meta: SessionMeta, path: Path, *, archived: bool, preview: str, updated_at: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO threads (id, path, created_at, updated_at, cwd, preview, model_provider, archived, forked_from_id, name)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (meta.id, str(path), meta.timestamp, updated_at, meta.cwd, preview, meta.model_provider or "",
             int(archived), meta.forked_from_id, self.name(meta.id)),
        )

    # --- names ----------------------------------------------------------
    def _load_names(self) -> dict[str, str]:
        if self._names is None:
            self._names = {}
            try:
                lines = (self.home / NAMES_FILE).read_bytes().splitlines()
            except FileNotFoundError:
                lines = []
            for line in lines:
                try:
                    entry = _name_decoder.decode(line)
                except msgspec.DecodeError:
                    continue
                self._names[entry.id] = entry.thread_name
        return self._names

    def name(self, thread_id: str) -> str | None:
        return self._load_names().get(thread_id)

    def set_name(self, thread_id: str, name: str) -> None:
        """Name a thread (materialized or not): appended to `session_index.jsonl`, then indexed."""
        tid = parse_thread_id(thread_id)
        line = msgspec.json.encode(_NameEntry(id=tid, thread_name=name, updated_at=timestamp())) + b"\n"
        with open(self.home / NAMES_FILE, "ab") as out:
            out.write(line)
        self._load_names()[tid] = name
        self._db.execute("UPDATE threads SET name = ? WHERE id = ?", (name, tid))

    def rebuild_index(self) -> int:
        """Re-create the index from the rollout files; returns how many threads it holds."""
        self._db.execute("DELETE FROM threads")
        count = 0
        for archived, pattern in ((False, f"{SESSIONS_SUBDIR}/*/*/*/rollout-*.jsonl"), (True, f"{ARCHIVED_SESSIONS_SUBDIR}/rollout-*.jsonl")):
            for path in self.home.glob(pattern):
                try:
                    read = read_rollout(path)
                except RolloutReadError:
                    continue
                mtime = timestamp(_mtime(path))
                self._upsert(read.meta, path, archived=archived, preview=preview_of(read.source.items()), updated_at=mtime)
                count += 1
        return count


INDEX_OPEN_DEADLINE_S = 10.0
"""How long opening the index may wait for another process that holds it (first open, WAL switch)."""


def _open_index(path: Path) -> sqlite3.Connection:
    """Open (and on first use create) the index. Several processes may share one CODEX_HOME: the
    switch to WAL and the schema need a moment of exclusive access, so a busy database is retried."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=INDEX_OPEN_DEADLINE_S)
    deadline = time.monotonic() + INDEX_OPEN_DEADLINE_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise ThreadStoreError(f"cannot open the thread index {path}: {exc}") from None
            time.sleep(0.01)


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _entry(row: tuple[object, ...]) -> ThreadEntry:
    tid, path, created, updated, cwd, preview, provider, archived, forked, name = row
    return ThreadEntry(
        id=str(tid), path=str(path), created_at=str(created), updated_at=str(updated), cwd=str(cwd),
        preview=str(preview), model_provider=str(provider), archived=bool(archived),
        forked_from_id=str(forked) if forked else None, name=str(name) if name is not None else None,
    )


class _NameEntry(msgspec.Struct, kw_only=True):
    id: str
    thread_name: str
    updated_at: str = ""


_name_decoder = msgspec.json.Decoder(_NameEntry)

