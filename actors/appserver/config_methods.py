"""Handlers of the config methods: `config/read`, `config/value/write`, `config/batchWrite`,
`configRequirements/read`; and the `configWarning` notices a client gets after `initialize`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio

from spindle.actors.runtime import ConfigError
from spindle.actors.runtime.config_layers import LayerStack, session_layer_warnings
from spindle.actors.runtime.config_write import (
    ConfigWriteError,
    Edit,
    WriteOutcome,
    write_user_config,
)
from spindle.protocol.appserver import v2config as wire
from spindle.protocol.appserver.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, RpcError
from spindle.protocol.config import ConfigLayer, ConfigWarning

from .context import RequestContext
from .notify import Notice

SCHEMA_KEYS = (
    "model", "review_model", "model_provider", "model_context_window", "model_auto_compact_token_limit",
    "approval_policy", "sandbox_mode", "sandbox_workspace_write", "instructions", "developer_instructions",
    "compact_prompt", "model_reasoning_effort", "model_reasoning_summary", "model_verbosity", "service_tier",
    "tools", "web_search", "profile",
)
"""Keys the v2 `Config` declares: `null` when no layer sets them, as Codex answers."""
ENUMS: dict[str, frozenset[str]] = {
    "approval_policy": frozenset({"untrusted", "on-request", "never"}),
    "sandbox_mode": frozenset({"read-only", "workspace-write", "danger-full-access"}),
    "model_reasoning_summary": frozenset({"auto", "concise", "detailed", "none"}),
    "model_verbosity": frozenset({"low", "medium", "high"}),
    "web_search": frozenset({"disabled", "cached", "indexed", "live"}),
}
INTS = ("model_context_window", "model_auto_compact_token_limit")
STRINGS = ("model", "review_model", "model_provider", "instructions", "developer_instructions", "compact_prompt",
           "service_tier", "profile")
WORKSPACE_WRITE = {"exclude_slash_tmp": bool, "exclude_tmpdir_env_var": bool, "network_access": bool, "writable_roots": list}
WEB_SEARCH_SIZES = frozenset({"low", "medium", "high"})
UNINTERPRETED = ("analytics", "approvals_reviewer", "apps", "browser_use", "client_search_provider", "computer_use",
                 "forced_chatgpt_workspace_id", "forced_login_method", "model_auto_compact_token_limit_scope")
"""Keys v2's `Config` types that Spindle does not use: `null`, since a value it has not checked
could break a client's decoding of the whole answer."""


def config_view(merged: dict[str, Any]) -> dict[str, Any]:
    """The effective config as the v2 `Config` object, every value valid for its schema (a client
    such as the TUI fails to decode anything else): a value the schema does not allow is `null`;
    Spindle's `on-failure` approval policy, which v2 no longer has, reads as `on-request`."""
    out: dict[str, Any] = {key: None for key in SCHEMA_KEYS}
    out.update({"profiles": {}, "project_root_markers": [".git"], "mcp_servers": {}})
    out.update(merged)
    out.pop("codex_home", None)
    for key in UNINTERPRETED:
        out[key] = None
    if not isinstance(out.get("desktop"), dict):
        out["desktop"] = None
    for key, allowed in ENUMS.items():
        value = out.get(key)
        if key == "approval_policy" and value == "on-failure":
            out[key] = "on-request"
        elif value is not None and value not in allowed and not (key == "approval_policy" and isinstance(value, dict)):
            out[key] = None
    for key in INTS:
        if not isinstance(out.get(key), int) or isinstance(out.get(key), bool):
            out[key] = None
    for key in STRINGS:
        if not isinstance(out.get(key), str):
            out[key] = None
    out["tools"] = _tools(out.get("tools"))
    workspace = out.get("sandbox_workspace_write")
    out["sandbox_workspace_write"] = {
        k: v for k, v in workspace.items() if k not in WORKSPACE_WRITE or isinstance(v, WORKSPACE_WRITE[k])
    } if isinstance(workspace, dict) else None
    effort = out.get("model_reasoning_effort")
    if not (isinstance(effort, str) and effort):
        out["model_reasoning_effort"] = None
    return out


def _tools(tools: Any) -> dict[str, Any] | None:
    """`tools` as v2's `ToolsV2`: Codex's older `web_search = true` is not a `WebSearchToolConfig`."""
    if not isinstance(tools, dict):
        return None
    out = dict(tools)
    search = out.get("web_search")
    if search is not None:
        if not isinstance(search, dict):
            del out["web_search"]
        else:
            out["web_search"] = {k: v for k, v in search.items() if (
                (k == "allowed_domains" and isinstance(v, list) and all(isinstance(d, str) for d in v))
                or (k == "context_size" and v in WEB_SEARCH_SIZES)
                or (k == "location" and isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
                    and set(v) <= {"city", "country", "region", "timezone"}))}
    return out


