"""The turn loop: sample the model, run the tools it calls, sample again, until a final answer.

A `Turn` holds what one turn needs (settings, cancel scope, steering queue); `run_turn` drives
it against a `TurnHost` (the thread actor), which owns the history and the event fan-out.

A failed sample is retried within the provider's `request_max_retries` (no stream opened) or
`stream_max_retries` (the stream broke, reported as a "Reconnecting..." stream error), waiting with
exponential backoff, or for what a `Retry-After` asks up to RETRY_AFTER_CAP_S. An output item that
cannot be decoded is skipped with a warning, as Codex does, and the turn goes on.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import msgspec
import structlog
import trio

from spindle.persistence.replica import LeaseLostError
from spindle.protocol.events import (
    AgentMessageDeltaEvent,
    AgentMessageEvent,
    ApprovalRequestEvent,
    CodexErrorInfo,
    DynamicToolCallRequestEvent,
    EventMsg,
    ItemCompletedEvent,
    ItemStartedEvent,
    PermissionsRequestEvent,
    RequestUserInputEvent,
    StreamErrorEvent,
    TokenCountEvent,
    TokenUsage,
    TokenUsageInfo,
    TurnDiffEvent,
)
from spindle.protocol.items import (
    AgentMessageItem,
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCall,
    FunctionCallOutput,
    Message,
    ResponseItem,
    ToolCall,
    UserInput,
    call_output,
)
from spindle.protocol.responses import (
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
    ResponsesRequest,
)
from spindle.protocol.sandbox import PermissionGrant, SandboxSpec
from spindle.protocol.settings import ReviewDecision, ThreadSettings

from .approvals import Approvals, ToolResult, UserInputReply
from .auxiliary import Auxiliaries
from .command_item import ItemEvents
from .errors import SandboxUnavailable
from .grants import Grants, granted
from .model_client import ModelClient, ModelError, decode_usage
from .permission_profiles import PermissionProfiles
from .permissions import realise
from .stream_items import decode_item, failure, token_usage, with_id
from .stream_items import turn_item as as_turn_item
from .tools import ToolContext, ToolRegistry
from .turn_diff import TurnDiff

log = structlog.get_logger(__name__)

RETRY_BASE_DELAY_S = 0.2
RETRY_MAX_DELAY_S = 10.0
RETRY_AFTER_CAP_S = 30.0
"""The longest wait a provider's `Retry-After` gets; a longer ask waits this long, then retries."""

_request_encoder = msgspec.json.Encoder()


class Task(Protocol):
    """What a turn runs: a regular turn (`RegularTask`), or another kind of task (a compaction, a
    review, a user's shell command) that the thread actor starts the same way."""

    kind: str
    steerable: bool
    """Whether user input may join a turn running this task (it then reaches the model in it)."""

    async def run(self, turn: Turn, host: TurnHost) -> str | None:
        """Run `turn` to its end; the last agent message, if any. Raises SamplingFailed."""
        ...


CompactPhase = Literal["standalone", "pre_turn", "mid_turn"]
"""When a compaction runs: as a task of its own (the `compact` op), or inside a regular turn when
the context passed the auto-compact limit, before its input or between two samplings."""


class RegularTask:
    """A turn of the conversation: the model is sampled, and the tools it calls run, until it
    answers (`run_turn`)."""

    kind = "regular"
    steerable = True

    async def run(self, turn: Turn, host: TurnHost) -> str | None:
        return await run_turn(turn, host)


REGULAR = RegularTask()


