"""`make bench`'s app-server phases: Spindle against the real Codex, side by side.

    python -m tests.bench versus                  # every phase (also part of `make bench`)
    python -m tests.bench_versus turns resume     # only the phases named
    CODEX_BIN=/path/to/codex python -m tests.bench versus   # against Codex too, interleaved

Runs `spindle app-server --listen stdio://` and, when CODEX_BIN names a binary, `$CODEX_BIN
app-server`, through `spindle.actors.loadtest.versus` (phases: startup, threads, turns, concurrent,
resume), SPINDLE_BENCH_RUNS runs each (default 5), run by run in turn. The mock model runs in its
own process. Prints the table and writes `bench-results/versus.md` and `bench-results/versus.json`
(every sample).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import trio

from spindle.actors.loadtest.versus import (
    PHASES,
    Samples,
    Server,
    Sizes,
    codex_server,
    prepare,
    run_versus,
    spindle_server,
)
from spindle.actors.loadtest.versus_report import markdown_table

from .bench import RESULTS, RUNS, start_mock


def servers() -> list[Server]:
    """Spindle, and the Codex CODEX_BIN names (a path, or a command on PATH), if any."""
    chosen = [spindle_server()]
    given = os.environ.get("CODEX_BIN", "").strip()
    if given:
        found = shutil.which(given) if "/" not in given else str(Path(given).resolve())
        if not found or not os.access(found, os.X_OK):
            raise SystemExit(f"CODEX_BIN={given!r} is not an executable")
        chosen.append(codex_server(found))
    return chosen


def version(server: Server) -> str:
    if server.name == "spindle":
        from spindle import __version__

        return __version__
    done = subprocess.run([server.argv[0], "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr.strip()


def progress(phase: str, run: int, server: str, figures: dict[str, float]) -> None:
    shown = ", ".join(f"{key} {value:.3g}" for key, value in figures.items())
    sys.stderr.write(f"versus {phase} run {run + 1}/{RUNS} {server}: {shown}\n")


def header(chosen: list[Server], sizes: Sizes, load: tuple[float, float], took_s: float) -> str:
    names = " and ".join(f"{server.name} {version(server)}" for server in chosen)
    return (
        f"App-server phases over stdio, {names}: each run a fresh server process and a fresh CODEX_HOME, "
        f"the mock model in its own process, {RUNS} run(s) per phase, servers interleaved run by run. "
        f"Sizes: {asdict(sizes)}. Machine: {os.cpu_count()} CPUs, {platform.platform()}, load average "
        f"{load[0]:.1f} before and {load[1]:.1f} after ({took_s:.0f} s). "
        f"Ratio = first server's median / second's.\n\n"
    )


async def measure(base_url: str, chosen: list[Server], phases: list[str], sizes: Sizes) -> Samples:
    with tempfile.TemporaryDirectory(prefix="spindle-versus-") as tmp:
        bench = await prepare(base_url, sizes, Path(tmp), resume="resume" in phases)
        return await run_versus(chosen, bench, phases=phases, runs=RUNS, on_sample=progress)


def run(phases: list[str], base_url: str | None = None, sizes: Sizes | None = None) -> Samples:
    """Run `phases` against every server (starting the mock unless `base_url` is given); writes
    and prints the results."""
    sizes = sizes or Sizes()
    chosen = servers()
    mock = None
    if base_url is None:
        mock, base_url = start_mock()
    load0, t0 = os.getloadavg()[0], time.monotonic()
    try:
        samples = trio.run(measure, base_url, chosen, phases, sizes)
    finally:
        if mock is not None:
            mock.terminate()
            mock.wait()
    text = header(chosen, sizes, (load0, os.getloadavg()[0]), time.monotonic() - t0) + markdown_table(samples, sizes) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "versus.md").write_text(text)
    record = {"runs": RUNS, "sizes": asdict(sizes), "phases": phases, "cpus": os.cpu_count(),
              "load_average": [load0, os.getloadavg()[0]],
              "servers": {server.name: {"argv": list(server.argv), "version": version(server)} for server in chosen},
              "samples": samples}
    (RESULTS / "versus.json").write_text(json.dumps(record, indent=2))
    sys.stdout.write(text)
    return samples


def main(argv: list[str]) -> int:
    phases = argv or list(PHASES)
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        sys.stderr.write(f"unknown versus phase {unknown[0]!r}; phases: {', '.join(PHASES)}\n")
        return 2
    run(phases)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
