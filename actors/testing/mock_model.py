"""A scripted Responses API server on loopback, for tests, demos and load runs.

It speaks real HTTP/1.1 (h11) and streams real SSE, so the runtime always goes through httpx.
Replies come from per-thread scripts (keyed by `prompt_cache_key`, which Spindle sets to the
thread id), then a global script, then the default reply function.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from spindle.actors.runtime.config import config_from_mapping
from spindle.protocol.config import Config

log = structlog.get_logger(__name__)

READ_CHUNK = 65536
_enc = msgspec.json.Encoder()


class _Key(msgspec.Struct):
    prompt_cache_key: str = ""


_key_decoder = msgspec.json.Decoder(_Key)


@dataclass(frozen=True, kw_only=True)
class Text:
    """An assistant message streamed as `chunks` deltas, `delay` seconds apart."""

    text: str
    chunks: int = 2
    delay: float = 0.0
    usage: bool | int = True
    """The `usage` of its `response.completed`: the standard one, none, or this many total tokens."""
    gate: trio.Event | None = None
    """When set, the stream pauses after its first delta until the event is set."""


@dataclass(frozen=True, kw_only=True)
class Call:
    """A `function_call` of tool `name` with JSON `arguments`."""

    name: str
    arguments: dict[str, Any] | str
    call_id: str | None = None
    usage: bool | int = True
    """As `Text.usage`."""


@dataclass(frozen=True)
class Custom:
    """A `custom_tool_call` of freeform tool `name` (e.g. `apply_patch`) with raw `input`."""

    name: str
    input: str
    call_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class HttpError:
    """A non-200 answer with a JSON body."""

    status: int
    message: str = "mock error"
    code: str = "server_error"
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers, such as `("retry-after", "3")`."""


@dataclass(frozen=True, kw_only=True)
class Failed:
    """`response.created` then `response.failed` with this error."""

    message: str = "mock: the model failed"
    code: str = "server_error"


@dataclass(frozen=True, kw_only=True)
class Truncated:
    """A text reply whose stream ends cleanly but without `response.completed`."""

    text: str = "partial"


@dataclass(frozen=True, kw_only=True)
class Raw:
    """These exact bytes as the SSE body (garbage tests)."""

    body: bytes
    cut: bool = False
    """Close the connection after `body`, without the chunked body's terminating chunk."""


@dataclass(frozen=True, kw_only=True)
class Stall:
    """`response.created`, then no event for `seconds` (None: until the client hangs up), with a
    `keepalive` event every `keepalive_every` seconds if set; then the `then` reply, if any."""

    seconds: float | None = None
    keepalive_every: float | None = None
    then: Text | None = None


Reply = Text | Call | Custom | HttpError | Failed | Truncated | Raw | Stall


@dataclass(frozen=True)
class MockRequest:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def last_user_text(self) -> str:
        for item in reversed(self.json().get("input", [])):
            if item.get("type") == "message" and item.get("role") == "user":
                return "".join(p.get("text", "") for p in item.get("content", []))
        return ""


def echo(request: MockRequest) -> Reply:
    """Default reply for tests: repeats the last user text."""
    return Text(text=f"echo: {request.last_user_text()}")


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + _enc.encode(event) + b"\n\n"


def _usage(total: int | None = None) -> dict[str, Any]:
    if total is not None:  # a scripted size: all of it input but the last few tokens
        output = min(total, 34)
        return {"input_tokens": total - output, "output_tokens": output, "total_tokens": total}
    return {
        "input_tokens": 1200,
        "input_tokens_details": {"cached_tokens": 1000},
        "output_tokens": 34,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 1234,
    }


