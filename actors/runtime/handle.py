"""The user's side of a thread: `ThreadHandle` submits ops, subscribes to events, asks questions."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from spindle.persistence.rollout import ThreadRollout
from spindle.protocol.config import Config
from spindle.protocol.events import (
    ApplyPatchApprovalRequestEvent,
    ApprovalRequestEvent,
    ClientRequestEvent,
    DynamicToolCallRequestEvent,
    ErrorEvent,
    Event,
    ExecApprovalRequestEvent,
    ExitedReviewModeEvent,
    ItemCompletedEvent,
    PermissionsRequestEvent,
    RequestUserInputEvent,
    TaskCompleteEvent,
    TurnAbortedEvent,
)
from spindle.protocol.ids import new_id
from spindle.protocol.items import TextInput, UserMessageItem
from spindle.protocol.ops import (
    CompactOp,
    DynamicToolResponseOp,
    ExecApprovalOp,
    InterruptOp,
    Op,
    PatchApprovalOp,
    RequestPermissionsResponseOp,
    ReviewOp,
    ShutdownOp,
    Submission,
    UserInputAnswerOp,
    UserInputOp,
)
from spindle.protocol.questions import user_input_response
from spindle.protocol.review import ReviewOutput, ReviewRequest, ReviewTarget
from spindle.protocol.sandbox import PermissionGrant
from spindle.protocol.settings import MemoryMode, ReviewDecision, ThreadSettings

from .approvals import ToolResult
from .errors import ThreadClosedError, TurnAbortedError, TurnError
from .fanout import Subscription
from .journal import HistoryView
from .mcp_manager import McpServer
from .outcomes import SubmissionOutcome
from .permission_profiles import PermissionProfiles
from .replay import EventLog
from .thread import ThreadActor

DISPATCH_TIMEOUT_S = 30.0
"""How long `ThreadHandle.submit_and_wait` waits for the actor to take up a submission."""


Approver = Callable[[ApprovalRequestEvent], Awaitable[ReviewDecision]]
"""Answers an approval request (a command to run, a patch to apply) with the user's decision."""


ToolRunner = Callable[[DynamicToolCallRequestEvent], Awaitable[ToolResult]]
"""Runs a call of one of the thread's dynamic tools (an embedding's own tools)."""
Granter = Callable[[PermissionsRequestEvent], Awaitable[PermissionGrant]]
"""Answers a request for more permissions with what is granted, for the turn or the session."""
NO_TOOL_RUNNER = ToolResult(content_items=[{"type": "inputText", "text": "no one can run this tool here"}],
                            success=False)
QuestionAnswerer = Callable[[RequestUserInputEvent], Awaitable[Mapping[str, Sequence[str]]]]
"""Answers the model's questions (Plan mode's `request_user_input`): question id to the answers."""
NO_ANSWERER = "no one can answer questions here"


