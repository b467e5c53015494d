"""Mapping between Spindle's own types (ops, events, items) and the app-server v2 wire types."""

from __future__ import annotations

from msgspec import UNSET

from ..events import EnteredReviewModeEvent, ExitedReviewModeEvent, TokenUsage, TokenUsageInfo
from ..items import (
    AgentMessageItem,
    CommandExecutionItem,
    ContextCompactionItem,
    DynamicToolCallItem,
    DynamicToolSpec,
    FileChangeItem,
    ImageInput,
    LocalImageInput,
    McpToolCallItem,
    ReasoningItem,
    TextInput,
    TurnItem,
    UserInput,
    UserMessageItem,
)
from ..review import render_review_output
from ..settings import Approval, CollaborationMode, SandboxMode, SettingsUpdate, ThreadSettings
from . import v2, v2items, v2modes, v2tools, v2usage

SANDBOX_TO_V2: dict[str, v2.SandboxPolicyType] = {
    "read-only": "readOnly",
    "workspace-write": "workspaceWrite",
    "danger-full-access": "dangerFullAccess",
}
SANDBOX_FROM_V2: dict[str, SandboxMode] = {wire: mode for mode, wire in SANDBOX_TO_V2.items()}  # type: ignore[misc]

ERROR_INFO_TO_V2 = {
    "context_window_exceeded": "contextWindowExceeded",
    "usage_limit_exceeded": "usageLimitExceeded",
    "http_connection_failed": {"httpConnectionFailed": {"httpStatusCode": None}},
    "response_stream_disconnected": {"responseStreamDisconnected": {"httpStatusCode": None}},
    "response_too_many_failed_attempts": {"responseTooManyFailedAttempts": {"httpStatusCode": None}},
    "bad_request": "badRequest",
    "thread_rollback_failed": "threadRollbackFailed",
    "internal_server_error": "internalServerError",
    "unsupported_operation": "other",
    "other": "other",
}


class UnsupportedInput(ValueError):
    """A v2 value Spindle cannot act on; the message names it."""


def user_inputs(items: list[v2items.UserInputV2]) -> list[UserInput]:
    out: list[UserInput] = []
    for item in items:
        match item:
            case v2items.TextUserInput(text=text):
                out.append(TextInput(text=text))
            case v2items.ImageUserInput(url=url):
                out.append(ImageInput(image_url=url))
            case v2items.LocalImageUserInput(path=path):
                out.append(LocalImageInput(path=path))
    return out


def user_inputs_v2(items: list[UserInput]) -> list[v2items.UserInputV2]:
    out: list[v2items.UserInputV2] = []
    for item in items:
        match item:
            case TextInput(text=text):
                out.append(v2items.TextUserInput(text=text))
            case ImageInput(image_url=url):
                out.append(v2items.ImageUserInput(url=url))
            case LocalImageInput(path=path):
                out.append(v2items.LocalImageUserInput(path=path))
    return out


def thread_item(item: TurnItem) -> v2items.ThreadItem:
    match item:
        case UserMessageItem(id=item_id, content=content):
            return v2items.UserMessageThreadItem(id=item_id, content=user_inputs_v2(content))
        case AgentMessageItem(id=item_id):
            return v2items.AgentMessageThreadItem(id=item_id, text=item.text())
        case ReasoningItem(id=item_id, summary_text=summary):
            return v2items.ReasoningThreadItem(id=item_id, summary=list(summary))
        case CommandExecutionItem():
            return v2items.CommandExecutionThreadItem(
                id=item.id, command=item.command, cwd=item.cwd, status=item.status,
                aggregated_output=item.aggregated_output, exit_code=item.exit_code,
                duration_ms=item.duration_ms, source=item.source, process_id=item.process_id,
                command_actions=[{"type": "unknown", "command": action} for action in item.actions],
            )
        case McpToolCallItem():
            return v2items.McpToolCallThreadItem(
                id=item.id, server=item.server, tool=item.tool, arguments=item.arguments, status=item.status,
                result=item.result, error=v2items.McpToolCallError(message=item.error) if item.error is not None else None,
                duration_ms=item.duration_ms,
            )
        case FileChangeItem(id=item_id, changes=changes, status=status):
            return v2items.FileChangeThreadItem(id=item_id, status=status, changes=[
                v2items.FileUpdateChange(path=c.path, diff=c.diff, kind=v2items.PatchChangeKind(
                    type=c.kind, move_path=c.move_path if c.kind == "update" else UNSET))
                for c in changes])
        case DynamicToolCallItem():
            return v2items.DynamicToolCallThreadItem(
                id=item.id, tool=item.tool, namespace=item.namespace, arguments=item.arguments, status=item.status,
                content_items=item.content_items, success=item.success, duration_ms=item.duration_ms)
        case ContextCompactionItem(id=item_id):
            return v2items.ContextCompactionThreadItem(id=item_id)
    raise TypeError(f"not a turn item: {type(item).__name__}")


def review_item(msg: EnteredReviewModeEvent | ExitedReviewModeEvent, turn_id: str) -> v2items.ThreadItem:
    """The thread item of a review's start (what it reviews) or end (its rendered output), as
    Codex's app-server makes one of each event; the ids are the turn's, one per kind."""
    if isinstance(msg, EnteredReviewModeEvent):
        hint = msg.user_facing_hint or msg.target.hint()
        return v2items.EnteredReviewModeThreadItem(id=f"{turn_id}-review-entered", review=hint)
    return v2items.ExitedReviewModeThreadItem(id=f"{turn_id}-review-exited", review=render_review_output(msg.review_output))


class ConflictingParams(UnsupportedInput):
    """Two params that select the same thing in two ways (a profile and a legacy sandbox)."""


