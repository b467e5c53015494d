"""The thread store: rollout files under CODEX_HOME plus a SQLite index (`index.py`) for listing.

The index knows every rollout under `sessions/` and `archived_sessions/`, whoever wrote it
(Spindle or the real Codex), because it is reconciled with the files: on `open()`, before each
list (unless the query says `use_state_db_only`), and in the background while a runtime runs
(`run`). A reconcile looks only at what changed (`scan.py` says what is looked at and when);
one runs at a time, and a list that finds one in flight waits for it and takes its result.
Spindle's own rollouts also reach the index directly: their reporter calls `record` with the
file's current size and mtime, so the reconcile does not read them again. Listing is a
`ThreadQuery` (`query.py`): filters, sort by created or updated time, cursors.

Nothing here blocks the event loop: index statements run in the index worker, scans, reads and
moves in worker threads. Every failure is a `ThreadStoreError` whose message names the path, the
cause and what to do.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from spindle.protocol.ids import parse_thread_id

from . import index as ix
from .heads import (
    NAMES_FILE,
    Facts,
    NameEntry,
    NotRollout,
    normalize_timestamp,
    preview_of,
    read_facts,
    read_names,
)
from .index import INDEX_BUSY_DEADLINE_S, INDEX_FILE, IndexBusyError, ThreadIndex
from .lease import (
    COORDINATION_POLL_S,
    COORDINATION_WAIT_S,
    CoordinationBusy,
    WriterLease,
    acquire_lease,
    coordination_stuck,
)
from .paths import (
    ThreadStoreError,
    ThreadStoreUnavailableError,
    archived_path,
    find_thread_path_by_id,
    store_error,
    timestamp,
    unarchived_path,
)
from .query import ENTRY_COLUMNS, ThreadEntry, ThreadPage, ThreadQuery, classify_source, entry_of
from .rollout import ThreadRollout
from .scan import Known, KnownFile, ScanResult, scan, sweep

__all__ = [
    "INDEX_FILE", "LocalThreadStore", "ThreadEntry", "ThreadPage", "ThreadQuery", "ThreadStoreError",
    "ThreadStoreUnavailableError", "preview_of",
]

T = TypeVar("T")
log = structlog.get_logger(__name__)

RECONCILE_BUSY_DEADLINE_S = 0.25
"""How long a list's reconcile waits for another process's lock on the index before the list is
answered from the index as it is (the next reconcile finds the same changes)."""
FULL_STAT_INTERVAL_S = 5.0
"""The background full stat pass (which finds appends in older folders) runs at most this often,
and only after a list asked for it."""


class _Known:
    """What the index holds, kept in memory so an unchanged home costs only stats. Changed on the
    event loop only; a folder's file map is replaced, never changed, so a scan can read a snapshot."""

    def __init__(self, dirs: dict[str, int], subdirs: dict[str, tuple[str, ...]],
                 files: dict[str, dict[str, KnownFile]], names_stamp: tuple[int, int] | None) -> None:
        self.dirs, self.subdirs, self.files, self.names_stamp = dirs, subdirs, files, names_stamp

    def snapshot(self) -> Known:
        return Known(dict(self.dirs), dict(self.subdirs), dict(self.files), self.names_stamp)

    def note(self, path: str, known: KnownFile | None) -> None:
        """A file's new state (None: gone), unless a newer one is already noted."""
        folder, name = os.path.split(path)
        files = dict(self.files.get(folder, {}))
        old = files.get(name)
        if known is None:
            files.pop(name, None)
        elif old is None or old.mtime_ns <= known.mtime_ns:
            files[name] = known
        self.files[folder] = files

    def apply(self, result: ScanResult) -> None:
        self.dirs, self.subdirs, self.names_stamp = dict(result.dirs), dict(result.subdirs), result.names_stamp
        for path in result.removed:
            self.note(path, None)
        for change in result.changes:
            self.note(change.path, change.known)
        for folder in [f for f in self.files if f not in self.dirs]:
            del self.files[folder]


