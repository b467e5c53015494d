"""Extra access granted at run time: what a user allowed when the model asked with the
`request_permissions` tool, laid over a turn's realised sandbox.

A grant holds real, absolute paths that exist (checked once, when it is made) and the network
flag. A turn's grant lasts until the turn ends; a session grant is kept by the thread's
`Approvals` while the thread is loaded (like an escalation, it is not written: a restart asks
again). `.git` and `.codex` under a granted writable path stay read-only, as under any root, and
a path the permission profile denies is opened only by a grant of exactly that path (a grant of a
folder above it never lifts it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgspec

from spindle.protocol.sandbox import (
    FileSystemPermissions,
    NetworkPermissions,
    RequestedPermissions,
    SandboxSpec,
)

from .permissions import PROTECTED_NAMES


@dataclass(frozen=True)
class Grants:
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    network: bool = False

    def __bool__(self) -> bool:
        return bool(self.read or self.write or self.network)

    def __or__(self, other: Grants) -> Grants:
        return Grants(read=tuple(dict.fromkeys((*self.read, *other.read))),
                      write=tuple(dict.fromkeys((*self.write, *other.write))), network=self.network or other.network)

    def apply(self, spec: SandboxSpec | None) -> SandboxSpec | None:
        """`spec` widened by these grants (None, no sandbox to run in, stays None)."""
        if spec is None or spec.full_access or not self:
            return spec
        opened = (*self.read, *self.write)
        writable = tuple(dict.fromkeys((*spec.writable_roots, *self.write)))
        protected = tuple(os.path.join(path, name) for path in self.write for name in PROTECTED_NAMES)
        return msgspec.structs.replace(
            spec, writable_roots=writable,
            read_only_subpaths=tuple(dict.fromkeys((*spec.read_only_subpaths, *protected))),
            denied_paths=tuple(p for p in spec.denied_paths if p not in opened),
            network=spec.network or self.network)

    def as_permissions(self) -> RequestedPermissions:
        """These grants as the wire (and the model) name them."""
        fs = FileSystemPermissions(read=list(self.read) or None, write=list(self.write) or None)
        return RequestedPermissions(file_system=fs if fs.read or fs.write else None,
                                    network=NetworkPermissions(enabled=True) if self.network else None)


def resolved(requested: RequestedPermissions, cwd: str) -> RequestedPermissions:
    """`requested` with every path absolute and real (relative ones taken from `cwd`): what the
    user is shown is what a grant gives, whatever a symlink later points to. Blocking."""

    def real(listed: list[str] | None) -> list[str] | None:
        if listed is None:
            return None
        return list(dict.fromkeys(_real(p, cwd) for p in listed if _usable(p)))

    fs = requested.file_system
    if fs is None:
        return requested
    return msgspec.structs.replace(requested, file_system=FileSystemPermissions(read=real(fs.read), write=real(fs.write)))


def granted(requested: RequestedPermissions, answer: RequestedPermissions, cwd: str) -> Grants:
    """What of `answer` was asked for in `requested` (as `resolved` made it; anything else is
    ignored), as real paths that exist now (a writable one must be a folder). Blocking."""

    def kept(kind: str) -> tuple[str, ...]:
        asked = set(_listed(requested, kind))
        real = [_real(p, cwd) for p in _listed(answer, kind) if _usable(p)]
        exists = os.path.isdir if kind == "write" else os.path.exists
        return tuple(dict.fromkeys(p for p in real if p in asked and exists(p)))

    network = bool(requested.network and requested.network.enabled and answer.network and answer.network.enabled)
    return Grants(read=kept("read"), write=kept("write"), network=network)


def _listed(perms: RequestedPermissions, kind: str) -> list[str]:
    fs = perms.file_system
    listed = getattr(fs, kind) if fs is not None else None
    return [p for p in listed or [] if isinstance(p, str)]


def _usable(path: str) -> bool:
    return bool(path) and "\0" not in path


def _real(path: str, cwd: str) -> str:
    return os.path.realpath(os.path.join(cwd, os.path.expanduser(path)))


