"""`PostgresThreadStore`: the `ThreadStore` many nodes share, on PostgreSQL (13 or later).

psycopg 3 is blocking here: every call runs in a worker thread (`trio.to_thread`), at most
`max_connections` at once (a `CapacityLimiter` the size of the connection pool), and each call is
one transaction on one pooled connection. A dedicated listener thread holds its own connection,
`LISTEN`s on the schema's append channel, and hands each notification to the event loop
(`trio.from_thread`) as an `AppendNotice` on a bounded channel: a wake-up, never the data. When
the channel is full a notice is dropped (its reader re-reads from its ordinal anyway); after the
listener reconnects it sends `AppendNotice(None, 0)`: anything may have changed meanwhile.

Fencing is inside the append transaction: the thread's lease row is locked (`FOR UPDATE`) and
compared with the writer's lease before any record is inserted, so a stale writer commits
nothing. Lease times are the server's clock (`clock_timestamp()`), one clock for every node.

`run` is the service: it opens the pool, applies the migrations (`pg_schema`), starts the
listener, and is ready; `open_postgres_store` wraps it for a `with` block.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import msgspec
import psycopg
import psycopg_pool
import structlog
import trio
from psycopg import sql
from psycopg.types.json import Json
from trio_typing import TaskStatus

from spindle.protocol.ids import parse_thread_id

from .paths import ThreadStoreError, timestamp
from .pg_schema import DEFAULT_SCHEMA, check_schema_name, migrate, unavailable
from .query import POSTGRES, ThreadPage, ThreadQuery, classify_source
from .thread_store import (
    DEFAULT_LEASE_TTL_S,
    METADATA_FIELDS,
    READ_PAGE,
    FencedError,
    Lease,
    LeaseHeldError,
    MetadataUpdate,
    RolloutRecord,
    ThreadExistsError,
    ThreadMetadata,
    ThreadNotFoundError,
    batch_facts,
    check_batch,
    metadata_of,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 8
"""Pooled connections, and so worker threads in PostgreSQL calls at once."""
CONNECT_TIMEOUT_S = 10.0
STATEMENT_TIMEOUT_MS = 10_000
"""How long one statement may take, and a silent server may stay silent, before it fails."""
"""How long opening the pool (or waiting for a free connection) may take."""
NOTICE_CAPACITY = 256
"""Append notices queued for the store's reader before new ones are dropped."""
LISTEN_POLL_S = 0.25
"""How often the listener thread looks up from the socket to see whether it should stop."""
LISTEN_RETRY_S = 1.0
"""Pause before the listener reconnects after losing its connection."""
CLOSE_DEADLINE_S = 5.0

_META_COLUMNS = "id, path, created_at, updated_at, cwd, preview, model_provider, source, name, archived, forked_from_id"


@dataclass(frozen=True)
class AppendNotice:
    """Records were appended to `thread_id` (None: to any thread, the listener missed a while);
    the thread's next ordinal is now `next_ordinal`."""

    thread_id: str | None
    next_ordinal: int


_INSERT_ITEM = ("INSERT INTO items (thread_id, ordinal, ts, type, payload, metadata)"
                " VALUES (%s, %s, %s, %s, %s::json, %s::json)")


def _item_row(tid: str, record: RolloutRecord) -> tuple[object, ...]:
    extra = bytes(record.metadata).decode() if record.metadata is not None else None
    return (tid, record.ordinal, record.timestamp, record.type, bytes(record.payload).decode(), extra)


def _meta_of(row: Sequence[Any]) -> ThreadMetadata:
    tid, path, created, updated, cwd, preview, provider, source, name, archived, forked = row
    return ThreadMetadata(id=tid, path=path, created_at=created, updated_at=updated, cwd=cwd, preview=preview,
                          model_provider=provider, source=source, name=name, archived=bool(archived),
                          forked_from_id=forked)


