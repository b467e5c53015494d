"""The config layer stack: precedence, profiles, project trust, unknown keys, errors blamed on
their layer, and a thread's own config layer (applied, recorded, restored on resume and fork)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from spindle.actors.runtime import ConfigError, open_runtime
from spindle.actors.runtime.config import load_config
from spindle.actors.runtime.config_layers import LayeredConfig, LayerStack
from spindle.actors.runtime.permission_profiles import default_selection
from spindle.actors.testing.mock_model import MockModel
from spindle.protocol.config import DEFAULT_MODEL
from spindle.protocol.ops import ReloadUserConfigOp


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A home, a system file, and a git project `repo` with `.codex` layers at its root and in `sub`."""
    home, repo = tmp_path / "home", tmp_path / "repo"
    sub = repo / "sub"
    (repo / ".git").mkdir(parents=True)
    sub.mkdir()
    _write(tmp_path / "system.toml", 'model = "system"\nmodel_context_window = 1000\n')
    _write(home / "config.toml", f'''model = "user"
model_reasoning_effort = "low"
sandbox_mode = "read-only"
profile = "fast"

[profiles.fast]
model = "profile"
model_reasoning_effort = "high"

[projects."{repo}"]
trust_level = "trusted"
''')
    _write(repo / ".codex" / "config.toml", 'model = "project-root"\napproval_policy = "never"\n')
    _write(sub / ".codex" / "config.toml", 'model = "project-sub"\n')
    return {"home": home, "repo": repo, "sub": sub, "system": tmp_path / "system.toml"}


def _source(tree: dict[str, Path], *overrides: str) -> LayeredConfig:
    return LayeredConfig(home=tree["home"], overrides=overrides, system_file=tree["system"])


def _kinds(stack: LayerStack) -> list[str]:
    return [layer.kind + (f":{layer.profile}" if layer.profile else "") for layer in stack.layers]


def test_each_layer_wins_over_the_ones_below(tree: dict[str, Path]) -> None:
    full = _source(tree, "model=cli").load(str(tree["sub"]), {"model": "thread"})
    assert _kinds(full) == ["system", "user", "user:fast", "project", "project", "sessionFlags", "sessionFlags"]
    assert full.config.model == "thread"
    assert _source(tree, "model=cli").load(str(tree["sub"])).config.model == "cli"
    assert _source(tree).load(str(tree["sub"])).config.model == "project-sub"  # the closest .codex wins
    assert _source(tree).load(str(tree["repo"])).config.model == "project-root"
    assert _source(tree).load().config.model == "profile"  # no cwd: no project layers
    config = _source(tree).load(str(tree["sub"])).config
    assert (config.model_reasoning_effort, config.approval_policy, config.sandbox_mode) == ("high", "never", "read-only")
    assert config.model_context_window == 1000  # from the system file, which nothing overrides
    origins = full.origins()
    assert origins["model"].source == "thread config"
    assert origins["model_reasoning_effort"].profile == "fast"
    assert origins["approval_policy"].source == str(tree["repo"] / ".codex" / "config.toml")
    assert origins["model_context_window"].kind == "system"
    assert f"projects.{tree['repo']}.trust_level" in origins


def test_built_in_defaults_are_the_lowest_layer(tmp_path: Path) -> None:
    config = LayeredConfig(home=tmp_path, system_file=None).load(str(tmp_path)).config
    assert (config.model, config.approval_policy, config.sandbox_mode) == (DEFAULT_MODEL, "on-request", msgspec.UNSET)
    assert default_selection(config) == (None, "read-only")  # no layer selects: legacy read-only, as before profiles


def test_an_untrusted_or_unknown_project_is_listed_but_not_applied(tree: dict[str, Path]) -> None:
    user = tree["home"] / "config.toml"
    user.write_text(user.read_text().replace('"trusted"', '"untrusted"'))
    stack = _source(tree).load(str(tree["sub"]))
    assert stack.config.model == "profile"
    projects = [layer for layer in stack.layers if layer.kind == "project"]
    assert len(projects) == 2 and not any(layer.enabled for layer in projects)
    assert projects[0].disabled_reason is not None
    assert projects[0].disabled_reason.startswith(f"{tree['repo']} is marked as untrusted in the effective configuration.")
    user.write_text(user.read_text().split("[projects.")[0])  # no entry at all
    stack = _source(tree).load(str(tree["sub"]))
    assert stack.config.model == "profile"
    reason = next(layer for layer in stack.layers if layer.kind == "project").disabled_reason
    assert reason == (f"To load project-local config, hooks, and exec policies, add {tree['repo']} as a trusted "
                      f"project in {tree['home'] / 'config.toml'}.")


