"""One writer per thread across processes: the writer lease, its release, handoff, and eager persistence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.runtime.handoff import request_handoff
from spindle.actors.testing.mock_model import MockModel, Stall
from spindle.actors.testing.rpc_client import RpcFailure, subprocess_server, write_config
from spindle.persistence import rollout as rollout_module
from spindle.persistence.lease import (
    LOCKS_SUBDIR,
    LeaseHolder,
    WriterLease,
    WriterLeaseHeldError,
    acquire_lease,
    lock_path,
)
from spindle.persistence.rollout import ThreadRollout
from spindle.persistence.writer import RolloutWriter
from spindle.protocol.config import Config
from spindle.protocol.items import Message, TextInput
from spindle.protocol.ops import UserInputOp


def lease_is_free(home: Path, thread_id: str) -> bool:
    """Whether nobody holds the lease now (taken and let go at once, from a new descriptor)."""
    try:
        acquire_lease(home, thread_id).release()
    except WriterLeaseHeldError:
        return False
    return True


async def free(home: Path, thread_id: str) -> bool:
    return await trio.to_thread.run_sync(lease_is_free, home, thread_id)


@pytest.fixture
def home(tmp_path: Path, mock_model: MockModel) -> Path:
    home = tmp_path / "codex-home"
    write_config(home, mock_model, thread_unload_delay_secs=0)  # a thread unsubscribed from lets go of its lease at once
    return home


@asynccontextmanager
async def codex_like_holder(lock: Path) -> AsyncIterator[trio.Process]:
    """A child process holding `lock` the real Codex's way (`flock`, the file's content left as
    it is), killed with SIGKILL on exit."""
    script = (
        "import fcntl, os, time;"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT);"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB);"
        "print('held', flush=True); time.sleep(60)"
    )
    child = await trio.lowlevel.open_process([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        said = b""
        with trio.fail_after(30):
            while not said.endswith(b"\n"):
                said += await child.stdout.receive_some()
        assert said == b"held\n"
        yield child
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()


async def materialized(rt: ThreadManager) -> str:
    thread = await rt.start_thread()
    await thread.ask("hello")
    return thread.thread_id


async def test_a_thread_is_leased_while_loaded_and_let_go_at_shutdown(make_config: Callable[..., Config]) -> None:
    config = make_config()
    home = Path(config.codex_home)
    async with open_runtime(config) as rt:
        thread = await rt.start_thread()
        assert await free(home, thread.thread_id), "a thread that has written nothing holds no lease"
        await thread.ask("hello")
        assert not await free(home, thread.thread_id)
        await thread.shutdown_and_wait()
        assert await free(home, thread.thread_id)

        resumed = await rt.resume_thread(thread.thread_id)
        assert not await free(home, thread.thread_id)
        await rt.archive_thread(resumed.thread_id)
        assert await free(home, thread.thread_id)

        other = await materialized(rt)
        assert not await free(home, other)
    assert await free(home, other), "closing the runtime lets go of every lease"


async def test_second_runtime_is_refused_with_the_holder_named(make_config: Callable[..., Config]) -> None:
    config = make_config()
    async with open_runtime(config) as first, open_runtime(config) as second:
        tid = await materialized(first)
        with pytest.raises(WriterLeaseHeldError) as caught:
            await second.resume_thread(tid)
        message = str(caught.value)
        assert f"thread {tid} is being written by spindle pid {os.getpid()} since 20" in message
        assert "handoff" in message
        assert second.running(tid) is None

        with pytest.raises(WriterLeaseHeldError):
            await second.archive_thread(tid)
        assert first.running(tid) is not None, "a refused archive elsewhere leaves the holder alone"


async def test_handoff_between_runtimes(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    config = make_config()
    async with open_runtime(config) as first, open_runtime(config) as second:
        tid = await materialized(first)
        holder = first.get_thread(tid)

        taken = await second.resume_thread(tid, handoff=True)
        assert holder.is_closed and first.running(tid) is None
        assert "hello" in [item.text() for item in taken.history if isinstance(item, Message)]
        assert await taken.ask("after the handoff") == "echo: after the handoff"
        assert not await free(Path(config.codex_home), tid)

        back = await first.resume_thread(tid, handoff=True)
        assert taken.is_closed
        texts = [item.text() for item in back.history if isinstance(item, Message)]
        assert "after the handoff" in texts, "the second holder's turn was flushed before it let go"


async def test_handoff_is_refused_while_a_turn_runs(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    config = make_config()
    async with open_runtime(config) as first, open_runtime(config) as second:
        tid = await materialized(first)
        holder = first.get_thread(tid)
        events = holder.events()
        mock_model.script(Stall(seconds=None), thread_id=tid)
        await holder.submit(UserInputOp(items=[TextInput(text="a long turn")]))
        with trio.fail_after(10):
            while holder.active_turn_id is None:
                await events.receive()
        with pytest.raises(WriterLeaseHeldError, match=r"it keeps the thread: turn .* is running"):
            await second.resume_thread(tid, handoff=True)
        assert first.running(tid) is holder and not holder.is_closing
        await holder.interrupt()


async def test_lock_of_a_killed_process_never_blocks(make_config: Callable[..., Config]) -> None:
    config = make_config()
    home = Path(config.codex_home)
    async with open_runtime(config) as rt:
        tid = await materialized(rt)
        await rt.get_thread(tid).shutdown_and_wait()
        rt.registry.forget(rt.get_thread(tid))
        lock = lock_path(home, tid)
        async with codex_like_holder(lock) as child:
            with pytest.raises(WriterLeaseHeldError, match=f"is being written by python3? pid {child.pid} since 20"):
                await rt.resume_thread(tid)
        assert lock.exists(), "the dead holder's lock file is still there"
        resumed = await rt.resume_thread(tid)
        assert await resumed.ask("again") == "echo: again"
        assert b'"pid"' in lock.read_bytes()
    assert not lock.exists(), "letting go deletes the lock file, as Codex does"
    assert (home / LOCKS_SUBDIR / ".coordination.lock").exists()


async def test_two_processes_race_for_one_thread(home: Path) -> None:
    async with open_runtime(_home_config(home)) as rt:
        tid = await materialized(rt)
    answers: list[Any] = []
    async with subprocess_server(home) as (a, _), subprocess_server(home) as (b, _):
        await a.initialize()
        await b.initialize()

        async def resume(client: Any) -> None:
            try:
                answers.append(await client.call("thread/resume", {"threadId": tid}))
            except RpcFailure as exc:
                answers.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(resume, a)
            nursery.start_soon(resume, b)
        won = [x for x in answers if isinstance(x, dict)]
        lost = [x for x in answers if isinstance(x, RpcFailure)]
        assert len(won) == 1 and len(lost) == 1, answers
        assert lost[0].code == -32600
        assert f"thread {tid} is being written by spindle pid" in lost[0].message


async def test_handoff_over_the_wire_and_closed_notice(home: Path) -> None:
    async with subprocess_server(home) as (a, _), subprocess_server(home) as (b, _):
        await a.initialize()
        await b.initialize()
        thread = (await a.call("thread/start", {}))["thread"]
        await a.run_turn(thread["id"], "first")
        with pytest.raises(RpcFailure, match="requires experimentalApi capability"):
            await b.call("thread/resume", {"threadId": thread["id"], "handoff": True})
        with pytest.raises(RpcFailure, match="is being written by spindle pid"):
            await b.call("thread/resume", {"threadId": thread["id"]})

    async with subprocess_server(home) as (a, _), subprocess_server(home) as (b, _):
        await a.initialize()
        await b.initialize(experimental=True)
        await a.call("thread/resume", {"threadId": thread["id"]})
        mark = len(a.notifications)
        resumed = await b.call("thread/resume", {"threadId": thread["id"], "handoff": True})
        assert [t["items"][0]["content"][0]["text"] for t in resumed["thread"]["turns"]] == ["first"]
        closed = await a.wait_for("thread/closed", after=mark)
        assert closed["params"] == {"threadId": thread["id"]}
        assert (await a.call("thread/loaded/list", {}))["data"] == []
        turn = await b.run_turn(thread["id"], "second")
        assert turn["status"] == "completed"


async def test_persist_now_makes_the_id_durable_before_any_turn(home: Path, mock_model: MockModel) -> None:
    async with subprocess_server(home) as (a, _):
        await a.initialize()
        with pytest.raises(RpcFailure, match=r"thread/start.persistNow requires experimentalApi capability"):
            await a.call("thread/start", {"persistNow": True})
    async with subprocess_server(home) as (a, _), subprocess_server(home) as (b, _):
        await a.initialize(experimental=True)
        await b.initialize()
        with pytest.raises(RpcFailure, match="persistNow cannot be combined with ephemeral"):
            await a.call("thread/start", {"persistNow": True, "ephemeral": True})
        thread = (await a.call("thread/start", {"persistNow": True}))["thread"]
        path = Path(thread["path"])
        assert path.exists() and path.read_text().count("\n") == 1
        with pytest.raises(RpcFailure, match="is being written by spindle pid"):
            await b.call("thread/resume", {"threadId": thread["id"]})
        await a.call("thread/unsubscribe", {"threadId": thread["id"]})
        await a.wait_for("thread/closed")
        resumed = await b.call("thread/resume", {"threadId": thread["id"]})
        assert resumed["thread"]["id"] == thread["id"] and resumed["thread"]["turns"] == []
        turn = await b.run_turn(thread["id"], "first words")
        assert turn["status"] == "completed"


async def test_persist_now_in_the_embedding_api(make_config: Callable[..., Config]) -> None:
    config = make_config()
    async with open_runtime(config) as rt:
        thread = await rt.start_thread(persist_now=True)
        assert thread.rollout_path.exists()
        with pytest.raises(ValueError, match="ephemeral"):
            await rt.start_thread(persist_now=True, ephemeral=True)
    async with open_runtime(config) as rt:
        resumed = await rt.resume_thread(thread.thread_id)
        assert await resumed.ask("hi") == "echo: hi"


def _home_config(home: Path) -> Config:
    from spindle.actors.runtime.config import load_config

    return load_config(home=home)




# --- what a review found ---------------------------------------------------------


async def test_a_handoff_to_a_thread_ending_on_its_own_never_harms_the_runtime(make_config: Callable[..., Config]) -> None:
    async with open_runtime(make_config()) as rt:
        tid = await materialized(rt)
        handle = rt.get_thread(tid)
        assert rt.store.handoff_address is not None
        handle.close()  # ending on its own: its submission channel is closed
        await request_handoff(LeaseHolder(pid=1, handoff=rt.store.handoff_address), tid)
        assert handle.is_closed and await free(Path(rt.home), tid)
        assert await (await rt.start_thread()).ask("still here") == "echo: still here"


async def test_concurrent_resumes_in_one_process_share_one_thread(make_config: Callable[..., Config]) -> None:
    async with open_runtime(make_config()) as rt:
        tid = await materialized(rt)
        await rt.get_thread(tid).shutdown_and_wait()
        rt.registry.forget(rt.get_thread(tid))
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            for handoff in (False, True, False):
                nursery.start_soon(lambda h=handoff: _collect(got, rt.resume_thread(tid, handoff=h)))
        assert all(not isinstance(x, BaseException) for x in got), got
        assert len({id(x) for x in got}) == 1 and not got[0].is_closed, "one actor, never shut down by a self-handoff"


async def test_archive_racing_a_resume_in_one_process(make_config: Callable[..., Config]) -> None:
    async with open_runtime(make_config()) as rt:
        tid = await materialized(rt)
        got: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _collect(got, rt.archive_thread(tid)))
            nursery.start_soon(lambda: _collect(got, rt.resume_thread(tid)))
        assert not any(isinstance(x, WriterLeaseHeldError) for x in got), got
        assert await free(Path(rt.home), tid) or rt.running(tid) is not None


async def _collect(into: list[Any], call: Any) -> None:
    try:
        into.append(await call)
    except Exception as exc:
        into.append(exc)


async def test_a_cancelled_persist_now_lets_go_of_the_lease(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config()
    real_drain = ThreadRollout.drain

    async def slow_drain(self: ThreadRollout) -> None:
        await trio.sleep(5)
        await real_drain(self)

    async with open_runtime(config) as rt:
        started: list[str] = []
        real_new = rt.registry.new_rollout
        monkeypatch.setattr(rt.registry, "new_rollout", lambda tid, *a, **k: started.append(tid) or real_new(tid, *a, **k))
        monkeypatch.setattr(ThreadRollout, "drain", slow_drain)
        with trio.move_on_after(0.2):
            await rt.start_thread(persist_now=True)
        monkeypatch.setattr(ThreadRollout, "drain", real_drain)
        assert started and await free(Path(rt.home), started[0])


async def test_the_lease_is_kept_until_a_slow_writer_has_ended(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that misses its shutdown deadline still has the file open: the lease waits for it."""
    monkeypatch.setattr(rollout_module, "REPLY_TIMEOUT_S", 0.2)
    real_write, real_release = RolloutWriter._write_and_sync, WriterLease.release
    slow = trio.Event()
    writing: list[bool] = [False]
    released_while_writing: list[bool] = []

    def slow_write(self: RolloutWriter, *args: Any) -> Any:
        writing[0] = slow.is_set()
        try:
            if writing[0]:
                time.sleep(1.0)
            return real_write(self, *args)
        finally:
            writing[0] = False

    def release(self: WriterLease) -> None:
        if self.held:
            released_while_writing.append(writing[0])
        real_release(self)

    monkeypatch.setattr(RolloutWriter, "_write_and_sync", slow_write)
    monkeypatch.setattr(WriterLease, "release", release)
    async with open_runtime(make_config()) as rt:
        thread = await rt.start_thread()
        await thread.ask("hello")
        slow.set()
        await thread.submit(UserInputOp(items=[TextInput(text="one more")]))
        await thread.shutdown_and_wait()
        assert released_while_writing == [False], "the lease was let go while the writer still wrote"
        assert await free(Path(rt.home), thread.thread_id)


