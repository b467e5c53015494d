"""Permission profiles: built-ins, `[permissions.<id>]` tables, the selection rule, and how a
thread's symbolic selection is realised into a `SandboxSpec` for a turn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from spindle.actors.runtime.config import config_from_mapping
from spindle.actors.runtime.config_layers import LayeredConfig
from spindle.actors.runtime.errors import ConfigError, SandboxUnavailable
from spindle.actors.runtime.permission_profiles import (
    default_selection,
    load_profiles,
    selection_warnings,
)
from spindle.actors.runtime.permissions import describe, realise
from spindle.actors.runtime.settings import apply_update, initial_settings, recorded_settings
from spindle.protocol.config import Config
from spindle.protocol.rollout import SandboxPolicy, SessionMeta, TurnContextItem
from spindle.protocol.settings import SettingsUpdate, ThreadSettings


def _config(tmp_path: Path, **data: Any) -> Config:
    return config_from_mapping({"cwd": str(tmp_path), **data}, source="test config", home=tmp_path / "home")


def _settings(cwd: Path, **fields: Any) -> ThreadSettings:
    base: dict[str, Any] = {"model": "m", "provider_id": "openai", "cwd": str(cwd), "approval_policy": "never",
                            "sandbox_mode": "read-only", "instructions": ""}
    return ThreadSettings(**{**base, **fields})


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / ".git").mkdir(parents=True)
    (tmp_path / "extra").mkdir()
    (tmp_path / "profroot").mkdir()
    return work


DEV = {
    "description": "dev profile",
    "extends": ":workspace",
    "workspace_roots": {"PROFROOT": True, "/nowhere/off": False},
    "filesystem": {":tmpdir": "read", ":workspace_roots": {".devcontainer": "read", "secrets": "none"}},
    "network": {"enabled": True},
}


def _dev(tmp_path: Path) -> dict[str, Any]:
    table = msgspec.json.decode(msgspec.json.encode(DEV))
    table["workspace_roots"] = {str(tmp_path / "profroot"): True, "/nowhere/off": False}
    return table


# --- built-ins ----------------------------------------------------------------


def test_builtins_come_first_and_realise_as_documented(tmp_path: Path, work: Path) -> None:
    profiles = load_profiles(_config(tmp_path, permissions={"dev": _dev(tmp_path)}))
    assert profiles.ids() == [":read-only", ":workspace", ":danger-full-access", "dev"]

    workspace = realise(_settings(work, permissions=":workspace"), profiles)
    assert workspace.writable_roots == (str(work),)
    assert workspace.read_only_subpaths == (str(work / ".git"), str(work / ".codex"))
    assert (workspace.tmpdir_writable, workspace.slash_tmp_writable, workspace.network) == (True, True, False)
    assert not workspace.full_access

    read_only = realise(_settings(work, permissions=":read-only"), profiles)
    assert (read_only.writable_roots, read_only.tmpdir_writable, read_only.slash_tmp_writable) == ((), False, False)
    assert realise(_settings(work, permissions=":danger-full-access"), profiles).full_access


def test_a_user_profile_merges_its_parent_and_adds_its_roots(tmp_path: Path, work: Path) -> None:
    profiles = load_profiles(_config(tmp_path, permissions={"dev": _dev(tmp_path)}))
    dev = profiles.get("dev")
    assert (dev.description, dev.extends, dev.legacy_mode) == ("dev profile", ":workspace", "workspace-write")
    spec = realise(_settings(work, permissions="dev"), profiles)
    prof = tmp_path / "profroot"
    assert spec.writable_roots == (str(work), str(prof))
    assert set(spec.read_only_subpaths) == {
        str(work / ".git"), str(work / ".codex"), str(prof / ".git"), str(prof / ".codex"),
        str(work / ".devcontainer"), str(prof / ".devcontainer"),
    }
    assert spec.denied_paths == (str(work / "secrets"), str(prof / "secrets"))  # `none` is deny
    assert spec.tmpdir_writable is False  # the child's ":tmpdir" = "read" replaced the parent's write
    assert spec.slash_tmp_writable is True and spec.network is True


def test_a_profile_may_write_a_protected_sub_path_explicitly(tmp_path: Path, work: Path) -> None:
    table = {"extends": ":workspace", "filesystem": {":workspace_roots": {".git": "write"}}}
    spec = realise(_settings(work, permissions="git"), load_profiles(_config(tmp_path, permissions={"git": table})))
    assert str(work / ".git") in spec.writable_roots and str(work / ".git") not in spec.read_only_subpaths
    assert str(work / ".codex") in spec.read_only_subpaths


# --- bad profiles -------------------------------------------------------------


@pytest.mark.parametrize(("tables", "message"), [
    ({"a": {"extends": "a"}}, r"\[permissions.a\] extends: profile 'a' extends itself \(a -> a\)"),
    ({"a": {"extends": "b"}, "b": {"extends": "a"}}, r"profile 'a' extends itself \(a -> b -> a\)"),
    ({"a": {"extends": "ghost"}}, r"\[permissions.a\] extends: unknown profile 'ghost' \(a -> ghost\); known: :read-only, :workspace, a"),
    ({"a": {"extends": ":danger-full-access"}}, r":danger-full-access cannot be extended"),
    ({"a": {"filesystem": {"/srv": "rw"}}}, r"\[permissions.a\] filesystem '/srv': unknown access 'rw'; allowed: read, write, deny"),
    ({"a": {"filesystem": {":workspace_roots": {"src": "exec"}}}}, r"filesystem ':workspace_roots' 'src': unknown access 'exec'"),
    ({"a": {"filesystem": {":workspace_roots": {"../up": "write"}}}}, r"'\.\./up': a sub-path is relative, without '\.' or '\.\.'"),
    ({"a": {"filesystem": {":workspace_roots": {"**/*.env": "deny"}}}}, r"glob patterns are not supported"),
    ({"a": {"filesystem": {"relative/dir": "write"}}}, r"filesystem 'relative/dir': a path must be absolute"),
    ({"a": {"filesystem": {":home": "write"}}}, r"filesystem ':home': unknown special path"),
    ({"a": {"filesystem": {":tmpdir": {"x": "write"}}}}, r"filesystem ':tmpdir': takes no sub-paths"),
    ({"a": {"filesystem": {":root": "deny"}}}, r"filesystem ':root' = 'deny': not supported"),
    ({"a": {"workspace_roots": {"rel": True}}}, r"workspace_roots 'rel': a workspace root must be absolute"),
    ({"a": {"network": {"enabled": "yes"}}}, r"network.enabled: expected true or false"),
    ({":mine": {}}, r"ids starting with ':' are reserved"),
])
def test_a_bad_profile_is_refused_naming_it(tmp_path: Path, tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profiles(_config(tmp_path, permissions=tables))


def test_a_bad_profile_in_a_config_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[permissions.a.filesystem]\n"/srv" = "rw"\n')
    with pytest.raises(ConfigError, match=r"config.toml: key 'permissions': \[permissions.a\] filesystem '/srv': unknown access 'rw'"):
        LayeredConfig(home=tmp_path, system_file=None).load().config  # noqa: B018


def test_unknown_profile_keys_and_domain_rules_are_warnings(tmp_path: Path) -> None:
    config = _config(tmp_path, default_permissions="a", permissions={"a": {
        "extends": ":workspace", "colour": "blue", "network": {"enabled": False, "domains": {"x.com": "allow"}, "speed": 1}}})
    warnings = selection_warnings(config)
    assert "unknown key `permissions.a.colour` (ignored)" in warnings
    assert "unknown key `permissions.a.network.speed` (ignored)" in warnings
    assert any("network domain and unix socket rules are not enforced" in w for w in warnings)
    assert load_profiles(config).get("a").legacy_mode == "workspace-write"


def test_an_unknown_profile_id_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown permission profile 'ghost'; known profiles: :read-only, :workspace, :danger-full-access, dev"):
        load_profiles(_config(tmp_path, permissions={"dev": {}})).get("ghost")


# --- selection ----------------------------------------------------------------


def _layered(tmp_path: Path, text: str) -> Config:
    (tmp_path / "config.toml").write_text(text)
    return LayeredConfig(home=tmp_path, system_file=None).load().config


def test_sandbox_mode_in_any_layer_wins_over_default_permissions(tmp_path: Path) -> None:
    profile = '[permissions.dev]\nextends = ":workspace"\n'
    assert default_selection(_layered(tmp_path, f'default_permissions = "dev"\n{profile}')) == ("dev", "workspace-write")
    legacy = _layered(tmp_path, f'default_permissions = "dev"\nsandbox_mode = "read-only"\n{profile}')
    assert default_selection(legacy) == (None, "read-only")
    in_profile = _layered(tmp_path, f'default_permissions = "dev"\nprofile = "p"\n[profiles.p]\nsandbox_mode = "danger-full-access"\n{profile}')
    assert default_selection(in_profile) == (None, "danger-full-access")


def test_profiles_without_default_permissions_warn_and_keep_the_default(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[permissions.dev]\nextends = ":workspace"\n')
    stack = LayeredConfig(home=tmp_path, system_file=None).load()
    assert default_selection(stack.config) == (None, "read-only")
    assert any("defines `[permissions]` profiles but does not set `default_permissions`" in w.summary for w in stack.warnings())


def test_an_unknown_default_permissions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'default_permissions': unknown permission profile 'ghost'"):
        _layered(tmp_path, 'default_permissions = "ghost"\n')


def test_new_threads_take_the_selection_and_a_legacy_choice_clears_the_profile(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path, default_permissions=":workspace")
    settings = initial_settings(config, SettingsUpdate(cwd=str(work)))
    assert (settings.permissions, settings.sandbox_mode) == (":workspace", "workspace-write")
    legacy = apply_update(config, settings, SettingsUpdate(sandbox_mode="read-only"))
    assert (legacy.permissions, legacy.sandbox_mode) == (None, "read-only")
    again = apply_update(config, legacy, SettingsUpdate(permissions=":danger-full-access"))
    assert (again.permissions, again.sandbox_mode) == (":danger-full-access", "danger-full-access")
    with pytest.raises(ConfigError, match="`permissions` cannot be combined with `sandbox_mode`"):
        apply_update(config, settings, SettingsUpdate(permissions=":workspace", sandbox_mode="read-only"))


def test_legacy_workspace_write_keeps_its_options(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path, sandbox_mode="workspace-write", sandbox_workspace_write={
        "writable_roots": [str(tmp_path / "extra")], "network_access": True, "exclude_slash_tmp": True})
    settings = initial_settings(config, SettingsUpdate(cwd=str(work)))
    assert settings.permissions is None
    spec = realise(settings, load_profiles(config))
    assert spec.writable_roots == (str(work), str(tmp_path / "extra"))
    assert str(tmp_path / "extra" / ".git") in spec.read_only_subpaths
    assert (spec.network, spec.tmpdir_writable, spec.slash_tmp_writable) == (True, True, False)
    no_tmpdir = _config(tmp_path, sandbox_mode="workspace-write", sandbox_workspace_write={"exclude_tmpdir_env_var": True})
    spec = realise(settings, load_profiles(no_tmpdir))
    assert (spec.writable_roots, spec.network, spec.tmpdir_writable, spec.slash_tmp_writable) == ((str(work),), False, False, True)
    view = describe(settings, load_profiles(config))
    assert (view.selected_by_id, view.writable_roots, view.runtime_roots) == (False, [str(tmp_path / "extra")], [str(work)])


# --- runtime workspace roots --------------------------------------------------


def test_runtime_roots_resolve_against_the_cwd_and_bad_ones_are_refused(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path)
    (work / "sub").mkdir()
    (work / "file.txt").write_text("x")
    settings = initial_settings(config, SettingsUpdate(cwd=str(work), runtime_workspace_roots=(".", "sub", "../extra")))
    assert settings.runtime_workspace_roots == (str(work), str(work / "sub"), str(tmp_path / "extra"))
    with pytest.raises(ConfigError, match=r"runtime workspace root 'gone' does not exist \(resolved against cwd '.*work'"):
        apply_update(config, settings, SettingsUpdate(runtime_workspace_roots=("gone",)))
    with pytest.raises(ConfigError, match=r"runtime workspace root 'file.txt' is not a directory"):
        apply_update(config, settings, SettingsUpdate(runtime_workspace_roots=("file.txt",)))


def test_a_profile_stays_symbolic_so_a_roots_only_update_changes_the_writes(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path)
    profiles = load_profiles(config)
    settings = apply_update(config, initial_settings(config, SettingsUpdate(cwd=str(work))), SettingsUpdate(permissions=":workspace"))
    assert realise(settings, profiles).writable_roots == (str(work),)
    wider = apply_update(config, settings, SettingsUpdate(runtime_workspace_roots=(str(work), str(tmp_path / "extra"))))
    assert wider.permissions == ":workspace"
    assert realise(wider, profiles).writable_roots == (str(work), str(tmp_path / "extra"))


def test_a_cwd_only_update_retargets_the_implicit_root_and_keeps_the_others(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path)
    (work / "sub").mkdir()
    settings = initial_settings(config, SettingsUpdate(cwd=str(work), permissions=":workspace",
                                                       runtime_workspace_roots=(str(work), str(tmp_path / "extra"))))
    moved = apply_update(config, settings, SettingsUpdate(cwd=str(work / "sub")))
    assert moved.runtime_workspace_roots == (str(work / "sub"), str(tmp_path / "extra"))
    implicit = apply_update(config, initial_settings(config, SettingsUpdate(cwd=str(work))), SettingsUpdate(cwd=str(work / "sub")))
    assert implicit.workspace_roots() == (str(work / "sub"),)


def test_realise_refuses_a_root_that_vanished(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    settings = initial_settings(config, SettingsUpdate(cwd=str(work), permissions=":workspace",
                                                       runtime_workspace_roots=(str(work), str(gone))))
    gone.rmdir()
    with pytest.raises(SandboxUnavailable, match=f"workspace root '{gone}' does not exist"):
        realise(settings, load_profiles(config))


def test_realise_uses_real_paths(tmp_path: Path, work: Path) -> None:
    link = tmp_path / "link"
    os.symlink(work, link)
    settings = _settings(link, permissions=":workspace")
    assert realise(settings, load_profiles(_config(tmp_path))).writable_roots == (str(work),)


def test_a_rollout_records_the_selection_and_roots(tmp_path: Path, work: Path) -> None:
    config = _config(tmp_path, permissions={"dev": _dev(tmp_path)})
    meta = SessionMeta(id="t", timestamp="", cwd=str(work))
    context = TurnContextItem(cwd=str(work), approval_policy="never", model="m", sandbox_policy=SandboxPolicy(type="workspace-write"),
                              permissions="dev", runtime_workspace_roots=[str(work), str(tmp_path / "extra")])
    update = recorded_settings(config, meta, context)
    assert (update.permissions, update.sandbox_mode) == ("dev", None)
    assert update.runtime_workspace_roots == (str(work), str(tmp_path / "extra"))
    old = msgspec.json.decode(b'{"cwd":"/w","approval_policy":"never","model":"m","sandbox_policy":{"type":"workspace-write"}}', type=TurnContextItem)
    legacy = recorded_settings(config, meta, old)
    assert (legacy.permissions, legacy.sandbox_mode, legacy.runtime_workspace_roots) == (None, "workspace-write", None)
    started = SessionMeta(id="t", timestamp="", cwd=str(work), permissions="dev", runtime_workspace_roots=[str(work), str(tmp_path / "extra")])
    before_any_turn = recorded_settings(config, started, None)  # a persisted thread that never ran a turn
    assert (before_any_turn.permissions, before_any_turn.runtime_workspace_roots) == ("dev", (str(work), str(tmp_path / "extra")))


def test_a_later_selection_replaces_the_other_kind_when_updates_chain(tmp_path: Path, work: Path) -> None:
    """A resume's recorded profile followed by a `sandbox` param (and the reverse) is one selection."""
    config = _config(tmp_path)
    recorded = SettingsUpdate(cwd=str(work), permissions=":workspace")
    legacy = initial_settings(config, recorded.then(SettingsUpdate(sandbox_mode="danger-full-access")))
    assert (legacy.permissions, legacy.sandbox_mode) == (None, "danger-full-access")
    profile = initial_settings(config, SettingsUpdate(cwd=str(work), sandbox_mode="read-only").then(SettingsUpdate(permissions=":workspace")))
    assert (profile.permissions, profile.sandbox_mode) == (":workspace", "workspace-write")


