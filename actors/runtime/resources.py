"""What every thread of a runtime shares: its config source, the tool registry, the model clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
import trio

from spindle.protocol.config import Config, ConfigWarning, ModelProviderInfo

from .apply_patch_tool import ApplyPatchTool
from .config_layers import ConfigSource, FixedConfig, LayerStack
from .exec_command import ExecCommandTool
from .model_client import ModelClient
from .permission_profiles import default_selection, load_profiles
from .request_user_input import RequestUserInputTool
from .tools import ToolRegistry

log = structlog.get_logger(__name__)


class RuntimeResources:
    """What every thread of a runtime shares: the config (its source, to compute each thread's
    effective config, and the thread-agnostic one), the tool registry, one model client per provider.

    `config` may be a `Config` (the runtime's base, no file is read) or a `ConfigSource`.
    A `LayeredConfig` source is loaded at once here (blocking: do it before trio runs, or in
    a worker thread, as `open_runtime` does)."""

    def __init__(self, config: Config | ConfigSource, tools: ToolRegistry | None = None) -> None:
        self.source: ConfigSource = FixedConfig(config) if isinstance(config, Config) else config
        self.warnings: list[ConfigWarning] = []
        """Config warnings (unknown keys) of the shared layers (files, `-c`) met so far, each once:
        the app-server sends them to every client after `initialize` (`configWarning`). Those of
        a thread's own layer go only to the client that brought it."""
        self._seen_warnings: set[ConfigWarning] = set()
        if isinstance(self.source, FixedConfig):  # a Config built in code is taken as it is
            self.config: Config = self.source.config
            load_profiles(self.config)  # its permission profiles are checked up front
            default_selection(self.config)
        else:
            stack = self.source.load()
            self.config = stack.config
            """The thread-agnostic effective config (no project layers, no thread's own layer)."""
            self.note_warnings(stack)
        self.config_writes = trio.CapacityLimiter(1)
        """One write of the user config.toml at a time (its version check and rename are one step)."""
        self.tools = tools if tools is not None else ToolRegistry([ExecCommandTool(), ApplyPatchTool(), RequestUserInputTool()])
        self._clients: dict[tuple[str, bytes], ModelClient] = {}

    def note_warnings(self, stack: LayerStack) -> list[ConfigWarning]:
        """Log the warnings of `stack` not seen before and return them; remember those of the
        shared layers (a thread's own layer is its client's business, and need not stay)."""
        shared = set(stack.warnings(thread_layer=False))
        new = [w for w in stack.warnings() if w not in self._seen_warnings]
        for warning in new:
            log.warning("config warning", summary=warning.summary, path=warning.path)
            if warning in shared:
                self._seen_warnings.add(warning)
                self.warnings.append(warning)
        return new

    async def load_stack(self, cwd: str | None = None, session: Mapping[str, Any] | None = None) -> LayerStack:
        """The layer stack read fresh from disk (in a worker thread), its effective config
        checked: ConfigError names the layer, key and problem."""
        if isinstance(self.source, FixedConfig) and not session:
            stack = self.source.load()
        else:
            stack = await trio.to_thread.run_sync(_load_checked, self.source, cwd, session)
        self.note_warnings(stack)
        return stack

    async def thread_config(self, cwd: str, session: Mapping[str, Any]) -> Config:
        """A thread's effective config: the disk layers freshly loaded for `cwd` (system, user,
        profile, the trusted project's `.codex/config.toml` files), then `-c`, then `session`
        (the thread's own `config` map: dotted keys to values, `ThreadHandle.session_config`).

        Reads files in a worker thread. ConfigError names the layer, key and problem. This is
        what a refresh (user config reload, MCP refresh) rebuilds a thread's config with."""
        if isinstance(self.source, FixedConfig) and not session:
            return self.config
        return (await self.load_stack(cwd, session)).config

    def client(self, provider_id: str, info: ModelProviderInfo | None = None) -> ModelClient:
        """The provider's client (for `info`, default the runtime's definition of `provider_id`),
        created on first use. KeyError names unknown providers."""
        info = info if info is not None else self.config.provider(provider_id)
        key = (provider_id, msgspec.json.encode(info))
        client = self._clients.get(key)
        if client is None:
            client = ModelClient(provider_id, info)
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


def _load_checked(source: ConfigSource, cwd: str | None, session: Mapping[str, Any] | None) -> LayerStack:
    stack = source.load(cwd, session)
    stack.config  # noqa: B018 - validated here, in the worker thread
    return stack
