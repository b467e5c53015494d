"""Spawn to `initialize` answer: `spindle app-server` against `spindle app-server proxy` (daemon
warm), and, with CODEX_BIN, the real `codex app-server` against `codex app-server proxy` (its
client speaks WebSocket through it, as Codex's proxy relays bytes). Runs interleaved.

    python -m tests.bench_proxy [RUNS]        (CODEX_BIN=/path/to/codex for the Codex rows)

`make bench` runs it too (`python -m tests.bench proxy`), 3 × SPINDLE_BENCH_RUNS runs. Writes
bench-results/proxy.md and proxy.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from spindle.actors.testing.rpc_client import spindle_argv, write_config
from spindle.protocol.appserver import wsframe as ws

INITIALIZE = json.dumps({"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "bench", "version": "1"}}}).encode()


def lines_client(argv: list[str], env: dict[str, str]) -> float:
    """ms from spawn to the `initialize` answer, JSON lines on stdio."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(INITIALIZE + b"\n")
    child.stdin.flush()
    answer = child.stdout.readline()
    elapsed = (time.perf_counter() - start) * 1000
    assert b'"userAgent"' in answer, answer[:200]
    child.stdin.close()
    child.wait(30)
    return elapsed


def websocket_client(argv: list[str], env: dict[str, str]) -> float:
    """ms from spawn to the `initialize` answer, WebSocket through a byte relay's stdio."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert child.stdin is not None and child.stdout is not None
    handshake = ws.Handshake()
    child.stdin.write(handshake.request())
    child.stdin.flush()
    while not handshake.receive_data(os.read(child.stdout.fileno(), 65536)):
        pass
    child.stdin.write(ws.encode_frame(ws.TEXT, INITIALIZE))
    child.stdin.flush()
    reader = ws.FrameReader()
    reader.receive_data(handshake.rest)
    while (event := reader.next_event()) is None:
        reader.receive_data(os.read(child.stdout.fileno(), 65536))
    elapsed = (time.perf_counter() - start) * 1000
    assert isinstance(event, ws.Message) and b'"userAgent"' in event.payload
    child.stdin.write(ws.encode_frame(ws.CLOSE, ws.close_payload()))
    child.stdin.close()
    child.wait(30)
    return elapsed


def measure(runs: int) -> dict[str, list[float]]:
    """Every case `runs` times, interleaved, after one warm-up each."""
    codex = os.environ.get("CODEX_BIN")
    with tempfile.TemporaryDirectory(prefix="bp-", dir="/tmp") as folder:
        spindle_home, codex_home = Path(folder, "s"), Path(folder, "c")
        write_config(spindle_home, "http://127.0.0.1:9/v1")
        codex_home.mkdir()
        spindle_env = {**os.environ, "CODEX_HOME": str(spindle_home)}
        codex_env = {**os.environ, "CODEX_HOME": str(codex_home), "RUST_LOG": "error"}
        subprocess.run([*spindle_argv(), "app-server", "daemon", "start", "--idle-exit", "300"], env=spindle_env,
                       check=True, stdout=subprocess.DEVNULL)
        cases: dict[str, Callable[[], float]] = {
            "spindle app-server": lambda: lines_client([*spindle_argv(), "app-server"], spindle_env),
            "spindle app-server proxy (daemon warm)": lambda: lines_client([*spindle_argv(), "app-server", "proxy"], spindle_env),
        }
        daemon = None
        if codex:
            daemon = subprocess.Popen([codex, "app-server", "--listen", "unix://"], env=codex_env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sock = codex_home / "app-server-control" / "app-server-control.sock"
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            cases["codex app-server"] = lambda: lines_client([codex, "app-server"], codex_env)
            cases["codex app-server proxy (daemon warm)"] = lambda: websocket_client([codex, "app-server", "proxy"], codex_env)
        try:
            for case in cases.values():
                case()  # warm the page cache
            figures: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(runs):
                for name, case in cases.items():
                    figures[name].append(case())
        finally:
            subprocess.run([*spindle_argv(), "app-server", "daemon", "stop"], env=spindle_env, stdout=subprocess.DEVNULL)
            if daemon is not None:
                daemon.terminate()
                daemon.wait(30)
    return figures


def render(figures: dict[str, list[float]], runs: int) -> str:
    rows = [f"Spawn to `initialize` answer (ms), {runs} runs interleaved, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} at the end.", "", "| case | median | p25–p75 | min–max |", "|---|---|---|---|"]
    for name, values in figures.items():
        q = statistics.quantiles(values, n=4)
        rows.append(f"| {name} | {statistics.median(values):.1f} | {q[0]:.1f}–{q[2]:.1f} | {min(values):.1f}–{max(values):.1f} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    return main_with(int(sys.argv[1]) if len(sys.argv) > 1 else 15)


def main_with(runs: int) -> int:
    figures = measure(runs)
    publish("proxy", render(figures, runs), figures)
    return 0


def publish(name: str, table: str, figures: object) -> None:
    """A bench phase's table on stdout and in bench-results/NAME.md, its samples in NAME.json."""
    results = Path("bench-results")
    results.mkdir(exist_ok=True)
    (results / f"{name}.md").write_text(table)
    (results / f"{name}.json").write_text(json.dumps(figures, indent=2))
    sys.stdout.write(table)


if __name__ == "__main__":
    sys.exit(main())
