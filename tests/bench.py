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

from spindle.actors.loadtest.stats import percentile, rss_kib
from spindle.actors.runtime import open_runtime
from spindle.actors.runtime.execution import run_process
from spindle.actors.runtime.sandbox import plan
from spindle.actors.runtime.tools import ToolRegistry
from spindle.actors.testing.mock_model import (
    NO_RETRIES,
    Call,
    MockModel,
    MockRequest,
    Reply,
    Text,
    mock_config,
)
from spindle.protocol.config import Config
from spindle.protocol.events import ExecApprovalRequestEvent
from spindle.protocol.ids import new_id
from spindle.protocol.sandbox import SandboxSpec

RUNS = int(os.environ.get("SPINDLE_BENCH_RUNS", "5"))
RESULTS = Path("bench-results")


def start_mock() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spindle.actors.cli", "mock-model"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def bench_config(base_url: str) -> Config:
    return mock_config(base_url, Path(tempfile.mkdtemp(prefix="spindle-bench-")), provider=NO_RETRIES)


async def thread_start(config: Config, n: int = 1000) -> dict[str, float]:
    async with open_runtime(config) as rt:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await rt.start_thread()
            lat.append((time.perf_counter() - t0) * 1000)
        report = await rt.shutdown_all_threads_bounded(30)
        assert len(report.completed) == n
    return {"start_p50_ms": statistics.median(lat), "start_p99_ms": percentile(lat, 99)}


async def idle_memory(config: Config, n: int = 1000) -> dict[str, float]:
    async with open_runtime(config) as rt:
        await rt.start_thread()  # warm-up: imports, caches
        gc.collect()
        rss0 = rss_kib()[0]
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(n):
            await rt.start_thread()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        rss1 = rss_kib()[0]
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


async def persistence(config: Config) -> dict[str, float]:
    """Write cost per turn (persisted vs ephemeral), fsync cost, cold resume of 2000 turns."""
    from spindle.persistence.reader import read_rollout

    out: dict[str, float] = {}
    async with open_runtime(config) as rt:
        for label, ephemeral in (("ephemeral", True), ("persisted", False)):
            h = await rt.start_thread(ephemeral=ephemeral)
            await h.ask("warm-up")
            cpu0 = time.process_time()
            for i in range(300):
                await h.ask(f"q{i}")
            out[f"cpu_ms_per_turn_{label}"] = (time.process_time() - cpu0) * 1000 / 300
        out["rollout_write_cpu_ms_per_turn"] = out.pop("cpu_ms_per_turn_persisted") - out.pop("cpu_ms_per_turn_ephemeral")
        fsyncs = []
        for i in range(20):
            await h.ask(f"f{i}")
            t0 = time.perf_counter()
            await h.rollout.flush()
            fsyncs.append((time.perf_counter() - t0) * 1000)
        out["flush_with_fsync_ms"] = statistics.median(fsyncs)
        big = BIG_ROLLOUT.get("path")
        if big is None:
            long = await rt.start_thread()
            for i in range(2000):
                await long.ask(f"turn {i} " + "x" * 200)
            await long.rollout.flush()
            BIG_ROLLOUT["path"] = long.rollout_path
            BIG_ROLLOUT["id"] = long.thread_id
    path = BIG_ROLLOUT["path"]
    t0 = time.perf_counter()
    read = read_rollout(path)
    out["read_2000_turn_rollout_ms"] = (time.perf_counter() - t0) * 1000
    out["rollout_2000_turn_lines"] = float(len(read.source))
    async with open_runtime(config) as rt:
        t0 = time.perf_counter()
        resumed = await rt.resume_thread(BIG_ROLLOUT["id"])
        out["cold_resume_2000_turns_ms"] = (time.perf_counter() - t0) * 1000
        assert len(resumed.history) > 4000
    return out


BIG_ROLLOUT: dict[str, Any] = {}
LISTING_HOME: dict[str, Path] = {}
LISTING_THREADS = 10_000
LISTING_DAYS = 100


