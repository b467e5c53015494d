"""Configuration, in the Codex `config.toml` format (pure data; loading lives in actors.config)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


Seconds = Annotated[float, msgspec.Meta(ge=0)]
"""A duration in seconds: not negative, not NaN (`inf` waits for ever)."""


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
    startup_timeout_sec: Seconds | None = None
    startup_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tool_timeout_sec: Seconds = 60.0
    enabled_tools: list[str] | None = None
    disabled_tools: list[str] = msgspec.field(default_factory=list)


TrustLevel = Literal["trusted", "untrusted"]
ReasoningSummary = Literal["auto", "concise", "detailed", "none"]


class ProjectConfig(msgspec.Struct, kw_only=True, frozen=True):
    """`[projects."<abs path>"]`: whether the project's own `.codex/config.toml` layers apply."""

    trust_level: TrustLevel | None = None


class SandboxWorkspaceWrite(msgspec.Struct, kw_only=True, frozen=True):
    """`[sandbox_workspace_write]`: the legacy `workspace-write` mode's options."""

    writable_roots: list[str] = msgspec.field(default_factory=list)
    """Writable besides the workspace roots (each keeps its `.git` and `.codex` read-only)."""
    network_access: bool = False
    exclude_tmpdir_env_var: bool = False
    """`$TMPDIR` is not writable."""
    exclude_slash_tmp: bool = False
    """`/tmp` is not writable."""


DEFAULT_SANDBOX_MODE: SandboxMode = "read-only"
DEFAULT_UNLOAD_DELAY_S = 60.0
"""Codex's default `thread_unload_delay_secs`."""
"""What commands may touch when the config selects neither a sandbox mode nor a profile."""


class Config(msgspec.Struct, kw_only=True, frozen=True):
    """The settings a runtime starts threads with (the effective config of the layer stack)."""

    model: str = DEFAULT_MODEL
    model_provider: str = OPENAI_PROVIDER_ID
    model_providers: dict[str, ModelProviderInfo] = msgspec.field(default_factory=dict)
    mcp_servers: dict[str, McpServerConfig] = msgspec.field(default_factory=dict)
    approval_policy: ApprovalPolicy = "on-request"
    sandbox_mode: SandboxMode | msgspec.UnsetType = msgspec.UNSET
    """The legacy selection; when set (in any layer) it wins over `default_permissions`.
    Unset and no profile selected: `DEFAULT_SANDBOX_MODE`."""
    sandbox_workspace_write: SandboxWorkspaceWrite = msgspec.field(default_factory=SandboxWorkspaceWrite)
    default_permissions: str | None = None
    """The permission profile new threads select (a built-in `:id` or a `[permissions.<id>]`)."""
    permissions: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """`[permissions.<id>]` tables, as written (checked by the runtime's permission profiles)."""
    model_context_window: int | None = None
    model_auto_compact_token_limit: int | None = None
    """Compact a thread once its context passes this many tokens (capped at 90% of
    `model_context_window` when that is known; unset: only that 90%, or never)."""
    instructions: str | None = None
    model_reasoning_effort: str | None = None
    model_reasoning_summary: ReasoningSummary | None = None
    profile: str | None = None
    profiles: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    projects: dict[str, ProjectConfig] = msgspec.field(default_factory=dict)
    project_root_markers: list[str] = msgspec.field(default_factory=lambda: [".git"])
    cwd: str | None = None
    codex_home: str = ""
    features: dict[str, Any] = msgspec.field(default_factory=dict)
    """`[features]` flags, as written (Spindle reads `request_permissions_tool`)."""
    thread_unload_delay_secs: Seconds = DEFAULT_UNLOAD_DELAY_S
    """How long the app-server keeps a thread loaded once no client retains it and no turn runs
    (Codex's key; `inf`: for ever)."""

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


CODEX_ONLY_KEYS: dict[type[msgspec.Struct], frozenset[str]] = {
    Config: frozenset({
        "review_model", "model_auto_compact_token_limit_scope",
        "model_verbosity", "model_supports_reasoning_summaries", "plan_mode_reasoning_effort",
        "service_tier", "personality", "shell_environment_policy", "notify",
        "developer_instructions", "model_instructions_file", "experimental_instructions_file",
        "compact_prompt", "experimental_compact_prompt_file", "forced_chatgpt_workspace_id",
        "forced_login_method", "cli_auth_credentials_store", "mcp_oauth_credentials_store",
        "project_doc_max_bytes", "project_doc_fallback_filenames", "history", "file_opener", "tui",
        "hide_agent_reasoning", "show_raw_agent_reasoning", "chatgpt_base_url", "tools",
        "web_search", "windows_wsl_setup_acknowledged", "notice", "disable_paste_burst", "otel", "windows",
        "analytics", "feedback", "apps", "skills", "hooks",
        "approvals_reviewer", "check_for_update_on_startup", "sandbox", "suppress_unstable_features_warning",
        "ghost_snapshot", "oss_provider", "agents", "memories", "zsh_path", "js_repl_node_path", "desktop",
        "browser_use", "computer_use", "client_search_provider", "log_dir", "sqlite_home", "plugins",
        "tool_output_token_limit", "background_terminal_max_timeout", "commit_attribution",
        "model_catalog_json", "experimental_use_exec_command_tool", "experimental_use_unified_exec_tool",
        "experimental_use_freeform_apply_patch", "experimental_realtime_ws_base_url", "use_experimental_reasoning_summary",
        "responses_originator_header_internal_override", "include_apply_patch_tool", "include_plan_tool",
        "marketplaces", "remote_control", "realtime", "audio", "cloud",
    }),
    ModelProviderInfo: frozenset({
        "query_params", "env_key_instructions", "env_http_headers", "requires_openai_auth",
        "supports_websockets", "experimental_bearer_token", "websocket_connect_timeout_ms", "auth",
    }),
    McpServerConfig: frozenset({
        "scopes", "oauth_resource", "default_tools_approval_mode", "tools", "experimental_environment",
        "environment_id", "startup_readiness", "oauth", "http_headers_helper",
    }),
}
"""Keys the real Codex reads that Spindle does not use (yet), per struct: accepted silently, so a
Codex config.toml loads without warnings; any other key not a field is warned about."""

LayerKind = Literal["defaults", "system", "user", "project", "sessionFlags"]
"""Where a config layer comes from, lowest precedence first. `defaults` is a runtime's given
`Config` (an embedder's); the others are Codex's `ConfigLayerSource` types."""


class ConfigLayer(msgspec.Struct, kw_only=True, frozen=True):
    """One layer of the config stack: its raw TOML data (a table), and where it came from."""

    kind: LayerKind
    source: str
    """The file it was read from, or `-c` / `thread config` for session flags."""
    data: dict[str, Any]
    version: str
    """`sha256:<hex>` of the layer's content (the file's bytes, or the data's canonical JSON)."""
    profile: str | None = None
    """A user layer that is the selected `[profiles.NAME]` table."""
    folder: str | None = None
    """A project layer's `.codex` folder."""
    disabled_reason: str | None = None
    """Why the layer is not applied (an untrusted project), or None when it is."""

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def describe(self) -> str:
        """Where a value of this layer came from, for messages."""
        match self.kind:
            case "user" if self.profile is not None:
                return f"{self.source} [profiles.{self.profile}] (profile layer)"
            case "sessionFlags":
                return f"{self.source} (session flags)"
        return f"{self.source} ({self.kind} layer)"


class ConfigWarning(msgspec.Struct, kw_only=True, frozen=True):
    """A problem in a config layer that does not stop it loading (an unknown key)."""

    summary: str
    details: str | None = None
    path: str | None = None