@dataclass(kw_only=True)
class Turn:
    """One running turn. `pending` holds steered input (submission id, items) not yet sampled."""

    turn_id: str
    sub_id: str
    settings: ThreadSettings
    profiles: PermissionProfiles
    """The permission profiles of the thread's config when the turn started."""
    task: Task = REGULAR
    tools: ToolRegistry | None = None
    """The tools of this turn (the host's, unless set when it starts): a refresh never changes them."""
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    pending: list[tuple[str, list[UserInput]]] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    abort_reason: str = "interrupted"
    realised: tuple[SandboxSpec | None, str | None] | None = None
    """The sandbox of this turn's commands (or why there is none), realised from `settings` at
    its first tool call and kept for the turn: roots change only between turns."""
    grants: Grants = field(default_factory=Grants)
    """Extra access the user granted for this turn (`request_permissions`)."""
    resumed_calls: frozenset[str] | None = None
    """Set on a turn taken up again after the process stopped in it: the tool calls (by call id)
    that were waiting on a client, to run again (so they ask again) before sampling."""
    diff: TurnDiff = field(default_factory=TurnDiff)
    """The files this turn's patches wrote, for its net diff (`turn_diff`): each turn starts afresh."""
    auxiliaries: Auxiliaries = field(default_factory=Auxiliaries)
    """Work that joined the turn from outside its task (a user's shell command): an interrupt of
    the turn ends it first."""
    injected: list[ResponseItem] = field(default_factory=list)
    """History items that joined the turn (a user's shell command's record): committed before its
    next sample, or when it ends."""

    def take_injected(self) -> list[ResponseItem]:
        items, self.injected = self.injected, []
        return items


class SamplingFailed(Exception):
    """The model could not be sampled (retries spent, or an error no retry can fix): the turn ends."""

    def __init__(self, message: str, info: CodexErrorInfo) -> None:
        super().__init__(message)
        self.message = message
        self.info = info


class TurnHost(Protocol):
    """What the turn loop needs from its thread."""

    thread_id: str
    tools: ToolRegistry
    approvals: Approvals

    @property
    def history(self) -> list[ResponseItem]: ...

    def client(self, provider_id: str) -> ModelClient: ...

    def emit(self, sub_id: str, msg: EventMsg) -> None: ...

    async def commit_input(self, turn: Turn, sub_id: str, items: list[UserInput]) -> None: ...

    async def commit(self, items: list[ResponseItem]) -> None:
        """Add `items` to the history and hand them to the rollout writer."""

    def record(self, items: list[ResponseItem]) -> None:
        """Add `items` to the history; the rollout writer has them with the next `commit` or the
        turn's end, whichever comes first."""

    def add_usage(self, usage: TokenUsage, window: int | None, *, in_context: bool = True) -> TokenUsageInfo: ...

    async def compact(self, turn: Turn, phase: CompactPhase) -> None:
        """Compact the history (`compact.py`); in a regular turn only once over the limit."""


@dataclass
class _Sample:
    items: list[ResponseItem]


async def run_turn(turn: Turn, host: TurnHost) -> str | None:
    """Run `turn` to its final answer; returns the last agent message. Raises SamplingFailed,
    also when this node has lost the thread to another (nothing more of it runs here)."""
    try:
        return await _run_turn(turn, host)
    except LeaseLostError as exc:
        raise SamplingFailed(str(exc), "other") from None


async def _run_turn(turn: Turn, host: TurnHost) -> str | None:
    last_message: str | None = None
    if turn.resumed_calls is not None:
        await _finish_calls(turn, host, turn.resumed_calls)
    else:
        await host.compact(turn, "pre_turn")
    while True:
        pending, turn.pending = turn.pending, []
        for sub_id, items in pending:
            await host.commit_input(turn, sub_id, items)
        if turn.injected:
            await host.commit(turn.take_injected())
        sample = await sample_with_retries(turn, host)
        calls = [item for item in sample.items if isinstance(item, FunctionCall | CustomToolCall)]
        if calls:  # written before any tool runs
            await host.commit(sample.items)
        else:  # the turn ends, or new input is committed first: one write either way
            host.record(sample.items)
        for item in sample.items:
            if isinstance(item, Message) and item.role == "assistant":
                last_message = item.text()
        for call in calls:
            output = await _tools(turn, host).dispatch(call, await _tool_context(turn, host, call))
            await host.commit([output])
        if not calls and not turn.pending and not turn.injected:
            return last_message
        await host.compact(turn, "mid_turn")  # before the next sampling, if it is over the limit


async def _finish_calls(turn: Turn, host: TurnHost, waiting: frozenset[str]) -> None:
    """Give every call the history left without an output one: a call that was waiting on a client
    runs again (and asks again); any other may have run in part, so it is not repeated, and the
    model is told it was cut short, as after an interrupt."""
    answered = {item.call_id for item in host.history if isinstance(item, FunctionCallOutput | CustomToolCallOutput)}
    dangling = [item for item in host.history if isinstance(item, FunctionCall | CustomToolCall) and item.call_id not in answered]
    for call in dangling:
        if call.call_id in waiting:
            output = await _tools(turn, host).dispatch(call, await _tool_context(turn, host, call))
        else:
            output = call_output(call, "aborted")
        await host.commit([output])


