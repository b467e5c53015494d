"""The config methods over the app-server: config/read (layers, origins, trust), writes that keep
comments and refuse bad edits without touching the file, configRequirements/read, configWarning,
and thread/start's config map."""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import ThreadManager, config_write, open_runtime
from spindle.actors.runtime.config_layers import LayeredConfig
from spindle.actors.testing.mock_model import MockModel
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure

from .helpers import app_client

HEAD = """# My Codex config: keep this comment
model = "mock-model"   # the model
model_provider = "mock"
approval_policy = "on-request"
modle = "typo"
"""


def _user_text(mock: MockModel, repo: Path) -> str:
    return HEAD + f'''
[model_providers.mock]
name = "Mock"   # inline comment
base_url = "{mock.base_url}"

# projects this machine trusts
[projects."{repo}"]
trust_level = "trusted"
'''


@pytest.fixture
def layout(tmp_path: Path, mock_model: MockModel) -> dict[str, Path]:
    home, repo, other = tmp_path / "home", tmp_path / "repo", tmp_path / "other"
    for project in (repo, other):
        (project / ".git").mkdir(parents=True)
        (project / ".codex").mkdir()
        (project / ".codex" / "config.toml").write_text('model_verbosity = "low"\n')
    home.mkdir()
    (home / "config.toml").write_text(_user_text(mock_model, repo))
    return {"home": home, "repo": repo, "other": other, "user": home / "config.toml"}


@pytest.fixture
async def manager(layout: dict[str, Path]) -> AsyncIterator[ThreadManager]:
    source = LayeredConfig(home=layout["home"], overrides=('model_verbosity="medium"',), system_file=None)
    async with open_runtime(source) as rt:
        yield rt


@pytest.fixture
async def rpc(manager: ThreadManager) -> AsyncIterator[RpcClient]:
    async with app_client(manager) as client:
        yield client


