"""The SQLite index of CODEX_HOME (`spindle_index_3.sqlite`): one row per rollout file (its stat
and what its head and tail say), one per thread (derived from its files, plus its name), the
folder mtimes and the names file's stamp. It can always be rebuilt from the files; a new schema
gets a new file name rather than a migration.

Nothing here runs on the event loop. Every statement runs in a worker thread behind one
`CapacityLimiter(1)`, so the one connection is used by one thread at a time (SQLite allows a
connection to move between threads when no two use it at once). Other processes may hold the
index: a statement waits for their lock only `INDEX_BUSY_TIMEOUT_MS`, then the limiter is let go
and the call retries with `trio.sleep` until its deadline (`IndexBusyError`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import trio

from .heads import Facts
from .paths import ThreadStoreUnavailableError, store_error
from .scan import KnownFile, ScanResult

T = TypeVar("T")

INDEX_FILE = "spindle_index_3.sqlite"
INDEX_BUSY_TIMEOUT_MS = 100
"""How long one index statement waits for another process's lock before its worker gives up its turn."""
INDEX_BUSY_DEADLINE_S = 10.0
"""How long an index call keeps retrying while another process holds the index."""
INDEX_RETRY_DELAY_S = (0.005, 0.2)
"""First and longest pause between retries of a busy index call (doubling in between)."""
INDEX_CLOSE_DEADLINE_S = 5.0
"""How long `aclose` waits for the index call in progress before giving up on a tidy close."""
_CHUNK = 500
"""Ids per `IN (...)` list."""

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
    name TEXT,
    source_kind TEXT NOT NULL DEFAULT 'unknown',
    interactive INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS threads_by_created ON threads (archived, created_at, id);