def test_config_writes_accept_profiles_and_refuse_a_bad_one(tmp_path: Path) -> None:
    from spindle.actors.runtime.config_write import ConfigWriteError, Edit, write_user_config

    source = LayeredConfig(home=tmp_path, system_file=None)
    edits = [Edit.parse("permissions.dev.extends", ":workspace", "replace"), Edit.parse("default_permissions", "dev", "replace")]
    write_user_config(source, edits, expected_version=None)
    assert default_selection(source.load().config) == ("dev", "workspace-write")
    with pytest.raises(ConfigWriteError, match=r"unknown access 'rw'"):
        write_user_config(source, [Edit.parse('permissions.dev.filesystem."/srv"', "rw", "replace")], expected_version=None)
    with pytest.raises(ConfigWriteError, match=r"unknown permission profile 'ghost'"):
        write_user_config(source, [Edit.parse("default_permissions", "ghost", "replace")], expected_version=None)
    assert 'default_permissions = "dev"' in (tmp_path / "config.toml").read_text()


def test_a_profile_gone_from_the_config_refuses_commands_but_still_describes(tmp_path: Path, work: Path) -> None:
    settings = _settings(work, permissions="dev")
    profiles = load_profiles(_config(tmp_path))  # a reload dropped [permissions.dev]
    with pytest.raises(SandboxUnavailable, match="unknown permission profile 'dev'"):
        realise(settings, profiles)
    view = describe(settings, profiles)
    assert (view.profile.id, view.selected_by_id, view.writable_roots) == ("dev", True, [])


def test_a_root_that_cannot_be_real_pathed_makes_the_sandbox_unavailable(tmp_path: Path) -> None:
    settings = _settings(tmp_path, permissions=":workspace")
    settings = msgspec.structs.replace(settings, runtime_workspace_roots=("a\x00b",))
    with pytest.raises(SandboxUnavailable, match=r"workspace root 'a\\x00b' cannot be used: embedded null byte"):
        realise(settings, load_profiles(_config(tmp_path)))
