"""Every entry point reports a problem a user can fix as one readable error naming its cause."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(argv: list[str], home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CODEX_HOME": str(home)}
    return subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=60)


def test_the_repl_reports_a_bad_config_instead_of_crashing_trio(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("model = 5\n")
    session = "from spindle.actors.cli import repl\nrt = await repl.start(mock=True)\nprint('still here')\n"
    result = run([sys.executable, "-m", "trio"], tmp_path, stdin=session)
    assert "TrioInternalError" not in result.stderr
    assert "config.toml: key 'model': Expected `str`, got `int`" in result.stderr
    assert "still here" in result.stdout  # the REPL goes on
