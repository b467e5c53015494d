"""Writing the user's `config.toml` (`config/value/write`, `config/batchWrite`), keeping its
comments and formatting (tomlkit, in `config_toml.py`).

Every edit is checked before anything is written: the key path must exist in the schema (inside a
`[profiles.NAME]` table too), the file must still be the version the caller read, the new text
must read back as exactly the intended data (the edits applied to the file's parsed data), and the
user layer alone, each profile the edits touch, and the whole effective config must validate. On
any error nothing is written (the file stays byte-identical).

A write holds an exclusive `flock` on `<file>.lock` beside the real file from reading the file to
replacing it, so two writers (threads or processes) never lose each other's edits. A symlinked
config.toml stays a symlink: the file it points to is replaced atomically (temporary file in its
directory with its mode, fsync, rename). Blocking: call it in a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spindle.protocol.config import Config, ConfigLayer

from .config_keys import (
    ANY,
    KeyPathError,
    child_type,
    parse_key_path,
    unknown_key_message,
    unknown_keys,
)
from .config_layers import ConfigSource, FixedConfig, LayerStack, data_version, version_of
from .errors import ConfigError

WriteErrorCode = Literal[
    "configLayerReadonly", "configVersionConflict", "configValidationError", "configPathNotFound",
    "configSchemaUnknownKey", "userLayerNotFound",
]
VERSION_CONFLICT = "Configuration was modified since last read. Fetch latest version and retry."
LOCK_WAIT_SECONDS = 10.0
"""How long a write waits for another writer's lock before it is refused."""
LOCK_POLL_SECONDS = 0.05


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
    real = Path(os.path.realpath(path))
    with _locked(real):
        try:
            raw = real.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise ConfigWriteError("userLayerNotFound", f"{path}: cannot read: {exc.strerror}") from None
        if expected_version is not None and expected_version != version_of(raw):
            raise ConfigWriteError("configVersionConflict", VERSION_CONFLICT)
        try:
            original = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigWriteError("configValidationError", f"Invalid configuration: {path}: {exc}") from None
        from .config_toml import edited_text  # tomlkit, with the first write: not at start-up

        text = edited_text(original, edits, path)
        new = text.encode("utf-8")
        stack = _validated(source, path, tomllib.loads(text), new, edits)
        _replace(real, new)
    return WriteOutcome(path=path, version=version_of(new), stack=stack, overridden=_overridden(stack, edits))


def check_schema(edit: Edit) -> None:
    """ConfigWriteError(configSchemaUnknownKey) for a key path, or a key in a table value, that
    the config schema does not have (with a "did you mean"); a `[profiles.NAME]` table holds the
    same keys as the top level. Deleting any key is allowed: that is how a typo is removed."""
    if edit.value is None:
        return
    tp: Any = Config
    for i, key in enumerate(edit.path):
        sub = Config if i == 1 and edit.path[0] == "profiles" else child_type(tp, key)
        if sub is None:
            raise ConfigWriteError("configSchemaUnknownKey", unknown_key_message(edit.path[: i + 1], tp))
        if sub is ANY:
            return
        tp = sub
    tree: Any = edit.value
    for key in reversed(edit.path):
        tree = {key: tree}
    message = next(iter(unknown_keys(tree)), None)  # from the top, so profiles are checked as such
    if message is not None:
        raise ConfigWriteError("configSchemaUnknownKey", message)


# -- Validation, locking, replacing -------------------------------------------------------------

def _validated(source: ConfigSource, path: Path, data: dict[str, Any], raw: bytes, edits: list[Edit]) -> LayerStack:
    """The layer stack with the new user file: the user layer alone, with each profile an edit
    touches selected, then the whole effective config, must be valid (ConfigWriteError
    configValidationError naming key and layer)."""
    user = ConfigLayer(kind="user", source=str(path), data=data, version=version_of(raw))
    alone = LayerStack([user], path.parent)
    try:
        alone.config  # noqa: B018
        for name, table in _touched_profiles(data, edits):
            profile = ConfigLayer(kind="user", source=str(path), data=table, version=data_version(table), profile=name)
            LayerStack([user, profile], path.parent).config  # noqa: B018
        stack = alone if isinstance(source, FixedConfig) else source.load(user=(data, raw))
        stack.config  # noqa: B018
    except ConfigError as exc:
        raise ConfigWriteError("configValidationError", f"Invalid configuration: {exc}") from None
    return stack


def _touched_profiles(data: Mapping[str, Any], edits: list[Edit]) -> Iterator[tuple[str, dict[str, Any]]]:
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        return
    names = {edit.path[1] if len(edit.path) > 1 else None for edit in edits if edit.path[0] == "profiles"}
    for name, table in profiles.items():
        if (name in names or None in names) and isinstance(table, dict):
            yield name, table


@contextmanager
def _locked(real: Path) -> Iterator[None]:
    """An exclusive flock on `<real>.lock`, waited for up to LOCK_WAIT_SECONDS."""
    lock = real.with_name(real.name + ".lock")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigWriteError("configLayerReadonly", f"{lock}: cannot open the lock file: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not try_lock(fd):
            if time.monotonic() > deadline:
                raise ConfigWriteError(
                    "configVersionConflict", f"{lock}: another writer has held it for {LOCK_WAIT_SECONDS:g}s; retry")
            time.sleep(LOCK_POLL_SECONDS)  # a worker thread, never the event loop
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _replace(real: Path, content: bytes) -> None:
    """`real` (a regular file, not a symlink) atomically replaced by `content`, its mode kept."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", dir=real.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if real.exists():
            os.chmod(tmp, real.stat().st_mode & 0o777)
        os.replace(tmp, real)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            raise ConfigWriteError("configLayerReadonly", f"{real}: cannot write: {exc.strerror or exc}") from None
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
