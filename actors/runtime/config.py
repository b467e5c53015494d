"""Loading `$CODEX_HOME/config.toml` plus `--config key=value` overrides into a `Config`.

The layers themselves (system, user, profile, project, session flags) are `config_layers`;
`load_config` is their thread-agnostic effective config, read at once (blocking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from spindle.protocol.appserver.control import codex_home
from spindle.protocol.config import Config

from .config_keys import error_pattern, failing_path, problem_of
from .config_layers import LayeredConfig, parse_override, set_path
from .errors import ConfigError

__all__ = ["ConfigError", "apply_overrides", "codex_home", "config_from_mapping", "load_config", "parse_override"]


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        set_path(data, path, value, f"--config {text!r}")
    return data


def config_from_mapping(data: Mapping[str, Any], *, source: str, home: Path) -> Config:
    """Validate raw TOML data into a Config; errors name `source`, the key and what was expected."""
    try:
        config = msgspec.convert({**data, "codex_home": str(home)}, Config)
    except msgspec.ValidationError as exc:
        key = ".".join(failing_path(dict(data), Config, error_pattern(exc))) or "(top level)"
        raise ConfigError(f"{source}: key {key!r}: {problem_of(exc)}") from None
    try:
        config.provider()
    except KeyError as exc:
        raise ConfigError(f"{source}: key 'model_provider': {exc.args[0]}") from None
    return config


def load_config(
    home: Path | None = None,
    overrides: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Config:
    """Read `<home>/config.toml` (absent file = defaults) with its selected profile and the
    system file, then apply overrides and `extra` (session flags). Blocking."""
    return LayeredConfig(home=home, overrides=tuple(overrides), extra=extra).load().config
