"""Writing the user's `config.toml` (`config/value/write`, `config/batchWrite`), keeping its
comments and formatting (tomlkit).

Every edit is checked before anything is written: the key path must exist in the schema, the
file must still be the version the caller read, and the user layer alone and the whole effective
config must validate. On any error nothing is written (the file stays byte-identical); a write
replaces the file atomically (temporary file, fsync, rename). Blocking: call it in a worker thread.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomlkit
from tomlkit.exceptions import TOMLKitError

from spindle.protocol.config import Config, ConfigLayer

from .config_keys import (
    ANY,
    KeyPathError,
    child_type,
    parse_key_path,
    unknown_key_message,
    unknown_keys,
)
from .config_layers import ConfigSource, FixedConfig, LayerStack, version_of
from .errors import ConfigError

WriteErrorCode = Literal[
    "configLayerReadonly", "configVersionConflict", "configValidationError", "configPathNotFound",
    "configSchemaUnknownKey", "userLayerNotFound",
]
VERSION_CONFLICT = "Configuration was modified since last read. Fetch latest version and retry."


class ConfigWriteError(Exception):
    """A refused write: Codex's `config_write_error_code` and a message naming what was wrong."""

    def __init__(self, code: WriteErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Edit:
    path: list[str]
    value: Any
    """The new value; None deletes the key."""
    upsert: bool = False
    """A table merges into the table already there (else the value replaces it)."""

    @classmethod
    def parse(cls, key_path: str, value: Any, merge_strategy: str) -> Edit:
        try:
            path = parse_key_path(key_path)
        except KeyPathError as exc:
            raise ConfigWriteError("configValidationError", str(exc)) from None
        return cls(path, value, merge_strategy == "upsert")


@dataclass(frozen=True)
class Overridden:
    """A written key that a higher layer still sets."""

    layer: ConfigLayer
    effective_value: Any

    @property
    def message(self) -> str:
        if self.layer.kind == "sessionFlags":
            return "Overridden by session flags"
        if self.layer.profile is not None:
            return f"Overridden by profile {self.layer.profile!r} in user config: {self.layer.source}"
        return f"Overridden by {self.layer.kind} config: {self.layer.source}"


@dataclass(frozen=True)
class WriteOutcome:
    path: Path
    version: str
    stack: LayerStack
    overridden: Overridden | None


def user_file(source: ConfigSource) -> Path:
    if isinstance(source, FixedConfig):
        return Path(source.config.codex_home) / "config.toml"
    return source.user_file


def write_user_config(
    source: ConfigSource, edits: list[Edit], *, expected_version: str | None = None, file_path: str | None = None
) -> WriteOutcome:
    """Apply `edits` to the user config.toml (see the module doc). ConfigWriteError when refused."""
    path = user_file(source)
    if file_path is not None and os.path.abspath(file_path) != os.path.abspath(path):
        raise ConfigWriteError("configLayerReadonly", "Only writes to the user config are allowed")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    except OSError as exc:
        raise ConfigWriteError("userLayerNotFound", f"{path}: cannot read: {exc.strerror}") from None
    if expected_version is not None and expected_version != version_of(raw):
        raise ConfigWriteError("configVersionConflict", VERSION_CONFLICT)
    try:
        doc = tomlkit.parse(raw.decode("utf-8"))
    except (TOMLKitError, UnicodeDecodeError) as exc:
        raise ConfigWriteError("configValidationError", f"Invalid configuration: {path}: {exc}") from None
    for edit in edits:
        check_schema(edit)
        apply_edit(doc, edit)
    text = tomlkit.dumps(doc)
    data = tomllib.loads(text)
    new = text.encode("utf-8")
    stack = _validated(source, path, data, new)
    _replace(path, new)
    return WriteOutcome(path=path, version=version_of(new), stack=stack, overridden=_overridden(stack, edits))


def check_schema(edit: Edit) -> None:
    """ConfigWriteError(configSchemaUnknownKey) for a key path, or a key in a table value, that
    the config schema does not have (with a "did you mean"). Deleting any key is allowed: that is
    how a typo is removed."""
    if edit.value is None:
        return
    tp: Any = Config
    for i, key in enumerate(edit.path):
        sub = child_type(tp, key)
        if sub is None:
            raise ConfigWriteError("configSchemaUnknownKey", unknown_key_message(edit.path[: i + 1], tp))
        if sub is ANY:
            return
        tp = sub
    if isinstance(edit.value, dict):
        message = next(iter(unknown_keys(edit.value, tp, tuple(edit.path))), None)
        if message is not None:
            raise ConfigWriteError("configSchemaUnknownKey", message)


def apply_edit(doc: tomlkit.TOMLDocument, edit: Edit) -> None:
    node: Any = doc
    for i, key in enumerate(edit.path[:-1]):
        if key not in node:
            if edit.value is None:
                return  # deleting under a table that is not there: nothing to do
            node[key] = tomlkit.table()
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigWriteError("configValidationError", f"`{'.'.join(edit.path[: i + 1])}` is not a table")
    _set(node, edit.path[-1], edit.value, edit.upsert)


def _set(node: Any, key: str, value: Any, upsert: bool) -> None:
    if value is None:
        node.pop(key, None)
        return
    old = node.get(key)
    try:
        if upsert and isinstance(old, dict) and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                _set(old, sub_key, sub_value, True)
        else:
            node[key] = value
    except (TOMLKitError, TypeError, ValueError) as exc:
        raise ConfigWriteError("configValidationError", f"invalid value for `{key}`: {exc}") from None


def _validated(source: ConfigSource, path: Path, data: dict[str, Any], raw: bytes) -> LayerStack:
    """The layer stack with the new user file: the user layer alone, then the whole effective
    config, must be valid (ConfigWriteError configValidationError naming key and layer)."""
    alone = LayerStack([ConfigLayer(kind="user", source=str(path), data=data, version=version_of(raw))], path.parent)
    try:
        alone.config  # noqa: B018
        stack = alone if isinstance(source, FixedConfig) else source.load(user=(data, raw))
        stack.config  # noqa: B018
    except ConfigError as exc:
        raise ConfigWriteError("configValidationError", f"Invalid configuration: {exc}") from None
    return stack


def _replace(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.toml.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _overridden(stack: LayerStack, edits: list[Edit]) -> Overridden | None:
    """The first edited key a layer above the user file still sets, and its effective value."""
    layers = stack.enabled()
    user = next((i for i, layer in enumerate(layers) if layer.kind == "user" and layer.profile is None), -1)
    above = layers[user + 1:]
    for edit in edits:
        if edit.value is None:
            continue
        for layer in reversed(above):
            value = _lookup(layer.data, edit.path)
            if value is not _MISSING:
                return Overridden(layer=layer, effective_value=_lookup(stack.merged(), edit.path))
    return None


_MISSING = object()


def _lookup(data: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data
