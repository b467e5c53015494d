"""A thread's events, numbered and kept for a while, so a subscriber that went away can come back
from the last one it saw.

`EventLog` is the thread's `Broadcaster`: it stamps each published event with the runtime's next
sequence number (`Event.seq`) and keeps the latest in a window bounded by a count and by bytes
(`REPLAY_EVENTS`, `REPLAY_BYTES`). `subscribe_after(seq)` hands back what the window holds after
`seq` together with a subscription to what comes next, in one step, so nothing falls between
them; when the window no longer reaches back to `seq` it raises `ReplayTooOld`, and the
subscriber must re-read the thread instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec

from spindle.protocol.events import Event

from .fanout import SUBSCRIBER_BUFFER, Broadcaster, Subscription

REPLAY_EVENTS = 4096
"""Most events of one thread kept for subscribers that come back."""
REPLAY_BYTES = 8 * 1024 * 1024
"""Most bytes (the events' JSON) of one thread kept for them; the latest event is kept whatever its size."""


class SeqCounter:
    """The sequence numbers of one runtime's events: one counter for all its threads, so a thread's
    numbers grow across its reloads. It starts at the wall clock in microseconds, so a restarted
    server starts above the numbers the last one gave (it gave fewer than one per microsecond)."""

    def __init__(self, start: int | None = None) -> None:
        self.last = time.time_ns() // 1000 if start is None else start
        """The number given last (or the start)."""

    def next(self) -> int:
        self.last += 1
        return self.last


class ReplayTooOld(Exception):
    """The events after `after` are no longer all kept (or `after` is not a number of this log,
    which holds `oldest`..`last`): the subscriber re-reads the thread instead."""

    def __init__(self, after: int, oldest: int, last: int) -> None:
        super().__init__(f"events after {after} are no longer kept (the replay window holds {oldest}..{last})")
        self.after = after
        self.oldest = oldest
        self.last = last


class EventLog(Broadcaster[Event]):
    """A thread's broadcaster that numbers its events and keeps the latest for `subscribe_after`."""

    def __init__(
        self,
        seqs: SeqCounter,
        *,
        keep: Callable[[Event], bool] | None = None,
        capacity: int = SUBSCRIBER_BUFFER,
        max_events: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(capacity, keep=keep)
        self._seqs = seqs
        self._max_events = REPLAY_EVENTS if max_events is None else max_events
        self._max_bytes = REPLAY_BYTES if max_bytes is None else max_bytes
        self._window: deque[tuple[Event, int]] = deque()
        self._bytes = 0
        self._floor = seqs.last
        """A subscriber that saw this number (or a later one) misses nothing the window lacks."""
        self.last_seq = seqs.last
        """The number of the latest event (before any: a number below all of this log's)."""
        self._encoder = msgspec.json.Encoder()

    def publish(self, item: Event) -> None:
        event = msgspec.structs.replace(item, seq=self._seqs.next(), at_ms=time.time_ns() // 1_000_000)
        size = len(self._encoder.encode(event.msg))
        self._window.append((event, size))
        self._bytes += size
        while len(self._window) > self._max_events or (self._bytes > self._max_bytes and len(self._window) > 1):
            dropped, dropped_size = self._window.popleft()
            self._bytes -= dropped_size
            self._floor = dropped.seq
        self.last_seq = event.seq
        super().publish(event)

    @property
    def oldest_seq(self) -> int:
        """The number of the oldest event kept (past the last one when none is)."""
        return self._window[0][0].seq if self._window else self.last_seq + 1

    def subscribe_after(self, seq: int, capacity: int | None = None) -> tuple[list[Event], Subscription[Event]]:
        """The kept events numbered after `seq`, and a subscription to those published from now on.

        ReplayTooOld when some event after `seq` is no longer kept, or `seq` is not a number this
        log could have given (one from an earlier life of the thread, or from the future)."""
        if not self._floor <= seq <= self.last_seq:
            raise ReplayTooOld(seq, self.oldest_seq, self.last_seq)
        missed = [event for event, _ in self._window if event.seq > seq]
        return missed, self.subscribe(capacity)
