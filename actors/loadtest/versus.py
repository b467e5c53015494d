"""Side-by-side app-server benchmarks: the same measurements against any `app-server` command.

Each phase starts a fresh server process with a fresh CODEX_HOME (a `config.toml` pointing at a
mock Responses model that runs in its own process), drives it over stdio with one `RpcClient`,
and returns its figures. `run_versus` runs every phase for every server, interleaved run by run
(server A run 1, server B run 1, server A run 2, ...), so both see the same machine load.

Phases:
- `startup`: spawn to the `initialize` answer (median of `spawns` fresh processes per run);
- `threads`: `thread/start` latency and the server's RSS growth over `thread_starts` starts;
- `turns`: one thread, sequential turns: round trip and the server's user+sys CPU per turn;
- `concurrent`: `threads` threads × `turns_each` turns, all threads at once on one connection;
- `resume`: `thread/resume` of a generated rollout of `resume_turns` turns in a fresh server.

After `initialize` a measured phase waits `settle_s`, so start-up work a server does in the
background (Codex syncs plugins) is not charged to the figures that follow.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from spindle.actors.testing.long_rollout import write_long_rollout
from spindle.actors.testing.rpc_client import MOCK_PROVIDER, RpcClient, spindle_argv, write_config

from .stats import cpu_s, percentile, rss_kib

CALL_TIMEOUT_S = 300.0
"""How long any one request may take (a cold resume of a long thread in a slow server)."""
EXIT_WAIT_S = 10.0
"""How long a server may take to exit once its stdin is closed, before it is killed."""
STDERR_TAIL = 2000
"""Characters of a failed server's stderr added to the error."""


@dataclass(frozen=True, kw_only=True)
class Server:
    """An app-server command that speaks JSON-RPC on stdio and reads CODEX_HOME."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def spindle_server() -> Server:
    return Server(name="spindle", argv=(*spindle_argv(), "app-server", "--listen", "stdio://"),
                  env={"SPINDLE_LOG": "warning"})


def codex_server(binary: str) -> Server:
    """The real Codex: `binary app-server`."""
    return Server(name="codex", argv=(binary, "app-server"), env={"RUST_LOG": "warn"})


@dataclass(frozen=True, kw_only=True)
class Sizes:
    spawns: int = 3
    thread_starts: int = 200
    turns: int = 100
    threads: int = 100
    turns_each: int = 5
    resume_turns: int = 2000
    settle_s: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Bench:
    """What every phase needs: the mock's URL, the sizes, a folder for homes, the rollout to resume."""

    base_url: str
    sizes: Sizes
    workdir: Path
    resume_home: Path | None = None
    """A home whose `sessions/` holds the rollout to resume (copied into each fresh home)."""
    resume_id: str = ""


async def prepare(base_url: str, sizes: Sizes, workdir: Path, *, resume: bool = True) -> Bench:
    """The shared set-up; with `resume`, generates the rollout of `sizes.resume_turns` turns once."""
    if not resume:
        return Bench(base_url=base_url, sizes=sizes, workdir=workdir)
    home = workdir / "resume-template"
    made = await trio.to_thread.run_sync(
        lambda: write_long_rollout(home, turns=sizes.resume_turns, model_provider=MOCK_PROVIDER))
    return Bench(base_url=base_url, sizes=sizes, workdir=workdir, resume_home=home, resume_id=made.thread_id)


@dataclass
class Running:
    client: RpcClient
    process: trio.Process
    spawn_ms: float
    """From just before the spawn to the `initialize` answer."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)[0]


@asynccontextmanager
async def fresh_home(bench: Bench, *, sessions_from: Path | None = None) -> AsyncIterator[Path]:
    """A new CODEX_HOME with the mock's config.toml (and a copy of `sessions_from`/sessions)."""
    with tempfile.TemporaryDirectory(prefix="versus-", dir=bench.workdir) as tmp:
        home = Path(tmp)
        if sessions_from is not None:
            await trio.to_thread.run_sync(shutil.copytree, sessions_from / "sessions", home / "sessions")
        await trio.to_thread.run_sync(write_config, home, bench.base_url)
        yield home


@asynccontextmanager
async def serving(server: Server, home: Path, *, settle_s: float = 0.0) -> AsyncIterator[Running]:
    """`server` on `home` (its CODEX_HOME and HOME), initialized (with `experimentalApi`), then
    `settle_s` later; on exit its
    stdin is closed and it has EXIT_WAIT_S to end. A failure carries the tail of its stderr."""
    stderr_path = home / "server-stderr.log"
    # HOME too: Codex runs the user's login shell at start-up (its shell snapshot), and a shell
    # profile's background jobs (pyenv's rehash, say) would load the machine during the phases
    env = {**os.environ, **server.env, "CODEX_HOME": str(home), "HOME": str(home)}
    with await trio.to_thread.run_sync(stderr_path.open, "wb") as stderr:
        t0 = time.perf_counter()
        process = await trio.lowlevel.open_process(list(server.argv), stdin=-1, stdout=-1, stderr=stderr, env=env,
                                                   cwd=str(home))
    assert process.stdin is not None and process.stdout is not None
    client = RpcClient(process.stdin, process.stdout, keep=False)
    client.timeout = CALL_TIMEOUT_S
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_loop)
            await client.initialize(experimental=True)
            running = Running(client, process, (time.perf_counter() - t0) * 1000)
            await trio.sleep(settle_s)
            yield running
            await process.stdin.aclose()
            with trio.move_on_after(EXIT_WAIT_S):
                await process.wait()
            nursery.cancel_scope.cancel()
    except Exception as exc:
        tail = (await trio.to_thread.run_sync(stderr_path.read_bytes))[-STDERR_TAIL:].decode(errors="replace")
        exc.add_note(f"{server.name} stderr (tail):\n{tail}")
        raise
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def start_thread(client: RpcClient) -> str:
    return str((await client.call("thread/start", {}))["thread"]["id"])


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


