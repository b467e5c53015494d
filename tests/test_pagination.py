"""Paginated history: thread/turns/list, thread/items/list, thread/items/read, and excludeTurns."""

from __future__ import annotations

from typing import Any

import pytest

from spindle.actors.appserver import AppServer
from spindle.actors.appserver.pages import defer_output
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, in_memory
from spindle.protocol.appserver.v2items import CommandExecutionThreadItem
from spindle.protocol.appserver.v2pages import ThreadItemOutputDeferral

from .test_app_server import start_thread


async def thread_with_turns(client: RpcClient, n: int) -> tuple[str, list[str]]:
    thread = await start_thread(client)
    ids = [(await client.run_turn(thread["id"], f"turn {k}"))["id"] for k in range(n)]
    return thread["id"], ids


async def turns_list(client: RpcClient, thread_id: str, **params: Any) -> dict[str, Any]:
    return await client.call("thread/turns/list", {"threadId": thread_id, **params})


async def all_turn_ids(client: RpcClient, thread_id: str, **params: Any) -> list[str]:
    """Every page from the first, following nextCursor."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await turns_list(client, thread_id, cursor=cursor, **params)
        ids += [turn["id"] for turn in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            return ids


async def invalid_params(client: RpcClient, method: str, params: dict[str, Any]) -> str:
    with pytest.raises(RpcFailure) as err:
        await client.call(method, params)
    assert err.value.code == -32602, err.value.message
    return err.value.message


# --- thread/turns/list ------------------------------------------------------------


async def test_turns_page_newest_first_by_default_and_both_ways(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 5)
    first = await turns_list(client, tid, limit=2)
    assert [t["id"] for t in first["data"]] == [ids[4], ids[3]]
    assert first["nextCursor"] and first["backwardsCursor"]
    second = await turns_list(client, tid, limit=2, cursor=first["nextCursor"])
    assert [t["id"] for t in second["data"]] == [ids[2], ids[1]]
    assert await all_turn_ids(client, tid, limit=2) == ids[::-1]
    assert await all_turn_ids(client, tid, limit=2, sortDirection="asc") == ids
    # the backwards cursor, sent with the opposite direction, includes its anchor again
    back = await turns_list(client, tid, limit=10, cursor=second["backwardsCursor"], sortDirection="asc")
    assert [t["id"] for t in back["data"]] == ids[2:]
    assert back["nextCursor"] is None
    last = await turns_list(client, tid, limit=10, cursor=second["nextCursor"])
    assert [t["id"] for t in last["data"]] == [ids[0]] and last["nextCursor"] is None


async def test_turns_items_view(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 2)
    summary = (await turns_list(client, tid, limit=1))["data"][0]
    assert summary["id"] == ids[1] and summary["itemsView"] == "summary" and summary["status"] == "completed"
    assert [item["type"] for item in summary["items"]] == ["userMessage", "agentMessage"]
    assert summary["items"][1]["text"] == "echo: turn 1"
    bare = (await turns_list(client, tid, limit=1, itemsView="notLoaded"))["data"][0]
    assert bare["items"] == [] and bare["itemsView"] == "notLoaded" and bare["status"] == "completed"
    full = (await turns_list(client, tid, limit=1, itemsView="full"))["data"][0]
    read = await client.call("thread/read", {"threadId": tid, "includeTurns": True})
    assert full["itemsView"] == "full" and full["items"] == read["thread"]["turns"][1]["items"]


async def test_turns_list_before_the_first_turn_is_refused_as_codex_does(client: RpcClient) -> None:
    thread = await start_thread(client)
    for method in ("thread/turns/list", "thread/items/list"):
        with pytest.raises(RpcFailure) as err:
            await client.call(method, {"threadId": thread["id"], "limit": 1})
        assert err.value.code == -32600
        assert err.value.message == (f"thread {thread['id']} is not materialized yet; {method} is unavailable before first user message")
    unknown = "00000000-0000-7000-8000-000000000000"
    with pytest.raises(RpcFailure, match=f"no rollout found for thread id {unknown}"):
        await turns_list(client, unknown)


async def test_bad_turn_cursors_are_invalid_params(client: RpcClient) -> None:
    tid, _ = await thread_with_turns(client, 3)
    other, _ = await thread_with_turns(client, 2)
    foreign = (await turns_list(client, other, limit=1))["nextCursor"]
    assert "another thread" in await invalid_params(client, "thread/turns/list", {"threadId": tid, "cursor": foreign})
    for garbage in ("garbage", "eyJ4IjoxfQ"):
        await invalid_params(client, "thread/turns/list", {"threadId": tid, "cursor": garbage})
    items_cursor = (await client.call("thread/items/list", {"threadId": tid, "limit": 1}))["nextCursor"]
    await invalid_params(client, "thread/turns/list", {"threadId": tid, "cursor": items_cursor})


async def test_rollback_drops_turns_from_pages_and_their_cursors(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 4)
    newest = await turns_list(client, tid, limit=1)
    await client.call("thread/rollback", {"threadId": tid, "numTurns": 1})
    assert await all_turn_ids(client, tid, sortDirection="asc") == ids[:3]
    message = await invalid_params(client, "thread/turns/list", {"threadId": tid, "cursor": newest["backwardsCursor"]})
    assert "no longer present" in message
    read = await client.call("thread/read", {"threadId": tid, "includeTurns": True})
    assert [t["id"] for t in read["thread"]["turns"]] == ids[:3]


async def test_a_stored_thread_pages_from_its_rollout(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 3)
    mark = len(client.notifications)
    await client.call("thread/unsubscribe", {"threadId": tid})
    await client.wait_for("thread/closed", lambda p: p["threadId"] == tid, after=mark)
    assert await all_turn_ids(client, tid, limit=2) == ids[::-1]
    items = await client.call("thread/items/list", {"threadId": tid, "turnId": ids[1]})
    assert [e["item"]["type"] for e in items["data"]] == ["userMessage", "agentMessage"]


# --- thread/items/list and thread/items/read --------------------------------------


async def all_items(client: RpcClient, thread_id: str, **params: Any) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    cursor = params.pop("cursor", None)
    while True:
        page = await client.call("thread/items/list", {"threadId": thread_id, "cursor": cursor, **params})
        got += [(entry["turnId"], entry["item"]["id"]) for entry in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            return got


async def test_items_page_across_the_thread_both_ways(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 3)
    first = await client.call("thread/items/list", {"threadId": tid, "limit": 2})
    assert [(e["turnId"], e["item"]["type"]) for e in first["data"]] == [(ids[0], "userMessage"), (ids[0], "agentMessage")]
    forward = await all_items(client, tid, limit=4)
    assert [turn for turn, _ in forward] == [ids[0], ids[0], ids[1], ids[1], ids[2], ids[2]]
    assert await all_items(client, tid, limit=1, sortDirection="desc") == forward[::-1]
    assert await all_items(client, tid, limit=100) == forward
    second = await client.call("thread/items/list", {"threadId": tid, "limit": 2, "cursor": first["nextCursor"]})
    assert [(e["turnId"], e["item"]["id"]) for e in second["data"]] == forward[2:4]
    back = await client.call("thread/items/list", {"threadId": tid, "cursor": second["backwardsCursor"], "sortDirection": "desc"})
    assert [(e["turnId"], e["item"]["id"]) for e in back["data"]] == forward[2::-1]


async def test_items_of_one_turn_and_item_anchors(server: AppServer) -> None:
    async with in_memory(server) as client:
        await client.initialize(experimental=True)
        await items_of_one_turn_and_item_anchors(client)


async def items_of_one_turn_and_item_anchors(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 3)
    one = await all_items(client, tid, turnId=ids[1], limit=1)
    assert [turn for turn, _ in one] == [ids[1], ids[1]]
    user_item, agent_item = one[0][1], one[1][1]
    after = await client.call("thread/items/list", {"threadId": tid, "turnId": ids[1], "cursor": {"type": "item", "itemId": user_item}})
    assert [e["item"]["id"] for e in after["data"]] == [agent_item] and after["nextCursor"] is None
    before = await client.call("thread/items/list", {"threadId": tid, "turnId": ids[1], "sortDirection": "desc",
                                                     "cursor": {"type": "item", "itemId": agent_item}})
    assert [e["item"]["id"] for e in before["data"]] == [user_item]
    read = await client.call("thread/items/read", {"threadId": tid, "turnId": ids[1], "itemIds": [agent_item, user_item]})
    assert [e["item"]["id"] for e in read["data"]] == [user_item, agent_item]


async def test_bad_item_cursors_are_invalid_params(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 2)
    other, _ = await thread_with_turns(client, 2)
    foreign = (await client.call("thread/items/list", {"threadId": other, "limit": 1}))["nextCursor"]
    await invalid_params(client, "thread/items/list", {"threadId": tid, "cursor": foreign})
    await invalid_params(client, "thread/items/list", {"threadId": tid, "cursor": "%%%"})
    anchor = {"type": "item", "itemId": "nope"}
    assert "turnId" in await invalid_params(client, "thread/items/list", {"threadId": tid, "cursor": anchor})
    await invalid_params(client, "thread/items/list", {"threadId": tid, "turnId": ids[0], "cursor": anchor})
    await invalid_params(client, "thread/items/list", {"threadId": tid, "turnId": "no-such-turn"})
    whole = (await client.call("thread/items/list", {"threadId": tid, "limit": 1}))["nextCursor"]
    await invalid_params(client, "thread/items/list", {"threadId": tid, "turnId": ids[0], "cursor": whole})


def test_deferred_output_leaves_out_successful_command_output() -> None:
    ran = CommandExecutionThreadItem(id="c", command="ls", cwd="/", status="completed", aggregated_output="a\nb\n", exit_code=0)
    failed = CommandExecutionThreadItem(id="f", command="ls", cwd="/", status="failed", aggregated_output="boom", exit_code=1)
    ask = ThreadItemOutputDeferral(command_execution=True)
    item, deferred = defer_output(ran, ask)
    assert deferred and isinstance(item, CommandExecutionThreadItem) and item.aggregated_output is None
    assert defer_output(failed, ask) == (failed, False)
    assert defer_output(ran, ThreadItemOutputDeferral()) == (ran, False)


# --- excludeTurns -----------------------------------------------------------------------


async def test_resume_and_fork_honour_exclude_turns(client: RpcClient) -> None:
    tid, ids = await thread_with_turns(client, 2)
    resumed = await client.call("thread/resume", {"threadId": tid, "excludeTurns": True})
    assert resumed["thread"]["turns"] == []
    resumed = await client.call("thread/resume", {"threadId": tid})
    assert [t["id"] for t in resumed["thread"]["turns"]] == ids
    forked = await client.call("thread/fork", {"threadId": tid, "excludeTurns": True})
    assert forked["thread"]["turns"] == []
    assert await all_turn_ids(client, forked["thread"]["id"], sortDirection="asc") == ids


async def test_a_rollback_while_a_page_is_read_is_a_clear_error(
    client: RpcClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spindle.actors.appserver.turns import IndexedTurns

    tid, _ = await thread_with_turns(client, 4)
    real = IndexedTurns.turns

    async def rolled_back_meanwhile(self: IndexedTurns, positions: Any) -> Any:
        self.index.roll_back(3)  # what a thread/rollback does to the index while the page waits on its read
        return await real(self, positions)

    monkeypatch.setattr(IndexedTurns, "turns", rolled_back_meanwhile)
    message = await invalid_params(client, "thread/turns/list", {"threadId": tid, "limit": 4})
    assert "changed while the page was read" in message
