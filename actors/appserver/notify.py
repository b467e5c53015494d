"""Thread events to app-server v2 notifications and server requests: one `EventTranslator` per
subscribed thread (per connection)."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from spindle.protocol.appserver import v2, v2approvals, v2mcp, v2usage
from spindle.protocol.appserver.jsonrpc import now_ms
from spindle.protocol.appserver.v2map import review_item, thread_item, token_usage, turn_error
from spindle.protocol.events import (
    AgentMessageDeltaEvent,
    ApplyPatchApprovalRequestEvent,
    ApprovalResolvedEvent,
    ContextCompactedEvent,
    DynamicToolCallRequestEvent,
    EnteredReviewModeEvent,
    ErrorEvent,
    Event,
    ExecApprovalRequestEvent,
    ExecCommandOutputDeltaEvent,
    ExitedReviewModeEvent,
    ItemCompletedEvent,
    ItemStartedEvent,
    McpStartupUpdateEvent,
    PermissionsRequestEvent,
    RequestUserInputEvent,
    StreamErrorEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TokenCountEvent,
    TurnAbortedEvent,
    TurnDiffEvent,
    WarningEvent,
)

Notice = tuple[str, object]
"""(method, params) of one notification."""


@dataclass(frozen=True, slots=True)
class Ask:
    """A server request to make: `key` (the runtime's approval id) names it until it is `Settled`."""

    key: str
    method: str
    params: object


@dataclass(frozen=True, slots=True)
class Settled:
    """The request `key` is over (answered here or elsewhere, or cleared): the client dismisses it."""

    key: str
    announce: bool = True
    """Whether the client is told (`serverRequest/resolved`)."""


Output = Notice | Ask | Settled


class EventTranslator:
    """Follows one thread's event stream and says which notifications each event makes.

    It keeps the turn in progress (its id, items and error) so that deltas, token counts and
    `turn/completed` can name the turn and carry its items.
    """

    def __init__(self, thread_id: str, active_turn_id: str | None = None) -> None:
        """`active_turn_id`: the turn already running when the client subscribed (its deltas,
        token counts and `turn/completed` then name it, though its `task_started` came before)."""
        self.thread_id = thread_id
        self._turn: v2.Turn | None = v2.Turn(id=active_turn_id, started_at=int(time.time())) if active_turn_id else None
        self._started_ms = now_ms()
        self._at_ms = self._started_ms
        """The time of the event being translated (`Event.at_ms`)."""
        self._waiting: set[str] = set()
        """The approval requests waiting for an answer (the `waitingOnApproval` flag)."""
        self._questions: set[str] = set()
        """The model's questions waiting for the user (the `waitingOnUserInput` flag)."""
        self._calls: set[str] = set()
        """The dynamic tool calls waiting for their client."""

    def translate(self, event: Event) -> list[Output]:
        tid = self.thread_id
        at = self._at_ms = event.at_ms or now_ms()  # the thread's time: the same for every subscriber
        match event.msg:
            case TaskStartedEvent(turn_id=turn_id):
                self._turn = v2.Turn(id=turn_id, started_at=at // 1000)
                self._started_ms = at
                started = v2.Turn(id=turn_id, items_view="notLoaded", started_at=self._turn.started_at)
                return [
                    ("thread/status/changed", v2.ThreadStatusChanged(thread_id=tid, status=v2.active_status())),
                    ("turn/started", v2.TurnNotice(thread_id=tid, turn=started)),
                ]
            case ItemStartedEvent(turn_id=turn_id, item=item):
                return [("item/started", v2.ItemStarted(thread_id=tid, turn_id=turn_id, item=thread_item(item), started_at_ms=at))]
            case ItemCompletedEvent(turn_id=turn_id, item=item):
                wire = thread_item(item)
                if self._turn is not None and self._turn.id == turn_id:
                    self._turn.items.append(wire)
                return [("item/completed", v2.ItemCompleted(
                    thread_id=tid, turn_id=turn_id, item=wire, completed_at_ms=at))]
            case ContextCompactedEvent() if self._turn is not None:
                return [("thread/compacted", v2.ContextCompacted(thread_id=tid, turn_id=self._turn.id))]
            case EnteredReviewModeEvent() | ExitedReviewModeEvent() if self._turn is not None:
                review = review_item(event.msg, self._turn.id)
                self._turn.items.append(review)
                return [
                    ("item/started", v2.ItemStarted(thread_id=tid, turn_id=self._turn.id, item=review, started_at_ms=at)),
                    ("item/completed", v2.ItemCompleted(thread_id=tid, turn_id=self._turn.id, item=review, completed_at_ms=at)),
                ]
            case TurnDiffEvent(turn_id=turn_id, unified_diff=diff):
                return [("turn/diff/updated", v2.TurnDiffUpdated(thread_id=tid, turn_id=turn_id, diff=diff))]
            case AgentMessageDeltaEvent(delta=delta, item_id=item_id) if self._turn is not None:
                return [("item/agentMessage/delta", v2.AgentMessageDelta(thread_id=tid, turn_id=self._turn.id, item_id=item_id, delta=delta))]
            case ExecCommandOutputDeltaEvent(item_id=item_id, delta=delta) if self._turn is not None:
                return [("item/commandExecution/outputDelta", v2.CommandExecutionOutputDelta(
                    thread_id=tid, turn_id=self._turn.id, item_id=item_id, delta=delta))]
            case TokenCountEvent(info=info) if info is not None and self._turn is not None:
                return [("thread/tokenUsage/updated", v2usage.TokenUsageUpdated(thread_id=tid, turn_id=self._turn.id, token_usage=token_usage(info)))]
            case ErrorEvent(message=message, codex_error_info="internal_server_error", turn_id=None):
                return [
                    ("warning", v2.WarningNotice(message=message, thread_id=tid)),
                    ("thread/status/changed", v2.ThreadStatusChanged(thread_id=tid, status=v2.SYSTEM_ERROR)),
                ]
            case ErrorEvent(message=message, codex_error_info="bad_request", turn_id=None):
                return [("warning", v2.WarningNotice(message=message, thread_id=tid))]  # a refused op, not the turn's failure
            case ErrorEvent(message=message, codex_error_info=info, turn_id=turn_id):
                return self._error(message, info, turn_id, will_retry=False)
            case StreamErrorEvent(message=message, codex_error_info=info):
                return self._error(message, info, None, will_retry=True)
            case McpStartupUpdateEvent(server=name, status=status, error=error):
                return [("mcpServer/startupStatus/updated", v2mcp.McpStartupStatusNotice(
                    name=name, status=status, thread_id=tid, error=error))]
            case WarningEvent(message=message):
                return [("warning", v2.WarningNotice(message=message, thread_id=tid))]
            case ExecApprovalRequestEvent(call_id=key, turn_id=turn_id, command=command, cwd=cwd, reason=reason):
                params: object = v2approvals.CommandApprovalParams(
                    thread_id=tid, turn_id=turn_id, item_id=key, started_at_ms=at, command=shlex.join(command),
                    cwd=cwd, reason=reason, command_actions=[{"type": "unknown", "command": shlex.join(command)}])
                return self._ask(key, v2approvals.COMMAND_APPROVAL, params)
            case ApplyPatchApprovalRequestEvent(call_id=key, turn_id=turn_id, reason=reason, grant_root=root):
                params = v2approvals.PatchApprovalParams(
                    thread_id=tid, turn_id=turn_id, item_id=key, started_at_ms=at, reason=reason, grant_root=root)
                return self._ask(key, v2approvals.PATCH_APPROVAL, params)
            case PermissionsRequestEvent(call_id=key, turn_id=turn_id, cwd=cwd, permissions=asked, reason=reason):
                params = v2approvals.PermissionsApprovalParams(
                    thread_id=tid, turn_id=turn_id, item_id=key, cwd=cwd, started_at_ms=at,
                    permissions=v2approvals.permissions_wire(asked), reason=reason)
                return self._ask(key, v2approvals.PERMISSIONS_APPROVAL, params)
            case DynamicToolCallRequestEvent(call_id=key, turn_id=turn_id, tool=tool, namespace=namespace, arguments=args):
                self._calls.add(key)  # no waitingOn flag for a tool call, as in Codex
                return [Ask(key, v2approvals.TOOL_CALL, v2approvals.ToolCallParams(
                    thread_id=tid, turn_id=turn_id, call_id=key, tool=tool, namespace=namespace, arguments=args))]
            case RequestUserInputEvent(call_id=key, turn_id=turn_id, questions=questions):
                params = v2approvals.UserInputParams(
                    thread_id=tid, turn_id=turn_id, item_id=key, questions=v2approvals.questions_v2(questions))
                return self._ask(key, v2approvals.USER_INPUT, params, self._questions)
            case ApprovalResolvedEvent(call_id=key) if key in self._calls:
                self._calls.discard(key)
                return [Settled(key, announce=False)]  # Codex sends no serverRequest/resolved for a tool call
            case ApprovalResolvedEvent(call_id=key) if key in self._waiting or key in self._questions:
                self._waiting.discard(key)
                self._questions.discard(key)
                return [Settled(key), *self._flags()]
            case TaskCompleteEvent(turn_id=turn_id):
                return self._finish(turn_id, None)
            case TurnAbortedEvent(turn_id=turn_id):
                return self._finish(turn_id, "interrupted")
        return []

    def _ask(self, key: str, method: str, params: object, waiting: set[str] | None = None) -> list[Output]:
        """A request that sets a flag while it waits (`waiting`: an approval's, by default)."""
        waiting = self._waiting if waiting is None else waiting
        first = not waiting
        waiting.add(key)
        return [*(self._flags() if first else []), Ask(key, method, params)]

    def _flags(self) -> list[Output]:
        """`thread/status/changed` for the thread's active flags (after they changed)."""
        status = v2.active_status(bool(self._waiting), bool(self._questions))
        return [("thread/status/changed", v2.ThreadStatusChanged(thread_id=self.thread_id, status=status))]

    def _error(self, message: str, info: str | None, turn_id: str | None, *, will_retry: bool) -> list[Output]:
        turn = self._turn
        if turn is None or (turn_id is not None and turn_id != turn.id):
            return [("warning", v2.WarningNotice(message=message, thread_id=self.thread_id))]
        error = turn_error(message, info)
        if not will_retry:
            turn.error = error
        return [("error", v2.ErrorNotice(thread_id=self.thread_id, turn_id=turn.id, error=error, will_retry=will_retry))]

    def _finish(self, turn_id: str | None, status: v2.TurnStatus | None) -> list[Output]:
        turn = self._turn
        if turn is None or (turn_id is not None and turn.id != turn_id):
            turn = v2.Turn(id=turn_id or "")
        self._turn = None
        turn.status = status or ("failed" if turn.error is not None else "completed")
        turn.completed_at = self._at_ms // 1000
        turn.duration_ms = max(0, self._at_ms - self._started_ms)
        return [
            ("thread/status/changed", v2.ThreadStatusChanged(thread_id=self.thread_id, status=v2.IDLE)),
            ("turn/completed", v2.TurnNotice(thread_id=self.thread_id, turn=turn)),
        ]
