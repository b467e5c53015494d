"""The Responses API client: one `httpx.AsyncClient` per provider, errors mapped to ModelError.

`ModelClient.stream()` posts a request and yields decoded stream events; it makes no retry
decisions (the turn loop does, because a retry must also reset the turn's partial output). It is
the edge where foreign failures become ModelError: httpx errors, bad SSE framing, events that are
not JSON, too deep or too large. A stream that sends no byte for the provider's
`stream_idle_timeout_ms` (httpx's read timeout, which every received byte resets, keepalive
events included) fails as "stream idle".
httpx is imported when the first client is made, not at start-up: `spindle app-server` answers
`initialize` sooner, and a runtime that never calls a model never loads it.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING

import msgspec
import trio

from spindle.protocol.config import ModelProviderInfo
from spindle.protocol.events import CodexErrorInfo
from spindle.protocol.responses import SSEDecoder, SSEEventTooLarge, StreamEvent, TypeOnly, Usage

from .version import SPINDLE_VERSION

if TYPE_CHECKING:
    import ssl

    import httpx

MAX_CONNECTIONS_PER_PROVIDER = 128
"""Concurrent requests (and connections) to one provider. Each request borrows one of up to this
many single-connection httpx clients (`_Lanes`); further turns wait on a trio limiter. One shared
httpcore pool would do worse: it rescans every connection, polling each idle socket, several
times per request, and every queued request on each release."""
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
POOL_TIMEOUT_S = 60.0
USER_AGENT = f"spindle/{SPINDLE_VERSION}"
MAX_SSE_EVENT_BYTES = 16 * 1024 * 1024
"""The largest SSE event accepted; a whole model reply is far smaller, so a bigger one is a fault."""
RETRY_AFTER_STATUSES = frozenset({429, 503})
DRAIN_S = 0.2
"""How long the end of a stream is read after `response.completed`, so that its connection goes
back to the pool: a response closed before its last chunk costs a new connection next turn."""

_event_decoder = msgspec.json.Decoder(StreamEvent)
_type_decoder = msgspec.json.Decoder(TypeOnly)
_usage_decoder = msgspec.json.Decoder(Usage | None)


class ModelError(Exception):
    """A provider failure, as the turn reports it.

    `phase` is "request" (no stream was opened) or "stream" (the stream broke); `retryable` says
    whether another attempt could succeed; `info` is the error kind reported to clients;
    `retry_after` is the wait in seconds the provider asked for (`Retry-After`), if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        phase: str,
        retryable: bool,
        info: CodexErrorInfo = "other",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.phase = phase
        self.retryable = retryable
        self.info = info
        self.status = status
        self.retry_after = retry_after


def _stream_error(detail: str, *, retryable: bool = True) -> ModelError:
    return ModelError(
        f"stream disconnected before completion: {detail}",
        phase="stream",
        retryable=retryable,
        info="response_stream_disconnected",
    )


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def parse_retry_after(value: str, *, now: datetime | None = None) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds (delay-seconds or an HTTP-date; a date
    already past is 0); None when the value is neither."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime  # only for a Retry-After that is a date

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def decode_stream_event(data: bytes | str, index: int) -> StreamEvent | None:
    """Decode one SSE data payload; None for event kinds Spindle does not use. Raises ModelError."""
    try:
        return _event_decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        try:
            kind = _type_decoder.decode(data).type
        except (msgspec.MsgspecError, RecursionError):
            kind = ""
        if kind and kind not in _KNOWN_TAGS:
            return None
        raise _stream_error(f"invalid event {index} ({kind or 'no type'}): {exc}") from None
    except msgspec.DecodeError as exc:
        raise _stream_error(f"event {index} is not JSON: {exc}: {data[:80]!r}") from None
    except RecursionError:
        raise _stream_error(f"event {index} is nested too deeply") from None


def decode_usage(raw: msgspec.Raw) -> Usage | None:
    """The `usage` of a `response.completed`; a malformed one fails the turn (a retry would sample
    the whole reply again for a figure the provider got wrong). Raises ModelError."""
    try:
        return _usage_decoder.decode(raw)  # type: ignore[no-any-return]
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise ModelError(
            f"the model's response.completed carried a malformed usage: {exc}",
            phase="stream",
            retryable=False,
            info="other",
        ) from None


