"""What a load run measures: latencies, throughput, errors, memory and CPU of the process under test."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil


def percentile(values: list[float], q: int) -> float:
    """The `q`th percentile (1..99) of `values`, interpolated; 0.0 when there are none."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Progress:
    """Callbacks the driver reports through (the CLI draws a bar from them)."""

    def thread_started(self) -> None: ...
    def turn_done(self) -> None: ...
    def error(self, kind: str) -> None: ...


@dataclass
class LoadStats:
    """What a run measured. Latencies in milliseconds."""

    target: str = "inproc"
    threads_started: int = 0
    turns_done: int = 0
    thread_start_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    peak_rss_kib: int = 0
    baseline_rss_kib: int = 0
    cpu_s: float = 0.0
    interrupted: bool = False
    home: str = ""
    measured: bool = True
    """Whether memory and CPU are the server's (not for a running server driven over a socket)."""
    nodes: dict[str, LoadStats] = field(default_factory=dict)
    """Each server's own figures, when threads were spread over several."""

    def thread_started(self, t0: float, progress: Progress) -> None:
        self.thread_start_ms.append(1000 * (time.perf_counter() - t0))
        self.threads_started += 1
        progress.thread_started()

    def turn_done(self, t0: float, progress: Progress) -> None:
        self.turn_ms.append(1000 * (time.perf_counter() - t0))
        self.turns_done += 1
        progress.turn_done()

    def stopped_early(self) -> None:
        self.interrupted = True

    def failed(self, kind: str, progress: Progress) -> None:
        self.errors[kind] += 1
        progress.error(kind)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float]) -> dict[str, float]:
            return {f"p{q}": round(percentile(values, q), 3) for q in (50, 90, 99)}

        per_thread = (self.peak_rss_kib - self.baseline_rss_kib) / self.threads_started if self.threads_started else 0.0
        return {
            "target": self.target,
            "threads_started": self.threads_started,
            "turns_done": self.turns_done,
            "elapsed_s": round(self.elapsed_s, 3),
            "turns_per_s": round(self.turns_done / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "thread_start_ms": pct(self.thread_start_ms),
            "turn_ms": pct(self.turn_ms),
            "errors": dict(self.errors),
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "rss_per_thread_kib": round(per_thread, 1),
            "cpu_ms_per_turn": round(1000 * self.cpu_s / self.turns_done, 3) if self.turns_done else 0.0,
            "interrupted": self.interrupted,
            "home": self.home,
            "measured": self.measured,
            **({"nodes": {url: node.summary() for url, node in self.nodes.items()}} if self.nodes else {}),
        }


def rss_kib(pid: int | None = None) -> tuple[int, int]:
    """(current, peak) resident set of `pid` (default: this process), in KiB.

    psutil gives the current figure; it has no peak, so that is the kernel's high-water mark
    (`VmHWM` of /proc/PID/status) on Linux, and 0 where there is none.
    """
    try:
        current = psutil.Process(pid).memory_info().rss // 1024
    except psutil.Error:
        return 0, 0
    peak = 0
    try:
        with open(f"/proc/{pid or 'self'}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
    except OSError:
        pass
    return current, max(peak, current)


def cpu_s(pid: int | None = None) -> float:
    """User plus system CPU seconds of `pid` (default: this process)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system
