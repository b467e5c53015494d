"""Submissions: `Submission{id, op}` and the `Op` union (snake_case `type` tags, as codex-rs)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .config import Config, McpServerConfig
from .items import UserInput
from .questions import UserInputResponse
from .review import ReviewRequest
from .sandbox import PermissionGrant
from .settings import MemoryMode, ReviewDecision, SettingsUpdate


class OpBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """An operation submitted to a thread."""


class UserInputOp(OpBase, tag="user_input", kw_only=True, frozen=True):
    """User input: steered into the active turn, or starts a turn when none is active.

    With `expected_turn_id` it is a steer only: refused unless that turn is the active one.
    """

    items: list[UserInput]
    expected_turn_id: str | None = None


class UserTurnOp(OpBase, tag="user_turn", kw_only=True, frozen=True):
    """User input, with settings that apply to this turn and the ones after it."""

    items: list[UserInput]
    settings: SettingsUpdate = msgspec.field(default_factory=SettingsUpdate)


class OverrideTurnContextOp(OpBase, tag="override_turn_context", kw_only=True, frozen=True):
    """Change the settings of later turns without starting one."""

    settings: SettingsUpdate


class InterruptOp(OpBase, tag="interrupt", kw_only=True, frozen=True):
    """Abort the active turn; it ends with `turn_aborted` (reason interrupted).

    With `turn_id` it is refused unless that turn is the active one.
    """

    turn_id: str | None = None


class ShutdownOp(OpBase, tag="shutdown", kw_only=True, frozen=True):
    """Abort the active turn, flush persistence, emit `shutdown_complete`, end the actor.

    `if_idle`: refuse (an `error` event, and the thread goes on) while a turn is running."""

    if_idle: bool = False


class CompactOp(OpBase, tag="compact", kw_only=True, frozen=True):
    """Summarise the history to free context window."""


class ReviewOp(OpBase, tag="review", kw_only=True, frozen=True):
    """Review code changes in a review turn; refused while a turn runs."""

    review_request: ReviewRequest


class ThreadRollbackOp(OpBase, tag="thread_rollback", kw_only=True, frozen=True):
    """Drop the last `num_turns` user turns from the history."""

    num_turns: Annotated[int, msgspec.Meta(ge=0)]


class ExecApprovalOp(OpBase, tag="exec_approval", kw_only=True, frozen=True):
    """A user's decision on a command approval request."""

    id: str
    decision: ReviewDecision
    turn_id: str | None = None


class PatchApprovalOp(OpBase, tag="patch_approval", kw_only=True, frozen=True):
    """A user's decision on a patch approval request."""

    id: str
    decision: ReviewDecision


class DynamicToolResponseOp(OpBase, tag="dynamic_tool_response", kw_only=True, frozen=True):
    """A client's result for a call of its dynamic tool `id` (the call id)."""

    id: str
    content_items: list[dict[str, Any]] = msgspec.field(default_factory=list)
    success: bool = True


class RequestPermissionsResponseOp(OpBase, tag="request_permissions_response", kw_only=True, frozen=True):
    """The user's answer to the permissions request `id` (the call id): what is granted, and for
    how long. Anything not requested is ignored; anything left out is denied."""

    id: str
    response: PermissionGrant = msgspec.field(default_factory=PermissionGrant)
class UserInputAnswerOp(OpBase, tag="user_input_answer", kw_only=True, frozen=True):
    """The user's answers to the `request_user_input` request `id` (the call id). Spindle only:
    `error`, the client could not ask the user; the model is told why."""

    id: str
    response: UserInputResponse = msgspec.field(default_factory=UserInputResponse)
    error: str | None = None


class RunUserShellCommandOp(OpBase, tag="run_user_shell_command", kw_only=True, frozen=True):
    """Run a shell command the user typed (not the model), unsandboxed, in the thread's cwd: it
    joins the running turn, else runs as a turn of its own. `timeout_ms` (default one hour; 0
    times out at once) bounds it."""

    command: str
    timeout_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None


class SetThreadMemoryModeOp(OpBase, tag="set_thread_memory_mode", kw_only=True, frozen=True):
    """Whether this thread may feed memory generation: kept on the thread and in its rollout."""

    mode: MemoryMode


class RefreshMcpServersOp(OpBase, tag="refresh_mcp_servers", kw_only=True, frozen=True):
    """Make `mcp_servers` the thread's MCP server set: start new servers, stop removed ones,
    restart changed ones, keep the others running. Applied at once when the thread is idle, else
    when its running turn ends (a turn keeps the tools it started with)."""

    mcp_servers: dict[str, McpServerConfig] = msgspec.field(default_factory=dict)


class ReloadUserConfigOp(OpBase, tag="reload_user_config", kw_only=True, frozen=True):
    """Re-read the thread's disk config layers (for its cwd, its own layer kept) and apply the
    hot-reloadable settings. `config`, when given, is that config already rebuilt (a refresh that
    planned every thread first) for the thread's cwd `cwd`: the thread applies it without reading
    files, unless its cwd has changed since (then it rebuilds its own)."""

    config: Config | None = None
    cwd: str | None = None


Op = (
    UserInputOp
    | UserTurnOp
    | OverrideTurnContextOp
    | InterruptOp
    | ShutdownOp
    | CompactOp
    | ReviewOp
    | ThreadRollbackOp
    | ExecApprovalOp
    | PatchApprovalOp
    | DynamicToolResponseOp
    | RequestPermissionsResponseOp
    | UserInputAnswerOp
    | RunUserShellCommandOp
    | SetThreadMemoryModeOp
    | RefreshMcpServersOp
    | ReloadUserConfigOp
)


class Submission(msgspec.Struct, kw_only=True, frozen=True):
    """One op, with the id its events will carry."""

    id: str
    op: Op
