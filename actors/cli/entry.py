"""The `spindle` console script: stop signals are deferred before anything heavy is imported."""

from __future__ import annotations

import sys

from .early import defer_stop_signals

RICH_COMMANDS = frozenset({"load"})
"""The commands that draw with `rich` (the `load` extra). Every other command marks it absent
before structlog is imported, since structlog imports rich whenever it is installed (~20 ms of an
app-server's start-up, for tracebacks nobody renders with it)."""
OPTIONS_WITH_VALUES = frozenset({"-c", "--config", "--log-level"})


def command_of(argv: list[str]) -> str | None:
    """The subcommand in `argv` (the arguments after the program name), None without one."""
    args = iter(argv)
    for arg in args:
        if arg in OPTIONS_WITH_VALUES:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> int:
    defer_stop_signals()
    if command_of(sys.argv[1:]) not in RICH_COMMANDS:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from .main import main as run

    return run()
