"""The config layer stack, as Codex builds it, lowest precedence first:

built-in defaults < system `/etc/codex/config.toml` < user `$CODEX_HOME/config.toml` < the selected
profile (`profile = "x"` selects `[profiles.x]`) < project `.codex/config.toml` files from the
project root down to the cwd (closest wins; only in a trusted project) < session flags (`-c`,
then a thread's own `config` map).

`LayeredConfig.load(cwd, session)` reads the files: it is blocking, so async code calls it in
`trio.to_thread` (see `RuntimeResources.thread_config`). A runtime opened with a plain `Config`
has a `FixedConfig` source instead: that Config is its only disk-free base layer.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec
import structlog

from spindle.protocol.config import Config, ConfigLayer, ConfigWarning

from .config_keys import (
    KeyPathError,
    allowed_values,
    deep_merge,
    dotted,
    error_pattern,
    failing_path,
    parse_key_path,
    problem_of,
    type_at,
    unknown_keys,
)
from .errors import ConfigError
from .permission_profiles import default_selection, load_profiles, selection_warnings

log = structlog.get_logger(__name__)

SYSTEM_CONFIG = Path("/etc/codex/config.toml")
CLI_SOURCE = "-c"
THREAD_SOURCE = "thread config"

_json = msgspec.json.Encoder(order="sorted")


def version_of(content: bytes) -> str:
    """A layer's version: `sha256:<hex>` of its content (what `expectedVersion` compares)."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


def data_version(data: Mapping[str, Any]) -> str:
    return version_of(_json.encode(data))


