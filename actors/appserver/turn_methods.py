"""Handlers of the turn/* methods."""

from __future__ import annotations

import json

import trio

from spindle.actors.runtime import ConfigError
from spindle.actors.runtime.permission_profiles import READ_ONLY, PermissionProfiles
from spindle.actors.runtime.settings import apply_update
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from spindle.protocol.appserver.v2map import turn_settings_update, user_inputs
from spindle.protocol.ops import InterruptOp, UserInputOp, UserTurnOp
from spindle.protocol.settings import SettingsUpdate

from .context import RequestContext, dispatch, loaded, thread_id_param
from .thread_methods import require_experimental_fields

NO_CHANGE = SettingsUpdate()
"""A turn that changes no setting has nothing to check before it reaches the actor."""


async def turn_start(ctx: RequestContext, params: v2.TurnStartParams) -> v2.TurnResult:
    handle = loaded(ctx, thread_id_param(params.thread_id))
    require_experimental_fields(ctx, "turn/start", params)
    if params.collaboration_mode is not None:
        ctx.peer.handshake.require_experimental("turn/start.collaborationMode")
    update = turn_settings_update(params)
    if params.sandbox_policy is not None:
        check_legacy_options(params.sandbox_policy, handle.permission_profiles)
    if update != NO_CHANGE:
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


def check_legacy_options(policy: v2.SandboxPolicyV2, profiles: PermissionProfiles) -> None:
    """A legacy `sandboxPolicy` option the thread's legacy sandbox cannot honour is -32602 naming
    it: its network, `$TMPDIR` and `/tmp` access are the config's (`[sandbox_workspace_write]`),
    so a value that differs is refused rather than dropped. A permission profile selects others."""
    match policy.type:
        case "workspaceWrite":
            profile = profiles.legacy_workspace
        case "readOnly":
            profile = profiles.get(READ_ONLY)
        case _:
            return
    held = {"networkAccess": (policy.network_access, profile.network)}
    if policy.type == "workspaceWrite":
        held["excludeTmpdirEnvVar"] = (policy.exclude_tmpdir_env_var, profile.grants(":tmpdir", ".") != "write")
        held["excludeSlashTmp"] = (policy.exclude_slash_tmp, profile.grants(":slash_tmp", ".") != "write")
    where = " (its config's [sandbox_workspace_write])" if policy.type == "workspaceWrite" else ""
    for name, (asked, value) in held.items():
        if asked is not None and asked != value:
            raise RpcError(INVALID_PARAMS, (
                f"Invalid params: sandboxPolicy.{name} {json.dumps(asked)} is not supported: this server's legacy "
                f"{policy.type} sandbox has {name} {json.dumps(value)}{where}; "
                "select a permission profile with `permissions` instead"))


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