_KNOWN_TAGS = frozenset(
    cls.__struct_config__.tag for cls in StreamEvent.__args__  # type: ignore[attr-defined]
)


class _Lanes:
    """Up to MAX_CONNECTIONS_PER_PROVIDER httpx clients of one connection each, made as needed and
    lent one per request, the most recently used first (its connection is the warmest; one left
    idle past httpx's keep-alive expiry is closed by its client). They share one TLS context."""

    def __init__(self, timeout: httpx.Timeout) -> None:
        self._timeout = timeout
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS_PER_PROVIDER)
        self._tls: ssl.SSLContext | None = None

    def _make(self) -> httpx.AsyncClient:
        import httpx

        if self._tls is None:
            self._tls = httpx.create_ssl_context(trust_env=True)  # SSL_CERT_FILE / SSL_CERT_DIR, as httpx's own
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        client = httpx.AsyncClient(timeout=self._timeout, verify=self._tls, limits=one)
        self._all.append(client)
        return client

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[httpx.AsyncClient]:
        async with self._limiter:
            client = self._free.pop() if self._free else self._make()
            try:
                yield client
            finally:
                self._free.append(client)

    async def aclose(self) -> None:
        clients, self._all, self._free = self._all, [], []
        for client in clients:
            await client.aclose()


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
        self._lanes = _Lanes(timeout)
        self._url = provider.base_url.rstrip("/") + "/responses"

    def _request_error(self, cause: str) -> ModelError:
        """The request never reached the provider: retried per `request_max_retries`."""
        return ModelError(
            f"error sending request for url ({self._url}): {cause}",
            phase="request",
            retryable=True,
            info="http_connection_failed",
        )

    async def aclose(self) -> None:
        await self._lanes.aclose()

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

        headers = self._headers(thread_id)
        idle_ms = self.provider.stream_idle_timeout_ms
        try:
            async with self._lanes.borrow() as http, http.stream("POST", self._url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    await _raise_for_status(response)
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    raise _stream_error(f"not an event stream: content-type {content_type!r}")
                events = _events(response)
                yield events
                with suppress(ModelError, httpx.HTTPError), trio.move_on_after(DRAIN_S):
                    async for _ in events:
                        pass  # the sample is complete: a failure now costs only the connection
        except httpx.ReadTimeout:
            raise _stream_error(f"stream idle for {idle_ms} ms (stream_idle_timeout_ms)") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._request_error(str(exc) or type(exc).__name__) from None
        except (httpx.WriteTimeout, httpx.PoolTimeout) as exc:
            raise self._request_error(f"timed out ({type(exc).__name__})") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _stream_error(str(exc) or type(exc).__name__) from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, UnicodeError) as exc:
            raise ModelError(
                f"cannot talk to model provider {self.provider_id!r} at {self._url}: "
                f"{type(exc).__name__}: {exc}",
                phase="request",
                retryable=False,
                info="other",
            ) from None


async def _raise_for_status(response: httpx.Response) -> None:
    body = (await response.aread()).decode("utf-8", "replace")
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = None
        if status in RETRY_AFTER_STATUSES and (value := response.headers.get("retry-after")) is not None:
            retry_after = parse_retry_after(value)
        raise ModelError(
            f"exceeded retry limit, last status: {status_text(status)}",
            phase="request",
            retryable=True,
            info="response_too_many_failed_attempts",
            status=status,
            retry_after=retry_after,
        )
    info: CodexErrorInfo = "bad_request" if status == 400 else "other"
    if "context_length_exceeded" in body:
        info = "context_window_exceeded"
    raise ModelError(body or status_text(status), phase="request", retryable=False, info=info, status=status)


async def _events(response: httpx.Response) -> AsyncIterator[StreamEvent]:
    decoder = SSEDecoder(MAX_SSE_EVENT_BYTES)
    index = 0
    async for chunk in response.aiter_bytes():
        try:
            payloads = decoder.feed(chunk)
        except SSEEventTooLarge:
            raise ModelError(
                f"the model sent a stream event larger than {MAX_SSE_EVENT_BYTES // (1024 * 1024)} MiB",
                phase="stream",
                retryable=False,
                info="other",
            ) from None
        for data in payloads:
            index += 1
            event = decode_stream_event(data, index)
            if event is not None:
                yield event
