"""The terminal side of `spindle load`: a live progress bar, the summary table, where the rollouts went."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spindle.persistence.paths import thread_id_of

from .stats import Progress as LoadProgress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class ProgressBar(LoadProgress):
    """The live bar on stderr: threads started, turns done, turns per second, errors."""

    def __init__(self, progress: Progress, threads: int, turns: int) -> None:
        self.progress = progress
        self.errors = 0
        self.threads = progress.add_task("threads started", total=threads, rate="")
        self.turns = progress.add_task("turns done", total=threads * turns, rate="")
        self._start = time.perf_counter()
        self._done = 0

    def thread_started(self) -> None:
        self.progress.advance(self.threads)

    def turn_done(self) -> None:
        self._done += 1
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self.progress.update(self.turns, advance=1, rate=f"{self._done / elapsed:,.0f} turns/s  errors {self.errors}")

    def error(self, kind: str) -> None:
        self.errors += 1
        self.progress.update(self.turns, rate=f"errors {self.errors}")


def render(summary: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"spindle load ({summary['target']})", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")

    def pcts(name: str) -> str:
        p = summary[name]
        return f"p50 {p['p50']:.3f}  p90 {p['p90']:.3f}  p99 {p['p99']:.3f}"

    table.add_row("threads started", f"{summary['threads_started']:,}")
    table.add_row("turns done", f"{summary['turns_done']:,}")
    table.add_row("thread start (ms)", pcts("thread_start_ms"))
    table.add_row("turn latency (ms)", pcts("turn_ms"))
    table.add_row("turns/s", f"{summary['turns_per_s']:,.1f}")
    errors = summary["errors"]
    table.add_row("errors", ", ".join(f"{kind}: {n}" for kind, n in sorted(errors.items())) or "none")
    if summary["measured"]:
        table.add_row("peak RSS (MiB)", f"{summary['peak_rss_mib']:,.1f}")
        table.add_row("RSS per thread (KiB)", f"{summary['rss_per_thread_kib']:,.1f}")
        table.add_row("CPU per turn (ms)", f"{summary['cpu_ms_per_turn']:.3f}")
    else:
        table.add_row("memory and CPU", "not measured: the server runs elsewhere")
    for url, node in summary.get("nodes", {}).items():
        turn = node["turn_ms"]
        table.add_row(f"  {url}", f"{node['turns_done']:,} turns, {node['turns_per_s']:,.1f}/s, "
                                  f"p50 {turn['p50']:.1f} p99 {turn['p99']:.1f} ms, errors {sum(node['errors'].values())}")
    table.add_row("elapsed (s)", f"{summary['elapsed_s']:.2f}")
    if summary["interrupted"]:
        table.add_row("stopped", "by Ctrl-C: figures so far")
    console.print(table)


def where(home: Path, console: Console) -> None:
    """Say where the rollouts went and how to open one of the threads in the REPL."""
    rollouts = sorted((home / "sessions").rglob("rollout-*.jsonl"))
    if not rollouts:
        return
    thread_id = thread_id_of(rollouts[0])
    console.print(f"\n{len(rollouts)} rollouts under {home}/sessions/, e.g.\n  {rollouts[0]}", soft_wrap=True)
    console.print(
        "Open that thread in the REPL (its model is a fresh mock, so it answers `echo: ...`):\n"
        f"  CODEX_HOME={home} .venv/bin/python -m trio\n"
        "  >>> from spindle.actors.cli import repl\n"
        "  >>> rt = await repl.start(mock=True)\n"
        f"  >>> t = await rt.resume_thread(\"{thread_id}\")\n"
        "  >>> await t.ask(\"what did I say?\")\n"
        "  >>> await repl.stop()",
        highlight=False, markup=False, soft_wrap=True,
    )
