"""The request path under hostile input and stuck threads: every request with a usable id is
answered, deep nesting is refused without recursion, answers wait for a slow client instead of
being dropped, and a stuck thread holds up only its own requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from spindle.actors.appserver import AppServer, connection, transport
from spindle.actors.runtime import handle as handle_module
from spindle.actors.runtime.manager import open_runtime
from spindle.actors.runtime.thread import ThreadActor
from spindle.actors.testing.mock_model import MockModel
from spindle.actors.testing.rpc_client import (
    RpcClient,
    RpcFailure,
    subprocess_server,
    write_config,
)
from spindle.protocol.appserver.jsonrpc import (
    MAX_NESTING,
    Invalid,
    Request,
    parse_line,
    recover_id,
    too_deep,
)
from spindle.protocol.config import Config
from spindle.protocol.ops import Submission

DEEP = 10_000
NESTED = b"[" * DEEP + b"]" * DEEP


async def answer(client: RpcClient, request_id: Any) -> dict[str, Any]:
    """The answer carrying `request_id`, once it has arrived."""
    await client.wait_until(lambda: any(line.get("id", ...) == request_id for line in client.lines))
    return next(line for line in client.lines if line.get("id", ...) == request_id)


async def error_of(client: RpcClient, line: bytes, request_id: Any) -> dict[str, Any]:
    """The error the server answers to the raw `line` (newline added), by its id."""
    await client.send_raw(line + b"\n")
    reply = await answer(client, request_id)
    assert "result" not in reply, reply
    return reply["error"]  # type: ignore[no-any-return]


def call_line(request_id: Any, method: Any, params: Any = None) -> bytes:
    message = {"id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


# --- every request with a usable id is answered ------------------------------------


async def test_a_method_that_is_not_a_string_is_answered_with_the_id(client: RpcClient) -> None:
    error = await error_of(client, call_line(11, 42), 11)
    assert error["code"] == -32600 and "`method` must be a string" in error["message"]
    error = await error_of(client, call_line("x", ["thread/list"]), "x")
    assert error["code"] == -32600
    assert (await client.call("thread/loaded/list", {}))["data"] == []


async def test_lone_surrogates_in_an_id_or_params_are_answered(client: RpcClient) -> None:
    # json.dumps writes a lone surrogate as the escape `\ud800`; the answer echoes the id as sent
    error = await error_of(client, call_line("\ud800", "thread/loaded/list"), "\ud800")
    assert error["code"] == -32700 and "lone UTF-16 surrogate" in error["message"]
    error = await error_of(client, call_line(12, "thread/start", {"cwd": "/tmp/\udfff"}), 12)
    assert error["code"] == -32700 and "\\udfff" in error["message"]
    error = await error_of(client, call_line(13, "thread/start", {"baseInstructions": "a\ud83d"}), 13)
    assert error["code"] == -32700
    # a proper surrogate pair is fine
    reply = await client.send_message(json.loads(call_line(14, "thread/loaded/list", {"cursor": "\ud83d\ude00"})))
    assert "result" in reply


def test_the_parse_error_names_the_lone_surrogate() -> None:
    inbound = parse_line(b'{"id": 1, "method": "x", "params": ["\\ud83d\\ude00", "\\uD83D\\uD83D\\uDE00"]}')
    assert isinstance(inbound, Invalid) and inbound.id == 1
    assert "escape `\\uD83D`" in inbound.error.message


async def test_non_utf8_bytes_are_answered_when_the_id_is_recoverable(client: RpcClient) -> None:
    error = await error_of(client, b'{"id": 21, "method": "thread/\xff\xfe"}', 21)
    assert error["code"] == -32700 and "UTF-8" in error["message"]
    # in params the envelope skips over the bytes; the method's own decoder finds them (not a -32603)
    error = await error_of(client, b'{"id": 22, "method": "thread/start", "params": {"cwd": "\xc3\x28"}}', 22)
    assert error["code"] == -32700 and "UTF-8" in error["message"]


async def test_lines_without_a_usable_id_are_answered_with_a_null_id(client: RpcClient) -> None:
    """JSON-RPC 2.0: when the id cannot be detected the answer's id is null (the SDK routes such
    an answer to no waiter). A notification draws nothing; a reply to no server request draws a
    `warning`, never an error response (whose id the client could take for one of its own)."""
    before = len(client.lines)
    for line in (b"{oops", b'{"id": "\xff", "method": "thread/list"}', b"[1, 2]", b'{"method": 7}'):
        await client.send_raw(line + b"\n")
    await client.send_raw(b'{"method": "foo/notify"}\n{"id": 4242, "result": {}}\n')
    await client.wait_until(lambda: len(client.lines) - before >= 4)
    assert (await client.call("thread/loaded/list", {}))["data"] == []
    answers = [line for line in client.lines[before:] if "result" not in line and "method" not in line]
    assert [(a["id"], a["error"]["code"]) for a in answers] == [
        (None, -32700), (None, -32700), (None, -32600), (None, -32600),
    ]
    (warning,) = [n["params"]["message"] for n in client.notifications if n["method"] == "warning"]
    assert warning.startswith("answer to server request 4242 refused: no such request is pending")


async def test_a_line_too_long_is_answered_with_its_id_and_skipped(
    client: RpcClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "MAX_LINE_BYTES", 4096)
    line = call_line(31, "thread/start", {"baseInstructions": "x" * 50_000})
    # sent in pieces, as a pipe would deliver it
    for start in range(0, len(line), 1000):
        await client.send_raw(line[start : start + 1000])
    await client.send_raw(b"\n")
    reply = await answer(client, 31)
    assert reply["error"]["code"] == -32600 and "line longer than 4096 bytes" in reply["error"]["message"]
    assert (await client.call("thread/loaded/list", {}))["data"] == []
    assert [line.get("id") for line in client.lines if "error" in line] == [31], "the line's tail is not a new line"


# --- deep nesting ------------------------------------------------------------------


def test_nesting_is_measured_without_decoding() -> None:
    assert not too_deep(b"[" * MAX_NESTING + b"]" * MAX_NESTING)
    assert too_deep(b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1))
    assert not too_deep(b'{"a": "' + b"[{" * 1000 + b'"}')  # brackets in a string do not count
    assert not too_deep(b'{"a": "\\"' + b"[" * 1000 + b'"}')  # nor after an escaped quote
    assert too_deep(b'{"a": "\\\\", "b": ' + NESTED + b"}")  # an escaped backslash does not escape the quote
    assert too_deep(b"{" * 100_000)
    assert recover_id(b'{"method": "x", "params": ' + NESTED + b', "id": "late"}') == "late"
    assert recover_id(b'{"params": {"id": 1}}') is None  # only the top-level id counts
    assert recover_id(b'[{"id": 1}]') is None
    assert recover_id(b'{"id": 1.5}') is None and recover_id(b'{"id": true}') is None


@pytest.mark.parametrize(
    "line, request_id",
    [
        (NESTED, None),
        (b'{"a": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}", None),
        (b'{"id": 41, "method": "thread/start", "params": {"config": ' + NESTED + b"}}", 41),
        (b'{"method": "turn/start", "params": ' + NESTED + b', "id": "deep"}', "deep"),
    ],
    ids=["top-level-array", "top-level-object", "in-params", "id-after-params"],
)
def test_deep_lines_are_refused_before_decoding(line: bytes, request_id: Any) -> None:
    inbound = parse_line(line)
    assert isinstance(inbound, Invalid) and inbound.id == request_id
    assert inbound.error.code == -32600 and "nested deeper than 128 levels" in inbound.error.message


async def test_deep_nesting_is_refused_and_the_server_goes_on(client: RpcClient) -> None:
    await client.send_raw(NESTED + b"\n")
    error = await error_of(client, b'{"id": 42, "method": "thread/start", "params": {"a": ' + NESTED + b"}}", 42)
    assert error["code"] == -32600 and "nested deeper" in error["message"]
    assert (await client.call("thread/loaded/list", {}))["data"] == []


@pytest.fixture
def home(tmp_path: Path, mock_model: MockModel) -> Path:
    home = tmp_path / "codex-home"
    write_config(home, mock_model)
    return home


async def test_hostile_lines_on_stdin_are_answered_and_the_process_serves_on(home: Path) -> None:
    async with subprocess_server(home, log_level="error") as (client, process):
        await client.initialize()
        await client.send_raw(NESTED + b"\n")
        deep = await error_of(client, b'{"id": 51, "method": "thread/read", "params": ' + NESTED + b"}", 51)
        lone = await error_of(client, call_line("\ud800", "thread/list"), "\ud800")
        bad = await error_of(client, b'{"id": 52, "method": "\xff"}', 52)
        assert (deep["code"], lone["code"], bad["code"]) == (-32600, -32700, -32700)
        thread = (await client.call("thread/start", {}))["thread"]
        assert (await client.run_turn(thread["id"], "still here"))["status"] == "completed"
    assert process.returncode == 0


# --- answers are never dropped -------------------------------------------------------


async def test_a_client_that_does_not_read_is_not_read_and_loses_no_answer(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Config]
) -> None:
    """Overloaded and invalid-request answers used to be dropped when the outgoing queue was full;
    now the server stops reading the client until it reads again."""
    monkeypatch.setattr(connection, "REQUEST_QUEUE", 2)
    monkeypatch.setattr(connection, "OUTGOING_QUEUE", 4)
    ids = range(300)
    burst = b"".join(
        call_line(n, "thread/loaded/list", {}) + b"\n" if n % 5 else b'{"id": %d}\n' % n for n in ids
    )
    async with open_runtime(make_config()) as manager, trio.open_nursery() as nursery:
        server: AppServer = await nursery.start(AppServer(manager).run)
        client_side, server_side = trio.testing.lockstep_stream_pair()
        nursery.start_soon(server.serve, server_side, server_side)
        client = RpcClient(client_side, client_side)
        await client.send_raw(b'{"id":"init","method":"initialize","params":{"clientInfo":{"name":"t","version":"1"}}}\n')
        sent = trio.Event()

        async def send_burst() -> None:
            lines = burst.splitlines(keepends=True)
            for start in range(0, len(lines), 10):
                await client.send_raw(b"".join(lines[start : start + 10]))
            sent.set()

        nursery.start_soon(send_burst)
        await trio.testing.wait_all_tasks_blocked(0.01)
        assert not sent.is_set(), "the server must stop reading a client that does not read"
        nursery.start_soon(client.read_loop)
        await client.wait_until(lambda: {line.get("id") for line in client.lines} >= set(ids))
        replies = {line["id"]: line for line in client.lines if line.get("id") in ids}
        assert all(replies[n]["error"]["code"] == -32600 for n in ids if n % 5 == 0)
        assert any(r.get("error", {}).get("code") == -32001 for r in replies.values()), "the burst overflows the queue"
        await sent.wait()
        await client_side.send_stream.aclose()
        nursery.cancel_scope.cancel()


# --- stuck threads --------------------------------------------------------------------


@dataclass
class Stuck:
    """Threads whose actor blocks before dispatching each submission, until `release` is set."""

    thread_ids: set[str] = field(default_factory=set)
    release: trio.Event = field(default_factory=trio.Event)


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> Stuck:
    state = Stuck()
    dispatch = ThreadActor._dispatch

    async def blocking_dispatch(actor: ThreadActor, sub: Submission) -> bool:
        if actor.thread_id in state.thread_ids:
            await state.release.wait()
        return await dispatch(actor, sub)

    monkeypatch.setattr(ThreadActor, "_dispatch", blocking_dispatch)
    return state


async def start_thread(client: RpcClient) -> str:
    thread_id: str = (await client.call("thread/start", {}))["thread"]["id"]
    await client.wait_for("thread/started", lambda p: p["thread"]["id"] == thread_id)
    return thread_id


def turn_params(thread_id: str, text: str) -> dict[str, Any]:
    return {"threadId": thread_id, "input": [{"type": "text", "text": text}]}


async def test_a_stuck_thread_holds_up_only_its_own_requests(client: RpcClient, stuck: Stuck) -> None:
    blocked, free = await start_thread(client), await start_thread(client)
    stuck.thread_ids.add(blocked)

    def answered() -> list[Any]:
        return [line["id"] for line in client.lines if line.get("id") in ("stuck-turn", "stuck-read")]

    try:
        await client.send_raw(call_line("stuck-turn", "turn/start", turn_params(blocked, "one")) + b"\n")
        await client.send_raw(call_line("stuck-read", "thread/read", {"threadId": blocked.upper()}) + b"\n")
        # other threads and thread-less requests go on meanwhile
        assert (await client.run_turn(free, "other"))["status"] == "completed"
        assert blocked in (await client.call("thread/loaded/list", {}))["data"]
        assert answered() == [], "the stuck thread's requests wait"
        stuck.release.set()
        await client.wait_until(lambda: len(answered()) == 2)
        assert answered() == ["stuck-turn", "stuck-read"], "and are answered in order"
        assert all("result" in line for line in client.lines if line.get("id") in ("stuck-turn", "stuck-read"))
    finally:
        stuck.release.set()


async def test_a_thread_that_does_not_take_a_request_up_in_time_is_named_in_the_answer(
    client: RpcClient, stuck: Stuck, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handle_module, "DISPATCH_TIMEOUT_S", 0.2)
    blocked = await start_thread(client)
    stuck.thread_ids.add(blocked)
    try:
        with pytest.raises(RpcFailure) as err:
            await client.call("turn/start", turn_params(blocked, "hello?"))
        assert err.value.code == -32000 and f"thread {blocked} did not take up `turn/start` in time" in err.value.message
        assert err.value.error["data"] == {"threadId": blocked}
        assert (await client.call("thread/loaded/list", {}))["data"] == [blocked]
    finally:
        stuck.release.set()


async def test_a_stuck_threads_lane_is_bounded(client: RpcClient, stuck: Stuck, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "THREAD_QUEUE", 2)
    blocked = await start_thread(client)
    stuck.thread_ids.add(blocked)
    names = [f"r{n}" for n in range(6)]

    def codes() -> dict[str, int | None]:
        return {line["id"]: line.get("error", {}).get("code") for line in client.lines if line.get("id") in names}

    try:
        lines = [call_line(name, "thread/compact/start", {"threadId": blocked}) + b"\n" for name in names]
        await client.send_raw(lines[0])
        await trio.testing.wait_all_tasks_blocked(0.01)
        # r0 runs (and is stuck), r1 and r2 wait, the other three are refused at once
        await client.send_raw(b"".join(lines[1:]))
        await client.wait_until(lambda: len(codes()) == 3)
        assert codes() == {"r3": -32001, "r4": -32001, "r5": -32001}
        assert (await client.call("thread/loaded/list", {}))["data"] == [blocked]
        stuck.release.set()
        await client.wait_until(lambda: len(codes()) == 6)
        assert -32001 not in [codes()[name] for name in names[:3]]
    finally:
        stuck.release.set()


def test_requests_name_their_thread_cheaply() -> None:
    tid = "0190a6f8-1234-7000-8000-00000000abcd"
    request = parse_line(call_line(1, "turn/start", {"input": [{"type": "text", "text": "x"}], "threadId": tid.upper()}))
    assert isinstance(request, Request) and request.thread_id == tid
    for params in ({}, {"threadId": 5}, [1]):
        request = parse_line(call_line(2, "thread/read", params))
        assert isinstance(request, Request) and request.thread_id is None
