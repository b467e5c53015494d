"""Fan-out of a thread's events to any number of subscribers, lossy by policy.

The actor never waits for a subscriber. Each subscription has a bounded buffer. When it is full,
items the broadcaster's `keep` predicate marks as lifecycle (for threads: everything but deltas
and token counts) are still buffered, up to `LIFECYCLE_HEADROOM` times the capacity; other items
are dropped and counted. A subscriber that reads everything buffered before a gap gets
`Lagged(missed, lifecycle_missed)` once, then delivery resumes in order. Only a subscriber that
falls behind by more than the headroom loses lifecycle items, and `Lagged.lifecycle_missed` says
so. A slow subscriber therefore never slows the actor or the other subscribers (the policy of
tractor's broadcast receiver, with a class of items it keeps).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")

SUBSCRIBER_BUFFER = 1024
"""Events buffered per subscriber before it counts as lagging."""
LIFECYCLE_HEADROOM = 4
"""A lagging subscriber still buffers lifecycle items up to this many times its capacity."""


class Lagged(Exception):
    """The subscriber fell behind: `missed` items were dropped for it, `lifecycle_missed` of them
    lifecycle items (zero unless it fell behind by more than the headroom)."""

    def __init__(self, missed: int, lifecycle_missed: int = 0) -> None:
        super().__init__(f"subscriber lagged: {missed} events dropped ({lifecycle_missed} lifecycle)")
        self.missed = missed
        self.lifecycle_missed = lifecycle_missed


class _Gap:
    __slots__ = ("missed", "lifecycle_missed")

    def __init__(self) -> None:
        self.missed = 0
        self.lifecycle_missed = 0


class Subscription(Generic[T]):
    """The receiving side of one subscriber. Async-iterable; `close()` (or `with`) detaches it."""

    def __init__(
        self, capacity: int, on_close: Callable[[Subscription[T]], None], keep: Callable[[T], bool] | None = None
    ) -> None:
        self._buf: deque[T | _Gap] = deque()
        self._capacity = capacity
        self._keep = keep
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._on_close = on_close
        self.dropped = 0

    # producer side (called by the broadcaster, never blocks)
    def _offer(self, item: T) -> None:
        buf = self._buf
        lifecycle = self._keep is not None and self._keep(item)
        if len(buf) < self._capacity or (lifecycle and len(buf) < self._capacity * LIFECYCLE_HEADROOM):
            buf.append(item)
        else:
            gap = buf[-1] if buf and type(buf[-1]) is _Gap else None
            if gap is None:
                gap = _Gap()
                buf.append(gap)
            gap.missed += 1  # type: ignore[union-attr]
            gap.lifecycle_missed += lifecycle  # type: ignore[union-attr]
            self.dropped += 1
        self._lot.unpark()

    def _end(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    # consumer side
    def receive_nowait(self) -> T:
        if not self._buf:
            if self._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock
        item = self._buf.popleft()
        if type(item) is _Gap:
            raise Lagged(item.missed, item.lifecycle_missed)
        return item  # type: ignore[return-value]

    async def receive(self) -> T:
        """The next event; `Lagged` after a gap; `trio.EndOfChannel` once the source has ended."""
        while not self._buf and not self._closed:
            await self._lot.park()
        await trio.lowlevel.checkpoint()
        return self.receive_nowait()

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Detach from the source; buffered events stay readable."""
        if not self._closed:
            self._end()
            self._on_close(self)

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> tuple[int, int]:
        """(buffered, dropped so far)."""
        return len(self._buf), self.dropped


class Broadcaster(Generic[T]):
    """Delivers each published item to every live subscription, without ever blocking."""

    def __init__(self, capacity: int = SUBSCRIBER_BUFFER, *, keep: Callable[[T], bool] | None = None) -> None:
        """`keep` marks the lifecycle items a lagging subscriber still gets (see the module doc)."""
        self._subs: list[Subscription[T]] = []
        self._capacity = capacity
        self._keep = keep
        self._closed = False

    def subscribe(self, capacity: int | None = None, *, replay: Iterable[T] = ()) -> Subscription[T]:
        """A subscription to what is published from now on, after the items of `replay`."""
        sub: Subscription[T] = Subscription(capacity or self._capacity, self._detach, self._keep)
        for item in replay:
            sub._offer(item)
        if self._closed:
            sub._end()
        else:
            self._subs.append(sub)
        return sub

    def _detach(self, sub: Subscription[T]) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    def publish(self, item: T) -> None:
        for sub in self._subs:
            sub._offer(item)

    def close(self) -> None:
        """End every subscription after what it has buffered."""
        self._closed = True
        subs, self._subs = self._subs, []
        for sub in subs:
            sub._end()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
