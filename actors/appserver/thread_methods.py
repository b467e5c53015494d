"""Handlers of the thread/* methods: v2 params in, v2 results out, on the thread manager."""

from __future__ import annotations

from spindle.actors.runtime import ThreadHandle
from spindle.persistence.history import ForkSnapshot
from spindle.persistence.query import InvalidThreadQuery, ThreadQuery
from spindle.persistence.turn_index import TurnIndex
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from spindle.protocol.appserver.v2map import (
    collaboration_mode_v2,
    dynamic_tool_specs,
    thread_settings_update,
)
from spindle.protocol.ops import CompactOp, ThreadRollbackOp
from spindle.protocol.settings import Granular

from .config_methods import warnings_since
from .context import RequestContext, dispatch, loaded, thread_id_param
from .turns import stored_turns
from .views import live_thread, session_result, stored_thread

DEFAULT_PAGE = 50
MAX_PAGE = 500


def require_experimental_fields(ctx: RequestContext, method: str, params: v2.ThreadSettingsParams | v2.TurnStartParams) -> None:
    """The experimental fields (the permission selection, a granular approval policy) need the
    client's `experimentalApi` opt-in."""
    if isinstance(params.approval_policy, Granular):
        ctx.peer.handshake.require_experimental("askForApproval.granular")
    if params.permissions is not None:
        ctx.peer.handshake.require_experimental(f"{method}.permissions")
    if params.runtime_workspace_roots is not None:
        ctx.peer.handshake.require_experimental(f"{method}.runtimeWorkspaceRoots")


async def thread_start(ctx: RequestContext, params: v2.ThreadStartParams) -> v2.ThreadSessionResult:
    require_experimental_fields(ctx, "thread/start", params)
    if params.persist_now is not None:
        ctx.peer.handshake.require_experimental("thread/start.persistNow")
    if params.persist_now and params.ephemeral:
        raise RpcError(INVALID_PARAMS, "Invalid params: persistNow cannot be combined with ephemeral (an ephemeral thread is never written)")
    if params.dynamic_tools is not None:
        ctx.peer.handshake.require_experimental("thread/start.dynamicTools")
    seen = len(ctx.manager.config_warnings)
    handle = await ctx.manager.start_thread(
        ephemeral=bool(params.ephemeral), persist_now=bool(params.persist_now), settings=thread_settings_update(params),
        config=params.config, dynamic_tools=dynamic_tool_specs(params.dynamic_tools or []),
    )
    if params.dynamic_tools:
        ctx.index.register_tools(handle.thread_id, ctx.peer)
    ctx.peer.subscribe(handle)
    result = await session_result(ctx.manager, handle, include_turns=False)
    ctx.after(("thread/started", v2.ThreadStarted(thread=result.thread)))
    warnings_since(ctx, seen, params.config)
    return result


async def thread_resume(ctx: RequestContext, params: v2.ThreadResumeParams) -> v2.ThreadSessionResult:
    tid = thread_id_param(params.thread_id)
    require_experimental_fields(ctx, "thread/resume", params)
    if params.handoff is not None:
        ctx.peer.handshake.require_experimental("thread/resume.handoff")
    handle = await ctx.manager.resume_thread(
        tid, path=params.path, settings=thread_settings_update(params), handoff=bool(params.handoff), config=params.config
    )
    ctx.peer.subscribe(handle)
    result = await session_result(ctx.manager, handle, include_turns=not params.exclude_turns)
    result.collaboration_mode = collaboration_mode_v2(handle.settings)
    _load_warning(ctx, handle)
    return result


async def thread_fork(ctx: RequestContext, params: v2.ThreadForkParams) -> v2.ThreadSessionResult:
    tid = thread_id_param(params.thread_id)
    require_experimental_fields(ctx, "thread/fork", params)
    snapshot = ForkSnapshot.interrupted()
    if params.last_turn_id is not None:
        snapshot = await _snapshot_through(ctx, tid, params.last_turn_id)
    handle = await ctx.manager.fork_thread(
        snapshot, tid, path=params.path, settings=thread_settings_update(params), config=params.config
    )
    ctx.peer.subscribe(handle)
    result = await session_result(ctx.manager, handle, include_turns=not params.exclude_turns)
    ctx.after(("thread/started", v2.ThreadStarted(thread=await live_thread(ctx.manager, handle))))
    _load_warning(ctx, handle)
    return result


