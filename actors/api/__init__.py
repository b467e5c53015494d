"""Spindle: a Trio runtime for Codex-style agent threads, and a Codex app-server v2 drop-in.

The embedding API in one place::

    from spindle import open_runtime, SettingsUpdate, UserInputOp, TextInput

`open_runtime()` yields a `ThreadManager`; threads are `ThreadHandle`s; ops go in, `Event`s come
out. The layers live in `spindle.protocol` (data), `spindle.persistence` (rollouts) and
`spindle.actors` (runtime, app-server, CLI, load tool, test helpers).
"""

from spindle.actors.runtime import *  # noqa: F403 - the runtime's public API
from spindle.actors.runtime import __all__ as _runtime_all
from spindle.actors.runtime.version import SPINDLE_VERSION as __version__
from spindle.persistence.history import ForkSnapshot
from spindle.persistence.reader import RolloutReadError
from spindle.persistence.store import ThreadStoreError
from spindle.protocol import *  # noqa: F403 - the op, event and item types
from spindle.protocol import __all__ as _protocol_all
from spindle.protocol.config import Config

__all__ = [
    "Config",
    "ForkSnapshot",
    "RolloutReadError",
    "ThreadStoreError",
    "__version__",
    *_runtime_all,
    *_protocol_all,
]
