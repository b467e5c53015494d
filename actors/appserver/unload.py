"""Unloading the threads no client retains, once they have been idle for the unload delay.

When the last retaining subscriber of a thread lets go (it unsubscribes, disconnects, or becomes
an observer), a countdown starts: after `thread_unload_delay_secs` (Codex's setting and default)
the thread is shut down if it is idle: its rollout flushed, its writer lease released, and
`thread/closed` sent. A turn still running (or waiting for an approval or an answer) refuses; the
countdown then waits for that turn to end and starts again. A client that retains the thread
again cancels it. The actor itself decides "idle", so no turn can slip in between.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import structlog
import trio

from spindle.actors.runtime import (
    Lagged,
    Subscription,
    ThreadClosedError,
    ThreadHandle,
    ThreadManager,
)
from spindle.protocol.events import Event, TaskCompleteEvent, TurnAbortedEvent

log = structlog.get_logger(__name__)

CLOSE_THREAD_S = 10.0
"""How long unloading a thread (flushing its rollout) may take."""


class Outcome(enum.Enum):
    UNLOADED = "unloaded"
    BUSY = "busy"
    """A turn runs: the thread stays."""
    GONE = "gone"
    """The thread ended otherwise, or did not shut down in time."""


class IdleUnloader:
    """The countdowns of the threads no client retains, one task each in the server's nursery."""

    def __init__(self, manager: ThreadManager, delay: float | None = None) -> None:
        """`delay`: seconds; None follows the config's `thread_unload_delay_secs`."""
        self.manager = manager
        self._delay = delay
        self._countdowns: dict[str, trio.CancelScope] = {}
        self._unloading: dict[str, trio.Event] = {}
        """Set once the unloading in flight (shielded) of a thread has come to an end."""

    @property
    def delay(self) -> float:
        return self.manager.config.thread_unload_delay_secs if self._delay is None else self._delay

    def counting(self, thread_id: str) -> bool:
        return thread_id in self._countdowns

    def start(self, nursery: trio.Nursery, handle: ThreadHandle, ended: Callable[[ThreadHandle, bool], None]) -> None:
        """Count down to unloading `handle` (once: a countdown that runs goes on); then call
        `ended(handle, unloaded)`, unless the countdown is cancelled."""
        if handle.thread_id in self._countdowns:
            return
        scope = self._countdowns[handle.thread_id] = trio.CancelScope()
        nursery.start_soon(self._count_down, handle, scope, ended)

    def cancel(self, thread_id: str) -> None:
        scope = self._countdowns.pop(thread_id, None)
        if scope is not None:
            scope.cancel()

    async def pause(self, thread_id: str) -> None:
        """Stop the thread's countdown, and wait for an unloading already under way to end."""
        self.cancel(thread_id)
        unloading = self._unloading.get(thread_id)
        if unloading is not None:
            await unloading.wait()

    def cancel_all(self) -> None:
        for thread_id in list(self._countdowns):
            self.cancel(thread_id)

    async def _count_down(self, handle: ThreadHandle, scope: trio.CancelScope, ended: Callable[[ThreadHandle, bool], None]) -> None:
        try:
            with scope:
                while True:
                    await trio.sleep(self.delay)
                    with handle.events() as events:  # taken first: a refusing turn's end is in it
                        outcome = await self._unload(handle)
                        if outcome is Outcome.BUSY:
                            log.info("thread kept loaded: a turn runs or waits for a client", thread_id=handle.thread_id)
                            await _turn_end(events, handle.active_turn_id)
                            continue
                    ended(handle, outcome is Outcome.UNLOADED)
                    return
        finally:
            if self._countdowns.get(handle.thread_id) is scope:
                del self._countdowns[handle.thread_id]

    async def _unload(self, handle: ThreadHandle) -> Outcome:
        """Shut the thread down if it is idle (shielded: once asked, it completes or times out)."""
        done = self._unloading[handle.thread_id] = trio.Event()
        try:
            return await self._shut_down(handle)
        finally:
            del self._unloading[handle.thread_id]
            done.set()

    async def _shut_down(self, handle: ThreadHandle) -> Outcome:
        with trio.move_on_after(CLOSE_THREAD_S) as deadline:
            deadline.shield = True
            try:
                refusal = await handle.shutdown_if_idle()
            except ThreadClosedError:
                return Outcome.GONE
            except Exception as exc:
                log.warning("thread did not shut down cleanly", thread_id=handle.thread_id, error=str(exc))
                return Outcome.GONE
        if deadline.cancelled_caught:
            log.warning("thread did not shut down in time", thread_id=handle.thread_id)
            return Outcome.GONE
        if refusal is not None:
            return Outcome.BUSY
        self.manager.registry.forget(handle)
        log.info("idle thread unloaded", thread_id=handle.thread_id)
        return Outcome.UNLOADED


async def _turn_end(events: Subscription[Event], turn_id: str | None) -> None:
    """Wait until the turn `turn_id` ends (at once if None), or the thread does."""
    while turn_id is not None:
        try:
            event = await events.receive()
        except Lagged:
            continue
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return
        match event.msg:
            case TaskCompleteEvent(turn_id=ended) | TurnAbortedEvent(turn_id=ended) if ended == turn_id:
                return