class ThreadHandle:
    """The user's side of a thread: submit ops, read events, ask questions."""

    def __init__(
        self,
        actor: ThreadActor,
        send: trio.MemorySendChannel[Submission],
        events: EventLog,
    ) -> None:
        self.thread_id = actor.thread_id
        self._actor = actor
        self._send = send
        self._events = events
        self._ids = itertools.count(1)
        self._shutdown_requested = False
        self.session_configured = actor.session_configured()
        self.load_warning: str | None = None
        """What went wrong reading the thread's rollout when it was resumed (a compaction that
        could not be read, say), if anything did."""

    def __repr__(self) -> str:
        return f"<ThreadHandle {self.thread_id}{' closed' if self.is_closed else ''}>"

    @property
    def is_closed(self) -> bool:
        return self._actor.closed.is_set()

    @property
    def fault(self) -> str | None:
        """Why the thread stopped on an internal error, if it did (its `systemError`)."""
        return self._actor.fault

    @property
    def settings(self) -> ThreadSettings:
        return self._actor.settings

    @property
    def session_config(self) -> dict[str, Any]:
        """The thread's own config layer (dotted keys to values), kept for its lifetime."""
        return self._actor.session_config

    def pending_requests(self) -> list[tuple[str, ClientRequestEvent]]:
        """The client requests (approvals, dynamic tool calls, questions) waiting for an answer (submission
        id, request), oldest first: what a client that subscribes now must be shown."""
        return self._actor.approvals.replay()

    @property
    def config(self) -> Config:
        """The thread's effective config (disk layers for its cwd, then its own layer)."""
        return self._actor.config

    @property
    def permission_profiles(self) -> PermissionProfiles:
        """The permission profiles of the thread's config (`settings.permissions` names one)."""
        return self._actor.profiles

    @property
    def rollout(self) -> ThreadRollout:
        return self._actor.rollout

    @property
    def rollout_path(self) -> Path:
        """Where this thread's rollout is (or will be, before its first turn)."""
        return self._actor.rollout.path

    @property
    def memory_mode(self) -> MemoryMode:
        """Whether the thread may feed memory generation ("enabled" unless set otherwise, with the
        `set_thread_memory_mode` op). Kept in the rollout; Spindle itself generates no memories."""
        return self._actor.memory_mode

    @property
    def history(self) -> HistoryView:
        """The model-visible history: a read-only view that follows the thread as it goes on."""
        return self._actor.journal.view

    @property
    def active_turn_id(self) -> str | None:
        """The turn running now, if any."""
        return self._actor.active_turn_id

    def next_id(self) -> str:
        return str(next(self._ids))

    async def submit_and_wait(self, op: Op) -> SubmissionOutcome:
        """Submit `op` and wait until the actor has dispatched it; returns what it made of it.

        TooSlowError when the actor does not get to it within `DISPATCH_TIMEOUT_S` seconds.
        """
        sub_id = new_id()
        with self._actor.outcomes.awaiting(sub_id) as outcome, trio.fail_after(DISPATCH_TIMEOUT_S):
            await self.submit(op, id=sub_id)  # a full submission channel counts against the deadline too
            await outcome.settled.wait()
        return outcome

    async def submit(self, op: Op, *, id: str | None = None) -> str:
        """Queue `op`; returns the submission id its events will carry."""
        sub = Submission(id=id or self.next_id(), op=op)
        try:
            await self._send.send(sub)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ThreadClosedError(f"thread {self.thread_id} has shut down") from None
        return sub.id

    def events(self, capacity: int | None = None) -> Subscription[Event]:
        """A new subscription to this thread's events from now on, after the start-up statuses
        its MCP servers have reported so far (so a subscriber never misses `starting` or how it ended)."""
        return self._events.subscribe(capacity, replay=self._actor.mcp_replay())

    @property
    def last_seq(self) -> int:
        """The number of the thread's latest event (`Event.seq`)."""
        return self._events.last_seq

    def events_after(self, seq: int, capacity: int | None = None) -> tuple[list[Event], Subscription[Event]]:
        """The thread's events numbered after `seq` that are still kept, and a subscription to the
        events from now on (none falls between the two); `ReplayTooOld` if some are not kept."""
        return self._events.subscribe_after(seq, capacity)

    @property
    def waiting_on_approval(self) -> bool:
        """Whether an approval request of the thread waits for the user."""
        return any(isinstance(request, ExecApprovalRequestEvent | ApplyPatchApprovalRequestEvent | PermissionsRequestEvent)
                   for _, request in self.pending_requests())

    @property
    def waiting_on_user_input(self) -> bool:
        """Whether the model's questions to the user wait for answers."""
        return any(isinstance(request, RequestUserInputEvent) for _, request in self.pending_requests())

    def approvals(self) -> ApprovalStream:
        """The thread's approval requests and questions as they come, those already pending first:
        `with thread.approvals() as requests: async for request in requests: await request.accept()`
        (a `PendingUserInput` is answered with `await request.answer({"q1": ["A"]})`)."""
        return ApprovalStream(self)

    @property
    def mcp_servers(self) -> Mapping[str, McpServer]:
        """The thread's MCP servers by name (read-only; status, tools, error)."""
        return self._actor.mcp.servers

    async def wait_mcp_started(self, names: list[str] | None = None) -> None:
        """Until the thread's MCP servers (or those named) have finished starting."""
        await self._actor.mcp_configured.wait()
        await self._actor.mcp.wait_started(names)

    async def ask(self, text: str, *, approve: Approver | None = None, run_tool: ToolRunner | None = None,
                  grant: Granter | None = None, answer_questions: QuestionAnswerer | None = None) -> str:
        """Send `text` as user input and return the final answer of the turn it joins.

        An approval request of that turn is answered by `approve` (the request in, a decision
        out); without one it is declined: the model is told and the turn goes on. A call of one
        of the thread's dynamic tools is run by `run_tool`; without one it fails. A request for
        more permissions is answered by `grant`; without one nothing is granted. The model's
        questions (Plan mode) are answered by `answer_questions`; without it the model is told
        no one can answer. An approver or answerer that fails interrupts the turn it held."""
        with self.events() as events:
            sub_id = await self.submit(UserInputOp(items=[TextInput(text=text)]))
            turn_id: str | None = None
            failure: str | None = None
            async for ev in events:
                msg = ev.msg
                if isinstance(msg, DynamicToolCallRequestEvent) and msg.turn_id == turn_id:
                    result = await run_tool(msg) if run_tool is not None else NO_TOOL_RUNNER
                    await self.submit(DynamicToolResponseOp(
                        id=msg.call_id, content_items=result.content_items, success=result.success))
                if isinstance(msg, PermissionsRequestEvent) and msg.turn_id == turn_id:
                    answer = await grant(msg) if grant is not None else PermissionGrant()
                    await self.submit(RequestPermissionsResponseOp(id=msg.call_id, response=answer))
                if isinstance(msg, RequestUserInputEvent) and msg.turn_id == turn_id:
                    await self.submit(await self._answer_questions(msg, answer_questions))
                if isinstance(msg, ExecApprovalRequestEvent | ApplyPatchApprovalRequestEvent) and msg.turn_id == turn_id:
                    op = ExecApprovalOp if isinstance(msg, ExecApprovalRequestEvent) else PatchApprovalOp
                    try:
                        decision: ReviewDecision = "denied" if approve is None else await approve(msg)
                    except BaseException:  # an approver that fails or is cancelled stops the turn it held
                        with trio.CancelScope(shield=True):
                            await self.submit(op(id=msg.call_id, decision="abort"))
                        raise
                    await self.submit(op(id=msg.call_id, decision=decision))
                if isinstance(msg, TurnAbortedEvent) and (turn_id is None or msg.turn_id == turn_id):
                    raise TurnAbortedError(f"turn {msg.turn_id} was {msg.reason}")
                if turn_id is None:
                    if ev.id == sub_id and isinstance(msg, ItemCompletedEvent) and isinstance(msg.item, UserMessageItem):
                        turn_id = msg.turn_id
                    elif ev.id == sub_id and isinstance(msg, ErrorEvent):
                        raise TurnError(msg.message)
                elif isinstance(msg, ErrorEvent) and msg.turn_id == turn_id:
                    failure = msg.message
                elif isinstance(msg, TaskCompleteEvent) and msg.turn_id == turn_id:
                    if failure is not None:
                        raise TurnError(failure)
                    return msg.last_agent_message or ""
        raise ThreadClosedError(f"thread {self.thread_id} shut down before answering")

    async def review(self, target: ReviewTarget) -> ReviewOutput | None:
        """Review `target` in a review turn of this (idle) thread and return the reviewer's output.
        The reviewer's command approvals are declined. TurnError when the review is refused (a busy
        thread, a cwd outside git) or fails; TurnAbortedError when it is interrupted."""
        with self.events() as events:
            outcome = await self.submit_and_wait(ReviewOp(review_request=ReviewRequest(target=target)))
            if outcome.error is not None or outcome.turn_id is None:
                raise TurnError(outcome.error.message if outcome.error else "the review did not start")
            output: ReviewOutput | None = None
            failure: str | None = None
            async for ev in events:
                match ev.msg:
                    case ExitedReviewModeEvent(review_output=found):
                        output = found
                    case ExecApprovalRequestEvent(turn_id=outcome.turn_id, call_id=call_id):
                        await self.submit(ExecApprovalOp(id=call_id, decision="denied"))
                    case ErrorEvent(turn_id=outcome.turn_id, message=message):
                        failure = message
                    case TurnAbortedEvent(turn_id=outcome.turn_id, reason=reason):
                        raise TurnAbortedError(f"review turn {outcome.turn_id} was {reason}")
                    case TaskCompleteEvent(turn_id=outcome.turn_id):
                        if failure is not None:
                            raise TurnError(failure)
                        return output
        raise ThreadClosedError(f"thread {self.thread_id} shut down before its review ended")

    async def _answer_questions(self, request: RequestUserInputEvent, answerer: QuestionAnswerer | None) -> UserInputAnswerOp:
        if answerer is None:
            return UserInputAnswerOp(id=request.call_id, error=NO_ANSWERER)
        try:
            answers = await answerer(request)
        except BaseException:  # an answerer that fails or is cancelled stops the turn it held
            with trio.CancelScope(shield=True):
                await self.submit(InterruptOp(turn_id=request.turn_id))
            raise
        return UserInputAnswerOp(id=request.call_id, response=user_input_response(answers))

    async def compact(self) -> None:
        """Compact the thread's history (a turn of its own, replacing a running one) and wait
        until it is done. TurnError when it fails (the history is then unchanged), or when the
        thread has nothing to compact; TurnAbortedError when it is interrupted."""
        with self.events() as events:
            outcome = await self.submit_and_wait(CompactOp())
            if outcome.error is not None:
                raise TurnError(outcome.error.message)
            failure: str | None = None
            async for ev in events:
                match ev.msg:
                    case ErrorEvent(turn_id=turn_id, message=message) if turn_id == outcome.turn_id:
                        failure = message
                    case TurnAbortedEvent(turn_id=turn_id, reason=reason) if turn_id == outcome.turn_id:
                        raise TurnAbortedError(f"compaction {turn_id} was {reason}")
                    case TaskCompleteEvent(turn_id=turn_id) if turn_id == outcome.turn_id:
                        if failure is not None:
                            raise TurnError(failure)
                        return
        raise ThreadClosedError(f"thread {self.thread_id} shut down before its compaction ended")

    async def interrupt(self) -> str | None:
        """Abort the running turn (it ends with `turn_aborted`); returns its id, None if idle."""
        outcome = await self.submit_and_wait(InterruptOp())
        return outcome.turn_id

    def close(self) -> None:
        """Close the submission channel: the actor tears down as on `shutdown`."""
        self._send.close()

    @property
    def is_closing(self) -> bool:
        """Shutdown was asked for and the actor has not ended yet (its rollout is not released)."""
        return self._shutdown_requested and not self.is_closed

    async def shutdown_and_wait(self) -> None:
        """Submit `shutdown` (once, however many callers ask) and wait until the actor has ended.

        ThreadClosedError if the actor cannot take it."""
        if not self._shutdown_requested:
            self._shutdown_requested = True
            await self.submit(ShutdownOp())
        await self._actor.closed.wait()

    async def shutdown_if_idle(self) -> str | None:
        """Shut down unless a turn is running (the actor decides, so no turn can slip in between).

        None once the actor has ended; else why it goes on."""
        outcome = await self.submit_and_wait(ShutdownOp(if_idle=True))
        if outcome.error is not None:
            return outcome.error.message
        self._shutdown_requested = True
        await self._actor.closed.wait()
        return None

    async def wait_closed(self) -> None:
        await self._actor.closed.wait()


