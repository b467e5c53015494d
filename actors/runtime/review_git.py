"""A review's git inputs, read from the thread's cwd with git run inside the sandbox.

Each git command runs through bubblewrap (`sandbox.plan`, `execution.run_process`) under a
read-only version of the turn's sandbox: nothing writable, no network, the thread's denied paths
still hidden; a missing or unusable bubblewrap is `GitError` saying so, and no git runs outside
it. Each output is clipped (`git_capture`). Repository config cannot run programs from here:
external diff drivers, textconv and fsmonitor are off, and optional locks are not taken.
"""

from __future__ import annotations

import os
import shutil

import trio

from spindle.protocol.review import (
    BaseBranchTarget,
    CommitTarget,
    ReviewTarget,
    UncommittedChangesTarget,
)
from spindle.protocol.sandbox import SandboxSpec

from .command_item import command_env
from .errors import SandboxUnavailable
from .execution import BoundedCapture, run_process
from .review_prompts import GitSection, base_branch_prompt, commit_prompt, uncommitted_prompt
from .sandbox import plan

GIT_TIMEOUT_S = 60.0
"""How long one git command may run."""
GIT_OUTPUT_BYTES = 96 * 1024
"""The most of one git command's output the reviewer gets: its head and tail, the middle elided."""
MAX_UNTRACKED_FILES = 50
"""Untracked files whose contents the reviewer gets (all are listed by `git status`)."""
GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
GIT_OPTIONS = ["--no-pager", "-c", "core.fsmonitor=false", "-c", "core.quotepath=off"]
DIFF_OPTIONS = ["--no-color", "--no-ext-diff", "--no-textconv"]


class GitError(Exception):
    """Git could not give a review its inputs; the message says why (the turn fails with it)."""


def read_only(spec: SandboxSpec) -> SandboxSpec:
    """`spec` with nothing writable and no network; its denied paths kept."""
    return SandboxSpec(denied_paths=() if spec.full_access else spec.denied_paths)


