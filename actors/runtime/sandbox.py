"""A `SandboxSpec` realised as a bubblewrap (`bwrap`) invocation on Linux.

The command sees the host filesystem read-only (`--ro-bind / /`), a fresh `/dev` and `/proc`, its
own user and PID namespaces (so a kill of bwrap ends every process it started) with every
capability dropped (even when Spindle runs as root, nothing can remount or unmount), and, unless
the spec allows network, an empty network namespace plus the seccomp filter of `seccomp.py`. On
top, in order of path depth so that a narrower entry wins over a broader one:

- each writable root is bound writable (`--bind`), at its real path: bubblewrap binds resolved
  paths, so a symlink inside a root that points outside it leads to a read-only place;
- each read-only sub-path that exists (`.git`, `.codex`, a profile's `read` entries) is bound
  read-only again, and for a `.git` file (a worktree or submodule) the `gitdir:` it names too; one
  that does not exist yet, where a command could create it, gets an empty read-only folder in its
  place (so no command plants `.codex/config.toml` or git hooks; the empty folder stays behind as
  the mount point); one that is a symbolic link refuses the command (the link itself could be
  replaced);
- each denied path that exists is masked: an empty read-only tmpfs over a folder, `/dev/null`
  over a file; so is the sandbox state folder below, in every sandbox;
- with `slash_tmp_writable`, `/tmp` is a private folder of the thread, kept between its commands:
  `<state>/sandbox-tmp/<thread id>`, where `<state>` is `$XDG_RUNTIME_DIR/spindle` or
  `<system temp>/spindle-<uid>`, each level checked to be a real 0700 folder of ours. It is not a
  tmpfs, so that a file one command leaves in `/tmp` is there for the next, as on the host; it
  is deleted when the thread ends (unloaded or shut down).

The `bwrap` used is the first on `PATH` (absolute entries only) outside every folder a command
may write, so no command can plant one for the next. It is probed (off the event loop) for user
namespaces until it once succeeds. When it is missing or cannot sandbox, `SandboxUnavailable`
says why and how to install it: a command is never run unsandboxed in its place.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field

import structlog
import trio

from spindle.protocol.sandbox import SandboxSpec

from .errors import SandboxUnavailable
from .seccomp import SeccompUnsupported, no_network_filter

log = structlog.get_logger(__name__)

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install bubblewrap`) "
    "and make sure unprivileged user namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1, "
    "or on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)"
)
PROBE_TIMEOUT_S = 10.0
_NAMESPACES = ["--unshare-user", "--unshare-pid", "--cap-drop", "ALL"]
"""Own user and PID namespaces, and no capability at all, even when Spindle runs as root."""


def find_bwrap(exclude: list[str], path: str | None = None) -> str | None:
    """The first executable `bwrap` on `path` (default `$PATH`) that no command could have put
    there: absolute entries only, none inside a folder of `exclude` (the writable roots, the
    sandbox state folder, a writable `$TMPDIR`)."""
    search = os.environ.get("PATH", "") if path is None else path
    roots = [os.path.realpath(root) for root in exclude]
    for entry in search.split(os.pathsep):
        if not os.path.isabs(entry):
            continue  # empty or relative: resolved against whatever cwd the server has
        real = os.path.realpath(entry)
        if any(_within(real, root) for root in roots):
            continue
        found = shutil.which("bwrap", path=entry)
        if found is not None and not any(_within(os.path.realpath(found), root) for root in roots):
            return found
    return None


_sandboxes: set[str] = set()
"""The bwrap paths probed and found able to sandbox."""


def _probe(bwrap: str) -> str | None:
    argv = [bwrap, *_NAMESPACES, "--unshare-net", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not be run: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        return f"{bwrap} cannot create user namespaces here ({detail})"
    return None


async def check_bwrap(bwrap: str) -> None:
    """Raise `SandboxUnavailable` unless `bwrap` can sandbox; probed in a thread until it once
    succeeds (a failure is probed again next time: it may have been a passing overload)."""
    if bwrap in _sandboxes:
        return
    problem = await trio.to_thread.run_sync(_probe, bwrap)
    if problem is not None:
        log.warning("bubblewrap cannot sandbox", bwrap=bwrap, reason=problem)
        raise SandboxUnavailable(f"the sandbox is unavailable: {problem}; {INSTALL_HINT}")
    _sandboxes.add(bwrap)


def state_dir() -> str:
    """Where Spindle keeps the sandbox's per-thread folders (created 0700, checked to be ours)."""
    return _private_dir(_state_path())


