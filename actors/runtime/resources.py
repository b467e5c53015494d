"""What every thread of a runtime shares: the config, the tool registry, one model client per provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

from spindle.protocol.config import Config

from .config import ConfigError, config_from_mapping
from .model_client import ModelClient
from .tools import ToolRegistry


class RuntimeResources:
    """What every thread of a runtime shares: the config, the tool registry, one model client per provider."""

    def __init__(
        self, config: Config, tools: ToolRegistry | None = None, *, reload_base: Callable[[], Config] | None = None
    ) -> None:
        self.config = config
        self.tools = tools if tools is not None else ToolRegistry()
        self.reload_base = reload_base
        """How to read the base config afresh (from disk), for refreshes; None: keep `config`."""
        self._clients: dict[str, ModelClient] = {}

    async def thread_config(self, cwd: str, session: Mapping[str, Any]) -> Config:
        """A thread's effective config: the base config read afresh, then its session layer
        (dotted keys). ConfigError names the key at fault.

        Minimal stand-in for the layered version (which adds project layers for `cwd`)."""
        base = self.config
        if self.reload_base is not None:
            base = await trio.to_thread.run_sync(self.reload_base)
        if not session:
            return base
        data = msgspec.to_builtins(base)
        for key, value in session.items():
            set_dotted(data, key, value)
        return config_from_mapping(data, source="the thread's config", home=Path(base.codex_home))

    def client(self, provider_id: str) -> ModelClient:
        """The provider's client, created on first use. KeyError names unknown providers."""
        client = self._clients.get(provider_id)
        if client is None:
            client = ModelClient(provider_id, self.config.provider(provider_id))
            self._clients[provider_id] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """`data[a][b][c] = value` for the key `a.b.c`, creating the tables on the way."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"the thread's config: key {key!r}: {part!r} is not a table")
        node = child
    node[leaf] = value
