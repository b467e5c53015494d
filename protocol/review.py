"""Code review: what to review (`ReviewTarget`), the request, and the reviewer's output.

The shapes are Codex's: a target is tagged by `type` (`uncommittedChanges`, `baseBranch`,
`commit`, `custom`) on the wire and in rollouts alike; the output is the JSON object the review
instructions ask the model for (`findings`, `overall_correctness`, `overall_explanation`,
`overall_confidence_score`). Reading the model's answer is tolerant, as Codex's is: the whole
text as JSON, else the first `{` to the last `}`, else the text itself as the explanation.
"""

from __future__ import annotations

import msgspec


class ReviewTargetBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    """What a review looks at."""

    def hint(self) -> str:
        """A short label of the target, for people (Codex's `user_facing_hint`)."""
        raise NotImplementedError

    def cleaned(self) -> ReviewTarget:
        """The target with its text trimmed; ValueError says what is missing."""
        raise NotImplementedError


class UncommittedChangesTarget(ReviewTargetBase, tag="uncommittedChanges", kw_only=True, frozen=True):
    """The working tree: staged, unstaged and untracked files."""

    def hint(self) -> str:
        return "uncommitted changes"

    def cleaned(self) -> ReviewTarget:
        return self


class BaseBranchTarget(ReviewTargetBase, tag="baseBranch", kw_only=True, frozen=True):
    """What the current branch changes since it left `branch` (the merge-base diff)."""

    branch: str

    def hint(self) -> str:
        return f"changes against '{self.branch}'"

    def cleaned(self) -> ReviewTarget:
        branch = self.branch.strip()
        if not branch:
            raise ValueError("branch must not be empty")
        return BaseBranchTarget(branch=branch)


class CommitTarget(ReviewTargetBase, tag="commit", kw_only=True, frozen=True):
    """The changes one commit introduced; `title` is a label for people (its subject, say)."""

    sha: str
    title: str | None = None

    def hint(self) -> str:
        short = self.sha[:7]
        return f"commit {short}: {self.title}" if self.title else f"commit {short}"

    def cleaned(self) -> ReviewTarget:
        sha = self.sha.strip()
        if not sha:
            raise ValueError("sha must not be empty")
        return CommitTarget(sha=sha, title=(self.title or "").strip() or None)


class CustomTarget(ReviewTargetBase, tag="custom", kw_only=True, frozen=True):
    """Free-form review instructions, sent to the reviewer as they are."""

    instructions: str

    def hint(self) -> str:
        return self.instructions.strip()

    def cleaned(self) -> ReviewTarget:
        instructions = self.instructions.strip()
        if not instructions:
            raise ValueError("instructions must not be empty")
        return CustomTarget(instructions=instructions)


ReviewTarget = UncommittedChangesTarget | BaseBranchTarget | CommitTarget | CustomTarget


class ReviewRequest(msgspec.Struct, kw_only=True, frozen=True):
    """A review to run (the `review` op's `review_request`, the `entered_review_mode` payload)."""

    target: ReviewTarget
    user_facing_hint: str | None = None

    def hint(self) -> str:
        return self.user_facing_hint or self.target.hint()


# --- the reviewer's output --------------------------------------------------------------------


class LineRange(msgspec.Struct, kw_only=True, frozen=True):
    start: int = 0
    end: int = 0


class CodeLocation(msgspec.Struct, kw_only=True, frozen=True):
    absolute_file_path: str = ""
    line_range: LineRange = msgspec.field(default_factory=LineRange)


class ReviewFinding(msgspec.Struct, kw_only=True, frozen=True):
    """One problem the reviewer found: `priority` 0 (P0, blocking) to 3 (P3, nice to have)."""

    title: str = ""
    body: str = ""
    confidence_score: float = 0.0
    priority: int | None = None
    code_location: CodeLocation = msgspec.field(default_factory=CodeLocation)


class ReviewOutput(msgspec.Struct, kw_only=True, frozen=True):
    """The reviewer's verdict (Codex's `ReviewOutputEvent`)."""

    findings: list[ReviewFinding] = msgspec.field(default_factory=list)
    overall_correctness: str = ""
    overall_explanation: str = ""
    overall_confidence_score: float = 0.0


_output_decoder = msgspec.json.Decoder(ReviewOutput)

NO_REVIEW_TEXT = "The reviewer gave neither findings nor an explanation."
"""What a review that produced nothing renders as."""
UNFINISHED_REVIEW_TEXT = "The review was interrupted or failed before the reviewer answered; start it again for a review."
"""What a review without output (interrupted, failed) renders as."""


def parse_review_output(text: str) -> ReviewOutput:
    """The reviewer's answer as a `ReviewOutput`: the text as JSON, else its first `{` to its
    last `}` as JSON, else the whole text as the explanation."""
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return _output_decoder.decode(candidate)  # type: ignore[no-any-return]
        except (msgspec.MsgspecError, RecursionError):
            continue
    return ReviewOutput(overall_explanation=text)


def render_findings(findings: list[ReviewFinding]) -> str:
    """The findings as plain text: one bullet each (title, file and lines), its body indented."""
    lines = [f"Review findings ({len(findings)}):"]
    for finding in findings:
        where = finding.code_location
        lines += ["", f"- {finding.title} — {where.absolute_file_path}:{where.line_range.start}-{where.line_range.end}"]
        lines += [f"  {line}" for line in finding.body.splitlines()]
    return "\n".join(lines)


def render_review_output(output: ReviewOutput | None) -> str:
    """The review as people read it (the `exitedReviewMode` item's text): the explanation, then
    the findings, a blank line between."""
    if output is None:
        return UNFINISHED_REVIEW_TEXT
    sections = []
    if explanation := output.overall_explanation.strip():
        sections.append(explanation)
    if output.findings:
        sections.append(render_findings(output.findings))
    return "\n\n".join(sections) or NO_REVIEW_TEXT
