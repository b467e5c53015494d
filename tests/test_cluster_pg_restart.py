"""PostgreSQL restarted under a node: the node reconnects, a turn meanwhile may fail with a clear
error, and nothing it acknowledged is lost; the thread keeps its one writer.

It restarts the server at SPINDLE_TEST_PG_DSN with Debian's `pg_ctlcluster` (so it needs root and
that tool, as CI has); elsewhere it skips, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from spindle.actors.runtime import TurnError, open_runtime
from spindle.actors.runtime.cluster import Cluster
from spindle.persistence.pg_store import PostgresThreadStore, open_postgres_store
from spindle.protocol.config import Config

from .pg_helpers import PG_DSN
from .test_cluster import node_config, stored, user_texts


def cluster_of(dsn: str) -> tuple[str, str] | None:
    """(version, name) of the local Debian cluster serving `dsn`'s port, if there is one."""
    port = str(urlsplit(dsn).port or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return version, name
    return None


def restart_postgres() -> None:
    found = cluster_of(PG_DSN)
    assert found is not None
    subprocess.run(["pg_ctlcluster", *found, "restart"], check=True, capture_output=True)


can_restart = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or cluster_of(PG_DSN) is None,
    reason="restarting PostgreSQL needs root and Debian's pg_ctlcluster serving SPINDLE_TEST_PG_DSN",
)


@can_restart
async def test_a_node_rides_out_a_postgresql_restart(
    make_config: Callable[..., Config], pg_store: PostgresThreadStore, tmp_path: Path
) -> None:
    acknowledged = []
    async with open_runtime(node_config(make_config, tmp_path / "a"), cluster=Cluster(pg_store, "node-a")) as a:
        thread = await a.start_thread()
        await thread.ask("before")
        acknowledged.append("before")
        await trio.to_thread.run_sync(restart_postgres)
        failures = []
        for text in ("during", "after", "later"):
            try:
                await thread.ask(text)
                acknowledged.append(text)
            except TurnError as exc:
                failures.append(str(exc))
        with trio.fail_after(30):
            while True:  # the node writes again once the store is back
                try:
                    await thread.ask("at last")
                    acknowledged.append("at last")
                    break
                except TurnError as exc:
                    failures.append(str(exc))
                    await trio.sleep(0.5)
        assert a.running(thread.thread_id) is thread  # never dropped: its lease held throughout
    for failure in failures:
        assert "thread store" in failure or "PostgreSQL" in failure, failure
    async with open_postgres_store(PG_DSN, schema=pg_store.schema) as fresh:
        records = await stored(fresh, thread.thread_id)
    said = user_texts(records)
    assert [text for text in said if text in acknowledged] == acknowledged
    assert [record.ordinal for record in records] == list(range(len(records)))