def write_listing_home(home: Path, threads: int = LISTING_THREADS, days: int = LISTING_DAYS) -> None:
    """`threads` small Codex-like rollouts over `days` day folders: a session_meta of a few hundred
    bytes to 2 KB, the environment context, a user message, a turn context, an answer, the end."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(7)
    start = datetime(2026, 8, 1, tzinfo=UTC)
    for n in range(threads):
        created = start + timedelta(days=n * days // threads, seconds=n * 7 % 86_400)
        stamp = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{n % 1000:03d}Z"
        tid = new_id()
        meta = {"id": tid, "timestamp": stamp, "cwd": f"/work/project-{n % 20}", "originator": "codex_cli_rs",
                "cli_version": "0.171.0", "source": "cli" if n % 3 else "vscode", "model_provider": "openai",
                "base_instructions": {"text": "You are a coding agent. " * rng.randint(8, 80)}}
        user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"task {n}: fix the tests"}]}
        env = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>\n  <cwd>/work</cwd>\n</environment_context>"}]}
        answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done. " * 20}]}
        rows = [("session_meta", meta), ("response_item", env), ("turn_context", {"cwd": "/work", "approval_policy": "never", "model": "gpt-5"}),
                ("event_msg", {"type": "task_started", "turn_id": "t"}), ("response_item", user), ("response_item", answer),
                ("event_msg", {"type": "task_complete", "turn_id": "t"})]
        folder = home / "sessions" / created.strftime("%Y/%m/%d")
        folder.mkdir(parents=True, exist_ok=True)
        body = b"".join(json.dumps({"timestamp": stamp, "ordinal": i, "type": kind, "payload": payload}).encode() + b"\n"
                        for i, (kind, payload) in enumerate(rows))
        (folder / f"rollout-{created.strftime('%Y-%m-%dT%H-%M-%S')}-{tid}.jsonl").write_bytes(body)
    settled = time.time() - 3600  # as a home that was written earlier: folder mtimes outside the racy window
    for folder in [home / "sessions", *(home / "sessions").glob("**/")]:
        os.utime(folder, (settled, settled))


async def listing(config: Config) -> dict[str, float]:
    """thread/list over a home of 10,000 rollout files no index has seen: the cold reconcile (empty
    index, every file read), a warm reconcile with nothing changed, the first page (50, newest
    created) including its pre-list reconcile, and the full stat pass."""
    from spindle.persistence.index import INDEX_FILE
    from spindle.persistence.query import ThreadQuery
    from spindle.persistence.store import LocalThreadStore

    home = LISTING_HOME.get("home")
    if home is None:
        home = LISTING_HOME["home"] = Path(tempfile.mkdtemp(prefix="spindle-list-"))
        write_listing_home(home)
    for leftover in home.glob(INDEX_FILE + "*"):
        leftover.unlink()
    store = LocalThreadStore(home)
    t0 = time.perf_counter()
    await store.open()  # creates the index, then reconciles it with every file
    cold = (time.perf_counter() - t0) * 1000
    assert len((await store.list_threads(ThreadQuery(limit=10_000))).entries) == LISTING_THREADS

    async def median_ms(step: Callable[[], Awaitable[object]], n: int) -> float:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await step()
            lat.append((time.perf_counter() - t0) * 1000)
        return statistics.median(lat)

    out = {
        "cold_reconcile_10k_ms": cold,
        "warm_reconcile_10k_ms": await median_ms(store.reconcile, 50),
        "list_first_page_of_10k_ms": await median_ms(lambda: store.list_threads(ThreadQuery(limit=50)), 50),
        "full_stat_pass_10k_ms": await median_ms(lambda: store.reconcile(full=True), 5),
    }
    page = await store.list_threads(ThreadQuery(limit=50))
    assert len(page.entries) == 50 and page.next_cursor
    await store.aclose()
    return out


async def sandbox_cost(config: Config, n: int = 40) -> dict[str, float]:
    """What the sandbox adds to one command: `true` run as is, then under bubblewrap (network off:
    with the seccomp filter), each n times; per-command wall time medians."""
    with tempfile.TemporaryDirectory() as work:
        results: dict[str, float] = {}
        specs = {"bare": SandboxSpec(full_access=True), "sandboxed": SandboxSpec(writable_roots=(work,), slash_tmp_writable=True)}
        for label, spec in specs.items():
            times = []
            for _ in range(n):
                began = time.perf_counter()
                ready = await plan(spec, cwd=work, command=["true"], env=dict(os.environ), thread_id="bench")
                await run_process(ready, cwd=work)
                times.append((time.perf_counter() - began) * 1000)
            results[f"command_{label}_ms"] = statistics.median(times)
    results["sandbox_overhead_ms"] = results["command_sandboxed_ms"] - results["command_bare_ms"]
    return results


class _Asking:
    """A tool that asks for approval each call (the request a turn waits on)."""

    name = "ask"

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "parameters": {"type": "object", "properties": {}}}

    async def run(self, arguments: str, ctx: Any) -> str:
        request = ExecApprovalRequestEvent(call_id=ctx.call_id, turn_id=ctx.turn_id, command=["touch", "x"], cwd="/")
        return str(await ctx.ask_approval(request, ("bench", ctx.call_id)))


async def approvals(config: Config, n: int = 50) -> dict[str, float]:
    """One approval round trip in a persisted thread (asked, written and synced, answered by the
    embedding, resolved, the model sampled again), n of them in one turn: per-approval wall time."""

    def asking_model(request: MockRequest) -> Reply:
        asked = sum(item["type"] == "function_call_output" for item in request.json()["input"])
        return Call(name="ask", arguments={}) if asked < n else Text(text="done")

    async def approve(request: Any) -> Any:
        return "approved"

    async with trio.open_nursery() as nursery:
        mock = await nursery.start(MockModel(default=asking_model).run)
        with tempfile.TemporaryDirectory() as home:
            local = mock_config(mock, home=Path(home))
            async with open_runtime(local, tools=ToolRegistry([_Asking()])) as rt:
                thread = await rt.start_thread()
                began = time.perf_counter()
                await thread.ask("go", approve=approve)
                elapsed = time.perf_counter() - began
        nursery.cancel_scope.cancel()
    return {"approval_round_trip_ms": elapsed * 1000 / n}


async def idle_memory_10k(config: Config) -> dict[str, float]:
    out = await idle_memory(config, n=10_000)
    return {"idle_10k_kib_per_thread_py": out["idle_kib_per_thread_py"], "idle_10k_kib_per_thread_rss": out["idle_kib_per_thread_rss"]}


async def scaling(config: Config) -> dict[str, float]:
    """How turn latency and memory grow with the number of concurrent threads (one turn each).

    Each size runs as its own `spindle load` process, so its peak RSS is its own.
    """
    out: dict[str, float] = {}
    for n in (100, 1_000, 10_000):
        with tempfile.TemporaryDirectory(prefix="spindle-scale-") as tmp:
            report = Path(tmp) / "load.json"
            argv = [sys.executable, "-m", "spindle.actors.cli", "load", "--threads", str(n), "--turns", "1",
                    "--reply-tokens", "4", "--no-progress", "--home", tmp, "--json", str(report)]
            await trio.run_process(argv, stdout=subprocess.DEVNULL)
            summary = json.loads(report.read_text())
        out[f"scale_{n}_turn_p50_ms"] = summary["turn_ms"]["p50"]
        out[f"scale_{n}_turns_per_s"] = summary["turns_per_s"]
        out[f"scale_{n}_rss_kib_per_thread"] = summary["rss_per_thread_kib"]
        out[f"scale_{n}_cpu_ms_per_turn"] = summary["cpu_ms_per_turn"]
    return out


LONG_TURNS = 100_000
LONG_COMPACT_EVERY = 1_000
LONG_ROLLOUT: dict[str, Any] = {}

_RESUME_CHILD = """
import json, sys, time
from pathlib import Path
import trio
from spindle.actors.runtime import open_runtime
from spindle.actors.testing.mock_model import mock_config