def _lease_state(conn: psycopg.Connection, tid: str) -> str:
    row = conn.execute("SELECT node_id, epoch FROM leases WHERE thread_id = %s", (tid,)).fetchone()
    if row is None:
        return "the thread has no lease"
    if row[0] is None:
        return f"the lease was let go at epoch {row[1]}"
    return f"the current lease is node {row[0]!r}'s, epoch {row[1]}"


def _fence(conn: psycopg.Connection, lease: Lease, action: str = "write") -> None:
    """Lock the thread's lease row for the transaction; FencedError unless it is `lease`."""
    row = conn.execute("SELECT node_id, epoch FROM leases WHERE thread_id = %s FOR UPDATE", (lease.thread_id,)).fetchone()
    if row is None or row[0] != lease.node_id or row[1] != lease.epoch:
        raise FencedError(lease, _lease_state(conn, lease.thread_id), action=action)


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    """A node of the cluster as the `nodes` table has it (times in Unix seconds)."""

    node_id: str
    url: str
    started_at: float
    heartbeat_at: float


BOUNDED: dict[str, object] = {
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    "tcp_user_timeout": STATEMENT_TIMEOUT_MS,
}
"""Every pooled connection's bounds: a statement, or a server that stops answering (partitioned,
paused), fails within seconds instead of holding a worker thread, the writer and the lease
renewal forever."""


