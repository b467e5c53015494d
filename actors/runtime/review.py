"""The review task: a turn that asks a reviewer model about code changes, as Codex's review does.

The turn emits `entered_review_mode`, gathers the target's git inputs (`review_git.py`, in a
read-only sandbox), then samples the model with the review instructions in place of the thread's
own, on a history of its own (the environment context and the review prompt: the reviewer never
sees the conversation), offering only `exec_command` (read-only too). The reviewer's messages are
not shown; its last one is read as the review output (`parse_review_output`). At the end, also
when it is interrupted or fails, the turn emits `exited_review_mode` with the output (or none),
and the thread's history keeps two messages of it, as Codex's does: the results as a
`<user_action>` user message and the rendered review as an assistant message (shown as an
`agentMessage` item).
"""

from __future__ import annotations

import dataclasses

import msgspec
import structlog
import trio

from spindle.protocol.events import (
    AgentMessageDeltaEvent,
    AgentMessageEvent,
    EnteredReviewModeEvent,
    EventMsg,
    ExitedReviewModeEvent,
    ItemCompletedEvent,
    ItemStartedEvent,
    TokenUsage,
    TokenUsageInfo,
)
from spindle.protocol.ids import new_id
from spindle.protocol.items import (
    AgentMessageContent,
    AgentMessageItem,
    InputText,
    Message,
    OutputText,
    ResponseItem,
    TextInput,
    UserInput,
    user_message,
)
from spindle.protocol.review import (
    CustomTarget,
    ReviewOutput,
    ReviewRequest,
    parse_review_output,
    render_review_output,
)

from .approvals import Approvals
from .compact import CompactPhase
from .journal import environment_context
from .model_client import ModelClient
from .review_git import Git, GitError, find_work_tree, read_only, review_prompt
from .review_prompts import REVIEW_INSTRUCTIONS, results_message
from .tools import ToolRegistry
from .turn import SamplingFailed, Turn, TurnHost, realised_sandbox, run_turn

log = structlog.get_logger(__name__)

EXIT_DEADLINE_S = 5.0
"""How long an interrupted review may spend recording how it ended."""
REVIEWER_TOOLS = ("exec_command",)
"""The only tools the reviewer is offered (read-only: its sandbox is the review's)."""


class ReviewFailed(SamplingFailed):
    """The review could not run (git, the sandbox): the turn ends with this error."""


async def review_problem(request: ReviewRequest, cwd: str) -> str | None:
    """Why `request` cannot start in `cwd`, if it cannot: an empty target, or a git target
    outside any git repository (nothing is run to tell)."""
    try:
        request.target.cleaned()
    except ValueError as exc:
        return str(exc)
    if isinstance(request.target, CustomTarget):
        return None
    if await trio.to_thread.run_sync(find_work_tree, cwd) is None:
        return f"cannot review {request.hint()}: {cwd} is not a git repository (nor inside one)"
    return None


