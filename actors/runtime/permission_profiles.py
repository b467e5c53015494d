"""Permission profiles: the built-ins, the `[permissions.<id>]` tables of the config, and which
one a thread starts with.

A profile is immutable once read: filesystem rules on symbolic paths (`:workspace_roots` stays
symbolic until `permissions.realise` binds it to a thread's roots for a turn), profile-declared
workspace roots, and whether the network is on. The legacy `sandbox_mode` is one of these too
(`PermissionProfiles.selected`), so a turn's sandbox is always realised the same way.

Selection (Codex's rule): `sandbox_mode` in any config layer selects the legacy settings and
`default_permissions` is ignored; else `default_permissions` names the profile; with neither,
`DEFAULT_SANDBOX_MODE` (legacy `read-only`) as before profiles existed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from spindle.protocol.config import DEFAULT_SANDBOX_MODE, Config
from spindle.protocol.settings import SandboxMode, ThreadSettings

from .config_keys import deep_merge
from .errors import ConfigError

Access = Literal["read", "write", "deny"]

READ_ONLY, WORKSPACE, FULL_ACCESS = ":read-only", ":workspace", ":danger-full-access"
BUILTIN_IDS = (READ_ONLY, WORKSPACE, FULL_ACCESS)
WORKSPACE_ROOTS = ":workspace_roots"
SPECIAL_PATHS = (":root", ":minimal", ":tmpdir", ":slash_tmp", WORKSPACE_ROOTS)
"""Symbolic filesystem paths; only `:workspace_roots` takes sub-paths."""

BUILTIN_TABLES: dict[str, dict[str, Any]] = {
    READ_ONLY: {"filesystem": {":root": "read"}},
    WORKSPACE: {"filesystem": {":root": "read", WORKSPACE_ROOTS: {".": "write"}, ":tmpdir": "write", ":slash_tmp": "write"}},
}
"""The built-ins as the tables a user profile extends (`.git` / `.codex` protection is `realise`'s)."""

PROFILE_KEYS = frozenset({"description", "extends", "filesystem", "workspace_roots", "network"})
NETWORK_KEYS = frozenset({
    "enabled", "domains", "unix_sockets", "proxy_url", "socks_url", "enable_socks5", "enable_socks5_udp",
    "allow_upstream_proxy", "allow_local_binding", "dangerously_allow_non_loopback_proxy",
    "dangerously_allow_all_unix_sockets", "mode",
})
"""Keys of `[permissions.<id>.network]`; only `enabled` is enforced (Spindle runs no proxy)."""
ACCESS_ALIASES: dict[str, Access] = {"read": "read", "write": "write", "deny": "deny", "none": "deny"}
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Rule:
    """One filesystem grant: `target` (a special path or an absolute one), a sub-path of it
    (`.` is the target itself), and its access."""

    target: str
    subpath: str
    access: Access


@dataclass(frozen=True)
class PermissionProfile:
    """A resolved profile (its `extends` chain merged in)."""

    id: str
    description: str | None = None
    extends: str | None = None
    """The direct parent, as written."""
    full_access: bool = False
    rules: tuple[Rule, ...] = ()
    workspace_roots: tuple[str, ...] = ()
    """Profile-declared roots (enabled ones, absolute): always part of `:workspace_roots`."""
    network: bool = False

    @property
    def legacy_mode(self) -> SandboxMode:
        """Its legacy `sandbox_mode` projection (what old readers and `sandbox` on the wire see)."""
        if self.full_access:
            return "danger-full-access"
        return "workspace-write" if any(rule.access == "write" for rule in self.rules) else "read-only"

    def grants(self, target: str, subpath: str) -> Access | None:
        """The access this profile states for exactly `target`/`subpath`, if it states one."""
        return next((rule.access for rule in self.rules if (rule.target, rule.subpath) == (target, subpath)), None)


@dataclass(frozen=True)
class PermissionProfiles:
    """The profiles a config defines: the built-ins first, then its own, and the legacy
    `workspace-write` profile built from `[sandbox_workspace_write]`."""

    profiles: dict[str, PermissionProfile]
    legacy_workspace: PermissionProfile
    warnings: tuple[str, ...] = field(default=())

    def ids(self) -> list[str]:
        return list(self.profiles)

    def get(self, profile_id: str) -> PermissionProfile:
        """The profile `profile_id`; ConfigError lists the known ids."""
        try:
            return self.profiles[profile_id]
        except KeyError:
            raise ConfigError(f"unknown permission profile {profile_id!r}; known profiles: {', '.join(self.profiles)}") from None

    def selected(self, settings: ThreadSettings) -> PermissionProfile:
        """The profile `settings` select: `permissions`, else the legacy `sandbox_mode`'s."""
        if settings.permissions is not None:
            return self.get(settings.permissions)
        match settings.sandbox_mode:
            case "danger-full-access":
                return self.profiles[FULL_ACCESS]
            case "workspace-write":
                return self.legacy_workspace
        return self.profiles[READ_ONLY]


def default_selection(config: Config) -> tuple[str | None, SandboxMode]:
    """What a new thread selects: (profile id or None, legacy sandbox mode)."""
    if isinstance(config.sandbox_mode, str):
        return None, config.sandbox_mode
    if config.default_permissions is not None:
        return config.default_permissions, load_profiles(config).get(config.default_permissions).legacy_mode
    return None, DEFAULT_SANDBOX_MODE


def selection_warnings(config: Config) -> list[str]:
    """Why the config's profiles are not used (tables but no `default_permissions`), and what
    each profile table has that Spindle ignores."""
    out: list[str] = []
    if config.permissions and not isinstance(config.sandbox_mode, str) and config.default_permissions is None:
        out.append("config defines `[permissions]` profiles but does not set `default_permissions`; "
                   f"using the default sandbox_mode {DEFAULT_SANDBOX_MODE!r} (select a profile by id, "
                   "or set `default_permissions`)")
    return out + list(load_profiles(config).warnings)


def load_profiles(config: Config) -> PermissionProfiles:
    """Every profile `config` defines, resolved. ConfigError names the profile and the problem
    (an unknown or cyclic `extends`, an unknown access mode, a path Spindle cannot use)."""
    warnings: list[str] = []
    profiles: dict[str, PermissionProfile] = {
        READ_ONLY: _parse(READ_ONLY, BUILTIN_TABLES[READ_ONLY], None, None, warnings),
        WORKSPACE: _parse(WORKSPACE, BUILTIN_TABLES[WORKSPACE], None, None, warnings),
        FULL_ACCESS: PermissionProfile(id=FULL_ACCESS, full_access=True, network=True),
    }
    for profile_id, raw in config.permissions.items():
        if profile_id in BUILTIN_IDS or profile_id.startswith(":"):
            raise ConfigError(f"[permissions.{profile_id}]: ids starting with ':' are reserved for the built-in profiles")
        if not isinstance(raw, dict):
            raise ConfigError(f"[permissions.{profile_id}]: expected a table, got {raw!r}")
        table = _resolved_table(profile_id, config.permissions, [profile_id])
        extends = raw.get("extends")
        profiles[profile_id] = _parse(profile_id, table, raw.get("description"), extends, warnings)
    return PermissionProfiles(profiles=profiles, legacy_workspace=_legacy_workspace(config), warnings=tuple(warnings))


def _legacy_workspace(config: Config) -> PermissionProfile:
    """`sandbox_mode = "workspace-write"` with its `[sandbox_workspace_write]` options, as a profile."""
    options = config.sandbox_workspace_write
    filesystem: dict[str, Any] = {
        ":root": "read", WORKSPACE_ROOTS: {".": "write"},
        ":tmpdir": "read" if options.exclude_tmpdir_env_var else "write",
        ":slash_tmp": "read" if options.exclude_slash_tmp else "write",
    }
    table = {"filesystem": filesystem, "workspace_roots": dict.fromkeys(options.writable_roots, True),
             "network": {"enabled": options.network_access}}
    return _parse("workspace-write", table, None, None, [], where="[sandbox_workspace_write] writable_roots")


def _resolved_table(profile_id: str, tables: Mapping[str, Any], chain: list[str]) -> dict[str, Any]:
    """Profile `profile_id`'s table with its parents' merged under it (`chain`: who asked)."""
    raw = {k: v for k, v in tables[profile_id].items() if k not in ("description", "extends")}
    parent = tables[profile_id].get("extends")
    if parent is None:
        return raw
    where = f"[permissions.{profile_id}] extends"
    path = " -> ".join([*chain, str(parent)])
    if not isinstance(parent, str):
        raise ConfigError(f"{where}: expected a profile id, got {parent!r}")
    if parent == FULL_ACCESS:
        raise ConfigError(f"{where}: {FULL_ACCESS} cannot be extended ({path})")
    if parent in chain:
        raise ConfigError(f"{where}: profile {parent!r} extends itself ({path})")
    if parent in BUILTIN_TABLES:
        return deep_merge(BUILTIN_TABLES[parent], raw)
    if parent not in tables:
        known = ", ".join([READ_ONLY, WORKSPACE, *tables])
        raise ConfigError(f"{where}: unknown profile {parent!r} ({path}); known: {known}")
    return deep_merge(_resolved_table(parent, tables, [*chain, parent]), raw)


def _parse(profile_id: str, table: Mapping[str, Any], description: Any, extends: Any, warnings: list[str],
           *, where: str | None = None) -> PermissionProfile:
    here = where or f"[permissions.{profile_id}]"
    for key in table:
        if key not in PROFILE_KEYS:
            warnings.append(f"unknown key `permissions.{profile_id}.{key}` (ignored)")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{here} description: expected a string, got {description!r}")
    filesystem = table.get("filesystem", {})
    if not isinstance(filesystem, dict):
        raise ConfigError(f"{here} filesystem: expected a table, got {filesystem!r}")
    if not filesystem:
        warnings.append(f"permission profile {profile_id!r} has no filesystem rules: its commands may write nothing")
    return PermissionProfile(
        id=profile_id, description=description, extends=extends,
        rules=tuple(_rules(here, filesystem)),
        workspace_roots=tuple(_roots(here, table.get("workspace_roots", {}))),
        network=_network(here, profile_id, table.get("network", {}), warnings),
    )


def _rules(here: str, filesystem: Mapping[str, Any]) -> Iterator[Rule]:
    for key, value in filesystem.items():
        if key == "glob_scan_max_depth":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{here} filesystem.glob_scan_max_depth: expected an integer >= 1, got {value!r}")
            continue
        target = _target(here, key)
        if isinstance(value, dict):
            if target.startswith(":") and target != WORKSPACE_ROOTS:
                raise ConfigError(f"{here} filesystem {key!r}: takes no sub-paths (only {WORKSPACE_ROOTS} and absolute paths do)")
            for sub, access in value.items():
                yield Rule(target=target, subpath=_subpath(here, key, sub), access=_access(here, f"{key!r} {sub!r}", access))
        else:
            access = _access(here, repr(key), value)
            if target in (":root", ":minimal") and access != "read" and (target, access) != (":root", "write"):
                raise ConfigError(f"{here} filesystem {key!r} = {value!r}: not supported; Spindle's sandbox keeps "
                                  "the whole filesystem readable (deny named paths instead)")
            yield Rule(target=target, subpath=".", access=access)


def _target(here: str, key: str) -> str:
    if key.startswith(":"):
        if key not in SPECIAL_PATHS:
            raise ConfigError(f"{here} filesystem {key!r}: unknown special path; known: {', '.join(SPECIAL_PATHS)}")
        return key
    _no_glob(here, key)
    if key.startswith("~/") or key == "~":
        return os.path.normpath(os.path.expanduser(key))
    if not os.path.isabs(key):
        raise ConfigError(f"{here} filesystem {key!r}: a path must be absolute, start with ~/, or be a special path ({', '.join(SPECIAL_PATHS)})")
    return os.path.normpath(key)


def _subpath(here: str, key: str, sub: str) -> str:
    if sub == ".":
        return sub
    _no_glob(here, f"{key} {sub}")
    parts = sub.split("/")
    if os.path.isabs(sub) or any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"{here} filesystem {key!r} {sub!r}: a sub-path is relative, without '.' or '..' components")
    return sub


