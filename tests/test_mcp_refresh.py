"""MCP over the app-server (status list, startup notifications, the mcpToolCall item) and the one
refresh path: session-layer servers survive, removed ones stop, unchanged ones keep their process,
strict vs best-effort, and a running turn keeps its tools."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import trio

from spindle.actors.runtime import open_runtime
from spindle.actors.runtime.config_layers import LayeredConfig
from spindle.actors.runtime.mcp_refresh import McpRefreshError
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import (
    RpcClient,
    RpcFailure,
    subprocess_server,
    write_config,
)
from spindle.protocol.config import Config
from spindle.protocol.events import ItemStartedEvent, TaskCompleteEvent
from spindle.protocol.items import McpToolCallItem, TextInput
from spindle.protocol.ops import UserInputOp
from spindle.protocol.settings import SettingsUpdate

from .helpers import app_client
from .test_mcp import outputs, run, started, tiny, tool_names

BROKEN = {"command": "/nonexistent/spindle-mcp-server"}


app = app_client


def on_disk(home: Path, mock: MockModel, **servers: Any) -> None:
    """Write the user config.toml a refresh reads afresh: the mock model and these MCP servers
    (a `repo` folder beside `home` is a trusted project)."""
    data = {
        "projects": {str(home.parent / "repo"): {"trust_level": "trusted"}},
        "model": "mock-model", "model_provider": "mock", "approval_policy": "never",
        "sandbox_mode": "danger-full-access", "cwd": str(home.parent),
        "model_providers": {"mock": mock.provider_config(request_max_retries=1, stream_max_retries=1)},
        "mcp_servers": servers,
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomlkit.dumps(data))


def layered(home: Path, mock: MockModel, **servers: Any) -> LayeredConfig:
    """A runtime config read from `home`'s config.toml (written now with `servers`)."""
    on_disk(home, mock, **servers)
    return LayeredConfig(home=home, system_file=None)


def statuses(client: RpcClient, thread_id: str, after: int = 0) -> list[tuple[str, str]]:
    return [(n["params"]["name"], n["params"]["status"]) for n in client.notifications[after:]
            if n["method"] == "mcpServer/startupStatus/updated" and n["params"]["threadId"] == thread_id]


async def test_status_list_notifications_and_the_tool_item_over_the_app_server(
    make_config: Callable[..., Config], mock_model: MockModel
) -> None:
    config = make_config(mcp_servers={"docs": tiny(), "broken": BROKEN, "off": {**tiny(), "enabled": False}})
    async with open_runtime(config) as manager, app(manager) as client:
        thread = (await client.call("thread/start", {"config": {"mcp_servers.injected": tiny()}}))["thread"]
        tid = thread["id"]
        await client.wait_until(lambda: len([s for s in statuses(client, tid) if s[1] != "starting"]) == 3)
        assert sorted(statuses(client, tid)) == sorted([
            ("docs", "starting"), ("docs", "ready"), ("broken", "starting"), ("broken", "failed"),
            ("injected", "starting"), ("injected", "ready")])
        failed = next(n["params"] for n in client.notifications if n["method"] == "mcpServer/startupStatus/updated"
                      and n["params"]["status"] == "failed")
        assert "/nonexistent/spindle-mcp-server" in failed["error"] and failed["failureReason"] is None

        listed = (await client.call("mcpServerStatus/list", {"threadId": tid}))["data"]
        by_name = {s["name"]: s for s in listed}
        assert [s["name"] for s in listed] == ["broken", "docs", "injected", "off"]
        assert by_name["docs"]["runtimeStatus"] == "connected" and by_name["docs"]["authStatus"] == "unsupported"
        assert by_name["docs"]["tools"]["add"]["inputSchema"]["properties"].keys() == {"a", "b"}
        assert by_name["docs"]["serverInfo"]["name"] == "tiny"
        assert by_name["broken"]["runtimeStatus"] == "failed" and by_name["broken"]["tools"] == {}
        assert "MCP startup failed" in by_name["broken"]["toolsError"]
        assert by_name["off"]["runtimeStatus"] == "disabled" and by_name["off"]["toolsError"] is None
        agnostic = (await client.call("mcpServerStatus/list"))["data"]
        assert [(s["name"], s["runtimeStatus"]) for s in agnostic] == [("broken", None), ("docs", None), ("off", None)]

        mock_model.script(Call(name="mcp__injected__add", arguments={"a": 2, "b": 3}, call_id="call_9"),
                          Text(text="five"), thread_id=tid)
        turn = await client.run_turn(tid, "add")
        item = next(i for i in turn["items"] if i["type"] == "mcpToolCall")
        assert item["id"] == "call_9" and (item["server"], item["tool"]) == ("injected", "add")
        assert item["arguments"] == {"a": 2, "b": 3} and item["status"] == "completed"
        assert item["result"]["structuredContent"] == {"result": 5} and item["error"] is None
        started_note = next(n["params"]["item"] for n in client.notifications
                            if n["method"] == "item/started" and n["params"]["item"]["type"] == "mcpToolCall")
        assert started_note["status"] == "inProgress" and started_note["result"] is None
        read = (await client.call("thread/read", {"threadId": tid, "includeTurns": True}))["thread"]
        assert "mcpToolCall" in [i["type"] for i in read["turns"][-1]["items"]]


