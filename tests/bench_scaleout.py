"""Scale-out: 1, 2 and 3 `spindle app-server --store` nodes on this machine, one PostgreSQL store,
driven by one `spindle load --target ws://A,ws://B,...` (threads spread over the nodes in turn).
The mock model streams each reply over `--model-latency-ms`, in its own process.

    python -m tests.bench_scaleout [RUNS]     (or `python -m tests.bench scaleout`, in `make bench`)

PostgreSQL is `SPINDLE_TEST_PG_DSN` (default the local server); each run uses a schema of its
own, dropped after. Writes bench-results/scaleout.md and scaleout.json.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg

from spindle.actors.testing.rpc_client import spindle_argv, write_config

from .bench_proxy import publish

PG_DSN = os.environ.get("SPINDLE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
THREADS, TURNS, CONCURRENCY, LATENCY_MS, REPLY_TOKENS = 600, 3, 200, 100, 16
"""At most CONCURRENCY threads in flight: one connection queues at most 256 requests (then -32001)."""
NODES = (1, 2, 3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"node on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"node on port {port} did not listen within {deadline_s} s")


def one_run(nodes: int, base_url: str, folder: Path) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    urls = []
    with ExitStack() as stack:
        for n in range(nodes):
            home = folder / f"{schema}-node{n}"
            write_config(home, base_url)
            port = free_port()
            url = f"ws://127.0.0.1:{port}"
            argv = [*spindle_argv(), "app-server", "--listen", url, "--store", PG_DSN, "--store-schema", schema,
                    "--node-id", f"node{n}", "--advertise", url]
            log = stack.enter_context(open(home / "node.log", "wb"))
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                       env={**os.environ, "CODEX_HOME": str(home), "SPINDLE_LOG": "warning"})
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
            wait_listening(port, process)
            urls.append(url)
        report = folder / f"{schema}.json"
        subprocess.run([*spindle_argv(), "load", "--target", ",".join(urls), "--threads", str(THREADS), "--turns",
                        str(TURNS), "--concurrency", str(CONCURRENCY), "--no-progress", "--json", str(report)], check=True, stdout=subprocess.DEVNULL)
        summary = json.loads(report.read_text())
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert not summary["errors"], summary["errors"]
    return {"turns_per_s": summary["turns_per_s"], "turn_p50_ms": summary["turn_ms"]["p50"],
            "turn_p99_ms": summary["turn_ms"]["p99"]}


def measure(runs: int) -> dict[int, dict[str, list[float]]]:
    mock = subprocess.Popen([*spindle_argv(), "mock-model", "--latency-ms", str(LATENCY_MS), "--reply-tokens",
                             str(REPLY_TOKENS)], stdout=subprocess.PIPE, text=True)
    try:
        assert mock.stdout is not None
        base_url = mock.stdout.readline().strip()
        figures: dict[int, dict[str, list[float]]] = {n: {} for n in NODES}
        with tempfile.TemporaryDirectory(prefix="spindle-scaleout-") as folder:
            for _ in range(runs):
                for nodes in NODES:
                    for key, value in one_run(nodes, base_url, Path(folder)).items():
                        figures[nodes].setdefault(key, []).append(value)
        return figures
    finally:
        mock.terminate()
        mock.wait(30)


def render(figures: dict[int, dict[str, list[float]]], runs: int) -> str:
    one = statistics.median(figures[1]["turns_per_s"])
    rows = [f"Scale-out: {THREADS} threads × {TURNS} turns ({CONCURRENCY} threads at a time) over N nodes on one PostgreSQL, mock model streaming each"
            f" reply over {LATENCY_MS} ms ({REPLY_TOKENS} deltas), {runs} run(s), {os.cpu_count()} CPUs, load average"
            f" {os.getloadavg()[0]:.1f} at the end.", "",
            "| nodes | turns/s | vs 1 node | turn p50 (ms) | turn p99 (ms) |", "|---|---|---|---|---|"]
    for nodes, values in figures.items():
        tps = statistics.median(values["turns_per_s"])
        rows.append(f"| {nodes} | {tps:.1f} ({min(values['turns_per_s']):.1f}–{max(values['turns_per_s']):.1f}) |"
                    f" {tps / one:.2f}× | {statistics.median(values['turn_p50_ms']):.0f} |"
                    f" {statistics.median(values['turn_p99_ms']):.0f} |")
    return "\n".join(rows) + "\n"


def main_with(runs: int) -> int:
    figures = measure(runs)
    publish("scaleout", render(figures, runs), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main_with(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