def _no_glob(here: str, path: str) -> None:
    if GLOB_CHARS & set(path):
        raise ConfigError(f"{here} filesystem {path!r}: glob patterns are not supported by Spindle's sandbox; "
                          "name the paths themselves")


def _access(here: str, path: str, value: Any) -> Access:
    access = ACCESS_ALIASES.get(value) if isinstance(value, str) else None
    if access is None:
        raise ConfigError(f"{here} filesystem {path}: unknown access {value!r}; allowed: read, write, deny (or none)")
    return access


def _roots(here: str, table: Any) -> Iterator[str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{here} workspace_roots: expected a table of path = true/false, got {table!r}")
    for path, enabled in table.items():
        if not isinstance(enabled, bool):
            raise ConfigError(f"{here} workspace_roots {path!r}: expected true or false, got {enabled!r}")
        expanded = os.path.expanduser(path)
        if not os.path.isabs(expanded):
            raise ConfigError(f"{here} workspace_roots {path!r}: a workspace root must be absolute or start with ~/")
        if enabled:
            yield os.path.normpath(expanded)


def _network(here: str, profile_id: str, table: Any, warnings: list[str]) -> bool:
    if not isinstance(table, dict):
        raise ConfigError(f"{here} network: expected a table, got {table!r}")
    for key in table:
        if key not in NETWORK_KEYS:
            warnings.append(f"unknown key `permissions.{profile_id}.network.{key}` (ignored)")
    if table.get("domains") or table.get("unix_sockets"):
        warnings.append(f"permission profile {profile_id!r}: network domain and unix socket rules are not enforced "
                        "by Spindle (it runs no network proxy); `network.enabled` alone decides")
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{here} network.enabled: expected true or false, got {enabled!r}")
    return enabled
