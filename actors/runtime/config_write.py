"""Writing the user's `config.toml` (`config/value/write`, `config/batchWrite`), keeping its
comments and formatting (tomlkit).

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

import copy
import fcntl
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Item, Table
from tomlkit.toml_document import TOMLDocument

from spindle.protocol.config import Config, ConfigLayer

from .config_keys import (
    ANY,
    KeyPathError,
    child_type,
    dotted,
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


# -- The new text: tomlkit places each change, the plain data says where it must land --------------

def edited_text(original: str, edits: list[Edit], file: Path) -> str:
    """`original` with `edits` applied, its untouched parts as they were. Each change is checked to
    read back as the edits applied to the plain data: where tomlkit puts a new `[table]` among
    dotted keys (and later keys would change tables), a safer placement is used, or the write is
    refused (configValidationError)."""
    try:
        doc = tomlkit.parse(original)
        intended = tomllib.loads(original)
    except (TOMLKitError, tomllib.TOMLDecodeError) as exc:
        raise ConfigWriteError("configValidationError", f"Invalid configuration: {file}: {exc}") from None
    for edit in edits:
        check_schema(edit)
        for step in list(_steps(edit, intended)):
            _check_value(step)
            _apply_plain(intended, step)
            doc = _placed(doc, step, intended, file)
    return tomlkit.dumps(doc)


def _steps(edit: Edit, data: Mapping[str, Any]) -> Iterator[Edit]:
    """An upsert as the plain sets and deletes it comes to against `data`: a table merges key by
    key into the table already there."""
    old = _lookup(data, edit.path)
    if edit.upsert and isinstance(old, dict) and isinstance(edit.value, dict):
        for key, value in edit.value.items():
            yield from _steps(Edit([*edit.path, key], value, upsert=True), data)
    else:
        yield Edit(edit.path, edit.value)


def _check_value(step: Edit) -> None:
    if step.value is None:
        return
    try:
        tomlkit.item(step.value)
    except (TOMLKitError, TypeError, ValueError) as exc:
        raise ConfigWriteError("configValidationError", f"invalid value for `{dotted(step.path)}`: {exc}") from None


def _apply_plain(data: dict[str, Any], step: Edit) -> None:
    node = data
    for i, key in enumerate(step.path[:-1]):
        if key not in node:
            if step.value is None:
                return  # deleting under a table that is not there: nothing to do
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigWriteError("configValidationError", f"`{dotted(step.path[: i + 1])}` is not a table")
    if step.value is None:
        node.pop(step.path[-1], None)
    else:
        node[step.path[-1]] = copy.deepcopy(step.value)


def _in_place(doc: TOMLDocument, step: Edit) -> TOMLDocument | None:
    """tomlkit's own placement: the key where it was, a new table as a `[header]` after its siblings."""
    node: Any = doc
    for key in step.path[:-1]:
        if key not in node:
            if step.value is None:
                return doc
            node[key] = tomlkit.table()
        node = node[key]
    if step.value is None:
        node.pop(step.path[-1], None)
    else:
        node[step.path[-1]] = step.value
    return doc


def _as_dotted_keys(doc: TOMLDocument, step: Edit) -> TOMLDocument | None:
    """Each leaf of the value as a dotted key (`a.b.c = 1`) in the innermost `[table]` the path is
    already in (or at the top): what fits a file that writes this table with dotted keys."""
    if step.value is None:
        return None
    _in_place(doc, Edit(step.path, None))
    anchor: Any = doc
    node: Any = doc
    depth = 0
    for i, key in enumerate(step.path[:-1]):
        child = node.get(key)
        if not isinstance(child, Table | OutOfOrderTableProxy):  # an inline table or a value: no deeper
            break
        if isinstance(child, Table) and not child.is_super_table():
            anchor, depth = child, i + 1
        node = child
    for sub, leaf in _leaves(step.value):
        rel = [*step.path[depth:], *sub]
        anchor.add(tomlkit.key(rel) if len(rel) > 1 else rel[0], _inline(leaf))
    return doc


def _as_table_at_end(doc: TOMLDocument, step: Edit) -> TOMLDocument | None:
    """The value as a new `[table]` at the end of the file (the key it replaces removed)."""
    if step.value is None or (len(step.path) == 1 and not isinstance(step.value, dict)):
        return None
    _in_place(doc, Edit(step.path, None))
    if isinstance(step.value, dict):
        tree: Any = step.value
        header = step.path
    else:
        tree, header = {step.path[-1]: step.value}, step.path[:-1]
    for key in reversed(header):
        tree = {key: tree}
    head = tomlkit.dumps(doc).rstrip("\n")
    return tomlkit.parse((head + "\n\n" if head else "") + tomlkit.dumps(tree))


PLACEMENTS: tuple[Callable[[TOMLDocument, Edit], TOMLDocument | None], ...] = (
    _in_place, _as_dotted_keys, _as_table_at_end,
)


def _placed(doc: TOMLDocument, step: Edit, intended: dict[str, Any], file: Path) -> TOMLDocument:
    """`doc` with `step` made by the first placement whose text reads back as `intended`."""
    text = tomlkit.dumps(doc)
    want = _pruned(intended)
    for place in PLACEMENTS:
        try:
            trial = place(tomlkit.parse(text), step)
            if trial is not None and _pruned(tomllib.loads(tomlkit.dumps(trial))) == want:
                return trial
        except (TOMLKitError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
            continue
    raise ConfigWriteError(
        "configValidationError",
        f"cannot write `{dotted(step.path)}` to {file} without changing other keys (its tables and dotted keys "
        "are laid out so that the edit would move keys into another table); edit the file by hand",
    )


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaves(sub, (*prefix, key))
    else:
        yield prefix, value


def _inline(value: Any) -> Item:
    """`value` with every table in it inline (`{ a = 1 }`), as a dotted key's value must be."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, sub in value.items():
            table.append(key, _inline(sub))
        return table
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(_inline(v) for v in value)
        return array
    return tomlkit.item(value)


def _pruned(data: Any) -> Any:
    """`data` without empty tables: TOML cannot keep a dotted-key table whose last key is gone."""
    if not isinstance(data, dict):
        return data
    out = {key: _pruned(value) for key, value in data.items()}
    return {key: value for key, value in out.items() if value != {}}


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