class PendingApproval:
    """One approval request of a thread, and the ways to answer it."""

    def __init__(self, thread: ThreadHandle, request: ApprovalRequestEvent) -> None:
        self.thread = thread
        self.request = request

    async def answer(self, decision: ReviewDecision) -> None:
        """Answer it; ThreadClosedError if the thread has ended. An answer to a request that was
        answered already, or whose turn ended, changes nothing (the thread reports an error)."""
        op = ExecApprovalOp if isinstance(self.request, ExecApprovalRequestEvent) else PatchApprovalOp
        await self.thread.submit(op(id=self.request.call_id, decision=decision))

    async def accept(self) -> None:
        await self.answer("approved")

    async def accept_for_session(self) -> None:
        await self.answer("approved_for_session")

    async def decline(self) -> None:
        await self.answer("denied")

    async def cancel(self) -> None:
        """Decline it and interrupt its turn."""
        await self.answer("abort")


class PendingUserInput:
    """The model's questions to the user (`request.questions`), and the way to answer them."""

    def __init__(self, thread: ThreadHandle, request: RequestUserInputEvent) -> None:
        self.thread = thread
        self.request = request

    async def answer(self, answers: Mapping[str, Sequence[str]]) -> None:
        """Answer them (question id to the labels chosen or free text); the model reads the
        answers. ThreadClosedError if the thread has ended; a late answer changes nothing."""
        await self.thread.submit(UserInputAnswerOp(id=self.request.call_id, response=user_input_response(answers)))


