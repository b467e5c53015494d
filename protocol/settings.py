"""A thread's settings: one frozen struct, and one struct of optional fields to change it.

Every way of choosing settings maps onto `SettingsUpdate` in exactly one place: config defaults
and validation in `spindle.actors.runtime.settings`, the `user_turn` / `override_turn_context`
ops by carrying one, the app-server's params in `spindle.protocol.appserver.v2map`, a resumed
rollout's last `turn_context` in `spindle.actors.runtime.settings`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

ApprovalPolicy = Literal["untrusted", "on-failure", "on-request", "never"]
"""When the user is asked before a command runs."""
SandboxMode = Literal["read-only", "workspace-write", "danger-full-access"]
"""What a command may touch."""
ReviewDecision = Literal["approved", "approved_for_session", "denied", "abort"]
"""A user's answer to an approval request: run it, run it and stop asking for it this session,
do not run it (the turn goes on), or do not run it and interrupt the turn."""

APPROVAL_POLICIES: frozenset[str] = frozenset(get_args(ApprovalPolicy))
SANDBOX_MODES: frozenset[str] = frozenset(get_args(SandboxMode))


class SettingsUpdate(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A change to a thread's settings; a field left `None` keeps the current value."""

    model: str | None = None
    provider_id: str | None = None
    cwd: str | None = None
    approval_policy: ApprovalPolicy | None = None
    sandbox_mode: SandboxMode | None = None
    instructions: str | None = None
    effort: str | None = None
    summary: str | None = None

    def changes(self) -> dict[str, Any]:
        """The fields this update sets, by name."""
        return {name: value for name in self.__struct_fields__ if (value := getattr(self, name)) is not None}

    def then(self, later: SettingsUpdate) -> SettingsUpdate:
        """This update followed by `later`: where both set a field, `later` wins."""
        return msgspec.structs.replace(self, **later.changes())


class ThreadSettings(msgspec.Struct, kw_only=True, frozen=True):
    """A thread's current settings; each turn runs with the value it started with."""

    model: str
    provider_id: str
    cwd: str
    approval_policy: ApprovalPolicy
    sandbox_mode: SandboxMode
    instructions: str
    effort: str | None = None
    summary: str | None = None
    model_context_window: int | None = None

    def updated(self, update: SettingsUpdate) -> ThreadSettings:
        """These settings with `update` applied (unvalidated: see the runtime's `apply_update`)."""
        return msgspec.structs.replace(self, **update.changes())