async def realised_sandbox(turn: Turn) -> tuple[SandboxSpec | None, str | None]:
    """`turn`'s sandbox and, when it cannot be realised, why: realised once per turn, in a worker
    thread (it real-paths and checks every root), from the symbolic selection the turn started
    with, so a later roots-only change rebinds the next turn's."""
    if turn.realised is None:
        turn.realised = await trio.to_thread.run_sync(_realise, turn.settings, turn.profiles)
    return turn.realised


def _realise(settings: ThreadSettings, profiles: PermissionProfiles) -> tuple[SandboxSpec | None, str | None]:
    try:
        return realise(settings, profiles), None
    except SandboxUnavailable as exc:
        return None, str(exc)


def item_events(turn: Turn, host: TurnHost) -> ItemEvents:
    """The turn's item lifecycle and command output, as events to its subscribers."""
    return ItemEvents.of(host.emit, sub_id=turn.sub_id, thread_id=host.thread_id, turn_id=turn.turn_id)


async def _tool_context(turn: Turn, host: TurnHost, call: ToolCall) -> ToolContext:
    async def ask(request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        return await host.approvals.ask(turn.sub_id, request, key)

    async def call_client(request: DynamicToolCallRequestEvent) -> ToolResult:
        return await host.approvals.call_client(turn.sub_id, request)

    async def request_permissions(request: PermissionsRequestEvent) -> PermissionGrant:
        answer = await host.approvals.ask_permissions(turn.sub_id, request)
        grants = await trio.to_thread.run_sync(granted, request.permissions, answer.permissions, turn.settings.cwd)
        if answer.scope == "session":
            host.approvals.session_grants |= grants
        else:
            turn.grants |= grants
        return PermissionGrant(permissions=grants.as_permissions(), scope=answer.scope)

    async def ask_user(request: RequestUserInputEvent) -> UserInputReply:
        return await host.approvals.ask_user(turn.sub_id, request)

    sandbox, error = await realised_sandbox(turn)
    sandbox = (host.approvals.session_grants | turn.grants).apply(sandbox)
    events = item_events(turn, host)

    def diff_updated(diff: str) -> None:
        host.emit(turn.sub_id, TurnDiffEvent(turn_id=turn.turn_id, unified_diff=diff))

    return ToolContext(
        thread_id=host.thread_id,
        turn_id=turn.turn_id,
        call_id=call.call_id,
        settings=turn.settings,
        sandbox=sandbox,
        sandbox_error=error,
        ask_approval=ask,
        call_client=call_client,
        ask_user=ask_user,
        item_started=events.started,
        item_completed=events.completed,
        output_delta=events.output_delta,
        request_permissions=request_permissions,
        turn_diff=turn.diff,
        diff_updated=diff_updated,
    )


def _tools(turn: Turn, host: TurnHost) -> ToolRegistry:
    return turn.tools if turn.tools is not None else host.tools


def build_request(turn: Turn, host: TurnHost, prompt: ResponseItem | None = None) -> bytes:
    """The turn's request: its history and tools; with `prompt`, the history then that message,
    and no tools (a compaction's request for a summary)."""
    s = turn.settings
    reasoning = None
    if s.effort or s.summary:
        reasoning = {k: v for k, v in (("effort", s.effort), ("summary", s.summary)) if v}
    request = ResponsesRequest(
        model=s.model,
        instructions=s.instructions,
        input=host.history if prompt is None else [*host.history, prompt],
        tools=_tools(turn, host).specs(s.model) if prompt is None else [],
        reasoning=reasoning,
        prompt_cache_key=host.thread_id,
    )
    return _request_encoder.encode(request)


def backoff(attempt: int) -> float:
    delay = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2 ** (attempt - 1))
    return delay * random.uniform(0.9, 1.1)


