"""Where a thread's settings come from: config defaults, a checked update, a resumed rollout."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import structlog

from spindle.protocol.config import Config
from spindle.protocol.rollout import SessionMeta, TurnContextItem
from spindle.protocol.settings import (
    APPROVAL_POLICIES,
    SANDBOX_MODES,
    CollaborationMode,
    Granular,
    SettingsUpdate,
    ThreadSettings,
)

from .collaboration import MODE_NAMES, with_instructions
from .errors import ConfigError
from .permission_profiles import default_selection, load_profiles

log = structlog.get_logger(__name__)

DEFAULT_INSTRUCTIONS = (
    "You are a coding agent running in Spindle. Be precise, safe and helpful. Use the exec_command tool "
    "to inspect and change the workspace when the task needs it."
)


def checked(config: Config, update: SettingsUpdate) -> SettingsUpdate:
    """`update` with its cwd made absolute and a collaboration mode's built-in instructions filled
    in; ConfigError names a provider, cwd or permission profile that cannot be used, or a profile
    combined with a legacy sandbox mode."""
    if update.collaboration_mode is not None:
        update = update.then(SettingsUpdate(collaboration_mode=with_instructions(update.collaboration_mode)))
    if update.provider_id is not None:
        try:
            config.provider(update.provider_id)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
    if update.permissions is not None:
        if update.sandbox_mode is not None:
            raise ConfigError("`permissions` cannot be combined with `sandbox_mode`: select a profile or a legacy sandbox mode")
        load_profiles(config).get(update.permissions)
    if update.cwd is None:
        return update
    if not os.path.isdir(update.cwd):
        raise ConfigError(f"cwd {update.cwd!r} is not a directory")
    return update.then(SettingsUpdate(cwd=str(_resolved(update.cwd, "cwd"))))


def apply_update(config: Config, settings: ThreadSettings, update: SettingsUpdate) -> ThreadSettings:
    """`settings` changed by `update`, once checked against `config`. Runtime roots resolve
    against the resulting cwd; a cwd-only change moves the implicit cwd root and keeps the others;
    the selected profile's own workspace roots are dropped from them (seed 003: they are not
    runtime roots), so what the thread holds is what it answers. A selected profile's legacy
    projection becomes `sandbox_mode`."""
    update = checked(config, update)
    changed = settings.updated(update)
    roots: tuple[str, ...] | None
    if update.runtime_workspace_roots is not None:
        roots = runtime_roots(update.runtime_workspace_roots, changed.cwd)
    elif update.cwd is not None and settings.runtime_workspace_roots is not None:
        roots = tuple(dict.fromkeys(changed.cwd if root == settings.cwd else root for root in settings.runtime_workspace_roots))
    else:
        roots = changed.runtime_workspace_roots
    profiles = load_profiles(config)
    mode = profiles.get(changed.permissions).legacy_mode if changed.permissions else changed.sandbox_mode
    changed = msgspec.structs.replace(changed, sandbox_mode=mode)
    if roots is not None:  # the profile's own roots are its, not the thread's: held, answered and writable alike
        own = profiles.selected(changed).workspace_roots
        own_real = {*own, *(os.path.realpath(root) for root in own)}
        roots = tuple(root for root in roots if root not in own_real)
    return msgspec.structs.replace(changed, runtime_workspace_roots=roots)


def runtime_roots(roots: tuple[str, ...], cwd: str) -> tuple[str, ...]:
    """`roots` made absolute against `cwd` and resolved; ConfigError names one that does not
    exist or is not a directory."""
    out: list[str] = []
    for root in roots:
        path = _resolved(Path(cwd, os.path.expanduser(root)), f"runtime workspace root {root!r}")
        if not path.exists():
            raise ConfigError(f"runtime workspace root {root!r} does not exist (resolved against cwd {cwd!r}: {path})")
        if not path.is_dir():
            raise ConfigError(f"runtime workspace root {root!r} is not a directory ({path})")
        out.append(str(path))
    return tuple(dict.fromkeys(out))


def _resolved(path: str | Path, what: str) -> Path:
    """`path` made absolute with its symlinks resolved; ConfigError names `what` when it cannot
    be (a NUL byte, a symlink loop, an unreadable component)."""
    try:
        return Path(path).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what} cannot be used: {exc}") from None


def start_cwd(config: Config, update: SettingsUpdate | None) -> str:
    """The cwd a new thread will have (its project layers depend on it): asked for, else the
    config's, else the process's. ConfigError names an asked-for cwd that is not a directory
    (before any config layer is looked for under it)."""
    asked = update.cwd if update is not None else None
    if asked and not os.path.isdir(asked):
        raise ConfigError(f"cwd {asked!r} is not a directory")
    return os.path.abspath(asked or config.cwd or os.getcwd())


def initial_settings(config: Config, update: SettingsUpdate | None = None) -> ThreadSettings:
    """A new thread's settings: the config's defaults (its permission selection), then `update`."""
    permissions, sandbox_mode = default_selection(config)
    defaults = ThreadSettings(
        model=config.model,
        provider_id=config.model_provider,
        cwd=config.cwd or os.getcwd(),
        approval_policy=config.approval_policy,
        sandbox_mode=sandbox_mode,
        permissions=permissions,
        instructions=config.instructions or DEFAULT_INSTRUCTIONS,
        model_context_window=config.model_context_window,
        effort=config.model_reasoning_effort,
        summary=config.model_reasoning_summary,
    )
    requested = SettingsUpdate(cwd=defaults.cwd, provider_id=defaults.provider_id).then(update or SettingsUpdate())
    return apply_update(config, defaults, requested)


def recorded_settings(config: Config, meta: SessionMeta, context: TurnContextItem | None) -> SettingsUpdate:
    """The settings a rollout records: its session meta, then its last `turn_context`. A model
    provider this config does not define (the rollout came from another machine or from Codex
    with other providers) is left to the config's default, with a warning."""
    provider = meta.model_provider or None
    if provider is not None and provider not in config.all_providers():
        log.warning("the rollout's model provider is not configured here; using the default",
                    thread_id=meta.id, provider=provider, default=config.model_provider)
        provider = None
    approval = context.approval_policy if context else None
    sandbox = context.sandbox_policy.type if context and context.sandbox_policy else None
    permissions, roots = _recorded_permissions(config, meta, context)
    return SettingsUpdate(
        model=context.model if context else None,
        provider_id=provider,
        cwd=(context.cwd if context else None) or meta.cwd or None,
        approval_policy=approval if isinstance(approval, Granular) or approval in APPROVAL_POLICIES else None,  # type: ignore[arg-type]
        sandbox_mode=sandbox if sandbox in SANDBOX_MODES and permissions is None else None,  # type: ignore[arg-type]
        permissions=permissions,
        runtime_workspace_roots=roots,
        instructions=meta.base_instructions.text if meta.base_instructions else None,
        collaboration_mode=_recorded_mode(context),
    )


