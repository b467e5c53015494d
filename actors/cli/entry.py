"""The `spindle` console script: stop signals are deferred before anything heavy is imported,
and `spindle app-server proxy` / `daemon` run without the runtime (`light`)."""

from __future__ import annotations

import sys

from .early import defer_stop_signals

RICH_COMMANDS = frozenset({"load"})
"""The commands that draw with `rich` (the `load` extra). Every other command marks it absent
before structlog is imported, since structlog imports rich whenever it is installed (~20 ms of an
app-server's start-up, for tracebacks nobody renders with it)."""


def main() -> int:
    defer_stop_signals()
    from .light import command_index, is_light

    argv = sys.argv[1:]
    if is_light(argv):
        from .light import main as run_light

        return run_light(argv)
    index = command_index(argv)
    if index is None or argv[index] not in RICH_COMMANDS:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from .main import main as run

    return run()
