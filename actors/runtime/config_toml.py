"""The new text of a `config.toml` edit: tomlkit places each change in the file, keeping its
comments and layout; the plain data says where the change must land (`config_write.py` checks,
locks and replaces). Imported with the first write, so a server that never writes its config
never loads tomlkit."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Item, Table
from tomlkit.toml_document import TOMLDocument

from .config_keys import dotted
from .config_write import ConfigWriteError, Edit, _lookup, check_schema

# -- The new text: tomlkit places each change, the plain data says where it must land --------------

def edited_text(original: str, edits: list[Edit], file: Path) -> str:
    """`original` with `edits` applied, its untouched parts as they were. Each change is checked to
    read back as the edits applied to the plain data: where tomlkit puts a new `[table]` among
    dotted keys (and later keys would change tables), a safer placement is used, or the write is
    refused (configValidationError)."""
    try:
        doc = tomlkit.parse(original)
        intended = tomllib.loads(original)
    except (TOMLKitError, tomllib.TOMLDecodeError) as exc:
        raise ConfigWriteError("configValidationError", f"Invalid configuration: {file}: {exc}") from None
    for edit in edits:
        check_schema(edit)
        for step in list(_steps(edit, intended)):
            _check_value(step)
            _apply_plain(intended, step)
            doc = _placed(doc, step, intended, file)
    return tomlkit.dumps(doc)


def _steps(edit: Edit, data: Mapping[str, Any]) -> Iterator[Edit]:
    """An upsert as the plain sets and deletes it comes to against `data`: a table merges key by
    key into the table already there."""
    old = _lookup(data, edit.path)
    if edit.upsert and isinstance(old, dict) and isinstance(edit.value, dict):
        for key, value in edit.value.items():
            yield from _steps(Edit([*edit.path, key], value, upsert=True), data)
    else:
        yield Edit(edit.path, edit.value)


def _check_value(step: Edit) -> None:
    if step.value is None:
        return
    try:
        tomlkit.item(step.value)
    except (TOMLKitError, TypeError, ValueError) as exc:
        raise ConfigWriteError("configValidationError", f"invalid value for `{dotted(step.path)}`: {exc}") from None


def _apply_plain(data: dict[str, Any], step: Edit) -> None:
    node = data
    for i, key in enumerate(step.path[:-1]):
        if key not in node:
            if step.value is None:
                return  # deleting under a table that is not there: nothing to do
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigWriteError("configValidationError", f"`{dotted(step.path[: i + 1])}` is not a table")
    if step.value is None:
        node.pop(step.path[-1], None)
    else:
        node[step.path[-1]] = copy.deepcopy(step.value)


def _in_place(doc: TOMLDocument, step: Edit) -> TOMLDocument | None:
    """tomlkit's own placement: the key where it was, a new table as a `[header]` after its siblings."""
    node: Any = doc
    for key in step.path[:-1]:
        if key not in node:
            if step.value is None:
                return doc
            node[key] = tomlkit.table()
        node = node[key]
    if step.value is None:
        node.pop(step.path[-1], None)
    else:
        node[step.path[-1]] = step.value
    return doc


def _as_dotted_keys(doc: TOMLDocument, step: Edit) -> TOMLDocument | None:
    """Each leaf of the value as a dotted key (`a.b.c = 1`) in the innermost `[table]` the path is
    already in (or at the top): what fits a file that writes this table with dotted keys."""
    if step.value is None:
        return None
    _in_place(doc, Edit(step.path, None))
    anchor: Any = doc
    node: Any = doc
    depth = 0
    for i, key in enumerate(step.path[:-1]):
        child = node.get(key)
        if not isinstance(child, Table | OutOfOrderTableProxy):  # an inline table or a value: no deeper
            break
        if isinstance(child, Table) and not child.is_super_table():
            anchor, depth = child, i + 1
        node = child
    for sub, leaf in _leaves(step.value):
        rel = [*step.path[depth:], *sub]
        anchor.add(tomlkit.key(rel) if len(rel) > 1 else rel[0], _inline(leaf))
    return doc


def _as_table_at_end(doc: TOMLDocument, step: Edit) -> TOMLDocument | None:
    """The value as a new `[table]` at the end of the file (the key it replaces removed)."""
    if step.value is None or (len(step.path) == 1 and not isinstance(step.value, dict)):
        return None
    _in_place(doc, Edit(step.path, None))
    if isinstance(step.value, dict):
        tree: Any = step.value
        header = step.path
    else:
        tree, header = {step.path[-1]: step.value}, step.path[:-1]
    for key in reversed(header):
        tree = {key: tree}
    head = tomlkit.dumps(doc).rstrip("\n")
    return tomlkit.parse((head + "\n\n" if head else "") + tomlkit.dumps(tree))


PLACEMENTS: tuple[Callable[[TOMLDocument, Edit], TOMLDocument | None], ...] = (
    _in_place, _as_dotted_keys, _as_table_at_end,
)


def _placed(doc: TOMLDocument, step: Edit, intended: dict[str, Any], file: Path) -> TOMLDocument:
    """`doc` with `step` made by the first placement whose text reads back as `intended`."""
    text = tomlkit.dumps(doc)
    want = _pruned(intended)
    for place in PLACEMENTS:
        try:
            trial = place(tomlkit.parse(text), step)
            if trial is not None and _pruned(tomllib.loads(tomlkit.dumps(trial))) == want:
                return trial
        except (TOMLKitError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
            continue
    raise ConfigWriteError(
        "configValidationError",
        f"cannot write `{dotted(step.path)}` to {file} without changing other keys (its tables and dotted keys "
        "are laid out so that the edit would move keys into another table); edit the file by hand",
    )


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaves(sub, (*prefix, key))
    else:
        yield prefix, value


def _inline(value: Any) -> Item:
    """`value` with every table in it inline (`{ a = 1 }`), as a dotted key's value must be."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, sub in value.items():
            table.append(key, _inline(sub))
        return table
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(_inline(v) for v in value)
        return array
    return tomlkit.item(value)


def _pruned(data: Any) -> Any:
    """`data` without empty tables: TOML cannot keep a dotted-key table whose last key is gone."""
    if not isinstance(data, dict):
        return data
    out = {key: _pruned(value) for key, value in data.items()}
    return {key: value for key, value in out.items() if value != {}}
