"""The user config.toml writer: edits land in the table they name and move no other key, a
symlinked config.toml stays a symlink, two writers never lose an edit, and profile keys are
checked like top-level ones."""

from __future__ import annotations

import os
import stat
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

import spindle.actors.runtime.config_toml as ct
import spindle.actors.runtime.config_write as cw
from spindle.actors.runtime.config_layers import LayeredConfig, version_of
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
    monkeypatch.setattr(ct, "PLACEMENTS", (ct.PLACEMENTS[0],))  # tomlkit's own placement only
    home = _home(tmp_path, DOTTED)
    with pytest.raises(ConfigWriteError) as err:
        _write(home, ("mcp_servers.web.url", "http://u", "replace"))
    assert err.value.code == "configValidationError"
    assert err.value.message.startswith(f"cannot write `mcp_servers.web.url` to {home / 'config.toml'} without changing other keys")
    assert (home / "config.toml").read_text() == DOTTED


def test_a_symlinked_config_stays_a_symlink_and_its_target_is_edited(tmp_path: Path) -> None:
    home, dots = tmp_path / "home", tmp_path / "dotfiles"
    home.mkdir()
    dots.mkdir()
    target = dots / "codex.toml"
    target.write_text('model = "a"  # mine\n')
    target.chmod(0o640)
    (home / "config.toml").symlink_to(target)
    outcome = _write(home, ("model_verbosity", "low", "replace"))
    assert (home / "config.toml").is_symlink() and os.readlink(home / "config.toml") == str(target)
    assert target.read_text() == 'model = "a"  # mine\nmodel_verbosity = "low"\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert outcome.path == home / "config.toml" and outcome.version == version_of(target.read_bytes())
    assert sorted(p.name for p in dots.iterdir()) == ["codex.toml", "codex.toml.lock"]  # no temporary file left


@pytest.mark.parametrize("same_version", [False, True])
def test_two_writers_at_once_never_lose_an_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_version: bool) -> None:
    """The first writer stops between reading the file and replacing it until the second has run
    into the lock (or, were there none, has written): the second then reads the first's result,
    or is told its version is stale."""
    home = _home(tmp_path, 'model = "a"\n')
    expected = version_of((home / "config.toml").read_bytes()) if same_version else None
    second_went = threading.Event()
    results: dict[str, Any] = {}

    def writer(name: str, edit: tuple[str, Any, str]) -> None:
        try:
            results[name] = _write(home, edit, expected=expected)
        except ConfigWriteError as exc:
            results[name] = exc
        finally:
            if name == "second":
                second_went.set()

    second = threading.Thread(target=writer, args=("second", ("instructions", "hello", "replace")))
    first = threading.Thread(target=writer, args=("first", ("model", "b", "replace")))
    try_lock, validated = cw.try_lock, cw._validated

    def spying_try_lock(fd: int) -> bool:
        got = try_lock(fd)
        if not got and threading.current_thread() is second:
            second_went.set()
        return got

    def pausing_validated(*args: Any) -> Any:
        if threading.current_thread() is first:
            second.start()
            assert second_went.wait(timeout=10)
        return validated(*args)

    monkeypatch.setattr(cw, "try_lock", spying_try_lock)
    monkeypatch.setattr(cw, "_validated", pausing_validated)
    first.start()
    first.join(timeout=30)
    second.join(timeout=30)
    assert isinstance(results["first"], WriteOutcome)
    final = tomllib.loads((home / "config.toml").read_text())
    if same_version:
        assert isinstance(results["second"], ConfigWriteError) and results["second"].code == "configVersionConflict"
        assert final == {"model": "b"}
    else:
        assert isinstance(results["second"], WriteOutcome)
        assert final == {"model": "b", "instructions": "hello"}


PROFILE = '[profiles.work]\nmodel = "x"  # mine\n'


@pytest.mark.parametrize(("edit", "code", "message"), [
    (("profiles.work.modle", "y", "replace"), "configSchemaUnknownKey",
     "unknown config key `profiles.work.modle`; did you mean `profiles.work.model`?"),
    (("profiles.work", {"sandbox_mod": "read-only"}, "upsert"), "configSchemaUnknownKey",
     "unknown config key `profiles.work.sandbox_mod`; did you mean `profiles.work.sandbox_mode`?"),
    (("profiles", {"home": {"modle": "y"}}, "upsert"), "configSchemaUnknownKey",
     "unknown config key `profiles.home.modle`; did you mean `profiles.home.model`?"),
    (("profiles.work.model_providers.m.base_ur", "http://m", "replace"), "configSchemaUnknownKey",
     "unknown config key `profiles.work.model_providers.m.base_ur`; did you mean `profiles.work.model_providers.m.base_url`?"),
    (("profiles.work.sandbox_mode", 7, "replace"), "configValidationError",
     "key 'sandbox_mode': Expected `str`, got `int`; allowed values: danger-full-access, read-only, workspace-write "
     "[profile 'work' layer]"),
    (("profiles.home", {"approval_policy": "nope"}, "replace"), "configValidationError",
     "key 'approval_policy': Invalid enum value 'nope'; allowed values: never, on-failure, on-request, untrusted "
     "[profile 'home' layer]"),
])
def test_a_bad_profile_key_or_value_is_refused(tmp_path: Path, edit: tuple[str, Any, str], code: str, message: str) -> None:
    home = _home(tmp_path, PROFILE)
    with pytest.raises(ConfigWriteError) as err:
        _write(home, edit)
    assert err.value.code == code and message in err.value.message
    assert (home / "config.toml").read_text() == PROFILE


def test_a_good_profile_key_is_written(tmp_path: Path) -> None:
    home = _home(tmp_path, PROFILE)
    _write(home, ("profiles.work.sandbox_mode", "read-only", "replace"))
    assert (home / "config.toml").read_text() == PROFILE + 'sandbox_mode = "read-only"\n'
