"""`spindle load`: many threads × many turns, in-process, through a `spindle app-server` child, or
against a running app-server over WebSocket.

A run starts `threads` threads and runs `turns` turns on each, at most `concurrency` threads at a
time, against the built-in mock model (shaped by `model_latency_ms` and `reply_tokens`) or the
configured provider; a running server (`ws://HOST:PORT` or `unix://PATH`) uses its own model. It
measures thread start and turn latency, throughput, errors by kind, peak RSS and CPU per turn (of
the process it runs or starts; not of a running server), and stops cleanly on Ctrl-C with what it
measured so far.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
import trio

from spindle.actors.runtime import (
    ThreadClosedError,
    TurnAbortedError,
    TurnError,
    codex_home,
    open_runtime,
)
from spindle.actors.testing.mock_model import NO_RETRIES, mock_config
from spindle.actors.testing.rpc_client import (
    RpcClient,
    RpcFailure,
    spindle_argv,
    subprocess_server,
    websocket_client,
    write_config,
)
from spindle.protocol.appserver.control import CONTROL_SOCKET
from spindle.protocol.appserver.listen import (
    ListenUrlError,
    UnixListen,
    WebSocketListen,
    parse_listen,
)
from spindle.protocol.config import Config

from .stats import LoadStats, Progress, cpu_s, rss_kib

log = structlog.get_logger(__name__)

Target = Literal["inproc", "app-server"] | str
"""Where the threads run: in this process, in an app-server child, or at a running app-server's
WebSocket listener (`ws://HOST:PORT`, `unix://PATH`, `unix://` for the control socket)."""


class LoadError(ValueError):
    """Arguments a run cannot start with; the message says which and why."""


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    threads: int = 100
    turns: int = 3
    concurrency: int | None = None
    target: Target = "inproc"
    model_latency_ms: float = 0.0
    reply_tokens: int = 16
    use_mock: bool = True
    home: Path | None = None

    def validate(self) -> None:
        if self.threads < 1:
            raise LoadError(f"--threads must be at least 1, got {self.threads}")
        if self.turns < 1:
            raise LoadError(f"--turns must be at least 1, got {self.turns}")
        if self.concurrency is not None and self.concurrency < 1:
            raise LoadError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.model_latency_ms < 0:
            raise LoadError(f"--model-latency-ms must not be negative, got {self.model_latency_ms:g}")
        if self.reply_tokens < 1:
            raise LoadError(f"--reply-tokens must be at least 1, got {self.reply_tokens}")
        for target in self.remotes:
            try:
                listen = parse_listen(target)
            except ListenUrlError:
                listen = None
            if not isinstance(listen, WebSocketListen | UnixListen):
                raise LoadError("--target must be inproc, app-server, or running servers' ws://HOST:PORT or unix://PATH"
                                f" (comma-separated to spread threads over nodes); got {target!r}")

    @property
    def remotes(self) -> list[str]:
        """The URLs of the running app-servers the run drives (threads spread over them in turn)."""
        if self.target in ("inproc", "app-server"):
            return []
        return [f"unix://{codex_home() / CONTROL_SOCKET}" if url == "unix://" else url
                for url in (part.strip() for part in self.target.split(",")) if url]


def check_provider(config: Config) -> None:
    """LoadError unless the configured provider's host accepts a TCP connection."""
    base = urlsplit(config.provider().base_url)
    port = base.port or (443 if base.scheme == "https" else 80)
    try:
        with socket.create_connection((base.hostname or "localhost", port), timeout=3):
            pass
    except OSError as exc:
        raise LoadError(f"provider {config.model_provider!r} at {config.provider().base_url} is unreachable: {exc}") from None


@asynccontextmanager
async def mock_process(spec: LoadSpec) -> AsyncIterator[str]:
    """A `spindle mock-model` child shaped by `spec`; yields its base URL.

    The mock runs in its own process so that the CPU and memory measured are Spindle's alone.
    """
    argv = [*spindle_argv(), "mock-model", "--latency-ms", str(spec.model_latency_ms), "--reply-tokens", str(spec.reply_tokens)]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise LoadError("the mock model did not start")
                line += chunk
        yield line.decode().strip()
    finally:
        process.terminate()
        with trio.CancelScope(shield=True):
            await process.wait()


def _classify(exc: BaseException) -> str:
    match exc:
        case RpcFailure():
            return f"rpc {exc.code}"
        case TurnError():
            return "turn failed"
        case TurnAbortedError():
            return "turn aborted"
        case ThreadClosedError():
            return "thread closed"
        case trio.TooSlowError():
            return "timeout"
    return type(exc).__name__


async def _stop_when(stop: trio.Event, run_scope: trio.CancelScope, stats: LoadStats) -> None:
    await stop.wait()
    stats.stopped_early()
    run_scope.cancel()