@dataclass
class MockModel:
    """The scripted server. Start with `await nursery.start(mock.run)`; then `mock.base_url`."""

    default: Callable[[MockRequest], Reply] = echo
    record: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[MockRequest] = field(default_factory=list)
    request_count: int = 0
    connection_count: int = 0
    """TCP connections accepted: a client that reuses its connections opens one per concurrent request."""
    _global: deque[Reply] = field(default_factory=deque)
    _per_thread: dict[str, deque[Reply]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _arrived: trio.Event = field(default_factory=trio.Event)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def wait_requests(self, count: int) -> None:
        """Until `count` requests have arrived in all."""
        while self.request_count < count:
            await self._arrived.wait()

    def script(self, *replies: Reply, thread_id: str | None = None) -> None:
        """Queue replies, for one thread or for whoever asks next."""
        if thread_id is None:
            self._global.extend(replies)
        else:
            self._per_thread.setdefault(thread_id, deque()).extend(replies)

    def provider_config(self, **extra: Any) -> dict[str, Any]:
        """A `[model_providers.mock]` table pointing at this server."""
        return {"name": "Mock", "base_url": self.base_url, **extra}

    async def run(self, *, task_status: TaskStatus[MockModel] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=4096)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self)

    def _choose(self, request: MockRequest) -> Reply:
        key = _key_decoder.decode(request.body).prompt_cache_key if request.body else ""
        queue = self._per_thread.get(key)
        if queue:
            return queue.popleft()
        if self._global:
            return self._global.popleft()
        return self.default(request)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connection_count += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                self.request_count += 1
                self._arrived.set()
                self._arrived = trio.Event()
                if self.record:
                    self.requests.append(request)
                keep_open = await self._respond(conn, stream, self._choose(request))
                if not keep_open or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> MockRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_CHUNK)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                return MockRequest(head.target.decode(), headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply) -> bool:
        if isinstance(reply, HttpError):
            body = _enc.encode({"error": {"message": reply.message, "type": "mock", "param": None, "code": reply.code}})
            headers = [("content-type", "application/json"), ("content-length", str(len(body))), *reply.headers]
            await self._send(conn, stream, h11.Response(status_code=reply.status, headers=headers))
            await self._send(conn, stream, h11.Data(data=body))
            await self._send(conn, stream, h11.EndOfMessage())
            return True
        headers = [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
        ]
        await self._send(conn, stream, h11.Response(status_code=200, headers=headers))
        if isinstance(reply, Stall):
            return await self._stall(conn, stream, reply)
        gate = reply.gate if isinstance(reply, Text) else None
        for chunk, delay in self._stream(reply):
            if delay:
                await trio.sleep(delay)
            await self._send(conn, stream, h11.Data(data=chunk))
            if gate is not None and chunk.startswith(b"event: response.output_text.delta"):
                await gate.wait()
                gate = None
        if isinstance(reply, Raw) and reply.cut:
            return False
        await self._send(conn, stream, h11.EndOfMessage())
        return True

    async def _stall(self, conn: h11.Connection, stream: trio.SocketStream, reply: Stall) -> bool:
        await self._send(conn, stream, h11.Data(data=sse({"type": "response.created", "response": {"id": "resp_stall"}})))
        if reply.seconds is None and reply.keepalive_every is None:
            while await stream.receive_some(READ_CHUNK):
                pass  # silent until the client hangs up
            return False
        deadline = trio.current_time() + (reply.seconds if reply.seconds is not None else math.inf)
        every = reply.keepalive_every if reply.keepalive_every is not None else math.inf
        for sequence in itertools.count():
            await trio.sleep(min(every, deadline - trio.current_time()))
            if trio.current_time() >= deadline:
                break
            keepalive = {"type": "keepalive", "sequence_number": sequence}
            await self._send(conn, stream, h11.Data(data=sse(keepalive)))
        if reply.then is None:
            return False
        for chunk, _delay in self._stream(reply.then):
            await self._send(conn, stream, h11.Data(data=chunk))
        await self._send(conn, stream, h11.EndOfMessage())
        return True

    def _stream(self, reply: Reply) -> list[tuple[bytes, float]]:
        n = next(self._ids)
        resp_id = f"resp_mock_{n}"
        created = {"type": "response.created", "response": {"id": resp_id, "status": "in_progress", "output": []}}
        out: list[tuple[bytes, float]] = [(sse(created), 0.0)]
        match reply:
            case Raw(body=body):
                return [(body, 0.0)]
            case Failed(message=message, code=code):
                failed = {"type": "response.failed", "response": {"id": resp_id, "status": "failed", "error": {"code": code, "message": message}}}
                out.append((sse(failed), 0.0))
                return out
            case Call(name=name, arguments=arguments, call_id=call_id, usage=usage):
                args = arguments if isinstance(arguments, str) else _enc.encode(arguments).decode()
                return out + self._tool_call(resp_id, {
                    "type": "function_call", "id": f"fc_mock_{n}", "call_id": call_id or f"call_mock_{n}",
                    "name": name, "arguments": args, "status": "completed"}, "arguments", usage)
            case Custom(name=name, input=text, call_id=call_id):
                return out + self._tool_call(resp_id, {
                    "type": "custom_tool_call", "id": f"ctc_mock_{n}", "call_id": call_id or f"call_mock_{n}",
                    "name": name, "input": text, "status": "completed"}, "input")
            case Text() | Truncated():
                text = reply.text
                chunks = reply.chunks if isinstance(reply, Text) else 1
                delay = reply.delay if isinstance(reply, Text) else 0.0
                item_id = f"msg_mock_{n}"
                added = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
                out.append((sse({"type": "response.output_item.added", "output_index": 0, "item": added}), 0.0))
                for piece in _split(text, chunks):
                    delta = {"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                             "content_index": 0, "delta": piece}
                    out.append((sse(delta), delay))
                done = {**added, "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}
                out.append((sse({"type": "response.output_item.done", "output_index": 0, "item": done}), 0.0))
                if isinstance(reply, Text):
                    out.append((sse(self._completed(resp_id, [done], reply.usage)), 0.0))
                return out
        raise AssertionError(f"unhandled reply {reply!r}")

    def _tool_call(self, resp_id: str, item: dict[str, Any], payload: str, usage: bool | int = True) -> list[tuple[bytes, float]]:
        """The stream of one tool call `item`: added (its `payload` still empty), done, completed."""
        added = {**item, payload: "", "status": "in_progress"}
        return [
            (sse({"type": "response.output_item.added", "output_index": 0, "item": added}), 0.0),
            (sse({"type": "response.output_item.done", "output_index": 0, "item": item}), 0.0),
            (sse(self._completed(resp_id, [item], usage)), 0.0),
        ]

    @staticmethod
    def _completed(resp_id: str, output: list[Any], usage: bool | int) -> dict[str, Any]:
        response: dict[str, Any] = {"id": resp_id, "status": "completed", "output": output}
        if usage is True:
            response["usage"] = _usage()
        elif usage is not False:
            response["usage"] = _usage(usage)
        return {"type": "response.completed", "response": response}


def _split(text: str, chunks: int) -> list[str]:
    if chunks <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // chunks)
    return [text[i : i + size] for i in range(0, len(text), size)]


def shaped_reply(latency_ms: float, tokens: int) -> Callable[[MockRequest], Reply]:
    """Every request answered with `tokens` deltas spread over `latency_ms` milliseconds."""
    reply = Text(text=" ".join(f"w{n}" for n in range(tokens)), chunks=tokens, delay=latency_ms / 1000 / tokens)
    return lambda _request: reply


NO_RETRIES = {"request_max_retries": 0, "stream_max_retries": 0}
"""Provider settings for measuring: a failed request counts as an error, not a retry."""


def mock_config(mock: MockModel | str, home: Path, *, provider: dict[str, Any] | None = None, **extra: Any) -> Config:
    """A config whose default provider is `mock` (a MockModel or its base URL), where `exec_command` runs unsandboxed
    (nothing leaves loopback); `provider` adds keys to its `[model_providers.mock]` table."""
    base_url = mock if isinstance(mock, str) else mock.base_url
    data: dict[str, Any] = {
        "model": "mock-model",
        "model_provider": "mock",
        "model_providers": {"mock": {"name": "Mock", "base_url": base_url, **(provider or {})}},
        "approval_policy": "never",
        "sandbox_mode": "danger-full-access",
        **extra,
    }
    return config_from_mapping(data, source="mock config", home=home)
