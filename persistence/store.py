"""The thread store: rollout files under CODEX_HOME plus a SQLite index for fast listing.

The index (`$CODEX_HOME/spindle_index_2.sqlite`) holds id, path, created/updated time, cwd, name,
preview, model provider and archived. It is written only after the file exists and can always
be rebuilt from the files (`rebuild_index`). Listing is paginated by update time with a cursor.

Nothing here blocks the event loop. Every index statement runs in a worker thread behind one
`CapacityLimiter(1)`, so the one connection is used by one thread at a time (SQLite allows a
connection to move between threads when no two use it at once). Other processes may hold the
index: a statement waits for their lock only `INDEX_BUSY_TIMEOUT_MS`, then the limiter is let go
and the call retries with `trio.sleep` until `INDEX_BUSY_DEADLINE_S`. File reads, scans, moves and
appends run in worker threads too. Every failure is a `ThreadStoreError` whose message names the
path, the cause and what to do; the index opens on first use (or `open()`).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from spindle.protocol.ids import parse_thread_id
from spindle.protocol.items import Message
from spindle.protocol.rollout import SessionMeta

from .history import is_user_turn_boundary
from .lease import (
    COORDINATION_POLL_S,
    COORDINATION_WAIT_S,
    CoordinationBusy,
    WriterLease,
    acquire_lease,
    coordination_stuck,
)
from .paths import (
    ARCHIVED_SESSIONS_SUBDIR,
    SESSIONS_SUBDIR,
    ThreadStoreError,
    ThreadStoreUnavailableError,
    archived_path,
    find_thread_path_by_id,
    store_error,
    thread_id_of,
    timestamp,
    unarchived_path,
)
from .reader import RolloutRead, RolloutReadError, read_rollout
from .rollout import ThreadRollout

__all__ = [
    "INDEX_FILE", "LocalThreadStore", "ThreadEntry", "ThreadPage", "ThreadStoreError",
    "ThreadStoreUnavailableError", "preview_of",
]

T = TypeVar("T")

INDEX_FILE = "spindle_index_2.sqlite"
NAMES_FILE = "session_index.jsonl"
"""Thread names, one JSON line per rename (last one wins): the source the index rebuilds names from."""
PREVIEW_CHARS = 200
INDEX_BUSY_TIMEOUT_MS = 100
"""How long one index statement waits for another process's lock before its worker gives up its turn."""
INDEX_BUSY_DEADLINE_S = 10.0
"""How long an index call keeps retrying while another process holds the index."""
INDEX_RETRY_DELAY_S = (0.005, 0.2)
"""First and longest pause between retries of a busy index call (doubling in between)."""
INDEX_CLOSE_DEADLINE_S = 5.0
"""How long `aclose` waits for the index call in progress before giving up on a tidy close."""

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
_COLUMNS = "id, path, created_at, updated_at, cwd, preview, model_provider, archived, forked_from_id, name"
_UPSERT = f"INSERT OR REPLACE INTO threads ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_RECORD = (
    f"INSERT INTO threads ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT(id) DO UPDATE SET"
    " path = excluded.path, updated_at = excluded.updated_at, archived = 0,"
    " preview = CASE WHEN threads.preview = '' THEN excluded.preview ELSE threads.preview END,"
    " name = COALESCE(threads.name, excluded.name)"
)


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


class _IndexBusy(Exception):
    """Another connection holds the lock this statement needs; retry after a pause."""


