"""The thread store under a hostile environment: another process holding the index, a CODEX_HOME
that cannot be written, a damaged index, a full disk. The event loop never waits on any of them,
and each failure is one error naming the path, the cause and what to do."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.persistence.store import INDEX_FILE, LocalThreadStore, ThreadStoreError
from spindle.protocol.config import Config
from spindle.protocol.events import ErrorEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp

from .helpers import collect_until

MAX_LOOP_GAP_S = 0.25
"""The longest the event loop may go without running a 1 ms ticker. Idle, the gap is 5-15 ms; a
busy machine adds scheduling noise; a store call blocking the loop shows the whole lock (seconds)."""
LOCK_HOLD_S = 3.0
"""How long the other process holds the index's write lock."""

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN " + sys.argv[3])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


class LoopWatch:
    """A 1 ms ticker that records the longest time the loop took to run it again."""

    def __init__(self) -> None:
        self._longest = 0.0
        self._last = time.perf_counter()

    @property
    def max_gap(self) -> float:
        """The longest gap so far, counting the one still open."""
        return max(self._longest, time.perf_counter() - self._last)

    async def run(self) -> None:
        self._last = time.perf_counter()
        while True:
            await trio.sleep(0.001)
            now = time.perf_counter()
            self._longest = max(self._longest, now - self._last)
            self._last = now


