"""The official `openai-codex` Python SDK, unchanged, driving `spindle app-server` (codex_bin=spindle)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest
import trio

from spindle.actors.testing.mock_model import MockModel, Text
from spindle.actors.testing.rpc_client import write_config

from .helpers import escalating_model

openai_codex = pytest.importorskip("openai_codex", reason="make setup installs the SDK (--no-deps)")


def spindle_bin() -> str:
    found = Path(sys.executable).parent / "spindle"
    if found.exists():
        return str(found)
    which = shutil.which("spindle")
    assert which, "the spindle console script is not installed"
    return which


@pytest.fixture
def sdk_config(tmp_path: Path, mock_model: MockModel):  # type: ignore[no-untyped-def]
    home = tmp_path / "codex-home"
    write_config(home, mock_model)
    work = tmp_path / "work"
    work.mkdir()
    return openai_codex.CodexConfig(codex_bin=spindle_bin(), cwd=str(work), env={"CODEX_HOME": str(home)})


def drive_sync(config) -> dict:  # type: ignore[no-untyped-def]
    from openai_codex import Codex

    seen: dict = {}
    with Codex(config) as codex:
        seen["server"] = codex.metadata.serverInfo.name
        thread = codex.thread_start(model="mock-model")
        result = thread.run("hello")
        seen["final"] = result.final_response
        seen["status"] = result.status.value
        seen["usage"] = result.usage is not None

        turn = thread.turn("stream please")
        methods = [event.method for event in turn.stream()]
        seen["stream"] = methods

        read = thread.read(include_turns=True)
        seen["turns"] = [t.status.value for t in read.thread.turns]
        seen["preview"] = read.thread.preview
        seen["listed"] = [t.id for t in codex.thread_list().data]
        seen["thread_id"] = thread.id

        fork = codex.thread_fork(thread.id)
        seen["fork_of"] = fork.read().thread.forked_from_id
        seen["fork_answer"] = fork.run("from the fork").final_response

        codex.thread_archive(thread.id)
        seen["archived"] = [t.id for t in codex.thread_list(archived=True).data]
        seen["unarchived"] = codex.thread_unarchive(thread.id).id

    with Codex(config) as codex:  # a second process
        resumed = codex.thread_resume(seen["thread_id"])
        seen["resumed_answer"] = resumed.run("after resume").final_response
        seen["resumed_turns"] = len(resumed.read(include_turns=True).thread.turns)
    return seen


async def test_sdk_sync_client_drives_spindle(sdk_config, mock_model: MockModel) -> None:  # type: ignore[no-untyped-def]
    mock_model.default = lambda request: Text(text=f"echo: {request.last_user_text()}", chunks=3)
    seen = await trio.to_thread.run_sync(drive_sync, sdk_config)
    assert seen["server"] == "spindle"
    assert seen["final"] == "echo: hello"
    assert seen["status"] == "completed" and seen["usage"]
    assert seen["stream"][0] == "turn/started" and seen["stream"][-1] == "turn/completed"
    assert "item/agentMessage/delta" in seen["stream"]
    assert seen["turns"] == ["completed", "completed"]
    assert seen["preview"] == "hello"
    assert seen["thread_id"] in seen["listed"]
    assert seen["fork_of"] == seen["thread_id"]
    assert seen["fork_answer"] == "echo: from the fork"
    assert seen["thread_id"] in seen["archived"]
    assert seen["unarchived"] == seen["thread_id"]
    assert seen["resumed_answer"] == "echo: after resume"
    assert seen["resumed_turns"] == 3


async def drive_async(config) -> dict:  # type: ignore[no-untyped-def]
    from openai_codex import AsyncCodex

    seen: dict = {}
    async with AsyncCodex(config) as codex:
        thread = await codex.thread_start(model="mock-model")
        seen["final"] = (await thread.run("async hello")).final_response
        turn = await thread.turn("async stream")
        seen["stream"] = [event.method async for event in turn.stream()]
        read = await thread.read(include_turns=True)
        seen["turns"] = len(read.thread.turns)
        fork = await codex.thread_fork(thread.id)
        seen["fork_answer"] = (await fork.run("fork")).final_response
        await codex.thread_archive(thread.id)
        seen["unarchived"] = (await codex.thread_unarchive(thread.id)).id
        seen["thread_id"] = thread.id
    async with AsyncCodex(config) as codex:
        resumed = await codex.thread_resume(seen["thread_id"])
        seen["resumed_answer"] = (await resumed.run("again")).final_response
    return seen


async def test_sdk_async_client_drives_spindle(sdk_config, mock_model: MockModel) -> None:  # type: ignore[no-untyped-def]
    mock_model.default = lambda request: Text(text=f"echo: {request.last_user_text()}", chunks=2)
    seen = await trio.to_thread.run_sync(lambda: asyncio.run(drive_async(sdk_config)))
    assert seen["final"] == "echo: async hello"
    assert seen["stream"][-1] == "turn/completed"
    assert seen["turns"] == 2
    assert seen["fork_answer"] == "echo: fork"
    assert seen["unarchived"] == seen["thread_id"]
    assert seen["resumed_answer"] == "echo: again"


def run_escalated(config) -> str:  # type: ignore[no-untyped-def]
    from openai_codex import Codex

    with Codex(config) as codex:  # the SDK's default approval handler accepts
        return codex.thread_start(model="mock-model").run("make a file").final_response or ""


async def test_the_sdks_default_approval_handler_accepts_a_command(sdk_config, mock_model: MockModel) -> None:  # type: ignore[no-untyped-def]
    mock_model.default = escalating_model
    assert await trio.to_thread.run_sync(run_escalated, sdk_config) == "done: made"
    assert (Path(sdk_config.cwd) / "made.txt").read_text() == "made\n"
