"""The app-server's method table: each v2 method and its handler.

A handler takes the `RequestContext` and its decoded params, returns the result struct or raises
`RpcError`; the notifications it causes go out after its result, in the order the real
app-server sends them. Every other method of the v2 schema is answered "not supported".
"""

from __future__ import annotations

import os
import platform
from collections.abc import Awaitable, Callable
from typing import Any

from spindle.actors.runtime.collaboration import PRESETS
from spindle.actors.runtime.permission_profiles import load_profiles
from spindle.actors.runtime.version import SPINDLE_VERSION
from spindle.protocol.appserver import v2, v2models, v2modes, v2perm
from spindle.protocol.appserver.jsonrpc import INVALID_PARAMS, RpcError

from . import account_methods as accounts
from . import config_methods as configs
from . import history_methods as history
from . import mcp_methods as mcp
from . import review_methods as reviews
from . import subscribe_methods as subscriptions
from . import thread_commands as commands
from . import thread_methods as threads
from . import turn_methods as turns
from . import workspace_methods as workspace
from .context import RequestContext

PROTOCOL_VERSION = "0.171.0"
"""The Codex release whose app-server protocol Spindle speaks and is checked against (the 0.171
schema, the 0.171 TUI's and `codex exec`'s start-up): clients read it from `userAgent` as the
server's version. The TUI warns of a server older than itself, the SDK gates newer fields on it.
It claims the wire, not Codex's every feature: a method Spindle lacks answers -32601."""

Handler = Callable[[RequestContext, Any], Awaitable[Any]]


async def initialize(ctx: RequestContext, params: v2.InitializeParams) -> v2.InitializeResult:
    capabilities = params.capabilities or {}
    ctx.peer.handshake.done(experimental_api=capabilities.get("experimentalApi") is True, opted_out=_opted_out(capabilities))
    for warning in ctx.manager.config_warnings:  # what the config layers said at start-up, once per client
        ctx.after(configs.warning_notice(warning))
    client = params.client_info
    agent = (
        f"spindle/{PROTOCOL_VERSION} (spindle {SPINDLE_VERSION}; {platform.system()} {platform.release()}; "
        f"{platform.machine()}) ({client.name}; {client.version})"
    )
    return v2.InitializeResult(
        user_agent=agent, codex_home=str(ctx.manager.home),
        platform_family="windows" if os.name == "nt" else "unix", platform_os=platform.system().lower(),
    )


def _opted_out(capabilities: dict[str, Any]) -> frozenset[str]:
    """`optOutNotificationMethods`: exact method names, or null."""
    names = capabilities.get("optOutNotificationMethods")
    if names is None:
        return frozenset()
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RpcError(INVALID_PARAMS, "Invalid params for initialize: `$.capabilities.optOutNotificationMethods` must be an array of strings or null")
    return frozenset(names)


_EFFORTS = [
    v2models.ReasoningEffortOption(reasoning_effort="low", description="Fast responses with lighter reasoning"),
    v2models.ReasoningEffortOption(reasoning_effort="medium", description="Balances speed and reasoning depth"),
    v2models.ReasoningEffortOption(reasoning_effort="high", description="Greater reasoning depth for complex problems"),
]


async def model_list(ctx: RequestContext, params: v2models.ModelListParams) -> v2models.ModelListResult:
    model = ctx.manager.config.model
    info = v2models.ModelInfo(
        id=model, model=model, display_name=model, description=f"The configured model ({ctx.manager.config.model_provider})",
        hidden=False, is_default=True, default_reasoning_effort="medium", supported_reasoning_efforts=_EFFORTS,
    )
    return v2models.ModelListResult(data=[info])


async def permission_profile_list(ctx: RequestContext, params: v2perm.PermissionProfileListParams) -> v2perm.PermissionProfileListResult:
    """The profiles a thread may select, built-ins first (with `cwd`: its project layers too)."""
    config = ctx.manager.config
    if params.cwd is not None:
        config = await ctx.manager.resources.thread_config(params.cwd, {})
    profiles = list(load_profiles(config).profiles.values())
    if params.limit is not None and params.limit < 1:
        raise RpcError(INVALID_PARAMS, f"Invalid params: limit must be at least 1, got {params.limit}")
    try:
        start = int(params.cursor) if params.cursor is not None else 0
    except ValueError:
        start = -1
    if not 0 <= start <= len(profiles) or (params.cursor is not None and str(start) != params.cursor):
        raise RpcError(INVALID_PARAMS, f"Invalid params: cursor {params.cursor!r} is not one this server returned")
    end = len(profiles) if params.limit is None else start + params.limit
    page = [v2perm.PermissionProfileSummary(id=p.id, description=p.description, allowed=True) for p in profiles[start:end]]
    return v2perm.PermissionProfileListResult(data=page, next_cursor=str(end) if end < len(profiles) else None)


async def collaboration_mode_list(ctx: RequestContext, params: v2modes.CollaborationModeListParams) -> v2modes.CollaborationModeListResult:
    """The collaboration modes a turn may select (experimental), as Codex lists them."""
    ctx.peer.handshake.require_experimental("collaborationMode/list")
    return v2modes.CollaborationModeListResult(data=[
        v2modes.CollaborationModeMask(name=p.name, mode=p.mode, reasoning_effort=p.reasoning_effort) for p in PRESETS])


HANDLERS: dict[str, Handler] = {
    "initialize": initialize,
    "thread/start": threads.thread_start,
    "thread/resume": threads.thread_resume,
    "thread/fork": threads.thread_fork,
    "thread/read": threads.thread_read,
    "thread/list": threads.thread_list,
    "thread/loaded/list": threads.thread_loaded_list,
    "thread/archive": threads.thread_archive,
    "thread/unarchive": threads.thread_unarchive,
    "thread/unsubscribe": threads.thread_unsubscribe,
    "thread/name/set": threads.thread_name_set,
    "thread/rollback": threads.thread_rollback,
    "thread/revert": threads.thread_revert,
    "thread/compact/start": threads.thread_compact_start,
    "thread/shellCommand": commands.thread_shell_command,
    "thread/memoryMode/set": commands.thread_memory_mode_set,
    "thread/turns/list": history.thread_turns_list,
    "thread/items/list": history.thread_items_list,
    "thread/items/read": history.thread_items_read,
    "turn/start": turns.turn_start,
    "turn/steer": turns.turn_steer,
    "turn/interrupt": turns.turn_interrupt,
    "model/list": model_list,
    "permissionProfile/list": permission_profile_list,
    "config/read": configs.config_read,
    "config/value/write": configs.config_value_write,
    "config/batchWrite": configs.config_batch_write,
    "configRequirements/read": configs.config_requirements_read,
    "mcpServerStatus/list": mcp.mcp_server_status_list,
    "config/mcpServer/reload": mcp.config_mcp_server_reload,
    "collaborationMode/list": collaboration_mode_list,
    "review/start": reviews.review_start,
    "account/read": accounts.account_read,
    "account/bedrock/checkGovCloudRequirements": accounts.bedrock_check_gov_cloud,
    "skills/list": workspace.skills_list,
    "hooks/list": workspace.hooks_list,
    "plugin/installed": workspace.plugin_installed,
    "thread/subscribe": subscriptions.thread_subscribe,
}
