"""README's code runs as written: each Python block, and the REPL transcript, against the mock model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
(REPL_SESSION,) = re.findall(r"^```pycon\n(.*?)^```", README, flags=re.S | re.M)


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """`spindle mock-model`, as README starts it (on a free port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spindle.actors.cli", "mock-model", "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def home(tmp_path: Path, mock_url: str) -> Path:
    """A CODEX_HOME whose config.toml is README's mock provider table."""
    (tmp_path / "config.toml").write_text(
        'model = "mock-model"\nmodel_provider = "mock"\n\n'
        f'[model_providers.mock]\nname = "Mock"\nbase_url = "{mock_url}"\n'
    )
    return tmp_path


def run(argv: list[str], home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CODEX_HOME": str(home)}
    return subprocess.run(argv, input=stdin, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_readme_has_the_blocks_it_promises() -> None:
    assert len(PYTHON_BLOCKS) >= 2  # the SDK and embedding examples


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.splitlines()[0][:40] for b in PYTHON_BLOCKS])
def test_python_block_runs(block: str, home: Path) -> None:
    if "openai_codex" in block:
        pytest.importorskip("openai_codex", reason="make setup installs the SDK; without it its block cannot run")
    result = run([sys.executable, "-c", block], home)
    assert result.returncode == 0, result.stderr
    assert "echo: " in result.stdout  # it reached the mock model and printed its answer


def test_repl_transcript_replays(home: Path) -> None:
    lines = REPL_SESSION.splitlines()
    statements = [line.removeprefix(">>> ") for line in lines if line.startswith(">>> ")]
    expected = [line for line in lines[1:] if line and not line.startswith(">>> ")]
    result = run([sys.executable, "-m", "trio"], home, stdin="\n".join(statements) + "\n")
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stdout.replace(">>> ", "").splitlines() if line]
    assert shown == expected
