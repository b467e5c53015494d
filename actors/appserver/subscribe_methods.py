"""`thread/subscribe` (a Spindle extension, experimental): follow a loaded thread, as a retaining
subscriber or only as an observer, and after a lost connection from the last event seen."""

from __future__ import annotations

from spindle.actors.runtime import ReplayTooOld
from spindle.protocol.appserver.v2subscribe import ThreadSubscribeParams, ThreadSubscribeResult

from .context import RequestContext, thread_id_param


async def thread_subscribe(ctx: RequestContext, params: ThreadSubscribeParams) -> ThreadSubscribeResult:
    """Subscribe to a loaded thread (never loads one: `notLoaded`). With `afterSeq`, the events
    after it come first (`replayed`), or, when they are no longer all kept, the subscription
    starts now and the client re-reads the thread (`tooOld`)."""
    ctx.peer.handshake.require_experimental("thread/subscribe")
    handle = ctx.manager.running(thread_id_param(params.thread_id))
    if handle is None:
        return ThreadSubscribeResult(status="notLoaded")
    observe = bool(params.observe)
    if params.after_seq is None:
        ctx.peer.subscribe(handle, observe=observe)
        return ThreadSubscribeResult(status="subscribed", last_seq=handle.last_seq)
    try:
        replayed = ctx.peer.subscribe(handle, observe=observe, after=params.after_seq)
    except ReplayTooOld as too_old:
        ctx.peer.subscribe(handle, observe=observe)
        return ThreadSubscribeResult(status="tooOld", oldest_seq=too_old.oldest, last_seq=too_old.last)
    return ThreadSubscribeResult(status="replayed", replayed=replayed, last_seq=handle.last_seq)
