"""YAML for the project's configuration files (sources.yml, audiences.yml).

Both are read with a safe loader that also refuses aliases: an alias bomb
(``&a [*a, *a, ...]`` nested) expands to billions of values, and a configuration file
has no use for them. It refuses a key written twice in one mapping too: PyYAML keeps
the last silently, so a second ``orders:`` block would quietly replace the first.
"""

from __future__ import annotations

from typing import Any

import yaml

#: How deep a configuration file may nest (sources.yml needs about 8 levels).
MAX_DEPTH = 64


class ConfigLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases and collections nested more than
    MAX_DEPTH levels (PyYAML would otherwise recurse until Python's own limit)."""

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
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.YAMLError(
                        f"key {key!r} is written twice in one mapping, lines {seen[key]} and {line}"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(text: str) -> Any:
    """Return the YAML document `text`; raise yaml.YAMLError for bad YAML, an alias or
    nesting deeper than MAX_DEPTH."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