def hwm_kib() -> int:
    # VmHWM is this process's own peak; ru_maxrss keeps the parent's across fork and exec
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
    return 0

async def main() -> None:
    async with open_runtime(mock_config("http://127.0.0.1:9/v1", Path(sys.argv[1]))) as rt:
        before = hwm_kib()
        t0, c0 = time.perf_counter(), time.process_time()
        thread = await rt.resume_thread(sys.argv[2])
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = hwm_kib()
        print(json.dumps({"s": took, "cpu": cpu, "peak_kib": peak, "before_kib": before, "turns": len(thread.rollout.source.index),
                          "history": len(thread.history)}))

trio.run(main)
"""


async def long_resume(config: Config) -> dict[str, float]:
    """Resume of a generated rollout of 100,000 turns compacted every 1,000, in a fresh process:
    its wall time and the process's peak RSS (`VmHWM`)."""
    from spindle.actors.testing.long_rollout import write_long_rollout

    if not LONG_ROLLOUT:
        home = Path(tempfile.mkdtemp(prefix="spindle-long-"))
        made = await trio.to_thread.run_sync(
            lambda: write_long_rollout(home, turns=LONG_TURNS, compact_every=LONG_COMPACT_EVERY))
        LONG_ROLLOUT.update(home=home, id=made.thread_id, mb=made.path.stat().st_size / 1e6)
    done = await trio.run_process([sys.executable, "-c", _RESUME_CHILD, str(LONG_ROLLOUT["home"]), LONG_ROLLOUT["id"]],
                                  capture_stdout=True)
    got = json.loads(done.stdout)
    assert got["turns"] == LONG_TURNS and got["history"] < 10
    return {"long_resume_s": got["s"], "long_resume_cpu_s": got["cpu"], "long_resume_peak_rss_mib": got["peak_kib"] / 1024,
            "long_resume_rss_before_mib": got["before_kib"] / 1024, "long_rollout_mb": LONG_ROLLOUT["mb"]}


