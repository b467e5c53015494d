"""Permission profiles and runtime workspace roots on the app-server wire (seed 003's rules)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.runtime.config import config_from_mapping
from spindle.actors.runtime.exec_command import ExecCommandTool
from spindle.actors.runtime.tools import ToolContext, ToolRegistry
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure
from spindle.protocol.sandbox import SandboxSpec

from .helpers import app_client
from .sandbox_helpers import needs_bwrap


class SandboxProbe:
    """A tool that records the sandbox each call was given."""

    name = "probe"

    def __init__(self) -> None:
        self.seen: list[tuple[SandboxSpec | None, str | None]] = []

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": "records its sandbox", "parameters": {"type": "object", "properties": {}}}

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        self.seen.append((ctx.sandbox, ctx.sandbox_error))
        return "ok"


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    out = {name: tmp_path / name for name in ("work", "extra", "profroot")}
    for path in out.values():
        path.mkdir()
    (out["work"] / "sub").mkdir()
    return out


@pytest.fixture
def probe() -> SandboxProbe:
    return SandboxProbe()


@pytest.fixture
async def manager(tmp_path: Path, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe) -> AsyncIterator[ThreadManager]:
    data = {
        "model": "mock-model", "model_provider": "mock", "approval_policy": "never", "cwd": str(dirs["work"]),
        "model_providers": {"mock": mock_model.provider_config(request_max_retries=0, stream_max_retries=0)},
        "default_permissions": ":workspace", "thread_unload_delay_secs": 0,
        "permissions": {"dev": {"description": "dev profile", "extends": ":workspace",
                                "workspace_roots": {str(dirs["profroot"]): True}}},
    }
    config = config_from_mapping(data, source="test config", home=tmp_path / "home")
    async with open_runtime(config, tools=ToolRegistry([ExecCommandTool(), probe])) as manager:
        yield manager


@pytest.fixture
async def client(manager: ThreadManager) -> AsyncIterator[RpcClient]:
    async with app_client(manager, experimental=True) as client:
        yield client


def _answer(result: dict[str, Any]) -> tuple[Any, Any, Any]:
    return result["runtimeWorkspaceRoots"], result["sandbox"], result["activePermissionProfile"]


def _ws(*roots: Path | str, network: bool = False) -> dict[str, Any]:
    return {"type": "workspaceWrite", "writableRoots": [str(r) for r in roots], "networkAccess": network,
            "excludeTmpdirEnvVar": False, "excludeSlashTmp": False}


async def test_thread_start_answers_as_the_reference_table(client: RpcClient, dirs: dict[str, Path]) -> None:
    work, extra, prof = (str(dirs[n]) for n in ("work", "extra", "profroot"))
    assert _answer(await client.call("thread/start", {"cwd": work})) == ([work], _ws(), {"id": ":workspace", "extends": None})
    assert _answer(await client.call("thread/start", {"cwd": work, "permissions": "dev"})) == (
        [work], _ws(prof), {"id": "dev", "extends": ":workspace"})
    assert _answer(await client.call("thread/start", {"cwd": work, "permissions": "dev", "runtimeWorkspaceRoots": [work, extra]})) == (
        [work, extra], _ws(extra, prof), {"id": "dev", "extends": ":workspace"})
    assert _answer(await client.call("thread/start", {"cwd": work, "permissions": ":workspace", "runtimeWorkspaceRoots": [extra]})) == (
        [extra], _ws(extra), {"id": ":workspace", "extends": None})
    assert _answer(await client.call("thread/start", {"cwd": work, "sandbox": "workspace-write"})) == ([work], _ws(), None)
    assert _answer(await client.call("thread/start", {"sandbox": "danger-full-access"})) == ([work], {"type": "dangerFullAccess"}, None)
    assert _answer(await client.call("thread/start", {"cwd": work, "permissions": ":read-only"})) == (
        [work], {"type": "readOnly", "networkAccess": False}, {"id": ":read-only", "extends": None})


async def test_permission_fields_need_the_experimental_api(manager: ThreadManager) -> None:
    async with app_client(manager) as client:
        for params, field in (({"permissions": ":workspace"}, "permissions"), ({"runtimeWorkspaceRoots": ["/"]}, "runtimeWorkspaceRoots")):
            with pytest.raises(RpcFailure) as err:
                await client.call("thread/start", params)
            assert (err.value.code, err.value.message) == (-32600, f"thread/start.{field} requires experimentalApi capability")
        thread = (await client.call("thread/start", {}))["thread"]  # the answer still carries the fields
        with pytest.raises(RpcFailure, match="turn/start.permissions requires experimentalApi capability"):
            await client.call("turn/start", {"threadId": thread["id"], "input": [], "permissions": ":read-only"})


async def test_permissions_with_a_legacy_sandbox_is_invalid_params(client: RpcClient) -> None:
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/start", {"permissions": ":workspace", "sandbox": "read-only"})
    assert (err.value.code, err.value.message) == (-32602, "Invalid params: `permissions` cannot be combined with `sandbox`")
    thread = (await client.call("thread/start", {}))["thread"]
    with pytest.raises(RpcFailure) as err:
        await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}],
                                         "permissions": ":workspace", "sandboxPolicy": {"type": "readOnly"}})
    assert (err.value.code, err.value.message) == (-32602, "Invalid params: `permissions` cannot be combined with `sandboxPolicy`")


async def test_an_unknown_profile_is_refused_listing_the_known_ones(client: RpcClient) -> None:
    known = "known profiles: :read-only, :workspace, :danger-full-access, dev"
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/start", {"permissions": "ghost"})
    assert err.value.code == -32602 and f"unknown permission profile 'ghost'; {known}" in err.value.message
    thread = (await client.call("thread/start", {}))["thread"]
    with pytest.raises(RpcFailure) as err:
        await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}], "permissions": "ghost"})
    assert err.value.code == -32602 and known in err.value.message


async def test_bad_runtime_roots_are_refused_naming_them(client: RpcClient, dirs: dict[str, Path]) -> None:
    (dirs["work"] / "file.txt").write_text("x")
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/start", {"cwd": str(dirs["work"]), "runtimeWorkspaceRoots": ["missing"]})
    assert err.value.code == -32602 and f"runtime workspace root 'missing' does not exist (resolved against cwd '{dirs['work']}'" in err.value.message
    with pytest.raises(RpcFailure, match="runtime workspace root 'file.txt' is not a directory"):
        await client.call("thread/start", {"cwd": str(dirs["work"]), "runtimeWorkspaceRoots": ["file.txt"]})
    thread = (await client.call("thread/start", {}))["thread"]
    for params in ({"runtimeWorkspaceRoots": ["nope"]}, {"cwd": "/nope"}):
        with pytest.raises(RpcFailure) as err:  # thread/start's code and words, not the thread's -32600
            await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}], **params})
        assert err.value.code == -32602 and err.value.message.startswith("Invalid params: ")
        assert "runtime workspace root 'nope' does not exist" in err.value.message or "cwd '/nope' is not a directory" in err.value.message


async def test_rule1_runtime_roots_resolve_against_the_effective_cwd(client: RpcClient, dirs: dict[str, Path]) -> None:
    result = await client.call("thread/start", {"cwd": str(dirs["work"]), "runtimeWorkspaceRoots": ["sub", "../extra"]})
    assert result["runtimeWorkspaceRoots"] == [str(dirs["work"] / "sub"), str(dirs["extra"])]


async def test_rule2_profile_roots_are_not_runtime_roots(client: RpcClient, dirs: dict[str, Path]) -> None:
    work, prof = str(dirs["work"]), str(dirs["profroot"])
    result = await client.call("thread/start", {"cwd": work, "permissions": "dev", "runtimeWorkspaceRoots": [work, prof]})
    assert result["runtimeWorkspaceRoots"] == [work]
    assert result["sandbox"]["writableRoots"] == [prof]


async def _turn(client: RpcClient, mock: MockModel, thread_id: str, **params: Any) -> dict[str, Any]:
    mock.script(Call(name="probe", arguments={}), Text(text="done"), thread_id=thread_id)
    turn = (await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "go"}], **params}))["turn"]
    return await client.wait_turn(turn["id"])


async def test_rule3_a_turn_root_update_persists_and_resume_returns_it(
    client: RpcClient, manager: ThreadManager, mock_model: MockModel, dirs: dict[str, Path]
) -> None:
    work, extra = str(dirs["work"]), str(dirs["extra"])
    thread = (await client.call("thread/start", {"cwd": work}))["thread"]
    await _turn(client, mock_model, thread["id"], runtimeWorkspaceRoots=[work, extra])
    await manager.get_thread(thread["id"]).rollout.flush()  # the turn's last lines are written after turn/completed
    contexts = [json.loads(line)["payload"] for line in Path(thread["path"]).read_text().splitlines()
                if json.loads(line)["type"] == "turn_context"]
    assert [(c["runtime_workspace_roots"], c["permissions"]) for c in contexts] == [([work, extra], ":workspace")]
    handle = manager.get_thread(thread["id"])
    await client.call("thread/unsubscribe", {"threadId": thread["id"]})  # its last subscriber: it unloads
    with trio.fail_after(10):
        await handle.wait_closed()
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert _answer(resumed) == ([work, extra], _ws(extra), {"id": ":workspace", "extends": None})


async def test_rule4_a_profile_stays_symbolic_across_a_roots_only_update(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe
) -> None:
    work, extra, prof = (str(dirs[n]) for n in ("work", "extra", "profroot"))
    thread = (await client.call("thread/start", {"cwd": work, "sandbox": "read-only"}))["thread"]
    await _turn(client, mock_model, thread["id"], permissions="dev")
    await _turn(client, mock_model, thread["id"], runtimeWorkspaceRoots=[work, extra])
    await _turn(client, mock_model, thread["id"], cwd=str(dirs["work"] / "sub"))
    writable = [spec.writable_roots if spec else error for spec, error in probe.seen]
    assert writable == [(work, prof), (work, extra, prof), (str(dirs["work"] / "sub"), extra, prof)]  # rule 5 too
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert _answer(resumed)[0] == [str(dirs["work"] / "sub"), extra] and resumed["activePermissionProfile"]["id"] == "dev"


async def test_a_sandbox_that_cannot_be_realised_refuses_the_command(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe
) -> None:
    gone = dirs["work"] / "gone"
    gone.mkdir()
    thread = (await client.call("thread/start", {"cwd": str(dirs["work"]), "runtimeWorkspaceRoots": [".", "gone"]}))["thread"]
    gone.rmdir()
    await _turn(client, mock_model, thread["id"])
    assert probe.seen == [(None, f"workspace root '{gone}' does not exist")]


async def test_a_legacy_turn_sandbox_clears_the_profile(client: RpcClient, mock_model: MockModel, dirs: dict[str, Path]) -> None:
    thread = (await client.call("thread/start", {"cwd": str(dirs["work"]), "permissions": "dev"}))["thread"]
    await _turn(client, mock_model, thread["id"], sandboxPolicy={"type": "readOnly"})
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert (resumed["activePermissionProfile"], resumed["sandbox"]["type"]) == (None, "readOnly")


async def test_permission_profile_list_pages_built_ins_first(client: RpcClient) -> None:
    listed = await client.call("permissionProfile/list", {})
    assert listed == {"data": [
        {"id": ":read-only", "description": None, "allowed": True},
        {"id": ":workspace", "description": None, "allowed": True},
        {"id": ":danger-full-access", "description": None, "allowed": True},
        {"id": "dev", "description": "dev profile", "allowed": True}], "nextCursor": None}
    first = await client.call("permissionProfile/list", {"limit": 3})
    assert [p["id"] for p in first["data"]] == [":read-only", ":workspace", ":danger-full-access"]
    rest = await client.call("permissionProfile/list", {"cursor": first["nextCursor"]})
    assert ([p["id"] for p in rest["data"]], rest["nextCursor"]) == (["dev"], None)


async def test_a_thread_that_never_ran_resumes_with_its_start_selection(client: RpcClient, manager: ThreadManager, dirs: dict[str, Path]) -> None:
    work, extra = str(dirs["work"]), str(dirs["extra"])
    thread = (await client.call("thread/start", {"cwd": work, "permissions": "dev", "runtimeWorkspaceRoots": [work, extra],
                                                 "persistNow": True}))["thread"]
    handle = manager.get_thread(thread["id"])
    await client.call("thread/unsubscribe", {"threadId": thread["id"]})
    with trio.fail_after(10):
        await handle.wait_closed()
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert _answer(resumed) == ([work, extra], _ws(extra, dirs["profroot"]), {"id": "dev", "extends": ":workspace"})


async def test_fork_takes_a_profile_and_roots(client: RpcClient, mock_model: MockModel, dirs: dict[str, Path]) -> None:
    work, extra = str(dirs["work"]), str(dirs["extra"])
    thread = (await client.call("thread/start", {"cwd": work, "sandbox": "read-only"}))["thread"]
    await _turn(client, mock_model, thread["id"])
    fork = await client.call("thread/fork", {"threadId": thread["id"], "permissions": ":workspace", "runtimeWorkspaceRoots": [".", "../extra"]})
    assert _answer(fork) == ([work, extra], _ws(extra), {"id": ":workspace", "extends": None})
    with pytest.raises(RpcFailure, match="`permissions` cannot be combined with `sandbox`"):
        await client.call("thread/fork", {"threadId": thread["id"], "permissions": ":workspace", "sandbox": "read-only"})


async def test_a_root_or_cwd_that_cannot_be_resolved_is_invalid_params_and_the_thread_lives(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path]
) -> None:
    work = str(dirs["work"])
    (dirs["work"] / "loop").symlink_to("loop")
    refused = [
        ("thread/start", {"cwd": work, "runtimeWorkspaceRoots": ["a\x00b"]}, "runtime workspace root 'a\\x00b' cannot be used"),
        ("thread/start", {"cwd": work, "runtimeWorkspaceRoots": ["loop"]}, "runtime workspace root 'loop' cannot be used"),
        ("thread/start", {"cwd": "a\x00b"}, "cwd 'a\\x00b' is not a directory"),
    ]
    thread = (await client.call("thread/start", {"cwd": work}))["thread"]
    for params in ({"runtimeWorkspaceRoots": ["a\x00b"]}, {"runtimeWorkspaceRoots": ["loop"]}, {"cwd": "a\x00b"}):
        named = "cwd 'a\\x00b'" if "cwd" in params else f"runtime workspace root {params['runtimeWorkspaceRoots'][0]!r}"
        refused.append(("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}], **params}, named))
    for method, params, named in refused:
        with pytest.raises(RpcFailure) as err:
            await client.call(method, params)
        assert err.value.code == -32602 and err.value.message.startswith("Invalid params: "), (method, params, err.value)
        assert named in err.value.message
    await _turn(client, mock_model, thread["id"])  # the thread survived every refusal
    assert (await client.call("thread/read", {"threadId": thread["id"]}))["thread"]["status"]["type"] == "idle"


async def test_resuming_a_loaded_thread_applies_its_permissions_and_roots(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe
) -> None:
    work, extra = str(dirs["work"]), str(dirs["extra"])
    thread = (await client.call("thread/start", {"cwd": work, "permissions": ":danger-full-access"}))["thread"]
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/resume", {"threadId": thread["id"], "permissions": "ghost"})
    assert err.value.code == -32602 and "unknown permission profile 'ghost'; known profiles: :read-only" in err.value.message
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/resume", {"threadId": thread["id"], "runtimeWorkspaceRoots": ["nope"]})
    assert err.value.code == -32602 and "runtime workspace root 'nope' does not exist" in err.value.message
    resumed = await client.call("thread/resume", {"threadId": thread["id"], "permissions": ":read-only"})
    assert _answer(resumed) == ([work], {"type": "readOnly", "networkAccess": False}, {"id": ":read-only", "extends": None})
    resumed = await client.call("thread/resume", {"threadId": thread["id"], "permissions": ":workspace", "runtimeWorkspaceRoots": [work, extra]})
    assert _answer(resumed) == ([work, extra], _ws(extra), {"id": ":workspace", "extends": None})
    await _turn(client, mock_model, thread["id"])
    assert [spec.writable_roots if spec else error for spec, error in probe.seen] == [(work, extra)]


async def test_rule5_a_cwd_only_resume_or_fork_moves_the_cwd_root_and_keeps_the_others(
    client: RpcClient, manager: ThreadManager, mock_model: MockModel, dirs: dict[str, Path]
) -> None:
    work, extra, sub = str(dirs["work"]), str(dirs["extra"]), str(dirs["work"] / "sub")
    thread = (await client.call("thread/start", {"cwd": work, "runtimeWorkspaceRoots": [work, extra]}))["thread"]
    await _turn(client, mock_model, thread["id"])
    fork = await client.call("thread/fork", {"threadId": thread["id"], "cwd": sub})  # from the running thread
    assert (fork["cwd"], fork["runtimeWorkspaceRoots"]) == (sub, [sub, extra])
    handle = manager.get_thread(thread["id"])
    await client.call("thread/unsubscribe", {"threadId": thread["id"]})
    with trio.fail_after(10):
        await handle.wait_closed()
    fork = await client.call("thread/fork", {"threadId": thread["id"], "cwd": sub})  # from its rollout
    assert (fork["cwd"], fork["runtimeWorkspaceRoots"]) == (sub, [sub, extra])
    resumed = await client.call("thread/resume", {"threadId": thread["id"], "cwd": sub})
    assert (resumed["cwd"], resumed["runtimeWorkspaceRoots"]) == (sub, [sub, extra])
    resumed = await client.call("thread/resume", {"threadId": thread["id"], "cwd": work})  # loaded now
    assert (resumed["cwd"], resumed["runtimeWorkspaceRoots"]) == (work, [work, extra])


async def test_rule2_a_profile_root_is_not_held_so_it_is_not_writable_under_another_profile(
    client: RpcClient, manager: ThreadManager, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe
) -> None:
    work, prof = str(dirs["work"]), str(dirs["profroot"])
    thread = (await client.call("thread/start", {"cwd": work, "permissions": "dev", "runtimeWorkspaceRoots": [work, prof]}))["thread"]
    assert manager.get_thread(thread["id"]).settings.runtime_workspace_roots == (work,)  # held == answered
    await _turn(client, mock_model, thread["id"], permissions=":workspace")
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert _answer(resumed) == ([work], _ws(), {"id": ":workspace", "extends": None})
    assert [spec.writable_roots if spec else error for spec, error in probe.seen] == [(work,)]  # == writable


async def test_a_legacy_turn_sandbox_keeps_its_writable_roots_and_refuses_options_it_cannot_honour(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe
) -> None:
    work, extra = str(dirs["work"]), str(dirs["extra"])
    thread = (await client.call("thread/start", {"cwd": work, "sandbox": "read-only"}))["thread"]
    for option, value in (("networkAccess", True), ("excludeTmpdirEnvVar", True), ("excludeSlashTmp", True)):
        with pytest.raises(RpcFailure) as err:
            await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}],
                                             "sandboxPolicy": {"type": "workspaceWrite", "writableRoots": [extra], option: value}})
        assert err.value.code == -32602 and f"sandboxPolicy.{option} true is not supported" in err.value.message
    with pytest.raises(RpcFailure, match="sandboxPolicy.networkAccess true is not supported"):
        await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}],
                                         "sandboxPolicy": {"type": "readOnly", "networkAccess": True}})
    policy = {"type": "workspaceWrite", "writableRoots": [extra], "networkAccess": False, "excludeTmpdirEnvVar": False}
    await _turn(client, mock_model, thread["id"], sandboxPolicy=policy)
    assert [spec.writable_roots if spec else error for spec, error in probe.seen] == [(work, extra)]
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert _answer(resumed) == ([work, extra], _ws(extra), None)


async def test_permission_profile_list_refuses_a_limit_below_one_and_a_bad_cursor(client: RpcClient) -> None:
    for params, named in (({"limit": 0}, "limit must be at least 1, got 0"), ({"limit": -1}, "limit must be at least 1, got -1"),
                          ({"cursor": "-1"}, "cursor '-1'"), ({"cursor": "99"}, "cursor '99'"), ({"cursor": "x"}, "cursor 'x'"),
                          ({"cursor": ""}, "cursor ''")):
        with pytest.raises(RpcFailure) as err:
            await client.call("permissionProfile/list", params)
        assert (err.value.code, err.value.message.startswith("Invalid params: ")) == (-32602, True) and named in err.value.message


async def test_a_turn_realises_its_sandbox_once_off_the_event_loop(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path], probe: SandboxProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from spindle.actors.runtime import permissions, turn

    calls: list[bool] = []

    def counting(*args: Any) -> Any:
        calls.append(threading.current_thread() is threading.main_thread())
        return permissions.realise(*args)

    monkeypatch.setattr(turn, "realise", counting)
    work, extra = str(dirs["work"]), str(dirs["extra"])
    thread = (await client.call("thread/start", {"cwd": work}))["thread"]
    mock_model.script(Call(name="probe", arguments={}), Call(name="probe", arguments={}), Text(text="done"), thread_id=thread["id"])
    started = await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "go"}]})
    await client.wait_turn(started["turn"]["id"])
    await _turn(client, mock_model, thread["id"], runtimeWorkspaceRoots=[work, extra])
    assert calls == [False, False]  # one per turn, each in a worker thread
    assert [spec.writable_roots if spec else error for spec, error in probe.seen] == [(work,), (work,), (work, extra)]


@needs_bwrap
async def test_rule4_a_roots_only_update_moves_the_real_writes_of_a_profile_chosen_earlier(
    client: RpcClient, mock_model: MockModel, dirs: dict[str, Path]
) -> None:
    work, extra = dirs["work"], dirs["extra"]
    thread = (await client.call("thread/start", {"cwd": str(work), "sandbox": "read-only"}))["thread"]

    async def command(cmd: str, **params: Any) -> dict[str, Any]:
        mock_model.script(Call(name="exec_command", arguments={"cmd": cmd, "login": False}), Text(text="done"), thread_id=thread["id"])
        turn = (await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "go"}], **params}))["turn"]
        return await client.wait_turn(turn["id"])

    await command(f"echo one > {work}/turn1.txt", permissions="dev")  # the profile, on the implicit cwd root
    await command(f"echo two > {extra}/turn2.txt; echo three > {work}/dropped.txt", runtimeWorkspaceRoots=[str(extra)])
    assert (work / "turn1.txt").read_text() == "one\n"
    assert (extra / "turn2.txt").read_text() == "two\n"  # the new root is writable under the same profile
    assert not (work / "dropped.txt").exists()  # and the dropped one is not
    resumed = await client.call("thread/resume", {"threadId": thread["id"]})
    assert (resumed["runtimeWorkspaceRoots"], resumed["activePermissionProfile"]["id"]) == ([str(extra)], "dev")