class ReviewTask:
    """A review turn of `request` (see the module docstring)."""

    kind = "review"
    steerable = False

    def __init__(self, request: ReviewRequest) -> None:
        self.request = msgspec.structs.replace(request, target=request.target.cleaned())

    async def run(self, turn: Turn, host: TurnHost) -> str | None:
        request = self.request
        host.emit(turn.sub_id, EnteredReviewModeEvent(target=request.target, user_facing_hint=request.hint()))
        try:
            output = await self._review(turn, host)
        except BaseException:  # interrupted or failed: the client still leaves review mode
            with trio.CancelScope(shield=True, deadline=trio.current_time() + EXIT_DEADLINE_S):
                await exit_review(turn, host, None)
            raise
        await exit_review(turn, host, output)
        return None

    async def _review(self, turn: Turn, host: TurnHost) -> ReviewOutput:
        spec, error = await realised_sandbox(turn)
        narrowed = read_only(spec) if spec is not None else None
        turn.realised = (narrowed, error)  # the reviewer's commands are read-only too
        target = self.request.target
        if isinstance(target, CustomTarget):
            prompt = target.instructions
        elif narrowed is None:
            raise ReviewFailed(f"cannot run git for the review: {error}", "other")
        else:
            try:
                prompt = await review_prompt(target, turn.settings.cwd, Git(narrowed, host.thread_id))
            except GitError as exc:
                raise ReviewFailed(str(exc), "other") from None
        # The reviewer runs as a turn of its own over the same turn id: what joins the thread's turn
        # meanwhile (a user's shell command's record) stays with the thread, not the review.
        reviewer = dataclasses.replace(
            turn, settings=msgspec.structs.replace(turn.settings, instructions=REVIEW_INSTRUCTIONS),
            tools=(turn.tools or host.tools).only(*REVIEWER_TOOLS), pending=[(turn.sub_id, [TextInput(text=prompt)])],
            injected=[], resumed_calls=None)
        context = environment_context(msgspec.structs.replace(reviewer.settings, sandbox_mode="read-only"))
        answer = await run_turn(reviewer, ReviewerHost(host, [context]))
        return parse_review_output(answer or "")


async def exit_review(turn: Turn, host: TurnHost, output: ReviewOutput | None) -> None:
    """End review mode: `exited_review_mode`, then the two messages the thread keeps of it."""
    host.emit(turn.sub_id, ExitedReviewModeEvent(review_output=output))
    text = render_review_output(output)
    item_id = f"item_{new_id()}"
    await host.commit([
        Message(role="user", content=[InputText(text=results_message(output))]),
        Message(role="assistant", content=[OutputText(text=text)], id=item_id),
    ])
    for event in (ItemStartedEvent, ItemCompletedEvent):
        content = [AgentMessageContent(text=text)] if event is ItemCompletedEvent else []
        host.emit(turn.sub_id, event(thread_id=host.thread_id, turn_id=turn.turn_id,
                                     item=AgentMessageItem(id=item_id, content=content)))
    host.emit(turn.sub_id, AgentMessageEvent(message=text))


class ReviewerHost:
    """The thread as the reviewer's turn loop sees it: a history of the review's own (never
    recorded), and the thread's events without the reviewer's messages (its answer is JSON for
    Spindle to read, not for people); tools, approvals, model clients and usage are the thread's."""

    def __init__(self, thread: TurnHost, history: list[ResponseItem]) -> None:
        self._thread = thread
        self._history = history
        self.thread_id: str = thread.thread_id
        self.tools: ToolRegistry = thread.tools
        self.approvals: Approvals = thread.approvals

    @property
    def history(self) -> list[ResponseItem]:
        return self._history

    def client(self, provider_id: str) -> ModelClient:
        return self._thread.client(provider_id)

    def emit(self, sub_id: str, msg: EventMsg) -> None:
        if isinstance(msg, AgentMessageDeltaEvent | AgentMessageEvent):
            return
        if isinstance(msg, ItemStartedEvent | ItemCompletedEvent) and isinstance(msg.item, AgentMessageItem):
            return
        self._thread.emit(sub_id, msg)

    async def commit_input(self, turn: Turn, sub_id: str, items: list[UserInput]) -> None:
        self._history.append(user_message(items))

    async def commit(self, items: list[ResponseItem]) -> None:
        self._history.extend(items)

    def record(self, items: list[ResponseItem]) -> None:
        self._history.extend(items)

    def add_usage(self, usage: TokenUsage, window: int | None, *, in_context: bool = True) -> TokenUsageInfo:
        """Counted in the thread's totals, but not as the size of its context: the reviewer's
        request is not the thread's history (it must not set off a compaction of it)."""
        return self._thread.add_usage(usage, window, in_context=False)

    async def compact(self, turn: Turn, phase: CompactPhase) -> None:
        """Never: a review's private history lives for one turn and is dropped after it."""
