"""Operations on stored threads: resume, fork, archive, unarchive and list, over the thread store.

A running thread is used as it is (resume returns it, with the permission selection, runtime
roots and cwd it asks for applied by the thread's actor; fork flushes it and copies its file);
otherwise its rollout is scanned once, streaming, off the event loop: the model's history since
the last compaction, the turn index and the facts the thread needs are all that is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from spindle.persistence.fork import ActiveTurn, plan_fork, write_fork
from spindle.persistence.history import ForkSnapshot
from spindle.persistence.lease import WriterLease, WriterLeaseHeldError
from spindle.persistence.paths import is_within, thread_id_of
from spindle.persistence.query import ThreadEntry, ThreadQuery
from spindle.persistence.reader import RolloutRead, read_rollout, read_session_meta
from spindle.persistence.rollout import ThreadRollout
from spindle.persistence.store import LocalThreadStore, ThreadPage, ThreadStoreError
from spindle.persistence.thread_store import ThreadNotFoundError
from spindle.protocol.config import Config
from spindle.protocol.ids import new_id, parse_thread_id
from spindle.protocol.ops import OverrideTurnContextOp
from spindle.protocol.settings import SettingsUpdate, ThreadSettings

from .errors import ConfigError
from .handle import ThreadHandle
from .handoff import request_handoff
from .registry import ThreadRegistry
from .settings import apply_update, initial_settings, recorded_settings, start_cwd

log = structlog.get_logger(__name__)


class StoredThreads:
    """The thread store's side of a runtime; threads it brings back run in `registry`."""

    def __init__(self, registry: ThreadRegistry, store: LocalThreadStore) -> None:
        self.registry = registry
        self.store = store
        self.home = store.home
        self._claims: dict[str, trio.Lock] = {}

    @property
    def config(self) -> Config:
        return self.registry.resources.config

    async def _locate(self, thread_id: str | None, path: str | Path | None) -> Path:
        if path is not None:
            located = Path(path)
            if not await trio.to_thread.run_sync(is_within, self.home, located):
                raise ThreadStoreError(f"rollout path {located} is outside {self.home}")
            return located
        if thread_id is None:
            raise ValueError("give a thread id or a rollout path")
        found = await self.store.find_path(thread_id)
        if found is None and self.registry.cluster is not None:  # another node's: materialized when loaded
            found = await self.registry.cluster.local_path(self.home, parse_thread_id(thread_id))
        if found is None:
            raise ThreadStoreError(f"no rollout found for thread id {parse_thread_id(thread_id)}")
        return found

    async def _resumed_settings(
        self, read: RolloutRead, update: SettingsUpdate | None, session: Mapping[str, Any]
    ) -> tuple[ThreadSettings, Config]:
        """A stored thread's settings and effective config: the disk layers for its recorded cwd
        (or the one asked for) and `session`, then what its rollout recorded, then `update`
        applied on top as a turn's would be (a cwd-only update moves the implicit cwd root and
        keeps the other runtime roots)."""
        context = read.source.facts.last_context
        recorded_cwd = (context.cwd if context else None) or read.meta.cwd or None
        if recorded_cwd is not None and not await trio.to_thread.run_sync(os.path.isdir, recorded_cwd):
            log.warning("the rollout's cwd is gone; the thread resumes in the default cwd",
                        thread_id=read.meta.id, cwd=recorded_cwd)
            recorded_cwd = None
        cwd = (update.cwd if update else None) or recorded_cwd
        effective = await self.registry.resources.thread_config(start_cwd(self.config, SettingsUpdate(cwd=cwd)), session)
        recorded = msgspec.structs.replace(recorded_settings(effective, read.meta, context), cwd=recorded_cwd)
        base = initial_settings(effective, recorded)  # what it held; `update` changes it as a turn would
        return apply_update(effective, base, update or SettingsUpdate()), effective

    async def resume_thread(
        self,
        thread_id: str | None = None,
        settings: SettingsUpdate | None = None,
        *,
        path: str | Path | None = None,
        handoff: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> ThreadHandle:
        """Resume a thread from its rollout (read once); a running thread is returned as it is,
        but for its permission selection, runtime roots and cwd: those of `settings` are applied
        to it (ConfigError names one it refuses, and nothing changes).

        Its settings are those its rollout last recorded, changed by `settings`. Its own config
        layer is the one its rollout recorded, with `config` (dotted keys) on top for this load. The thread's
        writer lease is taken first: WriterLeaseHeldError names the process that writes it, unless
        `handoff` asks that process (a Spindle runtime on this home) to let go, and it does.
        """
        if thread_id is not None:
            thread_id = parse_thread_id(thread_id)
            await self.registry.wait_released(thread_id)
            running = self.registry.running(thread_id)
            if running is not None:
                if path is not None and not _same_path(path, running.rollout_path):
                    raise ThreadStoreError(
                        f"thread {thread_id} is already running with rollout {running.rollout_path}, not {path}"
                    )
                return await _updated_running(running, settings)
        located = await self._locate(thread_id, path)
        tid = thread_id or thread_id_of(located)
        if tid is None:  # a rollout under a name of its own: its session_meta says whose it is
            tid = (await trio.to_thread.run_sync(read_session_meta, located)).id
        async with self._claim(tid):  # one resume or archive of a thread at a time, here
            return await self._resume_claimed(tid, located, settings, handoff=handoff, config=config)

    async def _resume_claimed(
        self, tid: str, located: Path, settings: SettingsUpdate | None, *, handoff: bool,
        config: Mapping[str, Any] | None,
    ) -> ThreadHandle:
        await self.registry.wait_released(tid)
        running = self.registry.running(tid)
        if running is not None:
            return await _updated_running(running, settings)
        lease = await self._take_lease(tid, handoff=handoff)  # before reading: the file is final then
        replica = self.registry.replica(tid)
        try:
            if replica is not None and self.registry.cluster is not None:  # the store's history, under its lease
                await replica.acquire()
                await self.registry.cluster.materialize(tid, located)
            read = await trio.to_thread.run_sync(read_rollout, located)
            if read.meta.id != tid:
                raise ThreadStoreError(f"rollout {located} belongs to thread {read.meta.id}, not {tid}")
            if read.skipped or read.torn:
                log.warning("rollout had unreadable lines", path=str(located), skipped=read.skipped, torn=read.torn)
            rollout = ThreadRollout(
                path=located, meta=read.meta, source=read.source, materialized=True,
                good_size=read.good_size, next_ordinal=read.next_ordinal,
                index=self.store, leases=self.store, lease=lease, replica=replica,
            )
            history = read.history
            session = {**recorded_session(read), **(config or {})}
            resolved, effective = await self._resumed_settings(read, settings, session)
            handle = await self.registry.spawn(tid, resolved, rollout, history, session_config=session, config=effective)
            handle.load_warning = load_warning(read)
            return handle
        except BaseException:  # the actor did not start (it lets go of the lease itself once it has)
            with trio.CancelScope(shield=True):
                if replica is not None:
                    await replica.release()
                await trio.to_thread.run_sync(lease.release)
            raise

    async def _take_lease(self, thread_id: str, *, handoff: bool) -> WriterLease:
        try:
            return await self.store.acquire_lease(thread_id)
        except WriterLeaseHeldError as held:
            if not handoff or held.holder.handoff == self.store.handoff_address:
                raise  # asked for no handoff, or the holder is this runtime (a writer still closing)
            await request_handoff(held.holder, thread_id)
        return await self.store.acquire_lease(thread_id)

    async def fork_thread(
        self,
        snapshot: ForkSnapshot | int,
        thread_id: str | None = None,
        settings: SettingsUpdate | None = None,
        *,
        path: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> ThreadHandle:
        """A new thread (new id, `forked_from_id` recorded) from a snapshot of another's history.

        A running source is flushed, then its file is copied as it stands; a stored one's file is
        scanned first (streaming) for its turns. The fork's file is written at once: the source's
        lines up to the snapshot's cut, then what the snapshot adds (`persistence.fork`). The
        fork's own config layer is the source's with `config` on top.
        """
        if isinstance(snapshot, int):
            snapshot = ForkSnapshot.truncate_before(snapshot)
        if thread_id is not None:
            await self.registry.wait_released(parse_thread_id(thread_id))
        running = self.registry.running(parse_thread_id(thread_id)) if thread_id else None
        if running is not None and running.rollout.persisted:
            await running.rollout.flush()
            source, source_meta, next_ordinal = running.rollout.source, running.rollout.meta, running.rollout.next_ordinal
            active_id = running.active_turn_id
            session = {**running.session_config, **(config or {})}
            update = settings or SettingsUpdate()
            effective = await self.registry.resources.thread_config(update.cwd or running.settings.cwd, session)
            resolved = apply_update(effective, running.settings, update)
        else:
            located = await self._locate(thread_id, path)
            tid = parse_thread_id(thread_id) if thread_id is not None else None
            if self.registry.cluster is not None and tid is not None and not self.registry.holds(tid):
                await self.registry.cluster.materialize(tid, located)  # the store's history as it stands
            read = await trio.to_thread.run_sync(functools.partial(read_rollout, located, history=False))
            source, source_meta, next_ordinal = read.source, read.meta, read.next_ordinal
            active_id = read.source.facts.unfinished.turn_id if read.source.facts.unfinished else None
            session = {**recorded_session(read), **(config or {})}
            resolved, effective = await self._resumed_settings(read, settings, session)
        start = source.index.last_start()
        active = ActiveTurn(active_id, start) if active_id is not None and start is not None else None
        assert source.path is not None
        plan = await trio.to_thread.run_sync(plan_fork, source.path, source.written, snapshot, active, next_ordinal)
        tools = source_meta.dynamic_tools if isinstance(source_meta.dynamic_tools, list) else ()
        fresh = self.registry.new_rollout(new_id(), resolved, forked_from=source_meta.id, session_config=session,
                                          dynamic_tools=tools)
        lease = await self.store.acquire_lease(fresh.meta.id)
        try:
            await trio.to_thread.run_sync(write_fork, plan, fresh.path, fresh.meta)
            read = await trio.to_thread.run_sync(read_rollout, fresh.path)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lease.release)
            raise
        rollout = ThreadRollout(
            path=fresh.path, meta=fresh.meta, source=read.source, materialized=True, good_size=read.good_size,
            next_ordinal=read.next_ordinal, index=self.store, leases=self.store, lease=lease,
            replica=self.registry.replica(fresh.meta.id),
        )
        handle = await self.registry.spawn_holding(fresh.meta.id, resolved, rollout, read.history,
                                                   session_config=session, config=effective)
        handle.load_warning = load_warning(read)  # a compaction the source lost, the fork lost too
        rollout.touch()  # the index lists the fork at once
        return handle

    async def archive_thread(self, thread_id: str) -> Path:
        """Unload the thread (if running) and move its rollout to `archived_sessions/`, holding its
        lease meanwhile (WriterLeaseHeldError if another process writes it)."""
        tid = parse_thread_id(thread_id)
        async with self._claim(tid):
            return await self._archive_claimed(tid)

    async def _archive_claimed(self, tid: str) -> Path:
        if self.registry.cluster is not None:
            return await self._archive_shared(tid, archived=True)
        if await self.store.find_path(tid) is None:
            raise ThreadStoreError(f"no rollout found for thread id {tid}")
        await self.registry.wait_released(tid)
        running = self.registry.running(tid)
        if running is not None:
            await running.shutdown_and_wait()
            self.registry.forget(running)
        lease = await self.store.acquire_lease(tid)  # no other process may be appending meanwhile
        try:
            return await self.store.archive(tid)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lease.release)

    @asynccontextmanager
    async def _claim(self, thread_id: str) -> AsyncIterator[None]:
        """Hold `thread_id`'s lock in this runtime: resumes and archives of one thread go one at a
        time, so none sees the other's half-done work (or its lease) as another process's."""
        lock = self._claims.setdefault(thread_id, trio.Lock())
        async with lock:
            try:
                yield
            finally:
                if lock.statistics().tasks_waiting == 0 and self._claims.get(thread_id) is lock:
                    del self._claims[thread_id]

    async def unarchive_thread(self, thread_id: str) -> Path:
        """Move an archived rollout back under `sessions/YYYY/MM/DD/`, marked updated."""
        if self.registry.cluster is not None:
            tid = parse_thread_id(thread_id)
            async with self._claim(tid):
                return await self._archive_shared(tid, archived=False)
        return await self.store.unarchive(thread_id)

    async def _archive_shared(self, tid: str, *, archived: bool) -> Path:
        """On a node: (un)archive the thread in the shared store, unloading it here first and
        holding its lease meanwhile (LeaseHeldError names the node running it). The node's path
        for its copy."""
        cluster = self.registry.cluster
        assert cluster is not None
        await self.registry.wait_released(tid)
        running = self.registry.running(tid)
        if running is not None:
            await running.shutdown_and_wait()
            self.registry.forget(running)
        replica = cluster.replica(tid, lambda reason: None)
        await replica.acquire()
        try:
            await (cluster.store.archive(tid) if archived else cluster.store.unarchive(tid))
        finally:
            with trio.CancelScope(shield=True):
                await replica.release()
        path = await cluster.local_path(self.home, tid)
        assert path is not None
        return path

    async def entry(self, thread_id: str) -> ThreadEntry | None:
        """A stored thread's entry, its `path` a readable copy of its rollout; None if unknown. On
        a node, the shared store's, its history materialised in this node's home first (a
        snapshot: another node may be running the thread)."""
        cluster = self.registry.cluster
        if cluster is None:
            return await self.store.entry(thread_id)
        tid = parse_thread_id(thread_id)
        try:
            meta = await cluster.store.metadata(tid)
        except ThreadNotFoundError:
            return None
        path = await cluster.local_path(self.home, tid)
        assert path is not None
        if not self.registry.holds(tid):  # never under a writer of this node, running or closing
            await cluster.materialize(tid, path)
        return dataclasses.replace(meta.entry(), path=str(path))

    async def path(self, thread_id: str) -> Path | None:
        """A readable copy of a stored thread's rollout (see `entry`); None if unknown."""
        if self.registry.cluster is None:
            return await self.store.find_path(thread_id)
        entry = await self.entry(thread_id)
        return Path(entry.path) if entry is not None else None

    async def list_threads(self, query: ThreadQuery) -> ThreadPage:
        """One page of stored threads: the shared store's, on a node of several; else this home's
        (the store reconciles its index with the files first)."""
        if self.registry.cluster is not None:
            return await self.registry.cluster.store.list_threads(query)
        return await self.store.list_threads(query)


