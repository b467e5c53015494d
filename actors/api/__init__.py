"""Spindle: a Trio runtime for Codex-style agent threads, and a Codex app-server v2 drop-in.

The embedding API in one place::

    from spindle import open_runtime, SettingsUpdate, UserInputOp, TextInput

`open_runtime()` yields a `ThreadManager`; threads are `ThreadHandle`s; ops go in, `Event`s come
out. `serve(rt, "ws://127.0.0.1:0")` serves the app-server's listeners on a runtime (the one name
here from `spindle.actors.appserver`: the runtime itself never imports the app-server). The layers live in `spindle.protocol` (data), `spindle.persistence` (rollouts) and
`spindle.actors` (runtime, app-server, CLI, load tool, test helpers).

Names are imported on first use, so `spindle`'s own commands start without loading the runtime
before they need it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spindle.actors.appserver.listeners import Bound as Bound
    from spindle.actors.appserver.listeners import Limits as Limits
    from spindle.actors.appserver.listeners import ListenError as ListenError
    from spindle.actors.appserver.listeners import serve as serve
    from spindle.actors.runtime import *  # noqa: F403
    from spindle.actors.runtime.version import SPINDLE_VERSION as __version__  # noqa: F401
    from spindle.persistence.history import ForkSnapshot as ForkSnapshot
    from spindle.persistence.reader import RolloutReadError as RolloutReadError
    from spindle.persistence.store import ThreadStoreError as ThreadStoreError
    from spindle.protocol import *  # noqa: F403
    from spindle.protocol.config import Config as Config

_MODULES = ("spindle.actors.runtime", "spindle.protocol")
"""Packages whose `__all__` is spindle's too."""
_SINGLE = {
    "ForkSnapshot": "spindle.persistence.history",
    "RolloutReadError": "spindle.persistence.reader",
    "ThreadStoreError": "spindle.persistence.store",
    "Config": "spindle.protocol.config",
    "serve": "spindle.actors.appserver.listeners",
    "Bound": "spindle.actors.appserver.listeners",
    "Limits": "spindle.actors.appserver.listeners",
    "ListenError": "spindle.actors.appserver.listeners",
}


def _public() -> list[str]:
    names = ["__version__", *_SINGLE]
    for module in _MODULES:
        names.extend(importlib.import_module(module).__all__)
    return names


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return _public()
    if name == "__version__":
        return importlib.import_module("spindle.actors.runtime.version").SPINDLE_VERSION
    if name in _SINGLE:
        return getattr(importlib.import_module(_SINGLE[name]), name)
    for module in _MODULES:
        imported = importlib.import_module(module)
        if name in imported.__all__:
            return getattr(imported, name)
    raise AttributeError(f"module 'spindle' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_public()})