def test_an_unknown_key_is_a_warning_with_a_did_you_mean(tmp_path: Path) -> None:
    _write(tmp_path / "config.toml", 'modle = "x"\nmodel_verbosity = "low"\n\n[mcp_servers.docs]\ncomand = "srv"\n')
    stack = LayeredConfig(home=tmp_path, overrides=("sandbox_mod=read-only",), system_file=None).load()
    summaries = [w.summary for w in stack.warnings()]
    assert summaries == [
        f"unknown config key `modle`; did you mean `model`? in {tmp_path / 'config.toml'} (user layer)",
        f"unknown config key `mcp_servers.docs.comand`; did you mean `mcp_servers.docs.command`? in {tmp_path / 'config.toml'} (user layer)",
        "unknown config key `sandbox_mod`; did you mean `sandbox_mode`? in -c (session flags)",
    ]  # model_verbosity is a Codex key Spindle does not use: accepted silently
    assert stack.warnings()[0].path == str(tmp_path / "config.toml")
    assert stack.config.model == DEFAULT_MODEL  # and the typo changed nothing


def test_a_wrong_enum_names_the_file_the_key_the_allowed_values_and_the_layer(tree: dict[str, Path]) -> None:
    project = tree["repo"] / ".codex" / "config.toml"
    project.write_text('approval_policy = "sometimes"\n')
    with pytest.raises(ConfigError) as err:
        _source(tree).load(str(tree["sub"])).config  # noqa: B018
    assert str(err.value) == (
        f"{project}: key 'approval_policy': Invalid enum value 'sometimes'; "
        "allowed values: never, on-failure, on-request, untrusted [project layer]"
    )
    _write(tree["home"] / "config.toml", '[model_providers.local]\nname = "L"\nbase_url = 1\n')
    with pytest.raises(ConfigError, match=r"config.toml: key 'model_providers.local.base_url': Expected `str`, got `int` \[user layer\]"):
        _source(tree).load().config  # noqa: B018


