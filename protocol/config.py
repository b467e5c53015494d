"""Configuration, in the Codex `config.toml` format (pure data; loading lives in actors.config)."""

from __future__ import annotations

from typing import Literal

import msgspec

from .settings import ApprovalPolicy, SandboxMode

OPENAI_PROVIDER_ID = "openai"
DEFAULT_MODEL = "gpt-5.1-codex"


class ModelProviderInfo(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """`[model_providers.NAME]`."""

    name: str
    base_url: str
    env_key: str | None = None
    wire_api: Literal["responses"] = "responses"
    request_max_retries: int = 4
    stream_max_retries: int = 5
    stream_idle_timeout_ms: int = 300_000
    http_headers: dict[str, str] = msgspec.field(default_factory=dict)


BUILTIN_PROVIDERS: dict[str, ModelProviderInfo] = {
    OPENAI_PROVIDER_ID: ModelProviderInfo(
        name="OpenAI", base_url="https://api.openai.com/v1", env_key="OPENAI_API_KEY"
    ),
}


class McpServerConfig(msgspec.Struct, kw_only=True, frozen=True):
    """`[mcp_servers.NAME]`: a stdio server (`command`) or a streamable HTTP one (`url`)."""

    command: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    env_vars: list[str] = msgspec.field(default_factory=list)
    cwd: str | None = None
    url: str | None = None
    bearer_token_env_var: str | None = None
    http_headers: dict[str, str] = msgspec.field(default_factory=dict)
    env_http_headers: dict[str, str] = msgspec.field(default_factory=dict)
    enabled: bool = True
    required: bool = False
    startup_timeout_sec: float | None = None
    startup_timeout_ms: int | None = None
    tool_timeout_sec: float = 60.0
    enabled_tools: list[str] | None = None
    disabled_tools: list[str] = msgspec.field(default_factory=list)


class Config(msgspec.Struct, kw_only=True, frozen=True):
    """The settings a runtime starts threads with."""

    model: str = DEFAULT_MODEL
    model_provider: str = OPENAI_PROVIDER_ID
    model_providers: dict[str, ModelProviderInfo] = msgspec.field(default_factory=dict)
    mcp_servers: dict[str, McpServerConfig] = msgspec.field(default_factory=dict)
    approval_policy: ApprovalPolicy = "on-request"
    sandbox_mode: SandboxMode = "read-only"
    model_context_window: int | None = None
    instructions: str | None = None
    cwd: str | None = None
    codex_home: str = ""

    def provider(self, provider_id: str | None = None) -> ModelProviderInfo:
        """The provider by id (default: `model_provider`); KeyError names the known ones."""
        pid = provider_id or self.model_provider
        providers = self.all_providers()
        try:
            return providers[pid]
        except KeyError:
            known = ", ".join(sorted(providers))
            raise KeyError(
                f"unknown model provider {pid!r}: define it under [model_providers.{pid}] "
                f"(known: {known})"
            ) from None

    def all_providers(self) -> dict[str, ModelProviderInfo]:
        return {**BUILTIN_PROVIDERS, **self.model_providers}