class LocalThreadStore:
    """JSONL rollouts plus the SQLite index. Also the `RolloutIndex` every rollout reports to.

    Constructing it creates CODEX_HOME (one `mkdir`; ThreadStoreError names the path if it cannot)
    and nothing more: the index opens on first use, or with `await store.open()`.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._make_home()
        self.index_path = home / INDEX_FILE
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._previews: dict[str, str] = {}
        self._names: dict[str, str] | None = None
        self._names_lock = trio.Lock()
        self.handoff_address: str | None = None
        """Where this process takes handoff requests for the leases it holds (set by the runtime)."""

    # --- the index worker -----------------------------------------------
    async def open(self) -> None:
        """Open (and on first use create) CODEX_HOME and the index; ThreadStoreError says why not."""
        await self._index(lambda db: None)

    def close(self) -> None:
        """Close the index connection now (a blocking call: inside trio, prefer `aclose`)."""
        db, self._conn = self._conn, None
        if db is not None:
            db.close()

    async def aclose(self) -> None:
        """Close the index connection in the index worker, after any call in progress (shielded,
        within `INDEX_CLOSE_DEADLINE_S`; past it the connection is left to be closed when collected)."""
        with trio.move_on_after(INDEX_CLOSE_DEADLINE_S) as cleanup:
            cleanup.shield = True
            await trio.to_thread.run_sync(self.close, limiter=self._limiter)

    async def _index(self, job: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run `job` on the connection in the index worker, retrying while the index is busy."""
        delay, longest = INDEX_RETRY_DELAY_S
        deadline = trio.current_time() + INDEX_BUSY_DEADLINE_S
        while True:
            try:
                return await trio.to_thread.run_sync(self._attempt, job, write, limiter=self._limiter)
            except _IndexBusy:
                if trio.current_time() + delay > deadline:
                    raise ThreadStoreUnavailableError(
                        f"the thread index at {self.index_path} stayed locked by another process for"
                        f" {INDEX_BUSY_DEADLINE_S:g} s; try again, or stop the process that holds it"
                    ) from None
            await trio.sleep(delay)
            delay = min(delay * 2, longest)

    def _attempt(self, job: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """One try of `job`, in the worker thread; a write job runs in one transaction."""
        db = self._db
        try:
            if not write:
                return job(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                result = job(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise self._sqlite_error("use", exc) from None

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use, by one thread at a time: the index worker (or a bulk
        loader outside the event loop, such as the benchmark)."""
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _make_home(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error("create CODEX_HOME at", self.home, exc, home=self.home) from None

    def _connect(self) -> sqlite3.Connection:
        self._make_home()
        try:
            db = sqlite3.connect(
                self.index_path, isolation_level=None, check_same_thread=False, timeout=INDEX_BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise self._sqlite_error("open", exc) from None
        try:  # the switch to WAL and the schema need a moment of exclusive access
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise self._sqlite_error("open", exc) from None
        return db

    def _sqlite_error(self, action: str, exc: sqlite3.Error) -> Exception:
        """`_IndexBusy` for a lock held elsewhere, else an error naming the index, cause and remedy."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc)
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text or "busy" in text:
            return _IndexBusy()
        if primary == sqlite3.SQLITE_FULL or "full" in text:
            remedy = f"the disk holding CODEX_HOME ({self.home}) is full: free some space"
        elif primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or "not a database" in text:
            remedy = "move the file aside; Spindle creates a new index, and rebuild_index() refills it from the rollouts"
        else:
            remedy = f"check that CODEX_HOME ({self.home}) is writable"
        return ThreadStoreUnavailableError(f"cannot {action} the thread index at {self.index_path}: {text}; {remedy}")

    # --- RolloutIndex ---------------------------------------------------
    async def record(self, rollout: ThreadRollout, *, updated_at: str) -> None:
        """Insert or refresh a live rollout's entry (it exists on disk and was updated at `updated_at`)."""
        meta = rollout.meta
        preview = self._previews.get(meta.id)
        if not preview:
            preview = self._previews[meta.id] = preview_of(rollout.source.iter_forward_from(0))
        name = await self.name(meta.id)
        row = (meta.id, str(rollout.path), meta.timestamp, updated_at, meta.cwd, preview,
               meta.model_provider or "", meta.forked_from_id, name)
        await self._index(_execute(_RECORD, row), write=True)

    # --- Leases ---------------------------------------------------------
    async def acquire_lease(self, thread_id: str) -> WriterLease:
        """Take `thread_id`'s writer lease (WriterLeaseHeldError names the holder if taken)."""
        deadline = trio.current_time() + COORDINATION_WAIT_S
        while True:
            try:
                return await trio.to_thread.run_sync(
                    lambda: acquire_lease(self.home, thread_id, handoff=self.handoff_address)
                )
            except CoordinationBusy:
                if trio.current_time() > deadline:
                    raise coordination_stuck(self.home) from None
            await trio.sleep(COORDINATION_POLL_S)

    # --- lookups --------------------------------------------------------
    async def entry(self, thread_id: str) -> ThreadEntry | None:
        tid = parse_thread_id(thread_id)
        row = await self._index(lambda db: db.execute("SELECT * FROM threads WHERE id = ?", (tid,)).fetchone())
        return _entry(row) if row else None

    async def find_path(self, thread_id: str, *, archived: bool = False) -> Path | None:
        """The rollout of `thread_id` (live or archived), by index, else by scanning."""
        tid = parse_thread_id(thread_id)
        entry = await self.entry(tid)
        known = Path(entry.path) if entry is not None and entry.archived == archived else None

        def locate() -> Path | None:
            if known is not None and known.exists():
                return known
            return find_thread_path_by_id(self.home, tid, archived=archived)

        return await trio.to_thread.run_sync(locate)

    async def list_threads(self, *, limit: int = 50, cursor: str | None = None, archived: bool = False) -> ThreadPage:
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
        query = f"SELECT * FROM threads WHERE {where} ORDER BY updated_at DESC, id DESC LIMIT ?"
        rows = await self._index(lambda db: db.execute(query, (*args, limit + 1)).fetchall())
        entries = [_entry(row) for row in rows[:limit]]
        next_cursor = f"{entries[-1].updated_at}|{entries[-1].id}" if len(rows) > limit else None
        return ThreadPage(entries, next_cursor)

    # --- archive --------------------------------------------------------
    async def archive(self, thread_id: str) -> Path:
        """Move the rollout to `archived_sessions/` (same name); returns the new path."""
        tid = parse_thread_id(thread_id)
        live = await self.find_path(tid)
        if live is None:
            raise ThreadStoreError(f"no rollout found for thread id {tid}")
        target = archived_path(self.home, live)
        await trio.to_thread.run_sync(self._move, live, target, False)
        await self._index_file(target, archived=True)
        return target

    async def unarchive(self, thread_id: str) -> Path:
        """Move an archived rollout back under `sessions/YYYY/MM/DD/` and mark it updated."""
        tid = parse_thread_id(thread_id)
        archived = await self.find_path(tid, archived=True)
        if archived is None:
            raise ThreadStoreError(f"no archived rollout found for thread id {tid}")
        target = unarchived_path(self.home, archived)
        await trio.to_thread.run_sync(self._move, archived, target, True)
        await self._index_file(target, archived=False)
        return target

    def _move(self, source: Path, target: Path, touch: bool) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            if touch:
                os.utime(target)
        except OSError as exc:
            raise store_error(f"move rollout {source} to", target, exc, home=self.home) from None

    async def _index_file(self, path: Path, *, archived: bool) -> None:
        """Point the index at a moved file; only a thread the index lacks costs a file read."""
        tid = thread_id_of(path)
        row = (str(path), int(archived), timestamp(), tid)
        moved = await self._index(
            lambda db: db.execute("UPDATE threads SET path = ?, archived = ?, updated_at = ? WHERE id = ?", row).rowcount,
            write=True,
        )
        if moved:
            return
        try:
            read = await trio.to_thread.run_sync(read_rollout, path)
        except RolloutReadError:
            return
        name = await self.name(read.meta.id)
        row2 = _row(read, archived=archived, updated_at=timestamp(), name=name)
        await self._index(_execute(_UPSERT, row2), write=True)

    def _upsert(self, meta: SessionMeta, path: Path, *, archived: bool, preview: str, updated_at: str) -> None:
        """Write one entry on the calling thread (bulk loads outside the event loop only)."""
        self._db.execute(_UPSERT, (meta.id, str(path), meta.timestamp, updated_at, meta.cwd, preview,
                                   meta.model_provider or "", int(archived), meta.forked_from_id, None))

    # --- names ----------------------------------------------------------
    def _read_names(self) -> dict[str, str]:
        """The names file, in a worker thread (last rename wins)."""
        names: dict[str, str] = {}
        try:
            lines = (self.home / NAMES_FILE).read_bytes().splitlines()
        except FileNotFoundError:
            return names
        except OSError as exc:
            raise store_error("read thread names from", self.home / NAMES_FILE, exc, home=self.home) from None
        for line in lines:
            try:
                entry = _name_decoder.decode(line)
            except msgspec.DecodeError:
                continue
            names[entry.id] = entry.thread_name
        return names

    async def _loaded_names(self) -> dict[str, str]:
        if self._names is None:
            names = await trio.to_thread.run_sync(self._read_names)
            if self._names is None:
                self._names = names
        return self._names

    async def name(self, thread_id: str) -> str | None:
        return (await self._loaded_names()).get(thread_id)

    async def set_name(self, thread_id: str, name: str) -> None:
        """Name a thread (materialized or not): appended to `session_index.jsonl`, then indexed."""
        tid = parse_thread_id(thread_id)
        line = msgspec.json.encode(_NameEntry(id=tid, thread_name=name, updated_at=timestamp())) + b"\n"
        async with self._names_lock:
            names = await self._loaded_names()
            await trio.to_thread.run_sync(self._append_name, line)
            names[tid] = name
        await self._index(_execute("UPDATE threads SET name = ? WHERE id = ?", (name, tid)), write=True)

    def _append_name(self, line: bytes) -> None:
        path = self.home / NAMES_FILE
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as out:
                out.write(line)
        except OSError as exc:
            raise store_error("write thread names to", path, exc, home=self.home) from None

    async def rebuild_index(self) -> int:
        """Re-create the index from the rollout files (in one transaction); returns how many threads it holds."""
        rows = await trio.to_thread.run_sync(self._scan_rollouts)

        def replace(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM threads")
            db.executemany(_UPSERT, rows)
            return len(rows)

        return await self._index(replace, write=True)

    def _scan_rollouts(self) -> list[tuple[object, ...]]:
        """Index rows of every readable rollout under CODEX_HOME, in a worker thread."""
        names = self._read_names()
        rows = []
        for archived, pattern in ((False, f"{SESSIONS_SUBDIR}/*/*/*/rollout-*.jsonl"), (True, f"{ARCHIVED_SESSIONS_SUBDIR}/rollout-*.jsonl")):
            for path in self.home.glob(pattern):
                try:
                    read = read_rollout(path)
                    updated_at = timestamp(datetime.fromtimestamp(path.stat().st_mtime, UTC))
                except (RolloutReadError, OSError):
                    continue
                rows.append(_row(read, archived=archived, updated_at=updated_at, name=names.get(read.meta.id)))
        return rows


def _execute(sql: str, params: tuple[object, ...]) -> Callable[[sqlite3.Connection], None]:
    """An index job running one statement."""

    def job(db: sqlite3.Connection) -> None:
        db.execute(sql, params)

    return job


def _row(read: RolloutRead, *, archived: bool, updated_at: str, name: str | None) -> tuple[object, ...]:
    meta = read.meta
    return (meta.id, str(read.path), meta.timestamp, updated_at, meta.cwd, preview_of(read.source.items()),
            meta.model_provider or "", int(archived), meta.forked_from_id, name)


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
