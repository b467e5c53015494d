"""The PostgreSQL the tests use: `SPINDLE_TEST_PG_DSN` (default the local server). Tests that need
it skip when no server answers, unless `SPINDLE_REQUIRE_PG` is set (CI sets it): then they fail.
Each test works in a schema of its own, dropped after it (`pg_schema`, `pg_store` fixtures)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import trio

from spindle.persistence.pg_store import PostgresThreadStore, open_postgres_store

PG_DSN = os.environ.get("SPINDLE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
_pg_error: list[str] = []


def pg_or_skip() -> str:
    """The test DSN; a skip (or, with SPINDLE_REQUIRE_PG, a failure) if no server answers there."""
    if not _pg_error:
        try:
            with psycopg.connect(PG_DSN, connect_timeout=3):
                _pg_error.append("")
        except psycopg.Error as exc:
            _pg_error.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if _pg_error[0]:
        message = f"no PostgreSQL at SPINDLE_TEST_PG_DSN={PG_DSN}: {_pg_error[0]}"
        if os.environ.get("SPINDLE_REQUIRE_PG"):
            pytest.fail(f"{message} (SPINDLE_REQUIRE_PG is set)")
        pytest.skip(f"{message}; start one, or set SPINDLE_TEST_PG_DSN (SPINDLE_REQUIRE_PG=1 makes this a failure)")
    return PG_DSN


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    pg_or_skip()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield schema
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(drop_schema, schema)


@pytest.fixture
async def pg_store(pg_schema: str) -> AsyncIterator[PostgresThreadStore]:
    async with open_postgres_store(PG_DSN, schema=pg_schema, max_connections=4) as store:
        yield store