async def _updated_running(running: ThreadHandle, settings: SettingsUpdate | None) -> ThreadHandle:
    """`running`, resumed with `settings`: the permission selection (a profile or a legacy
    sandbox mode), runtime roots and cwd it asks for are applied by the thread's actor, for its
    later turns, as `override_turn_context`; ConfigError names what the thread refused. The
    other settings (model, instructions, ...) of a loaded thread stay as they are."""
    if settings is None:
        return running
    update = SettingsUpdate(cwd=settings.cwd, sandbox_mode=settings.sandbox_mode, permissions=settings.permissions,
                            runtime_workspace_roots=settings.runtime_workspace_roots)
    if update.changes():
        outcome = await running.submit_and_wait(OverrideTurnContextOp(settings=update))
        if outcome.error is not None:
            raise ConfigError(outcome.error.message)
    return running


def load_warning(read: RolloutRead) -> str | None:
    """What a client is warned of when a thread is loaded from `read`: a compaction it lost."""
    if not read.lost_compaction:
        return None
    message = (f"A compaction in rollout {read.path} could not be read (its line is torn or corrupt): "
               "the thread's history is rebuilt without it, from the full history before that compaction.")
    log.warning("rollout lost a compaction", path=str(read.path))
    return message


def recorded_session(read: RolloutRead) -> dict[str, Any]:
    """The thread's own config layer its rollout recorded (Spindle's `session_meta.session_config`)."""
    recorded = read.meta.session_config
    return dict(recorded) if isinstance(recorded, dict) else {}


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)
