"""Handlers of the turn/* methods."""

from __future__ import annotations

from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import invalid_request
from spindle.protocol.appserver.v2map import turn_settings_update, user_inputs
from spindle.protocol.ops import InterruptOp, UserInputOp, UserTurnOp

from .context import RequestContext, dispatch, loaded, thread_id_param


async def turn_start(ctx: RequestContext, params: v2.TurnStartParams) -> v2.TurnResult:
    handle = loaded(ctx, thread_id_param(params.thread_id))
    op = UserTurnOp(items=user_inputs(params.input), settings=turn_settings_update(params))
    ctx.peer.subscribe(handle)
    outcome = await dispatch(handle, op)
    if outcome.turn_id is None:
        raise invalid_request("the turn did not start")
    return v2.TurnResult(turn=v2.Turn(id=outcome.turn_id, items_view="notLoaded"))


async def turn_steer(ctx: RequestContext, params: v2.TurnSteerParams) -> v2.TurnSteerResult:
    handle = loaded(ctx, thread_id_param(params.thread_id))
    active = handle.active_turn_id
    if active != params.expected_turn_id:
        raise invalid_request(f"expected active turn `{params.expected_turn_id}` but found `{active}`")
    outcome = await dispatch(handle, UserInputOp(items=user_inputs(params.input)))
    if outcome.turn_id is None:
        raise invalid_request("no active turn to steer")
    return v2.TurnSteerResult(turn_id=outcome.turn_id)


async def turn_interrupt(ctx: RequestContext, params: v2.TurnInterruptParams) -> v2.EmptyResult:
    handle = loaded(ctx, thread_id_param(params.thread_id))
    if handle.active_turn_id is None or handle.active_turn_id != params.turn_id:
        raise invalid_request("no active turn to interrupt")
    await handle.submit_and_wait(InterruptOp())
    return v2.EmptyResult()


