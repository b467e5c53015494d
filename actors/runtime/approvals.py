"""A thread's pending approval requests: a tool asks, the user answers through an op.

A tool of a running turn calls `Approvals.ask` with an approval request event; the event goes
to every subscriber (the app-server turns it into a server request to its clients), and the tool
waits. The `exec_approval` / `patch_approval` op, handled by the thread actor while the turn runs,
answers it (`answer`). However the wait ends (answered, or the turn cancelled by an interrupt
or a shutdown), `ApprovalResolvedEvent` follows, so every client dismisses the request. A client
that subscribes later gets the requests still pending (`replay`).

`approved_for_session` is remembered per request key (a command's argv, a patch's set of files)
for the life of the thread: the same request is then approved without asking.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import trio

from spindle.protocol.events import ApprovalRequestEvent, ApprovalResolvedEvent, EventMsg
from spindle.protocol.settings import ReviewDecision


class ApprovalError(Exception):
    """An answer that matches no pending request (unknown id, or already resolved)."""


@dataclass(eq=False)
class _Pending:
    sub_id: str
    request: ApprovalRequestEvent
    answered: trio.Event = field(default_factory=trio.Event)
    decision: ReviewDecision = "abort"


class Approvals:
    """The approval requests pending on one thread, and what the user approved for the session."""

    def __init__(self, emit: Callable[[str, EventMsg], None]) -> None:
        self._emit = emit
        self._pending: dict[str, _Pending] = {}
        self._approved_for_session: set[Hashable] = set()

    async def ask(self, sub_id: str, request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        """The user's decision on `request` (emitted under submission `sub_id`); at once
        `approved_for_session` if `key` was approved so before. Cancelled with the turn."""
        if key in self._approved_for_session:
            return "approved_for_session"
        if request.call_id in self._pending:
            raise ApprovalError(f"an approval request with id {request.call_id!r} is already pending")
        pending = self._pending[request.call_id] = _Pending(sub_id, request)
        self._emit(sub_id, request)
        try:
            await pending.answered.wait()
        finally:
            del self._pending[request.call_id]
            answered = pending.answered.is_set()
            self._emit(sub_id, ApprovalResolvedEvent(
                call_id=request.call_id, decision=pending.decision if answered else None))
        if pending.decision == "approved_for_session":
            self._approved_for_session.add(key)
        return pending.decision

    def answer(self, call_id: str, decision: ReviewDecision) -> None:
        """Answer the pending request `call_id`; ApprovalError if there is none."""
        pending = self._pending.get(call_id)
        if pending is None or pending.answered.is_set():
            raise ApprovalError(f"no approval request {call_id!r} is pending (it was answered, or its turn ended)")
        pending.decision = decision
        pending.answered.set()

    def replay(self) -> list[tuple[str, ApprovalRequestEvent]]:
        """The requests still waiting for an answer, oldest first, with their submission ids."""
        return [(p.sub_id, p.request) for p in self._pending.values() if not p.answered.is_set()]

    @property
    def waiting(self) -> bool:
        return any(not p.answered.is_set() for p in self._pending.values())
