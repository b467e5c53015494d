"""Handlers of the turn/* methods."""

from __future__ import annotations

import trio

from spindle.actors.runtime import ConfigError
from spindle.actors.runtime.settings import apply_update
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from spindle.protocol.appserver.v2map import turn_settings_update, user_inputs
from spindle.protocol.ops import InterruptOp, UserInputOp, UserTurnOp

from .context import RequestContext, dispatch, loaded, thread_id_param
from .thread_methods import require_permission_fields


async def turn_start(ctx: RequestContext, params: v2.TurnStartParams) -> v2.TurnResult:
    handle = loaded(ctx, thread_id_param(params.thread_id))
    require_permission_fields(ctx, "turn/start", params)
    update = turn_settings_update(params)
    try:  # the actor checks again; this answers bad params as thread/start does (-32602)
        await trio.to_thread.run_sync(apply_update, handle.config, handle.settings, update)
    except ConfigError as exc:
        raise RpcError(INVALID_PARAMS, f"Invalid params: {exc}") from None
    op = UserTurnOp(items=user_inputs(params.input), settings=update)
    ctx.peer.subscribe(handle)
    outcome = await dispatch(handle, op)
    if outcome.turn_id is None:
        raise invalid_request("the turn did not start")
    return v2.TurnResult(turn=v2.Turn(id=outcome.turn_id, items_view="notLoaded"))


async def turn_steer(ctx: RequestContext, params: v2.TurnSteerParams) -> v2.TurnSteerResult:
    """Input into the running turn `expectedTurnId`; the actor refuses it if that turn is not active."""
    handle = loaded(ctx, thread_id_param(params.thread_id))
    op = UserInputOp(items=user_inputs(params.input), expected_turn_id=params.expected_turn_id)
    outcome = await dispatch(handle, op)
    if outcome.turn_id is None:
        raise invalid_request("no active turn to steer")
    return v2.TurnSteerResult(turn_id=outcome.turn_id)


async def turn_interrupt(ctx: RequestContext, params: v2.TurnInterruptParams) -> v2.EmptyResult:
    """Abort the turn `turnId`; the actor refuses it if that turn is not active."""
    handle = loaded(ctx, thread_id_param(params.thread_id))
    await dispatch(handle, InterruptOp(turn_id=params.turn_id))
    return v2.EmptyResult()
