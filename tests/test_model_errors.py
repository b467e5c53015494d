"""Provider failures: retried per request_max_retries / stream_max_retries, then a failed turn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from spindle.actors.runtime import TurnError, open_runtime
from spindle.actors.testing.mock_model import Failed, HttpError, MockModel, Raw, Text, Truncated
from spindle.protocol.config import Config
from spindle.protocol.events import ErrorEvent, StreamErrorEvent, TaskCompleteEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp
from spindle.protocol.settings import SettingsUpdate

from .helpers import collect_until


async def run_turn(config: Config, mock: MockModel, *replies: Any) -> list[Any]:
    async with open_runtime(config) as rt:
        thread = await rt.start_thread()
        mock.script(*replies, thread_id=thread.thread_id)
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="hi")]))
            return await collect_until(events, TaskCompleteEvent)


def errors(seen: list[Any]) -> list[ErrorEvent]:
    return [ev.msg for ev in seen if isinstance(ev.msg, ErrorEvent)]


async def test_http_500_is_retried_silently(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    seen = await run_turn(make_config(), mock_model, HttpError(status=500), Text(text="recovered"))
    assert errors(seen) == []
    assert seen[-1].msg.last_agent_message == "recovered"
    assert mock_model.request_count == 2


async def test_http_errors_past_the_retry_limit_fail_the_turn(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    config = make_config(provider={"request_max_retries": 2})
    seen = await run_turn(config, mock_model, *[HttpError(status=429)] * 3, Text(text="unused"))
    [error] = errors(seen)
    assert error.message == "exceeded retry limit, last status: 429 Too Many Requests"
    assert error.codex_error_info == "response_too_many_failed_attempts"
    assert mock_model.request_count == 3
    assert seen[-1].msg.last_agent_message is None


async def test_http_400_is_not_retried_and_shows_the_body(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    seen = await run_turn(make_config(), mock_model, HttpError(status=400, message="bad model"), Text(text="unused"))
    [error] = errors(seen)
    assert "bad model" in error.message and error.codex_error_info == "bad_request"
    assert mock_model.request_count == 1


async def test_response_failed_is_retried_as_a_stream_error(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    seen = await run_turn(make_config(), mock_model, Failed(), Text(text="second try"))
    retries = [ev.msg for ev in seen if isinstance(ev.msg, StreamErrorEvent)]
    assert [r.message for r in retries] == ["Reconnecting... 1/1"]
    assert "mock: the model failed" in (retries[0].additional_details or "")
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == "second try"


async def test_context_window_exceeded_is_not_retried(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    seen = await run_turn(make_config(), mock_model, Failed(code="context_length_exceeded"), Text(text="unused"))
    [error] = errors(seen)
    assert error.codex_error_info == "context_window_exceeded"
    assert mock_model.request_count == 1


async def test_stream_cut_before_completed_fails_after_retries(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    seen = await run_turn(make_config(), mock_model, Truncated(), Truncated(), Text(text="unused"))
    [error] = errors(seen)
    assert error.message == "stream disconnected before completion: stream closed before response.completed"
    assert mock_model.request_count == 2


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"data: {not json}\n\n", "is not JSON"),
        (b'data: {"type":"response.output_text.delta"}\n\n', "invalid event 1 (response.output_text.delta)"),
    ],
)
async def test_garbage_sse_is_a_clear_error(make_config: Callable[..., Config], mock_model: MockModel, body: bytes, expected: str) -> None:
    seen = await run_turn(make_config(provider={"stream_max_retries": 0}), mock_model, Raw(body=body))
    [error] = errors(seen)
    assert expected in error.message


async def test_unknown_stream_events_are_ignored(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    body = (
        b'data: {"type":"response.something_new","x":1}\n\n'
        b'data: {"type":"response.output_item.done","item":{"type":"web_search_call","id":"ws"}}\n\n'
        b'data: {"type":"response.output_item.done","item":{"type":"message","id":"m","role":"assistant","content":[{"type":"output_text","text":"ok"}]}}\n\n'
        b'data: {"type":"response.completed","response":{"id":"r"}}\n\n'
    )
    seen = await run_turn(make_config(), mock_model, Raw(body=body))
    assert errors(seen) == [] and seen[-1].msg.last_agent_message == "ok"


async def test_connection_refused_fails_the_turn_and_the_runtime_survives(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    config = make_config(
        model_providers={
            "mock": mock_model.provider_config(request_max_retries=1),
            "dead": {"name": "Dead", "base_url": f"http://127.0.0.1:{port}/v1", "request_max_retries": 1},
        }
    )
    async with open_runtime(config) as rt:
        dead = await rt.start_thread(SettingsUpdate(provider_id="dead"))
        with pytest.raises(TurnError, match="error sending request"):
            await dead.ask("hello?")
        alive = await rt.start_thread()
        assert await alive.ask("hi") == "echo: hi"
        with pytest.raises(TurnError):
            await dead.ask("again")  # the thread is still there and fails the same way
