"""Stop signals that arrive before a command listens for them (imports nothing heavy)."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
early: list[signal.Signals] = []
"""Stop signals that arrived before a command's `on_signal` was listening."""


def defer_stop_signals() -> None:
    """Until `on_signal` listens, remember SIGINT and SIGTERM instead of acting on them, so a
    Ctrl-C during start-up stops a command as cleanly as one later (and trio, seeing a handler
    that is not Python's default, raises no KeyboardInterrupt of its own)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda received, _frame: early.append(signal.Signals(received)))


def restore_stop_signals() -> None:
    """Python's own handling again, for commands that stop on KeyboardInterrupt or SIGTERM's
    default; a stop signal that came early is delivered again now, so none is lost."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for signum in dict.fromkeys(early):
        signal.raise_signal(signum)