def hold_index_lock(index: Path, seconds: float, mode: str = "IMMEDIATE") -> subprocess.Popen[bytes]:
    """Another process that takes the index's lock (`BEGIN <mode>`) and keeps it for `seconds`."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(index), str(seconds), mode], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    return holder


async def test_turns_complete_and_the_loop_runs_while_another_process_holds_the_index(
    runtime: ThreadManager, nursery: trio.Nursery
) -> None:
    store = runtime.store
    warm = await runtime.start_thread()  # the model client's one-time set-up is not the store's
    await warm.ask("warm-up")
    await warm.shutdown_and_wait()
    holder = hold_index_lock(store.index_path, LOCK_HOLD_S)
    try:
        watch = LoopWatch()
        nursery.start_soon(watch.run)
        threads = [await runtime.start_thread() for _ in range(4)]

        async def two_turns(n: int) -> None:
            assert await threads[n].ask(f"thread {n}") == f"echo: thread {n}"
            assert await threads[n].ask("again") == "echo: again"

        renamed = trio.Event()

        async def rename() -> None:  # a write that must wait for the lock, off the loop
            await store.set_name(threads[0].thread_id, "named while locked")
            renamed.set()

        nursery.start_soon(rename)
        async with trio.open_nursery() as turns:
            for n in range(len(threads)):
                turns.start_soon(two_turns, n)
        assert holder.poll() is None, "the turns waited for the other process's lock"
        assert not renamed.is_set()
        assert (await store.list_threads()).entries is not None  # reads go on beside the writer
        assert watch.max_gap < MAX_LOOP_GAP_S, f"the loop was blocked for {watch.max_gap:.3f} s"
    finally:
        holder.kill()  # its lock goes with it
        holder.communicate()
    with trio.fail_after(10):  # once the lock is gone the index catches up
        await renamed.wait()
        for thread in threads:
            await thread.shutdown_and_wait()  # each rollout's last index update is made
    assert len((await store.list_threads()).entries) == len(threads) + 1
    entry = await store.entry(threads[0].thread_id)
    assert entry is not None and entry.name == "named while locked" and entry.preview == "thread 0"


async def test_opening_an_index_another_process_holds_waits_without_blocking_the_loop(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    hold_s = 1.0
    holder = hold_index_lock(home / INDEX_FILE, hold_s, mode="EXCLUSIVE")  # a new index: no WAL yet
    locked_at = time.perf_counter()
    try:
        watch = LoopWatch()
        nursery.start_soon(watch.run)
        await trio.sleep(0.01)
        store = LocalThreadStore(home)
        await store.open()
        assert time.perf_counter() - locked_at > hold_s * 0.9  # the open waited for the lock
        assert watch.max_gap < MAX_LOOP_GAP_S, f"the loop was blocked for {watch.max_gap:.3f} s"
        await store.aclose()
    finally:
        holder.kill()
        holder.communicate()


SLOW_DISK_S = 0.5
"""How long each rollout write and sync takes on the slow disk."""


async def test_a_slow_disk_never_blocks_the_loop(
    runtime: ThreadManager, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spindle.persistence import writer

    thread = await runtime.start_thread()
    await thread.ask("warm-up")
    real_write, real_fsync = writer.os.write, writer.os.fsync

    def slow_write(fd: int, data: bytes) -> int:
        time.sleep(SLOW_DISK_S)
        return real_write(fd, data)

    def slow_fsync(fd: int) -> None:
        time.sleep(SLOW_DISK_S)
        real_fsync(fd)

    monkeypatch.setattr(writer.os, "write", slow_write)
    monkeypatch.setattr(writer.os, "fsync", slow_fsync)
    watch = LoopWatch()
    nursery.start_soon(watch.run)
    await trio.sleep(0.01)
    assert await thread.ask("on a slow disk") == "echo: on a slow disk"
    await thread.rollout.flush()
    assert watch.max_gap < MAX_LOOP_GAP_S, f"the loop was blocked for {watch.max_gap:.3f} s"
    monkeypatch.undo()
    assert "on a slow disk" in thread.rollout_path.read_text()


def test_processes_sharing_a_home_can_open_the_index_at_once(tmp_path: Path) -> None:
    """Several runtimes on one CODEX_HOME create the index together: none may fail."""
    errors: list[BaseException] = []
    for round_ in range(20):
        home = tmp_path / f"home-{round_}"

        async def open_and_list(home: Path = home) -> None:
            store = LocalThreadStore(home)
            await store.open()
            await store.list_threads()
            await store.aclose()

        def opener() -> None:
            try:
                trio.run(open_and_list)
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)

        openers = [threading.Thread(target=opener) for _ in range(4)]
        for thread in openers:
            thread.start()
        for thread in openers:
            thread.join()
    assert errors == []


def test_codex_home_under_a_file_names_the_path_and_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    home = blocker / "codex"
    with pytest.raises(ThreadStoreError) as info:
        LocalThreadStore(home)
    message = str(info.value)
    assert str(home) in message and "not a directory" in message.lower() and "set CODEX_HOME" in message


async def test_open_runtime_on_an_unusable_home_is_one_clear_error(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    (tmp_path / "home").write_text("CODEX_HOME is a file")
    with pytest.raises(ThreadStoreError, match=f"cannot create CODEX_HOME at {tmp_path / 'home'}: .*set CODEX_HOME"):
        async with open_runtime(make_config()):
            pass


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
async def test_read_only_codex_home_names_the_index_and_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        store = LocalThreadStore(home)
        with pytest.raises(ThreadStoreError) as info:
            await store.list_threads()
    finally:
        home.chmod(0o700)
    message = str(info.value)
    assert f"cannot open the thread index at {home / INDEX_FILE}" in message
    assert f"check that CODEX_HOME ({home}) is writable" in message


async def test_a_damaged_index_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / INDEX_FILE).write_bytes(b"this is not a SQLite database, it is garbage" * 100)
    store = LocalThreadStore(home)
    with pytest.raises(ThreadStoreError) as info:
        await store.list_threads()
    message = str(info.value)
    assert f"cannot open the thread index at {home / INDEX_FILE}" in message and "move the file aside" in message


async def test_a_full_index_names_the_file_and_what_to_do(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    await thread.ask("hello")
    await thread.shutdown_and_wait()
    store = runtime.store
    db = store.index.db  # a page limit makes this connection's writes fail as on a full disk
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    meta = thread.rollout_path.read_text().splitlines()[0].replace('"cwd":"', '"cwd":"' + "x" * 50_000, 1)
    (thread.rollout_path.parent / thread.rollout_path.name.replace(thread.thread_id, "0" * 8 + thread.thread_id[8:])).write_text(
        meta.replace(thread.thread_id, "0" * 8 + thread.thread_id[8:]) + "\n"
    )
    with pytest.raises(ThreadStoreError) as info:
        await store.rebuild_index()
    message = str(info.value)
    assert f"the thread index at {store.home / INDEX_FILE}" in message and "full: free some space" in message


async def test_a_full_disk_while_writing_a_rollout_names_the_file_and_what_to_do(
    runtime: ThreadManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spindle.persistence import writer

    thread = await runtime.start_thread()
    await thread.ask("one")

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, "write", full)
    with thread.events() as events, trio.fail_after(10):
        await thread.submit(UserInputOp(items=[TextInput(text="two")]))
        seen = await collect_until(events, ErrorEvent)  # the writer reports as it fails, not with the turn
    error = seen[-1].msg.message  # type: ignore[union-attr]
    assert f"failed to write rollout {thread.rollout_path}: No space left on device" in error
    assert "full: free some space" in error
    monkeypatch.undo()
