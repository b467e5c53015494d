"""One client's subscription to one thread: a `Feed`, whose pump turns the thread's events into
that client's notifications and server requests.

A feed either retains the thread (the client works with it: while one does, the thread stays
loaded) or only observes it (it hears everything, approvals included, but keeps nothing loaded).
Each notification made from a thread event carries the event's number as `threadSeq`; a feed
that starts from a number the client saw first sends the events it missed, in order.
"""

from __future__ import annotations

from typing import Protocol

import trio

from spindle.actors.runtime import Lagged, Subscription, ThreadHandle
from spindle.protocol.appserver import v2
from spindle.protocol.events import Event, TaskCompleteEvent, TaskStartedEvent, TurnAbortedEvent

from .notify import Ask, EventTranslator, Settled


class Outlet(Protocol):
    """Where a feed's output goes: its client's connection."""

    async def notify(self, method: str, params: object, seq: int = 0) -> None: ...

    async def ask(self, thread_id: str, key: str, method: str, params: object) -> None:
        """Send the thread's request `key` as a server request (once; only the tool owner gets tool calls)."""

    async def settle(self, thread_id: str, key: str, *, announce: bool, seq: int) -> None:
        """The request `key` is over: forget it, telling the client if `announce`."""

    def feed_ended(self, feed: Feed) -> None:
        """`feed`'s pump has returned."""


class Feed:
    """A client's subscription to one thread: what it has missed, then what comes."""

    def __init__(self, handle: ThreadHandle, events: Subscription[Event], *, retaining: bool,
                 missed: list[Event] | None = None) -> None:
        """`events` was just taken from `handle`; `missed`, the events before it the client asked
        for again (None: it asked for none)."""
        self.handle = handle
        self.thread_id = handle.thread_id
        self.retaining = retaining
        """Whether this subscription keeps the thread loaded (else it only observes)."""
        self.scope = trio.CancelScope()
        self._events = events
        self._missed = missed or []
        self._turn = turn_before(self._missed, handle.active_turn_id)

    def end(self) -> None:
        self.scope.cancel()

    async def run(self, out: Outlet) -> None:
        """The pump: missed events, then requests still waiting for an answer, then each event as
        it comes, until the thread ends (`thread/closed`) or the feed is ended."""
        translator = EventTranslator(self.thread_id, self._turn)
        with self.scope, self._events as events:
            for event in self._missed:
                await self._send(out, translator, event)
            for sub_id, request in self.handle.pending_requests():  # asked before this client subscribed
                await self._send(out, translator, Event(id=sub_id, msg=request))
            while True:
                try:
                    event = await events.receive()
                except Lagged as lag:
                    await out.notify("warning", v2.WarningNotice(message=lag_warning(self.thread_id, lag), thread_id=self.thread_id))
                    continue
                except (trio.EndOfChannel, trio.ClosedResourceError):  # the thread ended on its own
                    await out.notify("thread/status/changed", v2.ThreadStatusChanged(thread_id=self.thread_id, status=v2.NOT_LOADED))
                    await out.notify("thread/closed", v2.ThreadIdNotice(thread_id=self.thread_id))
                    break
                await self._send(out, translator, event)
        out.feed_ended(self)

    async def _send(self, out: Outlet, translator: EventTranslator, event: Event) -> None:
        for output in translator.translate(event):
            match output:
                case Ask(key=key, method=method, params=params):
                    await out.ask(self.thread_id, key, method, params)
                case Settled(key=key, announce=announce):
                    await out.settle(self.thread_id, key, announce=announce, seq=event.seq)
                case (method, params):
                    await out.notify(method, params, event.seq)


def turn_before(missed: list[Event], running: str | None) -> str | None:
    """The turn that was running before the first of `missed` (`running`: the one running after
    the last): the turn the first turn boundary among them ends, or none if it starts one."""
    for event in missed:
        match event.msg:
            case TaskStartedEvent():
                return None
            case TaskCompleteEvent(turn_id=turn_id) | TurnAbortedEvent(turn_id=turn_id):
                return turn_id
    return running


def lag_warning(thread_id: str, lag: Lagged) -> str:
    """What a lagging client is told: what it lost, and how to catch up when it matters."""
    if lag.lifecycle_missed:
        return (
            f"{lag.missed} events of thread {thread_id} were dropped because this client read too slowly, "
            f"{lag.lifecycle_missed} of them item, turn or status events; re-read the thread with thread/read"
        )
    return f"{lag.missed} streaming deltas or token counts of thread {thread_id} were dropped because this client read too slowly"
