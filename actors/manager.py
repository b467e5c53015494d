"""The thread manager: starts, tracks and shuts down thread actors; `open_runtime()` is its door."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from persistence.history import ForkSnapshot, fork_items, last_turn_context, rebuild_history
from persistence.paths import is_within, now_utc, rollout_path, timestamp
from persistence.reader import RolloutRead, read_rollout
from persistence.store import LocalThreadStore, ThreadPage, ThreadStoreError
from persistence.writer import ThreadRollout
from protocol.config import Config
from protocol.events import Event
from protocol.ids import new_id, parse_thread_id
from protocol.items import ResponseItem
from protocol.ops import ApprovalPolicy, SandboxMode, Submission
from protocol.rollout import BaseInstructions, SessionMeta, TurnContextItem

from .config import ConfigError, codex_home, load_config
from .handle import ThreadHandle
from .services import Services
from .subscriptions import Broadcaster, Subscription
from .thread import (
    DEFAULT_INSTRUCTIONS,
    SUBMISSION_CAPACITY,
    ThreadActor,
    ThreadSettings,
)
from .tools import ToolRegistry

log = structlog.get_logger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
SPINDLE_VERSION = "0.1.0"


class ThreadNotFoundError(KeyError):
    def __str__(self) -> str:
        return f"thread not found: {self.args[0]}"


@dataclass
class ThreadShutdownReport:
    """Outcome of a bounded shutdown, each list sorted by thread id."""

    completed: list[str] = field(default_factory=list)
    submit_failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)


class ThreadManager:
    """Supervises every thread of one runtime. Obtain one from `open_runtime()`."""

    def __init__(self, services: Services, nursery: trio.Nursery, store: LocalThreadStore) -> None:
        self.services = services
        self.config = services.config
        self.store = store
        self.home = store.home
        self._nursery = nursery
        self._threads: dict[str, ThreadHandle] = {}
        self._created: Broadcaster[str] = Broadcaster()

    def _settings(
        self,
        *,
        model: str | None,
        model_provider: str | None,
        cwd: str | None,
        approval_policy: ApprovalPolicy | None,
        sandbox_mode: SandboxMode | None,
        instructions: str | None,
    ) -> ThreadSettings:
        config = self.config
        provider_id = model_provider or config.model_provider
        try:
            config.provider(provider_id)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        cwd = cwd or config.cwd or os.getcwd()
        if not os.path.isdir(cwd):
            raise ConfigError(f"cwd {cwd!r} is not a directory")
        return ThreadSettings(
            model=model or config.model,
            provider_id=provider_id,
            cwd=str(Path(cwd).resolve()),
            approval_policy=approval_policy or config.approval_policy,
            sandbox_policy=sandbox_mode or config.sandbox_mode,
            model_context_window=config.model_context_window,
            instructions=instructions or config.instructions or DEFAULT_INSTRUCTIONS,
        )

    async def start_thread(
        self,
        *,
        model: str | None = None,
        model_provider: str | None = None,
        cwd: str | None = None,
        approval_policy: ApprovalPolicy | None = None,
        sandbox_mode: SandboxMode | None = None,
        instructions: str | None = None,
        thread_id: str | None = None,
        ephemeral: bool = False,
    ) -> ThreadHandle:
        """Start a new thread actor; returns once it has emitted `session_configured`.

        Nothing is written until the first user turn; `ephemeral` threads never touch disk.
        """
        settings = self._settings(
            model=model,
            model_provider=model_provider,
            cwd=cwd,
            approval_policy=approval_policy,
            sandbox_mode=sandbox_mode,
            instructions=instructions,
        )
        tid = parse_thread_id(thread_id) if thread_id else new_id()
        return await self._spawn(tid, settings, self._new_rollout(tid, settings, ephemeral=ephemeral))

    def _new_rollout(self, thread_id: str, settings: ThreadSettings, *, ephemeral: bool = False, forked_from: str | None = None) -> ThreadRollout:
        created = now_utc()
        meta = SessionMeta(
            id=thread_id,
            session_id=thread_id,
            timestamp=timestamp(created),
            cwd=settings.cwd,
            cli_version=SPINDLE_VERSION,
            model_provider=settings.provider_id,
            base_instructions=BaseInstructions(text=settings.instructions),
            forked_from_id=forked_from,
        )
        return ThreadRollout(path=rollout_path(self.home, thread_id, created), meta=meta, ephemeral=ephemeral, index=self.store)

    async def _spawn(
        self,
        thread_id: str,
        settings: ThreadSettings,
        rollout: ThreadRollout,
        history: list[ResponseItem] | None = None,
    ) -> ThreadHandle:
        send, receive = trio.open_memory_channel[Submission](SUBMISSION_CAPACITY)
        events: Broadcaster[Event] = Broadcaster()
        actor = ThreadActor(
            thread_id=thread_id,
            settings=settings,
            services=self.services,
            receive=receive,
            events=events,
            rollout=rollout,
            history=history,
        )
        handle = ThreadHandle(actor, send, events)
        await self._nursery.start(actor.run)
        self._threads[thread_id] = handle
        self._created.publish(thread_id)
        return handle

    def get_thread(self, thread_id: str) -> ThreadHandle:
        try:
            return self._threads[thread_id]
        except KeyError:
            raise ThreadNotFoundError(thread_id) from None

    def running(self, thread_id: str) -> ThreadHandle | None:
        """The tracked thread `thread_id` if its actor is still running, else None."""
        handle = self._threads.get(thread_id)
        return handle if handle is not None and not handle.is_closed else None

    def list_thread_ids(self) -> list[str]:
        return sorted(self._threads)

    def remove_thread(self, thread_id: str) -> ThreadHandle | None:
        """Stop tracking a thread (it keeps running until shut down). Returns it, if it was tracked."""
        return self._threads.pop(thread_id, None)

    def subscribe_thread_created(self) -> Subscription[str]:
        """Ids of threads started from now on."""
        return self._created.subscribe()

    def _locate(self, thread_id: str | None, path: str | Path | None) -> Path:
        if path is not None:
            located = Path(path)
            if not is_within(self.home, located):
                raise ThreadStoreError(f"rollout path {located} is outside {self.home}")
            return located
        if thread_id is None:
            raise ValueError("give a thread id or a rollout path")
        found = self.store.find_path(thread_id)
        if found is None:
            raise ThreadStoreError(f"no rollout found for thread id {parse_thread_id(thread_id)}")
        return found

    def _resumed_settings(self, read: RolloutRead, overrides: dict[str, Any]) -> ThreadSettings:
        context = last_turn_context(read.source.items())
        meta = read.meta
        instructions = meta.base_instructions.text if meta.base_instructions else None
        return self._settings(
            model=overrides.get("model") or (context.model if context else None),
            model_provider=overrides.get("model_provider") or meta.model_provider,
            cwd=overrides.get("cwd") or (context.cwd if context else meta.cwd),
            approval_policy=overrides.get("approval_policy") or _policy(context),
            sandbox_mode=overrides.get("sandbox_mode") or _sandbox(context),
            instructions=overrides.get("instructions") or instructions,
        )

    async def resume_thread(
        self, thread_id: str | None = None, *, path: str | Path | None = None, **overrides: Any
    ) -> ThreadHandle:
        """Resume a thread from its rollout (read once); a running thread is returned as it is."""
        if thread_id is not None:
            thread_id = parse_thread_id(thread_id)
            running = self.running(thread_id)
            if running is not None:
                if path is not None and not _same_path(path, running.rollout_path):
                    raise ThreadStoreError(
                        f"thread {thread_id} is already running with rollout {running.rollout_path}, not {path}"
                    )
                return running
        located = self._locate(thread_id, path)
        read = await trio.to_thread.run_sync(read_rollout, located)
        if read.skipped or read.torn:
            log.warning("rollout had unreadable lines", path=str(located), skipped=read.skipped, torn=read.torn)
        running = self.running(read.meta.id)
        if running is not None:
            return running
        settings = self._resumed_settings(read, overrides)
        rollout = ThreadRollout(
            path=located, meta=read.meta, source=read.source, materialized=True,
            good_size=read.good_size, index=self.store,
        )
        return await self._spawn(read.meta.id, settings, rollout, rebuild_history(read.source.iter_forward_from(0)))

    async def fork_thread(
        self,
        snapshot: ForkSnapshot | int,
        thread_id: str | None = None,
        *,
        path: str | Path | None = None,
        **overrides: Any,
    ) -> ThreadHandle:
        """A new thread (new id, `forked_from_id` recorded) from a snapshot of another's history.

        A running source is flushed and its in-memory source used; otherwise the file is read.
        The fork's rollout is written at once.
        """
        if isinstance(snapshot, int):
            snapshot = ForkSnapshot.truncate_before(snapshot)
        running = self.running(parse_thread_id(thread_id)) if thread_id else None
        if running is not None and running.rollout.persisted:
            await running.rollout.flush()
            items = running.rollout.source.items()
            read_meta = running.rollout.meta
            current = running.settings
            settings = self._settings(
                model=overrides.get("model") or current.model,
                model_provider=overrides.get("model_provider") or current.provider_id,
                cwd=overrides.get("cwd") or current.cwd,
                approval_policy=overrides.get("approval_policy") or current.approval_policy,
                sandbox_mode=overrides.get("sandbox_mode") or current.sandbox_policy,
                instructions=current.instructions,
            )
        else:
            read = await trio.to_thread.run_sync(read_rollout, self._locate(thread_id, path))
            items, read_meta = read.source.items(), read.meta
            settings = self._resumed_settings(read, overrides)
        fork_id = new_id()
        rollout = self._new_rollout(fork_id, settings, forked_from=read_meta.id)
        rollout.record(fork_items(items, snapshot))
        await rollout.materialize(self._nursery)
        await rollout.shutdown()  # the fork's own actor reopens the file for appending
        history = rebuild_history(rollout.source.iter_forward_from(0))
        return await self._spawn(fork_id, settings, rollout, history)

    async def archive_thread(self, thread_id: str) -> Path:
        """Unload the thread (if running) and move its rollout to `archived_sessions/`."""
        tid = parse_thread_id(thread_id)
        if self.store.find_path(tid) is None:
            raise ThreadStoreError(f"no rollout found for thread id {tid}")
        running = self._threads.pop(tid, None)
        if running is not None and not running.is_closed:
            await running.shutdown_and_wait()
        return self.store.archive(tid)

    async def unarchive_thread(self, thread_id: str) -> Path:
        """Move an archived rollout back under `sessions/YYYY/MM/DD/`, marked updated."""
        return self.store.unarchive(thread_id)

    def list_threads(self, *, limit: int = 50, cursor: str | None = None, archived: bool = False) -> ThreadPage:
        return self.store.list_threads(limit=limit, cursor=cursor, archived=archived)

    async def shutdown_all_threads_bounded(self, timeout: float) -> ThreadShutdownReport:  # noqa: ASYNC109 - the seed's API
        """Shut every thread down concurrently within `timeout` seconds.

        Threads that finish are removed; the others stay tracked so callers can retry or inspect.
        """
        report = ThreadShutdownReport()

        async def shut(handle: ThreadHandle) -> None:
            with trio.move_on_after(timeout):
                try:
                    await handle.shutdown_and_wait()
                except Exception:
                    report.submit_failed.append(handle.thread_id)
                    return
                report.completed.append(handle.thread_id)
                return
            report.timed_out.append(handle.thread_id)

        async with trio.open_nursery() as nursery:
            for handle in list(self._threads.values()):
                nursery.start_soon(shut, handle)
        for thread_id in report.completed:
            self._threads.pop(thread_id, None)
        report.completed.sort()
        report.submit_failed.sort()
        report.timed_out.sort()
        return report


@asynccontextmanager
async def open_runtime(
    config: Config | None = None,
    *,
    tools: ToolRegistry | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
) -> AsyncIterator[ThreadManager]:
    """Run a Spindle runtime; yields its ThreadManager. On exit every thread is shut down
    (bounded by `shutdown_timeout`), then whatever is left is cancelled."""
    config = config if config is not None else load_config()
    services = Services(config, tools)
    store = LocalThreadStore(Path(config.codex_home) if config.codex_home else codex_home())
    try:
        async with trio.open_nursery() as nursery:
            manager = ThreadManager(services, nursery, store)
            try:
                yield manager
            finally:
                with trio.CancelScope(shield=True):
                    report = await manager.shutdown_all_threads_bounded(shutdown_timeout)
                if report.timed_out or report.submit_failed:
                    log.warning("threads did not shut down cleanly", timed_out=report.timed_out, submit_failed=report.submit_failed)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await services.aclose()
        store.close()


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _policy(context: TurnContextItem | None) -> ApprovalPolicy | None:
    value = context.approval_policy if context else None
    return value if value in ("untrusted", "on-failure", "on-request", "never") else None  # type: ignore[return-value]


def _sandbox(context: TurnContextItem | None) -> SandboxMode | None:
    value = context.sandbox_policy.type if context and context.sandbox_policy else None
    return value if value in ("read-only", "workspace-write", "danger-full-access") else None  # type: ignore[return-value]
