"""Rebuilding model history from rollout items, and the rules of fork snapshots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spindle.protocol.events import (
    ApprovalResolvedEvent,
    ClientRequestEvent,
    ExecApprovalRequestEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    ThreadRolledBackEvent,
    TurnAbortedEvent,
)
from spindle.protocol.items import (
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    FunctionCallOutput,
    InputText,
    Message,
    ResponseItem,
    ResponseItemBase,
    close_dangling_calls,
    turn_aborted_marker,
)
from spindle.protocol.rollout import CompactedItem, RolloutItem, SessionMeta, TurnContextItem

CONTEXT_PREFIXES = ("<environment_context>", "<user_instructions>", "<turn_aborted>", "<user_shell_command>")


def is_user_turn_boundary(item: object) -> bool:
    """A user message typed by the user (not injected context, a user shell command's record or an
    interrupt marker)."""
    if not isinstance(item, Message) or item.role != "user":
        return False
    first = item.content[0] if item.content else None
    return not (isinstance(first, InputText) and first.text.startswith(CONTEXT_PREFIXES))


def drop_last_user_turns(history: list[ResponseItem], num_turns: int) -> list[ResponseItem]:
    """History without its last `num_turns` user turns (everything from that user message on)."""
    starts = [i for i, item in enumerate(history) if is_user_turn_boundary(item)]
    if not starts or num_turns <= 0:
        return history
    cut = starts[-num_turns] if num_turns <= len(starts) else starts[0]
    return history[:cut]


def rebuild_history(items: Iterable[RolloutItem]) -> list[ResponseItem]:
    """Model-visible history, replaying compactions and earlier rollbacks in order."""
    history: list[ResponseItem] = []
    for item in items:
        if isinstance(item, ResponseItemBase):
            history.append(item)  # type: ignore[arg-type]
        elif isinstance(item, ThreadRolledBackEvent):
            history = drop_last_user_turns(history, item.num_turns)
        elif isinstance(item, CompactedItem):
            if item.replacement_history is not None:
                history = list(item.replacement_history)
            else:
                history = [Message(role="user", content=[InputText(text=item.message)])]
    return history


def last_turn_context(items: Sequence[RolloutItem]) -> TurnContextItem | None:
    for item in reversed(items):
        if isinstance(item, TurnContextItem):
            return item
    return None


@dataclass(frozen=True)
class ForkSnapshot:
    """How to cut the source history for a fork.

    `truncate_before(n)`: the committed prefix strictly before the nth (0-based) user message;
    out of range, a thread that is mid-turn loses its unfinished turn, one at a boundary is
    copied whole. `interrupted()`: the history as if interrupted now; a mid-turn snapshot gets
    the `<turn_aborted>` marker and a `turn_aborted` event, one at a boundary is copied whole.
    """

    nth_user_message: int | None = None
    cut: int | None = None
    """`through(cut)`: the rollout's bytes up to `cut`, a turn boundary its turn index gives (the
    end of the turn a fork is to end with); nothing is added."""

    @classmethod
    def through(cls, cut: int) -> ForkSnapshot:
        return cls(cut=cut)

    @classmethod
    def truncate_before(cls, nth_user_message: int) -> ForkSnapshot:
        if nth_user_message < 0:
            raise ValueError("nth_user_message must be >= 0")
        return cls(nth_user_message)

    @classmethod
    def interrupted(cls) -> ForkSnapshot:
        return cls(None)


@dataclass(frozen=True)
class TurnState:
    ends_mid_turn: bool
    active_turn_id: str | None
    active_turn_start: int | None


def _turn_start(items: Sequence[RolloutItem], position: int) -> int:
    """Where the turn holding the user message at `position` opens (its turn_context/task_started)."""
    while position > 0 and isinstance(items[position - 1], TurnContextItem | TaskStartedEvent):
        position -= 1
    return position


def snapshot_turn_state(items: Sequence[RolloutItem]) -> TurnState:
    ended: set[str] = set()
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if isinstance(item, TaskCompleteEvent | TurnAbortedEvent) and item.turn_id:
            ended.add(item.turn_id)
        elif isinstance(item, TaskStartedEvent):
            if item.turn_id in ended:
                break
            return TurnState(True, item.turn_id, _turn_start(items, index))
    positions = [i for i, item in enumerate(items) if is_user_turn_boundary(item)]
    if not positions:
        return TurnState(False, None, None)
    last = positions[-1]
    closed = any(isinstance(item, TaskCompleteEvent | TurnAbortedEvent) for item in items[last + 1 :])
    return TurnState(not closed, None, None if closed else _turn_start(items, last))


@dataclass(frozen=True)
class UnfinishedTurn:
    """The turn a rollout ends in the middle of (the process stopped while it ran), and the
    client requests it was still waiting on, oldest first."""

    turn_id: str
    pending: list[ClientRequestEvent]


def unfinished_turn(items: Sequence[RolloutItem]) -> UnfinishedTurn | None:
    """The turn `items` end in the middle of, if they do and it has an id; None otherwise. Its
    `pending` requests are those that still wait: asked, not ended, and their call without an
    output; a request asked after its tool already ran (`ExecApprovalRequestEvent.retry`) is not
    one, since taking it up would run the tool again."""
    state = snapshot_turn_state(items)
    if not state.ends_mid_turn or state.active_turn_id is None or state.active_turn_start is None:
        return None
    asked: dict[str, ClientRequestEvent] = {}
    calls: set[str] = set()
    for item in items[state.active_turn_start:]:
        if isinstance(item, FunctionCall | CustomToolCall):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutput | CustomToolCallOutput):
            calls.discard(item.call_id)
        elif isinstance(item, ClientRequestEvent):
            asked[item.call_id] = item
        elif isinstance(item, ApprovalResolvedEvent):
            asked.pop(item.call_id, None)
    pending = [request for call_id, request in asked.items() if call_id in calls
               and not (isinstance(request, ExecApprovalRequestEvent) and request.retry)]
    return UnfinishedTurn(state.active_turn_id, pending)


def fork_items(items: Sequence[RolloutItem], snapshot: ForkSnapshot) -> list[RolloutItem]:
    """The rollout items (session_meta excluded) a fork starts from."""
    body: list[RolloutItem] = [item for item in items if not isinstance(item, SessionMeta)]
    state = snapshot_turn_state(body)
    if snapshot.nth_user_message is not None:
        positions = [i for i, item in enumerate(body) if is_user_turn_boundary(item)]
        n = snapshot.nth_user_message
        if n < len(positions):
            return body[: _turn_start(body, positions[n])]
        if state.ends_mid_turn and state.active_turn_start is not None:
            return body[: state.active_turn_start]
        return body
    if not state.ends_mid_turn:
        return body
    calls = [item for item in body if isinstance(item, ResponseItemBase)]
    return [*body, *close_dangling_calls(calls), turn_aborted_marker(),  # type: ignore[arg-type]
            TurnAbortedEvent(turn_id=state.active_turn_id, reason="interrupted")]
