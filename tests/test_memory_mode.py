"""A thread's memory mode (`thread/memoryMode/set`, experimental; the `set_thread_memory_mode`
op): kept on the thread and, as Codex keeps it, in a `session_meta` line appended to the rollout
(the last one that carries `memory_mode` wins); a resume restores it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.runtime.config import load_config
from spindle.actors.testing.mock_model import MockModel
from spindle.actors.testing.rpc_client import RpcFailure, write_config
from spindle.protocol.ops import SetThreadMemoryModeOp

from .helpers import app_client

CODEX_FIXTURES = Path(__file__).parent / "fixtures" / "codex-0.171-rollouts"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_mode_round_trips_through_a_resume_in_a_new_runtime(make_runtime: Callable[..., Any]) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        assert thread.memory_mode == "enabled"  # the default, as Codex reads a rollout without one
        await thread.ask("hello")
        outcome = await thread.submit_and_wait(SetThreadMemoryModeOp(mode="disabled"))
        assert outcome.error is None and thread.memory_mode == "disabled"
        tid, path = thread.thread_id, thread.rollout_path
        written = lines(path)
        assert "memory_mode" not in written[0]["payload"]  # the thread's first line is as before
        assert written[-1]["type"] == "session_meta"  # Codex's form: line 0's meta again, with the mode
        assert written[-1]["payload"]["id"] == tid and written[-1]["payload"]["memory_mode"] == "disabled"
        assert written[-1]["payload"]["cwd"] == written[0]["payload"]["cwd"]
    async with make_runtime() as rt:
        resumed = await rt.resume_thread(tid)
        assert resumed.memory_mode == "disabled"
        assert await resumed.ask("still there?") == "echo: still there?"  # the extra line changes no history
        await resumed.submit_and_wait(SetThreadMemoryModeOp(mode="enabled"))
    async with make_runtime() as rt:
        assert (await rt.resume_thread(tid)).memory_mode == "enabled"
    assert [line["payload"].get("memory_mode") for line in lines(path) if line["type"] == "session_meta"] == [
        None, "disabled", "enabled"]


async def test_the_mode_on_a_thread_with_no_turn_yet_writes_its_rollout(make_runtime: Callable[..., Any]) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        assert not thread.rollout_path.exists()
        await thread.submit_and_wait(SetThreadMemoryModeOp(mode="disabled"))
        tid = thread.thread_id
        assert [line["type"] for line in lines(thread.rollout_path)] == ["session_meta", "session_meta"]
    async with make_runtime() as rt:
        assert (await rt.resume_thread(tid)).memory_mode == "disabled"


async def test_an_ephemeral_thread_keeps_no_memory_mode(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread(ephemeral=True)
    outcome = await thread.submit_and_wait(SetThreadMemoryModeOp(mode="disabled"))
    assert outcome.error is not None
    assert outcome.error.message == f"ephemeral thread does not support memory mode updates: {thread.thread_id}"
    assert thread.memory_mode == "enabled"


async def test_the_method_is_experimental(runtime: ThreadManager) -> None:
    async with app_client(runtime) as plain:
        tid = (await plain.call("thread/start", {}))["thread"]["id"]
        with pytest.raises(RpcFailure) as refused:
            await plain.call("thread/memoryMode/set", {"threadId": tid, "mode": "disabled"})
        assert refused.value.error == {"code": -32600, "message": "thread/memoryMode/set requires experimentalApi capability"}
    assert runtime.running(tid) is None or runtime.running(tid).memory_mode == "enabled"  # type: ignore[union-attr]


async def test_the_method_sets_the_mode_of_a_loaded_thread(runtime: ThreadManager) -> None:
    async with app_client(runtime, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        assert await client.call("thread/memoryMode/set", {"threadId": tid, "mode": "disabled"}) == {}
        handle = runtime.running(tid)
        assert handle is not None and handle.memory_mode == "disabled"
        with pytest.raises(RpcFailure) as bad_mode:
            await client.call("thread/memoryMode/set", {"threadId": tid, "mode": "sometimes"})
        assert bad_mode.value.error["code"] == -32602 and "mode" in bad_mode.value.error["message"]
        unknown = "01a1fc97-8a89-7f53-b8e1-6a189c77807a"
        with pytest.raises(RpcFailure) as not_loaded:
            await client.call("thread/memoryMode/set", {"threadId": unknown, "mode": "enabled"})
        assert not_loaded.value.error == {"code": -32600, "message": f"thread not found: {unknown}"}
        ephemeral = (await client.call("thread/start", {"ephemeral": True}))["thread"]["id"]
        with pytest.raises(RpcFailure) as no_rollout:
            await client.call("thread/memoryMode/set", {"threadId": ephemeral, "mode": "disabled"})
        assert no_rollout.value.error == {
            "code": -32600, "message": f"ephemeral thread does not support memory mode updates: {ephemeral}"}


async def test_a_mode_codex_wrote_is_read_back(tmp_path: Path, mock_model: MockModel) -> None:
    """Codex 0.171 appends line 0's `session_meta` again (without `git`) with `memory_mode` set."""
    home = tmp_path / "home"
    shutil.copytree(CODEX_FIXTURES / "sessions", home / "sessions")
    write_config(home, mock_model)
    tid = "01a23027-be1a-77f3-8aab-1ee8d77cde0f"
    [path] = (home / "sessions").glob(f"*/*/*/rollout-*-{tid}.jsonl")
    first, *rest = lines(path)
    meta = {key: value for key, value in first["payload"].items() if key != "git"}
    appended = {**first, "ordinal": max(line.get("ordinal", 0) for line in rest) + 1,
                "payload": {**meta, "memory_mode": "disabled"}}
    with path.open("a") as fh:
        fh.write(json.dumps(appended, separators=(",", ":")) + "\n")
    async with open_runtime(load_config(home=home)) as rt:
        resumed = await rt.resume_thread(tid)
        assert resumed.memory_mode == "disabled"
        assert await resumed.ask("go on") == "echo: go on"
