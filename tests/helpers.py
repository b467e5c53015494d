from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from spindle.actors.appserver import AppServer
from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.fanout import Subscription
from spindle.actors.testing.mock_model import Call, MockRequest, Reply, Text
from spindle.actors.testing.rpc_client import RpcClient, in_memory
from spindle.protocol.events import Event, EventMsg

DEADLINE_S = 10.0


async def collect_until(
    events: Subscription[Event], stop: Callable[[Event], bool] | type[EventMsg]
) -> list[Event]:
    """Events up to and including the first that matches `stop` (a predicate or an EventMsg type)."""
    if isinstance(stop, type):
        kind = stop
        stop = lambda ev: isinstance(ev.msg, kind)  # noqa: E731
    seen: list[Event] = []
    with trio.fail_after(DEADLINE_S):
        async for ev in events:
            seen.append(ev)
            if stop(ev):
                return seen
    raise AssertionError(f"stream ended before the stop event; saw {[type(e.msg).__name__ for e in seen]}")


def kinds(events: list[Event]) -> list[str]:
    return [type(ev.msg).__struct_config__.tag for ev in events]  # type: ignore[attr-defined]


@asynccontextmanager
async def app_client(manager: ThreadManager, *, experimental: bool = False) -> AsyncIterator[RpcClient]:
    """An app-server on `manager` and an initialized in-memory client of it (with the
    `experimentalApi` capability if `experimental`)."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(manager).run)
        async with in_memory(server) as client:
            await client.initialize(experimental=experimental)
            yield client
        nursery.cancel_scope.cancel()


def escalating_model(request: MockRequest) -> Reply:
    """Asks to run a command outside the sandbox, then reports the command's last output line."""
    last = request.json()["input"][-1]
    if last["type"] == "function_call_output":
        return Text(text="done: " + last["output"].splitlines()[-1])
    return Call(name="exec_command", arguments={
        "cmd": "echo made > made.txt && echo made", "sandbox_permissions": "require_escalated",
        "justification": "write a file"})
