"""The user config.toml writer: edits land in the table they name and move no other key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

import spindle.actors.runtime.config_write as cw
from spindle.actors.runtime.config_layers import LayeredConfig
from spindle.actors.runtime.config_write import (
    ConfigWriteError,
    Edit,
    WriteOutcome,
    write_user_config,
)

DOTTED = """model = "a"   # the model
mcp_servers.docs.command = "x"   # dotted
mcp_servers.docs.args = ["1"]
# the UI
[tui]
notifications = true
"""


def _write(home: Path, *edits: tuple[str, Any, str], expected: str | None = None) -> WriteOutcome:
    source = LayeredConfig(home=home, system_file=None)
    return write_user_config(source, [Edit.parse(*edit) for edit in edits], expected_version=expected)


def _home(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


def test_a_new_table_beside_dotted_keys_moves_no_key(tmp_path: Path) -> None:
    home = _home(tmp_path, DOTTED)
    _write(home, ("mcp_servers.web.url", "http://u", "replace"))
    after = (home / "config.toml").read_text()
    assert tomllib.loads(after) == {
        "model": "a",
        "mcp_servers": {"docs": {"command": "x", "args": ["1"]}, "web": {"url": "http://u"}},
        "tui": {"notifications": True},
    }
    assert [line for line in after.splitlines() if "web" not in line] == DOTTED.splitlines()


def test_replacing_a_dotted_table_keeps_the_keys_after_it_where_they_were(tmp_path: Path) -> None:
    before = 'mcp_servers.docs.command = "x"\nmcp_servers.docs.args = ["1"]\nmodel = "a"  # mine\n[tui]\nnotifications = true\n'
    home = _home(tmp_path, before)
    _write(home, ("mcp_servers.docs", {"command": "y", "env": {"K": "v"}}, "replace"))
    after = (home / "config.toml").read_text()
    assert tomllib.loads(after) == {
        "model": "a", "mcp_servers": {"docs": {"command": "y", "env": {"K": "v"}}}, "tui": {"notifications": True},
    }
    untouched = [line for line in before.splitlines() if not line.startswith("mcp_servers.")]
    assert [line for line in after.splitlines() if not line.startswith("mcp_servers.")] == untouched


def test_an_edit_no_placement_can_make_is_refused_and_nothing_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cw, "PLACEMENTS", (cw.PLACEMENTS[0],))  # tomlkit's own placement only
    home = _home(tmp_path, DOTTED)
    with pytest.raises(ConfigWriteError) as err:
        _write(home, ("mcp_servers.web.url", "http://u", "replace"))
    assert err.value.code == "configValidationError"
    assert err.value.message.startswith(f"cannot write `mcp_servers.web.url` to {home / 'config.toml'} without changing other keys")
    assert (home / "config.toml").read_text() == DOTTED
