"""Handlers of the paginated history: `thread/turns/list`, `thread/items/list`, `thread/items/read`.

A loaded thread is paged through its rollout source's turn index (with its running turn); a
stored one through the index a streaming scan of its file builds. Either way only the page's
turns are read from the file, off the event loop. Before its first turn a thread has no history to
page: Codex's own error says so.
"""

from __future__ import annotations

from spindle.persistence.cursors import InvalidCursor
from spindle.persistence.reader import RolloutReadError
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from spindle.protocol.appserver.v2pages import (
    ThreadItemEntry,
    ThreadItemsListParams,
    ThreadItemsListResult,
    ThreadItemsReadParams,
    ThreadItemsReadResult,
    ThreadTurnsListParams,
    ThreadTurnsListResult,
)

from .context import RequestContext, thread_id_param
from .pages import TurnSource, defer_output, item_page, turn_page, with_view
from .turns import IndexedTurns, stored_turns

MAX_READ_IDS = 100
"""The most item ids one `thread/items/read` may name (the schema's bound)."""


def _invalid(exc: InvalidCursor) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {exc}")


async def history_of(ctx: RequestContext, thread_id: str, method: str) -> TurnSource:
    """The turns of `thread_id`, loaded or stored; -32600 before its first turn, or if unknown."""
    running = ctx.manager.running(thread_id)
    if running is not None:
        rollout = running.rollout
        if not rollout.materialized and not rollout.ephemeral:
            raise invalid_request(f"thread {thread_id} is not materialized yet; {method} is unavailable before first user message")
        return IndexedTurns(rollout.source, running.active_turn_id)
    path = await ctx.manager.stored.path(thread_id)
    if path is None:
        raise invalid_request(f"no rollout found for thread id {thread_id}")
    try:
        return await stored_turns(path)
    except (OSError, RolloutReadError) as exc:
        raise invalid_request(f"cannot read rollout {path}: {exc}") from None


def _changed() -> RpcError:
    """A page whose turns a rollback dropped while it was being read (positions gone stale)."""
    return RpcError(INVALID_PARAMS, "the thread's turns changed while the page was read (a rollback); ask again")


async def thread_turns_list(ctx: RequestContext, params: ThreadTurnsListParams) -> ThreadTurnsListResult:
    tid = thread_id_param(params.thread_id)
    source = await history_of(ctx, tid, "thread/turns/list")
    try:
        page = turn_page(tid, source.turn_ids, cursor=params.cursor, limit=params.limit,
                         ascending=params.sort_direction == "asc")
    except InvalidCursor as exc:
        raise _invalid(exc) from None
    view = params.items_view or "summary"
    try:
        turns = [with_view(turn, view) for turn in await source.turns(page.positions)]
    except (IndexError, ValueError):
        raise _changed() from None
    return ThreadTurnsListResult(data=turns, next_cursor=page.next_cursor, backwards_cursor=page.backwards_cursor)


async def thread_items_list(ctx: RequestContext, params: ThreadItemsListParams) -> ThreadItemsListResult:
    tid = thread_id_param(params.thread_id)
    source = await history_of(ctx, tid, "thread/items/list")
    try:
        page = await item_page(tid, source, turn_id=params.turn_id or None, cursor=params.cursor, limit=params.limit,
                               ascending=params.sort_direction != "desc")
    except InvalidCursor as exc:
        raise _invalid(exc) from None
    except (IndexError, ValueError):
        raise _changed() from None
    data = []
    for entry in page.entries:
        item, deferred = defer_output(entry.item, params.defer_output)
        data.append(ThreadItemEntry(turn_id=entry.turn_id, item=item, output_deferred=True) if deferred
                    else ThreadItemEntry(turn_id=entry.turn_id, item=item))
    return ThreadItemsListResult(data=data, next_cursor=page.next_cursor, backwards_cursor=page.backwards_cursor)


async def thread_items_read(ctx: RequestContext, params: ThreadItemsReadParams) -> ThreadItemsReadResult:
    """The items `itemIds` names, of one turn, whole, in the turn's order (experimental)."""
    ctx.peer.handshake.require_experimental("thread/items/read")
    tid = thread_id_param(params.thread_id)
    if not 1 <= len(params.item_ids) <= MAX_READ_IDS:
        raise RpcError(INVALID_PARAMS, f"Invalid params: itemIds must name 1 to {MAX_READ_IDS} items")
    source = await history_of(ctx, tid, "thread/items/read")
    if params.turn_id not in source.turn_ids:
        raise RpcError(INVALID_PARAMS, f"Invalid params: turn {params.turn_id} not found in thread {tid}")
    [turn] = await source.turns([source.turn_ids.index(params.turn_id)])
    wanted = set(params.item_ids)
    return ThreadItemsReadResult(data=[ThreadItemEntry(turn_id=turn.id, item=item) for item in turn.items if item.id in wanted])
