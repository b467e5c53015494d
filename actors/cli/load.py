"""`spindle load`: the command around the load driver; its flags are in `main.py`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from pathlib import Path

import trio

from spindle.actors.loadtest import ui
from spindle.actors.loadtest.driver import LoadError, LoadSpec, run_load
from spindle.actors.loadtest.stats import LoadStats
from spindle.actors.runtime import load_config
from spindle.protocol.config import Config

from .main import leaves
from .signals import on_signal


async def _run(spec: LoadSpec, config: Config | None, progress: ui.ProgressBar) -> LoadStats:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(on_signal, signal.SIGINT, then=lambda _signum: stop.set()))
        stats = await run_load(spec, config, progress, stop=stop)
        nursery.cancel_scope.cancel()
    return stats


def main(args: argparse.Namespace) -> int:
    """`spindle load`: run, draw the progress bar, print the table; Ctrl-C stops with the figures so far."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        sys.stderr.write("spindle load: needs the `load` extra (rich, for its progress bar and table): "
                         "pip install 'spindle[load]'\n")
        return 2

    spec = LoadSpec(
        threads=args.threads, turns=args.turns, concurrency=args.concurrency, target=args.target,
        model_latency_ms=args.model_latency_ms, reply_tokens=args.reply_tokens,
        use_mock=not args.provider, home=args.home,
    )
    try:
        spec.validate()
        config = load_config(overrides=args.config) if args.provider else None
    except LoadError as exc:
        sys.stderr.write(f"spindle load: {exc}\n")
        return 2
    out = Console()
    show = not args.no_progress and sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"), console=Console(stderr=True), disable=not show, transient=True,
    ) as progress:
        bar = ui.ProgressBar(progress, spec.threads, spec.turns)
        refused: list[Exception] = []
        try:
            stats: LoadStats = trio.run(_run, spec, config, bar)
        except* LoadError as group:  # raised inside the run's nursery: one line, not a traceback
            refused.extend(leaves(group))
    if refused:
        sys.stderr.write("".join(f"spindle load: {exc}\n" for exc in refused))
        return 2
    summary = stats.summary()
    ui.render(summary, out)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.provider and stats.home:
        ui.where(Path(stats.home), out)
    return 130 if stats.interrupted else 0