def layer_name(layer: ConfigLayer) -> dict[str, Any]:
    match layer.kind:
        case "user":
            return {"type": "user", "file": layer.source, "profile": layer.profile}
        case "project":
            return {"type": "project", "dotCodexFolder": layer.folder}
        case "system":
            return {"type": "system", "file": layer.source}
    return {"type": "sessionFlags"}


def metadata(layer: ConfigLayer) -> wire.ConfigLayerMetadata:
    return wire.ConfigLayerMetadata(name=layer_name(layer), version=layer.version)


def read_result(stack: LayerStack, include_layers: bool) -> wire.ConfigReadResult:
    """`config/read`'s answer: layers highest precedence first, disabled ones included; the
    runtime's own base `Config` (an embedder's) is not a Codex layer and is not listed."""
    listed = [layer for layer in reversed(stack.layers) if layer.kind != "defaults"]
    return wire.ConfigReadResult(
        config=config_view(stack.merged()),
        origins={path: metadata(layer) for path, layer in stack.origins().items() if layer.kind != "defaults"},
        layers=[
            wire.ConfigLayerOut(name=layer_name(layer), version=layer.version, config=layer.data,
                                disabled_reason=layer.disabled_reason)
            for layer in listed
        ] if include_layers else None,
    )


async def config_read(ctx: RequestContext, params: wire.ConfigReadParams) -> wire.ConfigReadResult:
    try:  # a relative cwd is resolved against the server's own, in the worker thread
        stack = await ctx.manager.resources.load_stack(params.cwd or None)
    except ConfigError as exc:  # the config on disk is broken: not the request's fault
        raise RpcError(INTERNAL_ERROR, f"failed to load configuration: {exc}") from None
    return await trio.to_thread.run_sync(read_result, stack, params.include_layers)  # big configs take a while


async def config_value_write(ctx: RequestContext, params: wire.ConfigValueWriteParams) -> wire.ConfigWriteResult:
    edits = [(params.key_path, params.value, params.merge_strategy)]
    return await _write(ctx, edits, params.file_path, params.expected_version, reload=False)


async def config_batch_write(ctx: RequestContext, params: wire.ConfigBatchWriteParams) -> wire.ConfigWriteResult:
    edits = [(edit.key_path, edit.value, edit.merge_strategy) for edit in params.edits]
    return await _write(ctx, edits, params.file_path, params.expected_version, reload=params.reload_user_config)


async def _write(
    ctx: RequestContext, edits: Sequence[tuple[str, Any, str]], file_path: str | None, expected: str | None, *, reload: bool
) -> wire.ConfigWriteResult:
    try:
        parsed = [Edit.parse(*edit) for edit in edits]
        outcome: WriteOutcome = await trio.to_thread.run_sync(
            lambda: write_user_config(ctx.manager.resources.source, parsed, expected_version=expected, file_path=file_path),
            limiter=ctx.manager.resources.config_writes,
        )
    except ConfigWriteError as exc:
        raise RpcError(INVALID_REQUEST, exc.message, {"config_write_error_code": exc.code}) from None
    for warning in ctx.manager.resources.note_warnings(outcome.stack):
        ctx.after(warning_notice(warning))
    if reload:  # best effort: the write stands; what could not be reloaded becomes a warning
        for problem in await ctx.manager.reload_user_config(strict=False):
            ctx.after(warning_notice(ConfigWarning(summary=problem, path=str(outcome.path))))
    over = outcome.overridden
    return wire.ConfigWriteResult(
        status="ok" if over is None else "okOverridden", version=outcome.version, file_path=str(outcome.path),
        overridden_metadata=None if over is None else wire.OverriddenMetadata(
            message=over.message, overriding_layer=metadata(over.layer), effective_value=over.effective_value),
    )


async def config_requirements_read(
    ctx: RequestContext, params: wire.ConfigRequirementsReadParams
) -> wire.ConfigRequirementsReadResult:
    """No `requirements.toml` is modelled: no requirements, as Codex answers without one."""
    return wire.ConfigRequirementsReadResult(requirements=None, supports_independent_speed_modes=True)


def warnings_since(ctx: RequestContext, seen: int, thread_config: Mapping[str, Any] | None = None) -> None:
    """Send this client, after the answer, the warnings of the thread's own `config` map (an
    unknown key, say) and the shared ones met since there were `seen` (a file changed meanwhile)."""
    if thread_config:
        for warning in session_layer_warnings(thread_config):
            ctx.after(warning_notice(warning))
    for warning in ctx.manager.config_warnings[seen:]:
        ctx.after(warning_notice(warning))


def warning_notice(warning: ConfigWarning) -> Notice:
    return ("configWarning", wire.ConfigWarningNotice(summary=warning.summary, details=warning.details, path=warning.path))
