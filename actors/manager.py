"""The thread manager: starts, tracks and shuts down thread actors; `open_runtime()` is its door."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from protocol.config import Config
from protocol.events import Event
from protocol.ids import new_id, parse_thread_id
from protocol.ops import ApprovalPolicy, SandboxMode, Submission

from .config import ConfigError, load_config
from .services import Services
from .subscriptions import Broadcaster, Subscription
from .thread import (
    DEFAULT_INSTRUCTIONS,
    SUBMISSION_CAPACITY,
    ThreadActor,
    ThreadHandle,
    ThreadSettings,
)
from .tools import ToolRegistry

log = structlog.get_logger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


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

    def __init__(self, services: Services, nursery: trio.Nursery) -> None:
        self.services = services
        self.config = services.config
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
    ) -> ThreadHandle:
        """Start a new thread actor; returns once it has emitted `session_configured`."""
        settings = self._settings(
            model=model,
            model_provider=model_provider,
            cwd=cwd,
            approval_policy=approval_policy,
            sandbox_mode=sandbox_mode,
            instructions=instructions,
        )
        tid = parse_thread_id(thread_id) if thread_id else new_id()
        return await self._spawn(tid, settings)

    async def _spawn(self, thread_id: str, settings: ThreadSettings) -> ThreadHandle:
        send, receive = trio.open_memory_channel[Submission](SUBMISSION_CAPACITY)
        events: Broadcaster[Event] = Broadcaster()
        actor = ThreadActor(
            thread_id=thread_id, settings=settings, services=self.services, receive=receive, events=events
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

    def list_thread_ids(self) -> list[str]:
        return sorted(self._threads)

    def remove_thread(self, thread_id: str) -> ThreadHandle | None:
        """Stop tracking a thread (it keeps running until shut down). Returns it, if it was tracked."""
        return self._threads.pop(thread_id, None)

    def subscribe_thread_created(self) -> Subscription[str]:
        """Ids of threads started from now on."""
        return self._created.subscribe()

    async def resume_thread(self, *args: object, **kwargs: object) -> ThreadHandle:
        raise NotImplementedError("resume_thread needs the rollout store (persistence), not built yet")

    async def fork_thread(self, *args: object, **kwargs: object) -> ThreadHandle:
        raise NotImplementedError("fork_thread needs the rollout store (persistence), not built yet")

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
    try:
        async with trio.open_nursery() as nursery:
            manager = ThreadManager(services, nursery)
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
