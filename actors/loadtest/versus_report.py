"""The side-by-side table: per figure and server, the median and the spread of the runs, and the
ratio of the first server's median to the second's, with the direction that is better."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .versus import Samples, Sizes


@dataclass(frozen=True)
class Figure:
    label: str
    lower_is_better: bool = True


FIGURES: dict[str, Figure] = {
    "spawn_to_initialize_ms": Figure("spawn to `initialize` answer, median of {spawns} per run (ms)"),
    "thread_start_p50_ms": Figure("`thread/start` p50, over {thread_starts} starts (ms)"),
    "thread_start_p99_ms": Figure("`thread/start` p99 (ms)"),
    "idle_kib_per_thread": Figure("idle memory per loaded thread, RSS growth over {thread_starts} starts (KiB)"),
    "turn_round_trip_p50_ms": Figure("turn round trip p50, one thread, {turns} turns (ms)"),
    "cpu_ms_per_turn": Figure("server CPU per turn, those {turns} turns (ms)"),
    "concurrent_turns_per_s": Figure("{threads} threads × {turns_each} turns at once: turns/s", lower_is_better=False),
    "concurrent_cpu_ms_per_turn": Figure("{threads} × {turns_each}: server CPU per turn (ms)"),
    "concurrent_turn_p50_ms": Figure("{threads} × {turns_each}: turn latency p50 (ms)"),
    "concurrent_turn_p99_ms": Figure("{threads} × {turns_each}: turn latency p99 (ms)"),
    "cold_resume_ms": Figure("cold `thread/resume` of a {resume_turns}-turn rollout (ms)"),
    "cold_resume_cpu_ms": Figure("that resume's server CPU (ms)"),
}


def number(value: float) -> str:
    """Three significant figures, without exponents; thousands separated."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def cell(values: list[float]) -> str:
    """`median (min–max)`; a single run has no spread."""
    if not values:
        return "–"
    median = number(statistics.median(values))
    return median if len(values) == 1 else f"{median} ({number(min(values))}–{number(max(values))})"


def verdict(key: str, mine: list[float], theirs: list[float], names: tuple[str, str]) -> tuple[str, str]:
    """(ratio of medians mine/theirs, which is better and by how much)."""
    a, b = statistics.median(mine), statistics.median(theirs)
    if a <= 0 or b <= 0:
        return "–", "–"
    ratio = a / b
    first_wins = ratio < 1 if FIGURES.get(key, Figure(key)).lower_is_better else ratio > 1
    factor = max(ratio, 1 / ratio)
    if factor < 1.05:
        return f"{ratio:.3g}", "even"
    return f"{ratio:.3g}", f"{names[0] if first_wins else names[1]}, {factor:.3g}×"


def markdown_table(samples: Samples, sizes: Sizes) -> str:
    """One row per figure (labelled with `sizes`); with two servers, also their ratio and which is better."""
    names = list(samples)
    keys = [key for key in FIGURES if any(key in samples[name] for name in names)]
    keys += sorted({key for name in names for key in samples[name]} - set(keys))
    header = ["figure", *(f"{name} median (min–max)" for name in names)]
    pair = len(names) == 2
    if pair:
        header += [f"{names[0]} / {names[1]}", "better"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        row = [FIGURES.get(key, Figure(key)).label.format(**asdict(sizes)), *(cell(samples[name].get(key, [])) for name in names)]
        if pair:
            mine, theirs = samples[names[0]].get(key, []), samples[names[1]].get(key, [])
            row += verdict(key, mine, theirs, (names[0], names[1])) if mine and theirs else ("–", "–")
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)