CREATE INDEX IF NOT EXISTS threads_by_updated ON threads (archived, updated_at, id);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0,
    thread_id TEXT,
    head_done INTEGER NOT NULL DEFAULT 0,
    created_at TEXT, updated_at TEXT, cwd TEXT, preview TEXT, model_provider TEXT,
    source_kind TEXT, interactive INTEGER, forked_from_id TEXT
);
CREATE INDEX IF NOT EXISTS files_by_thread ON files (thread_id);
CREATE TABLE IF NOT EXISTS dirs (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, children TEXT);
CREATE TABLE IF NOT EXISTS stamps (name TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
"""
_FILE_COLUMNS = ("path, size, mtime_ns, archived, thread_id, head_done, created_at, updated_at, cwd, preview,"
                 " model_provider, source_kind, interactive, forked_from_id")
_UPSERT_FILE = (
    f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
    " archived = excluded.archived, thread_id = excluded.thread_id, head_done = excluded.head_done,"
    " created_at = excluded.created_at, updated_at = excluded.updated_at, cwd = excluded.cwd,"
    " preview = excluded.preview, model_provider = excluded.model_provider, source_kind = excluded.source_kind,"
    " interactive = excluded.interactive, forked_from_id = excluded.forked_from_id"
    " WHERE excluded.mtime_ns >= files.mtime_ns"  # a scan never undoes a newer record()
)
_TAIL = "UPDATE files SET size = ?, mtime_ns = ?, updated_at = ? WHERE path = ? AND mtime_ns <= ?"
_THREAD_COLUMNS = ("id, path, created_at, updated_at, cwd, preview, model_provider, archived, forked_from_id, name,"
                   " source_kind, interactive")
_UPSERT_THREAD = f"INSERT OR REPLACE INTO threads ({_THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


class IndexBusyError(ThreadStoreUnavailableError):
    """Another process held the index past the call's deadline."""


class _IndexBusy(Exception):
    """Another connection holds the lock this statement needs; retry after a pause."""


class ThreadIndex:
    """The index connection and its worker. Opens on first use."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / INDEX_FILE
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)

    def close(self) -> None:
        """Close the connection now (a blocking call: inside trio, prefer `aclose`)."""
        db, self._conn = self._conn, None
        if db is not None:
            db.close()

    async def aclose(self) -> None:
        """Close the connection in the worker, after any call in progress (shielded, within
        `INDEX_CLOSE_DEADLINE_S`; past it the connection is left to be closed when collected)."""
        with trio.move_on_after(INDEX_CLOSE_DEADLINE_S) as cleanup:
            cleanup.shield = True
            await trio.to_thread.run_sync(self.close, limiter=self._limiter)

    async def run(self, job: Callable[[sqlite3.Connection], T], *, write: bool = False,
                  deadline_s: float = INDEX_BUSY_DEADLINE_S) -> T:
        """Run `job` on the connection in the worker, retrying while the index is busy."""
        delay, longest = INDEX_RETRY_DELAY_S
        deadline = trio.current_time() + deadline_s
        while True:
            try:
                return await trio.to_thread.run_sync(self._attempt, job, write, limiter=self._limiter)
            except _IndexBusy:
                if trio.current_time() + delay > deadline:
                    raise IndexBusyError(
                        f"the thread index at {self.path} stayed locked by another process for"
                        f" {deadline_s:g} s; try again, or stop the process that holds it"
                    ) from None
            await trio.sleep(delay)
            delay = min(delay * 2, longest)

    def _attempt(self, job: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """One try of `job`, in the worker thread; a write job runs in one transaction."""
        db = self.db
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
    def db(self) -> sqlite3.Connection:
        """The connection, opened on first use, by one thread at a time: the worker (or a bulk
        loader outside the event loop, such as the benchmark)."""
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error("create CODEX_HOME at", self.home, exc, home=self.home) from None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=INDEX_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise self._sqlite_error("open", exc) from None
        try:  # the switch to WAL and the schema need a moment of exclusive access
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.create_function("spindle_fold", 1, _fold, deterministic=True)
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
        return ThreadStoreUnavailableError(f"cannot {action} the thread index at {self.path}: {text}; {remedy}")


def _fold(text: object) -> str:
    return text.casefold() if isinstance(text, str) else ""


# --- jobs (each runs in the worker, a write job in one transaction) ----------


def load_known(db: sqlite3.Connection) -> tuple[dict[str, int], dict[str, tuple[str, ...]], dict[str, dict[str, KnownFile]], tuple[int, int] | None]:
    """What the index knows: folder mtimes, subfolders, files by folder, the names file's stamp."""
    dirs: dict[str, int] = {}
    subdirs: dict[str, tuple[str, ...]] = {}
    for path, mtime, children in db.execute("SELECT path, mtime_ns, children FROM dirs"):
        dirs[path] = mtime
        if children is not None:
            subdirs[path] = tuple(children.split("\n")) if children else ()
    files: dict[str, dict[str, KnownFile]] = {}
    for path, size, mtime, tid, head_done in db.execute("SELECT path, size, mtime_ns, thread_id, head_done FROM files"):
        folder, name = os.path.split(path)
        files.setdefault(folder, {})[name] = KnownFile(size, mtime, tid, bool(head_done))
    row = db.execute("SELECT size, mtime_ns FROM stamps WHERE name = 'names'").fetchone()
    return dirs, subdirs, files, (row[0], row[1]) if row else None


def _file_row(path: str, archived: bool, size: int, mtime_ns: int, facts: Facts | None) -> tuple[object, ...]:
    if facts is None:
        return (path, size, mtime_ns, int(archived), None, 1, None, None, None, None, None, None, None, None)
    return (path, size, mtime_ns, int(archived), facts.thread_id, int(facts.head_done), facts.created_at,
            facts.updated_at, facts.cwd, facts.preview, facts.model_provider, facts.source_kind,
            int(facts.interactive), facts.forked_from_id)


def apply_scan(db: sqlite3.Connection, result: ScanResult, names: Mapping[str, str], *, reset: bool = False) -> None:
    """Write what a scan found; then refresh the threads it touched (and every name, if the
    names file changed). `reset` first empties the index (a rebuild)."""
    if reset:
        for table in ("threads", "files", "dirs", "stamps"):
            db.execute(f"DELETE FROM {table}")
    touched: set[str] = set()
    for path in result.removed:
        touched.update(tid for (tid,) in db.execute("DELETE FROM files WHERE path = ? RETURNING thread_id", (path,)) if tid)
    tails = [c for c in result.changes if c.updated_at is not None]
    heads = [c for c in result.changes if c.updated_at is None]
    db.executemany(_TAIL, [(c.size, c.mtime_ns, c.updated_at, c.path, c.mtime_ns) for c in tails])
    db.executemany(_UPSERT_FILE, [_file_row(c.path, c.archived, c.size, c.mtime_ns, c.facts) for c in heads])
    touched.update(c.was for c in result.changes if c.was)
    touched.update(c.facts.thread_id for c in heads if c.facts)
    db.execute("DELETE FROM dirs")
    db.executemany("INSERT INTO dirs (path, mtime_ns, children) VALUES (?, ?, ?)",
                   [(path, mtime, "\n".join(result.subdirs[path]) if path in result.subdirs else None)
                    for path, mtime in result.dirs.items()])
    if result.names_stamp is not None:
        db.execute("INSERT OR REPLACE INTO stamps (name, size, mtime_ns) VALUES ('names', ?, ?)", result.names_stamp)
    else:
        db.execute("DELETE FROM stamps WHERE name = 'names'")
    refresh_threads(db, touched, names)
    if result.names is not None:
        db.executemany("UPDATE threads SET name = ? WHERE id = ? AND name IS NOT ?",
                       [(name, tid, name) for tid, name in result.names.items()])


def record_file(db: sqlite3.Connection, path: str, *, archived: bool, size: int, mtime_ns: int, facts: Facts,
                names: Mapping[str, str], keep_preview: bool = True) -> KnownFile:
    """Insert or refresh one rollout's file row (Spindle's own writes), then its thread."""
    if keep_preview:  # the first preview a file had is the one it keeps
        row = db.execute("SELECT preview FROM files WHERE path = ?", (path,)).fetchone()
        if row and row[0]:
            facts = replace(facts, preview=row[0], head_done=True)
    db.execute(_UPSERT_FILE, _file_row(path, archived, size, mtime_ns, facts))
    refresh_threads(db, {facts.thread_id}, names)
    return KnownFile(size, mtime_ns, facts.thread_id, facts.head_done)


def move_file(db: sqlite3.Connection, source: str, target: str, *, archived: bool, size: int, mtime_ns: int,
              updated_at: str, names: Mapping[str, str]) -> KnownFile | None:
    """Point a file row at the file's new place, updated at `updated_at`; None if the index did not know it."""
    row = db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE path = ?", (source,)).fetchone()
    if row is None or row[4] is None:
        return None
    db.execute("DELETE FROM files WHERE path = ?", (source,))
    moved = (target, size, mtime_ns, int(archived), *row[4:7], updated_at, *row[8:])
    db.execute(_UPSERT_FILE, moved)
    refresh_threads(db, {row[4]}, names)
    return KnownFile(size, mtime_ns, row[4], bool(row[5]))


def refresh_threads(db: sqlite3.Connection, ids: Iterable[str], names: Mapping[str, str]) -> None:
    """Re-derive the rows of `ids` from their files: the first file (a Codex revert adds segment
    files to a thread) gives the path and the thread's facts, the latest gives `updated_at`, the
    first non-empty preview is the preview. A thread with no file left is dropped."""
    ordered = sorted(ids)
    for at in range(0, len(ordered), _CHUNK):
        chunk = ordered[at : at + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        groups: dict[str, list[Sequence[object]]] = {}
        for row in db.execute(
            "SELECT thread_id, path, created_at, updated_at, cwd, preview, model_provider, archived, forked_from_id,"
            f" source_kind, interactive FROM files WHERE thread_id IN ({marks}) ORDER BY created_at, path", chunk
        ):
            groups.setdefault(str(row[0]), []).append(row)
        gone = [(tid,) for tid in chunk if tid not in groups]
        db.executemany("DELETE FROM threads WHERE id = ?", gone)
        db.executemany(_UPSERT_THREAD, [_thread_row(rows, names) for rows in groups.values()])


def _thread_row(rows: list[Sequence[object]], names: Mapping[str, str]) -> tuple[object, ...]:
    tid, path, created, _, cwd, _, provider, archived, forked, kind, interactive = rows[0]
    updated = max(str(row[3]) for row in rows)
    preview = next((row[5] for row in rows if row[5]), "")
    return (tid, path, created, updated, cwd, preview, provider, archived, forked, names.get(str(tid)), kind, interactive)


def set_name(db: sqlite3.Connection, thread_id: str, name: str) -> None:
    db.execute("UPDATE threads SET name = ? WHERE id = ?", (name, thread_id))
