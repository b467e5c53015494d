"""The PostgreSQL store's schema: versioned migrations, applied at start-up, and how errors read.

Each migration runs once, in order, recorded in `schema_migrations`. All of them run in one
transaction that first takes a transaction-level advisory lock (`pg_advisory_xact_lock`) keyed
by the schema's name, so nodes starting at once apply them one after another: the first applies
them, the others find them applied. A database whose schema is newer than this code is refused.

Timestamps are kept as the text rollouts carry (`2025-01-31T12:00:00.000Z`, UTC, which sorts
as time does); ids and those timestamps use the "C" collation, so rows sort byte by byte as in the
SQLite index, and a `thread/list` cursor means the same in both. Payloads are `json`, which keeps
the text as written (key order, spacing, `\\u0000`): a thread exported comes back byte for byte.
Blocking functions: the store calls them in worker threads.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .paths import ThreadStoreError, ThreadStoreUnavailableError

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "threads, items and leases", """
CREATE TABLE threads (
    id text COLLATE "C" PRIMARY KEY,
    path text NOT NULL DEFAULT '',
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    cwd text NOT NULL DEFAULT '',
    preview text NOT NULL DEFAULT '',
    model_provider text NOT NULL DEFAULT '',
    source json,
    source_kind text NOT NULL DEFAULT 'unknown',
    interactive integer NOT NULL DEFAULT 0,
    forked_from_id text,
    name text,
    archived integer NOT NULL DEFAULT 0,
    next_ordinal bigint NOT NULL DEFAULT 0
);
CREATE INDEX threads_by_created ON threads (archived, created_at, id);
CREATE INDEX threads_by_updated ON threads (archived, updated_at, id);
CREATE TABLE items (
    thread_id text COLLATE "C" NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    ordinal bigint NOT NULL,
    ts text NOT NULL,
    type text NOT NULL,
    payload json NOT NULL,
    metadata json,
    PRIMARY KEY (thread_id, ordinal)
);
CREATE TABLE leases (
    thread_id text COLLATE "C" PRIMARY KEY,
    node_id text,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
"""),
    (2, "nodes", """
CREATE TABLE nodes (
    node_id text COLLATE "C" PRIMARY KEY,
    url text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""),
)
"""(version, what it does, its SQL). Append only: a released migration is never edited."""

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
DEFAULT_SCHEMA = "spindle"


def check_schema_name(schema: str) -> str:
    if not SCHEMA_NAME.match(schema):
        raise ThreadStoreError(f"invalid PostgreSQL schema name {schema!r}: use lower-case letters, digits and _")
    return schema


def migrate(conn: psycopg.Connection, schema: str) -> int:
    """Bring `schema` up to the latest version (creating it if need be); the version it is at.
    Safe to run from many processes at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"spindle-migrations:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {version for (version,) in conn.execute("SELECT version FROM schema_migrations")}
        latest = MIGRATIONS[-1][0]
        if applied and max(applied) > latest:
            raise ThreadStoreUnavailableError(
                f"the PostgreSQL schema {schema!r} is at version {max(applied)}, newer than this Spindle knows"
                f" ({latest}): upgrade Spindle, or use another schema"
            )
        for version, name, ddl in MIGRATIONS:
            if version not in applied:
                conn.execute(ddl.encode())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
    return latest


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    host, port, db = parts.get("host", "localhost"), parts.get("port", "5432"), parts.get("dbname", "")
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{db}"


def unavailable(dsn: str, exc: Exception) -> ThreadStoreUnavailableError:
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ThreadStoreUnavailableError(
        f"the PostgreSQL thread store at {safe_dsn(dsn)} failed: {cause}; check that the server is running and"
        " reachable, and that the DSN's user may use the database"
    )
