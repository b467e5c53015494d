"""Handlers of the thread methods that hand a loaded thread one op and answer `{}`:
`thread/shellCommand` (the user's own command) and `thread/memoryMode/set` (experimental)."""

from __future__ import annotations

from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from spindle.protocol.ops import RunUserShellCommandOp, SetThreadMemoryModeOp

from .context import RequestContext, dispatch, loaded, thread_id_param


async def thread_shell_command(ctx: RequestContext, params: v2.ThreadShellCommandParams) -> v2.EmptyResult:
    """Run `command` in the thread (it joins the running turn, else starts one); answered once the
    thread has taken it, before it runs. The client sees it on the thread's notifications."""
    command = params.command.strip()
    if not command:
        raise invalid_request("command must not be empty")
    if params.timeout_ms is not None and params.timeout_ms < 0:
        raise RpcError(INVALID_PARAMS, f"Invalid params: timeoutMs must be non-negative, got {params.timeout_ms}")
    handle = loaded(ctx, thread_id_param(params.thread_id))
    ctx.peer.subscribe(handle)
    await dispatch(handle, RunUserShellCommandOp(command=command, timeout_ms=params.timeout_ms))
    return v2.EmptyResult()


async def thread_memory_mode_set(ctx: RequestContext, params: v2.ThreadMemoryModeSetParams) -> v2.EmptyResult:
    """Keep the thread's memory mode, on it and in its rollout (answered once it is on disk)."""
    ctx.peer.handshake.require_experimental("thread/memoryMode/set")
    handle = loaded(ctx, thread_id_param(params.thread_id))
    await dispatch(handle, SetThreadMemoryModeOp(mode=params.mode))
    return v2.EmptyResult()
