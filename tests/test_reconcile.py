"""The index reconciled with the files: rollouts written behind the store's back (the real Codex's
among them) are listed, changed, removed, archived; thread/list's filters, sorts and cursors."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from spindle.actors.runtime import ThreadManager
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure
from spindle.persistence import heads as heads_module
from spindle.persistence import scan as scan_module
from spindle.persistence import store as store_module
from spindle.persistence.query import InvalidThreadQuery, ThreadQuery
from spindle.persistence.reader import read_rollout
from spindle.persistence.store import LocalThreadStore, preview_of

REFERENCE = Path(__file__).parent / "fixtures" / "codex-0.169-rollouts"
LIVE = "01a1fc97-8a89-7f53-b8e1-6a189c77807a"  # two turns, then a revert segment file
PROBE = "01a1fc97-d4ab-71d2-aa31-10d750c39aac"
ARCHIVED = "01a1fc97-8be0-75c0-bcd2-f19fae9055f7"


def tid(n: int) -> str:
    return f"00000000-0000-7000-8000-{n:012d}"


def line(kind: str, payload: Any, at: str = "2026-11-20T10:00:00.000Z") -> str:
    return json.dumps({"timestamp": at, "type": kind, "payload": payload}) + "\n"


def user_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def write_rollout(
    home: Path, n: int, *, created: str = "2026-11-20T10:00:00.000Z", updated: str | None = None,
    day: str = "2026/11/20", text: str = "hello", source: Any = "cli", cwd: str = "/work",
    provider: str = "openai", archived: bool = False, before: str = "", middle: str = "", after: str = "",
) -> Path:
    """A small rollout: session_meta, the environment context, a user message, its last line at `updated`."""
    meta: dict[str, Any] = {"id": tid(n), "timestamp": created, "cwd": cwd, "model_provider": provider}
    if source is not None:
        meta["source"] = source
    folder = home / "archived_sessions" if archived else home / "sessions" / day
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rollout-{day.replace('/', '-')}T10-00-00-{tid(n)}.jsonl"
    body = before + line("session_meta", meta, created) + middle
    body += line("response_item", user_item("<environment_context>\n</environment_context>"), created)
    body += line("response_item", user_item(text), created) + after
    body += line("event_msg", {"type": "task_complete", "turn_id": "t"}, updated or created)
    path.write_text(body)
    return path


def count_head_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each file head the scan reads from now on (by its size)."""
    reads: list[int] = []
    real = heads_module.read_facts_fd

    def counting(fd: int, size: int, mtime_ns: int) -> Any:
        reads.append(size)
        return real(fd, size, mtime_ns)

    monkeypatch.setattr(heads_module, "read_facts_fd", counting)
    monkeypatch.setattr(scan_module, "read_facts_fd", counting)
    return reads


def copy_reference(home: Path) -> None:
    shutil.copytree(REFERENCE, home, dirs_exist_ok=True)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalThreadStore]:
    store = LocalThreadStore(tmp_path / "home")
    await store.open()
    yield store
    await store.aclose()


async def ids(store: LocalThreadStore, **query: Any) -> list[str]:
    return [e.id for e in (await store.list_threads(ThreadQuery(**query))).entries]


# --- reconciliation ----------------------------------------------------------


async def test_codex_rollouts_added_behind_the_stores_back_are_listed(store: LocalThreadStore) -> None:
    assert await ids(store) == []
    copy_reference(store.home)
    page = await store.list_threads()
    assert [e.id for e in page.entries] == [PROBE, LIVE]  # newest created first
    probe, live = page.entries
    assert (probe.preview, live.preview) == ("probe", "hello")
    assert probe.source_kind == "vscode" and probe.model_provider == "mock_provider" and probe.cwd == "/home/user/project"
    assert live.created_at == "2026-11-21T05:32:32.278Z"
    assert live.updated_at == "2026-11-21T05:32:48.051Z"  # the revert segment's last line
    assert live.path.endswith(f"05-32-32-{LIVE}.jsonl")  # the thread's first file: where resume reads from
    assert await ids(store, archived=True) == [ARCHIVED]
    assert (await store.entry(PROBE)) == probe


