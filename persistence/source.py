"""The in-memory rollout source: one per live thread, kept in step with every write (seed 001)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from spindle.protocol.rollout import RolloutItem


class InMemoryRolloutSource:
    """An ordered, append-only view of a thread's rollout items.

    Indices are absolute and stable: `inclusive_start_of_rollout_index()` is where the retained
    items begin (0 until older items are trimmed), `exclusive_end_of_rollout_index()` is one past
    the last item.
    """

    __slots__ = ("_items", "_start")

    def __init__(self, items: Iterable[RolloutItem] = ()) -> None:
        self._items: list[RolloutItem] = list(items)
        self._start = 0

    def inclusive_start_of_rollout_index(self) -> int:
        return self._start

    def exclusive_end_of_rollout_index(self) -> int:
        return self._start + len(self._items)

    def append(self, items: Iterable[RolloutItem]) -> None:
        self._items.extend(items)

    def iter_forward_from(self, index: int) -> Iterator[RolloutItem]:
        """Items from `index` (absolute, clamped to the retained range) to the end."""
        pos = max(index - self._start, 0)
        for i in range(pos, len(self._items)):
            yield self._items[i]

    def iter_reverse_from(self, index: int) -> Iterator[RolloutItem]:
        """Items from `index - 1` (absolute, exclusive end) back to the start."""
        pos = min(index - self._start, len(self._items))
        for i in range(pos - 1, -1, -1):
            yield self._items[i]

    def items(self) -> list[RolloutItem]:
        """A copy of every retained item, oldest first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
