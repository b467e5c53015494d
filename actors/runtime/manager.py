"""The thread manager, what `open_runtime()` yields: the registry of running threads and the
operations on stored ones, behind one object."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio
from trio_typing import TaskStatus

from spindle.persistence.history import ForkSnapshot
from spindle.persistence.query import DEFAULT_LIMIT, ThreadQuery
from spindle.persistence.store import LocalThreadStore, ThreadPage
from spindle.protocol.config import Config, ConfigWarning
from spindle.protocol.items import DynamicToolSpec
from spindle.protocol.ops import ReloadUserConfigOp
from spindle.protocol.settings import SettingsUpdate

from .cluster import Cluster
from .config import codex_home
from .config_layers import FixedConfig, LayeredConfig, config_source
from .errors import ConfigError, ThreadClosedError
from .fanout import Subscription
from .handle import ThreadHandle
from .handoff import serve_handoffs
from .mcp_refresh import McpRefreshError, check_required_servers
from .registry import ThreadRegistry, ThreadShutdownReport
from .resources import RuntimeResources
from .stored import StoredThreads
from .tools import ToolRegistry

log = structlog.get_logger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
SYNC_DEADLINE_S = 10.0
"""How long the runtime's end waits for the one `sync` that makes every closed rollout durable
(a thread's own close does not fsync: 10,000 threads closing would queue 10,000 of them)."""


class ThreadManager:
    """Supervises every thread of one runtime. Obtain one from `open_runtime()`.

    Running threads: `start_thread`, `get_thread`, `running`, `list_thread_ids`, `remove_thread`,
    `subscribe_thread_created`, `shutdown_all_threads_bounded` (`registry`). Stored threads:
    `resume_thread`, `fork_thread`, `archive_thread`, `unarchive_thread`, `list_threads` (`stored`;
    a `ThreadQuery` or its fields as keyword arguments).
    """

    def __init__(self, resources: RuntimeResources, nursery: trio.Nursery, store: LocalThreadStore,
                 cluster: Cluster | None = None) -> None:
        self.resources = resources
        self.store = store
        self.home = store.home
        self.cluster = cluster
        self.registry = ThreadRegistry(resources, nursery, store.home, index=store, leases=store, cluster=cluster)
        self.stored = StoredThreads(self.registry, store)
        self._reloading = trio.Lock()
        """One config reload at a time: a slower, older one never applies its stale reading last."""

    @property
    def config(self) -> Config:
        """The thread-agnostic effective config (no project layers, no thread's own layer)."""
        return self.resources.config

    @property
    def config_warnings(self) -> list[ConfigWarning]:
        """Config warnings (unknown keys) met so far, each once."""
        return self.resources.warnings

    async def reload_user_config(self, *, strict: bool = True) -> list[str]:
        """Rebuild every loaded thread's config from freshly read disk layers, each for its own
        current cwd, keeping its own session layer; each thread applies the hot-reloadable
        settings (`ThreadActor.apply_config`) before its next turn. The one per-thread refresh
        path: the `reload_user_config` op, a config write with `reloadUserConfig`, and the MCP
        refresh (which hooks into `apply_config`) all go through it.

        `strict` (a manual refresh): the base config and every thread's are rebuilt first; any
        failure raises ConfigError naming the thread before any thread is changed. Otherwise
        (background) failures are returned as warnings, logged, and that thread keeps its config.
        """
        async with self._reloading:
            return await self._reload_user_config(strict)

    async def _reload_user_config(self, strict: bool) -> list[str]:
        warnings: list[str] = []
        base: Config | None = None
        try:
            base = (await self.resources.load_stack()).config
        except ConfigError as exc:
            if strict:
                raise
            warnings.append(f"failed to reload the config: {exc}")
        plans: list[tuple[ThreadHandle, Config, str]] = []
        for thread_id in self.list_thread_ids():
            handle = self.running(thread_id)
            if handle is None:
                continue
            cwd = handle.settings.cwd  # the thread rebuilds its own if its cwd changes meanwhile
            try:
                plans.append((handle, await self.resources.thread_config(cwd, handle.session_config), cwd))
            except ConfigError as exc:
                if strict:
                    raise ConfigError(f"failed to load thread {thread_id}: {exc}") from None
                warnings.append(f"failed to rebuild the config of thread {thread_id}: {exc}")
        if base is not None and not isinstance(self.resources.source, FixedConfig):
            self.resources.config = base  # the thread-agnostic config new threads start from
        applied: list[tuple[ThreadHandle, Config]] = []
        for handle, config, cwd in plans:
            try:
                outcome = await handle.submit_and_wait(ReloadUserConfigOp(config=config, cwd=cwd))
            except (ThreadClosedError, trio.TooSlowError) as exc:
                problem = str(exc) or type(exc).__name__
            else:
                problem = outcome.error.message if outcome.error is not None else ""
            if problem:
                message = f"failed to queue a config reload for thread {handle.thread_id}: {problem}"
                if strict:
                    raise ConfigError(message)
                warnings.append(message)
            else:
                applied.append((handle, config))
        if strict:
            await check_required_servers([(handle, config.mcp_servers) for handle, config in applied])
        for warning in warnings:
            log.warning("config reload", warning=warning)
        return warnings

    # --- running threads ------------------------------------------------
    async def start_thread(
        self,
        settings: SettingsUpdate | None = None,
        *,
        thread_id: str | None = None,
        ephemeral: bool = False,
        persist_now: bool = False,
        config: Mapping[str, Any] | None = None,
        permissions: str | None = None,
        runtime_workspace_roots: Sequence[str] | None = None,
        dynamic_tools: Sequence[DynamicToolSpec] = (),
    ) -> ThreadHandle:
        """A new thread (see `ThreadRegistry.start_thread`). `permissions` selects a permission
        profile by id (`:workspace`, a `[permissions.<id>]`); `runtime_workspace_roots` are its
        workspace roots (relative ones resolve against its cwd; default: the cwd). Both are
        shorthands for the `SettingsUpdate` fields; ConfigError names an unknown profile, a
        root that is not a directory, or `permissions` with a `settings.sandbox_mode` (a profile
        and a legacy sandbox select the same thing); TypeError a `str` given as the roots.
        `dynamic_tools` are tools the embedding runs itself (see `dynamic_tools.py`)."""
        if isinstance(runtime_workspace_roots, str | bytes):
            raise TypeError(f"runtime_workspace_roots must be a list of paths, not a single {type(runtime_workspace_roots).__name__} "
                            f"({runtime_workspace_roots!r}): pass [{runtime_workspace_roots!r}]")
        if permissions is not None and settings is not None and settings.sandbox_mode is not None:
            raise ConfigError(f"`permissions` ({permissions!r}) cannot be combined with `sandbox_mode` "
                              f"({settings.sandbox_mode!r}): select a profile or a legacy sandbox mode")
        roots = tuple(runtime_workspace_roots) if runtime_workspace_roots is not None else None
        if permissions is not None or roots is not None:
            shorthand = SettingsUpdate(permissions=permissions, runtime_workspace_roots=roots)
            settings = (settings or SettingsUpdate()).then(shorthand)
        return await self.registry.start_thread(
            settings, thread_id=thread_id, ephemeral=ephemeral, persist_now=persist_now, config=config,
            dynamic_tools=dynamic_tools,
        )

    def get_thread(self, thread_id: str) -> ThreadHandle:
        return self.registry.get_thread(thread_id)

    def running(self, thread_id: str) -> ThreadHandle | None:
        return self.registry.running(thread_id)

    def list_thread_ids(self) -> list[str]:
        return self.registry.list_thread_ids()

    def remove_thread(self, thread_id: str) -> ThreadHandle | None:
        return self.registry.remove_thread(thread_id)

    def subscribe_thread_created(self) -> Subscription[str]:
        return self.registry.subscribe_thread_created()

    async def shutdown_all_threads_bounded(self, timeout: float) -> ThreadShutdownReport:  # noqa: ASYNC109 - the documented API
        return await self.registry.shutdown_all_threads_bounded(timeout)

    async def release_thread(self, thread_id: str) -> str | None:
        """Unload a thread another process asked for (a lease handoff): flush, close its rollout,
        let go of its lease. None once done (or if it is not loaded here); else why it stays:
        a running turn is never cut short for a handoff."""
        await self.registry.wait_released(thread_id)
        handle = self.registry.running(thread_id)
        if handle is None:
            return None
        try:
            refusal = await handle.shutdown_if_idle()
        except ThreadClosedError:  # it is ending on its own: let go once it has
            refusal = None
        if refusal is not None:
            return refusal
        await handle.wait_closed()
        self.registry.forget(handle)
        return None

    async def refresh_mcp_servers(self, *, strict: bool = True) -> list[str]:
        """Rebuild every loaded thread's MCP servers from its fresh effective config (its cwd, its
        session layer). Strict: McpRefreshError names the thread (and server) and nothing changes
        when a thread's config cannot be rebuilt. Best-effort: returns the warnings."""
        try:
            return await self.reload_user_config(strict=strict)
        except ConfigError as exc:
            raise McpRefreshError(str(exc)) from None

    # --- stored threads -------------------------------------------------
    async def resume_thread(
        self,
        thread_id: str | None = None,
        settings: SettingsUpdate | None = None,
        *,
        path: str | Path | None = None,
        handoff: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> ThreadHandle:
        return await self.stored.resume_thread(thread_id, settings, path=path, handoff=handoff, config=config)

    async def fork_thread(
        self,
        snapshot: ForkSnapshot | int,
        thread_id: str | None = None,
        settings: SettingsUpdate | None = None,
        *,
        path: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> ThreadHandle:
        return await self.stored.fork_thread(snapshot, thread_id, settings, path=path, config=config)

    async def archive_thread(self, thread_id: str) -> Path:
        return await self.stored.archive_thread(thread_id)

    async def unarchive_thread(self, thread_id: str) -> Path:
        return await self.stored.unarchive_thread(thread_id)

    async def list_threads(
        self,
        query: ThreadQuery | None = None,
        *,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        archived: bool = False,
        search_term: str | None = None,
        cwd: str | Sequence[str] | None = None,
        model_providers: Sequence[str] = (),
        source_kinds: Sequence[str] = (),
        sort_key: str = "created_at",
        sort_direction: str = "desc",
        included_ids: Sequence[str] | None = None,
        excluded_ids: Sequence[str] = (),
        use_state_db_only: bool = False,
    ) -> ThreadPage:
        """A page of stored threads: a `ThreadQuery`, or its fields as keyword arguments (see
        `ThreadQuery` for each; `InvalidThreadQuery`, a ValueError, for a bad cursor or filter)."""
        if query is None:
            query = ThreadQuery(
                limit=limit, cursor=cursor, archived=archived, search_term=search_term, cwd=cwd,
                model_providers=model_providers, source_kinds=source_kinds, sort_key=sort_key,
                sort_direction=sort_direction, included_ids=included_ids, excluded_ids=excluded_ids,
                use_state_db_only=use_state_db_only,
            )
        return await self.stored.list_threads(query)


@asynccontextmanager
async def open_runtime(
    config: Config | LayeredConfig | None = None,
    *,
    tools: ToolRegistry | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    cluster: Cluster | None = None,
) -> AsyncIterator[ThreadManager]:
    """Run a Spindle runtime; yields its ThreadManager.

    On exit, however it comes (the block ends, raises, or is cancelled from outside), every thread
    is shut down within `shutdown_timeout`: running turns are aborted with their event and every
    rollout is flushed. The thread actors are shielded from the caller's cancellation until then;
    whatever is still running afterwards is cancelled.

    `config`: a `Config` (the base of every thread's config; no file is read), or a
    `LayeredConfig` (a home, `-c` overrides: the layers are read from disk, and again for each
    thread's cwd); None reads `$CODEX_HOME`'s layers. `cluster`: run as one node of several
    sharing threads through a store (`cluster.py`); its CODEX_HOME holds this node's copies.
    """
    source = config_source(config)
    if isinstance(source, FixedConfig):
        resources = RuntimeResources(source, tools)
    else:
        resources = await trio.to_thread.run_sync(RuntimeResources, source, tools)
    config = resources.config
    store = LocalThreadStore(Path(config.codex_home) if config.codex_home else codex_home())
    try:
        await store.open()  # a home or index that cannot be used is one clear error, up front
        async with trio.open_nursery() as host:
            with trio.CancelScope(shield=True):  # once started, only the `finally` below ends it
                actors: trio.Nursery = await host.start(_host_actors)
            await host.start(store.run)  # the background full stat pass of the rollouts
            if cluster is not None:
                await host.start(cluster.run)  # the node's heartbeat
            manager = ThreadManager(resources, actors, store, cluster)
            try:
                store.handoff_address = await actors.start(serve_handoffs, manager.release_thread)
                yield manager
            finally:
                with trio.CancelScope(shield=True):
                    report = await manager.shutdown_all_threads_bounded(shutdown_timeout)
                if report.timed_out or report.submit_failed:
                    log.warning("threads did not shut down cleanly", timed_out=report.timed_out, submit_failed=report.submit_failed)
                actors.cancel_scope.cancel()
                host.cancel_scope.cancel()  # and the store's background pass
    finally:
        with trio.CancelScope(shield=True):
            await resources.aclose()
            await store.aclose()
            with trio.move_on_after(SYNC_DEADLINE_S):  # every rollout the threads closed, in one call
                await trio.to_thread.run_sync(os.sync, abandon_on_cancel=True)  # type: ignore[call-arg]  # trio-typing predates it


async def _host_actors(*, task_status: TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    """The nursery thread actors run in, shielded from outside cancellation: `open_runtime`
    shuts them down first, then cancels this nursery itself."""
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as actors:
            task_status.started(actors)
            await trio.sleep_forever()
