"""YAML for the project's configuration files (sources.yml, audiences.yml).

Both are read with a safe loader that also refuses aliases: an alias bomb
(``&a [*a, *a, ...]`` nested) expands to billions of values, and a configuration file
has no use for them. It refuses a key written twice in one mapping too: PyYAML keeps
the last silently, so a second ``orders:`` block would quietly replace the first.

With ``text_keys`` every unquoted mapping key is the text written in the file: YAML 1.1
reads ``yes``/``no`` as booleans, ``1`` as an integer and ``2024-01-01`` as a date, but a
key of the sources file (a status word of a ``values`` recoding, a column name) is text.
:func:`describe_error` turns PyYAML's multi-line error into one line.
"""

from __future__ import annotations

from typing import Any

import yaml

#: PyYAML's prefix of the standard tags (``!!int`` is ``tag:yaml.org,2002:int``).
_STD_TAG = "tag:yaml.org,2002:"
#: How much of PyYAML's wording of a problem an error line quotes.
_PROBLEM_LIMIT = 200
#: Longest context (``while parsing a block mapping``) an error line keeps.
_CONTEXT_LIMIT = 60

#: How deep a configuration file may nest (sources.yml needs about 8 levels).
MAX_DEPTH = 64


class ConfigLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases and collections nested more than
    MAX_DEPTH levels (PyYAML would otherwise recurse until Python's own limit)."""

    #: Take unquoted mapping keys as the text written (``yes`` is "yes", not True).
    text_keys = False

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"aliases (*{event.anchor}) are not allowed, line {event.start_mark.line + 1}"
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(
                    f"nested more than {MAX_DEPTH} levels deep, line {mark.line + 1}"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            if self.text_keys:
                node.value = [(_as_text(k), v) for k, v in node.value]
            seen: dict[Any, tuple[int, yaml.ScalarNode]] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    first_line, first = seen[key]
                    if (first.tag, first.value) != (key_node.tag, key_node.value):
                        # 1, 1.0 and true are one key once read (1 == 1.0 == True)
                        raise yaml.YAMLError(
                            f"keys {first.value!r} and {key_node.value!r} are the same key "
                            f"once read, lines {first_line} and {line}: quote them"
                        )
                    raise yaml.YAMLError(
                        f"key {key!r} is written twice in one mapping, "
                        f"lines {first_line} and {line}"
                    )
                seen[key] = (line, key_node)
        return super().construct_mapping(node, deep=deep)


def _timestamp_or_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """Read a date-shaped scalar as a date, or as its text when it is no real day.

    PyYAML raised Python's bare ``month must be in 1..12`` for ``2019-13-01``, naming
    neither file nor key; as text, the setting that wants a date refuses it by name.
    """
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


ConfigLoader.add_constructor(f"{_STD_TAG}timestamp", _timestamp_or_text)


class TextKeyLoader(ConfigLoader):
    """A ConfigLoader whose unquoted mapping keys are the text written in the file."""

    text_keys = True


def _as_text(node: yaml.Node) -> yaml.Node:
    """Return a plain (unquoted, untagged) scalar key node as a string node."""
    if (
        isinstance(node, yaml.ScalarNode)
        and node.style is None
        and node.tag not in (f"{_STD_TAG}str", f"{_STD_TAG}merge")
        and node.tag.startswith(_STD_TAG)
    ):
        return yaml.ScalarNode(
            f"{_STD_TAG}str", node.value, node.start_mark, node.end_mark, node.style
        )
    return node


def load_config(text: str, *, text_keys: bool = False) -> Any:
    """Return the YAML document `text`; raise yaml.YAMLError for bad YAML, an alias or
    nesting deeper than MAX_DEPTH. With `text_keys`, unquoted keys are the text written
    (``yes: completed`` is {"yes": "completed"}, not {True: "completed"})."""
    loader = TextKeyLoader if text_keys else ConfigLoader
    return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass


def describe_error(exc: yaml.YAMLError, text: str) -> str:
    """Return one line saying what is wrong where, for a YAML error raised reading `text`:
    ``line 5, column 4: <problem> (<context>)``, without PyYAML's quoted source lines."""
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _position(text, exc.position)
        what = f"U+{exc.character:04X}" + (" (a NUL byte)" if exc.character == 0 else "")
        return f"line {line}, column {column}: character {what} is not allowed in YAML"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return _one_line(str(exc))
    problem = _one_line(exc.problem or exc.context or "not valid YAML")
    problem = problem.replace(f"'{_STD_TAG}", "'!!")
    if problem.startswith("could not determine a constructor for the tag "):
        tag = problem.removeprefix("could not determine a constructor for the tag ")
        problem = f"unknown tag {tag} (the file holds plain values, strings, lists and mappings)"
    if "'\\t'" in problem:
        problem += " (indent with spaces, not tabs)"
    if len(problem) > _PROBLEM_LIMIT:
        problem = problem[:_PROBLEM_LIMIT] + "...(truncated)"
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = _one_line(exc.context or "") if exc.problem else ""
    if context == "while scanning for the next token":  # says nothing the problem does not
        context = ""
    if context and len(context) <= _CONTEXT_LIMIT:
        cmark = exc.context_mark
        if cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
            context += f" at line {cmark.line + 1}, column {cmark.column + 1}"
        problem += f" ({context})"
    return where + problem


def _position(text: str, index: int) -> tuple[int, int]:
    """Return the 1-based (line, column) of character `index` of `text`."""
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _one_line(text: str) -> str:
    return " ".join(text.split())
