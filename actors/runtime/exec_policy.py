"""Whether one `exec_command` call runs, asks the user first, or is refused: the approval policy
applied to the command and the turn's sandbox. Pure.

| policy | inside the sandbox | `require_escalated` (leave the sandbox) |
| --- | --- | --- |
| `never` | runs | refused: the model is told to stay inside |
| `on-request` | runs | asks; approved runs unsandboxed |
| `on-failure` | runs; if the sandbox seems to have denied it, asks to run it again unsandboxed | asks |
| `untrusted` | a known-safe, read-only command runs; any other asks, and approved runs sandboxed | asks |
| `{"granular": …}` | runs | as `on-request`, refused when `sandbox_approval` is false |

A turn with full access has no sandbox to leave: `require_escalated` changes nothing there.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Literal

from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import Approval, Granular

Verdict = Literal["run", "ask", "refuse"]


@dataclass(frozen=True, kw_only=True)
class ExecDecision:
    verdict: Verdict
    escalate: bool = False
    """Whether the command runs outside the sandbox (once approved)."""
    reason: str | None = None
    """For `ask`, the question shown to the user; for `refuse`, why (the model reads it)."""


SHELLS_READ_AS_BASH = frozenset({"bash", "sh"})
"""The shells whose command text `is_known_safe` can judge, named bare (found on PATH): a path
could name a repository's own `bash`."""


def decide(
    approval: Approval, sandbox: SandboxSpec, cmd: str, *, escalate: bool, justification: str | None,
    shell: str = "bash",
) -> ExecDecision:
    if escalate and not sandbox.full_access:
        if approval == "never":
            return ExecDecision(verdict="refuse", reason=(
                'approval_policy "never" lets no command leave the sandbox, and no user is asked; '
                "run the command inside the sandbox instead"))
        if isinstance(approval, Granular) and approval.rejects_sandbox_prompts():
            return ExecDecision(verdict="refuse", reason=(
                "the granular approval policy rejects requests to leave the sandbox (sandbox_approval = false); "
                "run the command inside the sandbox instead"))
        return ExecDecision(verdict="ask", escalate=True,
                            reason=justification or "Run this command outside the sandbox?")
    if approval == "untrusted" and not (shell in SHELLS_READ_AS_BASH and is_known_safe(cmd)):
        return ExecDecision(verdict="ask", reason=justification)
    return ExecDecision(verdict="run")


SANDBOX_DENIAL_MARKERS = (
    "operation not permitted", "permission denied", "read-only file system", "seccomp", "sandbox",
    "landlock", "failed to write file",
)
"""What a command's output says when the sandbox refused it (Codex's heuristic)."""


def likely_sandbox_denial(exit_code: int, output: str) -> bool:
    if exit_code in (0, 124):  # success, or our own timeout
        return False
    text = output.lower()
    return any(marker in text for marker in SANDBOX_DENIAL_MARKERS)


# --- known-safe commands ----------------------------------------------------------------------
SAFE_PROGRAMS = frozenset({
    "cat", "cd", "cut", "echo", "expr", "false", "grep", "head", "id", "ls", "nl", "paste", "pwd",
    "rev", "seq", "stat", "tail", "tr", "true", "uname", "wc", "which", "whoami",
})
SAFE_GIT = frozenset({"status", "log", "diff", "show"})
UNSAFE_FIND = frozenset({"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fls", "-fprint", "-fprint0", "-fprintf"})
UNSAFE_RG = frozenset({"--pre", "--hostname-bin", "--search-zip", "-z"})
SEPARATORS = frozenset({"&&", "||", ";", "|"})


def is_known_safe(cmd: str) -> bool:
    """Whether `cmd` only reads: every simple command in it is a known read-only program, named
    bare (found on PATH), with no option that writes or runs something, joined only by `&&`,
    `||`, `;` or `|`, with no redirection, substitution, subshell, comment, ANSI-C quoting or
    line break (where Python's and bash's reading of the text could differ)."""
    if any(mark in cmd for mark in ("`", "$(", "<(", ">(", "$'", '$"', "#", "\n", "\r")):
        return False  # where shlex and bash would read the command differently, it is not safe
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes
        return False
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            if not segment or not _safe_simple(segment):
                return False
            segment = []
        elif token and all(ch in "();<>|&" for ch in token):
            return False  # a redirection, a subshell, a background job
        else:
            segment.append(token)
    return True


def _safe_simple(argv: list[str]) -> bool:
    program, args = argv[0], argv[1:]
    if "=" in program or os.sep in program:
        return False  # an environment assignment, or a program of some folder (a repository's own `ls`)
    if program in SAFE_PROGRAMS:
        return True
    if program == "find":
        return not any(arg in UNSAFE_FIND for arg in args)
    if program == "rg":
        return not any(arg.split("=", 1)[0] in UNSAFE_RG for arg in args)
    if program == "git":
        return bool(args) and args[0] in SAFE_GIT and not any(a.startswith(("--output", "--ext-diff")) for a in args)
    if program == "sed":
        return len(args) == 2 and args[0] == "-n" and args[1].rstrip("p").replace(",", "").isdigit()
    return False
