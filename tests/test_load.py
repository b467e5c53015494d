"""`spindle load` at small size: both targets run, bad arguments are refused up front."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spindle.actors.loadtest.driver import LoadError, LoadSpec, run_load
from spindle.actors.runtime.config import config_from_mapping


@pytest.mark.parametrize("target", ["inproc", "app-server"])
async def test_load_runs_every_turn_and_reports_figures(target: str, tmp_path: Path) -> None:
    spec = LoadSpec(threads=4, turns=2, concurrency=2, target=target, reply_tokens=3, home=tmp_path / "home")
    stats = await run_load(spec, None)
    summary = stats.summary()
    assert (summary["threads_started"], summary["turns_done"], summary["errors"]) == (4, 8, {})
    assert len(stats.turn_ms) == 8 and all(ms > 0 for ms in stats.turn_ms)
    assert summary["turn_ms"]["p50"] <= summary["turn_ms"]["p99"]
    assert summary["peak_rss_mib"] > 0
    rollouts = list((tmp_path / "home" / "sessions").rglob("rollout-*.jsonl"))
    assert len(rollouts) == 4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (LoadSpec(threads=0), "--threads must be at least 1"),
        (LoadSpec(turns=0), "--turns must be at least 1"),
        (LoadSpec(model_latency_ms=-1), "--model-latency-ms must not be negative"),
        (LoadSpec(reply_tokens=0), "--reply-tokens must be at least 1"),
        (LoadSpec(concurrency=0), "--concurrency must be at least 1"),
    ],
)
async def test_impossible_arguments_are_refused(spec: LoadSpec, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        await run_load(spec, None)


async def test_an_unreachable_provider_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = config_from_mapping(
        {"model_provider": "gone", "model_providers": {"gone": {"name": "gone", "base_url": "http://127.0.0.1:9/v1"}}},
        source="test", home=tmp_path,
    )
    with pytest.raises(LoadError, match="unreachable"):
        await run_load(LoadSpec(threads=1, use_mock=False, home=tmp_path), config)
    assert not (tmp_path / "sessions").exists()


def test_cli_writes_json_and_rejects_zero_threads(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "-m", "spindle.actors.cli", "load", "--threads", "3", "--turns", "1", "--no-progress", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["turns_done"] == 3 and "turn latency" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "spindle.actors.cli", "load", "--threads", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "spindle load: --threads must be at least 1, got 0"
