"""`spindle app-server`: the app-server on stdin/stdout, stopped by EOF or a signal."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from functools import partial

import trio

from spindle.actors.appserver import AppServer
from spindle.actors.runtime import open_runtime
from spindle.protocol.config import Config

from .signals import EXIT_CODES, on_signal


async def serve_stdio(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """One connection on stdin/stdout until stdin closes or SIGTERM/SIGINT.

    Either way every running turn is aborted and every rollout flushed before the process exits:
    0 for EOF and SIGTERM, 130 for SIGINT. `reload_config` re-reads the config for MCP refreshes.
    """
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    async with open_runtime(config, reload_config=reload_config) as manager, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(manager).run)
        stopped_by: list[signal.Signals] = []

        def stop(signum: signal.Signals) -> None:
            stopped_by.append(signum)
            serving.cancel_scope.cancel()

        async with trio.open_nursery() as serving:
            serving.start_soon(partial(on_signal, signal.SIGTERM, signal.SIGINT, then=stop))
            await server.serve(stdin, stdout)
            serving.cancel_scope.cancel()
        server.stop()  # `run` ends once the threads this connection let go of are flushed
    return EXIT_CODES[stopped_by[0]] if stopped_by else 0
