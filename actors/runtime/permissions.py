"""A thread's permissions, realised for a turn as a `SandboxSpec`.

The thread keeps its selection symbolic (`ThreadSettings.permissions`, a profile id, or the legacy
`sandbox_mode`) plus its runtime workspace roots; `realise` binds them for one turn:
`:workspace_roots` becomes the thread's runtime roots (default its cwd) plus the profile's own
roots, each real-pathed and checked; the profile's rules give what is writable, read-only and
denied; `.git` and `.codex` under every writable root stay read-only unless the profile writes
them explicitly. A later change of roots or cwd therefore changes the next turn's sandbox without
touching the profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import ThreadSettings

from .errors import ConfigError, SandboxUnavailable
from .permission_profiles import WORKSPACE_ROOTS, PermissionProfile, PermissionProfiles

PROTECTED_NAMES = (".git", ".codex")
"""Inside a writable root, these stay read-only: a repository's metadata and its Codex config."""
TMP_FLAGS = (":tmpdir", ":slash_tmp")


def workspace_roots(settings: ThreadSettings, profile: PermissionProfile) -> list[str]:
    """What `:workspace_roots` means for `settings`: the runtime roots, then the profile's own."""
    return list(dict.fromkeys([*settings.workspace_roots(), *profile.workspace_roots]))


@dataclass(frozen=True)
class PermissionsView:
    """A thread's permissions as its clients see them (no file is touched)."""

    profile: PermissionProfile
    selected_by_id: bool
    """A profile id selected it (else the legacy `sandbox_mode` did)."""
    runtime_roots: list[str]
    """The runtime workspace roots the thread holds (never the profile's own: `apply_update`
    drops those)."""
    writable_roots: list[str]
    """The legacy projection's writable roots: all but the cwd (profile roots included)."""
    network: bool
    tmpdir_writable: bool
    slash_tmp_writable: bool


def describe(settings: ThreadSettings, profiles: PermissionProfiles) -> PermissionsView:
    """What `settings` select and make writable. A profile id `profiles` no longer defines (the
    config changed) shows as selected with no grants: `realise` refuses its commands."""
    try:
        profile = profiles.selected(settings)
    except ConfigError:
        profile = PermissionProfile(id=str(settings.permissions))
    writable = [] if profile.full_access else _Grants.of(profile, workspace_roots(settings, profile), real=False).writable
    return PermissionsView(
        profile=profile, selected_by_id=settings.permissions is not None,
        runtime_roots=list(settings.workspace_roots()),
        writable_roots=[root for root in writable if root != settings.cwd], network=profile.network,
        tmpdir_writable=profile.grants(":tmpdir", ".") == "write",
        slash_tmp_writable=profile.grants(":slash_tmp", ".") == "write",
    )


def realise(settings: ThreadSettings, profiles: PermissionProfiles) -> SandboxSpec:
    """The sandbox a command of a turn with `settings` runs in, from the profile it selects in
    `profiles`. SandboxUnavailable names a root that does not exist or is not a folder."""
    try:
        profile = profiles.selected(settings)
    except ConfigError as exc:
        raise SandboxUnavailable(str(exc)) from None
    if profile.full_access:
        return SandboxSpec(full_access=True, network=True)
    roots = [_real_root(root) for root in workspace_roots(settings, profile)]
    grants = _Grants.of(profile, list(dict.fromkeys(roots)), real=True)
    return SandboxSpec(
        writable_roots=tuple(grants.writable),
        read_only_subpaths=tuple(grants.read_only),
        denied_paths=tuple(grants.denied),
        network=profile.network,
        slash_tmp_writable=profile.grants(":slash_tmp", ".") == "write",
        tmpdir_writable=profile.grants(":tmpdir", ".") == "write",
    )


def _real_root(root: str) -> str:
    try:
        real = os.path.realpath(root)
    except (OSError, ValueError) as exc:  # a NUL byte in a profile's root, say
        raise SandboxUnavailable(f"workspace root {root!r} cannot be used: {exc}") from None
    if not os.path.exists(real):
        raise SandboxUnavailable(f"workspace root {root!r} does not exist")
    if not os.path.isdir(real):
        raise SandboxUnavailable(f"workspace root {root!r} is not a directory")
    return real


@dataclass
class _Grants:
    writable: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, profile: PermissionProfile, roots: list[str], *, real: bool) -> _Grants:
        """The paths `profile`'s rules name once `:workspace_roots` is `roots`."""
        grants = cls()
        for rule in profile.rules:
            if rule.target in TMP_FLAGS and rule.access == "write":
                continue  # a flag of the spec: the executor gives the thread its own writable tmp
            for base in _bases(rule.target, roots, real=real):
                path = base if rule.subpath == "." else os.path.join(base, rule.subpath)
                grants.add(path, rule.access, explicit=rule.subpath != ".")
                if rule.access == "write" and rule.subpath == "." and rule.target != ":root":
                    for name in PROTECTED_NAMES:
                        if profile.grants(rule.target, name) is None:
                            grants.add(os.path.join(path, name), "read", explicit=True)
        grants.writable = [p for p in dict.fromkeys(grants.writable) if p not in grants.denied]
        grants.read_only = [p for p in dict.fromkeys(grants.read_only) if p not in grants.writable and p not in grants.denied]
        grants.denied = list(dict.fromkeys(grants.denied))
        return grants

    def add(self, path: str, access: str, *, explicit: bool) -> None:
        match access:
            case "write":
                self.writable.append(path)
            case "deny":
                self.denied.append(path)
            case "read" if explicit:
                self.read_only.append(path)


def _bases(target: str, roots: list[str], *, real: bool) -> list[str]:
    """The folders a rule's target names (none for `:tmpdir`/`:slash_tmp`, which are flags)."""
    match target:
        case ":root":
            return ["/"]
        case ":minimal":
            return []
        case ":tmpdir":
            tmpdir = os.environ.get("TMPDIR")
            return [tmpdir] if tmpdir else []
        case ":slash_tmp":
            return ["/tmp"]  # noqa: S108 - the host's /tmp, as Codex names it
        case _ if target == WORKSPACE_ROOTS:
            return roots
    return [os.path.realpath(target) if real else target]
