"""Stopping on a signal: the one mechanism `spindle app-server` and `spindle load` share."""

from __future__ import annotations

import signal
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger(__name__)


async def on_signal(*signums: signal.Signals, then: Callable[[], None]) -> None:
    """Call `then` at the first of `signums` (it cancels a scope or sets an event), then return."""
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            log.info("stopping on signal", signal=signal.Signals(signum).name)
            then()
            return
