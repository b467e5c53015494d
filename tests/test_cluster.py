"""Runtimes as nodes sharing threads through one PostgreSQL store: a thread moves between nodes
with its one history, and a node that lost a thread's lease writes nothing more of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from spindle.actors.runtime import open_runtime
from spindle.actors.runtime.cluster import Cluster
from spindle.actors.testing.mock_model import MockModel
from spindle.persistence.pg_store import PostgresThreadStore
from spindle.persistence.thread_store import Lease, RolloutRecord, ThreadStore, iter_records
from spindle.protocol.config import Config
from spindle.protocol.events import ErrorEvent
from spindle.protocol.items import Message, TextInput
from spindle.protocol.ops import UserInputOp


def node_config(make_config: Callable[..., Config], home: Path) -> Config:
    return msgspec.structs.replace(make_config(), codex_home=str(home))


async def stored(store: ThreadStore, thread_id: str) -> list[RolloutRecord]:
    return [record async for record in iter_records(store, thread_id)]


def user_texts(records: list[RolloutRecord]) -> list[str]:
    texts = []
    for record in records:
        item = record.item()
        if isinstance(item, Message) and item.role == "user" and not item.text().startswith("<"):
            texts.append(item.text())
    return texts


async def test_a_thread_moves_to_another_node_with_its_one_history(
    make_config: Callable[..., Config], pg_store: PostgresThreadStore, tmp_path: Path
) -> None:
    async with open_runtime(node_config(make_config, tmp_path / "a"), cluster=Cluster(pg_store, "node-a")) as a:
        thread = await a.start_thread()
        await thread.ask("one")
        await thread.ask("two")
        thread_id = thread.thread_id
    async with open_runtime(node_config(make_config, tmp_path / "b"), cluster=Cluster(pg_store, "node-b")) as b:
        moved = await b.resume_thread(thread_id)
        assert [m.text() for m in moved.history if isinstance(m, Message) and m.role == "user"][-2:] == ["one", "two"]
        await moved.ask("three")
        listed = await b.list_threads()
        assert [entry.id for entry in listed.entries] == [thread_id]
    records = await stored(pg_store, thread_id)
    assert [record.ordinal for record in records] == list(range(len(records)))
    assert user_texts(records) == ["one", "two", "three"]
    local_b = (tmp_path / "b" / "sessions").rglob("rollout-*.jsonl")
    assert [path.read_bytes() for path in local_b] == [b"".join(record.line() for record in records)]


class Paused:
    """A node's view of the store while its process is paused: its renewals never arrive."""

    def __init__(self, store: ThreadStore) -> None:
        self._store = store

    async def renew(self, lease: Lease, ttl_s: float = 0.0) -> Lease:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_node_that_lost_the_lease_is_fenced_off_and_drops_the_thread(
    make_config: Callable[..., Config], pg_store: PostgresThreadStore, tmp_path: Path, mock_model: MockModel
) -> None:
    ttl = 1.0
    paused = Cluster(Paused(pg_store), "node-a", ttl_s=ttl)  # type: ignore[arg-type]
    async with open_runtime(node_config(make_config, tmp_path / "a"), cluster=paused) as a, \
            open_runtime(node_config(make_config, tmp_path / "b"), cluster=Cluster(pg_store, "node-b", ttl_s=ttl)) as b:
        thread = await a.start_thread()
        await thread.ask("from a")
        await trio.sleep(ttl * 1.5)  # real time: the store's clock decides when a lease expires
        taken = await b.resume_thread(thread.thread_id)
        await taken.ask("from b")
        events = thread.events()
        asked = mock_model.request_count
        with trio.fail_after(10):
            await thread.submit(UserInputOp(items=[TextInput(text="late from a")]))
            await thread.wait_closed()
        errors = []
        while True:
            try:
                event = events.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(event.msg, ErrorEvent):
                errors.append(event.msg.message)
        assert any(f"this node lost thread {thread.thread_id}" in message for message in errors), errors
        assert a.running(thread.thread_id) is None
        assert mock_model.request_count == asked  # the model never heard the input the store refused
    records = await stored(pg_store, thread.thread_id)
    assert user_texts(records) == ["from a", "from b"]
    assert [record.ordinal for record in records] == list(range(len(records)))


