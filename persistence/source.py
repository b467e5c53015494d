"""The in-memory rollout source: one per live thread, kept in step with every write."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from spindle.protocol.rollout import RolloutItem


class InMemoryRolloutSource:
    """An ordered, append-only copy of a thread's rollout items; index `i` is line `i` of the file."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[RolloutItem] = ()) -> None:
        self._items: list[RolloutItem] = list(items)

    def append(self, items: Iterable[RolloutItem]) -> None:
        self._items.extend(items)

    def iter_forward_from(self, index: int) -> Iterator[RolloutItem]:
        """Items from `index` (clamped to 0) to the end."""
        for i in range(max(index, 0), len(self._items)):
            yield self._items[i]

    def items(self) -> list[RolloutItem]:
        """A copy of every item, oldest first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