async def test_reload_keeps_session_servers_and_unchanged_processes(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home = tmp_path / "home"
    async with open_runtime(layered(home, mock_model, keep=tiny(), drop=tiny())) as manager, app(manager) as client:
        tid = (await client.call("thread/start", {"config": {"mcp_servers.injected": tiny()}}))["thread"]["id"]
        handle = manager.get_thread(tid)
        await started(handle)
        await client.wait_until(lambda: len([s for s in statuses(client, tid) if s[1] == "ready"]) == 3)
        pids = {name: s.process.pid for name, s in handle.mcp_servers.items()}
        on_disk(home, mock_model, keep=tiny(), new=tiny())
        mark = len(client.notifications)
        assert await client.call("config/mcpServer/reload") == {}
        assert await client.call("config/mcpServer/reload", None) == {}
        await started(handle)
        assert {name: s.status for name, s in handle.mcp_servers.items()} == {"keep": "ready", "injected": "ready", "new": "ready"}
        assert handle.mcp_servers["keep"].process.pid == pids["keep"]
        assert handle.mcp_servers["injected"].process.pid == pids["injected"]
        await client.wait_until(lambda: ("new", "ready") in statuses(client, tid, mark))
        # only the new server reports; the dropped one was ready, so there is no start-up to cancel
        assert statuses(client, tid, mark) == [("new", "starting"), ("new", "ready")]
        assert {s["name"] for s in (await client.call("mcpServerStatus/list", {"threadId": tid}))["data"]} == {
            "keep", "new", "injected"}


async def test_strict_refresh_names_the_thread_and_changes_nothing(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home = tmp_path / "home"
    async with open_runtime(layered(home, mock_model, docs=tiny())) as manager:
        good = await manager.start_thread()
        repo = tmp_path / "repo"
        (repo / ".git").mkdir(parents=True)
        (repo / ".codex").mkdir()
        bad = await manager.start_thread(SettingsUpdate(cwd=str(repo)))
        (repo / ".codex" / "config.toml").write_text("mcp_servers = 5\n")  # its project layer breaks
        await started(good)
        on_disk(home, mock_model, docs=tiny(), extra=tiny())
        with pytest.raises(McpRefreshError, match=f"failed to load thread {bad.thread_id}: .*mcp_servers"):
            await manager.refresh_mcp_servers(strict=True)
        assert set(good.mcp_servers) == {"docs"}  # planned first: no thread changed
        async with app(manager) as client:
            with pytest.raises(RpcFailure, match=f"failed to load thread {bad.thread_id}") as err:
                await client.call("config/mcpServer/reload")
            assert err.value.code == -32600
        warnings = await manager.refresh_mcp_servers(strict=False)
        assert len(warnings) == 1 and bad.thread_id in warnings[0]
        await started(good)
        assert set(good.mcp_servers) == {"docs", "extra"}  # best-effort: the good thread went on

        on_disk(home, mock_model, docs=tiny(), must={**BROKEN, "required": True})
        await bad.shutdown_and_wait()
        with pytest.raises(McpRefreshError, match=f"thread {good.thread_id}: required MCP server `must` failed"):
            await manager.refresh_mcp_servers(strict=True)


async def test_a_refresh_during_a_turn_waits_for_its_end(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home = tmp_path / "home"
    async with open_runtime(layered(home, mock_model, docs=tiny())) as manager:
        thread = await manager.start_thread()
        mock_model.script(Call(name="mcp__docs__slow", arguments={"seconds": 1}), Text(text="done"),
                          thread_id=thread.thread_id)
        calling = trio.Event()

        async def turn() -> None:
            with thread.events() as events:
                await thread.submit(UserInputOp(items=[TextInput(text="slowly")]))
                async for ev in events:
                    if isinstance(ev.msg, ItemStartedEvent) and isinstance(ev.msg.item, McpToolCallItem):
                        calling.set()
                    if isinstance(ev.msg, TaskCompleteEvent):
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(turn)
            with trio.fail_after(20):
                await calling.wait()  # the slow call is running
            on_disk(home, mock_model, extra=tiny())
            await manager.refresh_mcp_servers(strict=True)
            assert set(thread.mcp_servers) == {"docs"}  # deferred: the turn goes on with its servers
        assert outputs(mock_model) == ['{"result": "slept"}']
        assert not any(n.startswith("mcp__extra") for n in tool_names(mock_model))  # the turn's 2nd sample
        await started(thread)
        assert set(thread.mcp_servers) == {"extra"}
        await run(thread, "next")
        assert "mcp__extra__add" in tool_names(mock_model) and "mcp__docs__add" not in tool_names(mock_model)


def server_table(name: str, **extra: Any) -> str:
    cfg = {**tiny(), **extra}
    return "\n".join([f"[mcp_servers.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in cfg.items()), ""])


async def test_spindle_app_server_reload_reads_config_toml_afresh(tmp_path: Path, mock_model: MockModel) -> None:
    home = tmp_path / "home"
    write_config(home, mock_model)
    base = (home / "config.toml").read_text()
    (home / "config.toml").write_text(base + server_table("first"))
    async with subprocess_server(home, log_level="warning") as (client, _):
        client.timeout = 30
        await client.initialize()
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        await client.wait_for("mcpServer/startupStatus/updated", lambda p: p["name"] == "first" and p["status"] == "ready")
        (home / "config.toml").write_text(base + server_table("second"))
        assert await client.call("config/mcpServer/reload") == {}
        await client.wait_for("mcpServer/startupStatus/updated", lambda p: p["name"] == "second" and p["status"] == "ready")
        listed = (await client.call("mcpServerStatus/list", {"threadId": tid}))["data"]
        assert [(s["name"], s["runtimeStatus"]) for s in listed] == [("second", "connected")]


async def test_a_config_write_with_reload_refreshes_mcp_servers_through_the_same_path(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home = tmp_path / "home"
    async with open_runtime(layered(home, mock_model, docs=tiny())) as manager, app(manager) as client:
        tid = (await client.call("thread/start", {"config": {"mcp_servers.injected": tiny()}}))["thread"]["id"]
        handle = manager.get_thread(tid)
        await started(handle)
        edit = {"keyPath": "mcp_servers.extra", "value": tiny(), "mergeStrategy": "replace"}
        await client.call("config/batchWrite", {"edits": [edit], "reloadUserConfig": True})
        await started(handle)
        assert set(handle.mcp_servers) == {"docs", "injected", "extra"}


async def test_a_reload_restarts_a_server_that_failed_even_with_its_config_unchanged(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home, script = tmp_path / "home", tmp_path / "server.sh"
    server = {"command": str(script), "startup_timeout_sec": 20}
    async with open_runtime(layered(home, mock_model, late=server)) as manager, app(manager) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        handle = manager.get_thread(tid)
        assert (await started(handle))["late"][0] == "failed"  # not installed yet
        script.write_text(f"#!/bin/sh\nexec {tiny()['command']} {tiny()['args'][0]}\n")
        script.chmod(0o755)
        assert await client.call("config/mcpServer/reload") == {}
        assert (await started(handle))["late"] == ("ready", None)
