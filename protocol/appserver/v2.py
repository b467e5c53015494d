"""App-server v2 wire types: params, results and notification payloads, camelCase on the wire.

Only the fields Spindle reads or writes are declared. Inbound params ignore unknown fields (a newer
client may send more); outbound objects carry every field the schema marks required, with `null`
where Spindle has no value (`projectId`, `path` of an ephemeral thread, ...).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ..settings import Approval, MemoryMode, SandboxMode
from .v2base import Inbound as Inbound
from .v2base import Wire as Wire
from .v2items import ThreadItem, UserInputV2
from .v2modes import CollaborationModeV2
from .v2tools import DynamicToolSpecV2

# --- shared shapes ----------------------------------------------------------


SandboxPolicyType = Literal["readOnly", "workspaceWrite", "dangerFullAccess", "externalSandbox"]


class SandboxPolicyV2(Inbound, kw_only=True, frozen=True):
    """turn/start's legacy `sandboxPolicy` (`networkAccess` is a string for `externalSandbox`)."""

    type: SandboxPolicyType
    network_access: Any = None
    writable_roots: list[str] | None = None
    exclude_tmpdir_env_var: bool | None = None
    exclude_slash_tmp: bool | None = None


class SandboxPolicyOut(Wire, kw_only=True):
    """The legacy `SandboxPolicy` projection: `readOnly {networkAccess}`, `workspaceWrite
    {writableRoots, networkAccess, excludeTmpdirEnvVar, excludeSlashTmp}`, `dangerFullAccess`."""

    type: SandboxPolicyType
    writable_roots: list[str] | UnsetType = UNSET
    network_access: bool | UnsetType = UNSET
    exclude_tmpdir_env_var: bool | UnsetType = UNSET
    exclude_slash_tmp: bool | UnsetType = UNSET


class ActivePermissionProfile(Wire, kw_only=True):
    """The permission profile a thread selected by id (`extends`: its direct parent)."""

    id: str
    extends: str | None = None


class ThreadStatus(Wire, kw_only=True):
    type: Literal["notLoaded", "idle", "systemError", "active"]
    active_flags: list[str] | UnsetType = UNSET


IDLE = ThreadStatus(type="idle")
NOT_LOADED = ThreadStatus(type="notLoaded")
SYSTEM_ERROR = ThreadStatus(type="systemError")


def active_status(waiting_on_approval: bool = False, waiting_on_user_input: bool = False) -> ThreadStatus:
    flags = ["waitingOnApproval"] * waiting_on_approval + ["waitingOnUserInput"] * waiting_on_user_input
    return ThreadStatus(type="active", active_flags=flags)


# --- threads and turns ------------------------------------------------------

TurnStatus = Literal["completed", "interrupted", "failed", "inProgress"]


class TurnError(Wire, kw_only=True):
    message: str
    codex_error_info: Any = None
    additional_details: str | None = None


class Turn(Wire, kw_only=True):
    id: str
    items: list[ThreadItem] = msgspec.field(default_factory=list)
    status: TurnStatus = "inProgress"
    error: TurnError | None = None
    items_view: Literal["notLoaded", "summary", "full"] = "full"
    started_at: int | None = None
    completed_at: int | None = None
    duration_ms: int | None = None


class Thread(Wire, kw_only=True):
    id: str
    session_id: str
    forked_from_id: str | None
    preview: str
    ephemeral: bool
    model_provider: str
    model: str | None
    created_at: int
    updated_at: int
    status: ThreadStatus
    path: str | None
    cwd: str
    cli_version: str
    source: str = "appServer"
    name: str | None = None
    project_id: str | None = None
    parent_thread_id: str | None = None
    agent_nickname: str | None = None
    agent_role: str | None = None
    git_info: Any = None
    turns: list[Turn] = msgspec.field(default_factory=list)
    recency_at: int | None = None
    """What the `recency_at` sort orders by: Spindle keeps no separate recency, so its update time."""

    def __post_init__(self) -> None:
        if self.recency_at is None:
            self.recency_at = self.updated_at


# --- params -----------------------------------------------------------------


class InitializeClientInfo(Inbound, kw_only=True, frozen=True):
    name: str
    version: str
    title: str | None = None


class InitializeParams(Inbound, kw_only=True, frozen=True):
    client_info: InitializeClientInfo
    capabilities: dict[str, Any] | None = None


class ThreadSettingsParams(Inbound, kw_only=True, frozen=True):
    """The settings thread/start, thread/resume and thread/fork share."""

    model: str | None = None
    model_provider: str | None = None
    cwd: str | None = None
    approval_policy: Approval | None = None
    sandbox: SandboxMode | None = None
    permissions: str | None = None
    """Experimental: a permission profile by id (not with `sandbox`)."""
    runtime_workspace_roots: list[str] | None = None
    """Experimental: replaces the thread's runtime workspace roots (relative: against the cwd)."""
    base_instructions: str | None = None
    developer_instructions: str | None = None
    config: dict[str, Any] | None = None


class ThreadStartParams(ThreadSettingsParams, kw_only=True, frozen=True):
    ephemeral: bool | None = None
    dynamic_tools: list[DynamicToolSpecV2] | None = None
    persist_now: bool | None = None
    """Spindle (experimental): write the rollout now, so the id is durable before the first turn."""


class ThreadResumeParams(ThreadSettingsParams, kw_only=True, frozen=True):
    thread_id: str
    path: str | None = None
    exclude_turns: bool = False
    handoff: bool | None = None
    """Spindle (experimental): ask the Spindle process that writes the thread to let go of it."""


class ThreadForkParams(ThreadSettingsParams, kw_only=True, frozen=True):
    thread_id: str
    path: str | None = None
    ephemeral: bool = False
    exclude_turns: bool = False
    last_turn_id: str | None = None


