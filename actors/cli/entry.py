"""The `spindle` console script: stop signals are deferred before anything heavy is imported,
and `spindle app-server proxy` / `daemon` run without the runtime (`light`)."""

from __future__ import annotations

import sys

from .early import defer_stop_signals


def main() -> int:
    defer_stop_signals()
    from .light import is_light

    if is_light(sys.argv[1:]):
        from .light import main as run_light

        return run_light(sys.argv[1:])
    from .main import main as run

    return run()