def _load_warning(ctx: RequestContext, handle: ThreadHandle) -> None:
    """A problem reading the thread's rollout (a compaction lost) is told as a `warning`."""
    if handle.load_warning is not None:
        ctx.after(("warning", v2.WarningNotice(message=handle.load_warning, thread_id=handle.thread_id)))


async def _snapshot_through(ctx: RequestContext, thread_id: str, last_turn_id: str) -> ForkSnapshot:
    """A fork that ends with the turn `last_turn_id`: the rollout up to where that turn ends, as
    its turn index says (a compaction turn, a shell command's turn and rolled-back turns count as
    the turns they are); through the last turn, the whole of it, as if interrupted now."""
    index = await _turn_index(ctx, thread_id)
    if last_turn_id not in index.ids:
        raise invalid_request(f"turn {last_turn_id} not found in thread {thread_id}")
    position = index.ids.index(last_turn_id)
    end = index.span(position, position).end
    return ForkSnapshot.interrupted() if end is None else ForkSnapshot.through(end)


async def _turn_index(ctx: RequestContext, thread_id: str) -> TurnIndex:
    """A thread's turn index: its own when it runs (flushed, so every turn has its place), else
    from a scan of its rollout."""
    running = ctx.manager.running(thread_id)
    if running is not None:
        await running.rollout.flush()
        return running.rollout.source.index
    path = await ctx.manager.stored.path(thread_id)
    if path is None:
        raise invalid_request(f"no rollout found for thread id {thread_id}")
    return (await stored_turns(path)).index


async def thread_read(ctx: RequestContext, params: v2.ThreadReadParams) -> v2.ThreadResult:
    tid = thread_id_param(params.thread_id)
    running = ctx.manager.running(tid)
    if running is not None:
        return v2.ThreadResult(thread=await live_thread(ctx.manager, running, include_turns=params.include_turns))
    entry = await ctx.manager.stored.entry(tid)
    if entry is None:
        raise invalid_request(f"thread not loaded: {tid}")
    thread = await stored_thread(ctx.manager, entry, include_turns=params.include_turns)
    return v2.ThreadResult(thread=thread)