async def test_a_crashed_spindle_note_does_not_name_a_later_holder(make_config: Callable[..., Config]) -> None:
    config = make_config()
    home = Path(config.codex_home)
    async with open_runtime(config) as rt:
        tid = await materialized(rt)
        await rt.get_thread(tid).shutdown_and_wait()
        rt.registry.forget(rt.get_thread(tid))
        lock = lock_path(home, tid)
        lock.write_text('{"pid": 999999, "owner": "spindle", "handoff": "@gone"}\n')  # left by a crash
        async with codex_like_holder(lock) as child:
            with pytest.raises(WriterLeaseHeldError) as caught:
                await rt.resume_thread(tid)
            assert f"pid {child.pid}" in str(caught.value) and "999999" not in str(caught.value)


def test_a_lock_file_replaced_behind_the_coordination_lock_is_not_trusted(tmp_path: Path) -> None:
    tid = "01a23027-be1a-77f3-8aab-1ee8d77cde0f"
    first = acquire_lease(tmp_path, tid)
    first.path.unlink()  # someone deletes the held file without the coordination lock
    second = acquire_lease(tmp_path, tid)  # locks a new file of that name
    try:
        with pytest.raises(WriterLeaseHeldError):
            acquire_lease(tmp_path, tid)
        assert os.stat(second.path).st_ino == os.fstat(second._fd or -1).st_ino  # type: ignore[arg-type]
    finally:
        second.release()
        first.release()


async def test_many_threads_taking_leases_at_once_are_served_in_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lease takers of one process queue for the coordination lock instead of racing for it: with
    the wait cut to 0.3 s and 1 ms spent under the lock each, 400 at once all get their lease (racing
    for it, the unluckiest waited past the deadline)."""
    from spindle.persistence import lease as lease_module
    from spindle.persistence import store as store_module
    from spindle.persistence.store import LocalThreadStore
    from spindle.protocol.ids import new_id

    lock_file = lease_module._lock_file

    def slow_lock_file(*args: Any) -> int:  # 1 ms under the coordination lock, as on a busy disk
        time.sleep(0.001)
        return lock_file(*args)

    monkeypatch.setattr(lease_module, "_lock_file", slow_lock_file)
    monkeypatch.setattr(store_module, "COORDINATION_WAIT_S", 0.3)
    store = LocalThreadStore(tmp_path / "home")
    leases = []

    async def take() -> None:
        leases.append(await store.acquire_lease(new_id()))

    async with trio.open_nursery() as nursery:
        for _ in range(400):
            nursery.start_soon(take)
    assert len(leases) == 400
    for lease in leases:
        lease.release()
