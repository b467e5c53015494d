"""What a review turn tells the models: the reviewer's instructions, the prompt of each target
(with its git inputs), and the messages the reviewed thread keeps of the review.

Spindle's own words, in the shape of Codex's review prompts: a rubric for what deserves a
finding and how to write it, priorities P0 to P3, an overall verdict, and the exact JSON the
answer must be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spindle.protocol.review import ReviewOutput, render_findings

REVIEW_INSTRUCTIONS = """\
# Reviewing a code change

You review a change another engineer made. Report the problems its author would want to hear
about before it lands, and nothing else. More specific guidance (in the repository, in a later
message, in the change itself) takes precedence over these defaults.

## What is worth a finding

Flag a problem only when all of these hold:
1. It hurts correctness, security, performance or maintainability in a way that matters.
2. It is one concrete, fixable issue, not a general remark about the codebase.
3. The change introduced it; problems that were there before are out of scope.
4. Fixing it asks for no more rigour than the rest of the code shows.
5. You can point to the code it breaks; a guess that something elsewhere might break is not enough.
6. It is not plainly what the author meant to do.
7. The author would fix it once told.

Leave out style nits unless they hide the meaning or break a documented rule. When nothing
qualifies, report no findings: an empty list is a good answer. Otherwise list every finding that
qualifies, one per issue; do not stop at the first.

## How to write a finding

- Title: imperative, at most 80 characters, starting with its priority tag, e.g.
  "[P2] Close the file on the error path".
  [P0] blocks a release or breaks major use for everyone, whatever the inputs.
  [P1] is urgent: fix it in the next cycle. [P2] is normal. [P3] is nice to have.
- Also give the priority as a number in `priority`: 0 for P0 up to 3 for P3 (null if unsure).
- Body: one short paragraph of Markdown saying why it is a bug, under which inputs or
  conditions it shows, and how severe it is; no praise, no blame, no code longer than 3 lines.
- Location: the absolute path of the file and the shortest line range that shows the problem
  (a few lines, never more than about ten), overlapping the change.
- `confidence_score`: how sure you are, from 0.0 to 1.0.

## Verdict

Finish with an overall verdict: "patch is correct" when existing code and tests keep working
and nothing blocking is wrong (ignore style, typos and documentation), else "patch is incorrect",
with a one to three sentence explanation and your confidence in it.

## Answer format

Answer with this JSON object and nothing else: no Markdown fence, no prose around it.

{
  "findings": [
    {
      "title": "<[P0]-[P3] tag, then an imperative title of at most 80 characters>",
      "body": "<one paragraph of Markdown: why this is a problem, citing files, lines and functions>",
      "confidence_score": <number from 0.0 to 1.0>,
      "priority": <integer 0-3, or null>,
      "code_location": {
        "absolute_file_path": "<absolute path of the file>",
        "line_range": {"start": <first line>, "end": <last line>}
      }
    }
  ],
  "overall_correctness": "patch is correct" | "patch is incorrect",
  "overall_explanation": "<one to three sentences justifying the verdict>",
  "overall_confidence_score": <number from 0.0 to 1.0>
}
"""
"""The reviewer's base instructions (in place of the thread's own)."""


@dataclass(frozen=True)
class GitSection:
    """One git output the reviewer gets: what it is, the command that made it, its text."""

    title: str
    command: str
    text: str


def uncommitted_prompt(root: str, sections: Sequence[GitSection]) -> str:
    intro = (f"Review the uncommitted changes (staged, unstaged and untracked files) of the git "
             f"repository at {root}, and give prioritized, actionable findings.")
    return _with_sections(intro, sections)


def base_branch_prompt(root: str, branch: str, base_ref: str, merge_base: str, sections: Sequence[GitSection]) -> str:
    intro = (f"Review what the current branch would merge into the base branch '{branch}' (repository at "
             f"{root}). The merge base of HEAD and {base_ref} is {merge_base}; below are the commits "
             f"since it and the diff of the working tree against it. Give prioritized, actionable findings.")
    return _with_sections(intro, sections)


def commit_prompt(root: str, sha: str, title: str | None, sections: Sequence[GitSection]) -> str:
    named = f'commit {sha} ("{title}")' if title else f"commit {sha}"
    intro = (f"Review the changes introduced by {named} in the git repository at {root}, and give "
             "prioritized, actionable findings.")
    return _with_sections(intro, sections)


def _with_sections(intro: str, sections: Sequence[GitSection]) -> str:
    parts = [intro, "The git output was taken just now; you may read more of the repository with your tools."]
    for section in sections:
        body = section.text.rstrip("\n") or "(nothing)"
        parts.append(f'<git_output title="{section.title}" command="{section.command}">\n{body}\n</git_output>')
    return "\n\n".join(parts)


def results_message(output: ReviewOutput | None) -> str:
    """The user-side message the reviewed thread keeps of a review, so later turns know what it
    found (Codex records a `<user_action>` message)."""
    if output is None:
        return ("<user_action>\n  <context>The user started a code review, but it was interrupted or failed before "
                "the reviewer answered. If asked about it, suggest running the review again.</context>\n"
                "  <action>review</action>\n  <results>\n  None.\n  </results>\n</user_action>")
    results = output.overall_explanation.strip()
    if output.findings:
        results = f"{results}\n{render_findings(output.findings)}".strip()
    return ("<user_action>\n  <context>The user ran a code review; this is the reviewer's full output. The user may "
            "pick some of its findings to address.</context>\n  <action>review</action>\n  <results>\n"
            f"{results}\n  </results>\n</user_action>")