def retry_delay(err: ModelError, attempt: int) -> float:
    """How long to wait before retry number `attempt` after `err`."""
    if err.retry_after is not None:
        return min(err.retry_after, RETRY_AFTER_CAP_S)
    return backoff(attempt)


async def sample_with_retries(turn: Turn, host: TurnHost, body: bytes | None = None, *, quiet: bool = False) -> _Sample:
    """Sample the model with `body` (default: the turn's request, `build_request`), retrying as
    the provider allows. `quiet`: the output items are returned, not shown (a compaction's)."""
    try:
        client = host.client(turn.settings.provider_id)
    except KeyError as exc:
        raise SamplingFailed(str(exc.args[0]), "other") from None
    provider = client.provider
    body = build_request(turn, host) if body is None else body
    request_retries = stream_retries = 0
    while True:
        try:
            return await _sample_once(turn, host, client, body, quiet)
        except ModelError as err:
            if not err.retryable:
                raise SamplingFailed(err.message, err.info) from None
            if err.phase == "request":
                if request_retries >= provider.request_max_retries:
                    raise SamplingFailed(err.message, err.info) from None
                request_retries += 1
                delay = retry_delay(err, request_retries)
                log.info("retrying model request", attempt=request_retries, error=err.message, delay_s=round(delay, 3))
                await trio.sleep(delay)
                continue
            if stream_retries >= provider.stream_max_retries:
                raise SamplingFailed(err.message, err.info) from None
            stream_retries += 1
            host.emit(
                turn.sub_id,
                StreamErrorEvent(
                    message=f"Reconnecting... {stream_retries}/{provider.stream_max_retries}",
                    codex_error_info="response_stream_disconnected",
                    additional_details=err.message,
                ),
            )
            await trio.sleep(retry_delay(err, stream_retries))


async def _sample_once(turn: Turn, host: TurnHost, client: ModelClient, body: bytes, quiet: bool) -> _Sample:
    items: list[ResponseItem] = []
    started: set[str] = set()
    async with client.stream(body, thread_id=host.thread_id) as events:
        async for event in events:
            match event:
                case OutputItemAdded(item=raw) if not quiet:
                    item = decode_item(raw, "response.output_item.added")
                    if item is not None:
                        _item_started(turn, host, item, started)
                case OutputTextDelta(item_id=item_id, delta=delta) if not quiet:
                    host.emit(turn.sub_id, AgentMessageDeltaEvent(delta=delta, item_id=item_id))
                case OutputItemDone(item=raw):
                    item = decode_item(raw, "response.output_item.done")
                    if item is not None:
                        item = with_id(item)
                        items.append(item)
                        if not quiet:
                            _item_started(turn, host, item, started)
                            _item_completed(turn, host, item)
                case ResponseCompleted(response=response):
                    usage = decode_usage(response.usage)
                    if usage is not None:
                        info = host.add_usage(token_usage(usage), turn.settings.model_context_window)
                        host.emit(turn.sub_id, TokenCountEvent(info=info))
                    return _Sample(items)
                case ResponseFailed(response=response) | ResponseIncomplete(response=response):
                    raise failure(response.error.code if response.error else None,
                                   response.error.message if response.error else "response failed")
    raise ModelError(
        "stream disconnected before completion: stream closed before response.completed",
        phase="stream",
        retryable=True,
        info="response_stream_disconnected",
    )


def _item_started(turn: Turn, host: TurnHost, item: ResponseItem, started: set[str]) -> None:
    turn_item = as_turn_item(item)
    if turn_item is None or turn_item.id in started:
        return
    started.add(turn_item.id)
    if isinstance(turn_item, AgentMessageItem):
        turn_item = AgentMessageItem(id=turn_item.id, content=[])
    host.emit(turn.sub_id, ItemStartedEvent(thread_id=host.thread_id, turn_id=turn.turn_id, item=turn_item))


def _item_completed(turn: Turn, host: TurnHost, item: ResponseItem) -> None:
    turn_item = as_turn_item(item)
    if turn_item is None:
        return
    host.emit(turn.sub_id, ItemCompletedEvent(thread_id=host.thread_id, turn_id=turn.turn_id, item=turn_item))
    if isinstance(turn_item, AgentMessageItem):
        host.emit(turn.sub_id, AgentMessageEvent(message=turn_item.text()))
