"""`make bench`: Spindle's benchmarks against the loopback mock model.

The mock runs as a separate process (`spindle mock-model`), so CPU time measured here is the
runtime's own. Each figure is the median of several runs, with min–max as its spread.
Writes `bench-results/latest.md` and `bench-results/latest.json`.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from actors import open_runtime
from actors.config import config_from_mapping
from protocol.config import Config

RUNS = int(os.environ.get("SPINDLE_BENCH_RUNS", "5"))
RESULTS = Path("bench-results")


def start_mock() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "mock-model"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def bench_config(base_url: str) -> Config:
    home = Path(tempfile.mkdtemp(prefix="spindle-bench-"))
    return config_from_mapping(
        {
            "model": "mock-model",
            "model_provider": "mock",
            "model_providers": {"mock": {"name": "Mock", "base_url": base_url, "request_max_retries": 0, "stream_max_retries": 0}},
            "approval_policy": "never",
            "sandbox_mode": "danger-full-access",
        },
        source="bench",
        home=home,
    )


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def thread_start(config: Config, n: int = 1000) -> dict[str, float]:
    async with open_runtime(config) as rt:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await rt.start_thread()
            lat.append((time.perf_counter() - t0) * 1000)
        report = await rt.shutdown_all_threads_bounded(30)
        assert len(report.completed) == n
    return {"start_p50_ms": statistics.median(lat), "start_p99_ms": pct(lat, 0.99)}


async def idle_memory(config: Config, n: int = 1000) -> dict[str, float]:
    async with open_runtime(config) as rt:
        await rt.start_thread()  # warm-up: imports, caches
        gc.collect()
        rss0 = rss_kib()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(n):
            await rt.start_thread()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        rss1 = rss_kib()
        py_bytes = sum(s.size_diff for s in after.compare_to(before, "filename"))
        await rt.shutdown_all_threads_bounded(30)
    return {"idle_kib_per_thread_py": py_bytes / n / 1024, "idle_kib_per_thread_rss": (rss1 - rss0) / n}


async def turns(config: Config, threads: int = 100, per_thread: int = 5) -> dict[str, float]:
    async with open_runtime(config) as rt:
        handles = [await rt.start_thread() for _ in range(threads)]
        await handles[0].ask("warm-up")
        latencies: list[float] = []

        async def drive(h: Any) -> None:
            for i in range(per_thread):
                t0 = time.perf_counter()
                await h.ask(f"turn {i}")
                latencies.append((time.perf_counter() - t0) * 1000)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for h in handles:
                nursery.start_soon(drive, h)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        n = threads * per_thread
    return {
        "turns_per_s": n / wall,
        "cpu_ms_per_turn": cpu * 1000 / n,
        "turn_p50_ms": statistics.median(latencies),
    }


async def single_turn(config: Config, n: int = 200) -> dict[str, float]:
    async with open_runtime(config) as rt:
        h = await rt.start_thread()
        await h.ask("warm-up")
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            await h.ask(f"q{i}")
            lat.append((time.perf_counter() - t0) * 1000)
    return {"turn_round_trip_p50_ms": statistics.median(lat)}


def repeat(fn: Callable[[Config], Awaitable[dict[str, float]]], config: Config) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for _ in range(RUNS):
        for key, value in trio.run(fn, config).items():
            samples.setdefault(key, []).append(value)
    return samples


TARGETS = {
    "start_p50_ms": ("thread start p50 (ms)", "≤ 0.2"),
    "start_p99_ms": ("thread start p99 (ms)", ""),
    "idle_kib_per_thread_py": ("idle thread, Python heap (KiB)", "≤ 40 (Rust ~950)"),
    "idle_kib_per_thread_rss": ("idle thread, RSS (KiB)", "≤ 40 (Rust ~950)"),
    "turn_round_trip_p50_ms": ("turn round trip p50 (ms)", ""),
    "turns_per_s": ("100 threads × 5 turns: turns/s", ""),
    "cpu_ms_per_turn": ("100 × 5: CPU per turn (ms)", "≤ 3"),
    "turn_p50_ms": ("100 × 5: turn latency p50 (ms)", ""),
}


def main() -> int:
    proc, base_url = start_mock()
    try:
        config = bench_config(base_url)
        results: dict[str, list[float]] = {}
        for fn in (thread_start, idle_memory, single_turn, turns):
            results.update(repeat(fn, config))
    finally:
        proc.terminate()
        proc.wait()
    rows = ["| figure | median | spread (min–max) | target |", "|---|---|---|---|"]
    for key, values in results.items():
        label, target = TARGETS.get(key, (key, ""))
        rows.append(f"| {label} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} | {target} |")
    table = "\n".join(rows)
    header = f"In-process runtime, mock model in its own process, {RUNS} runs each (Python {sys.version.split()[0]}).\n\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(header + table + "\n")
    (RESULTS / "latest.json").write_text(json.dumps({k: {"median": statistics.median(v), "samples": v} for k, v in results.items()}, indent=2))
    sys.stdout.write(header + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
