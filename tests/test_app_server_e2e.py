"""App-server behaviours end to end, against a real `spindle app-server` subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from spindle.actors.testing.mock_model import MockModel
from spindle.actors.testing.rpc_client import RpcFailure, subprocess_server, write_config
from spindle.persistence.paths import find_thread_path_by_id


@pytest.fixture
def home(tmp_path: Path, mock_model: MockModel) -> Path:
    home = tmp_path / "codex-home"
    write_config(home, mock_model)
    return home


async def test_thread_start_defers_rollout_until_first_turn(home: Path) -> None:
    async with subprocess_server(home) as (client, _):
        await client.initialize()
        result = await client.call("thread/start", {"model": "mock-model"})
        thread = result["thread"]
        assert thread["createdAt"] > 0 and thread["status"] == {"type": "idle"}
        path = Path(thread["path"])
        assert not path.exists(), "fresh threads must not create a rollout before the first turn"
        assert find_thread_path_by_id(home, thread["id"]) is None
        started = await client.wait_for("thread/started")
        assert started["params"]["thread"] == thread

        turn = await client.run_turn(thread["id"], "Hello")
        assert turn["status"] == "completed"
        assert path.exists()
        first = json.loads(path.read_text().splitlines()[0])
        assert first["type"] == "session_meta" and first["payload"]["id"] == thread["id"]


async def test_archive_requires_materialized_rollout_then_moves_it(home: Path) -> None:
    async with subprocess_server(home) as (client, _):
        await client.initialize()
        thread = (await client.call("thread/start", {"model": "mock-model"}))["thread"]
        with pytest.raises(RpcFailure, match=f"no rollout found for thread id {thread['id']}"):
            await client.call("thread/archive", {"threadId": thread["id"]})

        await client.run_turn(thread["id"], "materialize")
        path = Path(thread["path"])
        assert path.exists()
        mark = len(client.notifications)
        assert await client.call("thread/archive", {"threadId": thread["id"]}) == {}
        note = await client.wait_for("thread/archived", after=mark)
        assert note["params"] == {"threadId": thread["id"]}
        archived = home / "archived_sessions" / path.name
        assert archived.exists() and not path.exists()
        loaded = await client.call("thread/loaded/list", {})
        assert thread["id"] not in loaded["data"]
        with pytest.raises(RpcFailure, match=f"thread not found: {thread['id']}"):
            await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "x"}]})

        mark = len(client.notifications)
        unarchived = await client.call("thread/unarchive", {"threadId": thread["id"]})
        assert unarchived["thread"]["id"] == thread["id"]
        assert Path(unarchived["thread"]["path"]).exists() and not archived.exists()
        await client.wait_for("thread/unarchived", after=mark)


async def test_resume_in_a_new_process_returns_the_original_thread(home: Path) -> None:
    async with subprocess_server(home) as (client, process):
        await client.initialize()
        thread = (await client.call("thread/start", {}))["thread"]
        await client.run_turn(thread["id"], "hello")
    assert process.returncode == 0

    async with subprocess_server(home) as (client, process):
        await client.initialize()
        resumed = await client.call("thread/resume", {"threadId": thread["id"]})
        assert resumed["thread"]["id"] == thread["id"]
        assert resumed["thread"]["path"] == thread["path"]
        assert resumed["thread"]["preview"] == "hello"
        assert resumed["thread"]["status"] == {"type": "idle"}
        assert [t["status"] for t in resumed["thread"]["turns"]] == ["completed"]
        again = await client.run_turn(thread["id"], "and again")
        assert again["status"] == "completed"
    assert process.returncode == 0


async def test_archive_unloads_so_another_server_can_take_the_thread(home: Path) -> None:
    """Two app-servers on one CODEX_HOME: once the first archives (and unarchives) a thread it has
    let go of it, the second resumes it and runs a turn, and the first reads that turn from disk
    without having run or seen it."""
    async with subprocess_server(home) as (primary, _), subprocess_server(home) as (secondary, _):
        await primary.initialize()
        await secondary.initialize()
        thread = (await primary.call("thread/start", {}))["thread"]
        await primary.run_turn(thread["id"], "materialize")
        await primary.call("thread/archive", {"threadId": thread["id"]})
        await primary.call("thread/unarchive", {"threadId": thread["id"]})
        assert (await primary.call("thread/loaded/list", {}))["data"] == []

        resumed = await secondary.call("thread/resume", {"threadId": thread["id"]})
        assert resumed["thread"]["status"] == {"type": "idle"}
        turn = await secondary.run_turn(thread["id"], "secondary turn")
        assert turn["status"] == "completed"
        with trio.fail_after(10):
            while True:
                read = (await primary.call("thread/read", {"threadId": thread["id"], "includeTurns": True}))["thread"]
                if len(read["turns"]) == 2 and read["turns"][1]["status"] == "completed":
                    break
                await trio.sleep(0.05)
        assert read["status"] == {"type": "notLoaded"}
        assert read["turns"][1]["items"][0]["content"][0]["text"] == "secondary turn"


async def test_stdin_eof_flushes_and_exits_zero(home: Path) -> None:
    async with subprocess_server(home) as (client, process):
        await client.initialize()
        thread = (await client.call("thread/start", {}))["thread"]
        await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "bye"}]})
    assert process.returncode == 0
    lines = [json.loads(line) for line in Path(thread["path"]).read_text().splitlines()]
    kinds = [line["payload"].get("type") for line in lines if line["type"] == "event_msg"]
    assert "task_started" in kinds
    assert kinds[-1] in ("task_complete", "turn_aborted")


async def test_a_turn_root_update_is_returned_by_resume_in_a_new_process(home: Path, tmp_path: Path) -> None:
    """Seed 003: runtime roots set by a turn persist onto the thread (its rollout), and a new
    process's thread/resume returns them with the symbolic profile the thread selected."""
    work, extra = tmp_path / "work", tmp_path / "extra"
    work.mkdir()
    extra.mkdir()
    async with subprocess_server(home) as (client, process):
        await client.initialize(experimental=True)
        started = await client.call("thread/start", {"cwd": str(work), "permissions": ":workspace"})
        assert started["runtimeWorkspaceRoots"] == [str(work)]
        thread_id = started["thread"]["id"]
        turn = (await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "widen"}],
                                                 "runtimeWorkspaceRoots": [str(work), "../extra"]}))["turn"]
        assert (await client.wait_turn(turn["id"]))["status"] == "completed"
    assert process.returncode == 0

    async with subprocess_server(home) as (client, process):
        await client.initialize()
        resumed = await client.call("thread/resume", {"threadId": thread_id})
        assert resumed["runtimeWorkspaceRoots"] == [str(work), str(extra)]
        assert resumed["activePermissionProfile"] == {"id": ":workspace", "extends": None}
        assert resumed["sandbox"]["type"] == "workspaceWrite" and resumed["sandbox"]["writableRoots"] == [str(extra)]
    assert process.returncode == 0
