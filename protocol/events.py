"""Events: `Event{id, msg}` and the `EventMsg` union, one struct per message."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .items import ImageInput, LocalImageInput, TextInput, TurnItem, UserInput
from .mcp import McpStartupStatus
from .questions import UserInputQuestion
from .review import ReviewOutput, ReviewTarget
from .sandbox import RequestedPermissions
from .settings import Approval, ReviewDecision, SandboxMode


class TokenUsage(msgspec.Struct, kw_only=True, frozen=True):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_output_tokens=self.reasoning_output_tokens + other.reasoning_output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class TokenUsageInfo(msgspec.Struct, kw_only=True, frozen=True):
    total_token_usage: TokenUsage
    last_token_usage: TokenUsage
    model_context_window: int | None = None


class EventMsgBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """Something a thread reports to its subscribers."""


class SessionConfiguredEvent(EventMsgBase, tag="session_configured", kw_only=True, frozen=True):
    """The thread is ready; always its first event."""

    session_id: str
    model: str
    model_provider_id: str
    cwd: str
    approval_policy: Approval
    sandbox_policy: SandboxMode
    rollout_path: str | None = None
    forked_from_id: str | None = None


class TaskStartedEvent(EventMsgBase, tag="task_started", kw_only=True, frozen=True):
    """A turn started."""

    turn_id: str
    model_context_window: int | None = None


class TaskCompleteEvent(EventMsgBase, tag="task_complete", kw_only=True, frozen=True):
    """A turn ran to its end (successfully, or after an `error` event)."""

    turn_id: str
    last_agent_message: str | None = None


class TurnAbortedEvent(EventMsgBase, tag="turn_aborted", kw_only=True, frozen=True):
    """A turn was cut short."""

    turn_id: str | None = None
    reason: Literal["interrupted", "replaced", "review_ended"] = "interrupted"


class AgentMessageDeltaEvent(EventMsgBase, tag="agent_message_delta", kw_only=True, frozen=True):
    """A fragment of the assistant message being streamed."""

    delta: str
    item_id: str = ""


class ExecCommandOutputDeltaEvent(EventMsgBase, tag="exec_command_output_delta", kw_only=True, frozen=True):
    """A chunk of a running command's merged stdout and stderr, as text (live only)."""

    item_id: str
    delta: str


class AgentMessageEvent(EventMsgBase, tag="agent_message", kw_only=True, frozen=True):
    """A complete assistant message."""

    message: str


class UserMessageEvent(EventMsgBase, tag="user_message", kw_only=True, frozen=True):
    """A user's input as it joined a turn: its text, image URLs and local image paths. Codex's
    readers rebuild a thread's user turns from these (with `agent_message` for the answers)."""

    message: str
    images: list[str] = msgspec.field(default_factory=list)
    local_images: list[str] = msgspec.field(default_factory=list)
    text_elements: list[Any] = msgspec.field(default_factory=list)


def user_message_event(items: list[UserInput]) -> UserMessageEvent:
    """The `user_message` event of one user input: texts joined by newlines, then its images."""
    return UserMessageEvent(
        message="\n".join(item.text for item in items if isinstance(item, TextInput)),
        images=[item.image_url for item in items if isinstance(item, ImageInput)],
        local_images=[item.path for item in items if isinstance(item, LocalImageInput)],
    )


class ItemStartedEvent(EventMsgBase, tag="item_started", kw_only=True, frozen=True):
    thread_id: str
    turn_id: str
    item: TurnItem


class ItemCompletedEvent(EventMsgBase, tag="item_completed", kw_only=True, frozen=True):
    thread_id: str
    turn_id: str
    item: TurnItem


class TokenCountEvent(EventMsgBase, tag="token_count", kw_only=True, frozen=True):
    """Token usage after a model response."""

    info: TokenUsageInfo | None = None


CodexErrorInfo = Literal[
    "context_window_exceeded",
    "usage_limit_exceeded",
    "http_connection_failed",
    "response_stream_disconnected",
    "response_too_many_failed_attempts",
    "bad_request",
    "thread_rollback_failed",
    "unsupported_operation",
    "internal_server_error",
    "other",
]


class TurnDiffEvent(EventMsgBase, tag="turn_diff", kw_only=True, frozen=True):
    """The turn's net file changes so far, as one unified diff, after a patch changed them (live only)."""

    turn_id: str
    unified_diff: str


class ErrorEvent(EventMsgBase, tag="error", kw_only=True, frozen=True):
    """Something failed; `message` says what and where."""

    message: str
    codex_error_info: CodexErrorInfo | None = None
    turn_id: str | None = None


class StreamErrorEvent(EventMsgBase, tag="stream_error", kw_only=True, frozen=True):
    """The model stream failed and will be retried."""

    message: str
    codex_error_info: CodexErrorInfo | None = None
    additional_details: str | None = None


class WarningEvent(EventMsgBase, tag="warning", kw_only=True, frozen=True):
    message: str


class ThreadRolledBackEvent(EventMsgBase, tag="thread_rolled_back", kw_only=True, frozen=True):
    num_turns: int


class ContextCompactedEvent(EventMsgBase, tag="context_compacted", kw_only=True, frozen=True):
    """The history was compacted (Codex's legacy event, after the `ContextCompaction` item)."""


class McpStartupUpdateEvent(EventMsgBase, tag="mcp_startup_update", kw_only=True, frozen=True):
    """An MCP server of this thread changed its start-up status (live only, never persisted)."""

    server: str
    status: McpStartupStatus
    error: str | None = None


