"""YAML for the project's configuration files (sources.yml, audiences.yml).

Both are read with a safe loader that also refuses aliases: an alias bomb
(``&a [*a, *a, ...]`` nested) expands to billions of values, and a configuration file
has no use for them.
"""

from __future__ import annotations

from typing import Any

import yaml


class NoAliasLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"aliases (*{event.anchor}) are not allowed, line {event.start_mark.line + 1}"
            )
        return super().compose_node(parent, index)


def load_config(text: str) -> Any:
    """Return the YAML document `text`; raise yaml.YAMLError for bad YAML or an alias."""
    return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