async def test_a_thread_persisted_at_start_is_in_the_store_and_keeps_its_lease(
    make_config: Callable[..., Config], pg_store: PostgresThreadStore, tmp_path: Path
) -> None:
    async with open_runtime(node_config(make_config, tmp_path / "a"), cluster=Cluster(pg_store, "node-a")) as a:
        with trio.fail_after(10):
            thread = await a.start_thread(persist_now=True)
        [head] = await stored(pg_store, thread.thread_id)
        assert head.type == "session_meta"
        await thread.ask("after")
    assert user_texts(await stored(pg_store, thread.thread_id)) == ["after"]


async def test_a_thread_archived_on_one_node_is_archived_for_all(
    make_config: Callable[..., Config], pg_store: PostgresThreadStore, tmp_path: Path
) -> None:
    async with open_runtime(node_config(make_config, tmp_path / "a"), cluster=Cluster(pg_store, "node-a")) as a:
        thread = await a.start_thread()
        await thread.ask("one")
        async with open_runtime(node_config(make_config, tmp_path / "b"), cluster=Cluster(pg_store, "node-b")) as b:
            await a.archive_thread(thread.thread_id)  # unloads it on a, archives it in the store
            assert [e.id for e in (await b.list_threads(archived=True)).entries] == [thread.thread_id]
            assert (await b.list_threads()).entries == []
            await b.unarchive_thread(thread.thread_id)
            assert [e.id for e in (await a.list_threads()).entries] == [thread.thread_id]


async def test_a_seed_cut_short_is_finished_not_written_over(
    make_config: Callable[..., Config], pg_store: PostgresThreadStore, tmp_path: Path
) -> None:
    """A thread this node had before it joined, whose seeding stopped after its first line: the
    next resume keeps the node's whole copy and sends the store the lines it lacks."""
    from spindle.persistence.thread_store import record_of_line

    config = node_config(make_config, tmp_path / "a")
    async with open_runtime(config) as alone:  # not a node yet
        thread = await alone.start_thread()
        await thread.ask("one")
        await thread.ask("two")
        path = thread.rollout_path
    head = path.read_bytes().splitlines()[0]
    lease = await pg_store.acquire(thread.thread_id, "node-a")
    await pg_store.create(lease, record_of_line(head, 0))  # ... and then the node stopped
    await pg_store.release(lease)
    whole = path.read_bytes()
    async with open_runtime(config, cluster=Cluster(pg_store, "node-a")) as a:
        resumed = await a.resume_thread(thread.thread_id)
        assert [m.text() for m in resumed.history if isinstance(m, Message) and m.role == "user"][-2:] == ["one", "two"]
    assert path.read_bytes().startswith(whole)
    records = await stored(pg_store, thread.thread_id)
    assert b"".join(record.line() for record in records) == path.read_bytes()
    assert user_texts(records) == ["one", "two"]


async def test_once_the_thread_is_lost_nothing_more_of_a_turn_runs_here(tmp_path: Path) -> None:
    """`settle` (before the model is asked, and before a tool runs) refuses once the node has lost
    the thread, and the turn ends as a failed sample, not a call to the model."""
    from spindle.actors.runtime import turn as turn_module
    from spindle.persistence.memory_store import InMemoryThreadStore
    from spindle.persistence.replica import LeaseLostError, StoreReplica
    from spindle.persistence.rollout import ThreadRollout
    from spindle.protocol.ids import new_id
    from spindle.protocol.rollout import SessionMeta

    tid = new_id()
    replica = StoreReplica(InMemoryThreadStore(), tid, "node-a")
    rollout = ThreadRollout(path=tmp_path / "r.jsonl", meta=SessionMeta(id=tid, timestamp="2026-12-01T00:00:00.000Z", cwd=str(tmp_path)),
                            replica=replica)
    await rollout.settle()  # owned: nothing to say
    replica.lost = "the current lease is node 'node-b''s, epoch 2"
    with pytest.raises(LeaseLostError, match=f"this node lost thread {tid} to another"):
        await rollout.settle()

    class Lost:
        async def commit_input(self, *args: object) -> None:
            raise LeaseLostError("lost")

    fake_turn = type("T", (), {"resumed_calls": None, "pending": [("s", [])], "injected": []})()

    async def no_compaction(*args: object) -> None:
        pass

    host = Lost()
    host.compact = no_compaction  # type: ignore[attr-defined]
    with pytest.raises(turn_module.SamplingFailed, match="lost"):
        await turn_module.run_turn(fake_turn, host)  # type: ignore[arg-type]