class ShutdownCompleteEvent(EventMsgBase, tag="shutdown_complete", kw_only=True, frozen=True):
    """The thread has stopped; no event follows."""


class EnteredReviewModeEvent(EventMsgBase, tag="entered_review_mode", kw_only=True, frozen=True):
    """A review turn began: what it reviews (Codex's payload: the review request)."""

    target: ReviewTarget
    user_facing_hint: str | None = None


class ExitedReviewModeEvent(EventMsgBase, tag="exited_review_mode", kw_only=True, frozen=True):
    """A review turn ended: the reviewer's output, None when it was interrupted or failed."""

    review_output: ReviewOutput | None = None


class FileChangeBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """One file of a patch, as an approval request shows it (Codex's `FileChange`)."""


class AddChange(FileChangeBase, tag="add", kw_only=True, frozen=True):
    content: str


class DeleteChange(FileChangeBase, tag="delete", kw_only=True, frozen=True):
    content: str


class UpdateChange(FileChangeBase, tag="update", kw_only=True, frozen=True):
    unified_diff: str
    move_path: str | None = None


FileChange = AddChange | DeleteChange | UpdateChange


class ExecApprovalRequestEvent(EventMsgBase, tag="exec_approval_request", kw_only=True, frozen=True):
    """The turn waits for the user to approve running `command` (answered by `exec_approval`)."""

    call_id: str
    turn_id: str
    command: list[str]
    cwd: str
    reason: str | None = None
    retry: bool = False
    """Asked after the command already ran once (in the sandbox): a restart does not ask it
    again, since that would run the command twice."""


class ApplyPatchApprovalRequestEvent(EventMsgBase, tag="apply_patch_approval_request", kw_only=True, frozen=True):
    """The turn waits for the user to approve a patch (answered by `patch_approval`)."""

    call_id: str
    turn_id: str
    changes: dict[str, FileChange]
    reason: str | None = None
    grant_root: str | None = None


class ApprovalResolvedEvent(EventMsgBase, tag="approval_resolved", kw_only=True, frozen=True):
    """The client request `call_id` (an approval, a dynamic tool call, questions) is over: answered (an
    approval with `decision`), or cleared (`decision` None) because its turn ended or was
    interrupted. Clients dismiss it."""

    call_id: str
    decision: ReviewDecision | None = None
    session_key: str | None = None
    """With `approved_for_session`: what the same request is known by, as canonical JSON (kept in
    the rollout, so a resumed thread does not ask again)."""


ApprovalRequestEvent = ExecApprovalRequestEvent | ApplyPatchApprovalRequestEvent


class DynamicToolCallRequestEvent(EventMsgBase, tag="dynamic_tool_call_request", kw_only=True, frozen=True):
    """The turn waits for the client that registered tool `tool` to run it (answered by
    `dynamic_tool_response`)."""

    call_id: str
    turn_id: str
    tool: str
    namespace: str | None = None
    arguments: Any = None


class PermissionsRequestEvent(EventMsgBase, tag="request_permissions", kw_only=True, frozen=True):
    """The turn waits for the user to grant the extra access the model asked for (answered by
    `request_permissions_response`)."""

    call_id: str
    turn_id: str
    cwd: str
    permissions: RequestedPermissions
    reason: str | None = None


class RequestUserInputEvent(EventMsgBase, tag="request_user_input", kw_only=True, frozen=True):
    """The turn waits for the user to answer the model's `questions` (its `request_user_input`
    call `call_id`; answered by `user_input_answer`)."""

    call_id: str
    turn_id: str
    questions: list[UserInputQuestion]


ClientRequestEvent = ApprovalRequestEvent | DynamicToolCallRequestEvent | PermissionsRequestEvent | RequestUserInputEvent
"""What a turn can wait on a client for."""


EventMsg = (
    SessionConfiguredEvent
    | TaskStartedEvent
    | TaskCompleteEvent
    | TurnAbortedEvent
    | AgentMessageDeltaEvent
    | ExecCommandOutputDeltaEvent
    | AgentMessageEvent
    | UserMessageEvent
    | ItemStartedEvent
    | ItemCompletedEvent
    | TokenCountEvent
    | TurnDiffEvent
    | ErrorEvent
    | StreamErrorEvent
    | WarningEvent
    | ThreadRolledBackEvent
    | ContextCompactedEvent
    | McpStartupUpdateEvent
    | ShutdownCompleteEvent
    | ExecApprovalRequestEvent
    | ApplyPatchApprovalRequestEvent
    | ApprovalResolvedEvent
    | DynamicToolCallRequestEvent
    | PermissionsRequestEvent
    | RequestUserInputEvent
    | EnteredReviewModeEvent
    | ExitedReviewModeEvent
)


class Event(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One event, carrying the id of the submission that caused it."""

    id: str
    msg: EventMsg
    seq: int = 0
    """Its place in the thread's event stream, set when the thread publishes it: larger for each
    later event of the thread, across reloads of the thread (0: not published, a replayed status)."""
    at_ms: int = 0
    """When the thread published it, in Unix milliseconds (0: not published): every subscriber,
    and a replay later, tells the same time."""


LOSSY_EVENTS = (AgentMessageDeltaEvent, ExecCommandOutputDeltaEvent, TokenCountEvent)
"""Events a subscriber that lags may lose: streaming deltas (message and command output) and
token counts. Every other event (items, turns, status, errors, server requests) is lifecycle,
delivered in order."""


def is_lifecycle(event: Event) -> bool:
    return not isinstance(event.msg, LOSSY_EVENTS)
