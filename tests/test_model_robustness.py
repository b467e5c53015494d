"""A hostile or broken provider: malformed items and events, bad usage, huge or cut events, silent
streams and rate limits each end in a skipped item, a retry or a clear failed turn, never a crash."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import msgspec
import pytest
import structlog
import trio
import trio.testing

from spindle.actors.runtime import open_runtime, turn
from spindle.actors.runtime.permission_profiles import load_profiles
from spindle.actors.runtime.tools import ToolRegistry
from spindle.actors.testing.mock_model import HttpError, MockModel, Raw, Stall, Text, sse
from spindle.protocol.config import Config
from spindle.protocol.events import ErrorEvent, StreamErrorEvent, TaskCompleteEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp
from spindle.protocol.responses import SSEDecoder, SSEEventTooLarge
from spindle.protocol.settings import ThreadSettings

from .helpers import collect_until

_GOOD_MESSAGE = {"type": "message", "id": "m", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}


class Turned(list[Any]):
    """A turn's events, and how long (on trio's clock) it took from start_thread to task_complete."""

    elapsed: float = 0.0


async def run_turn(config: Config, mock: MockModel, *replies: Any, deadline: float = 10.0) -> Turned:
    """Every event of one turn on a fresh thread whose model gives `replies`, within `deadline` s.

    The thread is ephemeral: with no rollout I/O in worker threads while a deadline runs,
    `autojump_clock` can stand in for real time."""
    seen = Turned()
    async with open_runtime(config) as rt:  # the store opens and closes in worker threads, outside the deadline
        with trio.fail_after(deadline):
            start = trio.current_time()
            thread = await rt.start_thread(ephemeral=True)
            mock.script(*replies, thread_id=thread.thread_id)
            with thread.events() as events:
                await thread.submit(UserInputOp(items=[TextInput(text="hi")]))
                async for ev in events:
                    seen.append(ev)
                    if isinstance(ev.msg, TaskCompleteEvent):
                        seen.elapsed = trio.current_time() - start
                        return seen
    raise AssertionError("the event stream ended before task_complete")


def errors(seen: list[Any]) -> list[ErrorEvent]:
    return [ev.msg for ev in seen if isinstance(ev.msg, ErrorEvent)]


def stream_errors(seen: list[Any]) -> list[StreamErrorEvent]:
    return [ev.msg for ev in seen if isinstance(ev.msg, StreamErrorEvent)]


def body(*events: dict[str, Any]) -> bytes:
    return b"".join(sse(event) for event in events)


def raw_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def completed(**response: Any) -> dict[str, Any]:
    return {"type": "response.completed", "response": {"id": "r", **response}}


MALFORMED_ITEMS = [
    pytest.param({"type": 5, "id": "x"}, id="type-is-a-number"),
    pytest.param("a string", id="item-is-a-string"),
    pytest.param(42, id="item-is-a-number"),
    pytest.param([{"type": "message"}], id="item-is-a-list"),
    pytest.param(None, id="item-is-null"),
    pytest.param({"id": "no-type"}, id="no-type"),
    pytest.param({"type": "message", "id": "m2", "role": 7, "content": "text"}, id="message-with-wrong-fields"),
    pytest.param({"type": "function_call", "id": "f", "call_id": 1, "name": ["shell"], "arguments": {}}, id="call-with-wrong-fields"),
]


@pytest.mark.parametrize("event_type", ["response.output_item.added", "response.output_item.done"])
@pytest.mark.parametrize("item", MALFORMED_ITEMS)
async def test_malformed_output_items_are_skipped_with_a_warning(
    make_config: Callable[..., Config], mock_model: MockModel, event_type: str, item: Any
) -> None:
    reply = body(
        {"type": event_type, "output_index": 0, "item": item},
        {"type": "response.output_item.done", "output_index": 1, "item": _GOOD_MESSAGE},
        completed(),
    )
    with structlog.testing.capture_logs() as logs:
        seen = await run_turn(make_config(), mock_model, Raw(body=reply), Text(text="a retry"))
    assert errors(seen) == [] and stream_errors(seen) == []
    assert seen[-1].msg.last_agent_message == "ok"
    assert mock_model.request_count == 1
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["skipping malformed output item"]
    assert warnings[0]["stream_event"] == event_type


async def test_malformed_items_in_one_thread_leave_the_others_running(
    make_config: Callable[..., Config], mock_model: MockModel
) -> None:
    bad = body({"type": "response.output_item.done", "item": {"type": 1}}, completed())
    async with open_runtime(make_config()) as rt:
        threads = [await rt.start_thread() for _ in range(4)]
        mock_model.script(Raw(body=bad), thread_id=threads[0].thread_id)
        answers: dict[int, str | None] = {}

        async def ask(n: int) -> None:
            answers[n] = await threads[n].ask(f"q{n}")

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(ask, n)
        assert answers == {0: "", 1: "echo: q1", 2: "echo: q2", 3: "echo: q3"}
        assert await threads[0].ask("again") == "echo: again"


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(b'{"type":"response.completed","response":"done"}', "invalid event 1 (response.completed)", id="response-is-a-string"),
        pytest.param(b'{"type":"response.output_text.delta","delta":5}', "invalid event 1 (response.output_text.delta)", id="delta-is-a-number"),
        pytest.param(b'"just a string"', "invalid event 1 (no type)", id="event-is-a-string"),
        pytest.param(b'{"type":"response.output_item.done","item":' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply", id="deep-item"),
        pytest.param(b'{"type":"response.created","response":{"output":' + b"[" * 10_000 + b"]" * 10_000 + b"}}", "nested too deeply", id="deep-envelope"),
        pytest.param(b'{"type":"response.output_text.delta","delta":"\xff\xfe"}', "is not JSON", id="not-utf-8"),
    ],
)
async def test_malformed_event_envelopes_are_retried_as_stream_errors(
    make_config: Callable[..., Config], mock_model: MockModel, data: bytes, expected: str
) -> None:
    seen = await run_turn(make_config(), mock_model, Raw(body=raw_event(data)), Text(text="second try"))
    [retry] = stream_errors(seen)
    assert retry.message == "Reconnecting... 1/1" and expected in (retry.additional_details or "")
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == "second try"


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param("lots", id="a-string"),
        pytest.param([1, 2], id="a-list"),
        pytest.param({"input_tokens": "12", "output_tokens": 3, "total_tokens": 15}, id="a-field-is-a-string"),
        pytest.param({"input_tokens": 1, "input_tokens_details": 4}, id="details-is-a-number"),
    ],
)
async def test_malformed_usage_fails_the_turn_clearly(
    make_config: Callable[..., Config], mock_model: MockModel, usage: Any
) -> None:
    reply = body({"type": "response.output_item.done", "item": _GOOD_MESSAGE}, completed(usage=usage))
    seen = await run_turn(make_config(), mock_model, Raw(body=reply), Text(text="unused"))
    [error] = errors(seen)
    assert error.message.startswith("the model's response.completed carried a malformed usage: ")
    assert stream_errors(seen) == [] and mock_model.request_count == 1
    assert seen[-1].msg.last_agent_message is None


async def test_a_null_usage_is_no_usage(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    reply = body({"type": "response.output_item.done", "item": _GOOD_MESSAGE}, completed(usage=None))
    seen = await run_turn(make_config(), mock_model, Raw(body=reply))
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == "ok"


async def test_sequential_turns_reuse_one_connection(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    """The stream is read to its end after `response.completed`, so its connection goes back to the
    pool: a connection per turn would cost a TCP (or TLS) handshake every turn."""
    async with open_runtime(make_config()) as rt:
        thread = await rt.start_thread()
        for n in range(3):
            await thread.ask(f"turn {n}")
    assert mock_model.request_count == 3 and mock_model.connection_count == 1


async def test_a_50_mb_delta_fails_the_turn_clearly(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    with trio.fail_after(10):
        seen = await run_turn(make_config(), mock_model, Text(text="x" * 50_000_000, chunks=1), Text(text="unused"))
    [error] = errors(seen)
    assert error.message == "the model sent a stream event larger than 16 MiB"
    assert mock_model.request_count == 1


async def test_a_large_delta_under_the_limit_arrives_whole(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    text = "y" * 3_000_000
    seen = await run_turn(make_config(), mock_model, Text(text=text, chunks=1))
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == text


@pytest.mark.parametrize(
    "reply, expected",
    [
        pytest.param(
            Raw(body=b'data: {"type":"response.output_item.done","item":{"type":"mess'),
            "stream closed before response.completed",
            id="event-cut-then-clean-eof",
        ),
        pytest.param(
            Raw(body=body({"type": "response.output_item.done", "item": _GOOD_MESSAGE}) + b'data: {"type":"response.compl', cut=True),
            "stream disconnected before completion: ",
            id="event-cut-then-connection-closed",
        ),
        pytest.param(
            Raw(body=b'data: {"type":"response.completed","response":{"id"\n\n'),
            "is not JSON",
            id="event-data-cut",
        ),
    ],
)
async def test_a_truncated_sse_event_is_a_clear_error(
    make_config: Callable[..., Config], mock_model: MockModel, reply: Raw, expected: str
) -> None:
    config = make_config(provider={"stream_max_retries": 0})
    async with open_runtime(config) as rt:
        thread = await rt.start_thread()
        mock_model.script(reply, thread_id=thread.thread_id)
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="hi")]))
            seen = await collect_until(events, TaskCompleteEvent)
        [error] = errors(seen)
        assert error.message.startswith("stream disconnected before completion: ") and expected in error.message
        assert await thread.ask("still there?") == "echo: still there?"


async def test_a_silent_stream_is_retried_then_fails_the_turn(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(provider={"stream_idle_timeout_ms": 2_000, "stream_max_retries": 2})
    seen = await run_turn(config, mock_model, Stall(), Stall(), Stall(), Text(text="unused"))
    idle = "stream disconnected before completion: stream idle for 2000 ms (stream_idle_timeout_ms)"
    assert [(e.message, e.additional_details) for e in stream_errors(seen)] == [
        ("Reconnecting... 1/2", idle),
        ("Reconnecting... 2/2", idle),
    ]
    [error] = errors(seen)
    assert error.message == idle and error.codex_error_info == "response_stream_disconnected"
    assert mock_model.request_count == 3
    assert 6.0 <= seen.elapsed < 8.0


async def test_a_stream_that_recovers_after_one_idle_attempt_completes(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(provider={"stream_idle_timeout_ms": 2_000})
    seen = await run_turn(config, mock_model, Stall(), Text(text="back"))
    assert [e.message for e in stream_errors(seen)] == ["Reconnecting... 1/1"]
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == "back"


async def test_keepalive_events_count_as_activity(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(provider={"stream_idle_timeout_ms": 2_000, "stream_max_retries": 0})
    reply = Stall(seconds=7.0, keepalive_every=1.5, then=Text(text="after a long think"))
    seen = await run_turn(config, mock_model, reply)
    assert errors(seen) == [] and stream_errors(seen) == []
    assert seen[-1].msg.last_agent_message == "after a long think"
    assert seen.elapsed >= 7.0


async def test_the_idle_timeout_defaults_to_300_seconds(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    seen = await run_turn(make_config(provider={"stream_max_retries": 0}), mock_model, Stall(), deadline=400)
    [error] = errors(seen)
    assert "stream idle for 300000 ms" in error.message
    assert 300.0 <= seen.elapsed < 301.0


@pytest.mark.parametrize(
    "status, retry_after, expected",
    [
        pytest.param(429, "3", 3.0, id="429-seconds"),
        pytest.param(503, "7", 7.0, id="503-seconds"),
        pytest.param(429, "3600", turn.RETRY_AFTER_CAP_S, id="capped"),
    ],
)
async def test_retry_after_sets_the_wait(
    make_config: Callable[..., Config],
    mock_model: MockModel,
    autojump_clock: trio.testing.MockClock,
    status: int,
    retry_after: str,
    expected: float,
) -> None:
    reply = HttpError(status=status, headers=(("retry-after", retry_after),))
    seen = await run_turn(make_config(), mock_model, reply, Text(text="after the wait"), deadline=100)
    assert expected <= seen.elapsed < expected + 0.5
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == "after the wait"


async def test_retry_after_as_an_http_date(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=12), usegmt=True)
    seen = await run_turn(make_config(), mock_model, HttpError(status=429, headers=(("retry-after", when),)), Text(text="ok"), deadline=100)
    assert 10.0 <= seen.elapsed < 12.5
    assert seen[-1].msg.last_agent_message == "ok"


async def test_unusable_retry_after_falls_back_to_backoff(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    reply = HttpError(status=429, headers=(("retry-after", "soon"),))
    seen = await run_turn(make_config(), mock_model, reply, Text(text="ok"))
    assert seen.elapsed < 0.1  # the test's backoff base is a millisecond
    assert seen[-1].msg.last_agent_message == "ok"


async def test_retry_after_still_counts_against_the_retry_limit(
    make_config: Callable[..., Config], mock_model: MockModel, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(provider={"request_max_retries": 2})
    reply = HttpError(status=429, headers=(("retry-after", "5"),))
    seen = await run_turn(config, mock_model, reply, reply, reply, Text(text="unused"), deadline=100)
    assert 10.0 <= seen.elapsed < 10.5
    [error] = errors(seen)
    assert error.message == "exceeded retry limit, last status: 429 Too Many Requests"
    assert mock_model.request_count == 3


@pytest.mark.parametrize(
    "value, expected",
    [("2", 2.0), (" 4 ", 4.0), ("1.5", 1.5), ("-1", None), ("soon", None), ("", None), ("nan", None), ("inf", None)],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    from spindle.actors.runtime.model_client import parse_retry_after

    assert parse_retry_after(value) == expected


def test_parse_retry_after_dates() -> None:
    from spindle.actors.runtime.model_client import parse_retry_after

    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0  # already past


def test_usage_decoding_is_lazy() -> None:
    from spindle.protocol.responses import ResponseCompleted, StreamEvent

    event = msgspec.json.decode(b'{"type":"response.completed","response":{"usage":"bad"}}', type=StreamEvent)
    assert isinstance(event, ResponseCompleted)


async def test_a_header_that_cannot_be_sent_fails_the_turn(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    config = make_config(provider={"http_headers": {"x-team": "café ☕"}})
    async with open_runtime(config) as rt:
        thread = await rt.start_thread()
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="hi")]))
            seen = await collect_until(events, TaskCompleteEvent)
        [error] = errors(seen)
        assert error.message.startswith("cannot talk to model provider 'mock'")
        assert "UnicodeEncodeError" in error.message
        assert mock_model.request_count == 0


def test_sse_decoder_frames_events_across_chunks() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    assert decoder.feed(b"event: a\r\ndata: {\"x\"") == []
    assert decoder.feed(b":1}\r\n\r\n: a comment\n\ndata:first\ndata: second\n") == [b'{"x":1}']
    assert decoder.feed(b"\nid: 7\nretry: 10\n\n") == [b"first\nsecond"]
    assert decoder.feed(b"data: cut before its blank line") == []


def test_sse_decoder_bounds_an_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(b"data: " + b"x" * 90 + b"\n\n") == [b"x" * 90]
    with pytest.raises(SSEEventTooLarge):
        decoder.feed(b"data: " + b"y" * 101)  # one endless line
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEEventTooLarge):
        for _ in range(20):
            decoder.feed(b"data: yyyyyyyyyy\n")  # many lines, no end of event


class _HostWithoutProvider:
    """A turn host whose provider is gone (a config changed under a stored thread)."""

    thread_id = "t"
    tools = ToolRegistry([])
    history: list[Any] = []

    def client(self, provider_id: str) -> Any:
        raise KeyError(f"unknown model provider {provider_id!r}")

    def emit(self, sub_id: str, msg: Any) -> None:
        pass

    async def commit_input(self, turn: Any, sub_id: str, items: list[Any]) -> None:
        pass

    async def commit(self, items: list[Any]) -> None:
        pass

    def record(self, items: list[Any]) -> None:
        pass

    def add_usage(self, usage: Any, window: int | None) -> Any:
        raise AssertionError("no usage without a model")

    async def compact(self, turn: Any, phase: str) -> None:
        pass  # never over the limit: nothing was sampled


async def test_a_missing_provider_is_a_failed_sample() -> None:
    settings = ThreadSettings(
        model="m", provider_id="gone", cwd="/", approval_policy="never", sandbox_mode="read-only", instructions=""
    )
    with pytest.raises(turn.SamplingFailed, match="unknown model provider 'gone'"):
        await turn.run_turn(turn.Turn(turn_id="u", sub_id="s", settings=settings, profiles=load_profiles(Config())), _HostWithoutProvider())
