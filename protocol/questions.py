"""The questions of a `request_user_input` call and the user's answers (Codex's
`request_user_input` protocol types): snake_case here and in the model's arguments, camelCase on
the app-server wire (`item/tool/requestUserInput`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec


class UserInputOption(msgspec.Struct, kw_only=True, frozen=True):
    """One choice of a question: a short label, and what choosing it means."""

    label: str
    description: str


class UserInputQuestion(msgspec.Struct, kw_only=True, frozen=True):
    """One question the model asks the user. `is_other`: the client offers a free-form answer
    besides the options (Codex sets it on every question); `is_secret`: the answer is masked."""

    id: str
    header: str
    question: str
    is_other: bool = False
    is_secret: bool = False
    options: list[UserInputOption] | None = None


class UserInputAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """The user's answer to one question: the labels chosen, or free text."""

    answers: list[str]


class UserInputResponse(msgspec.Struct, kw_only=True, frozen=True):
    """The user's answers by question id; what the model reads, as this JSON."""

    answers: dict[str, UserInputAnswer] = msgspec.field(default_factory=dict)


def user_input_response(answers: Mapping[str, Sequence[str]]) -> UserInputResponse:
    """A response from plain answers: question id to the texts chosen."""
    return UserInputResponse(answers={qid: UserInputAnswer(answers=list(texts)) for qid, texts in answers.items()})