def repeat(fn: Callable[[Config], Awaitable[dict[str, float]]], config: Config, runs: int = RUNS) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
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
    "rollout_write_cpu_ms_per_turn": ("rollout write CPU per turn (ms, persisted − ephemeral)", ""),
    "flush_with_fsync_ms": ("flush + fsync (ms)", ""),
    "read_2000_turn_rollout_ms": ("read a 2000-turn rollout (ms)", ""),
    "rollout_2000_turn_lines": ("lines in that rollout", "about 18k"),
    "cold_resume_2000_turns_ms": ("cold resume of a 2000-turn rollout (ms)", "≤ 150 (Rust ~1500)"),
    "long_resume_s": ("resume of 100,000 turns compacted every 1,000, fresh process (s)", "< 2"),
    "long_resume_cpu_s": ("its CPU time (s; the scan runs in a worker thread)", ""),
    "long_resume_peak_rss_mib": ("that process's peak RSS (MiB)", "< 150"),
    "long_resume_rss_before_mib": ("its RSS before the resume: runtime loaded (MiB)", ""),
    "long_rollout_mb": ("that rollout's size (MB)", ""),
    "cold_reconcile_10k_ms": ("reconcile 10,000 unindexed rollout files, cold index (ms)", "well under 1000"),
    "warm_reconcile_10k_ms": ("reconcile 10,000 indexed rollouts, nothing changed (ms)", ""),
    "list_first_page_of_10k_ms": ("list first page (50) of 10,000 threads, with its reconcile (ms)", "≤ 20"),
    "full_stat_pass_10k_ms": ("full stat pass over 10,000 rollouts (ms)", ""),
    "idle_10k_kib_per_thread_py": ("idle thread at 10,000 threads, Python heap (KiB)", "≤ 50 (Rust ~950)"),
    "idle_10k_kib_per_thread_rss": ("idle thread at 10,000 threads, RSS (KiB)", "≤ 50 (Rust ~950)"),
    "command_bare_ms": ("command `true`, no sandbox: wall time (ms)", ""),
    "command_sandboxed_ms": ("command `true` under bubblewrap + seccomp: wall time (ms)", ""),
    "sandbox_overhead_ms": ("sandbox cost per command (ms)", ""),
    "approval_round_trip_ms": ("approval round trip, request synced to disk first (ms)", ""),
    "scale_100_turn_p50_ms": ("scaling: 100 concurrent threads, turn p50 (ms)", ""),
    "scale_100_rss_kib_per_thread": ("scaling: 100 threads, RSS per thread (KiB)", ""),
    "scale_100_turns_per_s": ("scaling: 100 threads, turns/s", ""),
    "scale_100_cpu_ms_per_turn": ("scaling: 100 threads, CPU per turn (ms)", ""),
    "scale_1000_turn_p50_ms": ("scaling: 1,000 concurrent threads, turn p50 (ms)", ""),
    "scale_1000_rss_kib_per_thread": ("scaling: 1,000 threads, RSS per thread (KiB)", ""),
    "scale_1000_turns_per_s": ("scaling: 1,000 threads, turns/s", ""),
    "scale_1000_cpu_ms_per_turn": ("scaling: 1,000 threads, CPU per turn (ms)", ""),
    "scale_10000_turn_p50_ms": ("scaling: 10,000 concurrent threads, turn p50 (ms)", ""),
    "scale_10000_rss_kib_per_thread": ("scaling: 10,000 threads, RSS per thread (KiB)", ""),
    "scale_10000_turns_per_s": ("scaling: 10,000 threads, turns/s", ""),
    "scale_10000_cpu_ms_per_turn": ("scaling: 10,000 threads, CPU per turn (ms)", ""),
}