async def test_a_restarted_store_reads_nothing_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    copy_reference(home)
    first = LocalThreadStore(home)
    await first.open()
    await first.aclose()
    reads = count_head_reads(monkeypatch)
    again = LocalThreadStore(home)
    await again.open()
    assert await ids(again) == [PROBE, LIVE] and reads == []
    await again.aclose()


async def test_only_changed_folders_are_listed(store: LocalThreadStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for n, day in enumerate(("2026/11/01", "2026/11/20", "2026/11/21")):
        write_rollout(store.home, n, day=day)
    hour_ago = time.time() - 3600  # older than the racy window: these mtimes are trusted
    for folder in [store.home / "sessions", *store.home.glob("sessions/**/")]:
        os.utime(folder, (hour_ago, hour_ago))
    await store.reconcile()
    listed: list[str] = []
    real = scan_module._Scan._list
    monkeypatch.setattr(scan_module._Scan, "_list", lambda self, path, **kw: listed.append(path) or real(self, path, **kw))
    assert len(await ids(store)) == 3 and listed == []
    write_rollout(store.home, 9, day="2026/11/01")
    assert len(await ids(store)) == 4
    assert listed == [str(store.home / "sessions" / "2026" / "11" / "01")]


async def test_appending_moves_updated_at_and_the_order(store: LocalThreadStore) -> None:
    copy_reference(store.home)
    assert await ids(store, sort_key="updated_at") == [PROBE, LIVE]
    base = next(store.home.glob(f"sessions/*/*/*/rollout-*-{LIVE}.jsonl"))
    with base.open("a") as f:
        f.write(line("event_msg", {"type": "task_started", "turn_id": "u"}, "2026-11-22T08:00:00.000Z"))
    page = await store.list_threads(ThreadQuery(sort_key="updated_at"))
    assert [e.id for e in page.entries] == [LIVE, PROBE]
    assert page.entries[0].updated_at == "2026-11-22T08:00:00.000Z" and page.entries[0].preview == "hello"
    assert await ids(store) == [PROBE, LIVE]  # creation order is unchanged


async def test_appends_in_older_day_folders_wait_for_the_full_stat_pass(store: LocalThreadStore) -> None:
    old = write_rollout(store.home, 1, day="2026/11/01", created="2026-11-01T10:00:00.000Z")
    write_rollout(store.home, 2, day="2026/11/20", created="2026-11-20T10:00:00.000Z")
    write_rollout(store.home, 3, day="2026/11/21", created="2026-11-21T10:00:00.000Z")
    assert await ids(store, sort_key="updated_at") == [tid(3), tid(2), tid(1)]
    with old.open("a") as f:
        f.write(line("event_msg", {"type": "task_started", "turn_id": "u"}, "2026-11-30T00:00:00.000Z"))
    assert await ids(store, sort_key="updated_at") == [tid(3), tid(2), tid(1)]  # not stat'ed on every list
    await store.reconcile(full=True)
    assert await ids(store, sort_key="updated_at") == [tid(1), tid(3), tid(2)]


async def test_a_list_asks_the_background_pass_to_find_appends_in_older_folders(
    store: LocalThreadStore, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_rollout(store.home, 1, day="2026/11/01", created="2026-11-01T10:00:00.000Z")
    write_rollout(store.home, 2, day="2026/11/20", created="2026-11-20T10:00:00.000Z")
    write_rollout(store.home, 3, day="2026/11/21", created="2026-11-21T10:00:00.000Z")
    monkeypatch.setattr(store_module, "FULL_STAT_INTERVAL_S", 0)
    passed = trio.Event()
    real = store._reconcile

    async def watched(suspects: Any, *, full: bool, reset: bool = False) -> None:
        await real(suspects, full=full, reset=reset)
        if full:
            passed.set()

    monkeypatch.setattr(store, "_reconcile", watched)
    await nursery.start(store.run)
    with old.open("a") as f:
        f.write(line("event_msg", {"type": "task_started", "turn_id": "u"}, "2026-11-30T00:00:00.000Z"))
    await store.list_threads()  # asks for a full pass
    with trio.fail_after(10):
        await passed.wait()
    assert await ids(store, sort_key="updated_at") == [tid(1), tid(3), tid(2)]


async def test_removed_files_drop_out(store: LocalThreadStore) -> None:
    copy_reference(store.home)
    assert await ids(store) == [PROBE, LIVE]
    next(store.home.glob(f"sessions/*/*/*/rollout-*-{PROBE}.jsonl")).unlink()
    assert await ids(store) == [LIVE]
    assert await store.entry(PROBE) is None
    shutil.rmtree(store.home / "sessions")
    assert await ids(store) == []
    assert await ids(store, archived=True) == [ARCHIVED]


async def test_archiving_and_unarchiving_by_moving_files(store: LocalThreadStore) -> None:
    copy_reference(store.home)
    live = next(store.home.glob(f"sessions/*/*/*/rollout-*-{PROBE}.jsonl"))
    archived = store.home / "archived_sessions" / live.name
    assert await ids(store) == [PROBE, LIVE]
    live.rename(archived)
    assert await ids(store) == [LIVE]
    assert await ids(store, archived=True) == [PROBE, ARCHIVED]
    archived.rename(live)
    assert await ids(store) == [PROBE, LIVE]
    assert await ids(store, archived=True) == [ARCHIVED]


async def test_torn_last_line_foreign_lines_and_meta_not_first_are_still_listed(store: LocalThreadStore) -> None:
    torn = write_rollout(store.home, 1, text="torn", updated="2026-11-20T11:00:00.000Z")
    with torn.open("a") as f:
        f.write('{"timestamp":"2026-11-20T12:00:00.000Z","type":"response_it')
    foreign = (line("world_state", {"full": True}) + line("token_usage_record", {"usage": {}})
               + line("some_future_type", [1, 2, 3]) + "not json at all\n")
    write_rollout(store.home, 2, text="foreign", middle=foreign, after=foreign)
    write_rollout(store.home, 3, text="meta second", before=line("world_state", {"full": True}))
    entries = {e.id: e for e in (await store.list_threads()).entries}
    assert {i: e.preview for i, e in entries.items()} == {tid(1): "torn", tid(2): "foreign", tid(3): "meta second"}
    assert entries[tid(1)].updated_at == "2026-11-20T11:00:00.000Z"  # the last whole line's
    for n, text in ((1, "torn"), (2, "foreign"), (3, "meta second")):  # and each is read back
        read = read_rollout(Path(entries[tid(n)].path))
        assert read.meta.id == tid(n) and preview_of(read.source.items()) == text


async def test_the_preview_is_the_first_real_user_turn(store: LocalThreadStore) -> None:
    event = line("event_msg", {"type": "user_message", "message": "typed, as the event says"})
    write_rollout(store.home, 1, text="typed", after=event)
    write_rollout(store.home, 2, text="x" * 500)
    entries = {e.id: e for e in (await store.list_threads()).entries}
    assert entries[tid(1)].preview == "typed, as the event says"  # not the environment context
    assert entries[tid(2)].preview == "x" * 200


async def test_files_that_are_not_rollouts_are_skipped_with_one_warning(store: LocalThreadStore) -> None:
    write_rollout(store.home, 1)
    day = store.home / "sessions" / "2026" / "11" / "20"
    (day / "notes.txt").write_text("not a rollout\n")
    (day / f"rollout-2026-11-20T10-00-00-{tid(2)}.jsonl").write_text("not json\n")
    (day / f"rollout-2026-11-20T10-00-00-{tid(3)}.jsonl").write_text(line("event_msg", {"type": "task_started"}))
    (day / f"rollout-2026-11-20T10-00-00-{tid(4)}.jsonl").write_text("")  # being created: no warning
    with capture_logs() as logs:
        assert await ids(store) == [tid(1)]
        assert await ids(store) == [tid(1)]
        await store.reconcile(full=True)
    warned = sorted(Path(e["path"]).name for e in logs if e["event"] == "skipping a file that is not a rollout")
    assert warned == sorted(["notes.txt", f"rollout-2026-11-20T10-00-00-{tid(2)}.jsonl",
                             f"rollout-2026-11-20T10-00-00-{tid(3)}.jsonl"])


async def test_names_come_from_the_names_file(store: LocalThreadStore) -> None:
    copy_reference(store.home)
    assert [e.name for e in (await store.list_threads()).entries] == [None, None]
    with (store.home / "session_index.jsonl").open("a") as f:
        f.write(json.dumps({"id": LIVE, "thread_name": "Named by Codex", "updated_at": "x"}) + "\n")
    assert [e.name for e in (await store.list_threads()).entries] == [None, "Named by Codex"]
    assert await ids(store, search_term="named BY") == [LIVE]


async def test_use_state_db_only_skips_the_reconcile(store: LocalThreadStore) -> None:
    copy_reference(store.home)
    assert await ids(store, use_state_db_only=True) == []
    assert await ids(store, included_ids=[PROBE]) == []  # id filters answer from the index, as in Codex
    assert await ids(store) == [PROBE, LIVE]
    assert await ids(store, included_ids=[PROBE], use_state_db_only=True) == [PROBE]


async def test_concurrent_lists_share_one_reconcile(store: LocalThreadStore, monkeypatch: pytest.MonkeyPatch) -> None:
    copy_reference(store.home)
    scans = []
    real = store_module.scan

    def slow_scan(*args: Any, **kwargs: Any) -> Any:
        scans.append(1)
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "scan", slow_scan)
    results: list[list[str]] = []

    async def list_once() -> None:
        results.append(await ids(store))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(list_once)
    assert len(scans) == 1 and results == [[PROBE, LIVE]] * 5


async def test_spindle_threads_are_recorded_not_reread(runtime: ThreadManager, monkeypatch: pytest.MonkeyPatch) -> None:
    thread = await runtime.start_thread()
    await thread.ask("my own")
    await runtime.store.set_name(thread.thread_id, "mine")
    await thread.shutdown_and_wait()  # its last index update is made
    reads = count_head_reads(monkeypatch)
    [entry] = (await runtime.list_threads()).entries
    assert (entry.id, entry.preview, entry.name, entry.source_kind) == (thread.thread_id, "my own", "mine", "vscode")
    assert reads == []
    await runtime.store.reconcile(full=True)
    assert reads == [] and (await runtime.list_threads()).entries == [entry]


# --- filters, sorts, cursors --------------------------------------------------


async def test_source_kinds(store: LocalThreadStore) -> None:
    sources = {1: "cli", 2: "vscode", 3: "exec", 4: {"subagent": "review"},
               5: {"subagent": {"thread_spawn": {"parent_thread_id": tid(1), "depth": 1}}},
               6: "spindle", 7: "mystery", 8: None, 9: "mcp", 10: {"custom": "atlas"}}
    for n, source in sources.items():
        write_rollout(store.home, n, source=source, created=f"2026-11-20T10:00:{n:02d}.000Z")

    async def kinds(*wanted: str) -> set[int]:
        return {int(i[-12:]) for i in await ids(store, source_kinds=wanted, limit=100)}

    assert await kinds() == {1, 2, 6, 8, 10}  # interactive, Spindle's legacy source and a missing one included
    assert await kinds("exec") == {3}
    assert await kinds("subAgent") == {4, 5}
    assert await kinds("subAgentReview", "subAgentThreadSpawn") == {4, 5}
    assert await kinds("subAgentReview") == {4}
    assert await kinds("appServer") == {6, 9}
    assert await kinds("unknown") == {7, 10}
    assert await kinds("cli", "vscode") == {1, 2, 8}


async def test_search_cwd_provider_and_id_filters(store: LocalThreadStore) -> None:
    write_rollout(store.home, 1, text="Fix the Ünïcode bug", cwd="/a", provider="openai")
    write_rollout(store.home, 2, text="write the manual", cwd="/b", provider="local")
    write_rollout(store.home, 3, text="unrelated", cwd="/c", provider="openai")
    await store.reconcile()
    await store.set_name(tid(3), "Docs, named")

    async def found(**query: Any) -> set[int]:
        return {int(i[-12:]) for i in await ids(store, **query)}

    assert await found(search_term="üNÏCODE") == {1}
    assert await found(search_term="docs") == {3}  # the title is the name where there is one
    assert await found(search_term="write") == {2}
    assert await found(search_term="unrelated") == set()  # a named thread's preview is not its title
    assert await found(cwd="/a") == {1}
    assert await found(cwd=["/a", "/b"]) == {1, 2}
    assert await found(model_providers=["openai"]) == {1, 3}
    assert await found(model_providers=[]) == {1, 2, 3}
    assert await found(included_ids=[tid(1), tid(2)], excluded_ids=[tid(2)]) == {1}
    assert await found(included_ids=[]) == set()
    assert await found(excluded_ids=[tid(1)]) == {2, 3}


@pytest.mark.parametrize("sort_key", ["created_at", "updated_at", "recency_at"])
@pytest.mark.parametrize("direction", ["asc", "desc"])
async def test_cursor_pages_are_stable_for_every_sort(store: LocalThreadStore, sort_key: str, direction: str) -> None:
    stamps = {1: ("10:00:01", "12:00:05"), 2: ("10:00:02", "12:00:01"), 3: ("10:00:02", "12:00:03"),
              4: ("10:00:04", "12:00:03"), 5: ("10:00:05", "12:00:09"), 6: ("10:00:06", "12:00:00"),
              7: ("10:00:07", "12:00:07")}  # ties in both keys, broken by id
    for n, (created, updated) in stamps.items():
        write_rollout(store.home, n, created=f"2026-11-20T{created}.000Z", updated=f"2026-11-20T{updated}.000Z")
    column = 0 if sort_key == "created_at" else 1  # Spindle's recency is its update time
    expected = sorted(stamps, key=lambda n: (stamps[n][column], tid(n)), reverse=direction == "desc")
    query = ThreadQuery(limit=3, sort_key=sort_key, sort_direction=direction)
    pages = [await store.list_threads(query)]
    while pages[-1].next_cursor:
        pages.append(await store.list_threads(ThreadQuery(limit=3, sort_key=sort_key, sort_direction=direction, cursor=pages[-1].next_cursor)))
    assert [int(e.id[-12:]) for p in pages for e in p.entries] == expected and len(pages) == 3
    back = ThreadQuery(limit=10, sort_key=sort_key, sort_direction="asc" if direction == "desc" else "desc",
                       cursor=pages[1].backwards_cursor)
    assert [int(e.id[-12:]) for e in (await store.list_threads(back)).entries] == expected[:3][::-1]
    other_key = "recency_at" if sort_key == "updated_at" else "updated_at"
    with pytest.raises(InvalidThreadQuery, match="made for sort key"):
        ThreadQuery(sort_key=other_key, cursor=pages[0].next_cursor)


def test_bad_queries_are_refused() -> None:
    for bad, match in (({"limit": 0}, "limit"), ({"sort_key": "title"}, "created_at, updated_at, recency_at, section_position"),
                       ({"sort_key": "section_position"}, "section-position sorting requires a section filter"),
                       ({"sort_direction": "up"}, "asc, desc"), ({"source_kinds": ["bogus"]}, "unknown source kind"),
                       ({"included_ids": ["nope"]}, "invalid thread id"), ({"excluded_ids": [tid(n) for n in range(101)]}, "at most 100"),
                       ({"cursor": "garbage!"}, "invalid cursor")):
        with pytest.raises(InvalidThreadQuery, match=match):
            ThreadQuery(**bad)


# --- over the app-server --------------------------------------------------------


async def test_thread_list_over_the_app_server(client: RpcClient, runtime_home: Path) -> None:
    copy_reference(runtime_home)
    listed = await client.call("thread/list", {})
    assert [t["id"] for t in listed["data"]] == [PROBE, LIVE]
    assert listed["data"][1]["preview"] == "hello" and listed["nextCursor"] is None and listed["backwardsCursor"]
    first = await client.call("thread/list", {"limit": 1, "sortKey": "updated_at", "sortDirection": "asc"})
    assert [t["id"] for t in first["data"]] == [LIVE]
    rest = await client.call("thread/list", {"limit": 1, "sortKey": "updated_at", "sortDirection": "asc", "cursor": first["nextCursor"]})
    assert [t["id"] for t in rest["data"]] == [PROBE]
    assert (await client.call("thread/list", {"sourceKinds": ["exec"]}))["data"] == []
    ignored = {"projectId": None, "currentAccountOnly": True, "parentThreadId": LIVE, "originators": []}
    assert [t["id"] for t in (await client.call("thread/list", ignored))["data"]] == [PROBE, LIVE]
    # Spindle has no sections: every thread is unsectioned, none is in a section
    assert [t["id"] for t in (await client.call("thread/list", {"sectionId": None}))["data"]] == [PROBE, LIVE]
    assert (await client.call("thread/list", {"sectionId": "pinned"}))["data"] == []
    assert (await client.call("thread/list", {"sectionId": "pinned", "sortKey": "section_position"}))["data"] == []
    recent = await client.call("thread/list", {"sortKey": "recency_at", "sortDirection": "asc"})
    assert [t["id"] for t in recent["data"]] == [LIVE, PROBE]  # as updated_at


@pytest.mark.parametrize("params", [
    {"sortKey": "title"}, {"sortKey": "section_position"}, {"sortKey": "section_position", "sectionId": None},
    {"sortDirection": "sideways"}, {"sourceKinds": ["bogus"]},
    {"includedThreadIds": ["not-a-uuid"]}, {"excludedThreadIds": [tid(n) for n in range(101)]},
    {"cursor": "garbage"}, {"originators": ["codex_vscode"]}, {"limit": 0}, {"cwd": 5},
])
async def test_bad_thread_list_params_are_refused(client: RpcClient, params: dict[str, Any]) -> None:
    with pytest.raises(RpcFailure) as info:
        await client.call("thread/list", params)
    assert info.value.code == -32602


@pytest.fixture
def runtime_home(tmp_path: Path) -> Path:
    """CODEX_HOME of the `server` fixture's runtime."""
    return tmp_path / "home"


def test_the_scan_reads_only_the_head_and_tail_of_a_big_rollout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_rollout(tmp_path, 1, text="first", after=line("response_item", user_item("y" * 10_000)) * 300)
    read: list[int] = []
    real_read, real_pread = os.read, os.pread
    monkeypatch.setattr(heads_module.os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
    monkeypatch.setattr(heads_module.os, "pread", lambda fd, n, at: read.append(n) or real_pread(fd, n, at))
    st = os.stat(path)
    facts = heads_module.read_facts(str(path), st.st_size, st.st_mtime_ns)
    monkeypatch.undo()
    assert facts.preview == "first" and facts.head_done and facts.updated_at == "2026-11-20T10:00:00.000Z"
    assert st.st_size > 3_000_000 and sum(read) <= heads_module.HEAD_CHUNK + heads_module.TAIL_BYTES


def test_a_folder_changed_within_the_racy_window_is_listed_again(tmp_path: Path) -> None:
    write_rollout(tmp_path, 1)
    day = tmp_path / "sessions" / "2026" / "11" / "20"
    first = scan_module.scan(str(tmp_path), scan_module.Known())
    before = os.stat(day)
    write_rollout(tmp_path, 2)
    os.utime(day, ns=(before.st_atime_ns, before.st_mtime_ns))  # a coarse clock: the second file left the mtime as it was
    files = {str(day): {os.path.basename(c.path): c.known for c in first.changes}}
    known = scan_module.Known(dirs=first.dirs, subdirs=first.subdirs, files=files, names_stamp=first.names_stamp)
    second = scan_module.scan(str(tmp_path), known)
    assert [c.facts.thread_id for c in second.changes if c.facts] == [tid(2)]


async def test_names_and_dates_no_rule_foresaw_never_stop_the_store(store: LocalThreadStore) -> None:
    day = os.fsencode(store.home / "sessions" / "2026" / "11" / "20")
    os.makedirs(day, exist_ok=True)
    Path(os.fsdecode(os.path.join(day, b"rollout-\xff.jsonl"))).write_text(  # not UTF-8
        line("session_meta", {"id": tid(1), "timestamp": "2026-11-20T10:00:00.000Z", "cwd": "/w"}))
    os.mkdir(os.path.join(os.path.dirname(day), b"\xfe"))
    os.mkdir(os.path.join(os.path.dirname(day), b"two\nlines"))
    write_rollout(store.home, 2, created="9999-12-31T23:59:59-01:00", updated="9999-12-31T23:59:59-01:00")
    write_rollout(store.home, 3, text="fine")
    with capture_logs() as logs:
        entries = {e.id: e for e in (await store.list_threads()).entries}
    assert set(entries) == {tid(2), tid(3)}
    assert sum("not one line of UTF-8" in e["event"] for e in logs) == 3