def set_path(tree: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {part!r} is not a table")
        node = child
    old = node.get(path[-1])
    node[path[-1]] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def tree_of(flat: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A map of dotted keys (a thread's `config`) as nested tables."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        try:
            path = parse_key_path(key)
        except KeyPathError as exc:
            raise ConfigError(f"{source}: key {key!r}: {exc}") from None
        set_path(tree, path, value, f"{source}: key {key!r}")
    return tree


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` into (["a", "b"], value); the value is TOML when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--config {text!r}: expected key=value")
    try:
        path = parse_key_path(key)
    except KeyPathError as exc:
        raise ConfigError(f"--config {text!r}: {exc}") from None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def read_toml(path: Path) -> tuple[dict[str, Any], bytes] | None:
    """A TOML file's data and bytes; None when there is no file. ConfigError names the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    if depth_of(data) > MAX_DEPTH:
        raise ConfigError(f"{path}: nested too deeply to read (more than {MAX_DEPTH} levels)")
    return data, raw


MAX_DEPTH = 64
"""How deeply tables and arrays of a config layer may nest (Codex's own configs use a handful)."""


def depth_of(value: Any) -> int:
    """How deeply `value`'s tables and arrays nest (iteratively: any depth is measured safely)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _leaves(data: Mapping[str, Any]) -> Iterable[tuple[tuple[str, ...], Any]]:
    """Each leaf of `data` with its key path, depth first (iteratively)."""
    stack: list[tuple[tuple[str, ...], Mapping[str, Any]]] = [((), data)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict) and value:
                stack.append(((*prefix, key), value))
            else:
                yield (*prefix, key), value


def _has(data: Mapping[str, Any], path: Sequence[str]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


class LayerStack:
    """The layers of one config, lowest precedence first (disabled ones included)."""

    def __init__(
        self, layers: list[ConfigLayer], home: Path, *, flag_texts: Mapping[tuple[str, ...], str] | None = None
    ) -> None:
        self.layers = layers
        self.home = home
        self._flag_texts = dict(flag_texts or {})

    def enabled(self) -> list[ConfigLayer]:
        return [layer for layer in self.layers if layer.enabled]

    def merged(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for layer in self.enabled():
            data = deep_merge(data, layer.data)
        return data

    def origins(self) -> dict[str, ConfigLayer]:
        """Each leaf key path (dotted, segments verbatim as Codex writes them) and the layer it comes
        from: one pass over the layers' leaves into a tree, where a value replaces a table or a
        table a value."""
        tree: dict[str, Any] = {}
        for layer in self.enabled():
            for path, _value in _leaves(layer.data):
                node = tree
                for part in path[:-1]:
                    child = node.get(part)
                    if not isinstance(child, dict):
                        child = node[part] = {}
                    node = child
                node[path[-1]] = layer
        found: dict[str, ConfigLayer] = {}
        stack: list[tuple[tuple[str, ...], dict[str, Any]]] = [((), tree)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                if isinstance(value, dict):
                    stack.append(((*prefix, key), value))
                else:
                    found[".".join((*prefix, key))] = value
        return found

    def owner(self, path: Sequence[str]) -> ConfigLayer | None:
        """The highest enabled layer that sets `path` (or the longest prefix of it any layer sets)."""
        for n in range(len(path), 0, -1):
            for layer in reversed(self.enabled()):
                if _has(layer.data, path[:n]):
                    return layer
        return None

    @cached_property
    def config(self) -> Config:
        """The effective Config. ConfigError names the layer (file, `-c` or thread config), the
        key, the problem and the allowed values."""
        data = self.merged()
        try:
            config = msgspec.convert({**data, "codex_home": str(self.home)}, Config)
        except msgspec.ValidationError as exc:
            path = failing_path(data, Config, error_pattern(exc))
            raise self._blame(path, problem_of(exc)) from None
        try:
            config.provider()
        except KeyError as exc:
            raise self._blame(["model_provider"], exc.args[0]) from None
        try:
            load_profiles(config)
        except ConfigError as exc:
            raise self._blame(["permissions"], str(exc)) from None
        try:
            default_selection(config)
        except ConfigError as exc:
            raise self._blame(["default_permissions"], str(exc)) from None
        return config

    def _blame(self, path: list[str], problem: str) -> ConfigError:
        layer = self.owner(path)
        allowed = allowed_values(type_at(path)) if path else None
        tail = f"; allowed values: {', '.join(allowed)}" if allowed else ""
        key = dotted(path) if path else "(top level)"
        if layer is None:
            return ConfigError(f"key {key!r}: {problem}{tail}")
        source = layer.source
        if layer.source == CLI_SOURCE:
            text = next((t for p, t in self._flag_texts.items() if tuple(path[: len(p)]) == p), None)
            source = f"-c {text!r}" if text else "-c"
        return ConfigError(f"{source}: key {key!r}: {problem}{tail} [{_layer_name(layer)}]")

    def warnings(self, *, thread_layer: bool = True) -> list[ConfigWarning]:
        """An unknown key in any layer (enabled or not), with a "did you mean" when one is close;
        without `thread_layer`, none from a thread's own `config` map."""
        out: list[ConfigWarning] = []
        for layer in self.layers:
            if layer.kind == "defaults" or layer.profile is not None:
                continue  # profiles are checked within the user layer that holds them
            if not thread_layer and layer.source == THREAD_SOURCE:
                continue
            for message in unknown_keys(layer.data):
                path = layer.source if layer.kind in ("user", "project", "system") else None
                out.append(ConfigWarning(summary=f"{message} in {layer.describe()}", path=path))
        try:
            permissions = selection_warnings(self.config)
        except ConfigError:
            permissions = []  # the config's own error says it
        out.extend(ConfigWarning(summary=message) for message in permissions)
        return out


def _layer_name(layer: ConfigLayer) -> str:
    if layer.profile is not None:
        return f"profile {layer.profile!r} layer"
    return {"sessionFlags": "session flags layer"}.get(layer.kind, f"{layer.kind} layer")


def _file_layer(kind: Any, path: Path, read: tuple[dict[str, Any], bytes] | None, **extra: Any) -> ConfigLayer:
    data, raw = read if read is not None else ({}, b"")
    return ConfigLayer(kind=kind, source=str(path), data=data, version=version_of(raw), **extra)


def _untrusted(folder: Path) -> str:
    return (f"{folder} is marked as untrusted in the effective configuration. To load project-local config, "
            "hooks, and exec policies, update its trust setting. If that setting is managed by your "
            "organization, contact your administrator.")


def project_layers(cwd: str, base: Mapping[str, Any], home: Path) -> list[ConfigLayer]:
    """The `.codex/config.toml` layers from the project root down to `cwd` (lowest first), each
    disabled unless the project is trusted in `base` (the merged user-level layers). Blocking."""
    here = Path(cwd).resolve()
    markers = base.get("project_root_markers", [".git"])
    if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers):
        raise ConfigError(f"project_root_markers: expected a list of file names, got {markers!r}")
    chain = [here, *here.parents]
    root = next((d for d in chain if any((d / m).exists() for m in markers)), here)
    dirs = list(reversed(chain[: chain.index(root) + 1]))
    levels = _trust_levels(base.get("projects"))
    marks = [(d, levels.get(str(d))) for d in dirs]  # an explicit `untrusted` anywhere from the root down wins
    untrusted = next((d for d, level in marks if level == "untrusted"), None)
    trusted = untrusted is None and any(level == "trusted" for _d, level in marks)
    reason = None if trusted else _untrusted(untrusted) if untrusted else (
        f"To load project-local config, hooks, and exec policies, add {root} as a trusted project in {home / 'config.toml'}.")
    layers = []
    for d in dirs:
        folder = d / ".codex"
        path = folder / "config.toml"
        if folder.resolve() == home.resolve() or not path.is_file():
            continue
        try:
            read = read_toml(path)
        except ConfigError:
            if reason is None:
                raise
            read = None  # an untrusted project's broken file is listed, never used
        layers.append(_file_layer("project", path, read, folder=str(folder), disabled_reason=reason))
    return layers


def _trust_levels(projects: Any) -> dict[str, str]:
    """`[projects."<path>"] trust_level` by real path (a key spelled through a symlink names the
    folder it points to); two spellings of one folder that disagree count as `untrusted`. Blocking."""
    levels: dict[str, str] = {}
    if not isinstance(projects, dict):
        return levels
    for key, table in projects.items():
        level = table.get("trust_level") if isinstance(table, dict) else None
        if not isinstance(level, str) or not isinstance(key, str):
            continue
        real = os.path.realpath(os.path.expanduser(key))
        if levels.get(real) != "untrusted":
            levels[real] = "untrusted" if real in levels and levels[real] != level else level
    return levels


def session_layer_warnings(session: Mapping[str, Any]) -> list[ConfigWarning]:
    """The warnings of a thread's own `config` map alone (its unknown keys)."""
    return LayerStack([session_layer(session)], Path()).warnings()


def session_layer(session: Mapping[str, Any]) -> ConfigLayer:
    data = tree_of(session, THREAD_SOURCE)
    return ConfigLayer(kind="sessionFlags", source=THREAD_SOURCE, data=data, version=data_version(data))


@dataclass(frozen=True)
class LayeredConfig:
    """A runtime's config read from files: `<home>/config.toml` (default `$CODEX_HOME`), the
    system file, the project files of each thread's cwd, and `overrides` (`-c key=value`) plus
    `extra` (a mapping of top-level keys) as session flags."""

    home: Path | None = None
    overrides: Sequence[str] = ()
    extra: Mapping[str, Any] | None = None
    system_file: Path | None = SYSTEM_CONFIG

    @property
    def user_file(self) -> Path:
        return self.resolved_home / "config.toml"

    @property
    def resolved_home(self) -> Path:
        from .config import codex_home

        return Path(os.path.abspath(self.home or codex_home()))

    def load(self, cwd: str | None = None, session: Mapping[str, Any] | None = None,
             user: tuple[dict[str, Any], bytes] | None | bool = True) -> LayerStack:
        """Read the layers (blocking). With `cwd`, its project layers are included; `session` is
        a thread's own `config` map; `user` replaces the user file's content (a write checks
        what it would write)."""
        home = self.resolved_home
        layers: list[ConfigLayer] = []
        if self.system_file is not None:
            layers.append(_file_layer("system", self.system_file, read_toml(self.system_file)))
        user_read = read_toml(self.user_file) if user is True else user or None
        layers.append(_file_layer("user", self.user_file, user_read, profile=None))
        flags, texts = self.flags()
        top = [flags] if flags.data else []
        if session:
            top.append(session_layer(session))
        base = LayerStack([*layers, *top], home).merged()
        if (name := base.get("profile")) is not None:
            layers.append(self._profile(str(name), base, LayerStack([*layers, *top], home)))
        if cwd is not None:
            layers.extend(project_layers(cwd, LayerStack([*layers, *top], home).merged(), home))
        return LayerStack([*layers, *top], home, flag_texts=texts)

    def flags(self) -> tuple[ConfigLayer, dict[tuple[str, ...], str]]:
        """The `-c` overrides (and `extra`) as one session-flags layer."""
        data: dict[str, Any] = {}
        texts: dict[tuple[str, ...], str] = {}
        for text in self.overrides:
            path, value = parse_override(text)
            set_path(data, path, value, f"--config {text!r}")
            texts[tuple(path)] = text
        data.update(self.extra or {})
        return ConfigLayer(kind="sessionFlags", source=CLI_SOURCE, data=data, version=data_version(data)), texts

    def _profile(self, name: str, base: Mapping[str, Any], stack: LayerStack) -> ConfigLayer:
        profiles = base.get("profiles") or {}
        table = profiles.get(name) if isinstance(profiles, dict) else None
        if not isinstance(table, dict):
            chooser = stack.owner(["profile"])
            where = chooser.source if chooser is not None else "config"
            known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) and profiles else "none"
            raise ConfigError(f"{where}: key 'profile': profile {name!r} is not defined (no [profiles.{name}] table); known profiles: {known}")
        return ConfigLayer(kind="user", source=str(self.user_file), data=table, version=data_version(table), profile=name)


@dataclass(frozen=True)
class FixedConfig:
    """A runtime opened with a plain `Config`: that Config is the base, no file is read; a
    thread's own `config` map still layers on top of it."""

    config: Config
    base: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = msgspec.to_builtins(self.config)
        data.pop("codex_home", None)
        object.__setattr__(self, "base", data)

    def load(self, cwd: str | None = None, session: Mapping[str, Any] | None = None) -> LayerStack:
        layers = [ConfigLayer(kind="defaults", source="the runtime's Config", data=self.base, version=data_version(self.base))]
        if session:
            layers.append(session_layer(session))
        return LayerStack(layers, Path(self.config.codex_home))


ConfigSource = LayeredConfig | FixedConfig


def config_source(config: Config | LayeredConfig | None) -> ConfigSource:
    if config is None:
        return LayeredConfig()
    return FixedConfig(config) if isinstance(config, Config) else config
