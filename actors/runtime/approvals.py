"""A thread's pending client requests: approvals (a tool asks, the user answers through an op),
calls of a client's dynamic tools (the client runs it and answers with its result) and the
model's questions to the user (`request_user_input`, answered with the user's answers).

A tool of a running turn calls `Approvals.ask` with an approval request event; the event goes
to every subscriber (the app-server turns it into a server request to its clients), and the tool
waits. The `exec_approval` / `patch_approval` op, handled by the thread actor while the turn runs,
answers it (`answer`). However the wait ends (answered, or the turn cancelled by an interrupt
or a shutdown), `ApprovalResolvedEvent` follows, so every client dismisses the request. A client
that subscribes later gets the requests still pending (`replay`).

`approved_for_session` is remembered per request key (a command's argv, a patch's set of files)
for the life of the thread, kept in its rollout (a key wrapped in `InProcess`, such as an
escalation's, only while it stays loaded): the same request is then approved without asking. A dynamic tool
call (`call_client`) waits the same way for the `dynamic_tool_response` op, questions
(`ask_user`) for the `user_input_answer` op, a request for more access (`ask_permissions`) for
`request_permissions_response`. A request is on disk before any client hears it, and so is its
end: a thread resumed after the process stopped asks again what was left unanswered (see
`ThreadActor._take_up_unfinished_turn`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from spindle.protocol.events import (
    ApprovalRequestEvent,
    ApprovalResolvedEvent,
    ClientRequestEvent,
    DynamicToolCallRequestEvent,
    EventMsg,
    PermissionsRequestEvent,
    RequestUserInputEvent,
)
from spindle.protocol.ops import (
    DynamicToolResponseOp,
    ExecApprovalOp,
    PatchApprovalOp,
    RequestPermissionsResponseOp,
    UserInputAnswerOp,
)
from spindle.protocol.questions import UserInputResponse
from spindle.protocol.sandbox import PermissionGrant
from spindle.protocol.settings import ReviewDecision

from .grants import Grants


class ApprovalError(Exception):
    """An answer that matches no pending request (unknown id, or already resolved)."""


@dataclass(frozen=True)
class InProcess:
    """A request key that `approved_for_session` covers only while the thread stays loaded, not
    after a restart: leaving the sandbox, writing outside it."""

    key: Hashable


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """A client's answer to a call of its dynamic tool: content items (`inputText`,
    `inputImage`, ...) and whether the call succeeded."""

    content_items: list[dict[str, Any]]
    success: bool


@dataclass(frozen=True, kw_only=True)
class UserInputReply:
    """The user's answers to the model's questions, or why there are none (`error`)."""

    response: UserInputResponse = field(default_factory=UserInputResponse)
    error: str | None = None


Answer = ReviewDecision | ToolResult | PermissionGrant | UserInputReply
AnswerOp = ExecApprovalOp | PatchApprovalOp | DynamicToolResponseOp | RequestPermissionsResponseOp | UserInputAnswerOp
"""The ops that answer a pending client request."""


def answer_of(op: AnswerOp) -> Answer:
    """What `op` answers its request with."""
    match op:
        case DynamicToolResponseOp(content_items=items, success=success):
            return ToolResult(content_items=items, success=success)
        case RequestPermissionsResponseOp(response=grant):
            return grant
        case UserInputAnswerOp(response=response, error=error):
            return UserInputReply(response=response, error=error)
        case ExecApprovalOp(decision=decision) | PatchApprovalOp(decision=decision):
            return decision


@dataclass(eq=False)
class _Pending:
    sub_id: str
    request: ClientRequestEvent
    answered: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None
    announced: bool = False
    """Delivered to subscribers (so on disk): a later subscriber is asked too."""


class Approvals:
    """The client requests pending on one thread, and what the user approved for the session."""

    def __init__(self, emit: Callable[[str, EventMsg], None],
                 emit_durably: Callable[[str, EventMsg], Awaitable[None]] | None = None) -> None:
        """`emit` records and delivers an event; `emit_durably`, if given, delivers a request only
        once its record is on disk (so a restart can ask it again)."""
        self._emit = emit
        self._emit_durably = emit_durably
        self._pending: dict[str, _Pending] = {}
        self._approved_for_session: set[str] = set()
        self.session_grants = Grants()
        """The extra access granted for the session (`request_permissions`), while loaded."""

    async def ask(self, sub_id: str, request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        """The user's decision on `request` (emitted under submission `sub_id`); at once
        `approved_for_session` if `key` was approved so before. Cancelled with the turn."""
        durable = not isinstance(key, InProcess)
        text = key_text(key.key if isinstance(key, InProcess) else key)
        if text in self._approved_for_session:
            return "approved_for_session"
        decision = await self._wait(sub_id, request, text if durable else None)
        assert isinstance(decision, str)
        if decision == "approved_for_session":
            self._approved_for_session.add(text)
        return decision

    def remember(self, events: Iterable[object]) -> None:
        """Take up what `events` (a resumed rollout's) approved for the session."""
        for event in events:
            if isinstance(event, ApprovalResolvedEvent) and event.decision == "approved_for_session":
                if isinstance(event.session_key, str):
                    self._approved_for_session.add(event.session_key)

    async def call_client(self, sub_id: str, request: DynamicToolCallRequestEvent) -> ToolResult:
        """The client's result for a call of its tool. Cancelled with the turn."""
        result = await self._wait(sub_id, request)
        assert isinstance(result, ToolResult)
        return result

    async def ask_permissions(self, sub_id: str, request: PermissionsRequestEvent) -> PermissionGrant:
        """The user's answer to a request for extra access. Cancelled with the turn."""
        grant = await self._wait(sub_id, request)
        assert isinstance(grant, PermissionGrant)
        return grant

    async def ask_user(self, sub_id: str, request: RequestUserInputEvent) -> UserInputReply:
        """The user's answers to the model's questions. Cancelled with the turn."""
        reply = await self._wait(sub_id, request)
        assert isinstance(reply, UserInputReply)
        return reply

    async def _wait(self, sub_id: str, request: ClientRequestEvent, key: str | None = None) -> Answer:
        if request.call_id in self._pending:
            raise ApprovalError(f"a client request with id {request.call_id!r} is already pending")
        pending = self._pending[request.call_id] = _Pending(sub_id, request)
        try:
            if self._emit_durably is not None:
                await self._emit_durably(sub_id, request)
            else:
                self._emit(sub_id, request)
            pending.announced = True
            await pending.answered.wait()
        finally:
            del self._pending[request.call_id]
            decision = pending.answer if isinstance(pending.answer, str) else None
            self._emit(sub_id, ApprovalResolvedEvent(
                call_id=request.call_id, decision=decision,
                session_key=key if decision == "approved_for_session" else None))
        assert pending.answer is not None
        return pending.answer

    def answer(self, call_id: str, answer: Answer) -> None:
        """Answer the pending request `call_id` (a decision for an approval, a result for a tool
        call, answers for questions); ApprovalError if there is none, or the answer is of another
        kind."""
        pending = self._pending.get(call_id)
        if pending is None or pending.answered.is_set():
            raise ApprovalError(f"no client request {call_id!r} is pending (it was answered, or its turn ended)")
        wanted, kind = _WANTED.get(type(pending.request), ("an approval decision", str))
        if not isinstance(answer, kind):
            raise ApprovalError(f"client request {call_id!r} wants {wanted}")
        pending.answer = answer
        pending.answered.set()

    def replay(self) -> list[tuple[str, ClientRequestEvent]]:
        """The requests still waiting for an answer, oldest first, with their submission ids."""
        return [(p.sub_id, p.request) for p in self._pending.values() if p.announced and not p.answered.is_set()]


_WANTED: dict[type, tuple[str, type]] = {
    DynamicToolCallRequestEvent: ("a tool result", ToolResult),
    PermissionsRequestEvent: ("a permission grant", PermissionGrant),
    RequestUserInputEvent: ("the user's answers", UserInputReply),
}
"""The answer each kind of request takes, if not a decision."""


def key_text(key: Hashable) -> str:
    """A request key as canonical JSON (sets sorted), the form it is remembered and stored in; a
    key JSON cannot hold is kept by its repr (remembered, but equal only to itself)."""
    try:
        return msgspec.json.encode(key, order="deterministic").decode()
    except (TypeError, msgspec.EncodeError):
        return repr(key)
