"""Idempotency keys (a Spindle extension, experimental): a request whose params carry
`idempotencyKey` is carried out once per key, server-wide; a retry with the same key, on any
connection (a client that reconnected, say), gets the first answer instead of acting again. So a
`turn/start` retried after a lost answer does not start a second turn.

What is remembered: successful answers, and the "thread did not take it up in time" error (after
which the request may still take effect). Any other error is forgotten, so a retry runs again.
Answers are kept `ANSWER_TTL_S` and at most `ANSWER_KEYS` of them; the key names one request:
reusing it with another method or thread is refused.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from spindle.protocol.appserver.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    THREAD_TIMEOUT,
    Handshake,
    Request,
    RpcError,
    thread_timeout,
)

IDEMPOTENT_METHODS = frozenset({
    "thread/start", "turn/start", "turn/steer", "review/start", "thread/shellCommand", "thread/compact/start",
})
"""The methods that take an `idempotencyKey`: those that start something, with short answers."""
ANSWER_KEYS = 4096
"""Most keys remembered at once (the oldest answered ones go first)."""
ANSWER_TTL_S = 600.0
"""How long an answer is remembered after it was given."""
MAX_KEY_CHARS = 256


@dataclass
class _Answer:
    method: str
    thread_id: str | None
    done: trio.Event = field(default_factory=trio.Event)
    expires: float = math.inf
    result: Any = None
    error: RpcError | None = None


class Answers:
    """The answers given to requests with an idempotency key, by key."""

    def __init__(self) -> None:
        self._answers: OrderedDict[str, _Answer] = OrderedDict()

    async def once(self, key: str, method: str, thread_id: str | None, run: Callable[[], Awaitable[Any]]) -> Any:
        """`run()`'s result the first time `key` comes; the same result (or error) after, once
        it is known. RpcError(-32602) if `key` came with another method or thread."""
        self._expire()
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = _Answer(method, thread_id)
            self._bound()
            return await self._first(key, answer, run)
        if (answer.method, answer.thread_id) != (method, thread_id):
            where = f" on thread {answer.thread_id}" if answer.thread_id else ""
            raise RpcError(INVALID_PARAMS, f"Invalid params: idempotencyKey {key!r} was used for {answer.method}{where}; "
                                           "a key names one request")
        await answer.done.wait()
        if answer.error is not None:
            raise RpcError(answer.error.code, answer.error.message, answer.error.data)
        return answer.result

    async def _first(self, key: str, answer: _Answer, run: Callable[[], Awaitable[Any]]) -> Any:
        try:
            answer.result = await run()
        except trio.TooSlowError:
            answer.error = thread_timeout(answer.method, answer.thread_id)
            raise answer.error from None
        except RpcError as exc:
            answer.error = exc
            raise
        except BaseException as exc:
            answer.error = RpcError(INTERNAL_ERROR, f"the first {answer.method} with this idempotencyKey failed: {exc!r:.200}")
            raise
        finally:
            if answer.error is not None and answer.error.code != THREAD_TIMEOUT and self._answers.get(key) is answer:
                del self._answers[key]  # nothing was done: a retry runs again
            answer.expires = trio.current_time() + ANSWER_TTL_S
            answer.done.set()
        return answer.result

    def _expire(self) -> None:
        now = trio.current_time()
        while self._answers:
            oldest = next(iter(self._answers.values()))
            if not (oldest.done.is_set() and oldest.expires <= now):
                return
            self._answers.popitem(last=False)

    def _bound(self) -> None:
        while len(self._answers) > ANSWER_KEYS:
            key, oldest = next(iter(self._answers.items()))
            if not oldest.done.is_set():
                return  # still being answered: kept (the request queues bound these)
            del self._answers[key]


async def run_once(answers: Answers, request: Request, handshake: Handshake, run: Callable[[], Awaitable[Any]]) -> Any:
    """`run()`, or the remembered answer when `request` carries an idempotency key used before."""
    key = request.idempotency_key
    if key is None:
        return await run()
    handshake.require_experimental("idempotencyKey")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
        raise RpcError(INVALID_PARAMS, f"Invalid params: idempotencyKey must be a non-empty string of at most {MAX_KEY_CHARS} characters")
    if request.method not in IDEMPOTENT_METHODS:
        raise RpcError(INVALID_PARAMS, f"Invalid params: idempotencyKey is not accepted by {request.method} "
                                       f"(only by {', '.join(sorted(IDEMPOTENT_METHODS))})")
    return await answers.once(key, request.method, request.thread_id, run)
