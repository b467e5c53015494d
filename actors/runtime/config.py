"""Loading `$CODEX_HOME/config.toml` plus `--config key=value` overrides into a `Config`."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from spindle.protocol.config import Config


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names file, key and problem."""


def codex_home() -> Path:
    """`$CODEX_HOME`, default `~/.codex`."""
    env = os.environ.get("CODEX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".codex"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` into (["a", "b"], value); the value is TOML when it parses, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--config {text!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--config {text!r}: {part!r} is not a table")
            node = child
        node[path[-1]] = value
    return data


def _key_of(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    marker = "at `$."
    if marker in text:
        return text.split(marker, 1)[1].rstrip("`")
    return "(top level)"


def config_from_mapping(data: Mapping[str, Any], *, source: str, home: Path) -> Config:
    """Validate raw TOML data into a Config; errors name `source`, the key and what was expected."""
    try:
        config = msgspec.convert({**data, "codex_home": str(home)}, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: key {_key_of(exc)!r}: {exc}") from None
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
    """Read `<home>/config.toml` (absent file = defaults), then apply overrides and `extra`."""
    home = home or codex_home()
    path = home / "config.toml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    apply_overrides(data, overrides)
    if extra:
        data.update(extra)
    return config_from_mapping(data, source=str(path), home=home)