def _recorded_mode(context: TurnContextItem | None) -> CollaborationMode | None:
    """The collaboration mode a rollout's last turn ran in; None for Default without instructions
    (what Codex records when no mode was chosen) and for a mode Spindle does not know."""
    record = context.collaboration_mode if context is not None else None
    if record is None or record.mode not in MODE_NAMES:
        return None
    mode = CollaborationMode(mode=record.mode, developer_instructions=record.settings.developer_instructions)  # type: ignore[arg-type]
    return None if mode == CollaborationMode() else mode


def _recorded_permissions(
    config: Config, meta: SessionMeta, context: TurnContextItem | None
) -> tuple[str | None, tuple[str, ...] | None]:
    """The profile id and runtime roots a rollout records (its last turn's, else its start's).
    A profile this config does not define, or a root that is gone, is dropped with a warning."""
    if context is not None:
        permissions, roots = context.permissions, context.runtime_workspace_roots
    else:
        permissions = meta.permissions or None if isinstance(meta.permissions, str) else None
        roots = meta.runtime_workspace_roots if isinstance(meta.runtime_workspace_roots, list) else None
        if roots == [meta.cwd]:
            roots = None  # the implicit root: it follows the cwd
    if permissions is not None and permissions not in load_profiles(config).profiles:
        log.warning("the rollout's permission profile is not defined here; using its legacy sandbox",
                    thread_id=meta.id, permissions=permissions)
        permissions = None
    if roots is None:
        return permissions, None
    kept = tuple(root for root in roots if os.path.isdir(root))
    if len(kept) != len(roots):
        log.warning("runtime workspace roots of the rollout are gone; dropped", thread_id=meta.id,
                    dropped=[root for root in roots if root not in kept])
    return permissions, kept or None
