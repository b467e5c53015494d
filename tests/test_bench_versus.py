"""The side-by-side benchmark driver works: every phase once against a Spindle app-server child,
at tiny sizes (no Codex needed; `make bench CODEX_BIN=...` runs it against the real one)."""

from __future__ import annotations

from pathlib import Path

from spindle.actors.loadtest.versus import PHASES, Sizes, prepare, run_versus, spindle_server
from spindle.actors.loadtest.versus_report import FIGURES, markdown_table
from spindle.actors.testing.mock_model import MockModel

TINY = Sizes(spawns=1, thread_starts=3, turns=2, threads=3, turns_each=2, resume_turns=5, settle_s=0)


async def test_every_phase_measures_a_spindle_app_server(tmp_path: Path, mock_model: MockModel) -> None:
    bench = await prepare(mock_model.base_url, TINY, tmp_path)
    seen: list[tuple[str, str]] = []
    samples = await run_versus([spindle_server()], bench, runs=1,
                               on_sample=lambda phase, run, server, figures: seen.append((phase, server)))
    assert seen == [(phase, "spindle") for phase in PHASES]
    figures = samples["spindle"]
    assert set(figures) == set(FIGURES)
    assert all(len(values) == 1 for values in figures.values())
    assert figures["spawn_to_initialize_ms"][0] > 0 and figures["concurrent_turns_per_s"][0] > 0
    assert figures["cold_resume_ms"][0] > 0
    assert figures["cpu_ms_per_turn"][0] >= 0  # CPU time comes in 10 ms ticks: two turns may show none
    assert len(mock_model.requests) == (1 + TINY.turns) + (1 + TINY.threads * TINY.turns_each)  # with warm-ups
    assert "cold `thread/resume` of a 5-turn rollout (ms)" in markdown_table(samples, TINY)


def test_the_table_gives_the_ratio_and_which_server_is_better() -> None:
    samples = {"spindle": {"cpu_ms_per_turn": [2.0, 3.0, 4.0], "concurrent_turns_per_s": [100.0]},
               "codex": {"cpu_ms_per_turn": [30.0, 24.0, 40.0], "concurrent_turns_per_s": [400.0]}}
    rows = markdown_table(samples, Sizes()).splitlines()
    assert rows[0] == "| figure | spindle median (min–max) | codex median (min–max) | spindle / codex | better |"
    assert rows[2] == "| server CPU per turn, those 100 turns (ms) | 3 (2–4) | 30 (24–40) | 0.1 | spindle, 10× |"
    assert rows[3] == "| 100 threads × 5 turns at once: turns/s | 100 | 400 | 0.25 | codex, 4× |"