def test_an_error_in_c_is_blamed_on_c_and_one_in_a_thread_config_on_it(tree: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as err:
        _source(tree, "approval_policy=sometimes").load().config  # noqa: B018
    assert str(err.value).startswith("-c 'approval_policy=sometimes': key 'approval_policy': Invalid enum value")
    assert "[session flags layer]" in str(err.value) and "config.toml" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^thread config: key 'sandbox_mode': Invalid enum value 'open'; allowed values: danger-full-access, read-only, workspace-write"):
        _source(tree).load(None, {"sandbox_mode": "open"}).config  # noqa: B018
    with pytest.raises(ConfigError, match=r"^-c 'model_provider=nowhere': key 'model_provider': unknown model provider 'nowhere'"):
        _source(tree, "model_provider=nowhere").load().config  # noqa: B018


def test_an_unknown_profile_names_it_and_the_known_ones(tree: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"^-c: key 'profile': profile 'slow' is not defined .*known profiles: fast$"):
        _source(tree, "profile=slow").load()
    assert _source(tree, "profile=fast").load().config.model == "profile"


def test_load_config_still_reads_one_file_and_overrides(tree: dict[str, Path]) -> None:
    config = load_config(tree["home"], ["model=m2"], {"cwd": "/tmp"})
    assert (config.model, config.cwd, config.model_reasoning_effort) == ("m2", "/tmp", "high")


async def test_a_threads_config_map_is_applied_recorded_and_restored_on_resume(
    tmp_path: Path, mock_model: MockModel, make_config: Callable[..., Any]
) -> None:
    home = tmp_path / "home"
    _write(home / "config.toml", f'''model = "mock-model"
model_provider = "mock"
approval_policy = "on-request"

[model_providers.mock]
name = "Mock"
base_url = "{mock_model.base_url}"
''')
    session = {"approval_policy": "never", "model_reasoning_effort": "high", "model_providers.extra.name": "X",
               "model_providers.extra.base_url": mock_model.base_url}
    source = LayeredConfig(home=home, system_file=None)
    async with open_runtime(source) as rt:
        thread = await rt.start_thread(config=session)
        assert (thread.settings.approval_policy, thread.settings.effort) == ("never", "high")
        assert thread.session_config == session and "extra" in thread.config.model_providers
        other = await rt.start_thread()
        assert (other.settings.approval_policy, other.settings.effort) == ("on-request", None)
        assert await thread.ask("hi") == "echo: hi"
        path = thread.rollout_path
        tid = thread.thread_id
    meta = json.loads(path.read_text().splitlines()[0])["payload"]
    assert meta["session_config"] == session
    async with open_runtime(source) as rt:
        resumed = await rt.resume_thread(tid, config={"model_context_window": 5000})
        assert resumed.session_config == {**session, "model_context_window": 5000}
        assert resumed.settings.approval_policy == "never" and resumed.config.model_context_window == 5000
        fork = await rt.fork_thread(1, tid)
        assert fork.session_config == resumed.session_config and fork.settings.approval_policy == "never"
    bare = await _first_line(make_config)
    assert "session_config" not in bare  # a thread without its own layer writes Codex's line as before


async def _first_line(make_config: Callable[..., Any]) -> dict[str, Any]:
    async with open_runtime(make_config()) as rt:
        thread = await rt.start_thread()
        await thread.ask("hi")
        path = thread.rollout_path
    return json.loads(path.read_text().splitlines()[0])["payload"]  # type: ignore[no-any-return]


async def test_reload_user_config_rebuilds_each_thread_for_its_cwd_and_keeps_its_layer(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home = tmp_path / "home"
    user = _write(home / "config.toml", f'''model = "mock-model"
model_provider = "mock"
sandbox_mode = "read-only"

[model_providers.mock]
name = "Mock"
base_url = "{mock_model.base_url}"
''')
    async with open_runtime(LayeredConfig(home=home, system_file=None)) as rt:
        plain = await rt.start_thread()
        pinned = await rt.start_thread(config={"model_context_window": 7})
        user.write_text("model_context_window = 9\n" + user.read_text().replace('"read-only"', '"workspace-write"'))
        assert await rt.reload_user_config(strict=True) == []
        assert plain.settings.sandbox_mode == "workspace-write" and plain.settings.model_context_window == 9
        assert pinned.settings.sandbox_mode == "workspace-write" and pinned.settings.model_context_window == 7
        user.write_text(user.read_text().replace("model_context_window = 9", "model_context_window = 11"))
        outcome = await plain.submit_and_wait(ReloadUserConfigOp())  # the op itself reads the layers
        assert outcome.error is None and plain.settings.model_context_window == 11
        stale = msgspec.structs.replace(plain.config, model_context_window=5)
        outcome = await plain.submit_and_wait(ReloadUserConfigOp(config=stale, cwd=str(home / "elsewhere")))
        assert outcome.error is None and plain.settings.model_context_window == 11  # planned for another cwd: rebuilt
        outcome = await plain.submit_and_wait(ReloadUserConfigOp(config=stale, cwd=plain.settings.cwd))
        assert outcome.error is None and plain.settings.model_context_window == 5  # planned for its cwd: applied
        outcome = await plain.submit_and_wait(ReloadUserConfigOp())
        assert pinned.settings.model_context_window == 7
        user.write_text('approval_policy = "sometimes"\n' + user.read_text())
        outcome = await plain.submit_and_wait(ReloadUserConfigOp())
        assert outcome.error is not None and "approval_policy" in outcome.error.message
        with pytest.raises(ConfigError, match="approval_policy"):
            await rt.reload_user_config(strict=True)
        warnings = await rt.reload_user_config(strict=False)
        assert warnings and all("approval_policy" in w for w in warnings)
        assert plain.settings.sandbox_mode == "workspace-write"  # kept its last good config


@pytest.mark.parametrize("value", ["nan", "-1.0"])
def test_an_mcp_timeout_that_is_negative_or_nan_is_refused_naming_it(tmp_path: Path, value: str) -> None:
    _write(tmp_path / "config.toml", f'[mcp_servers.docs]\ncommand = "srv"\ntool_timeout_sec = {value}\n')
    with pytest.raises(ConfigError, match=r"key 'mcp_servers.docs.tool_timeout_sec': Expected `float` >= 0.0"):
        LayeredConfig(home=tmp_path, system_file=None).load().config  # noqa: B018


async def test_reload_moves_a_thread_on_the_default_selection_to_the_new_one(tmp_path: Path, mock_model: MockModel) -> None:
    """A thread still on the config's permission selection follows a reload (legacy to profile and
    back); one given its own profile keeps it."""
    home = tmp_path / "home"
    base = f'model = "mock-model"\nmodel_provider = "mock"\n[model_providers.mock]\nname = "Mock"\nbase_url = "{mock_model.base_url}"\n'
    user = _write(home / "config.toml", 'sandbox_mode = "read-only"\n' + base)
    async with open_runtime(LayeredConfig(home=home, system_file=None)) as rt:
        plain = await rt.start_thread()
        chosen = await rt.start_thread(permissions=":danger-full-access")
        user.write_text('default_permissions = "dev"\n' + base + '[permissions.dev]\nextends = ":workspace"\n')
        assert await rt.reload_user_config(strict=True) == []
        assert (plain.settings.permissions, plain.settings.sandbox_mode) == ("dev", "workspace-write")
        assert plain.permission_profiles.get("dev").extends == ":workspace"
        assert chosen.settings.permissions == ":danger-full-access"
        user.write_text('sandbox_mode = "danger-full-access"\ndefault_permissions = "dev"\n' + base + '[permissions.dev]\n')
        assert await rt.reload_user_config(strict=True) == []
        assert (plain.settings.permissions, plain.settings.sandbox_mode) == (None, "danger-full-access")
