"""`spindle app-server proxy` and `spindle app-server daemon`: the proxy as a real subprocess
relaying JSON-RPC lines to a Unix-socket server, starting a daemon when none runs (one for two
proxies at once), failing clearly when it may not start one, never importing trio; and the
app-server's `--idle-exit`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from spindle.actors.appserver.listeners import Limits, serve
from spindle.actors.cli import daemon
from spindle.actors.runtime import ThreadManager
from spindle.actors.testing.mock_model import MockModel
from spindle.actors.testing.rpc_client import (
    RpcClient,
    spindle_argv,
    stdio_child,
    websocket_client,
    write_config,
)
from spindle.protocol.appserver.control import CONTROL_SOCKET, DAEMON_LOG

from .helpers import websocket_through

WAIT_S = 30.0
"""Generous: a daemon's start-up is Spindle's (~0.4 s) on a machine other tests keep busy."""


@pytest.fixture
def home(mock_model: MockModel) -> Iterator[Path]:
    """A CODEX_HOME short enough for its control socket path, on the mock model; any daemon
    left there is stopped."""
    with tempfile.TemporaryDirectory(prefix="px-", dir="/tmp") as folder:
        path = Path(folder)
        write_config(path, mock_model)
        try:
            yield path
        finally:
            daemon.stop(path)


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "CODEX_HOME": str(home)}


def alive(pid: int) -> bool:
    """Whether `pid` runs (an exited process that its new parent has not reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def spindle(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`spindle ARGS` with CODEX_HOME=`home` and no stdin, its output as text."""
    result = await trio.run_process([*spindle_argv(), *args], env=env_for(home), stdin=b"", capture_stdout=True,
                                    capture_stderr=True, check=False)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


@asynccontextmanager
async def proxy(home: Path, *flags: str, python: tuple[str, ...] = ()) -> AsyncIterator[tuple[RpcClient, trio.Process]]:
    """A `spindle app-server proxy` child, as an RPC client over its stdio; its stdin is closed
    (and its exit awaited) when the block ends."""
    argv = [*spindle_argv(), "app-server", "proxy", *flags]
    argv[1:1] = python
    async with stdio_child(argv, env=env_for(home), cwd=home, stderr=-1, call_timeout_s=WAIT_S) as running:
        yield running


async def stderr_of(process: trio.Process) -> str:
    assert process.stderr is not None
    data = b""
    while chunk := await process.stderr.receive_some():
        data += chunk
    return data.decode()


async def run_a_turn(client: RpcClient) -> None:
    result = await client.initialize()
    assert result["userAgent"].startswith("spindle/")
    thread = (await client.call("thread/start", {}))["thread"]
    turn = await client.run_turn(thread["id"], "through the proxy")
    assert turn["status"] == "completed"
    said = [n for n in client.notifications if n["method"] == "item/agentMessage/delta"]
    assert said, "the turn's deltas came through"


@asynccontextmanager
async def serving_unix(runtime: ThreadManager, path: Path) -> AsyncIterator[trio.CancelScope]:
    """`serve` on the Unix socket `path`; cancel the scope yielded to stop it early."""
    stop = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with stop:
            await serve(runtime, f"unix://{path}", task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        yield stop
        stop.cancel()


# --- relaying -------------------------------------------------------------------------------


async def test_the_proxy_relays_a_turn_and_never_imports_trio(runtime: ThreadManager) -> None:
    with tempfile.TemporaryDirectory(prefix="px-", dir="/tmp") as folder:
        sock = Path(folder) / "s.sock"
        async with serving_unix(runtime, sock):
            async with proxy(Path(folder), "--sock", str(sock), python=("-X", "importtime")) as (client, process):
                await run_a_turn(client)
                assert (await client.call("thread/loaded/list"))["data"]
                await client.send_raw(b'{"id":"last","method":"thread/loaded/list"}\n')  # answered before the proxy exits
            assert process.returncode == 0
            assert client.lines[-1]["id"] == "last"
            imported = {line.split("|")[-1].strip() for line in (await stderr_of(process)).splitlines() if line.startswith("import time:")}
    assert "spindle.actors.cli.proxy" in imported and "spindle.protocol.appserver.wsframe" in imported
    heavy = {name for name in imported if name.split(".")[0] in {"trio", "structlog", "msgspec", "httpx", "rich"}}
    ours = {name for name in imported if name.startswith("spindle.")} - {
        "spindle", "spindle.actors", "spindle.actors.cli", "spindle.actors.cli.entry", "spindle.actors.cli.early",
        "spindle.actors.cli.light", "spindle.actors.cli.proxy", "spindle.actors.cli.daemon", "spindle.protocol",
        "spindle.protocol.appserver", "spindle.protocol.appserver.control", "spindle.protocol.appserver.wsframe",
    }
    assert (heavy, ours) == (set(), set())


async def test_the_proxy_says_so_when_the_server_goes_away(runtime: ThreadManager) -> None:
    with tempfile.TemporaryDirectory(prefix="px-", dir="/tmp") as folder:
        sock = Path(folder) / "s.sock"
        async with serving_unix(runtime, sock) as server, proxy(Path(folder), "--sock", str(sock)) as (client, process):
            await client.initialize()
            server.cancel()  # the server stops: its connections end
            with trio.fail_after(WAIT_S):
                await process.wait()
    assert process.returncode == 1
    assert "spindle app-server proxy: the app-server went away" in await stderr_of(process)


async def test_nothing_listening_with_no_start_is_a_clear_error(home: Path) -> None:
    for flags in (["--no-start"], ["--sock", str(home / "elsewhere.sock")]):
        result = await spindle(home, "app-server", "proxy", *flags)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.startswith("spindle app-server proxy: no app-server listens on ")
        assert result.stderr.count("\n") == 1
    assert not (home / CONTROL_SOCKET).exists()  # and no daemon was started


def test_the_proxy_help_states_when_it_starts_a_daemon() -> None:
    result = subprocess.run([*spindle_argv(), "app-server", "proxy", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "if nothing answers on the default control socket" in text
    assert "With --sock PATH or --no-start it never starts one" in text


# --- the daemon -----------------------------------------------------------------------------


async def test_a_proxy_starts_a_daemon_that_serves_the_next_one_too(home: Path) -> None:
    async with proxy(home, "--idle-exit", "60") as (client, process):
        await run_a_turn(client)
    assert process.returncode == 0
    status = daemon.status(home)
    assert status["running"] and status["socket"] == str(home / CONTROL_SOCKET) and status["codexHome"] == str(home)
    async with proxy(home, "--no-start") as (client, process):  # the same daemon answers
        await run_a_turn(client)
    assert daemon.status(home)["pid"] == status["pid"]
    assert (home / DAEMON_LOG).read_text().count("daemon starting") == 1


async def test_two_proxies_at_once_make_one_daemon(home: Path) -> None:
    async with proxy(home) as (first, _), proxy(home) as (second, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.initialize)
            nursery.start_soon(second.initialize)
    assert (home / DAEMON_LOG).read_text().count("daemon starting") == 1


async def test_daemon_start_status_stop(home: Path) -> None:
    async def daemon_says(*args: str) -> subprocess.CompletedProcess[str]:
        return await spindle(home, "app-server", "daemon", *args)

    started = await daemon_says("start", "--idle-exit", "60")
    assert started.returncode == 0, started.stderr
    status = json.loads(started.stdout)
    assert status["running"] and status["pid"] > 0 and status["protocolVersion"] == "0.171.0"
    from spindle.actors.runtime.version import SPINDLE_VERSION

    assert status["version"] == SPINDLE_VERSION
    again = await daemon_says("start")
    assert json.loads(again.stdout)["pid"] == status["pid"]
    assert json.loads((await daemon_says("status")).stdout) == status
    stopped = await daemon_says("stop")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["stopped"] == status["pid"]
    assert not alive(status["pid"])
    gone = await daemon_says("status")
    assert gone.returncode == 1 and json.loads(gone.stdout) == {"running": False, "socket": str(home / CONTROL_SOCKET)}
    assert json.loads((await daemon_says("stop")).stdout)["stopped"] is None
    assert "spindle app-server listening on unix://" in (home / DAEMON_LOG).read_text()


async def test_a_daemon_that_cannot_start_is_reported_with_its_log(home: Path) -> None:
    (home / "config.toml").write_text("model = [\n")  # a config the daemon refuses
    result = await spindle(home, "app-server", "proxy")
    assert result.returncode == 2 and result.stdout == ""
    assert "spindle app-server proxy: cannot start a daemon: the daemon exited with code 2 before listening" in result.stderr
    assert "config.toml" in result.stderr  # the daemon's own error, quoted from its log


# --- --idle-exit ----------------------------------------------------------------------------


async def test_an_idle_server_exits_and_a_connected_client_keeps_it_up(
    runtime: ThreadManager, autojump_clock: trio.testing.MockClock,
) -> None:
    with tempfile.TemporaryDirectory(prefix="px-", dir="/tmp") as folder:
        sock = Path(folder) / "s.sock"
        done = trio.Event()

        async def serve_until_idle(task_status: trio.TaskStatus[None]) -> None:
            await serve(runtime, f"unix://{sock}", limits=Limits(idle_exit_s=600), task_status=task_status)
            done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(serve_until_idle)
            started = trio.current_time()
            async with websocket_client(f"unix://{sock}") as client:
                await client.initialize()
                await trio.sleep(1000)  # longer than the idle time, but connected
                assert not done.is_set()
            left = trio.current_time()
            await done.wait()  # no deadline: the autojump clock would reach it while the shutdown's threads work
            assert trio.current_time() - left >= 600 and left - started >= 1000
        assert not sock.exists()


async def test_the_app_server_command_exits_when_idle(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="px-", dir="/tmp") as folder:
        sock = Path(folder) / "s.sock"
        result = await spindle(tmp_path, "app-server", "--listen", f"unix://{sock}", "--idle-exit", "0.2")
        assert result.returncode == 0, result.stderr
        assert not sock.exists()


async def test_sigterm_ends_the_proxy_with_0(home: Path) -> None:
    async with proxy(home, "--idle-exit", "60") as (client, process):
        await client.initialize()  # relaying by now
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT_S):
            await process.wait()
    assert process.returncode == 0 and await stderr_of(process) == ""


async def test_a_websocket_client_gets_the_bytes_as_they_are(runtime: ThreadManager) -> None:
    """As through `codex app-server proxy`: a client that upgrades by itself."""
    with tempfile.TemporaryDirectory(prefix="px-", dir="/tmp") as folder:
        sock = Path(folder) / "s.sock"
        argv = [*spindle_argv(), "app-server", "proxy", "--sock", str(sock)]
        async with serving_unix(runtime, sock), websocket_through(argv, env_for(Path(folder))) as (client, process):
            await run_a_turn(client)
        assert process.returncode == 0