class PostgresThreadStore:
    """Threads, their records and leases in one PostgreSQL schema. Start it with `run`."""

    MUTABLE_FIELDS = METADATA_FIELDS

    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA, max_connections: int = MAX_CONNECTIONS) -> None:
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.channel = f"{self.schema}_appends"
        self._limiter = trio.CapacityLimiter(max_connections)
        self._pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=max_connections, open=False, timeout=CONNECT_TIMEOUT_S,
            configure=self._configure, name=f"spindle-{self.schema}", kwargs=BOUNDED,
        )
        self._send_notice, self.notifications = trio.open_memory_channel[AppendNotice](NOTICE_CAPACITY)
        """Wake-ups for appends (by any node): one reader, which fans them out."""

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        conn.commit()

    # --- life cycle -------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[PostgresThreadStore] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the pool, migrate, listen; ready once the listener listens. Runs until cancelled."""
        try:
            await self._call(self._open)
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listener)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            with trio.move_on_after(CLOSE_DEADLINE_S) as cleanup:
                cleanup.shield = True
                await trio.to_thread.run_sync(self._pool.close)
            self._send_notice.close()

    def _open(self) -> None:
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        with self._pool.connection() as conn:
            migrate(conn, self.schema)

    async def _call(self, job: Callable[[], T]) -> T:
        """`job` in a worker thread, one of at most `max_connections`; foreign errors mapped."""
        return await trio.to_thread.run_sync(self._guarded, job, limiter=self._limiter)

    def _guarded(self, job: Callable[[], T]) -> T:
        try:
            return job()
        except ThreadStoreError:
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise unavailable(self.dsn, exc) from None

    async def _tx(self, work: Callable[[psycopg.Connection], T]) -> T:
        """`work` in one transaction on a pooled connection, in a worker thread."""

        def job() -> T:
            with self._pool.connection() as conn, conn.transaction():
                return work(conn)

        return await self._call(job)

    # --- the listener -----------------------------------------------------
    async def _listener(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        ready: list[bool] = []
        while True:
            stop = threading.Event()

            def started() -> None:
                if not ready:
                    ready.append(True)
                    task_status.started()
                else:
                    self._notice(AppendNotice(None, 0))  # back after a gap: anything may have changed

            try:
                await trio.to_thread.run_sync(partial(self._listen, stop, token, started), limiter=trio.CapacityLimiter(1),
                                              abandon_on_cancel=True)  # type: ignore[call-arg]  # trio-typing predates it
            except (psycopg.Error, OSError) as exc:
                if not ready:
                    raise unavailable(self.dsn, exc) from None
                log.warning("the PostgreSQL listener lost its connection; reconnecting", error=str(exc))
            finally:
                stop.set()  # an abandoned listener thread sees it within LISTEN_POLL_S and ends
            await trio.sleep(LISTEN_RETRY_S)

    def _listen(self, stop: threading.Event, token: trio.lowlevel.TrioToken, started: Callable[[], None]) -> None:
        """The listener thread: LISTEN, then pass each notification to the loop until `stop`."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            trio.from_thread.run_sync(started, trio_token=token)
            while not stop.is_set():
                for note in conn.notifies(timeout=LISTEN_POLL_S):
                    tid, _, after = note.payload.partition(" ")
                    try:
                        trio.from_thread.run_sync(self._notice, AppendNotice(tid, int(after or 0)), trio_token=token)
                    except trio.RunFinishedError:
                        return

    def _notice(self, notice: AppendNotice) -> None:
        try:
            self._send_notice.send_nowait(notice)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a wake-up, not data: the reader re-reads from its ordinal

    # --- records ----------------------------------------------------------
    async def create(self, lease: Lease, head: RolloutRecord) -> ThreadMetadata:
        tid = parse_thread_id(lease.thread_id)
        meta = metadata_of(head, tid)
        kind, interactive = classify_source(meta.source)

        def work(conn: psycopg.Connection) -> ThreadMetadata:
            _fence(conn, lease)
            created = conn.execute(
                "INSERT INTO threads (id, created_at, updated_at, cwd, model_provider, source, source_kind, interactive,"
                " forked_from_id, next_ordinal) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING RETURNING id",
                (tid, meta.created_at, meta.updated_at, meta.cwd, meta.model_provider, Json(meta.source), kind,
                 int(interactive), meta.forked_from_id, head.ordinal + 1),
            ).fetchone()
            if created is None:
                raise ThreadExistsError(tid)
            conn.execute(_INSERT_ITEM, _item_row(tid, head))
            return meta

        return await self._tx(work)

    async def append(self, lease: Lease, records: Sequence[RolloutRecord]) -> int:
        tid = parse_thread_id(lease.thread_id)
        facts = batch_facts(records) if records else None
        rows = [_item_row(tid, r) for r in records]

        def work(conn: psycopg.Connection) -> int:
            _fence(conn, lease)
            row = conn.execute("SELECT next_ordinal FROM threads WHERE id = %s FOR UPDATE", (tid,)).fetchone()
            if row is None:
                raise ThreadNotFoundError(tid)
            if facts is None:
                return int(row[0])
            after = check_batch(tid, int(row[0]), records)
            with conn.cursor() as cur:
                cur.executemany(_INSERT_ITEM, rows)
            updated, preview = facts
            conn.execute(
                "UPDATE threads SET next_ordinal = %s, updated_at = %s,"
                " preview = CASE WHEN preview = '' THEN %s ELSE preview END WHERE id = %s",
                (after, updated, preview, tid),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{tid} {after}"))
            return after

        return await self._tx(work)

    async def read(self, thread_id: str, *, from_ordinal: int = 0, limit: int = READ_PAGE) -> list[RolloutRecord]:
        tid = parse_thread_id(thread_id)

        def work(conn: psycopg.Connection) -> list[RolloutRecord]:
            rows = conn.execute(
                "SELECT ordinal, ts, type, payload::text, metadata::text FROM items WHERE thread_id = %s"
                " AND ordinal >= %s ORDER BY ordinal LIMIT %s", (tid, from_ordinal, limit),
            ).fetchall()
            if not rows and conn.execute("SELECT 1 FROM threads WHERE id = %s", (tid,)).fetchone() is None:
                raise ThreadNotFoundError(tid)
            return [RolloutRecord(ordinal=o, timestamp=ts, type=t, payload=_raw(p), metadata=_raw(m) if m is not None else None)
                    for o, ts, t, p, m in rows]

        return await self._tx(work)

    async def next_ordinal(self, thread_id: str) -> int:
        tid = parse_thread_id(thread_id)

        def work(conn: psycopg.Connection) -> int:
            row = conn.execute("SELECT next_ordinal FROM threads WHERE id = %s", (tid,)).fetchone()
            if row is None:
                raise ThreadNotFoundError(tid)
            return int(row[0])

        return await self._tx(work)

    # --- metadata ---------------------------------------------------------
    async def list_threads(self, query: ThreadQuery | None = None) -> ThreadPage:
        query = query or ThreadQuery()
        statement, args = query.select(POSTGRES)
        rows = await self._tx(lambda conn: conn.execute(statement.encode(), args).fetchall())
        return query.page(rows)

    async def metadata(self, thread_id: str) -> ThreadMetadata:
        tid = parse_thread_id(thread_id)

        def work(conn: psycopg.Connection) -> ThreadMetadata:
            row = conn.execute(f"SELECT {_META_COLUMNS} FROM threads WHERE id = %s", (tid,)).fetchone()
            if row is None:
                raise ThreadNotFoundError(tid)
            return _meta_of(row)

        return await self._tx(work)

    async def update_metadata(self, thread_id: str, update: MetadataUpdate) -> ThreadMetadata:
        tid = parse_thread_id(thread_id)
        changes: dict[str, Any] = dict(update.changes)
        if "source" in changes:
            kind, interactive = classify_source(changes["source"])
            changes.update(source=Json(changes["source"]), source_kind=kind, interactive=int(interactive))
        if "archived" in changes:
            changes["archived"] = int(changes["archived"])
        sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes)

        def work(conn: psycopg.Connection) -> ThreadMetadata:
            if changes:
                statement = sql.SQL("UPDATE threads SET {} WHERE id = %s").format(sets)
                conn.execute(statement, [*changes.values(), tid])
            row = conn.execute(f"SELECT {_META_COLUMNS} FROM threads WHERE id = %s", (tid,)).fetchone()
            if row is None:
                raise ThreadNotFoundError(tid)
            return _meta_of(row)

        return await self._tx(work)

    async def archive(self, thread_id: str) -> None:
        await self.update_metadata(thread_id, MetadataUpdate(archived=True))

    async def unarchive(self, thread_id: str) -> None:
        await self.update_metadata(thread_id, MetadataUpdate(archived=False, updated_at=timestamp()))

    # --- leases -----------------------------------------------------------
    async def acquire(self, thread_id: str, node_id: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        tid = parse_thread_id(thread_id)

        def work(conn: psycopg.Connection) -> Lease:
            row = conn.execute(
                "INSERT INTO leases AS l (thread_id, node_id, epoch, expires_at)"
                " VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s))"
                " ON CONFLICT (thread_id) DO UPDATE SET node_id = excluded.node_id, epoch = l.epoch + 1,"
                " expires_at = excluded.expires_at WHERE l.node_id IS NULL OR l.expires_at <= clock_timestamp()"
                " RETURNING epoch, extract(epoch FROM expires_at)::float8",
                (tid, node_id, ttl_s),
            ).fetchone()
            if row is not None:
                return Lease(thread_id=tid, node_id=node_id, epoch=int(row[0]), expires_at=float(row[1]))
            held = conn.execute(
                "SELECT node_id, epoch, extract(epoch FROM expires_at)::float8 FROM leases WHERE thread_id = %s", (tid,)
            ).fetchone()
            holder, epoch, until = held if held is not None else ("another node", None, 0.0)
            raise LeaseHeldError(tid, f"node {holder!r}", epoch=epoch, expires_at=until)

        return await self._tx(work)

    async def renew(self, lease: Lease, ttl_s: float = DEFAULT_LEASE_TTL_S) -> Lease:
        def work(conn: psycopg.Connection) -> Lease:
            row = conn.execute(
                "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE thread_id = %s AND node_id = %s AND epoch = %s RETURNING extract(epoch FROM expires_at)::float8",
                (ttl_s, lease.thread_id, lease.node_id, lease.epoch),
            ).fetchone()
            if row is None:
                raise FencedError(lease, _lease_state(conn, lease.thread_id), action="renew")
            return replace(lease, expires_at=float(row[0]))

        return await self._tx(work)

    async def release(self, lease: Lease) -> None:
        await self._tx(lambda conn: conn.execute(
            "UPDATE leases SET node_id = NULL, expires_at = clock_timestamp()"
            " WHERE thread_id = %s AND node_id = %s AND epoch = %s", (lease.thread_id, lease.node_id, lease.epoch),
        ))


    # --- nodes ---------------------------------------------------------------
    async def heartbeat(self, node_id: str, url: str) -> None:
        """Say that `node_id` (reachable at `url`) is alive now."""
        await self._tx(lambda conn: conn.execute(
            "INSERT INTO nodes (node_id, url) VALUES (%s, %s) ON CONFLICT (node_id) DO UPDATE"
            " SET url = EXCLUDED.url, heartbeat_at = clock_timestamp()", (node_id, url)))

    async def nodes(self, *, max_age_s: float) -> list[NodeInfo]:
        """The nodes heard from within `max_age_s`, oldest first."""

        def work(conn: psycopg.Connection) -> list[NodeInfo]:
            rows = conn.execute(
                "SELECT node_id, url, extract(epoch FROM started_at), extract(epoch FROM heartbeat_at) FROM nodes"
                " WHERE heartbeat_at > clock_timestamp() - make_interval(secs => %s) ORDER BY started_at, node_id",
                (max_age_s,)).fetchall()
            return [NodeInfo(node_id=r[0], url=r[1], started_at=float(r[2]), heartbeat_at=float(r[3])) for r in rows]

        return await self._tx(work)

    async def lease_holder(self, thread_id: str, *, max_age_s: float) -> tuple[str, str] | None:
        """(node id, advertised URL) of the node whose unexpired lease holds `thread_id`, if that
        node was heard from within `max_age_s`; None when no live node holds it."""
        tid = parse_thread_id(thread_id)

        def work(conn: psycopg.Connection) -> tuple[str, str] | None:
            row = conn.execute(
                "SELECT l.node_id, n.url FROM leases l JOIN nodes n ON n.node_id = l.node_id WHERE l.thread_id = %s"
                " AND l.expires_at > clock_timestamp()"
                " AND n.heartbeat_at > clock_timestamp() - make_interval(secs => %s)", (tid, max_age_s)).fetchone()
            return None if row is None else (str(row[0]), str(row[1]))

        return await self._tx(work)

    async def reap_nodes(self, *, max_age_s: float) -> int:
        """Forget nodes not heard from within `max_age_s`; how many."""
        return await self._tx(lambda conn: conn.execute(
            "DELETE FROM nodes WHERE heartbeat_at < clock_timestamp() - make_interval(secs => %s)",
            (max_age_s,)).rowcount)

    async def leave(self, node_id: str) -> None:
        await self._tx(lambda conn: conn.execute("DELETE FROM nodes WHERE node_id = %s", (node_id,)))


def _raw(text: str) -> msgspec.Raw:
    return msgspec.Raw(text.encode())


@asynccontextmanager
async def open_postgres_store(dsn: str, *, schema: str = DEFAULT_SCHEMA,
                              max_connections: int = MAX_CONNECTIONS) -> AsyncIterator[PostgresThreadStore]:
    """A started store for the `async with` body; closed after it."""
    async with trio.open_nursery() as nursery:
        store = await nursery.start(PostgresThreadStore(dsn, schema=schema, max_connections=max_connections).run)
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()