class LocalThreadStore:
    """JSONL rollouts plus the SQLite index. Also the `RolloutIndex` every rollout reports to.

    Constructing it creates CODEX_HOME (one `mkdir`; ThreadStoreError names the path if it cannot)
    and nothing more: the index opens and is reconciled with the files on first use, or with
    `await store.open()`. `run` is the background full stat pass (optional: without it, appends to
    files outside the most recent day folders are seen at the next `open()` or `reconcile(full=True)`).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._make_home()
        self.index = ThreadIndex(home)
        self.index_path = self.index.path
        self._known: _Known | None = None
        self._reconciling: trio.Event | None = None
        self._sweep_wanted = trio.Event()
        self._previews: dict[str, str] = {}
        self._names: dict[str, str] | None = None
        self._names_lock = trio.Lock()
        self.handoff_address: str | None = None
        """Where this process takes handoff requests for the leases it holds (set by the runtime)."""
        self._coordination_stuck = False
        """Another process held the coordination lock past COORDINATION_WAIT_S (until a taker gets it)."""
        self._lease_line = trio.Lock()
        """This process's lease takers, one at a time and first come first served: the folder's
        coordination lock is then contended only by other processes (10,000 threads starting at
        once used to race for it, and the unluckiest waited past COORDINATION_WAIT_S)."""

    def _make_home(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error("create CODEX_HOME at", self.home, exc, home=self.home) from None

    # --- life cycle -----------------------------------------------------
    async def open(self) -> None:
        """Open (and on first use create) CODEX_HOME and the index, and reconcile it with the files
        (a full stat pass); ThreadStoreError says why not."""
        await self.index.run(lambda db: None)
        await self.reconcile(full=True)

    def close(self) -> None:
        """Close the index connection now (a blocking call: inside trio, prefer `aclose`)."""
        self.index.close()

    async def aclose(self) -> None:
        await self.index.aclose()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background full stat pass: after a list asks for one, at most every
        `FULL_STAT_INTERVAL_S`. Runs until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(FULL_STAT_INTERVAL_S)
            await self._sweep_wanted.wait()
            self._sweep_wanted = trio.Event()
            try:
                await self.reconcile(full=True)
            except ThreadStoreError as exc:
                log.warning("the background rollout scan failed", error=str(exc))
            except Exception:  # a file no rule foresaw: the next pass tries again; the runtime goes on
                log.exception("the background rollout scan failed")

    async def _index(self, job: Callable[..., T], *, write: bool = False, deadline_s: float = INDEX_BUSY_DEADLINE_S) -> T:
        return await self.index.run(job, write=write, deadline_s=deadline_s)

    # --- reconcile ------------------------------------------------------
    async def reconcile(self, *, full: bool = False) -> None:
        """Bring the index up to date with the files. With `full`, every known file is stat'ed
        first (outside the one-at-a-time section, so lists do not wait for it)."""
        suspects = None
        if full and self._known is not None:
            suspects = await trio.to_thread.run_sync(sweep, self._known.snapshot())
        await self._exclusive(partial(self._reconcile, suspects, full=full), join=not full)

    async def rebuild_index(self) -> int:
        """Re-create the index from the rollout files (in one transaction); returns how many threads it holds."""
        await self._exclusive(partial(self._reconcile, None, full=True, reset=True), join=False)
        return await self._index(lambda db: db.execute("SELECT COUNT(*) FROM threads").fetchone()[0])

    async def _exclusive(self, work: Callable[[], Awaitable[None]], *, join: bool) -> None:
        """Run `work` as the one reconcile in flight; with `join`, a call that finds one in flight
        waits for it and is done."""
        while (running := self._reconciling) is not None:
            await running.wait()
            if join:
                return
        self._reconciling = done = trio.Event()
        try:
            await work()
        finally:
            self._reconciling = None
            done.set()

    async def _reconcile(self, suspects: frozenset[str] | None, *, full: bool, reset: bool = False) -> None:
        if reset:
            self._known = _Known({}, {}, {}, None)
        elif self._known is None:
            self._known = _Known(*await self._index(ix.load_known))
            suspects = None
        known = self._known
        if full and suspects is None:
            suspects = await trio.to_thread.run_sync(sweep, known.snapshot())
        before = known.snapshot()
        result = await trio.to_thread.run_sync(partial(scan, str(self.home), before, suspects=suspects or ()))
        names = result.names if result.names is not None else await self._loaded_names()
        if reset or not result.empty or (result.dirs, result.subdirs, result.names_stamp) != (
            before.dirs, before.subdirs, before.names_stamp
        ):
            job = partial(ix.apply_scan, result=result, names=dict(names), reset=reset)
            try:
                await self._index(job, write=True, deadline_s=INDEX_BUSY_DEADLINE_S if full else RECONCILE_BUSY_DEADLINE_S)
            except IndexBusyError:
                if full:
                    raise
                log.info("the thread index is busy; listing without reconciling", index=str(self.index_path))
                return
        known.apply(result)
        if result.names is not None:
            self._names = result.names

    # --- RolloutIndex ---------------------------------------------------
    async def record(self, rollout: ThreadRollout, *, updated_at: str) -> None:
        """Insert or refresh a live rollout's entry (it exists on disk and was updated at `updated_at`)."""
        meta = rollout.meta
        preview = self._previews.get(meta.id)
        if not preview:
            preview = self._previews[meta.id] = rollout.source.preview
        name = await self.name(meta.id)
        kind, interactive = classify_source(meta.source)
        facts = Facts(
            thread_id=meta.id, created_at=normalize_timestamp(meta.timestamp) or updated_at, updated_at=updated_at,
            cwd=meta.cwd, preview=preview, model_provider=meta.model_provider or "", source_kind=kind,
            interactive=interactive, forked_from_id=meta.forked_from_id, head_done=bool(preview),
        )
        names = {meta.id: name} if name is not None else {}
        await self._record(str(rollout.path), facts, names, archived=False)

    async def _record(self, path: str, facts: Facts, names: Mapping[str, str], *, archived: bool) -> None:
        def job(db: sqlite3.Connection) -> KnownFile:
            try:
                st = os.stat(path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, 0  # the next reconcile looks at the file again
            return ix.record_file(db, path, archived=archived, size=size, mtime_ns=mtime, facts=facts, names=names)

        known = await self._index(job, write=True)
        if self._known is not None:
            self._known.note(path, known)

    async def index_file(self, path: Path, *, archived: bool = False) -> None:
        """(Re)index one rollout from what its head and tail say: for writers other than a
        `ThreadRollout` (the `ThreadStore` adapter). ThreadStoreError if it cannot be read."""
        names = dict(await self._loaded_names())
        try:
            facts = await trio.to_thread.run_sync(_read_facts, str(path))
        except OSError as exc:
            raise store_error("read rollout", path, exc, home=self.home) from None
        except NotRollout as exc:
            raise ThreadStoreError(f"{path} is not a rollout: {exc}") from None
        await self._record(str(path), facts, names, archived=archived)

    # --- Leases ---------------------------------------------------------
    async def acquire_lease(self, thread_id: str) -> WriterLease:
        """Take `thread_id`'s writer lease (WriterLeaseHeldError names the holder if taken)."""
        async with self._lease_line:
            deadline = trio.current_time() + COORDINATION_WAIT_S
            while True:
                try:
                    lease = await trio.to_thread.run_sync(
                        lambda: acquire_lease(self.home, thread_id, handoff=self.handoff_address)
                    )
                    self._coordination_stuck = False
                    return lease
                except CoordinationBusy:
                    # once one taker has waited it out, those queued behind it fail at once
                    if self._coordination_stuck or trio.current_time() > deadline:
                        self._coordination_stuck = True
                        raise coordination_stuck(self.home) from None
                await trio.sleep(COORDINATION_POLL_S)

    # --- lookups --------------------------------------------------------
    async def entry(self, thread_id: str) -> ThreadEntry | None:
        tid = parse_thread_id(thread_id)
        sql = f"SELECT {ENTRY_COLUMNS} FROM threads WHERE id = ?"
        row = await self._index(lambda db: db.execute(sql, (tid,)).fetchone())
        return entry_of(row) if row else None

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

    async def list_threads(self, query: ThreadQuery | None = None) -> ThreadPage:
        """One page of `query` (by default: interactive, not archived, newest created first),
        after reconciling the index with the files unless the query says not to."""
        query = query or ThreadQuery()
        if query.reconciles:
            await self.reconcile()
            self._sweep_wanted.set()
        sql, args = query.select()
        rows = await self._index(lambda db: db.execute(sql, args).fetchall())
        return query.page(rows)

    # --- archive --------------------------------------------------------
    async def archive(self, thread_id: str) -> Path:
        """Move the rollout to `archived_sessions/` (same name); returns the new path."""
        tid = parse_thread_id(thread_id)
        live = await self.find_path(tid)
        if live is None:
            raise ThreadStoreError(f"no rollout found for thread id {tid}")
        target = archived_path(self.home, live)
        await trio.to_thread.run_sync(self._move, live, target, False)
        await self._index_moved(live, target, archived=True)
        return target

    async def unarchive(self, thread_id: str) -> Path:
        """Move an archived rollout back under `sessions/YYYY/MM/DD/` and mark it updated."""
        tid = parse_thread_id(thread_id)
        archived = await self.find_path(tid, archived=True)
        if archived is None:
            raise ThreadStoreError(f"no archived rollout found for thread id {tid}")
        target = unarchived_path(self.home, archived)
        await trio.to_thread.run_sync(self._move, archived, target, True)
        await self._index_moved(archived, target, archived=False)
        return target

    def _move(self, source: Path, target: Path, touch: bool) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            if touch:
                os.utime(target)
        except OSError as exc:
            raise store_error(f"move rollout {source} to", target, exc, home=self.home) from None

    async def _index_moved(self, source: Path, target: Path, *, archived: bool) -> None:
        """Point the index at a moved file, updated now; only a file the index lacks is read."""
        src, dst, now = str(source), str(target), timestamp()
        names = dict(await self._loaded_names())

        def job(db: sqlite3.Connection) -> KnownFile | None:
            try:
                st = os.stat(dst)
            except OSError:
                return None
            return ix.move_file(db, src, dst, archived=archived, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                updated_at=now, names=names)

        known = await self._index(job, write=True)
        if self._known is not None:
            self._known.note(src, None)
            if known is not None:
                self._known.note(dst, known)
        if known is None:
            try:
                facts = await trio.to_thread.run_sync(_read_facts, dst)
            except (OSError, NotRollout):
                return
            await self._record(dst, replace(facts, updated_at=now), names, archived=archived)

    # --- names ----------------------------------------------------------
    async def _loaded_names(self) -> dict[str, str]:
        if self._names is None:
            names, _ = await trio.to_thread.run_sync(self._read_names)
            if self._names is None:
                self._names = names
        return self._names

    def _read_names(self) -> tuple[dict[str, str], tuple[int, int] | None]:
        try:
            return read_names(str(self.home))
        except OSError as exc:
            raise store_error("read thread names from", self.home / NAMES_FILE, exc, home=self.home) from None

    async def name(self, thread_id: str) -> str | None:
        return (await self._loaded_names()).get(thread_id)

    async def set_name(self, thread_id: str, name: str) -> None:
        """Name a thread (materialized or not): appended to `session_index.jsonl`, then indexed."""
        tid = parse_thread_id(thread_id)
        line = msgspec.json.encode(NameEntry(id=tid, thread_name=name, updated_at=timestamp())) + b"\n"
        async with self._names_lock:
            names = await self._loaded_names()
            await trio.to_thread.run_sync(self._append_name, line)
            names[tid] = name
        await self._index(partial(ix.set_name, thread_id=tid, name=name), write=True)

    def _append_name(self, line: bytes) -> None:
        path = self.home / NAMES_FILE
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as out:
                out.write(line)
        except OSError as exc:
            raise store_error("write thread names to", path, exc, home=self.home) from None


def _read_facts(path: str) -> Facts:
    st = os.stat(path)
    return read_facts(path, st.st_size, st.st_mtime_ns)

