"""The bubblewrap sandbox: what a command may write, read and reach, and when it is refused."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spindle.actors.runtime import sandbox
from spindle.actors.runtime.errors import SandboxUnavailable
from spindle.actors.runtime.seccomp import ABIS, no_network_filter
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.protocol.sandbox import SandboxSpec

from .sandbox_helpers import needs_bwrap, out, sh, workspace

POSTGRES_SOCKET = "/var/run/postgresql/.s.PGSQL.5432"


def connect_script(target: str) -> str:
    """A shell line that tries to connect to `target` (a path, or host:port) and prints the result."""
    code = (
        "import socket,sys\n"
        "t=sys.argv[1]\n"
        "try:\n"
        "    if ':' in t:\n"
        "        h,p=t.rsplit(':',1); s=socket.create_connection((h,int(p)),timeout=5)\n"
        "    else:\n"
        "        s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(t)\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('REFUSED', e.errno, e)\n"
    )
    return f"python3 -c \"{code}\" {target}"


# --- filesystem ----------------------------------------------------------------


@needs_bwrap
async def test_writes_inside_writable_roots_succeed_and_outside_fail(tmp_path: Path) -> None:
    root, extra, outside = tmp_path / "work", tmp_path / "extra", tmp_path / "outside"
    for d in (root, extra, outside):
        d.mkdir()
    spec = SandboxSpec(writable_roots=(str(root), str(extra)))
    result = await sh(spec, f"echo a > in.txt && echo b > {extra}/x.txt; echo c > {outside}/no.txt", str(root))
    assert (root / "in.txt").read_text() == "a\n"
    assert (extra / "x.txt").read_text() == "b\n"
    assert not (outside / "no.txt").exists()
    assert "Read-only file system" in out(result) and result.exit_code != 0


@needs_bwrap
async def test_git_and_codex_stay_read_only_inside_a_writable_root(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".codex").mkdir()
    script = "echo x > .git/HEAD; echo y > .git/new; echo z > .codex/config.toml; echo ok > src.txt"
    result = await sh(workspace(str(tmp_path)), script, str(tmp_path))
    assert (tmp_path / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert not (tmp_path / ".git" / "new").exists() and not (tmp_path / ".codex" / "config.toml").exists()
    assert (tmp_path / "src.txt").read_text() == "ok\n"
    assert out(result).count("Read-only file system") == 3


@needs_bwrap
async def test_no_capability_survives_to_undo_the_mounts(tmp_path: Path) -> None:
    """Run as root (as in a container), a command still cannot remount / writable or unmount .git."""
    (tmp_path / ".git").mkdir()
    script = (f"mount -o remount,bind,rw / 2>&1; echo remount=$?; umount {tmp_path}/.git 2>&1; echo umount=$?; "
              "echo x > .git/after; grep CapEff /proc/self/status")
    result = await sh(workspace(str(tmp_path)), script, str(tmp_path))
    text = out(result)
    assert "remount=0" not in text and "umount=0" not in text, text
    assert "CapEff:\t0000000000000000" in text
    assert not (tmp_path / ".git" / "after").exists()


@needs_bwrap
async def test_a_missing_protected_path_cannot_be_created(tmp_path: Path) -> None:
    """Else a command could plant `.codex/config.toml` (full access for the next thread) or git hooks."""
    script = "mkdir -p .codex && echo 'sandbox_mode = \"danger-full-access\"' > .codex/config.toml; mkdir .git; echo ok > src.txt"
    await sh(workspace(str(tmp_path)), script, str(tmp_path))
    assert not (tmp_path / ".codex" / "config.toml").exists()
    assert not any((tmp_path / ".git").iterdir()) if (tmp_path / ".git").is_dir() else not (tmp_path / ".git").exists()
    assert (tmp_path / "src.txt").read_text() == "ok\n"


@needs_bwrap
async def test_a_symlinked_protected_path_is_refused_rather_than_left_replaceable(tmp_path: Path) -> None:
    root, store = tmp_path / "work", tmp_path / "gitstore"
    root.mkdir()
    store.mkdir()
    (root / ".git").symlink_to(store)
    with pytest.raises(SandboxUnavailable, match=r"\.git is a symbolic link"):
        await sh(workspace(str(root)), "rm .git && mkdir .git", str(root))
    assert (root / ".git").is_symlink()


@needs_bwrap
async def test_a_git_pointer_file_protects_its_gitdir_too(tmp_path: Path) -> None:
    gitdir = tmp_path / "repo.git" / "worktrees" / "wt"
    gitdir.mkdir(parents=True)
    work = tmp_path / "wt"
    work.mkdir()
    (work / ".git").write_text(f"gitdir: {os.path.relpath(gitdir, work)}\n")
    spec = SandboxSpec(writable_roots=(str(work), str(tmp_path / "repo.git")),
                       read_only_subpaths=(str(work / ".git"),))
    result = await sh(spec, f"echo x > .git; echo y > {gitdir}/HEAD; echo ok > f", str(work))
    assert (work / ".git").read_text().startswith("gitdir:")
    assert not (gitdir / "HEAD").exists()
    assert (work / "f").exists()
    assert out(result).count("Read-only file system") == 2


@needs_bwrap
async def test_a_symlink_out_of_a_writable_root_does_not_allow_writing_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "escape-file").symlink_to(outside / "target.txt")
    result = await sh(SandboxSpec(writable_roots=(str(root),)),
                      "echo x > escape/new.txt; echo y > escape-file; echo fine > inside.txt", str(root))
    assert list(outside.iterdir()) == []
    assert (root / "inside.txt").exists()
    assert out(result).count("Read-only file system") == 2


@needs_bwrap
async def test_a_read_only_spec_writes_nothing(tmp_path: Path) -> None:
    result = await sh(SandboxSpec(), "echo x > f.txt; mkdir d; echo done", str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    assert out(result).endswith("done\n") and "Read-only file system" in out(result)


async def test_full_access_writes_anywhere_without_a_sandbox(tmp_path: Path) -> None:
    ready = await sandbox.plan(SandboxSpec(full_access=True, network=True), cwd=str(tmp_path),
                               command=["sh", "-c", "true"], env={}, thread_id="t", path="")
    assert ready.command_line() == ["sh", "-c", "true"]  # no bwrap needed, even with none on PATH
    result = await sh(SandboxSpec(full_access=True, network=True), "echo x > f.txt", str(tmp_path), path="")
    assert result.exit_code == 0 and (tmp_path / "f.txt").read_text() == "x\n"


@needs_bwrap
async def test_denied_paths_are_masked(tmp_path: Path) -> None:
    secret_dir, secret_file = tmp_path / "secrets", tmp_path / "key.pem"
    secret_dir.mkdir()
    (secret_dir / "token").write_text("s3cret")
    secret_file.write_text("PRIVATE")
    spec = SandboxSpec(writable_roots=(str(tmp_path),), denied_paths=(str(secret_dir), str(secret_file)))
    result = await sh(spec, "ls -A secrets; cat key.pem; echo x > secrets/new; echo end", str(tmp_path))
    assert "token" not in out(result) and "PRIVATE" not in out(result)
    assert not (secret_dir / "new").exists()
    assert out(result).endswith("end\n")


@needs_bwrap
async def test_the_private_tmp_belongs_to_the_thread_and_lasts_between_its_commands(tmp_path: Path) -> None:
    spec = workspace(str(tmp_path))
    thread = f"t-{tmp_path.name}"
    marker = f"spindle-test-{tmp_path.name}"
    first = await sh(spec, f"echo kept > /tmp/{marker}", str(tmp_path), thread_id=thread)
    assert first.exit_code == 0, out(first)
    again = await sh(spec, f"cat /tmp/{marker}", str(tmp_path), thread_id=thread)
    other = await sh(spec, f"cat /tmp/{marker}", str(tmp_path), thread_id=thread + "-other")
    assert out(again) == "kept\n"
    assert other.exit_code != 0
    assert not Path("/tmp", marker).exists()  # the host's /tmp was not written
    private = Path(sandbox.thread_tmp_dir(thread))
    assert (private / marker).read_text() == "kept\n"
    assert stat.S_IMODE(os.stat(sandbox.state_dir()).st_mode) == 0o700


@needs_bwrap
async def test_without_a_private_tmp_the_hosts_tmp_is_read_only(tmp_path: Path) -> None:
    spec = SandboxSpec(writable_roots=(str(tmp_path),))
    marker = f"/tmp/spindle-test-ro-{tmp_path.name}"
    result = await sh(spec, f"echo x > {marker}", str(tmp_path))
    assert result.exit_code != 0 and not Path(marker).exists()


# --- network ---------------------------------------------------------------------


@pytest.fixture
def host_servers(tmp_path: Path) -> tuple[str, str]:
    """A listening Unix socket and a TCP port on the host's loopback: (path, "127.0.0.1:port")."""
    path = str(tmp_path / "host.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(8)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    yield path, f"127.0.0.1:{tcp.getsockname()[1]}"  # type: ignore[misc]
    unix.close()
    tcp.close()


@needs_bwrap
async def test_network_off_blocks_tcp_and_host_unix_sockets(tmp_path: Path, host_servers: tuple[str, str]) -> None:
    unix_path, tcp = host_servers
    targets = [unix_path, tcp, "127.0.0.1:5432"]
    if os.path.exists(POSTGRES_SOCKET):
        targets.append(POSTGRES_SOCKET)
    for target in targets:
        result = await sh(SandboxSpec(), connect_script(target), str(tmp_path))
        assert out(result).startswith("REFUSED"), (target, out(result))
        if not target.startswith("127.0.0.1"):
            assert out(result).startswith("REFUSED 1 "), out(result)  # EPERM: the seccomp filter


@needs_bwrap
async def test_network_on_reaches_the_same_sockets(tmp_path: Path, host_servers: tuple[str, str]) -> None:
    """The control of the test above: the probes do connect when the spec allows network."""
    for target in host_servers:
        result = await sh(SandboxSpec(network=True), connect_script(target), str(tmp_path))
        assert out(result) == "CONNECTED\n", (target, out(result))


@needs_bwrap
async def test_network_off_keeps_what_local_tools_need(tmp_path: Path) -> None:
    """Stream socket pairs (subprocess plumbing in node, cargo) and the namespace's own loopback."""
    code = (
        "import socket\n"
        "a,b=socket.socketpair(); a.sendall(b'pair'); print(b.recv(4).decode())\n"
        "srv=socket.create_server(('127.0.0.1',0)); c=socket.create_connection(srv.getsockname())\n"
        "print('loopback ok')\n"
        "try:\n"
        "    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "except OSError as e:\n"
        "    print('dgram pair', e.errno)\n"
    )
    result = await sh(SandboxSpec(), f"python3 -c \"{code}\"", str(tmp_path))
    assert out(result) == "pair\nloopback ok\ndgram pair 1\n"


def test_the_filter_is_whole_instructions_for_each_architecture() -> None:
    for abi in ABIS.values():
        program = no_network_filter(abi)
        assert program and len(program) % 8 == 0 and len(program) // 8 < 64


# --- when the sandbox cannot be made ----------------------------------------------


async def test_no_bwrap_on_path_refuses_with_the_install_hint(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(SandboxUnavailable) as caught:
        await sh(SandboxSpec(writable_roots=(str(tmp_path),)), f"touch {marker}", str(tmp_path), path=str(empty))
    assert "no `bwrap` on PATH" in str(caught.value)
    assert "apt-get install bubblewrap" in str(caught.value)
    assert not marker.exists()


async def test_a_bwrap_that_cannot_make_namespaces_refuses(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SandboxUnavailable) as caught:
        await sh(SandboxSpec(), "true", str(work), path=str(fake.parent))
    message = str(caught.value)
    assert "cannot create user namespaces" in message and "No permissions to create new namespace" in message
    assert "apt-get install bubblewrap" in message


def test_a_bwrap_inside_a_writable_root_is_never_used(tmp_path: Path) -> None:
    planted = tmp_path / "repo" / "bin"
    planted.mkdir(parents=True)
    (planted / "bwrap").write_text("#!/bin/sh\n")
    (planted / "bwrap").chmod(0o755)
    elsewhere = tmp_path / "tools"
    elsewhere.mkdir()
    (elsewhere / "bwrap").write_text("#!/bin/sh\n")
    (elsewhere / "bwrap").chmod(0o755)
    assert sandbox.find_bwrap([str(tmp_path / "repo")], f"{planted}:{elsewhere}") == str(elsewhere / "bwrap")
    assert sandbox.find_bwrap([str(tmp_path / "repo")], str(planted)) is None
    # nor one in any writable root (the command's workdir may be elsewhere), nor a relative PATH entry
    assert sandbox.find_bwrap([str(tmp_path / "other"), str(tmp_path / "repo")], f"{planted}:{elsewhere}") == str(elsewhere / "bwrap")
    assert sandbox.find_bwrap([], "repo/bin") is None


@needs_bwrap
async def test_a_bwrap_planted_in_a_writable_root_is_not_used_whatever_the_workdir(tmp_path: Path) -> None:
    root = tmp_path / "work"
    planted = root / ".venv" / "bin"
    planted.mkdir(parents=True)
    (planted / "bwrap").write_text("#!/bin/sh\nshift $(($# - 1)); exec sh -c \"$1\"\n")
    (planted / "bwrap").chmod(0o755)
    real = os.path.dirname(shutil.which("bwrap") or "/usr/bin/bwrap")
    spec = SandboxSpec(writable_roots=(str(root),))
    result = await sh(spec, f"echo escaped > {tmp_path}/outside.txt", "/usr", path=f"{planted}:{real}:/usr/bin:/bin")
    assert not (tmp_path / "outside.txt").exists(), out(result)


@needs_bwrap
async def test_the_sandbox_state_folder_is_hidden_from_every_command(tmp_path: Path) -> None:
    """Else one thread could swap another's private /tmp for a link to anywhere."""
    state = sandbox.state_dir()
    sandbox.thread_tmp_dir("t-victim")
    spec = SandboxSpec(writable_roots=(str(tmp_path),), tmpdir_writable=True)
    script = f"ls -A {state} | wc -l; touch {state}/planted 2>&1; echo touch=$?"
    result = await sh(spec, script, str(tmp_path), thread_id="t-other")
    assert out(result).split()[0] == "0" and "touch=0" not in out(result)
    assert not os.path.exists(os.path.join(state, "planted"))


def test_a_thread_tmp_folder_that_is_a_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    tmp_root = Path(sandbox.state_dir()) / "sandbox-tmp"
    tmp_root.mkdir(mode=0o700, parents=True)
    (tmp_root / "t-victim").symlink_to(tmp_path)
    with pytest.raises(SandboxUnavailable, match="not a private folder"):
        sandbox.thread_tmp_dir("t-victim")


def test_mounts_go_from_broad_to_narrow(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (tmp_path / "a" / ".git").mkdir()
    spec = SandboxSpec(writable_roots=(str(inner), str(tmp_path / "a")), read_only_subpaths=(str(tmp_path / "a" / ".git"),))
    layers = sandbox.mounts(spec, cwd=str(tmp_path), tmp_dir=None, env={})
    assert [(m.path, m.kind) for m in layers] == [
        (str(tmp_path / "a"), "write"), (str(inner), "write"), (str(tmp_path / "a" / ".git"), "read"),
    ]


@needs_bwrap
async def test_a_tmpdir_under_the_hidden_host_tmp_points_at_the_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_tmpdir = Path("/tmp") / f"spindle-test-tmpdir-{tmp_path.name}"
    host_tmpdir.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(host_tmpdir))
    result = await sh(workspace(str(tmp_path)), 'echo "$TMPDIR"; echo x > "$TMPDIR/f" && echo wrote', str(tmp_path),
                      thread_id=f"t-{tmp_path.name}")
    assert out(result) == "/tmp\nwrote\n"
    assert list(host_tmpdir.iterdir()) == []
    host_tmpdir.rmdir()


@needs_bwrap
async def test_a_threads_private_tmp_is_deleted_when_the_thread_ends(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    async with make_runtime(sandbox_mode="workspace-write", approval_policy="never") as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="exec_command", arguments={"cmd": "echo kept > /tmp/note; cat /tmp/note"}),
                          Text(text="done"), thread_id=thread.thread_id)
        assert await thread.ask("go") == "done"
        private = Path(sandbox.state_dir()) / "sandbox-tmp" / thread.thread_id
        assert (private / "note").read_text() == "kept\n"
        await thread.shutdown_and_wait()
        assert not private.exists()


def test_a_sandbox_folder_of_ours_left_open_to_others_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    (Path(sandbox.state_dir()) / "sandbox-tmp").mkdir(mode=0o755)
    path = Path(sandbox.thread_tmp_dir("t-1"))
    assert stat.S_IMODE((path.parent).stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o700
