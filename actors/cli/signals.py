"""Stopping on a signal: the one mechanism `spindle app-server` and `spindle load` share."""

from __future__ import annotations

import signal
from collections.abc import Callable

import structlog
import trio

from .early import early

log = structlog.get_logger(__name__)


EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 0}
"""How a command stopped by a signal exits: 130 for Ctrl-C, as shells expect; 0 for SIGTERM."""


async def on_signal(*signums: signal.Signals, then: Callable[[signal.Signals], object]) -> None:
    """Call `then(signum)` at the first of `signums` (it cancels a scope or sets an event), then
    return; a signal that came before this listened counts as the first."""
    first = next((signum for signum in early if signum in signums), None)
    if first is not None:
        log.info("stopping on signal", signal=first.name)
        then(first)
        return
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            received = signal.Signals(signum)
            log.info("stopping on signal", signal=received.name)
            then(received)
            return
