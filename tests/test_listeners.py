"""The app-server's listeners: WebSocket over TCP and over a Unix socket, many connections on one
runtime, and what each kind of bad client gets."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import spindle
from spindle.actors.appserver.listeners import MAX_CONNECTIONS, Bound, Limits, ListenError, serve
from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.actors.testing.rpc_client import (
    UPGRADE_HEADERS,
    RpcClient,
    RpcFailure,
    WebSocketWire,
    http_request,
    open_socket,
    spindle_argv,
    websocket_client,
    write_config,
)
from spindle.protocol.config import Config

WAIT_S = 10.0


@asynccontextmanager
async def serving(runtime: ThreadManager, *urls: str, **options: Any) -> AsyncIterator[tuple[Bound, ...]]:
    """`serve` on `runtime` at `urls`, until the block ends."""
    async with trio.open_nursery() as nursery:
        yield await nursery.start(lambda task_status: serve(runtime, *urls, task_status=task_status, **options))
        nursery.cancel_scope.cancel()


async def start_thread(client: RpcClient) -> dict[str, Any]:
    thread = (await client.call("thread/start", {}))["thread"]
    await client.wait_for("thread/started", lambda p: p["thread"]["id"] == thread["id"])
    return thread  # type: ignore[no-any-return]


def wire(client: RpcClient) -> WebSocketWire:
    assert isinstance(client.wire, WebSocketWire)
    return client.wire


async def closed_with(client: RpcClient, within: float = WAIT_S) -> tuple[int, str | None]:
    """The (code, reason) the server closed `client`'s WebSocket with."""
    with trio.fail_after(within):
        await client.closed.wait()
    closed = wire(client).closed
    assert closed is not None
    return closed


# --- round trips ----------------------------------------------------------------------------


async def test_a_turn_over_websocket(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,), websocket_client(bound.url) as client:
        assert bound.port and bound.url == f"ws://127.0.0.1:{bound.port}"
        reply = await client.send_message({"id": "initialize", "method": "initialize", "params": {
            "clientInfo": {"name": "codex_exec", "title": None, "version": "0.171.0"},
            "capabilities": {"experimentalApi": True, "optOutNotificationMethods": None}}})
        assert reply["id"] == "initialize" and reply["result"]["userAgent"].split("/", 1)[1].split()[0]
        await client.send_raw(b'{"method":"initialized"}\n')
        thread = await start_thread(client)
        turn = await client.run_turn(thread["id"], "say hi")
        assert turn["status"] == "completed"
        assert all(isinstance(note["emittedAtMs"], int) for note in client.notifications)
        assert (await client.send_message({"id": 7, "method": "thread/loaded/list"}))["id"] == 7


async def test_a_turn_over_the_unix_socket(runtime: ThreadManager, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    async with serving(runtime, f"unix://{path}") as (bound,), websocket_client(bound.url) as client:
        assert bound.path == path and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        await client.initialize()
        thread = await start_thread(client)
        assert (await client.run_turn(thread["id"], "over a socket file"))["status"] == "completed"
    assert not os.path.lexists(path)  # removed when the server stops


async def test_bare_unix_is_the_control_socket_under_codex_home(make_config: Callable[..., Config]) -> None:
    with tempfile.TemporaryDirectory(prefix="home-", dir="/tmp") as home:  # short enough for a socket path
        config = msgspec.structs.replace(make_config(), codex_home=home)
        async with open_runtime(config) as runtime, serving(runtime, "unix://") as (bound,):
            assert bound.path == Path(home) / "app-server-control" / "app-server-control.sock"
            assert stat.S_IMODE(os.stat(bound.path.parent).st_mode) == 0o700
            async with websocket_client(bound.url, path="/") as client:  # any path upgrades, as in Codex
                await client.initialize()


async def test_a_socket_path_too_long_to_connect_to_is_refused(runtime: ThreadManager, tmp_path: Path) -> None:
    path = tmp_path / ("x" * 100) / "s.sock"
    with pytest.raises(ListenError, match="at most 107 bytes"), trio.fail_after(WAIT_S):
        await serve(runtime, f"unix://{path}")


async def test_every_listener_is_served_by_one_runtime(runtime: ThreadManager, tmp_path: Path) -> None:
    async with serving(runtime, "ws://127.0.0.1:0", f"unix://{tmp_path}/s.sock") as (tcp, unix):
        async with websocket_client(tcp.url) as one, websocket_client(unix.url) as other:
            await one.initialize()
            await other.initialize()
            thread = await start_thread(one)
            await one.run_turn(thread["id"], "materialize")
            assert thread["id"] in (await other.call("thread/loaded/list"))["data"]


async def test_stdio_and_websocket_together_until_stdin_ends(runtime: ThreadManager) -> None:
    to_server, from_client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve, runtime, "stdio://", "ws://127.0.0.1:0", stdio=(from_client, from_client)))
        assert [b.url for b in bound][0] == "stdio://"
        lines = RpcClient(to_server, to_server)
        nursery.start_soon(lines.read_loop)
        await lines.initialize()
        thread = await start_thread(lines)
        async with websocket_client(bound[1].url) as socket_client:
            await socket_client.initialize()
            assert (await socket_client.call("thread/loaded/list"))["data"] == [thread["id"]]
        await to_server.send_stream.aclose()  # stdin ends: so does the server, every listener with it
    with pytest.raises(OSError):
        await open_socket(bound[1].url)


