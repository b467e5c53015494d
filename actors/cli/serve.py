"""`spindle app-server`: the app-server on stdin/stdout, stopped by EOF or a signal."""

from __future__ import annotations

import os
import signal
from functools import partial

import trio

from spindle.actors.appserver import AppServer
from spindle.actors.runtime import open_runtime
from spindle.protocol.config import Config

from .signals import on_signal


async def serve_stdio(config: Config) -> int:
    """One connection on stdin/stdout until stdin closes or SIGTERM/SIGINT.

    Either way every thread is shut down and its rollout flushed before the process exits 0.
    """
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    async with open_runtime(config) as manager, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(manager).run)
        async with trio.open_nursery() as serving:
            serving.start_soon(partial(on_signal, signal.SIGTERM, signal.SIGINT, then=serving.cancel_scope.cancel))
            await server.serve(stdin, stdout)
            serving.cancel_scope.cancel()
        server.stop()  # `run` ends once the threads this connection let go of are flushed
    return 0
