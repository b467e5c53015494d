"""The approval policy applied to one command: run, ask or refuse; known-safe commands; what a
sandbox denial looks like."""

from __future__ import annotations

import pytest

from spindle.actors.runtime.exec_policy import (
    ExecDecision,
    decide,
    is_known_safe,
    likely_sandbox_denial,
)
from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import ApprovalPolicy, Granular, GranularApproval

SANDBOXED, FULL = SandboxSpec(writable_roots=("/w",)), SandboxSpec(full_access=True, network=True)


@pytest.mark.parametrize(("policy", "cmd", "escalate", "expected"), [
    ("never", "touch x", False, ExecDecision(verdict="run")),
    ("never", "touch x", True, "refuse"),
    ("on-request", "touch x", False, ExecDecision(verdict="run")),
    ("on-request", "touch x", True, ExecDecision(verdict="ask", escalate=True, reason="why")),
    ("on-failure", "touch x", False, ExecDecision(verdict="run")),
    ("on-failure", "touch x", True, ExecDecision(verdict="ask", escalate=True, reason="why")),
    ("untrusted", "ls -la", False, ExecDecision(verdict="run")),
    ("untrusted", "touch x", False, ExecDecision(verdict="ask", reason="why")),
    ("untrusted", "ls", True, ExecDecision(verdict="ask", escalate=True, reason="why")),
])
def test_each_policy_runs_asks_or_refuses(policy: ApprovalPolicy, cmd: str, escalate: bool, expected: object) -> None:
    decision = decide(policy, SANDBOXED, cmd, escalate=escalate, justification="why")
    if expected == "refuse":
        assert decision.verdict == "refuse" and decision.reason and "never" in decision.reason
    else:
        assert decision == expected


def test_a_command_for_another_shell_is_never_judged_safe() -> None:
    assert decide("untrusted", SANDBOXED, "ls", escalate=False, justification=None, shell="bash").verdict == "run"
    assert decide("untrusted", SANDBOXED, "ls", escalate=False, justification=None, shell="/repo/tools/bash").verdict == "ask"
    assert decide("untrusted", SANDBOXED, "ls", escalate=False, justification=None, shell="/usr/bin/python3").verdict == "ask"


def test_full_access_has_nothing_to_escalate_from() -> None:
    assert decide("never", FULL, "touch x", escalate=True, justification=None) == ExecDecision(verdict="run")
    assert decide("untrusted", FULL, "touch x", escalate=True, justification=None).verdict == "ask"


@pytest.mark.parametrize("cmd", [
    "ls", "ls -la src", "cat a b | grep -n foo | wc -l", "git status && git log -3", "pwd; echo hi",
    "rg -n TODO src", "find . -name '*.py'", "sed -n 10,20p", "head -n 5 'a file.txt'",
])
def test_read_only_commands_are_known_safe(cmd: str) -> None:
    assert is_known_safe(cmd)


@pytest.mark.parametrize("cmd", [
    "touch x", "rm -rf /", "ls > out.txt", "cat < in", "echo $(rm x)", "echo `id`", "ls & rm x",
    "find . -delete", "find . -exec rm {} ;", "rg --pre ./evil x", "git push", "git -c core.pager=x log",
    "sed -i s/a/b/ f", "FOO=1 ls", "(ls)", "ls && ", "cat 'unbalanced", "git diff --output=x", "python3 -c 1",
    "ls\nrm -rf x", "ls\rrm x", "echo a#; rm -rf x", "echo $'\\''; touch x; echo \"'\" #\"", "uniq in out", "./ls",
    "bin/cat x",
])
def test_anything_that_may_write_or_run_is_not(cmd: str) -> None:
    assert not is_known_safe(cmd)


def test_sandbox_denials_are_told_from_other_failures() -> None:
    assert likely_sandbox_denial(1, "touch: cannot touch 'x': Read-only file system")
    assert likely_sandbox_denial(1, "PermissionError: [Errno 1] Operation not permitted")
    assert not likely_sandbox_denial(1, "grep: no match")
    assert not likely_sandbox_denial(0, "Permission denied was printed but it worked")
    assert not likely_sandbox_denial(124, "timed out: permission denied")


def test_a_granular_policy_asks_like_on_request_unless_it_rejects_sandbox_prompts() -> None:
    allow = Granular(granular=GranularApproval(sandbox_approval=True, rules=False, mcp_elicitations=False))
    reject = Granular(granular=GranularApproval(sandbox_approval=False, rules=True, mcp_elicitations=True))
    assert decide(allow, SANDBOXED, "touch x", escalate=True, justification="why").verdict == "ask"
    assert decide(reject, SANDBOXED, "touch x", escalate=True, justification="why").verdict == "refuse"
    assert decide(reject, SANDBOXED, "touch x", escalate=False, justification=None).verdict == "run"
