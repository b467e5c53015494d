"""What the thread actor made of a submission, for callers that wait on it (request/reply).

A caller registers interest in a submission id before sending it (`OutcomeBook.awaiting`); the
actor fills the outcome in while it dispatches that submission and settles it when done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from spindle.protocol.events import ErrorEvent


@dataclass
class SubmissionOutcome:
    """Filled in once the submission has been dispatched.

    `turn_id` is the turn the submission started, joined (steered input) or interrupted; `error`
    the error event the submission drew while it was being dispatched, if any.
    """

    settled: trio.Event = field(default_factory=trio.Event)
    turn_id: str | None = None
    error: ErrorEvent | None = None


class OutcomeBook:
    """The outcomes callers are waiting for, by submission id."""

    def __init__(self) -> None:
        self._waiting: dict[str, SubmissionOutcome] = {}

    @contextmanager
    def awaiting(self, sub_id: str) -> Iterator[SubmissionOutcome]:
        """An outcome for `sub_id`, forgotten on exit, so a submission that never got dispatched
        (timeout, closed thread) leaves nothing behind."""
        outcome = self._waiting[sub_id] = SubmissionOutcome()
        try:
            yield outcome
        finally:
            self._waiting.pop(sub_id, None)

    def set_turn(self, sub_id: str, turn_id: str | None) -> None:
        if (outcome := self._waiting.get(sub_id)) is not None:
            outcome.turn_id = turn_id

    def set_error(self, sub_id: str, error: ErrorEvent) -> None:
        """Keep the first error a submission drew."""
        if (outcome := self._waiting.get(sub_id)) is not None and outcome.error is None:
            outcome.error = error

    def settle(self, sub_id: str) -> None:
        if (outcome := self._waiting.pop(sub_id, None)) is not None:
            outcome.settled.set()

    def settle_all(self, error: ErrorEvent) -> None:
        """The thread has ended: every outcome still awaited settles with `error`."""
        for sub_id in list(self._waiting):
            self.set_error(sub_id, error)
            self.settle(sub_id)
