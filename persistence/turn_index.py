"""The turn index of a rollout: where in the file each turn begins. Pure: no I/O.

Every turn the file opens (a `task_started`, with the `turn_context` line right before it) gets
a start: the byte offset of its first line, or `PENDING` until the writer has put that line on
disk. A turn's lines run from its start to the start of the next turn the file opens (rolled
back or not), or to the end of the file for the last one. The visible turns are those not rolled
back, oldest first: what `thread/turns/list` pages through. 100,000 turns cost about 11 MB here
(their ids, and two 8-byte integers each).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

PENDING = -1
"""The start of a turn whose first line is not on disk yet."""


@dataclass(frozen=True)
class Span:
    """The bytes holding some turns: from `start` to `end`; `end` None runs to the end of what is
    written, and on into what is not (`start` None: all of the turns is still unwritten)."""

    start: int | None
    end: int | None


class TurnIndex:
    __slots__ = ("_starts", "_first_pending", "ids", "_at")

    def __init__(self) -> None:
        self._starts = array("q")
        """The start of every turn the file opens, in order (rolled-back turns too)."""
        self._first_pending = 0
        """The first PENDING start: every start before it is placed, every one after it pending."""
        self.ids: list[str] = []
        """The visible turns' ids, oldest first."""
        self._at = array("q")
        """For each visible turn, its place in `_starts`."""

    def __len__(self) -> int:
        return len(self.ids)

    def open_turn(self, turn_id: str, start: int = PENDING) -> None:
        """A turn opens at `start` (PENDING: its first line is not written yet; a turn opened
        after a PENDING one is PENDING too, until the writer places them in order)."""
        self._at.append(len(self._starts))
        self._starts.append(start)
        if start != PENDING:
            self._first_pending = len(self._starts)
        self.ids.append(turn_id)

    def placed(self, start: int) -> None:
        """The oldest turn still PENDING was written: its first line is at `start`."""
        if self._first_pending < len(self._starts):
            self._starts[self._first_pending] = start
            self._first_pending += 1

    def roll_back(self, num_turns: int) -> None:
        """The last `num_turns` visible turns are dropped (all of them, if there are fewer)."""
        keep = max(0, len(self.ids) - max(num_turns, 0))
        del self.ids[keep:]
        del self._at[keep:]

    def span(self, first: int, last: int) -> Span:
        """The bytes of the visible turns `first` to `last` (positions, inclusive), and of the
        rolled-back turns between them."""
        start = self._starts[self._at[first]]
        following = self._at[last] + 1
        end = self._starts[following] if following < len(self._starts) else PENDING
        return Span(None if start == PENDING else start, None if end == PENDING else end)

    def last_start(self) -> int | None:
        """Where the last turn the file opens begins (None: no turn, or not written yet)."""
        if not self._starts or self._starts[-1] == PENDING:
            return None
        return self._starts[-1]
