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


def unusable_home(tmp_path: Path) -> Path:
    """A CODEX_HOME that cannot be created: its parent is a regular file (works as root too)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return blocker / "home"


def test_the_app_server_names_an_unusable_home(tmp_path: Path) -> None:
    home = unusable_home(tmp_path)
    result = run([sys.executable, "-m", "spindle.actors.cli", "app-server"], home, stdin="")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(home) in result.stderr, result.stderr
    assert result.stderr.startswith("spindle: ") and result.stdout == ""


def test_spindle_load_names_an_unusable_home(tmp_path: Path) -> None:
    home = unusable_home(tmp_path)
    argv = [sys.executable, "-m", "spindle.actors.cli", "load", "--threads", "2", "--turns", "1", "--no-progress", "--home", str(home)]
    result = run(argv, home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(home) in result.stderr, result.stderr


def test_the_repl_names_an_unusable_home(tmp_path: Path) -> None:
    home = unusable_home(tmp_path)
    session = "from spindle.actors.cli import repl\nrt = await repl.start(mock=True)\n"
    result = run([sys.executable, "-m", "trio"], home, stdin=session)
    assert "TrioInternalError" not in result.stderr and str(home) in result.stderr, result.stderr


def test_the_app_server_blames_a_bad_c_flag_not_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('approval_policy = "never"\n')
    argv = [sys.executable, "-m", "spindle.actors.cli", "-c", "approval_policy=sometimes", "app-server"]
    result = run(argv, tmp_path, stdin="")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("spindle: -c 'approval_policy=sometimes': key 'approval_policy': Invalid enum value 'sometimes'"), result.stderr
    assert "config.toml" not in result.stderr


def test_the_app_server_answers_initialize_without_importing_what_it_does_not_need(tmp_path: Path) -> None:
    """Start-up cost: no rich (structlog would import it), no HTTP or WebSocket library, no TOML
    writer before the first answer on stdio."""
    initialize = b'{"id":1,"method":"initialize","params":{"clientInfo":{"name":"t","version":"1"}}}\n'
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "spindle.actors.cli", "app-server"], input=initialize,
        capture_output=True, env={**os.environ, "CODEX_HOME": str(tmp_path)}, timeout=60, check=True,
    )
    assert b'"id":1' in done.stdout and b'"error"' not in done.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.decode().splitlines() if line.startswith("import time:")}
    heavy = {"rich.console", "pygments", "httpx", "httpcore", "h11", "trio_websocket", "wsproto", "tomlkit", "mcp", "anyio"}
    assert imported & heavy == set()


def test_the_subcommand_is_found_past_global_options() -> None:
    from spindle.actors.cli.light import command_index, is_light

    assert command_index(["-c", "model=x", "--log-level", "info", "load", "--threads", "2"]) == 4
    assert command_index(["--config", "load", "app-server"]) == 2
    assert command_index(["--help"]) is None
    assert is_light(["-c", "x=1", "app-server", "proxy"]) and not is_light(["app-server"])
