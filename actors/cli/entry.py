"""The `spindle` console script: stop signals are deferred before anything heavy is imported."""

from __future__ import annotations

from .early import defer_stop_signals


def main() -> int:
    defer_stop_signals()
    from .main import main as run

    return run()