_USER_REQUESTS = (ExecApprovalRequestEvent, ApplyPatchApprovalRequestEvent, RequestUserInputEvent)
"""What `approvals()` yields: the requests a user answers (a dynamic tool call is the client's)."""


def _pending(thread: ThreadHandle, request: ApprovalRequestEvent | RequestUserInputEvent) -> PendingApproval | PendingUserInput:
    return PendingUserInput(thread, request) if isinstance(request, RequestUserInputEvent) else PendingApproval(thread, request)


class ApprovalStream:
    """The approval requests and questions of one thread, from the moment it is entered (`with`):
    first those already pending, then each new one. Ends when the thread does."""

    def __init__(self, thread: ThreadHandle) -> None:
        self._thread = thread
        self._events: Subscription[Event] | None = None
        self._backlog: list[ApprovalRequestEvent | RequestUserInputEvent] = []

    def __enter__(self) -> ApprovalStream:
        self._events = self._thread.events()
        self._backlog = [request for _, request in self._thread.pending_requests() if isinstance(request, _USER_REQUESTS)]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._events is not None:
            self._events.close()

    def __aiter__(self) -> ApprovalStream:
        return self

    async def __anext__(self) -> PendingApproval | PendingUserInput:
        assert self._events is not None, "use `with thread.approvals() as requests:`"
        if self._backlog:
            return _pending(self._thread, self._backlog.pop(0))
        async for event in self._events:  # subscribed and listed at once: no request is in both
            if isinstance(event.msg, _USER_REQUESTS):
                return _pending(self._thread, event.msg)
        raise StopAsyncIteration
