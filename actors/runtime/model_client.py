"""The Responses API client: one `httpx.AsyncClient` per provider, errors mapped to ModelError.

`ModelClient.stream()` posts a request and yields decoded stream events; it makes no retry
decisions (the turn loop does, because a retry must also reset the turn's partial output).
httpx is imported when the first client is made, not at start-up: `spindle app-server` answers
`initialize` sooner, and a runtime that never calls a model never loads it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING

import msgspec
import trio

from spindle.protocol.config import ModelProviderInfo
from spindle.protocol.events import CodexErrorInfo
from spindle.protocol.responses import StreamEvent, TypeOnly

if TYPE_CHECKING:
    import httpx

MAX_CONNECTIONS_PER_PROVIDER = 128
"""Concurrent requests to one provider. Further turns wait on a trio limiter in front of httpx:
httpcore's pool rescans every queued request on each release, so letting thousands queue there
costs CPU quadratic in the number of waiting turns."""
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
POOL_TIMEOUT_S = 60.0
USER_AGENT = "spindle/0.1.0"

_event_decoder = msgspec.json.Decoder(StreamEvent)
_type_decoder = msgspec.json.Decoder(TypeOnly)


class ModelError(Exception):
    """A provider failure, as the turn reports it.

    `phase` is "request" (no stream was opened) or "stream" (the stream broke); `retryable` says
    whether another attempt could succeed; `info` is the error kind reported to clients.
    """

    def __init__(
        self,
        message: str,
        *,
        phase: str,
        retryable: bool,
        info: CodexErrorInfo = "other",
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.phase = phase
        self.retryable = retryable
        self.info = info
        self.status = status


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def decode_stream_event(data: str, index: int) -> StreamEvent | None:
    """Decode one SSE data payload; None for event kinds Spindle does not use."""
    try:
        return _event_decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        try:
            kind = _type_decoder.decode(data).type
        except msgspec.MsgspecError:
            kind = ""
        if kind and kind not in _KNOWN_TAGS:
            return None
        raise ModelError(
            f"stream disconnected before completion: invalid event {index} ({kind or 'no type'}): {exc}",
            phase="stream",
            retryable=True,
            info="response_stream_disconnected",
        ) from None
    except msgspec.DecodeError as exc:
        raise ModelError(
            f"stream disconnected before completion: event {index} is not JSON: {exc}: {data[:80]!r}",
            phase="stream",
            retryable=True,
            info="response_stream_disconnected",
        ) from None


_KNOWN_TAGS = frozenset(
    cls.__struct_config__.tag for cls in StreamEvent.__args__  # type: ignore[attr-defined]
)


class ModelClient:
    """Streams Responses API requests to one provider."""

    def __init__(self, provider_id: str, provider: ModelProviderInfo) -> None:
        self.provider_id = provider_id
        self.provider = provider
        import httpx

        timeout = httpx.Timeout(
            connect=CONNECT_TIMEOUT_S,
            read=provider.stream_idle_timeout_ms / 1000,
            write=WRITE_TIMEOUT_S,
            pool=POOL_TIMEOUT_S,
        )
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS_PER_PROVIDER,
            max_keepalive_connections=MAX_CONNECTIONS_PER_PROVIDER,
        )
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS_PER_PROVIDER)
        self._url = provider.base_url.rstrip("/") + "/responses"

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, thread_id: str) -> dict[str, str]:
        headers = {
            "accept": "text/event-stream",
            "content-type": "application/json",
            "originator": "spindle",
            "user-agent": USER_AGENT,
            "session-id": thread_id,
            "thread-id": thread_id,
            "x-client-request-id": thread_id,
            **self.provider.http_headers,
        }
        if self.provider.env_key:
            key = os.environ.get(self.provider.env_key)
            if not key:
                raise ModelError(
                    f"missing environment variable {self.provider.env_key} "
                    f"(the API key of model provider {self.provider_id!r})",
                    phase="request",
                    retryable=False,
                    info="other",
                )
            headers["authorization"] = f"Bearer {key}"
        return headers

    @asynccontextmanager
    async def stream(self, body: bytes, *, thread_id: str) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        """POST `body`; yields an iterator of stream events. Raises ModelError."""
        import httpx
        import httpx_sse

        headers = self._headers(thread_id)
        try:
            async with self._slots, self._http.stream("POST", self._url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    await _raise_for_status(response)
                yield _events(response)
        except httpx_sse.SSEError as exc:
            raise ModelError(
                f"stream disconnected before completion: not an event stream: {exc}",
                phase="stream",
                retryable=True,
                info="response_stream_disconnected",
            ) from None
        except httpx.TimeoutException as exc:
            raise ModelError(
                f"stream disconnected before completion: timed out ({type(exc).__name__})",
                phase="stream",
                retryable=True,
                info="response_stream_disconnected",
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ModelError(
                f"error sending request for url ({self._url}): {exc or type(exc).__name__}",
                phase="request",
                retryable=True,
                info="http_connection_failed",
            ) from None
        except httpx.TransportError as exc:
            raise ModelError(
                f"stream disconnected before completion: {exc or type(exc).__name__}",
                phase="stream",
                retryable=True,
                info="response_stream_disconnected",
            ) from None


async def _raise_for_status(response: httpx.Response) -> None:
    body = (await response.aread()).decode("utf-8", "replace")
    status = response.status_code
    if status == 429 or status >= 500:
        raise ModelError(
            f"exceeded retry limit, last status: {status_text(status)}",
            phase="request",
            retryable=True,
            info="response_too_many_failed_attempts",
            status=status,
        )
    info: CodexErrorInfo = "bad_request" if status == 400 else "other"
    if "context_length_exceeded" in body:
        info = "context_window_exceeded"
    raise ModelError(body or status_text(status), phase="request", retryable=False, info=info, status=status)


async def _events(response: httpx.Response) -> AsyncIterator[StreamEvent]:
    import httpx_sse

    source = httpx_sse.EventSource(response)
    index = 0
    async for sse in source.aiter_sse():
        if not sse.data:
            continue
        index += 1
        event = decode_stream_event(sse.data, index)
        if event is not None:
            yield event
