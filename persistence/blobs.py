"""Large strings (an inline image's data URL, a huge tool output) are stored once in a rollout.

A compaction's `replacement_history` copies the recent user messages (and whatever else it keeps),
so an inline image would be written again at every later compaction. Instead, a `compacted` item
is written with each string of at least `BLOB_MIN` bytes that the rollout already holds (in an
earlier line, or earlier in the same thread's recorded items) replaced by a reference,
`spindle-blob:sha256:<hex digest>`. Reading resolves a reference from the line that holds the
string in full: the resume scan notes where the long lines holding such strings begin
(`BlobIndex`), and the history rebuilt from a `compacted` line gets its strings back. Pure but for
`BlobIndex.resolve`, which reads the file (blocking).

The strings concerned: `input_image.image_url`, `function_call_output.output` and
`custom_tool_call_output.output` in response items. Codex does not know the references: a Codex
resuming such a thread would send the reference where the image or the output was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import msgspec

from spindle.protocol.items import (
    CustomToolCallOutput,
    FunctionCallOutput,
    InputImage,
    Message,
    ResponseItem,
)
from spindle.protocol.rollout import CompactedItem, RolloutItem, RolloutLine

BLOB_MIN = 64 * 1024
"""Strings this long or longer are stored once."""
PREFIX = "spindle-blob:sha256:"

_lines = msgspec.json.Decoder(RolloutLine)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def reference(text: str) -> str:
    return PREFIX + digest(text)


def big_strings(item: object) -> Iterator[str]:
    """The strings of `item` (a response item, or a compaction's history) stored once."""
    if isinstance(item, CompactedItem):
        for kept in item.replacement_history or ():
            yield from big_strings(kept)
    elif isinstance(item, Message):
        for part in item.content:
            if isinstance(part, InputImage) and len(part.image_url) >= BLOB_MIN:
                yield part.image_url
    elif isinstance(item, FunctionCallOutput | CustomToolCallOutput) and len(item.output) >= BLOB_MIN:
        yield item.output


def _mapped(item: ResponseItem, change: Callable[[str], str]) -> ResponseItem:
    """`item` with each of its big strings (and references) passed through `change`."""
    if isinstance(item, Message):
        content = [msgspec.structs.replace(part, image_url=change(part.image_url)) if isinstance(part, InputImage)
                   else part for part in item.content]
        return msgspec.structs.replace(item, content=content)
    if isinstance(item, FunctionCallOutput | CustomToolCallOutput):
        return msgspec.structs.replace(item, output=change(item.output))
    return item


def shrink(item: CompactedItem, known: set[str]) -> CompactedItem:
    """`item` as written: its big strings whose digest is in `known` replaced by references (the
    others stay whole, and join `known`)."""
    if not item.replacement_history or not any(True for _ in big_strings(item)):
        return item

    def change(text: str) -> str:
        if len(text) < BLOB_MIN:
            return text
        key = digest(text)
        if key in known:
            return PREFIX + key
        known.add(key)
        return text

    return msgspec.structs.replace(item, replacement_history=[_mapped(kept, change) for kept in item.replacement_history])


def remember(items: Iterable[RolloutItem], known: set[str]) -> None:
    """Note the digests of the big strings `items` hold in full."""
    for item in items:
        for text in big_strings(item):
            known.add(digest(text))


class BlobIndex:
    """Where in a rollout file the lines holding big strings begin, by digest (the scan fills it)."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}

    def note(self, raw: bytes, offset: int) -> None:
        """A long line read at `offset`: its big strings can be found there."""
        try:
            item = _lines.decode(raw).payload
        except msgspec.MsgspecError:
            return
        for text in big_strings(item):
            self.lines.setdefault(digest(text), offset)

    def resolve(self, path: Path, item: CompactedItem) -> CompactedItem:
        """`item` with its references replaced by the strings they name, read from `path`; a
        reference that cannot be resolved stays as it is."""
        if not item.replacement_history:
            return item
        found: dict[str, str] = {}

        def change(text: str) -> str:
            if not text.startswith(PREFIX):
                return text
            key = text[len(PREFIX):]
            if key not in found and key in self.lines:
                found.update((digest(s), s) for s in self._strings_at(path, self.lines[key]))
            return found.get(key, text)

        return msgspec.structs.replace(item, replacement_history=[_mapped(kept, change) for kept in item.replacement_history])

    @staticmethod
    def _strings_at(path: Path, offset: int) -> list[str]:
        with open(path, "rb") as file:
            file.seek(offset)
            raw = file.readline()
        try:
            return list(big_strings(_lines.decode(raw).payload))
        except msgspec.MsgspecError:
            return []
