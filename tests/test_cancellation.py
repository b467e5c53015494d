"""Cancellation from anywhere ends cleanly: turns aborted with their event, rollouts flushed and
readable, no exception group for the user, the documented exit codes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from spindle.actors.runtime import open_runtime
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, spindle_argv, write_config
from spindle.persistence.reader import read_rollout
from spindle.protocol.config import Config
from spindle.protocol.events import TaskStartedEvent, TurnAbortedEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp

from .helpers import collect_until


def assert_ends_aborted(path: Path) -> None:
    read = read_rollout(path)
    assert read.torn is False and read.skipped == 0
    events = [item for item in read.source.items() if isinstance(item, TurnAbortedEvent)]
    assert events, f"{path.name} has no turn_aborted"


async def test_cancelling_open_runtime_mid_turn_is_clean(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    gate = trio.Event()  # never set: every turn is mid-stream when the runtime is cancelled
    mock_model.default = lambda _: Text(text="never finished", chunks=4, gate=gate)
    paths: list[Path] = []
    with trio.CancelScope() as outside:
        async with open_runtime(make_config()) as rt:
            for _ in range(5):
                thread = await rt.start_thread()
                with thread.events() as events:
                    await thread.submit(UserInputOp(items=[TextInput(text="go")]))
                    await collect_until(events, TaskStartedEvent)
                paths.append(thread.rollout_path)
            outside.cancel()
            await trio.sleep_forever()
    assert outside.cancelled_caught
    for path in paths:
        assert_ends_aborted(path)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_a_signal_to_the_app_server_mid_turn_exits_cleanly(
    tmp_path: Path, mock_model: MockModel, signum: signal.Signals, code: int
) -> None:
    gate = trio.Event()
    mock_model.default = lambda _: Text(text="never finished", chunks=4, gate=gate)
    write_config(tmp_path, mock_model)
    process = await trio.lowlevel.open_process(
        [*spindle_argv(), "app-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "CODEX_HOME": str(tmp_path)},
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    client = RpcClient(process.stdin, process.stdout)
    stderr = b""

    async def read_stderr() -> None:
        nonlocal stderr
        assert process.stderr is not None
        while chunk := await process.stderr.receive_some():
            stderr += chunk

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.read_loop)
        nursery.start_soon(read_stderr)
        await client.initialize()
        thread = (await client.call("thread/start", {}))["thread"]
        await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "go"}]})
        await client.wait_for("item/agentMessage/delta")
        process.send_signal(signum)
        with trio.fail_after(20):
            await process.wait()
        nursery.cancel_scope.cancel()
    assert process.returncode == code
    assert b"Traceback" not in stderr and b"ExceptionGroup" not in stderr, stderr.decode()
    assert_ends_aborted(Path(thread["path"]))


@pytest.mark.parametrize("run", range(20))
def test_sigint_at_a_random_moment_of_spindle_load(tmp_path: Path, run: int) -> None:
    """Ctrl-C anywhere in `spindle load --threads 300`: exit 130 (or 0 if it had finished), the
    table of what was measured, no traceback, every rollout readable."""
    home = tmp_path / "home"
    argv = [*spindle_argv(), "load", "--threads", "300", "--turns", "3", "--no-progress", "--home", str(home),
            "--json", str(tmp_path / "out.json")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # From the moment Spindle's own code runs (it makes the home first): before that, a SIGINT
    # meets the interpreter's own start-up, which no Python program can guard.
    deadline = time.monotonic() + 60
    while not home.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        out, err = process.communicate(timeout=random.Random(run).uniform(0.0, 2.7))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    # -SIGINT: it came as the interpreter was exiting (Python's finalization restores the default
    # handler), after the run had finished and reported
    assert process.returncode in (0, 130, -signal.SIGINT), err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert "turns done" in out
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["interrupted"] == (process.returncode == 130)
    for path in home.rglob("rollout-*.jsonl"):
        read = read_rollout(path)
        assert read.torn is False and read.skipped == 0, path


async def test_a_cancelled_writer_still_writes_what_its_thread_hands_it(tmp_path: Path) -> None:
    """Cancellation reaches the writer and its thread at once: the thread's shielded close still
    gets every queued line written, in order, and the file ends whole."""
    from spindle.persistence.rollout import ThreadRollout
    from spindle.protocol.ids import new_id
    from spindle.protocol.items import Message, user_message
    from spindle.protocol.rollout import SessionMeta

    path = tmp_path / "rollout.jsonl"
    rollout = ThreadRollout(path=path, meta=SessionMeta(id=new_id(), timestamp="2026-12-01T00:00:00.000Z", cwd="/"))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await rollout.materialize(nursery)
            for n in range(50):
                rollout.record([user_message([TextInput(text=f"line {n}")])])
                await rollout.drain()
            scope.cancel()
            with trio.CancelScope(shield=True):  # what the thread actor does as it ends
                await rollout.shutdown()
    read = read_rollout(path)
    texts = [item.text() for item in read.source.items() if isinstance(item, Message)]
    assert texts == [f"line {n}" for n in range(50)] and read.torn is False