async def startup(server: Server, bench: Bench) -> dict[str, float]:
    spawns = []
    for _ in range(bench.sizes.spawns):
        async with fresh_home(bench) as home, serving(server, home) as running:
            spawns.append(running.spawn_ms)
    return {"spawn_to_initialize_ms": statistics.median(spawns)}


async def threads(server: Server, bench: Bench) -> dict[str, float]:
    n = bench.sizes.thread_starts
    async with fresh_home(bench) as home, serving(server, home, settle_s=bench.sizes.settle_s) as running:
        await start_thread(running.client)  # warm-up: lazy set-up of the first thread
        rss0 = running.rss_kib()
        latencies = []
        for _ in range(n):
            t0 = time.perf_counter()
            await start_thread(running.client)
            latencies.append(_ms_since(t0))
        rss1 = running.rss_kib()
    return {"thread_start_p50_ms": statistics.median(latencies), "thread_start_p99_ms": percentile(latencies, 99),
            "idle_kib_per_thread": (rss1 - rss0) / n}


async def turns(server: Server, bench: Bench) -> dict[str, float]:
    n = bench.sizes.turns
    async with fresh_home(bench) as home, serving(server, home, settle_s=bench.sizes.settle_s) as running:
        thread_id = await start_thread(running.client)
        await running.client.run_turn(thread_id, "warm-up")  # the first turn creates the rollout
        latencies = []
        cpu0 = running.cpu_s()
        for i in range(n):
            t0 = time.perf_counter()
            await running.client.run_turn(thread_id, f"turn {i}")
            latencies.append(_ms_since(t0))
        cpu = running.cpu_s() - cpu0
    return {"turn_round_trip_p50_ms": statistics.median(latencies), "cpu_ms_per_turn": cpu * 1000 / n}


async def concurrent(server: Server, bench: Bench) -> dict[str, float]:
    sizes = bench.sizes
    async with fresh_home(bench) as home, serving(server, home, settle_s=sizes.settle_s) as running:
        client = running.client
        thread_ids = [await start_thread(client) for _ in range(sizes.threads)]
        await client.run_turn(thread_ids[0], "warm-up")
        latencies: list[float] = []

        async def drive(thread_id: str) -> None:
            for i in range(sizes.turns_each):
                t0 = time.perf_counter()
                await client.run_turn(thread_id, f"turn {i}")
                latencies.append(_ms_since(t0))

        cpu0, wall0 = running.cpu_s(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for thread_id in thread_ids:
                nursery.start_soon(drive, thread_id)
        cpu, wall = running.cpu_s() - cpu0, time.perf_counter() - wall0
    n = len(latencies)
    return {"concurrent_turns_per_s": n / wall, "concurrent_cpu_ms_per_turn": cpu * 1000 / n,
            "concurrent_turn_p50_ms": statistics.median(latencies), "concurrent_turn_p99_ms": percentile(latencies, 99)}


class ResumeMismatchError(AssertionError):
    """A server answered `thread/resume` without the thread it was asked for, or with other turns."""


async def resume(server: Server, bench: Bench) -> dict[str, float]:
    assert bench.resume_home is not None, "prepare(resume=True) first"
    async with (fresh_home(bench, sessions_from=bench.resume_home) as home,
                serving(server, home, settle_s=bench.sizes.settle_s) as running):
        cpu0, t0 = running.cpu_s(), time.perf_counter()
        result = await running.client.call("thread/resume", {"threadId": bench.resume_id})
        wall, cpu = _ms_since(t0), running.cpu_s() - cpu0
    thread = result.get("thread") or {}
    got = len(thread.get("turns") or [])
    if thread.get("id") != bench.resume_id or got != bench.sizes.resume_turns:
        raise ResumeMismatchError(f"{server.name} resumed {thread.get('id')!r} with {got} turns, "
                                  f"not {bench.resume_id!r} with {bench.sizes.resume_turns}")
    return {"cold_resume_ms": wall, "cold_resume_cpu_ms": cpu * 1000}


Phase = Callable[[Server, Bench], Awaitable[dict[str, float]]]
PHASES: dict[str, Phase] = {fn.__name__: fn for fn in (startup, threads, turns, concurrent, resume)}

Samples = dict[str, dict[str, list[float]]]
"""server name -> figure -> one value per run."""


async def run_versus(servers: Sequence[Server], bench: Bench, *, phases: Sequence[str] = tuple(PHASES), runs: int = 1,
                     on_sample: Callable[[str, int, str, dict[str, float]], None] | None = None) -> Samples:
    """Every phase in `phases`, `runs` times, each run once per server in turn; `on_sample(phase,
    run, server, figures)` after each."""
    samples: Samples = {server.name: {} for server in servers}
    for phase in phases:
        for run in range(runs):
            for server in servers:
                figures = await PHASES[phase](server, bench)
                for key, value in figures.items():
                    samples[server.name].setdefault(key, []).append(value)
                if on_sample is not None:
                    on_sample(phase, run, server.name, figures)
    return samples