# --- many connections, one runtime ------------------------------------------------------------


async def test_two_clients_on_one_thread_both_see_its_events(runtime: ThreadManager, mock_model: MockModel) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with websocket_client(bound.url) as one, websocket_client(bound.url) as other:
            await one.initialize()
            await other.initialize()
            thread = await start_thread(one)
            await one.run_turn(thread["id"], "materialize")
            await other.call("thread/resume", {"threadId": thread["id"]})
            mark_one, mark_other = len(one.notifications), len(other.notifications)
            mock_model.script(Text(text="both of you", chunks=3), thread_id=thread["id"])
            turn = await one.run_turn(thread["id"], "to both")
            seen = await other.wait_for("turn/completed", lambda p: p["turn"]["id"] == turn["id"], after=mark_other)
            assert seen["params"]["turn"]["status"] == "completed"
            for client, mark in ((one, mark_one), (other, mark_other)):
                methods = client.methods(mark)
                assert "thread/status/changed" in methods and "turn/started" in methods
                deltas = [n["params"]["delta"] for n in client.notifications[mark:] if n["method"] == "item/agentMessage/delta"]
                assert "".join(deltas) == "both of you"


async def test_each_connection_has_its_own_handshake_and_opt_outs(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with websocket_client(bound.url) as quiet, websocket_client(bound.url) as plain:
            await quiet.call("initialize", {"clientInfo": {"name": "quiet", "version": "1"}, "capabilities": {
                "experimentalApi": True, "optOutNotificationMethods": ["item/agentMessage/delta", "thread/started"]}})
            with pytest.raises(RpcFailure, match="Not initialized"):
                await plain.call("thread/loaded/list")
            await plain.initialize()
            with pytest.raises(RpcFailure, match="collaborationMode/list requires experimentalApi"):
                await plain.call("collaborationMode/list")
            assert (await quiet.call("collaborationMode/list"))["data"]
            thread = (await quiet.call("thread/start", {}))["thread"]
            await plain.call("thread/resume", {"threadId": thread["id"]})
            await quiet.run_turn(thread["id"], "stream to one of you")
            await plain.wait_for("turn/completed")
            assert "item/agentMessage/delta" in plain.methods()
            assert "item/agentMessage/delta" not in quiet.methods() and "thread/started" not in quiet.methods()
            assert "item/completed" in quiet.methods()  # opted out of exact names only
            async with websocket_client(bound.url) as bad:
                with pytest.raises(RpcFailure, match="optOutNotificationMethods"):
                    await bad.call("initialize", {"clientInfo": {"name": "bad", "version": "1"},
                                                  "capabilities": {"optOutNotificationMethods": "thread/started"}})


async def test_a_dropped_connection_loses_nothing(runtime: ThreadManager, mock_model: MockModel) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with websocket_client(bound.url) as gone:
            await gone.initialize()
            thread = await start_thread(gone)
            await gone.run_turn(thread["id"], "remember this")
        async with websocket_client(bound.url) as back:
            await back.initialize()
            resumed = await back.call("thread/resume", {"threadId": thread["id"]})
            assert [t["status"] for t in resumed["thread"]["turns"]] == ["completed"]
            assert (await back.run_turn(thread["id"], "and go on"))["status"] == "completed"


# --- HTTP on the listener: health, Origin, auth -----------------------------------------------


async def test_readyz_and_healthz_answer_on_the_same_listener(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        assert (await http_request(bound.url, "/readyz"))[0] == 200
        assert (await http_request(bound.url, "/healthz"))[::2] == (200, b"")
        status, _, body = await http_request(bound.url, "/elsewhere")
        assert status == 400 and b"expected a WebSocket upgrade" in body


async def test_a_request_with_an_origin_is_refused(runtime: ThreadManager, tmp_path: Path) -> None:
    async with serving(runtime, "ws://127.0.0.1:0", f"unix://{tmp_path}/s.sock") as listeners:
        for bound in listeners:
            origin = [("Origin", "http://evil.example")]
            assert (await http_request(bound.url, "/rpc", headers=[*UPGRADE_HEADERS, *origin]))[0] == 403
            assert (await http_request(bound.url, "/readyz", headers=origin))[0] == 403
            assert (await http_request(bound.url, "/rpc", headers=UPGRADE_HEADERS))[0] == 101


async def test_a_token_guards_the_websocket_listener(runtime: ThreadManager, tmp_path: Path) -> None:
    async with serving(runtime, "ws://127.0.0.1:0", f"unix://{tmp_path}/s.sock", token="s3cret\n") as (tcp, unix):
        for headers in ([], [("Authorization", "Bearer wrong")], [("Authorization", "s3cret")]):
            status, reply_headers, body = await http_request(tcp.url, "/rpc", headers=[*UPGRADE_HEADERS, *headers])
            assert status == 401 and reply_headers["www-authenticate"] == "Bearer" and b"bearer token" in body
        assert (await http_request(tcp.url, "/rpc?token=s3cret", headers=UPGRADE_HEADERS))[0] == 401
        async with websocket_client(tcp.url, token="s3cret") as client:
            await client.initialize()
        assert (await http_request(tcp.url, "/readyz"))[0] == 200
        async with websocket_client(unix.url) as local:  # the socket file's mode is its guard
            await local.initialize()


async def test_non_loopback_without_a_token_does_not_start(runtime: ThreadManager) -> None:
    with pytest.raises(ListenError, match="0.0.0.0 is not a loopback address"), trio.fail_after(WAIT_S):
        await serve(runtime, "ws://0.0.0.0:0")
    with pytest.raises(ListenError, match="not a listener URL"), trio.fail_after(WAIT_S):
        await serve(runtime, "tcp://127.0.0.1:1")


# --- the socket file ---------------------------------------------------------------------------


async def test_a_stale_socket_is_replaced(runtime: ThreadManager, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nothing answers
    async with serving(runtime, f"unix://{path}") as (bound,), websocket_client(bound.url) as client:
        await client.initialize()
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


async def test_a_live_socket_or_a_file_is_not_replaced(runtime: ThreadManager, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    async with serving(runtime, f"unix://{path}"):
        with pytest.raises(ListenError, match=f"another server is listening on {path}"), trio.fail_after(WAIT_S):
            await serve(runtime, f"unix://{path}")
        assert (await http_request(f"unix://{path}", "/readyz"))[0] == 200  # the first one still serves
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(ListenError, match="exists and is not a socket"), trio.fail_after(WAIT_S):
        await serve(runtime, f"unix://{plain}")
    assert plain.read_text() == "keep me"


# --- bad clients ------------------------------------------------------------------------------


async def test_a_binary_frame_closes_the_connection(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with websocket_client(bound.url) as client:
            await client.initialize()
            await wire(client).ws.send_message(b'{"id":1,"method":"thread/loaded/list"}')
            code, reason = await closed_with(client)
            assert code == 1003 and reason and "text frame" in reason
        async with websocket_client(bound.url) as other:  # the listener goes on
            await other.initialize()


async def test_an_oversized_message_closes_the_connection(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0", limits=Limits(max_message_bytes=4096)) as (bound,):
        async with websocket_client(bound.url) as client:
            status, headers, _ = await http_request(bound.url, "/rpc", headers=UPGRADE_HEADERS)
            assert headers["x-codex-websocket-max-unfragmented-message-bytes"] == "4096"
            await client.initialize()
            await wire(client).ws.send_message('{"id":1,"method":"thread/start","params":{"baseInstructions":"' + "x" * 5000 + '"}}')
            code, reason = await closed_with(client)
            assert code == 1009 and reason and "4096" in reason


async def test_text_that_is_not_json_is_answered_and_the_connection_goes_on(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,), websocket_client(bound.url) as client:
        await client.initialize()
        await wire(client).ws.send_message("{this is not json")
        await wire(client).ws.send_message('{"id": 5, "method": "thread/loaded/list"')
        await client.wait_until(lambda: sum("error" in line for line in client.lines) == 2)
        errors = [line for line in client.lines if "error" in line]
        assert [e["id"] for e in errors] == [None, 5] and {e["error"]["code"] for e in errors} == {-32700}
        assert (await client.call("thread/loaded/list"))["data"] == []


async def test_a_flood_of_frames_is_answered_overloaded_and_others_go_on(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with websocket_client(bound.url) as flood, websocket_client(bound.url) as calm:
            await flood.initialize()
            await calm.initialize()
            frames = 2000
            for n in range(frames):
                await wire(flood).ws.send_message(f'{{"id":"f{n}","method":"thread/loaded/list"}}')
            flooded = lambda: [line for line in flood.lines if str(line.get("id")).startswith("f")]  # noqa: E731
            await flood.wait_until(lambda: len(flooded()) == frames)  # every frame gets an answer
            assert all("result" in line or line["error"]["code"] == -32001 for line in flooded())  # or "overloaded"
            assert (await calm.call("thread/loaded/list"))["data"] == []


async def test_a_socket_that_sends_no_request_is_closed(runtime: ThreadManager, autojump_clock: trio.testing.MockClock) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with await open_socket(bound.url) as silent:
            with trio.fail_after(60):
                data = await silent.receive_some()
            assert data.startswith(b"HTTP/1.1 408 ") and b"no complete HTTP request within 10 s" in data
            assert await silent.receive_some() == b""
        assert (await http_request(bound.url, "/readyz"))[0] == 200


async def test_a_client_that_never_initializes_is_disconnected(runtime: ThreadManager, autojump_clock: trio.testing.MockClock) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        async with websocket_client(bound.url) as idle, websocket_client(bound.url) as ready:
            await ready.initialize()
            code, reason = await closed_with(idle, within=60)
            assert code == 1008 and reason == "no initialize request within 30 s"
            assert (await ready.call("thread/loaded/list"))["data"] == []


async def test_connections_past_the_limit_are_refused(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0", limits=Limits(max_connections=3)) as (bound,):
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(websocket_client(bound.url)) for _ in range(3)]
            status, headers, body = await http_request(bound.url, "/rpc", headers=UPGRADE_HEADERS)
            assert (status, headers["retry-after"]) == (503, "1") and b"too many connections" in body
            assert (await http_request(bound.url, "/readyz"))[0] == 200  # health checks are not connections
            await clients[0].initialize()
        async with websocket_client(bound.url) as again:  # room again once they left
            await again.initialize()


async def test_a_thousand_connections_each_get_an_answer(runtime: ThreadManager) -> None:
    async with serving(runtime, "ws://127.0.0.1:0") as (bound,), websocket_client(bound.url) as steady:
        await steady.initialize()
        statuses: list[int] = []
        holders: list[trio.SocketStream] = []

        async def connect() -> None:
            stream = await open_socket(bound.url)
            holders.append(stream)
            request = b"GET /rpc HTTP/1.1\r\nHost: localhost\r\n" + b"".join(
                f"{name}: {value}\r\n".encode() for name, value in UPGRADE_HEADERS) + b"\r\n"
            await stream.send_all(request)
            head = b""
            with trio.fail_after(WAIT_S * 3):
                while b"\r\n" not in head:
                    head += await stream.receive_some()
            statuses.append(int(head.split()[1]))

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(1000):
                    nursery.start_soon(connect)
            assert statuses.count(101) == MAX_CONNECTIONS - 1 and statuses.count(503) == 1000 - statuses.count(101)
            assert (await steady.call("thread/loaded/list"))["data"] == []  # the first client is unaffected
        finally:
            for stream in holders:
                await trio.aclose_forcefully(stream)


# --- embedding, the command line, the load tool ------------------------------------------------


async def test_an_embedded_runtime_serves_a_listener(runtime: ThreadManager) -> None:
    async with trio.open_nursery() as nursery:
        (bound,) = await nursery.start(spindle.serve, runtime, "ws://127.0.0.1:0")
        async with websocket_client(bound.url) as client:
            await client.initialize()
            thread = await start_thread(client)
            assert runtime.running(thread["id"]) is not None
        nursery.cancel_scope.cancel()


async def test_app_server_serves_ws_and_unix_from_the_command_line(tmp_path: Path, mock_model: MockModel) -> None:
    home = tmp_path / "home"
    write_config(home, mock_model)
    sock = tmp_path / "cli.sock"
    argv = [*spindle_argv(), "app-server", "--listen", "ws://127.0.0.1:0", "--listen", f"unix://{sock}",
            "--analytics-default-enabled"]
    env = {**os.environ, "CODEX_HOME": str(home)}
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(
            trio.run_process, argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path), check=False,
        ))
        assert process.stderr is not None
        banner = b""
        with trio.fail_after(WAIT_S * 3):
            while banner.count(b"listening on") < 2:
                banner += await process.stderr.receive_some()
        urls = [line.split("listening on ", 1)[1].split()[0] for line in banner.decode().splitlines() if "listening on" in line]
        assert urls[1] == f"unix://{sock}" and urls[0].startswith("ws://127.0.0.1:")
        for url in urls:
            async with websocket_client(url) as client:
                await client.initialize()
                thread = await start_thread(client)
                assert (await client.run_turn(thread["id"], "over the wire"))["status"] == "completed"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT_S):
            await process.wait()
    assert process.returncode == 0 and not sock.exists()


def test_app_server_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    def refusal(*flags: str) -> str:
        result = subprocess.run([*spindle_argv(), "app-server", *flags], env={**os.environ, "CODEX_HOME": str(tmp_path)},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stdout == ""
        return result.stderr

    assert "add --ws-auth capability-token --ws-token-file FILE" in refusal("--listen", "ws://0.0.0.0:4500")
    assert "needs --ws-token-file" in refusal("--listen", "ws://127.0.0.1:1", "--ws-auth", "capability-token")
    missing = tmp_path / "nope"
    assert f"cannot read --ws-token-file {missing}" in refusal("--listen", "ws://0.0.0.0:1", "--ws-auth", "capability-token",
                                                                "--ws-token-file", str(missing))
    assert "Spindle serves only capability-token" in refusal("--ws-auth", "signed-bearer-token")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on ws://127.0.0.1:{port}: Address already in use" in refusal("--listen", f"ws://127.0.0.1:{port}")


async def test_load_drives_a_running_server_over_websocket(runtime: ThreadManager) -> None:
    from spindle.actors.loadtest.driver import LoadSpec, run_load

    async with serving(runtime, "ws://127.0.0.1:0") as (bound,):
        stats = await run_load(LoadSpec(threads=3, turns=2, target=bound.url), None)
    assert (stats.threads_started, stats.turns_done, dict(stats.errors)) == (3, 6, {})
    assert stats.summary()["target"] == bound.url


def test_load_names_a_server_it_cannot_reach(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: nothing answers
        result = subprocess.run([*spindle_argv(), "load", "--target", f"ws://127.0.0.1:{port}", "--no-progress"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"spindle load: cannot connect to ws://127.0.0.1:{port}: all attempts to connect to 127.0.0.1:{port} failed"]


async def test_a_client_that_answers_no_ping_is_disconnected(runtime: ThreadManager) -> None:
    from spindle.actors.testing.rpc_client import open_socket

    limits = Limits(ping_interval_s=0.05, pong_timeout_s=0.05)
    async with serving(runtime, "ws://127.0.0.1:0", limits=limits) as (bound,):
        silent = await open_socket(bound.url)  # upgrades, then never reads again: no pong ever comes
        request = "GET /rpc HTTP/1.1\r\nHost: localhost\r\n" + "".join(f"{k}: {v}\r\n" for k, v in UPGRADE_HEADERS)
        await silent.send_all((request + "\r\n").encode())
        assert b" 101 " in await silent.receive_some(4096)
        with trio.fail_after(10):
            while True:  # the server closes it: pings, then a close frame, then the end of the stream
                if not await silent.receive_some(4096):
                    break
        await silent.aclose()


def test_a_stdio_server_never_imports_the_websocket_library() -> None:
    """Start-up cost: trio-websocket is imported once a WebSocket connection exists, not before."""
    import sys

    code = ("import sys, spindle.actors.cli.serve, spindle.actors.appserver; "
            "sys.exit('trio_websocket' in sys.modules or 'wsproto' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