def _limit(value: int | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if value < 1:
        raise RpcError(INVALID_PARAMS, f"Invalid params: limit must be at least 1, got {value}")
    return min(value, MAX_PAGE)


def _thread_query(params: v2.ThreadListParams) -> ThreadQuery:
    """thread/list's params as the store's query; -32602 for what it cannot answer."""
    if params.originators:
        raise RpcError(INVALID_PARAMS, "Invalid params: originators is supported by hosted backends only, not the local store")
    try:
        return ThreadQuery(
            limit=_limit(params.limit), cursor=params.cursor, archived=bool(params.archived),
            search_term=params.search_term, cwd=params.cwd, model_providers=params.model_providers or (),
            source_kinds=params.source_kinds or (), sort_key=params.sort_key or "created_at",
            sort_direction=params.sort_direction or "desc", included_ids=params.included_thread_ids,
            excluded_ids=params.excluded_thread_ids or (), use_state_db_only=bool(params.use_state_db_only),
            section=params.section_id if isinstance(params.section_id, str) else None,
        )
    except InvalidThreadQuery as exc:
        raise RpcError(INVALID_PARAMS, f"Invalid params: {exc}") from None


async def thread_list(ctx: RequestContext, params: v2.ThreadListParams) -> v2.ThreadListResult:
    page = await ctx.manager.list_threads(_thread_query(params))
    return v2.ThreadListResult(
        data=[await stored_thread(ctx.manager, entry) for entry in page.entries],
        next_cursor=page.next_cursor, backwards_cursor=page.backwards_cursor,
    )


async def thread_loaded_list(ctx: RequestContext, params: v2.ThreadLoadedListParams) -> v2.ThreadLoadedListResult:
    ids = [tid for tid in ctx.manager.list_thread_ids() if ctx.manager.running(tid) is not None]
    start = 0
    if params.cursor:
        start = next((i for i, tid in enumerate(ids) if tid > params.cursor), len(ids))
    limit = _limit(params.limit) if params.limit is not None else len(ids)
    page = ids[start : start + limit]
    more = start + limit < len(ids)
    return v2.ThreadLoadedListResult(data=page, next_cursor=page[-1] if more and page else None)


async def thread_archive(ctx: RequestContext, params: v2.ThreadIdParams) -> v2.EmptyResult:
    tid = thread_id_param(params.thread_id)
    was_loaded = ctx.manager.running(tid) is not None
    watchers = ctx.index.subscribers(tid)
    await ctx.manager.archive_thread(tid)  # on failure nothing has changed, subscriptions included
    ctx.index.drop_subscribers(tid)
    if was_loaded:
        ctx.after(("thread/status/changed", v2.ThreadStatusChanged(thread_id=tid, status=v2.NOT_LOADED)), also=watchers)
    ctx.after(("thread/archived", v2.ThreadIdNotice(thread_id=tid)), also=watchers)
    return v2.EmptyResult()


async def thread_unarchive(ctx: RequestContext, params: v2.ThreadIdParams) -> v2.ThreadResult:
    tid = thread_id_param(params.thread_id)
    if ctx.manager.running(tid) is not None:
        raise invalid_request(f"thread {tid} already has an active writer")
    await ctx.manager.unarchive_thread(tid)
    entry = await ctx.manager.store.entry(tid)
    if entry is None:
        raise invalid_request(f"no rollout found for thread id {tid}")
    ctx.after(("thread/unarchived", v2.ThreadIdNotice(thread_id=tid)))
    return v2.ThreadResult(thread=await stored_thread(ctx.manager, entry))


async def thread_unsubscribe(ctx: RequestContext, params: v2.ThreadIdParams) -> v2.UnsubscribeResult:
    tid = thread_id_param(params.thread_id)
    if ctx.manager.running(tid) is None:
        return v2.UnsubscribeResult(status="notLoaded")
    if not ctx.index.unsubscribe(ctx.peer, tid):
        return v2.UnsubscribeResult(status="notSubscribed")
    return v2.UnsubscribeResult(status="unsubscribed")


async def thread_name_set(ctx: RequestContext, params: v2.ThreadSetNameParams) -> v2.EmptyResult:
    tid = thread_id_param(params.thread_id)
    if ctx.manager.running(tid) is None and await ctx.manager.store.entry(tid) is None:
        raise invalid_request(f"thread not found: {tid}")
    name = params.name.strip()
    if not name:
        raise RpcError(INVALID_PARAMS, "Invalid params: name must not be empty")
    await ctx.manager.store.set_name(tid, name)
    ctx.after(("thread/name/updated", v2.ThreadNameUpdated(thread_id=tid, thread_name=name)), also=ctx.index.subscribers(tid))
    return v2.EmptyResult()


async def _rollback(ctx: RequestContext, tid: str, num_turns: int) -> v2.ThreadResult:
    handle = loaded(ctx, tid)
    if num_turns < 1:
        raise RpcError(INVALID_PARAMS, "Invalid params: numTurns must be >= 1")
    await dispatch(handle, ThreadRollbackOp(num_turns=num_turns))
    return v2.ThreadResult(thread=await live_thread(ctx.manager, handle, include_turns=True))


async def thread_rollback(ctx: RequestContext, params: v2.ThreadRollbackParams) -> v2.ThreadResult:
    return await _rollback(ctx, thread_id_param(params.thread_id), params.num_turns)


async def thread_revert(ctx: RequestContext, params: v2.ThreadRevertParams) -> v2.ThreadResult:
    tid = thread_id_param(params.thread_id)
    loaded(ctx, tid)
    ids = (await _turn_index(ctx, tid)).ids
    if params.before_turn_id not in ids:
        raise invalid_request(f"turn {params.before_turn_id} not found in thread {tid}")
    result = await _rollback(ctx, tid, len(ids) - ids.index(params.before_turn_id))
    ctx.after(("thread/reverted", v2.ThreadIdNotice(thread_id=tid)), also=ctx.index.subscribers(tid))
    return result


async def thread_compact_start(ctx: RequestContext, params: v2.ThreadIdParams) -> v2.EmptyResult:
    await dispatch(loaded(ctx, thread_id_param(params.thread_id)), CompactOp())
    return v2.EmptyResult()


