"""`spindle export` and `spindle import`: a thread between a store and a Codex JSONL rollout.

The store is CODEX_HOME's files by default (`--store DIR` for another home), or PostgreSQL
(`--store postgresql://...`, in `--schema`). The work is `persistence.transfer`'s; the flags are
in `main.py`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from spindle.actors.runtime.config import codex_home
from spindle.persistence.local_adapter import LocalStoreAdapter
from spindle.persistence.store import LocalThreadStore
from spindle.persistence.thread_store import ThreadStore
from spindle.persistence.transfer import export_thread, import_thread
from spindle.protocol.ids import parse_thread_id

PG_SCHEMES = ("postgresql://", "postgres://")


@asynccontextmanager
async def open_store(url: str | None, schema: str, home: Path) -> AsyncIterator[ThreadStore]:
    """PostgreSQL at `url` if it is a postgresql:// DSN, else the files under `home`."""
    if url is not None and url.startswith(PG_SCHEMES):
        from spindle.persistence.pg_store import open_postgres_store

        async with open_postgres_store(url, schema=schema, max_connections=2) as pg:
            yield pg
        return
    local = LocalThreadStore(home)
    adapter = LocalStoreAdapter(local)
    try:
        yield adapter
    finally:
        with trio.CancelScope(shield=True):
            await adapter.aclose()
            await local.aclose()


async def _run(args: argparse.Namespace, home: Path) -> int:
    async with open_store(args.store, args.schema, home) as store:
        if args.command == "export":
            await export_thread(store, args.thread_id, sys.stdout.buffer)
        else:
            meta = await import_thread(store, args.file)
            sys.stderr.write(f"imported thread {meta.id}\n")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.command == "export":
        try:
            args.thread_id = parse_thread_id(args.thread_id)
        except ValueError as exc:
            sys.stderr.write(f"spindle export: {exc}\n")
            return 2
    home = Path(args.store).expanduser() if args.store else codex_home()
    return trio.run(_run, args, home)
