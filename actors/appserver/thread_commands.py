"""Handlers of the thread methods that hand a loaded thread one op and answer `{}`:
`thread/memoryMode/set` (experimental)."""

from __future__ import annotations

from spindle.protocol.appserver import v2
from spindle.protocol.ops import SetThreadMemoryModeOp

from .context import RequestContext, dispatch, loaded, thread_id_param


async def thread_memory_mode_set(ctx: RequestContext, params: v2.ThreadMemoryModeSetParams) -> v2.EmptyResult:
    """Keep the thread's memory mode, on it and in its rollout (answered once it is on disk)."""
    ctx.peer.handshake.require_experimental("thread/memoryMode/set")
    handle = loaded(ctx, thread_id_param(params.thread_id))
    await dispatch(handle, SetThreadMemoryModeOp(mode=params.mode))
    return v2.EmptyResult()