async def run_load(
    spec: LoadSpec, config: Config | None, progress: Progress | None = None, *, stop: trio.Event | None = None
) -> LoadStats:
    """Run one load test; setting `stop` ends it early, with the figures so far."""
    spec.validate()
    progress = progress or Progress()
    if urls := spec.remotes:  # running servers, with their own model and home
        stats = LoadStats(target=spec.target, measured=False)
        with trio.CancelScope() as run_scope:
            async with trio.open_nursery() as nursery:
                if stop is not None:
                    nursery.start_soon(_stop_when, stop, run_scope, stats)
                await _run_remote(spec, urls, stats, progress)
                nursery.cancel_scope.cancel()
        return stats
    if spec.use_mock:
        home = spec.home or Path(tempfile.mkdtemp(prefix="spindle-load-"))
    else:  # the configured provider: its home holds the config the app-server child reads
        home = spec.home or (Path(config.codex_home) if config and config.codex_home else codex_home())
    stats = LoadStats(target=spec.target, home=str(home))
    if not spec.use_mock:
        if config is None:
            raise LoadError("a run against the configured provider needs its config")
        await trio.to_thread.run_sync(check_provider, config)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        if spec.use_mock:
            base_url = await stack.enter_async_context(mock_process(spec))
            config = mock_config(base_url, home, provider=NO_RETRIES)
            if spec.target == "app-server":
                write_config(home, base_url)
        assert config is not None
        with trio.CancelScope() as run_scope:
            if stop is not None:
                nursery.start_soon(_stop_when, stop, run_scope, stats)
            if spec.target == "inproc":
                await _run_inproc(spec, config, stats, progress)
            else:
                await _run_app_server(spec, home, stats, progress)
        nursery.cancel_scope.cancel()
    return stats


async def _drive(spec: LoadSpec, stats: LoadStats, progress: Progress, one_thread: Callable[[], Any], pid: int | None = None) -> None:
    """Run `one_thread` `spec.threads` times, `spec.concurrency` at once, measuring process `pid`."""
    stats.baseline_rss_kib = rss_kib(pid)[0]
    cpu0 = cpu_s(pid)
    try:
        await _workers(spec, stats, progress, one_thread)
    finally:
        stats.peak_rss_kib = rss_kib(pid)[1]
        stats.cpu_s = cpu_s(pid) - cpu0


async def _workers(spec: LoadSpec, stats: LoadStats, progress: Progress, one_thread: Callable[[], Any]) -> None:
    limiter = trio.CapacityLimiter(spec.concurrency or spec.threads)

    async def worker() -> None:
        async with limiter:
            try:
                await one_thread()
            except (Exception, trio.TooSlowError) as exc:
                stats.failed(_classify(exc), progress)

    start = time.perf_counter()
    try:
        async with trio.open_nursery() as workers:
            for _ in range(spec.threads):
                workers.start_soon(worker)
    finally:
        stats.elapsed_s = time.perf_counter() - start


async def _run_inproc(spec: LoadSpec, config: Config, stats: LoadStats, progress: Progress) -> None:
    async with open_runtime(config) as manager:

        async def one_thread() -> None:
            t0 = time.perf_counter()
            handle = await manager.start_thread()
            stats.thread_started(t0, progress)
            for n in range(spec.turns):
                t0 = time.perf_counter()
                try:
                    await handle.ask(f"load turn {n}")
                except (TurnError, TurnAbortedError) as exc:
                    stats.failed(_classify(exc), progress)
                else:
                    stats.turn_done(t0, progress)

        await _drive(spec, stats, progress, one_thread)


async def _run_app_server(spec: LoadSpec, home: Path, stats: LoadStats, progress: Progress) -> None:
    async with subprocess_server(home, log_level="warning") as (client, process):
        await _drive(spec, stats, progress, await _rpc_threads(spec, client, stats, progress), process.pid)


async def _run_remote(spec: LoadSpec, urls: list[str], stats: LoadStats, progress: Progress) -> None:
    """Drive the servers at `urls`, one connection each, their threads started in turn; with
    more than one, each server's figures are kept too (`stats.nodes`)."""
    async with AsyncExitStack() as stack:
        drivers = []
        for url in urls:
            try:
                client = await stack.enter_async_context(websocket_client(url, keep=False))
            except OSError as exc:
                raise LoadError(f"cannot connect to {url}: {exc.strerror or exc}") from None
            node = stats.nodes.setdefault(url, LoadStats(target=url, measured=False)) if len(urls) > 1 else None
            drivers.append(await _rpc_threads(spec, client, stats, progress, node))
        turn = itertools.cycle(drivers)
        try:
            await _workers(spec, stats, progress, lambda: next(turn)())
        finally:
            for node in stats.nodes.values():
                node.elapsed_s = stats.elapsed_s


async def _rpc_threads(spec: LoadSpec, client: RpcClient, stats: LoadStats, progress: Progress,
                       node: LoadStats | None = None) -> Callable[[], Any]:
    """Initialize `client`; the function that drives one thread through it (counted in `node` too)."""
    quiet = Progress()
    client.keep = False
    client.timeout = 300.0
    await client.initialize()

    async def one_thread() -> None:
        t0 = time.perf_counter()
        thread = (await client.call("thread/start", {}))["thread"]
        stats.thread_started(t0, progress)
        if node is not None:
            node.thread_started(t0, quiet)
        for n in range(spec.turns):
            t0 = time.perf_counter()
            params = {"threadId": thread["id"], "input": [{"type": "text", "text": f"load turn {n}"}]}
            turn = (await client.call("turn/start", params))["turn"]
            done = await client.wait_turn(turn["id"])
            if done["status"] == "completed":
                stats.turn_done(t0, progress)
                if node is not None:
                    node.turn_done(t0, quiet)
            else:
                stats.failed(f"turn {done['status']}", progress)
                if node is not None:
                    node.failed(f"turn {done['status']}", quiet)

    return one_thread
