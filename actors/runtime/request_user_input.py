"""The `request_user_input` tool: the model asks the user one to three questions, each with
options, and waits for the answers (Codex's tool, offered with Codex's spec to every model).

Only in Plan mode: in any other mode the call is answered "request_user_input is unavailable in
<Mode> mode" and nobody is asked. In Plan mode the questions become a `request_user_input` event
(the app-server's `item/tool/requestUserInput` request; every question gets `is_other`, as Codex
sets it), the turn waits for the `user_input_answer` op, and the model reads the answers as their
JSON (`{"answers":{"q1":{"answers":["A"]}}}`). No turn item is made of the call.
"""

from __future__ import annotations

from typing import Any

import msgspec

from spindle.protocol.events import RequestUserInputEvent
from spindle.protocol.questions import UserInputQuestion

from .collaboration import MODE_NAMES
from .tools import ToolArgumentError, ToolContext

NAME = "request_user_input"

_QUESTION_PARAMS = {
    "type": "object",
    "properties": {
        "header": {"type": "string", "description": "Short header label shown in the UI (12 or fewer chars)."},
        "id": {"type": "string", "description": "Stable identifier for mapping answers (snake_case)."},
        "options": {
            "type": "array",
            "description": (
                "Provide 2-3 mutually exclusive choices. Put the recommended option first and suffix its label "
                "with \"(Recommended)\". Do not include an \"Other\" option in this list; the client will add a "
                "free-form \"Other\" option automatically."),
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string",
                                    "description": "One short sentence explaining impact/tradeoff if selected."},
                    "label": {"type": "string", "description": "User-facing label (1-5 words)."},
                },
                "required": ["label", "description"],
                "additionalProperties": False,
            },
        },
        "question": {"type": "string", "description": "Single-sentence prompt shown to the user."},
    },
    "required": ["id", "header", "question", "options"],
    "additionalProperties": False,
}

SPEC: dict[str, Any] = {
    "type": "function",
    "name": NAME,
    "description": ("Request user input for one to three short questions and wait for the response. "
                    "This tool is only available in Plan mode."),
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"questions": {"type": "array", "description": "Questions to show the user. Prefer 1 and do not exceed 3",
                                     "items": _QUESTION_PARAMS}},
        "required": ["questions"],
        "additionalProperties": False,
    },
}
"""Codex 0.169's definition, word for word (the model was trained on it)."""


class _Arguments(msgspec.Struct):
    questions: list[UserInputQuestion]


_arguments = msgspec.json.Decoder(_Arguments)
_answers = msgspec.json.Encoder()


class RequestUserInputTool:
    name = NAME

    def spec(self) -> dict[str, Any]:
        return SPEC

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        mode = ctx.settings.collaboration_mode.mode
        if mode != "plan":
            return f"request_user_input is unavailable in {MODE_NAMES[mode]} mode"
        try:
            questions = _arguments.decode(arguments).questions
        except msgspec.DecodeError as exc:
            raise ToolArgumentError(str(exc)) from None
        if any(not question.options for question in questions):
            return "request_user_input requires non-empty options for every question"
        asked = [msgspec.structs.replace(question, is_other=True) for question in questions]
        reply = await ctx.ask_user(RequestUserInputEvent(call_id=ctx.call_id, turn_id=ctx.turn_id, questions=asked))
        if reply.error is not None:
            return f"request_user_input failed: {reply.error}"
        return _answers.encode(reply.response).decode()