def find_work_tree(cwd: str) -> str | None:
    """The folder at or above `cwd` holding a `.git` (a folder, or a worktree's file); None
    outside any repository. Reads the filesystem only: run it in a worker thread."""
    path = os.path.realpath(cwd)
    while True:
        if os.path.lexists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def git_capture(limit: int = GIT_OUTPUT_BYTES) -> BoundedCapture:
    """A capture keeping three quarters of `limit` from the head of an output, a quarter from its tail."""
    return BoundedCapture(head=limit * 3 // 4, tail=limit // 4)


class Git:
    """Runs git for one review, in `spec` (read-only) on behalf of thread `thread_id`."""

    def __init__(self, spec: SandboxSpec, thread_id: str) -> None:
        self.spec = spec
        self.thread_id = thread_id
        self._programs: tuple[str, str] | None = None

    async def run(self, args: list[str], cwd: str, *, shell: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
        """The clipped output of `git args` in `cwd` (or of the `shell` script, with git on PATH
        and `args` as its arguments); GitError when it fails, times out or cannot run."""
        shown = "git " + " ".join(args) if shell is None else "a git script"
        code, text = await self.exit_and_output(args, cwd, shell=shell)
        if code not in ok:
            raise GitError(f"`{shown}` failed (exit code {code}): {text.strip()}")
        return text

    async def exit_and_output(self, args: list[str], cwd: str, *, shell: str | None = None) -> tuple[int, str]:
        """Run git as `run` does; its exit code and clipped output, whatever the code."""
        git, sh = await self._find_programs()
        command = [sh, "-c", shell, "sh", *args] if shell is not None else [git, *GIT_OPTIONS, *args]
        env = {**command_env(os.environ), **GIT_ENV}
        try:
            ready = await plan(self.spec, cwd=cwd, command=command, env=env, thread_id=self.thread_id)
            result = await run_process(ready, cwd=cwd, env=env, timeout_s=GIT_TIMEOUT_S, capture=git_capture())
        except SandboxUnavailable as exc:
            raise GitError(f"cannot run git for the review: {exc}") from None
        except OSError as exc:
            raise GitError(f"cannot run git for the review in {cwd}: {exc.strerror or exc}") from None
        if result.timed_out:
            raise GitError(f"git took longer than {GIT_TIMEOUT_S:g} s in {cwd}")
        return result.exit_code, result.output.text()

    async def _find_programs(self) -> tuple[str, str]:
        if self._programs is None:
            git, sh = await trio.to_thread.run_sync(lambda: (shutil.which("git"), shutil.which("sh")))
            if git is None or sh is None:
                raise GitError("cannot review: `git` (and `sh`) must be on PATH")
            self._programs = (git, sh)
        return self._programs

    async def work_tree(self, cwd: str) -> str:
        try:
            return (await self.run(["rev-parse", "--show-toplevel"], cwd)).strip()
        except GitError as exc:
            raise GitError(f"cannot review: {cwd} is not in a git work tree ({exc})") from None

    async def commit_of(self, name: str, root: str, *, what: str) -> str | None:
        """The full id of the commit `name` names; None if it names none."""
        if name.startswith("-"):
            raise GitError(f"{what} {name!r} is not a revision name (it starts with '-')")
        code, found = await self.exit_and_output(["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], root)
        return found.strip() if code == 0 and found.strip() else None


async def review_prompt(target: ReviewTarget, cwd: str, git: Git) -> str:
    """The reviewer's prompt for a git target, with its git inputs (GitError when git fails)."""
    root = await git.work_tree(cwd)
    match target:
        case UncommittedChangesTarget():
            return uncommitted_prompt(root, await _uncommitted(git, root))
        case BaseBranchTarget(branch=branch):
            return await _base_branch(git, root, branch)
        case CommitTarget(sha=sha, title=title):
            full = await git.commit_of(sha, root, what="commit")
            if full is None:
                raise GitError(f"cannot review commit {sha!r}: no such commit in {root}")
            show = await git.run(["show", *DIFF_OPTIONS, "--format=fuller", "--stat", "--patch", full], root)
            return commit_prompt(root, full, title, [GitSection("the commit", f"git show {full}", show)])
    raise GitError(f"a {type(target).__name__} has no git inputs")


async def _uncommitted(git: Git, root: str) -> list[GitSection]:
    sections = [
        GitSection("status", "git status --short", await git.run(["status", "--short", "--untracked-files=all"], root)),
        GitSection("staged changes", "git diff --cached", await git.run(["diff", "--cached", *DIFF_OPTIONS], root)),
        GitSection("unstaged changes", "git diff", await git.run(["diff", *DIFF_OPTIONS], root)),
    ]
    listed = await git.run(["ls-files", "-z", "--others", "--exclude-standard"], root)
    untracked = [name for name in listed.split("\0") if name][:MAX_UNTRACKED_FILES]
    if untracked:
        script = f'for f do git {" ".join(GIT_OPTIONS)} diff --no-index {" ".join(DIFF_OPTIONS)} -- /dev/null "$f"; done; exit 0'
        shown = await git.run(untracked, root, shell=script)
        sections.append(GitSection("untracked files", "git diff --no-index /dev/null <file>", shown))
    return sections


async def _base_branch(git: Git, root: str, branch: str) -> str:
    """Codex's choice of base: the branch, or its upstream when that is ahead of it."""
    local = await git.commit_of(branch, root, what="branch")
    if local is None:
        raise GitError(f"cannot review against branch {branch!r}: no such branch or revision in {root}")
    base_ref, base = branch, local
    upstream = await git.commit_of(f"{branch}@{{upstream}}", root, what="branch")
    if upstream is not None and upstream != local:
        ahead = await git.run(["rev-list", "--count", f"{local}..{upstream}"], root)
        if ahead.strip() not in ("", "0"):
            base_ref, base = f"{branch}@{{upstream}}", upstream
    merge_base = (await git.run(["merge-base", "HEAD", base], root)).strip()
    log = await git.run(["log", "--oneline", "--no-decorate", f"{merge_base}..HEAD"], root)
    diff = await git.run(["diff", *DIFF_OPTIONS, merge_base], root)
    return base_branch_prompt(root, branch, base_ref, merge_base, [
        GitSection("commits since the merge base", f"git log --oneline {merge_base}..HEAD", log),
        GitSection("changes since the merge base", f"git diff {merge_base}", diff),
    ])