def _state_path() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "spindle") if runtime else os.path.join(tempfile.gettempdir(), f"spindle-{os.getuid()}")


def thread_tmp_dir(thread_id: str) -> str:
    """The private `/tmp` of a thread's sandboxed commands; each level is checked to be a real
    folder of ours (not a link someone swapped in)."""
    if not thread_id or os.sep in thread_id or thread_id in (".", ".."):
        raise SandboxUnavailable(f"cannot make a private /tmp for thread id {thread_id!r}")
    return _private_dir(os.path.join(_private_dir(os.path.join(state_dir(), "sandbox-tmp")), thread_id))


def remove_thread_tmp(thread_id: str) -> None:
    """Delete a thread's private `/tmp` (its thread has ended), if it has one. Blocking."""
    if not thread_id or os.sep in thread_id or thread_id in (".", ".."):
        return
    path = os.path.join(_state_path(), "sandbox-tmp", thread_id)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _private_dir(path: str) -> str:
    try:
        os.mkdir(path, mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SandboxUnavailable(f"cannot create the sandbox folder {path}: {exc.strerror or exc}") from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SandboxUnavailable(f"the sandbox folder {path} is not a private folder of this user")
    if info.st_mode & 0o077:  # ours, but open to others (made by an older version): close it
        os.chmod(path, 0o700)
    return path


@dataclass(frozen=True, kw_only=True)
class Mount:
    """One bubblewrap mount: `kind` is `write`, `read`, `tmp` (the private /tmp), or `deny`."""

    path: str
    kind: str
    source: str = ""
    """For `tmp`, the host folder bound there."""
    folder: bool = True
    """For `deny`: a folder (masked by an empty tmpfs) or a file (masked by /dev/null)."""


_KIND_ORDER = {"tmp": 0, "write": 1, "read": 2, "deny": 3}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A command ready to run: `command_line(fd)` is its argv once the seccomp program (`seccomp`,
    when there is one) is readable on descriptor `fd` of the child; `env` is set on top of its
    environment."""

    command: list[str]
    bwrap: str | None = None
    spec: SandboxSpec = field(default_factory=SandboxSpec)
    cwd: str = ""
    layers: list[Mount] = field(default_factory=list)
    seccomp: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)

    def command_line(self, seccomp_fd: int | None = None) -> list[str]:
        if self.bwrap is None:
            return list(self.command)
        return bwrap_argv(self.bwrap, self.spec, cwd=self.cwd, command=self.command, layers=self.layers,
                          seccomp_fd=seccomp_fd)


def git_pointer_target(path: str) -> str | None:
    """For a `.git` file (`gitdir: <dir>`), the real folder it names, if it exists."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    target = first.removeprefix("gitdir:").strip()
    target = os.path.realpath(os.path.join(os.path.dirname(path), target))
    return target if os.path.isdir(target) else None


def mounts(
    spec: SandboxSpec, *, cwd: str, tmp_dir: str | None, env: dict[str, str], state: str | None = None
) -> list[Mount]:
    """The mounts over the read-only root, in the order bubblewrap must apply them. Reads the
    filesystem (realpath, stat): call it off the event loop."""
    found: dict[str, Mount] = {}

    def add(path: str, kind: str, source: str = "", folder: bool = True) -> None:
        prior = found.get(path)
        if prior is None or _KIND_ORDER[kind] >= _KIND_ORDER[prior.kind]:
            found[path] = Mount(path=path, kind=kind, source=source, folder=folder)

    writable = [os.path.realpath(root) for root in spec.writable_roots]
    tmpdir = env.get("TMPDIR")
    if spec.tmpdir_writable and tmpdir and os.path.isdir(tmpdir):
        real = os.path.realpath(tmpdir)
        if not _within(real, "/tmp") or tmp_dir is None:
            writable.append(real)
    for root in writable:
        if os.path.isdir(root):
            add(root, "write")
    if tmp_dir is not None:
        add("/tmp", "tmp", tmp_dir)
        real_cwd = os.path.realpath(cwd)
        if _within(real_cwd, "/tmp") and not any(_within(real_cwd, root) for root in writable):
            add(real_cwd, "read")  # keep a read-only cwd under /tmp visible over the private /tmp
    for sub in spec.read_only_subpaths:
        if os.path.islink(sub):
            raise SandboxUnavailable(
                f"{sub} is a symbolic link: the sandbox could protect only what it points to, not "
                "keep the link from being replaced, so commands here are refused; make it a real "
                "folder (or, for .git, a `gitdir:` file)")
        real = os.path.realpath(sub)
        if not os.path.exists(real):
            guard = _first_missing(real, writable)
            if guard is not None:  # it could be created: an empty read-only folder takes its place
                add(guard, "deny")
            continue
        add(real, "read")
        if os.path.basename(sub) == ".git" and os.path.isfile(real):
            target = git_pointer_target(real)
            if target is not None:
                add(target, "read")
    if state is not None:
        add(state, "deny")  # one thread's command never reaches another's private /tmp
    for denied in spec.denied_paths:
        real = os.path.realpath(denied)
        if os.path.exists(real):
            add(real, "deny", folder=os.path.isdir(real))
    return sorted(found.values(), key=lambda m: (_depth(m.path), _KIND_ORDER[m.kind], m.path))


def bwrap_argv(
    bwrap: str, spec: SandboxSpec, *, cwd: str, command: list[str], layers: list[Mount], seccomp_fd: int | None
) -> list[str]:
    """The full bubblewrap command line for `command` under `spec` (pure: no filesystem access)."""
    argv = [bwrap, *_NAMESPACES]
    if not spec.network:
        argv.append("--unshare-net")
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for m in layers:
        match m.kind:
            case "write":
                argv += ["--bind", m.path, m.path]
            case "read":
                argv += ["--ro-bind", m.path, m.path]
            case "tmp":
                argv += ["--bind", m.source, m.path]
            case "deny" if m.folder:
                argv += ["--tmpfs", m.path, "--remount-ro", m.path]
            case "deny":
                argv += ["--ro-bind", "/dev/null", m.path]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--die-with-parent", "--new-session", "--chdir", cwd, "--", *command]
    return argv


async def plan(
    spec: SandboxSpec, *, cwd: str, command: list[str], env: dict[str, str], thread_id: str,
    path: str | None = None,
) -> Plan:
    """How to run `command` under `spec`: through bubblewrap, or as is for full access.
    Raises `SandboxUnavailable` when the spec asks for a sandbox that cannot be made."""
    if spec.full_access:
        return Plan(command=list(command))
    state = await trio.to_thread.run_sync(state_dir)
    exclude = [state, *spec.writable_roots, *([env["TMPDIR"]] if spec.tmpdir_writable and env.get("TMPDIR") else [])]
    bwrap = await trio.to_thread.run_sync(find_bwrap, exclude, path)
    if bwrap is None:
        raise SandboxUnavailable(
            f"the sandbox is unavailable: no `bwrap` on PATH outside the folders a command may write; {INSTALL_HINT}")
    await check_bwrap(bwrap)
    seccomp: bytes | None = None
    if not spec.network:
        try:
            seccomp = no_network_filter()
        except SeccompUnsupported as exc:
            raise SandboxUnavailable(f"the sandbox is unavailable: {exc}") from None

    def prepare() -> tuple[list[Mount], dict[str, str]]:
        tmp_dir = thread_tmp_dir(thread_id) if spec.slash_tmp_writable else None
        layers = mounts(spec, cwd=cwd, tmp_dir=tmp_dir, env=env, state=state)
        extra: dict[str, str] = {}
        tmpdir = env.get("TMPDIR")
        if tmp_dir is not None and tmpdir and _within(os.path.realpath(tmpdir), "/tmp"):
            extra["TMPDIR"] = "/tmp"  # the host's folder is hidden by the private /tmp
        return layers, extra

    layers, extra = await trio.to_thread.run_sync(prepare)
    return Plan(command=list(command), bwrap=bwrap, spec=spec, cwd=cwd, layers=layers, seccomp=seccomp, env=extra)


def _first_missing(path: str, writable: list[str]) -> str | None:
    """The first missing folder on the way to `path`, when a writable root would let a command
    create it; None when nothing there can be created."""
    missing = path
    while not os.path.lexists(os.path.dirname(missing)):
        missing = os.path.dirname(missing)
    parent = os.path.realpath(os.path.dirname(missing))
    return missing if any(_within(parent, root) for root in writable) else None


def _depth(path: str) -> int:
    return len([part for part in path.split(os.sep) if part])


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
