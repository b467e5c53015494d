"""Long threads stay cheap: a loaded thread keeps in memory only the history since its last
compaction and an index of where its turns begin; turns are read from the file when asked for.

A small version of `make bench`'s long rollout (2,000 turns, a compaction every 100); what is
checked is the structure, never time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from spindle.actors.appserver import AppServer
from spindle.actors.appserver.turns import IndexedTurns
from spindle.actors.runtime import ThreadManager
from spindle.actors.testing.long_rollout import (
    LongRollout,
    compaction,
    user_text,
    write_long_rollout,
)
from spindle.actors.testing.rpc_client import RpcClient
from spindle.persistence.history import ForkSnapshot
from spindle.persistence.paths import timestamp
from spindle.persistence.reader import read_rollout
from spindle.persistence.rollout import ThreadRollout
from spindle.persistence.source import read_items
from spindle.protocol.ids import new_id
from spindle.protocol.items import InputImage, InputText, Message
from spindle.protocol.ops import ThreadRollbackOp
from spindle.protocol.rollout import CompactedItem, SessionMeta, TurnContextItem

TURNS = 2000
COMPACT_EVERY = 100


@pytest.fixture
def long_rollout(tmp_path: Path) -> LongRollout:
    return write_long_rollout(tmp_path / "home", turns=TURNS, compact_every=COMPACT_EVERY, cwd=str(tmp_path))


def texts(history: object) -> list[str]:
    return [item.text() for item in history if isinstance(item, Message)]  # type: ignore[attr-defined]


def test_the_scan_keeps_the_index_and_the_history_since_the_last_compaction(long_rollout: LongRollout) -> None:
    read = read_rollout(long_rollout.path)
    assert read.source.index.ids == long_rollout.turn_ids
    assert read.history == compaction(TURNS - 1).replacement_history
    data = long_rollout.path.read_bytes()
    assert read.history_from == data.rfind(b"\n", 0, data.rfind(b'"type":"compacted"')) + 1  # rebuilt from there on
    assert read.source.read_all().tail == []  # nothing of the file is held as items
    assert read.source.preview == user_text(0) and read.source.facts.unfinished is None
    assert isinstance(read.source.facts.last_context, TurnContextItem)
    assert read.source.facts.last_context.turn_id == long_rollout.turn_ids[-1]
    # a turn's bytes begin at its turn_context line and hold exactly its lines
    middle = read.source.read_turns([1234])
    items = read_items(middle)
    assert isinstance(items[0], TurnContextItem) and items[0].turn_id == long_rollout.turn_ids[1234]
    assert texts(items) == [user_text(1234), f"echo: {user_text(1234)}"]


def test_a_torn_compacted_line_falls_back_to_the_history_before_it(long_rollout: LongRollout) -> None:
    lines = long_rollout.path.read_bytes().split(b"\n")
    last = max(n for n, line in enumerate(lines) if b'"type":"compacted"' in line)
    lines[last] = lines[last][: len(lines[last]) // 2]
    long_rollout.path.write_bytes(b"\n".join(lines))
    read = read_rollout(long_rollout.path)
    before = compaction(TURNS - 1 - COMPACT_EVERY).replacement_history
    assert read.history[: len(before)] == before
    assert texts(read.history)[len(before):] == [t for n in range(TURNS - COMPACT_EVERY, TURNS)
                                                 for t in (user_text(n), f"echo: {user_text(n)}")]


async def test_a_resumed_long_thread_holds_only_its_last_history_and_keeps_writing(
    runtime: ThreadManager, long_rollout: LongRollout
) -> None:
    thread = await runtime.resume_thread(long_rollout.thread_id)
    assert thread.history == compaction(TURNS - 1).replacement_history
    source = thread.rollout.source
    assert source.index.ids == long_rollout.turn_ids and source.read_all().tail == []
    await thread.ask("one more")
    await thread.rollout.flush()
    assert len(source.index) == TURNS + 1 and source.read_all().tail == []  # written, placed, let go
    assert texts(thread.history)[-2:] == ["one more", "echo: one more"]
    opening = await trio.to_thread.run_sync(read_items, source.read_turns([TURNS]))
    assert isinstance(opening[0], TurnContextItem) and opening[0].turn_id == source.index.ids[-1]
    [last] = await IndexedTurns(source).turns([TURNS])
    assert last.id == source.index.ids[-1] and last.status == "completed"
    [middle] = await IndexedTurns(source).turns([7])
    assert middle.id == long_rollout.turn_ids[7] and len(middle.items) == 2


async def test_rollback_and_fork_read_what_they_need_from_the_file(
    runtime: ThreadManager, long_rollout: LongRollout
) -> None:
    forked = await runtime.fork_thread(ForkSnapshot.truncate_before(1500), long_rollout.thread_id)
    assert forked.rollout.source.index.ids == long_rollout.turn_ids[:1500]
    assert forked.history == [*compaction(1499).replacement_history]
    whole = await runtime.fork_thread(ForkSnapshot.interrupted(), long_rollout.thread_id)
    assert whole.rollout.source.index.ids == long_rollout.turn_ids
    first = await trio.to_thread.run_sync(whole.rollout.path.read_bytes)
    assert first.startswith(b'{"timestamp"') and whole.thread_id.encode() in first.split(b"\n")[0]
    thread = await runtime.resume_thread(long_rollout.thread_id)
    await thread.ask("after")
    outcome = await thread.submit_and_wait(ThreadRollbackOp(num_turns=2))
    assert outcome.error is None
    assert thread.rollout.source.index.ids == long_rollout.turn_ids[:-1]
    assert thread.history == compaction(TURNS - 1).replacement_history[:-1]  # the summary's turn went too


async def test_paging_a_long_thread_reads_the_right_turns(server: AppServer, long_rollout: LongRollout) -> None:
    from spindle.actors.testing.rpc_client import in_memory

    async with in_memory(server) as client:
        await client.initialize()
        await page_long_thread(client, long_rollout)


async def page_long_thread(client: RpcClient, long_rollout: LongRollout) -> None:
    tid, ids = long_rollout.thread_id, long_rollout.turn_ids
    resumed = await client.call("thread/resume", {"threadId": tid, "excludeTurns": True})
    assert resumed["thread"]["turns"] == []
    first = await client.call("thread/turns/list", {"threadId": tid, "limit": 3})
    assert [t["id"] for t in first["data"]] == ids[-1:-4:-1]
    assert first["data"][0]["items"][0]["content"][0]["text"] == user_text(TURNS - 1)
    second = await client.call("thread/turns/list", {"threadId": tid, "limit": 3, "cursor": first["nextCursor"]})
    assert [t["id"] for t in second["data"]] == ids[-4:-7:-1]
    back = await client.call("thread/turns/list", {"threadId": tid, "limit": 4, "sortDirection": "asc",
                                                   "cursor": second["backwardsCursor"]})
    assert [t["id"] for t in back["data"]] == ids[-4:]
    items = await client.call("thread/items/list", {"threadId": tid, "turnId": ids[500]})
    assert [e["item"]["type"] for e in items["data"]] == ["userMessage", "agentMessage"]
    assert items["data"][0]["item"]["content"][0]["text"] == user_text(500)


BIG_IMAGE = "data:image/png;base64," + "iVBORw0KGgo" * 20_000


async def test_an_inline_image_is_stored_once_however_many_compactions_keep_it(tmp_path: Path) -> None:
    meta = SessionMeta(id=new_id(), timestamp=timestamp(), cwd=str(tmp_path))
    path = tmp_path / "sessions" / f"rollout-{meta.id}.jsonl"
    image = Message(role="user", content=[InputText(text="look at this"), InputImage(image_url=BIG_IMAGE)])
    rollout = ThreadRollout(path=path, meta=meta)
    async with trio.open_nursery() as nursery:
        rollout.record([image])
        await rollout.materialize(nursery)
        for n in range(5):
            summary = Message(role="user", content=[InputText(text=f"summary {n}")])
            rollout.record([CompactedItem(message=f"summary {n}", replacement_history=[image, summary])])
            await rollout.drain()
        await rollout.shutdown()
    data = await trio.to_thread.run_sync(path.read_bytes)
    assert len(data) < 1.2 * len(BIG_IMAGE) and data.count(b"spindle-blob:sha256:") == 5
    read = await trio.to_thread.run_sync(read_rollout, path)
    assert read.history == [image, Message(role="user", content=[InputText(text="summary 4")])]
