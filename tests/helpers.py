from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from spindle.actors.appserver import AppServer
from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.fanout import Subscription
from spindle.actors.testing.mock_model import Call, MockRequest, Reply, Text
from spindle.actors.testing.rpc_client import RpcClient, in_memory
from spindle.protocol.appserver import wsframe as ws
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


class ProcessWebSocketWire:
    """WebSocket frames over a child's stdin/stdout (a byte relay such as `codex app-server
    proxy`), built with the proxy's own codec."""

    def __init__(self, process: trio.Process, reader: ws.FrameReader) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.stdin, self.stdout, self.reader = process.stdin, process.stdout, reader

    async def send_raw(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line.strip():
                await self.stdin.send_all(ws.encode_frame(ws.TEXT, line))

    async def messages(self) -> AsyncGenerator[bytes, None]:
        while True:
            while (event := self.reader.next_event()) is not None:
                if isinstance(event, ws.Message):
                    yield event.payload
                elif isinstance(event, ws.Close):
                    return
            data = await self.stdout.receive_some()
            if not data:
                return
            self.reader.receive_data(data)


@asynccontextmanager
async def websocket_through(argv: list[str], env: dict[str, str]) -> AsyncIterator[tuple[RpcClient, trio.Process]]:
    """An RPC client speaking WebSocket (upgrade and frames) through the stdio of the child `argv`;
    a close frame and stdin's end when the block ends."""
    process = await trio.lowlevel.open_process(argv, stdin=-1, stdout=-1, stderr=-3, env=env)
    assert process.stdin is not None and process.stdout is not None
    try:
        handshake = ws.Handshake()
        await process.stdin.send_all(handshake.request())
        with trio.fail_after(DEADLINE_S * 3):
            while not handshake.receive_data(await process.stdout.receive_some()):
                pass
        reader = ws.FrameReader()
        reader.receive_data(handshake.rest)
        client = RpcClient(wire=ProcessWebSocketWire(process, reader))
        client.timeout = DEADLINE_S * 3
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_loop)
            yield client, process
            await process.stdin.send_all(ws.encode_frame(ws.CLOSE, ws.close_payload()))
            with trio.fail_after(DEADLINE_S):
                await client.closed.wait()
            await process.stdin.aclose()
            with trio.fail_after(DEADLINE_S):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
