"""The thread registry: it starts thread actors in the runtime's nursery, tracks them by id, and
shuts them all down within a deadline, reporting how each one ended."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from spindle.persistence.paths import now_utc, rollout_path, timestamp
from spindle.persistence.policy import without_secrets
from spindle.persistence.replica import StoreReplica
from spindle.persistence.rollout import Leases, RolloutIndex, ThreadRollout
from spindle.persistence.store import ThreadStoreError
from spindle.protocol.config import Config
from spindle.protocol.events import is_lifecycle
from spindle.protocol.ids import new_id, parse_thread_id
from spindle.protocol.items import DynamicToolSpec, ResponseItem
from spindle.protocol.ops import Submission
from spindle.protocol.rollout import BaseInstructions, SessionMeta
from spindle.protocol.settings import SettingsUpdate, ThreadSettings

from .cluster import Cluster
from .dynamic_tools import checked_specs
from .errors import ThreadNotFoundError
from .fanout import Broadcaster, Subscription
from .handle import ThreadHandle
from .replay import EventLog, SeqCounter
from .resources import RuntimeResources
from .settings import initial_settings, start_cwd
from .thread import SUBMISSION_CAPACITY, ThreadActor
from .version import SPINDLE_VERSION

log = structlog.get_logger(__name__)

DROP_DEADLINE_S = 30.0
"""How long unloading a thread this node lost may take before the registry lets go of it."""
RELEASE_TIMEOUT_S = 15.0
"""How long a resume waits for a closing actor of the same thread to release its rollout."""


@dataclass
class ThreadShutdownReport:
    """Outcome of a bounded shutdown, each list sorted by thread id."""

    completed: list[str] = field(default_factory=list)
    submit_failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)


class ThreadRegistry:
    """Every running thread of one runtime, by id."""

    def __init__(
        self, resources: RuntimeResources, nursery: trio.Nursery, home: Path, index: RolloutIndex, leases: Leases,
        cluster: Cluster | None = None,
    ) -> None:
        self.resources = resources
        self.cluster = cluster
        self.home = home
        self._index = index
        self._leases = leases
        self._nursery = nursery
        self._threads: dict[str, ThreadHandle] = {}
        self._created: Broadcaster[str] = Broadcaster()
        self._seqs = SeqCounter()
        """Numbers every thread's events (`Event.seq`)."""

    async def start_thread(
        self,
        settings: SettingsUpdate | None = None,
        *,
        thread_id: str | None = None,
        ephemeral: bool = False,
        persist_now: bool = False,
        config: Mapping[str, Any] | None = None,
        dynamic_tools: Sequence[DynamicToolSpec] = (),
    ) -> ThreadHandle:
        """Start a new thread actor (the config's settings, changed by `settings`); returns once
        it has emitted `session_configured`. `dynamic_tools` are the client's own tools
        (`dynamic_tools.checked_specs`), recorded in the rollout for resume.

        `config` is the thread's own config layer (dotted keys to values, above `-c`): its
        effective config is the disk layers for its cwd plus this layer, and the settings come
        from that config, then `settings`. The layer is recorded in the rollout for resume.

        Nothing is written until the first user turn, unless `persist_now`: then the rollout
        (its `session_meta`) is written first, so the id can be resumed by another process
        before any turn. `ephemeral` threads never touch disk. `config` is the thread's own
        config layer (dotted keys to values, e.g. `{"mcp_servers.docs": {...}}`).
        """
        if persist_now and ephemeral:
            raise ValueError("persist_now cannot be combined with ephemeral: an ephemeral thread is never written")
        session = dict(config or {})
        effective = await self.resources.thread_config(start_cwd(self.resources.config, settings), session)
        resolved = initial_settings(effective, settings)
        tid = parse_thread_id(thread_id) if thread_id else new_id()
        rollout = self.new_rollout(tid, resolved, ephemeral=ephemeral, session_config=session,
                                   dynamic_tools=checked_specs(dynamic_tools, self.resources.tools.names()))
        if persist_now:
            await self.write_now(rollout)
        return await self.spawn_holding(tid, resolved, rollout, session_config=session, config=effective)

    async def write_now(self, rollout: ThreadRollout) -> None:
        """Create a new thread's rollout with what it has recorded, before its actor runs (which
        then appends to it). The lease stays held for the actor (`spawn_holding`)."""
        try:
            async with trio.open_nursery() as nursery:  # a short-lived writer creates the file
                try:
                    await rollout.materialize(nursery)
                finally:
                    with trio.CancelScope(shield=True):
                        await rollout.shutdown(keep_lease=True)
        except BaseException:
            await rollout.release_lease()
            raise

    async def spawn_holding(
        self,
        thread_id: str,
        settings: ThreadSettings,
        rollout: ThreadRollout,
        history: list[ResponseItem] | None = None,
        session_config: Mapping[str, Any] | None = None,
        config: Config | None = None,
    ) -> ThreadHandle:
        """`spawn`, letting go of the lease `rollout` holds if the actor does not start."""
        try:
            return await self.spawn(thread_id, settings, rollout, history, session_config=session_config, config=config)
        except BaseException:
            await rollout.release_lease()
            raise

    def new_rollout(
        self, thread_id: str, settings: ThreadSettings, *, ephemeral: bool = False, forked_from: str | None = None,
        session_config: Mapping[str, Any] | None = None, dynamic_tools: Sequence[DynamicToolSpec] = (),
    ) -> ThreadRollout:
        """The (not yet written) rollout of a new thread."""
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
            session_config=without_secrets(session_config) if session_config else msgspec.UNSET,
            runtime_workspace_roots=list(settings.workspace_roots()),
            permissions=settings.permissions if settings.permissions is not None else msgspec.UNSET,
            dynamic_tools=list(dynamic_tools) if dynamic_tools else msgspec.UNSET,
        )
        path = rollout_path(self.home, thread_id, created)
        return ThreadRollout(path=path, meta=meta, ephemeral=ephemeral, index=self._index, leases=self._leases,
                             replica=None if ephemeral else self.replica(thread_id))

    def replica(self, thread_id: str) -> StoreReplica | None:
        """The thread's copy in the shared store, when this runtime is a node of several."""
        if self.cluster is None:
            return None
        replica = self.cluster.replica(thread_id, lambda reason: self._nursery.start_soon(self._drop_lost, replica, reason))
        return replica

    async def _drop_lost(self, replica: StoreReplica, reason: str) -> None:
        """Unload the thread whose lease `replica` lost: another node may be running it now."""
        handle = self._threads.get(replica.thread_id)
        if handle is None or handle.rollout.replica is not replica:  # a later load of it is not concerned
            return
        log.warning("unloading a thread this node lost", thread_id=replica.thread_id, reason=reason)
        with trio.move_on_after(DROP_DEADLINE_S) as dropping:
            dropping.shield = True
            await handle.shutdown_and_wait()
        self.forget(handle)

    async def spawn(
        self,
        thread_id: str,
        settings: ThreadSettings,
        rollout: ThreadRollout,
        history: list[ResponseItem] | None = None,
        session_config: Mapping[str, Any] | None = None,
        config: Config | None = None,
    ) -> ThreadHandle:
        """Start the actor of a thread whose settings, rollout and history are known (and its
        own config layer, and its effective config: default the runtime's)."""
        send, receive = trio.open_memory_channel[Submission](SUBMISSION_CAPACITY)
        events = EventLog(self._seqs, keep=is_lifecycle)
        actor = ThreadActor(
            thread_id=thread_id,
            settings=settings,
            resources=self.resources,
            receive=receive,
            events=events,
            rollout=rollout,
            history=history,
            session_config=session_config,
            config=config,
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
        """The tracked thread `thread_id` if its actor runs and is not closing, else None."""
        handle = self._threads.get(thread_id)
        return handle if handle is not None and not handle.is_closed and not handle.is_closing else None

    async def wait_released(self, thread_id: str) -> None:
        """Wait until a closing actor of `thread_id` has ended, so its rollout has one writer at most.

        ThreadStoreError if it takes longer than `RELEASE_TIMEOUT_S`."""
        handle = self._threads.get(thread_id)
        if handle is None or not handle.is_closing:
            return
        with trio.move_on_after(RELEASE_TIMEOUT_S):
            await handle.wait_closed()
            self.forget(handle)
            return
        raise ThreadStoreError(f"thread {thread_id} is still closing; try again")

    def holds(self, thread_id: str) -> bool:
        """Whether an actor of `thread_id` is tracked here (running, or still closing)."""
        return thread_id in self._threads

    def forget(self, handle: ThreadHandle) -> None:
        """Stop tracking `handle` (an actor that has ended), unless its id now names another one."""
        if self._threads.get(handle.thread_id) is handle:
            del self._threads[handle.thread_id]

    def list_thread_ids(self) -> list[str]:
        return sorted(self._threads)

    def remove_thread(self, thread_id: str) -> ThreadHandle | None:
        """Stop tracking a thread (it keeps running until shut down). Returns it, if it was tracked."""
        return self._threads.pop(thread_id, None)

    def subscribe_thread_created(self) -> Subscription[str]:
        """Ids of threads started from now on."""
        return self._created.subscribe()

    async def shutdown_all_threads_bounded(self, timeout: float) -> ThreadShutdownReport:  # noqa: ASYNC109 - the documented API
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
