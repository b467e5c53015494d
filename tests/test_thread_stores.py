"""One suite for every `ThreadStore`: in memory, the local files (through the adapter) and
PostgreSQL. Each test gets a store of its own (a PostgreSQL test: a schema of its own, dropped
after). PostgreSQL is the one at `SPINDLE_TEST_PG_DSN`; its tests skip when no server answers,
unless `SPINDLE_REQUIRE_PG` is set (CI sets it), and then they fail."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import psycopg
import pytest
import trio

from spindle.actors.cli import main as cli_main_module
from spindle.actors.cli.main import main as cli_main
from spindle.persistence import pg_store as pg_store_module
from spindle.persistence.local_adapter import LocalStoreAdapter
from spindle.persistence.memory_store import InMemoryThreadStore
from spindle.persistence.pg_schema import MIGRATIONS
from spindle.persistence.pg_store import AppendNotice, PostgresThreadStore, open_postgres_store
from spindle.persistence.query import ThreadQuery
from spindle.persistence.store import LocalThreadStore
from spindle.persistence.thread_store import (
    FencedError,
    Lease,
    LeaseHeldError,
    MetadataUpdate,
    OrdinalConflictError,
    RolloutRecord,
    ThreadExistsError,
    ThreadNotFoundError,
    ThreadStore,
    ThreadStoreError,
    UnsupportedUpdateError,
    records_of,
)
from spindle.persistence.transfer import export_thread, import_thread
from spindle.protocol.events import AgentMessageEvent, TaskStartedEvent
from spindle.protocol.ids import new_id
from spindle.protocol.items import InputText, Message
from spindle.protocol.rollout import SessionMeta

from .pg_helpers import PG_DSN, drop_schema, pg_or_skip

CODEX_ROLLOUTS = Path(__file__).parent / "fixtures" / "codex-0.171-rollouts" / "sessions"

@asynccontextmanager
async def made_store(kind: str, home: Path) -> AsyncIterator[ThreadStore]:
    """A fresh store of `kind`: in memory, on files under `home`, or in a new PostgreSQL schema."""
    if kind == "memory":
        yield InMemoryThreadStore()
    elif kind == "local":
        local = LocalThreadStore(home)
        adapter = LocalStoreAdapter(local)
        try:
            yield adapter
        finally:
            await adapter.aclose()
            await local.aclose()
    else:
        pg_or_skip()
        schema = f"t_{uuid.uuid4().hex[:16]}"
        try:
            async with open_postgres_store(PG_DSN, schema=schema, max_connections=4) as pg:
                yield pg
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(drop_schema, schema)


STORES = ["memory", "local", "postgres"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ThreadStore]:
    async with made_store(request.param, tmp_path / "home") as made:
        yield made


@pytest.fixture(params=STORES)
async def other_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ThreadStore]:
    """A second store, for the export/import tests (a home, or a schema, of its own)."""
    async with made_store(request.param, tmp_path / "other-home") as made:
        yield made


def stamp(day: int, second: int = 0) -> str:
    return f"2025-01-{day:02d}T00:00:{second:02d}.000Z"


def user(text: str) -> Message:
    return Message(role="user", content=[InputText(text=text)])


async def new_thread(store: ThreadStore, *, day: int = 1, node: str = "a", cwd: str = "/work", provider: str = "openai",
                     source: object = "vscode", ttl_s: float = 30.0) -> Lease:
    tid = new_id()
    lease = await store.acquire(tid, node, ttl_s)
    meta = SessionMeta(id=tid, timestamp=stamp(day), cwd=cwd, model_provider=provider, source=source)
    await store.create(lease, records_of([meta], 0, at=stamp(day))[0])
    return lease


def is_local(store: ThreadStore) -> bool:
    return isinstance(store, LocalStoreAdapter)


# --- records -------------------------------------------------------------------


async def test_create_append_and_read_from_an_ordinal(store: ThreadStore) -> None:
    lease = await new_thread(store)
    tid = lease.thread_id
    assert await store.next_ordinal(tid) == 1
    first = records_of([TaskStartedEvent(turn_id="t1"), user("hello there")], 1, at=stamp(1, 5))
    unknown = RolloutRecord(ordinal=3, timestamp=stamp(1, 6), type="world_state", payload=msgspec.Raw(b'{"full":true,"b":1,"a":2}'))
    assert await store.append(lease, [*first, unknown]) == 4
    second = records_of([AgentMessageEvent(message="hi")], 4, at=stamp(1, 9))
    assert await store.append(lease, second) == 5
    assert await store.append(lease, []) == 5

    records = await store.read(tid)
    assert [r.ordinal for r in records] == [0, 1, 2, 3, 4]
    assert [r.type for r in records] == ["session_meta", "event_msg", "response_item", "world_state", "event_msg"]
    assert isinstance(records[0].item(), SessionMeta)
    assert records[2].item() == user("hello there")
    assert records[3].item() is None and bytes(records[3].payload) == b'{"full":true,"b":1,"a":2}'  # kept as written
    assert [r.ordinal for r in await store.read(tid, from_ordinal=2)] == [2, 3, 4]
    assert [r.ordinal for r in await store.read(tid, from_ordinal=1, limit=2)] == [1, 2]
    assert await store.read(tid, from_ordinal=5) == []
    assert await store.next_ordinal(tid) == 5

    meta = await store.metadata(tid)
    assert meta.preview == "hello there"
    assert meta.updated_at == stamp(1, 9)
    assert meta.created_at == stamp(1)


async def test_a_batch_is_written_whole_or_not_at_all(store: ThreadStore) -> None:
    lease = await new_thread(store)
    await store.append(lease, records_of([user("one")], 1))
    replayed = records_of([AgentMessageEvent(message="late"), user("one again")], 1)  # a retry of a written batch
    with pytest.raises(OrdinalConflictError, match="does not follow"):
        await store.append(lease, replayed)
    backwards = [*records_of([AgentMessageEvent(message="x")], 3), *records_of([AgentMessageEvent(message="y")], 2)]
    with pytest.raises(OrdinalConflictError):
        await store.append(lease, backwards)
    assert [r.ordinal for r in await store.read(lease.thread_id)] == [0, 1]
    gap = records_of([AgentMessageEvent(message="after a gap")], 7)  # ordinals grow; gaps are allowed
    assert await store.append(lease, gap) == 8
    assert [r.ordinal for r in await store.read(lease.thread_id, from_ordinal=2)] == [7]


async def test_create_twice_and_unknown_threads(store: ThreadStore) -> None:
    lease = await new_thread(store)
    meta = SessionMeta(id=lease.thread_id, timestamp=stamp(2), cwd="/w")
    with pytest.raises(ThreadExistsError):
        await store.create(lease, records_of([meta], 0)[0])
    missing = new_id()
    for call in (store.metadata(missing), store.read(missing), store.next_ordinal(missing), store.archive(missing)):
        with pytest.raises(ThreadNotFoundError, match=missing):
            await call
    other = await store.acquire(new_id(), "a")
    with pytest.raises(ThreadStoreError):
        await store.create(other, records_of([meta], 0)[0])  # the session_meta names another thread


# --- thread/list ---------------------------------------------------------------


async def list_ids(store: ThreadStore, **query: object) -> list[str]:
    return [e.id for e in (await store.list_threads(ThreadQuery(**query))).entries]  # type: ignore[arg-type]


async def test_list_filters_sorts_and_pages(store: ThreadStore) -> None:
    a = await new_thread(store, day=1, cwd="/one", provider="openai")
    b = await new_thread(store, day=2, cwd="/two", provider="mock")
    c = await new_thread(store, day=3, cwd="/one", provider="mock", source="cli")
    d = await new_thread(store, day=4, cwd="/one", source="exec")
    e = await new_thread(store, day=5, cwd="/one", source={"subagent": "review"})
    await store.append(a, records_of([user("Fix the flaky build")], 1, at=stamp(9)))  # a: updated last
    await store.append(b, records_of([user("write docs")], 1, at=stamp(8)))
    await store.update_metadata(c.thread_id, MetadataUpdate(name="Release notes"))
    ids = {x: lease.thread_id for x, lease in zip("abcde", (a, b, c, d, e), strict=True)}

    assert await list_ids(store) == [ids["c"], ids["b"], ids["a"]]  # interactive sources, newest created first
    assert await list_ids(store, sort_direction="asc") == [ids["a"], ids["b"], ids["c"]]
    assert await list_ids(store, sort_key="updated_at") == [ids["a"], ids["b"], ids["c"]]
    assert await list_ids(store, cwd="/one") == [ids["c"], ids["a"]]
    assert await list_ids(store, cwd=["/one", "/two"], model_providers=["mock"]) == [ids["c"], ids["b"]]
    assert await list_ids(store, source_kinds=["exec"]) == [ids["d"]]
    assert await list_ids(store, source_kinds=["subAgent"]) == [ids["e"]]
    assert await list_ids(store, source_kinds=["subAgentReview", "cli"]) == [ids["e"], ids["c"]]
    assert await list_ids(store, search_term="FLAKY") == [ids["a"]]
    assert await list_ids(store, search_term="release") == [ids["c"]]  # the name, not the preview
    assert await list_ids(store, included_ids=[ids["a"], ids["d"]]) == [ids["a"]]
    assert await list_ids(store, included_ids=[]) == []
    assert await list_ids(store, excluded_ids=[ids["c"]]) == [ids["b"], ids["a"]]
    assert await list_ids(store, section="pinned") == []

    page = await store.list_threads(ThreadQuery(limit=2))
    assert [x.id for x in page.entries] == [ids["c"], ids["b"]] and page.next_cursor
    rest = await store.list_threads(ThreadQuery(limit=2, cursor=page.next_cursor))
    assert [x.id for x in rest.entries] == [ids["a"]] and rest.next_cursor is None
    assert rest.backwards_cursor
    back = await store.list_threads(ThreadQuery(limit=2, cursor=rest.backwards_cursor, sort_direction="asc"))
    assert [x.id for x in back.entries] == [ids["b"], ids["c"]]
    entry = next(x for x in page.entries if x.id == ids["c"])
    assert (entry.name, entry.cwd, entry.model_provider, entry.source_kind) == ("Release notes", "/one", "mock", "cli")


# --- metadata, archive ---------------------------------------------------------


async def test_metadata_updates(store: ThreadStore) -> None:
    lease = await new_thread(store)
    tid = lease.thread_id
    meta = await store.update_metadata(tid, MetadataUpdate(name="first name"))
    assert meta.name == "first name"
    assert (await store.metadata(tid)).name == "first name"
    rest = MetadataUpdate(preview="p", cwd="/elsewhere", model_provider="mock", source="exec", updated_at=stamp(20))
    if {"preview", "cwd", "model_provider", "source", "updated_at"} <= store.MUTABLE_FIELDS:
        meta = await store.update_metadata(tid, rest)
        assert (meta.preview, meta.cwd, meta.model_provider, meta.source, meta.updated_at) == (
            "p", "/elsewhere", "mock", "exec", stamp(20))
        assert meta.source_kind == "exec" and not meta.interactive
        assert await list_ids(store) == []  # no longer an interactive source
        assert await list_ids(store, source_kinds=["exec"], cwd="/elsewhere") == [tid]
    else:
        with pytest.raises(UnsupportedUpdateError, match="cwd"):
            await store.update_metadata(tid, rest)
        assert (await store.metadata(tid)).cwd == "/work"  # nothing changed
    with pytest.raises(ThreadNotFoundError):
        await store.update_metadata(new_id(), MetadataUpdate(name="x"))


async def test_archive_and_unarchive(store: ThreadStore) -> None:
    lease = await new_thread(store)
    tid = lease.thread_id
    await store.append(lease, records_of([user("keep me")], 1, at=stamp(1, 1)))
    before = (await store.metadata(tid)).updated_at
    await store.archive(tid)
    await store.archive(tid)  # already archived: nothing to do
    assert (await store.metadata(tid)).archived
    assert await list_ids(store) == []
    assert await list_ids(store, archived=True) == [tid]
    assert [r.ordinal for r in await store.read(tid)] == [0, 1]
    await store.unarchive(tid)
    meta = await store.metadata(tid)
    assert not meta.archived and meta.updated_at > before
    assert await list_ids(store) == [tid]
    await store.update_metadata(tid, MetadataUpdate(archived=True))
    assert await list_ids(store, archived=True) == [tid]


# --- leases --------------------------------------------------------------------


async def test_acquire_renew_release(store: ThreadStore) -> None:
    tid = new_id()
    lease = await store.acquire(tid, "a", 30)
    assert (lease.thread_id, lease.node_id, lease.epoch) == (tid, "a", 1)
    with pytest.raises(LeaseHeldError, match=tid):
        await store.acquire(tid, "b", 30)
    renewed = await store.renew(lease, 60)
    assert renewed.epoch == 1 and renewed.expires_at >= lease.expires_at
    await store.release(renewed)
    await store.release(renewed)  # idempotent
    taken = await store.acquire(tid, "b", 30)
    assert taken.epoch == (1 if is_local(store) else 2)
    with pytest.raises(FencedError, match="must drop the thread"):
        await store.renew(renewed)
    await store.release(renewed)  # a stale lease lets go of nothing
    with pytest.raises(LeaseHeldError):
        await store.acquire(tid, "c", 30)


async def test_an_expired_lease_is_taken_with_the_next_epoch(store: ThreadStore) -> None:
    if is_local(store):
        pytest.skip("local writer locks do not expire: the kernel drops a dead process's flock")
    lease = await new_thread(store, node="a", ttl_s=0)  # expired at once
    await store.append(lease, records_of([user("from a")], 1))  # expired, but nobody took it: still current
    taken = await store.acquire(lease.thread_id, "b", 30)
    assert (taken.node_id, taken.epoch) == ("b", lease.epoch + 1)
    with pytest.raises(FencedError, match="epoch 2"):
        await store.append(lease, records_of([user("a again")], 2))
    with pytest.raises(FencedError):
        await store.renew(lease)
    assert await store.append(taken, records_of([user("from b")], 2)) == 3
    assert [r.item() for r in await store.read(lease.thread_id, from_ordinal=1)] == [user("from a"), user("from b")]


async def test_racing_acquirers_exactly_one_wins(store: ThreadStore) -> None:
    tid = new_id()
    won: list[Lease] = []
    refused: list[LeaseHeldError] = []

    async def contend(node: str) -> None:
        try:
            won.append(await store.acquire(tid, node, 30))
        except LeaseHeldError as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(contend, f"node-{n}")
    assert len(won) == 1 and len(refused) == 7
    assert won[0].epoch == 1


async def test_a_stale_lease_is_fenced_and_writes_nothing(store: ThreadStore) -> None:
    old = await new_thread(store, node="a")
    tid = old.thread_id
    await store.append(old, records_of([user("before")], 1))
    await store.release(old)
    new = await store.acquire(tid, "b", 30)
    with pytest.raises(FencedError, match=f"thread {tid}") as fenced:
        await store.append(old, records_of([user("stale write")], 2))
    assert fenced.value.lease == old
    assert await store.next_ordinal(tid) == 2
    assert [r.item() for r in await store.read(tid, from_ordinal=1)] == [user("before")]
    meta = SessionMeta(id=new_id(), timestamp=stamp(3), cwd="/w")
    with pytest.raises(FencedError):  # creating needs a current lease too
        await store.create(Lease(thread_id=meta.id, node_id="a", epoch=1), records_of([meta], 0)[0])
    assert await store.append(new, records_of([user("after")], 2)) == 3


# --- export / import -----------------------------------------------------------


async def test_a_codex_rollout_round_trips_through_every_store(
    store: ThreadStore, other_store: ThreadStore, tmp_path: Path
) -> None:
    source = sorted(CODEX_ROLLOUTS.rglob("*.jsonl"))[0]
    original = source.read_bytes()
    meta = await import_thread(store, source)
    assert meta.cwd == "/tmp/codex-probe/work" and meta.model_provider == "mock"
    records = await store.read(meta.id)
    assert [r.ordinal for r in records] == list(range(original.count(b"\n")))
    exported = tmp_path / "exported.jsonl"
    with exported.open("wb") as out:
        await export_thread(store, meta.id, out)
    assert exported.read_bytes() == original  # world_state, token_usage_record and all, byte for byte
    again = await import_thread(other_store, exported)
    assert again.id == meta.id and again.preview == meta.preview
    back = tmp_path / "back.jsonl"
    with back.open("wb") as out:
        await export_thread(other_store, meta.id, out)
    assert back.read_bytes() == original
    with pytest.raises(ThreadExistsError):
        await import_thread(store, source)


async def test_import_refuses_what_is_not_a_rollout(store: ThreadStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"timestamp":"x","type":"event_msg","payload":{}}\n')
    with pytest.raises(ThreadStoreError, match="session_meta"):
        await import_thread(store, bad)
    bad.write_bytes(records_of([SessionMeta(id=new_id(), timestamp=stamp(1), cwd="/")], 0)[0].line() + b"not json\n")
    with pytest.raises(ThreadStoreError, match="line 2 is not a rollout line"):
        await import_thread(store, bad)


@pytest.mark.parametrize("kind", ["local", "postgres"])
def test_spindle_export_and_import(kind: str, tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # In process: the logging set-up stays the test run's (the CLI's would write to this test's captured stderr).
    monkeypatch.setattr(cli_main_module, "configure_logging", lambda level: None)
    source = sorted(CODEX_ROLLOUTS.rglob("*.jsonl"))[0]
    schema = f"t_{uuid.uuid4().hex[:16]}"
    where = ["--store", pg_or_skip(), "--schema", schema] if kind == "postgres" else ["--store", str(tmp_path / "home")]
    try:
        assert cli_main(["import", str(source), *where]) == 0
        thread_id = source.stem[-36:]
        assert thread_id in capfdbinary.readouterr().err.decode()
        assert cli_main(["export", thread_id, *where]) == 0
        assert capfdbinary.readouterr().out == source.read_bytes()
        assert cli_main(["import", str(source), *where]) == 2
        assert b"already exists" in capfdbinary.readouterr().err
        assert cli_main(["export", "not-an-id", *where]) == 2
        assert b"invalid thread id" in capfdbinary.readouterr().err
    finally:
        if kind == "postgres":
            drop_schema(schema)


# --- PostgreSQL only -----------------------------------------------------------


async def test_migrations_apply_once_under_concurrent_starts(pg_schema: str) -> None:
    stores = [PostgresThreadStore(PG_DSN, schema=pg_schema, max_connections=1) for _ in range(6)]
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starting:  # six nodes start at once on a fresh schema
            for one in stores:
                starting.start_soon(nursery.start, one.run)
        lease = await stores[0].acquire(new_id(), "a")
        with pytest.raises(LeaseHeldError):
            await stores[-1].acquire(lease.thread_id, "b")
        nursery.cancel_scope.cancel()

    def versions() -> list[tuple[int, str]]:
        with psycopg.connect(PG_DSN) as conn:
            return conn.execute(f'SELECT version, name FROM "{pg_schema}".schema_migrations ORDER BY version').fetchall()

    assert [v for v, _ in await trio.to_thread.run_sync(versions)] == [v for v, _, _ in MIGRATIONS]
    async with open_postgres_store(PG_DSN, schema=pg_schema, max_connections=1) as again:  # a restart: nothing to do
        assert (await again.list_threads()).entries == []


async def test_appends_wake_listeners_on_other_nodes(pg_store: PostgresThreadStore) -> None:
    async with open_postgres_store(PG_DSN, schema=pg_store.schema, max_connections=1) as other_node:
        lease = await new_thread(pg_store)
        assert await pg_store.append(lease, records_of([user("wake up")], 1)) == 2
        with trio.fail_after(10):
            notice = await other_node.notifications.receive()
        assert notice == AppendNotice(lease.thread_id, 2)


async def test_an_unreachable_server_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_store_module, "CONNECT_TIMEOUT_S", 0.5)
    store = PostgresThreadStore("postgresql://nobody:secret@127.0.0.1:1/none", schema="x")
    with pytest.RaisesGroup(pytest.RaisesExc(ThreadStoreError, match="127.0.0.1:1/none"), flatten_subgroups=True) as caught:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                await nursery.start(store.run)
    assert "secret" not in str(caught.value.exceptions[0])
