"""What every thread of a runtime shares: the config, the tool registry, one model client per provider."""

from __future__ import annotations

from spindle.protocol.config import Config

from .model_client import ModelClient
from .tools import ToolRegistry


class RuntimeResources:
    """What every thread of a runtime shares: the config, the tool registry, one model client per provider."""

    def __init__(self, config: Config, tools: ToolRegistry | None = None) -> None:
        self.config = config
        self.tools = tools if tools is not None else ToolRegistry()
        self._clients: dict[str, ModelClient] = {}

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