PHASES: dict[str, Callable[[Config], Awaitable[dict[str, float]]]] = {
    fn.__name__: fn
    for fn in (thread_start, idle_memory, idle_memory_10k, single_turn, turns, persistence, long_resume, listing,
               sandbox_cost, approvals)
}


EXTRA = ("scaling", "versus", "proxy", "scaleout")
"""Phases that run differently: `scaling` once (11,100 turns), `versus` (tests/bench_versus.py)
the app-server phases against Spindle and, with CODEX_BIN, the real Codex, `proxy`
(tests/bench_proxy.py) spawn to initialize through `spindle app-server proxy` and Codex's,
`scaleout` (tests/bench_scaleout.py) 1, 2 and 3 nodes on one PostgreSQL."""


def main() -> int:
    """Every phase, or those named on the command line (`python -m tests.bench listing`)."""
    chosen = sys.argv[1:] or [*PHASES, *EXTRA]
    unknown = [name for name in chosen if name not in PHASES and name not in EXTRA]
    if unknown:
        sys.stderr.write(f"unknown phase {unknown[0]!r}; phases: {', '.join([*PHASES, *EXTRA])}\n")
        return 2
    inproc = [name for name in chosen if name not in ("versus", "proxy", "scaleout")]
    proc, base_url = start_mock()
    try:
        if inproc:
            report(run_inproc(inproc, bench_config(base_url)))
        if "versus" in chosen:
            from .bench_versus import PHASES as VERSUS_PHASES
            from .bench_versus import run as run_versus

            run_versus(list(VERSUS_PHASES), base_url)
        if "proxy" in chosen:
            from . import bench_proxy

            bench_proxy.main_with(3 * RUNS)
        if "scaleout" in chosen:
            from . import bench_scaleout

            bench_scaleout.main_with(max(1, RUNS // 2))
    finally:
        proc.terminate()
        proc.wait()
    return 0


def run_inproc(chosen: list[str], config: Config) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for name in chosen:
        if name == "scaling":
            results.update(repeat(scaling, config, runs=1))  # 11,100 turns: one run
        else:
            results.update(repeat(PHASES[name], config))
    return results


def report(results: dict[str, list[float]]) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
