"""`request_permissions`: the model asks for more access, a client grants part of it through
`item/permissions/requestApproval`, and the sandbox of later commands widens (for the turn, or
the session)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spindle.actors.runtime.grants import Grants, granted, resolved
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.protocol.events import PermissionsRequestEvent
from spindle.protocol.sandbox import (
    FileSystemPermissions,
    NetworkPermissions,
    PermissionGrant,
    RequestedPermissions,
    SandboxSpec,
)

from .helpers import app_client
from .sandbox_helpers import needs_bwrap

PERMISSIONS = "item/permissions/requestApproval"
FEATURE = {"features": {"request_permissions_tool": True}}


def outputs(mock: MockModel, request: int = -1) -> list[str]:
    return [item["output"] for item in mock.requests[request].json()["input"] if item["type"] == "function_call_output"]


def tool_names(mock: MockModel) -> list[str]:
    return [tool.get("name") for tool in mock.requests[-1].json()["tools"]]


def ask_for(write: list[str], network: bool = False) -> Call:
    permissions: dict[str, Any] = {"file_system": {"write": write}}
    if network:
        permissions["network"] = {"enabled": True}
    return Call(name="request_permissions", arguments={"permissions": permissions, "reason": "write the report"})


def touch(path: Path) -> Call:
    return Call(name="exec_command", arguments={"cmd": f"touch {path}"})


def folders(tmp_path: Path) -> tuple[Path, Path]:
    """The thread's workspace and a folder outside it (`CONFINED` keeps commands out of it)."""
    work, outside = tmp_path / "work", tmp_path / "reports"
    work.mkdir()
    outside.mkdir()
    return work, outside


CONFINED = {"sandbox_mode": "workspace-write", "approval_policy": "on-request", **FEATURE}


