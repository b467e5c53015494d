"""Where a thread's settings come from: config defaults, a checked update, a resumed rollout."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from spindle.protocol.config import Config
from spindle.protocol.rollout import SessionMeta, TurnContextItem
from spindle.protocol.settings import (
    APPROVAL_POLICIES,
    SANDBOX_MODES,
    SettingsUpdate,
    ThreadSettings,
)

from .errors import ConfigError

log = structlog.get_logger(__name__)

DEFAULT_INSTRUCTIONS = (
    "You are a coding agent running in Spindle. Be precise, safe and helpful. Use the shell tool "
    "to inspect and change the workspace when the task needs it."
)


def checked(config: Config, update: SettingsUpdate) -> SettingsUpdate:
    """`update` with its cwd made absolute; ConfigError names a provider or cwd that cannot be used."""
    if update.provider_id is not None:
        try:
            config.provider(update.provider_id)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
    if update.cwd is None:
        return update
    if not os.path.isdir(update.cwd):
        raise ConfigError(f"cwd {update.cwd!r} is not a directory")
    return update.then(SettingsUpdate(cwd=str(Path(update.cwd).resolve())))


def apply_update(config: Config, settings: ThreadSettings, update: SettingsUpdate) -> ThreadSettings:
    """`settings` changed by `update`, once checked against `config`."""
    return settings.updated(checked(config, update))


def start_cwd(config: Config, update: SettingsUpdate | None) -> str:
    """The cwd a new thread will have (its project layers depend on it): asked for, else the
    config's, else the process's."""
    cwd = (update.cwd if update is not None else None) or config.cwd or os.getcwd()
    return os.path.abspath(cwd)


def initial_settings(config: Config, update: SettingsUpdate | None = None) -> ThreadSettings:
    """A new thread's settings: the config's defaults, then `update`."""
    defaults = ThreadSettings(
        model=config.model,
        provider_id=config.model_provider,
        cwd=config.cwd or os.getcwd(),
        approval_policy=config.approval_policy,
        sandbox_mode=config.sandbox_mode,
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
    return SettingsUpdate(
        model=context.model if context else None,
        provider_id=provider,
        cwd=(context.cwd if context else None) or meta.cwd or None,
        approval_policy=approval if approval in APPROVAL_POLICIES else None,  # type: ignore[arg-type]
        sandbox_mode=sandbox if sandbox in SANDBOX_MODES else None,  # type: ignore[arg-type]
        instructions=meta.base_instructions.text if meta.base_instructions else None,
    )
