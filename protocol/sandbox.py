"""What a command's sandbox allows, realised for one turn: pure data the executor turns into a
bubblewrap invocation. Paths are absolute; the executor resolves symlinks before binding them."""

from __future__ import annotations

from typing import Literal

import msgspec


class SandboxSpec(msgspec.Struct, kw_only=True, frozen=True):
    """The realised permissions of one turn's commands.

    `full_access`: no sandbox at all (`:danger-full-access`); the other fields are then unused.
    `writable_roots`: folders a command may write (the realised `:workspace_roots`, plus
    writable profile paths). `read_only_subpaths`: paths inside writable roots that stay read-only
    (`.git`, `.codex`, a profile's `read` entries). `denied_paths`: paths a command may not read.
    `network`: whether it may open network connections. `slash_tmp_writable`: a private, writable
    `/tmp` for the thread (else the host's, read-only). `tmpdir_writable`: `$TMPDIR` writable.
    """

    full_access: bool = False
    writable_roots: tuple[str, ...] = ()
    read_only_subpaths: tuple[str, ...] = ()
    denied_paths: tuple[str, ...] = ()
    network: bool = False
    slash_tmp_writable: bool = False
    tmpdir_writable: bool = False


class FileSystemPermissions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Paths a command may read, or write, beyond what its sandbox allows."""

    read: list[str] | None = None
    write: list[str] | None = None


class NetworkPermissions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    enabled: bool | None = None


class RequestedPermissions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Extra access the model asks for with `request_permissions` (or the part of it a user
    grants): file system paths and the network."""

    file_system: FileSystemPermissions | None = None
    network: NetworkPermissions | None = None

    def is_empty(self) -> bool:
        fs = self.file_system
        return not (fs and (fs.read or fs.write)) and not (self.network and self.network.enabled)


PermissionScope = Literal["turn", "session"]


class PermissionGrant(msgspec.Struct, kw_only=True, frozen=True):
    """A user's answer to a permissions request: what is granted, for the turn or the session."""

    permissions: RequestedPermissions = msgspec.field(default_factory=RequestedPermissions)
    scope: PermissionScope = "turn"