def _version(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


async def test_config_read_lists_the_layers_highest_first_with_origins(rpc: RpcClient, layout: dict[str, Path]) -> None:
    user = str(layout["user"])
    result = await rpc.call("config/read", {"includeLayers": True, "cwd": str(layout["repo"])})
    names = [layer["name"] for layer in result["layers"]]
    assert names == [
        {"type": "sessionFlags"},
        {"type": "project", "dotCodexFolder": str(layout["repo"] / ".codex")},
        {"type": "user", "file": user, "profile": None},
    ]
    assert [layer["disabledReason"] for layer in result["layers"]] == [None, None, None]
    assert result["layers"][2]["version"] == _version(layout["user"])
    assert result["layers"][0]["config"] == {"model_verbosity": "medium"}
    config = result["config"]
    assert (config["model"], config["model_verbosity"], config["sandbox_mode"]) == ("mock-model", "medium", None)
    assert config["profiles"] == {} and config["project_root_markers"] == [".git"]
    assert result["origins"]["model_verbosity"] == {"name": {"type": "sessionFlags"}, "version": result["layers"][0]["version"]}
    assert result["origins"]["model_providers.mock.base_url"]["name"] == {"type": "user", "file": user, "profile": None}
    assert result["origins"][f"projects.{layout['repo']}.trust_level"]["name"]["type"] == "user"
    plain = await rpc.call("config/read", {})
    assert plain["layers"] is None and "model" in plain["origins"]


async def test_an_untrusted_project_is_listed_with_why_it_is_off(rpc: RpcClient, layout: dict[str, Path]) -> None:
    result = await rpc.call("config/read", {"includeLayers": True, "cwd": str(layout["other"])})
    project = result["layers"][1]
    assert project["name"] == {"type": "project", "dotCodexFolder": str(layout["other"] / ".codex")}
    assert project["config"] == {"model_verbosity": "low"}
    assert project["disabledReason"] == (f"To load project-local config, hooks, and exec policies, add {layout['other']} "
                                         f"as a trusted project in {layout['user']}.")


async def test_a_relative_cwd_is_the_servers(rpc: RpcClient, layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(layout["repo"])
    result = await rpc.call("config/read", {"includeLayers": True, "cwd": "."})
    assert result["layers"][1]["name"]["dotCodexFolder"] == str(layout["repo"] / ".codex")


async def test_unknown_keys_are_sent_as_config_warnings_after_initialize(rpc: RpcClient, layout: dict[str, Path]) -> None:
    warning = await rpc.wait_for("configWarning")
    assert warning["params"]["summary"].startswith("unknown config key `modle`; did you mean `model`?")
    assert warning["params"]["path"] == str(layout["user"])


async def test_config_requirements_read_without_params(rpc: RpcClient) -> None:
    reply = await rpc.send_message({"id": 9, "method": "configRequirements/read"})
    assert reply["result"] == {"requirements": None, "supportsIndependentSpeedModes": True}


async def test_a_write_keeps_comments_and_formatting(rpc: RpcClient, layout: dict[str, Path], mock_model: MockModel) -> None:
    before = layout["user"].read_text()
    result = await rpc.call("config/batchWrite", {
        "edits": [
            {"keyPath": "approval_policy", "value": "never", "mergeStrategy": "replace"},
            {"keyPath": "mcp_servers.docs", "value": {"command": "python3", "args": ["srv.py"]}, "mergeStrategy": "upsert"},
            {"keyPath": "modle", "value": None, "mergeStrategy": "replace"},
        ],
        "expectedVersion": _version(layout["user"]),
    })
    after = layout["user"].read_text()
    assert result == {"status": "ok", "version": _version(layout["user"]), "filePath": str(layout["user"]), "overriddenMetadata": None}
    expected_head = before.split("[model_providers")[0].replace('"on-request"', '"never"').replace('modle = "typo"\n', "")
    assert after.startswith(expected_head)  # the comments, spacing and order of the untouched lines
    assert _user_text(mock_model, layout["repo"]).split(HEAD)[1] in after  # the tables, comments included
    assert '[mcp_servers.docs]\ncommand = "python3"\nargs = ["srv.py"]\n' in after
    read = await rpc.call("config/read", {})
    assert read["config"]["approval_policy"] == "never" and read["config"]["mcp_servers"]["docs"]["command"] == "python3"


async def test_a_key_a_higher_layer_sets_is_written_but_reported_overridden(rpc: RpcClient, layout: dict[str, Path]) -> None:
    result = await rpc.call("config/value/write", {"keyPath": "model_verbosity", "value": "high", "mergeStrategy": "replace"})
    assert result["status"] == "okOverridden"
    assert result["overriddenMetadata"]["message"] == "Overridden by session flags"
    assert result["overriddenMetadata"]["effectiveValue"] == "medium"
    assert 'model_verbosity = "high"' in layout["user"].read_text()


@pytest.mark.parametrize(("edit", "code", "message"), [
    ({"keyPath": "modle", "value": "x"}, "configSchemaUnknownKey", "unknown config key `modle`; did you mean `model`?"),
    ({"keyPath": "mcp_servers.docs", "value": {"comand": "x"}}, "configSchemaUnknownKey",
     "unknown config key `mcp_servers.docs.comand`; did you mean `mcp_servers.docs.command`?"),
    ({"keyPath": "sandbox_mode", "value": "open"}, "configValidationError",
     "key 'sandbox_mode': Invalid enum value 'open'; allowed values: danger-full-access, read-only, workspace-write [user layer]"),
    ({"keyPath": "model_context_window", "value": "big"}, "configValidationError", "Expected `int | null`, got `str`"),
    ({"keyPath": "model..x", "value": 1}, "configValidationError", "keyPath segments must not be empty"),
])
async def test_a_bad_write_is_refused_and_the_file_is_untouched(
    rpc: RpcClient, layout: dict[str, Path], edit: dict[str, Any], code: str, message: str
) -> None:
    before = layout["user"].read_bytes()
    with pytest.raises(RpcFailure) as err:
        await rpc.call("config/value/write", {**edit, "mergeStrategy": "replace"})
    assert err.value.code == -32600
    assert err.value.error["data"] == {"config_write_error_code": code}
    assert message in err.value.message
    assert layout["user"].read_bytes() == before


async def test_a_write_that_fails_after_its_temporary_file_leaves_no_trace(
    rpc: RpcClient, layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = layout["user"].read_bytes()
    written: list[bytes] = []

    def failing_replace(src: str, dst: str) -> None:
        written.append(Path(src).read_bytes())  # the temporary file exists and holds the new text
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(config_write.os, "replace", failing_replace)
    with pytest.raises(RpcFailure) as err:
        await rpc.call("config/value/write", {"keyPath": "model", "value": "m", "mergeStrategy": "replace"})
    assert err.value.error == {"code": -32600, "message": f"{layout['user']}: cannot write: Input/output error",
                               "data": {"config_write_error_code": "configLayerReadonly"}}
    assert len(written) == 1 and b'model = "m"' in written[0]
    assert layout["user"].read_bytes() == before
    assert not [p for p in layout["home"].iterdir() if p.name.startswith(".config.toml")]  # no temporary file left


async def test_a_stale_version_or_another_file_is_refused(rpc: RpcClient, layout: dict[str, Path]) -> None:
    before = layout["user"].read_bytes()
    with pytest.raises(RpcFailure) as err:
        await rpc.call("config/value/write", {"keyPath": "model", "value": "m", "mergeStrategy": "replace",
                                              "expectedVersion": "sha256:" + "0" * 64})
    assert err.value.error == {"code": -32600, "message": "Configuration was modified since last read. Fetch latest version and retry.",
                               "data": {"config_write_error_code": "configVersionConflict"}}
    with pytest.raises(RpcFailure) as err:
        await rpc.call("config/value/write", {"keyPath": "model", "value": "m", "mergeStrategy": "replace",
                                              "filePath": str(layout["repo"] / ".codex" / "config.toml")})
    assert err.value.error["data"] == {"config_write_error_code": "configLayerReadonly"}
    assert layout["user"].read_bytes() == before


async def test_thread_start_config_map_and_a_write_with_reload(rpc: RpcClient, layout: dict[str, Path]) -> None:
    started = await rpc.call("thread/start", {"cwd": str(layout["repo"]), "config": {"approval_policy": "never"}})
    assert started["approvalPolicy"] == "never"
    plain = await rpc.call("thread/start", {"cwd": str(layout["repo"])})
    assert plain["approvalPolicy"] == "on-request"
    seen = len(rpc.notifications)
    await rpc.call("thread/start", {"config": {"approval_polcy": "never"}})
    warning = await rpc.wait_for("configWarning", after=seen)
    assert warning["params"]["summary"] == "unknown config key `approval_polcy`; did you mean `approval_policy`? in thread config (session flags)"
    with pytest.raises(RpcFailure, match="thread config: key 'sandbox_mode'"):
        await rpc.call("thread/start", {"config": {"sandbox_mode": "open"}})
    await rpc.call("config/batchWrite", {"edits": [{"keyPath": "approval_policy", "value": "untrusted", "mergeStrategy": "replace"}],
                                         "reloadUserConfig": True})
    resumed = await rpc.call("thread/resume", {"threadId": plain["thread"]["id"]})  # a loaded thread: as it is now
    assert resumed["approvalPolicy"] == "untrusted"
    pinned = await rpc.call("thread/resume", {"threadId": started["thread"]["id"]})
    assert pinned["approvalPolicy"] == "never"  # its own layer still wins


def test_the_session_config_field_is_left_out_when_unset() -> None:
    from spindle.protocol.rollout import SessionMeta

    meta = SessionMeta(id="x", timestamp="t", cwd="/")
    assert "session_config" not in json.loads(json.dumps(__import__("msgspec").to_builtins(meta)))


# --- what a review found ---------------------------------------------------------


async def test_an_untrusted_project_nested_past_reason_is_listed_not_fatal(rpc: RpcClient, layout: dict[str, Path]) -> None:
    deep = "x = " + "[" * 600 + "]" * 600 + "\n"
    (layout["other"] / ".codex" / "config.toml").write_text(deep)
    result = await rpc.call("config/read", {"includeLayers": True, "cwd": str(layout["other"])})
    [project] = [layer for layer in result["layers"] if layer["name"]["type"] == "project"]
    assert project["disabledReason"] and project["config"] == {}
    (layout["repo"] / ".codex" / "config.toml").write_text("a." * 300 + "a = 1\n")  # trusted: an error naming it
    with pytest.raises(RpcFailure, match=r"repo/\.codex/config\.toml: nested too deeply"):
        await rpc.call("config/read", {"includeLayers": True, "cwd": str(layout["repo"])})
    assert (await rpc.call("configRequirements/read"))["requirements"] is None  # still serving


async def test_config_read_nulls_typed_keys_spindle_does_not_check(rpc: RpcClient, layout: dict[str, Path]) -> None:
    with layout["user"].open("a") as out:
        out.write('\nforced_login_method = "ChatGPT"\nanalytics = false\ndesktop = 3\n')
    config = (await rpc.call("config/read", {}))["config"]
    assert (config["forced_login_method"], config["analytics"], config["desktop"]) == (None, None, None)


async def test_bad_project_root_markers_are_named(rpc: RpcClient) -> None:
    with pytest.raises(RpcFailure, match="project_root_markers: expected a list of file names, got 5"):
        await rpc.call("thread/start", {"config": {"project_root_markers": 5}})


async def test_a_thread_layer_warning_goes_to_its_client_only(manager: ThreadManager, rpc: RpcClient) -> None:
    await rpc.call("thread/start", {"config": {"modle_typo": "x"}})
    await rpc.wait_for("configWarning", lambda p: "modle_typo" in p["summary"])
    assert not any("modle_typo" in w.summary for w in manager.config_warnings)


async def test_a_trust_key_spelled_through_a_symlink_counts(tmp_path: Path, layout: dict[str, Path]) -> None:
    link = tmp_path / "link-to-other"
    link.symlink_to(layout["other"])
    with layout["user"].open("a") as out:
        out.write(f'\n[projects."{link}"]\ntrust_level = "trusted"\n')
    stack = await trio.to_thread.run_sync(lambda: LayeredConfig(home=layout["home"], system_file=None).load(str(layout["other"])))
    [project] = [layer for layer in stack.layers if layer.kind == "project"]
    assert project.enabled and project.disabled_reason is None