def thread_settings_update(params: v2.ThreadSettingsParams) -> SettingsUpdate:
    """What thread/start, thread/resume and thread/fork ask of the new thread's settings."""
    if params.permissions is not None and params.sandbox is not None:
        raise ConflictingParams("Invalid params: `permissions` cannot be combined with `sandbox`")
    return SettingsUpdate(
        model=params.model, provider_id=params.model_provider, cwd=params.cwd,
        approval_policy=approval_policy(params.approval_policy), sandbox_mode=params.sandbox,
        permissions=params.permissions, runtime_workspace_roots=_roots(params.runtime_workspace_roots),
        instructions=params.base_instructions,
    )


def turn_settings_update(params: v2.TurnStartParams) -> SettingsUpdate:
    """What turn/start asks of this turn's settings (and the later turns')."""
    if params.permissions is not None and params.sandbox_policy is not None:
        raise ConflictingParams("Invalid params: `permissions` cannot be combined with `sandboxPolicy`")
    roots = _roots(params.runtime_workspace_roots)
    legacy = _legacy_writable_roots(params.sandbox_policy)
    if legacy is not None:
        if roots is not None:
            raise ConflictingParams("Invalid params: `runtimeWorkspaceRoots` cannot be combined with `sandboxPolicy.writableRoots`")
        roots = legacy
    update = SettingsUpdate(
        model=params.model, cwd=params.cwd, approval_policy=approval_policy(params.approval_policy),
        sandbox_mode=sandbox_policy(params.sandbox_policy), permissions=params.permissions,
        runtime_workspace_roots=roots, effort=params.effort, summary=params.summary,
    )
    return update if params.collaboration_mode is None else update.then(mode_update(params.collaboration_mode))


def mode_update(mode: v2modes.CollaborationModeV2) -> SettingsUpdate:
    """A collaboration mode as settings: its kind and instructions (null: the mode's built-in
    ones), and its model and reasoning effort, which win over turn/start's own (a null effort
    keeps the one the turn would have)."""
    return SettingsUpdate(
        model=mode.settings.model or None, effort=mode.settings.reasoning_effort,
        collaboration_mode=CollaborationMode(mode=mode.mode, developer_instructions=mode.settings.developer_instructions),
    )


def collaboration_mode_v2(settings: ThreadSettings) -> v2modes.CollaborationModeV2:
    """A thread's collaboration mode as Codex answers it (the thread's model and effort in it)."""
    return v2modes.CollaborationModeV2(mode=settings.collaboration_mode.mode, settings=v2modes.ModeSettingsV2(
        model=settings.model, reasoning_effort=settings.effort,
        developer_instructions=settings.collaboration_mode.developer_instructions))


def _legacy_writable_roots(policy: v2.SandboxPolicyV2 | None) -> tuple[str, ...] | None:
    """A legacy `workspaceWrite.writableRoots` as runtime roots: the cwd (`.`, resolved against
    the turn's cwd) plus those, as Codex's legacy policy writes the cwd and its writable roots."""
    if policy is None or policy.type != "workspaceWrite" or policy.writable_roots is None:
        return None
    return (".", *policy.writable_roots)


def _roots(roots: list[str] | None) -> tuple[str, ...] | None:
    return tuple(roots) if roots is not None else None


def approval_policy(value: Approval | None) -> Approval | None:
    return value


def sandbox_policy(value: v2.SandboxPolicyV2 | None) -> SandboxMode | None:
    if value is None:
        return None
    try:
        return SANDBOX_FROM_V2[value.type]
    except KeyError:
        raise UnsupportedInput(f"sandbox policy {value.type!r} is not supported by Spindle") from None


def sandbox_out(mode: SandboxMode, *, writable_roots: list[str], network: bool, tmpdir_writable: bool,
                slash_tmp_writable: bool) -> v2.SandboxPolicyOut:
    """The legacy `sandbox` of a thread/* answer: its mode, and for workspace-write the writable
    roots other than the cwd and the tmp and network options."""
    match mode:
        case "danger-full-access":
            return v2.SandboxPolicyOut(type="dangerFullAccess")
        case "workspace-write":
            return v2.SandboxPolicyOut(
                type="workspaceWrite", writable_roots=writable_roots, network_access=network,
                exclude_tmpdir_env_var=not tmpdir_writable, exclude_slash_tmp=not slash_tmp_writable)
    return v2.SandboxPolicyOut(type="readOnly", network_access=network)


def turn_error(message: str, info: str | None) -> v2.TurnError:
    return v2.TurnError(message=message, codex_error_info=ERROR_INFO_TO_V2.get(info or "", None))


def _breakdown(usage: TokenUsage) -> v2usage.TokenUsageBreakdown:
    return v2usage.TokenUsageBreakdown(
        total_tokens=usage.total_tokens, input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens, output_tokens=usage.output_tokens,
        reasoning_output_tokens=usage.reasoning_output_tokens,
    )


def token_usage(info: TokenUsageInfo) -> v2usage.ThreadTokenUsage:
    return v2usage.ThreadTokenUsage(
        total=_breakdown(info.total_token_usage), last=_breakdown(info.last_token_usage),
        model_context_window=info.model_context_window,
    )


def dynamic_tool_specs(specs: list[v2tools.DynamicToolSpecV2]) -> list[DynamicToolSpec]:
    """The runtime's specs of `thread/start`'s `dynamicTools` (a namespace's tools carry its name)."""
    out = []
    for spec in specs:
        members = [(None, spec)] if isinstance(spec, v2tools.FunctionToolSpec) else [(spec.name, tool) for tool in spec.tools]
        out += [DynamicToolSpec(name=tool.name, description=tool.description, input_schema=tool.input_schema,
                                namespace=namespace, defer_loading=tool.defer_loading) for namespace, tool in members]
    return out

