"""Stopping on a signal: the one mechanism `spindle app-server` and `spindle load` share."""

from __future__ import annotations

import signal
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger(__name__)


async def cancel_on_signal(scope: trio.CancelScope, *signums: signal.Signals, then: Callable[[], None] | None = None) -> None:
    """Cancel `scope` at the first of `signums` (calling `then` first); the caller's cleanup runs as usual."""
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            log.info("stopping on signal", signal=signal.Signals(signum).name)
            if then is not None:
                then()
            scope.cancel()
            return