@needs_bwrap
async def test_a_turn_grant_lets_later_commands_write_there_until_the_turn_ends(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    work, outside = folders(tmp_path)
    async with make_runtime(**CONFINED) as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {"cwd": str(work)}))["thread"]["id"]
        mock_model.script(ask_for([str(outside), "/etc"], network=True), touch(outside / "a"), Text(text="done"),
                          thread_id=tid)
        turn = (await client.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
        request = await client.wait_request(PERMISSIONS)
        params = request["params"]
        assert (params["threadId"], params["turnId"], params["cwd"], params["reason"]) == (
            tid, turn["id"], str(work), "write the report")
        assert params["permissions"] == {"fileSystem": {"write": [str(outside), "/etc"]}, "network": {"enabled": True}}
        status = (await client.call("thread/read", {"threadId": tid}))["thread"]["status"]
        assert status == {"type": "active", "activeFlags": ["waitingOnApproval"]}
        # grants part of it, and something never asked for (ignored)
        await client.answer(request["id"], {"permissions": {"fileSystem": {"write": [str(outside), str(tmp_path)]}},
                                            "scope": "turn"})
        assert (await client.wait_turn(turn["id"]))["status"] == "completed"
        resolved = await client.wait_for("serverRequest/resolved")
        assert resolved["params"] == {"threadId": tid, "requestId": request["id"]}
        answer, ran = outputs(mock_model)
        assert json.loads(answer) == {"permissions": {"file_system": {"write": [os.path.realpath(outside)]}},
                                      "scope": "turn"}
        assert (outside / "a").exists(), ran
        assert "request_permissions" in tool_names(mock_model)
        mock_model.script(touch(outside / "b"), Text(text="done"), thread_id=tid)
        await client.run_turn(tid, "again")
        assert not (outside / "b").exists()  # the grant ended with its turn


@needs_bwrap
async def test_a_session_grant_holds_for_later_turns(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    work, outside = folders(tmp_path)
    async with make_runtime(**CONFINED) as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {"cwd": str(work)}))["thread"]["id"]
        mock_model.script(ask_for([str(outside)]), Text(text="granted"), thread_id=tid)
        turn = (await client.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
        request = await client.wait_request(PERMISSIONS)
        await client.answer(request["id"], {"permissions": {"fileSystem": {"write": [str(outside)]}}, "scope": "session"})
        await client.wait_turn(turn["id"])
        mock_model.script(touch(outside / "b"), Text(text="done"), thread_id=tid)
        await client.run_turn(tid, "again")
        assert (outside / "b").exists()


async def test_never_grants_nothing_without_asking_and_the_tool_is_offered_only_when_enabled(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    async with make_runtime(approval_policy="never", **FEATURE) as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(ask_for([str(tmp_path)]), Text(text="done"), thread_id=tid)
        await client.run_turn(tid, "go")
        assert PERMISSIONS not in [r["method"] for r in client.server_requests]
        assert json.loads(outputs(mock_model)[0]) == {"permissions": {}, "scope": "turn"}
    async with make_runtime(approval_policy="on-request") as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(Text(text="done"), thread_id=tid)
        await client.run_turn(tid, "go")
        assert "request_permissions" not in tool_names(mock_model)


async def test_bad_arguments_and_a_bad_answer_are_told_and_harm_nothing(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    async with make_runtime(approval_policy="on-request", **FEATURE) as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        empty = Call(name="request_permissions", arguments={"permissions": {}})
        mock_model.script(empty, ask_for([str(tmp_path)]), Text(text="done"), thread_id=tid)
        turn = (await client.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
        request = await client.wait_request(PERMISSIONS)
        assert outputs(mock_model) == ["invalid arguments for request_permissions: "
                                       "request_permissions requires at least one permission"]
        await client.answer(request["id"], {"permissions": "all of them"})
        await client.wait_for("warning", lambda p: PERMISSIONS in p["message"])
        await client.answer(request["id"], {"permissions": {}})  # still pending: a real answer, nothing granted
        assert (await client.wait_turn(turn["id"]))["status"] == "completed"
        assert json.loads(outputs(mock_model)[-1]) == {"permissions": {}, "scope": "turn"}


async def test_an_embedding_grants_through_ask(make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path) -> None:
    seen: list[PermissionsRequestEvent] = []

    async def grant(request: PermissionsRequestEvent) -> PermissionGrant:
        seen.append(request)
        return PermissionGrant(permissions=request.permissions, scope="turn")

    async with make_runtime(approval_policy="on-request", **FEATURE) as rt:
        thread = await rt.start_thread()
        mock_model.script(ask_for([str(tmp_path)]), Text(text="done"), thread_id=thread.thread_id)
        assert await thread.ask("go", grant=grant) == "done"
        assert [r.permissions.file_system.write for r in seen if r.permissions.file_system] == [[str(tmp_path)]]
        assert json.loads(outputs(mock_model)[0])["permissions"] == {"file_system": {"write": [os.path.realpath(tmp_path)]}}


def test_the_user_is_shown_real_paths_and_only_what_was_asked_for_is_granted(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = str(tmp_path / "real")
    asked = resolved(RequestedPermissions(
        file_system=FileSystemPermissions(read=["link", "missing"], write=[real, f"{real}/file", "a\0b"]),
        network=NetworkPermissions(enabled=True)), str(tmp_path))
    assert asked.file_system == FileSystemPermissions(read=[real, str(tmp_path / "missing")], write=[real, f"{real}/file"])
    answer = RequestedPermissions(
        file_system=FileSystemPermissions(read=[str(tmp_path / "link"), "missing", "/"], write=["/etc", f"{real}/file"]),
        network=NetworkPermissions(enabled=False))
    # the link as answered is the folder asked for; "missing" does not exist; "/" and /etc were
    # never asked for; a file is no writable root
    assert granted(asked, answer, str(tmp_path)) == Grants(read=(real,))
    assert not granted(asked, RequestedPermissions(), str(tmp_path))
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("/")  # retargeted after the user was asked: grants nothing
    assert not granted(asked, RequestedPermissions(file_system=FileSystemPermissions(read=["link"])), str(tmp_path))


def test_grants_widen_a_sandbox_and_keep_its_protected_paths_and_denials() -> None:
    spec = SandboxSpec(writable_roots=("/w",), read_only_subpaths=("/w/.git",), denied_paths=("/secret/key", "/other"))
    widened = Grants(read=("/secret", "/other"), write=("/data",), network=True).apply(spec)
    assert widened is not None
    assert widened.writable_roots == ("/w", "/data")
    assert widened.read_only_subpaths == ("/w/.git", "/data/.git", "/data/.codex")
    assert widened.denied_paths == ("/secret/key",)  # a grant of a folder above a denial never lifts it
    assert widened.network
    assert Grants().apply(spec) is spec
    assert Grants(write=("/data",)).apply(None) is None
    full = SandboxSpec(full_access=True)
    assert Grants(write=("/data",)).apply(full) is full


@pytest.mark.parametrize("scope", ["turn", "session"])
def test_a_grant_answer_decodes_from_the_wire(scope: str) -> None:
    from spindle.protocol.appserver.v2approvals import PERMISSIONS_APPROVAL, answer_op
    from spindle.protocol.ops import RequestPermissionsResponseOp

    body = json.dumps({"permissions": {"fileSystem": {"read": ["/a"]}, "network": {"enabled": True}}, "scope": scope})
    op = answer_op(PERMISSIONS_APPROVAL, "call_1", body.encode(), None)
    assert op == RequestPermissionsResponseOp(id="call_1", response=PermissionGrant(scope=scope, permissions=RequestedPermissions(  # type: ignore[arg-type]
        file_system=FileSystemPermissions(read=["/a"]), network=NetworkPermissions(enabled=True))))
    assert answer_op(PERMISSIONS_APPROVAL, "call_1", None, b'{"code": 1}') == RequestPermissionsResponseOp(id="call_1")


def test_a_grant_in_the_entries_form_is_refused_with_what_to_send() -> None:
    from spindle.protocol.appserver.v2approvals import PERMISSIONS_APPROVAL, BadDecision, answer_op

    body = {"permissions": {"fileSystem": {"entries": [{"path": "/a", "access": "write"}]}}, "scope": "turn"}
    with pytest.raises(BadDecision, match="fileSystem.read / fileSystem.write"):
        answer_op(PERMISSIONS_APPROVAL, "call_1", json.dumps(body).encode(), None)
