"""A thread's config and MCP servers: the part of the thread actor that applies a config
(at spawn, on `reload_user_config`, on a config write) and keeps the thread's MCP server set.

`ThreadConfigMixin` is mixed into `ThreadActor`; it holds no state of its own, only methods over
the actor's `config`, `settings`, `profiles` and `mcp`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

from spindle.protocol.config import Config, McpServerConfig
from spindle.protocol.events import ErrorEvent, Event, EventMsg, McpStartupUpdateEvent
from spindle.protocol.mcp import McpStartupStatus
from spindle.protocol.settings import ThreadSettings

from .errors import ConfigError
from .mcp_manager import McpManager
from .permission_profiles import PermissionProfiles, default_selection, load_profiles
from .resources import RuntimeResources

if TYPE_CHECKING:
    from .turn import Turn

log = structlog.get_logger(__name__)

INITIAL_SUB_ID = ""
"""The submission id of what a thread emits on its own (start-up, MCP statuses, faults)."""


class ThreadConfigMixin:
    thread_id: str
    config: Config
    settings: ThreadSettings
    profiles: PermissionProfiles
    resources: RuntimeResources
    session_config: dict[str, Any]
    mcp: McpManager
    mcp_configured: trio.Event
    _active: Turn | None
    _mcp_pending: dict[str, McpServerConfig] | None

    def emit(self, sub_id: str, msg: EventMsg) -> None:
        raise NotImplementedError

    def _deliver(self, sub_id: str, msg: EventMsg) -> None:
        raise NotImplementedError

    def _start_mcp(self) -> None:
        """Start the servers of the thread's effective config (the disk layers for its cwd and its
        own layer, computed when it was spawned), without holding up the thread."""
        self.mcp.apply(self.config.mcp_servers)
        self.mcp_configured.set()

    def _mcp_status(self, server: str, status: McpStartupStatus, error: str | None) -> None:
        self._deliver(INITIAL_SUB_ID, McpStartupUpdateEvent(server=server, status=status, error=error))

    def mcp_replay(self) -> list[Event]:
        """The start-up statuses so far of the current servers, for a new subscriber."""
        return [Event(id=INITIAL_SUB_ID, msg=msg) for msg in self.mcp.status_replay()]

    async def _reload_config(self, sub_id: str, config: Config | None) -> None:
        """`reload_user_config`: rebuild this thread's config from fresh disk layers for its
        current cwd, keeping its own session layer (unless `config` is that rebuild already)."""
        if config is None:
            try:
                config = await self.resources.thread_config(self.settings.cwd, self.session_config)
            except ConfigError as exc:
                self.emit(sub_id, ErrorEvent(message=f"failed to reload config for thread {self.thread_id}: {exc}",
                                             codex_error_info="bad_request"))
                return
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        """Make `config` the thread's effective config. Hot-reloaded into the settings of later
        turns (a running turn keeps its own): the approval policy, the permission selection (a
        profile or a sandbox mode) and context window, each only while the thread still has the
        old config's value (a value the thread was given, at start or by a turn, stays). The
        thread's permission profiles are the new config's. The model and reasoning effort are
        session-static, as in Codex. The MCP refresh hooks in here: `config.mcp_servers` is the
        thread's new server set."""
        old, self.config = self.config, config
        self.profiles = load_profiles(config)
        changes = {
            name: getattr(config, name) for name in ("approval_policy", "model_context_window")
            if getattr(self.settings, name) == getattr(old, name) != getattr(config, name)
        }
        selection = (self.settings.permissions, self.settings.sandbox_mode)
        if selection == default_selection(old) != (new := default_selection(config)):
            changes["permissions"], changes["sandbox_mode"] = new
        if changes:
            log.info("config reloaded", changes=changes)
            self.settings = msgspec.structs.replace(self.settings, **changes)
        self._refresh_mcp(config.mcp_servers)

    def _refresh_mcp(self, servers: dict[str, McpServerConfig]) -> None:
        """Make `servers` the thread's MCP server set: now when idle, else when the running turn
        ends (it keeps the tools it started with)."""
        if self._active is not None:
            self._mcp_pending = servers
        else:
            self.mcp.apply(servers)