class ThreadIdParams(Inbound, kw_only=True, frozen=True):
    """thread/archive, thread/unarchive, thread/unsubscribe, thread/compact/start."""

    thread_id: str


class ThreadReadParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    include_turns: bool = False


class ThreadListParams(Inbound, kw_only=True, frozen=True):
    """Codex 0.171's thread/list. Also accepted and ignored (undeclared, so any value passes):
    ancestorThreadId, parentThreadId, attachedToThreadId, includeAttachedThreads, projectId,
    currentAccountOnly. Sort keys and source kinds are checked by the store's query."""

    cursor: str | None = None
    limit: int | None = None
    archived: bool | None = None
    sort_key: str | None = None
    sort_direction: str | None = None
    search_term: str | None = None
    cwd: str | list[str] | None = None
    model_providers: list[str] | None = None
    source_kinds: list[str] | None = None
    included_thread_ids: list[str] | None = None
    excluded_thread_ids: list[str] | None = None
    use_state_db_only: bool | None = None
    originators: list[str] | None = None
    section_id: str | None | UnsetType = UNSET
    """A section's threads; null: the unsectioned ones; absent: all."""


class ThreadLoadedListParams(Inbound, kw_only=True, frozen=True):
    cursor: str | None = None
    limit: int | None = None


class ThreadSetNameParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    name: str


class ThreadRollbackParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    num_turns: int


class ThreadShellCommandParams(Inbound, kw_only=True, frozen=True):
    """thread/shellCommand: `command` runs through the thread's shell, unsandboxed; `timeoutMs`
    (null: one hour; 0: times out at once; negative: refused) bounds it."""

    thread_id: str
    command: str
    timeout_ms: int | None = None


class ThreadMemoryModeSetParams(Inbound, kw_only=True, frozen=True):
    """thread/memoryMode/set (experimental)."""

    thread_id: str
    mode: MemoryMode


class ThreadRevertParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    before_turn_id: str


class TurnStartParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    input: list[UserInputV2]
    cwd: str | None = None
    model: str | None = None
    approval_policy: Approval | None = None
    sandbox_policy: SandboxPolicyV2 | None = None
    permissions: str | None = None
    """Experimental: a permission profile by id for this turn and later ones (not with `sandboxPolicy`)."""
    runtime_workspace_roots: list[str] | None = None
    """Experimental: replaces the thread's runtime workspace roots, for this turn and later ones."""
    effort: str | None = None
    summary: str | None = None
    collaboration_mode: CollaborationModeV2 | None = None
    """Experimental: a collaboration mode for this turn and later ones (its settings win)."""


class TurnSteerParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    input: list[UserInputV2]
    expected_turn_id: str


class TurnInterruptParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    turn_id: str


# --- results ----------------------------------------------------------------


class InitializeResult(Wire, kw_only=True):
    user_agent: str
    codex_home: str
    platform_family: str
    platform_os: str


class ThreadSessionResult(Wire, kw_only=True):
    """thread/start, thread/resume and thread/fork answer with the thread and its settings."""

    thread: Thread
    model: str
    model_provider: str
    cwd: str
    approval_policy: Approval
    approvals_reviewer: str
    sandbox: SandboxPolicyOut
    runtime_workspace_roots: list[str] = msgspec.field(default_factory=list)
    active_permission_profile: ActivePermissionProfile | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    instruction_sources: list[str] = msgspec.field(default_factory=list)
    disabled_plugin_ids: list[str] = msgspec.field(default_factory=list)
    collaboration_mode: CollaborationModeV2 | UnsetType = UNSET
    """The thread's mode, in thread/resume's answer only (as in Codex)."""


class ThreadResult(Wire, kw_only=True):
    thread: Thread


class ThreadListResult(Wire, kw_only=True):
    data: list[Thread]
    next_cursor: str | None = None
    backwards_cursor: str | None = None


class ThreadLoadedListResult(Wire, kw_only=True):
    data: list[str]
    next_cursor: str | None = None


class UnsubscribeResult(Wire, kw_only=True):
    status: Literal["unsubscribed", "notSubscribed", "notLoaded"]


class TurnResult(Wire, kw_only=True):
    turn: Turn


class TurnSteerResult(Wire, kw_only=True):
    turn_id: str


class EmptyResult(Wire, kw_only=True):
    pass


# --- notification params ----------------------------------------------------


class ThreadStarted(Wire, kw_only=True):
    thread: Thread


class ThreadStatusChanged(Wire, kw_only=True):
    thread_id: str
    status: ThreadStatus


class ThreadIdNotice(Wire, kw_only=True):
    """thread/archived, thread/unarchived, thread/closed, thread/reverted."""

    thread_id: str


class ThreadNameUpdated(Wire, kw_only=True):
    thread_id: str
    thread_name: str | None


class TurnNotice(Wire, kw_only=True):
    """turn/started and turn/completed."""

    thread_id: str
    turn: Turn


class ContextCompacted(Wire, kw_only=True):
    """thread/compacted (deprecated in Codex for the `contextCompaction` item, still sent)."""

    thread_id: str
    turn_id: str


class ItemStarted(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    item: ThreadItem
    started_at_ms: int


class ItemCompleted(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    item: ThreadItem
    completed_at_ms: int


class TurnDiffUpdated(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    diff: str


class AgentMessageDelta(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    item_id: str
    delta: str


class CommandExecutionOutputDelta(Wire, kw_only=True):
    """`item/commandExecution/outputDelta`: a chunk of a running command's output."""

    thread_id: str
    turn_id: str
    item_id: str
    delta: str


class ErrorNotice(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    error: TurnError
    will_retry: bool


class WarningNotice(Wire, kw_only=True):
    message: str
    thread_id: str | None = None
