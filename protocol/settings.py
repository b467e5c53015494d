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
ModeKind = Literal["plan", "default"]
"""A collaboration mode: `plan` (the model plans with the user, and may ask questions with the
`request_user_input` tool) or `default` (it carries the request out; no questions)."""
MemoryMode = Literal["enabled", "disabled"]
"""Whether a thread may feed memory generation (Codex's thread memory mode; Spindle generates no
memories and only keeps it)."""

class GranularApproval(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Which kinds of prompt a granular policy lets through (`true`: the user is asked) or rejects
    without asking (`false`). Spindle prompts only for `sandbox_approval` (leaving the sandbox,
    writing outside it); the others are kept as given."""

    sandbox_approval: bool
    rules: bool
    mcp_elicitations: bool
    request_permissions: bool = False
    skill_approval: bool = False


class Granular(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`{"granular": {...}}`: on-request, with some kinds of prompt rejected without asking."""

    granular: GranularApproval

    def rejects_sandbox_prompts(self) -> bool:
        return not self.granular.sandbox_approval


class CollaborationMode(msgspec.Struct, kw_only=True, frozen=True):
    """A thread's collaboration mode and the developer instructions the model gets for it. None:
    the mode's built-in instructions (filled in when the mode is applied); "": none."""

    mode: ModeKind = "default"
    developer_instructions: str | None = None


Approval = ApprovalPolicy | Granular
"""An approval policy: one of the named ones, or a granular one."""

APPROVAL_POLICIES: frozenset[str] = frozenset(get_args(ApprovalPolicy))
SANDBOX_MODES: frozenset[str] = frozenset(get_args(SandboxMode))


class SettingsUpdate(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A change to a thread's settings; a field left `None` keeps the current value."""

    model: str | None = None
    provider_id: str | None = None
    cwd: str | None = None
    approval_policy: Approval | None = None
    sandbox_mode: SandboxMode | None = None
    """The legacy selection; it clears `permissions` (a profile selected before)."""
    permissions: str | None = None
    """A permission profile by id (`:workspace`, a `[permissions.<id>]` table)."""
    runtime_workspace_roots: tuple[str, ...] | None = None
    """Replaces the thread's runtime workspace roots (relative ones resolve against the cwd)."""
    instructions: str | None = None
    effort: str | None = None
    summary: str | None = None
    collaboration_mode: CollaborationMode | None = None

    def changes(self) -> dict[str, Any]:
        """The fields this update sets, by name."""
        return {name: value for name in self.__struct_fields__ if (value := getattr(self, name)) is not None}

    def then(self, later: SettingsUpdate) -> SettingsUpdate:
        """This update followed by `later`: where both set a field, `later` wins; a selection in
        `later` (a profile, or a legacy sandbox mode) replaces the other kind in this one."""
        changes = later.changes()
        if later.sandbox_mode is not None and later.permissions is None:
            changes["permissions"] = None
        if later.permissions is not None and later.sandbox_mode is None:
            changes["sandbox_mode"] = None
        return msgspec.structs.replace(self, **changes)


class ThreadSettings(msgspec.Struct, kw_only=True, frozen=True):
    """A thread's current settings; each turn runs with the value it started with."""

    model: str
    provider_id: str
    cwd: str
    approval_policy: Approval
    sandbox_mode: SandboxMode
    """The legacy sandbox selection; under a profile, its legacy projection (for old readers)."""
    instructions: str
    effort: str | None = None
    summary: str | None = None
    model_context_window: int | None = None
    permissions: str | None = None
    """The selected permission profile's id, kept symbolic; None: `sandbox_mode` selects."""
    runtime_workspace_roots: tuple[str, ...] | None = None
    """The thread's runtime workspace roots (absolute, what `:workspace_roots` realises to, with
    the profile's own roots); None: just the cwd, following it when it changes."""
    collaboration_mode: CollaborationMode = msgspec.field(default_factory=CollaborationMode)
    """Default (no instructions) until a turn or an update selects a mode."""

    def updated(self, update: SettingsUpdate) -> ThreadSettings:
        """These settings with `update` applied (unvalidated: see the runtime's `apply_update`).
        A legacy `sandbox_mode` without `permissions` clears the profile selection."""
        changes = update.changes()
        if update.sandbox_mode is not None and update.permissions is None:
            changes["permissions"] = None
        return msgspec.structs.replace(self, **changes)

    def workspace_roots(self) -> tuple[str, ...]:
        """The runtime workspace roots: the explicit ones, else the cwd alone."""
        return self.runtime_workspace_roots if self.runtime_workspace_roots is not None else (self.cwd,)
