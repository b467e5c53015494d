"""Work that joins a running turn without being its task: a user's shell command started while
the turn runs (codex-rs `UserShellCommandMode::ActiveTurnAuxiliary`, which shares the turn's
cancellation token).

Each piece of work runs in the thread's nursery, in a cancel scope of its own that the turn holds:
interrupting the turn cancels its auxiliary work first and waits for it to end (so what it reports
comes before the turn's end), then the turn itself. A turn that ends on its own does not wait: its
auxiliary work goes on and reports into whatever the thread does next, as in Codex.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

log = structlog.get_logger(__name__)

Job = Callable[[], Awaitable[None]]


class Auxiliaries:
    """One turn's auxiliary work."""

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self._cancelled = False
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return self._running

    def start(self, nursery: trio.Nursery, job: Job) -> None:
        """Run `job` in `nursery` as auxiliary work of this turn (cancelled at once if the turn
        has been interrupted)."""
        if self._running == 0:
            self._idle = trio.Event()
        self._running += 1
        nursery.start_soon(self._run, job)

    async def cancel(self) -> None:
        """Cancel the turn's auxiliary work, and any started later; wait until all of it has ended."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()
        if self._running:
            await self._idle.wait()

    async def _run(self, job: Job) -> None:
        try:
            with trio.CancelScope() as scope:
                if self._cancelled:
                    scope.cancel()
                self._scopes.add(scope)
                try:
                    await job()
                except Exception:  # the work reports its own failures; a bug in it must not end the thread
                    log.exception("auxiliary work of a turn failed")
                finally:
                    self._scopes.discard(scope)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()
