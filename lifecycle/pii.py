"""Which warehouse columns hold personal data: the dbt YAML's ``meta: {pii: true}`` marks.

A personal column (email, names, phone, an identifier value that may be an email) is
marked in its model's YAML, as dbt column config::

    - name: primary_email
      config: {meta: {pii: true}}

(``meta: {pii: true}`` directly on the column is read too; dbt 1.10+ prefers ``config``.)
The marks are the one source of the PII-aware grants of :mod:`lifecycle.warehouse`: a
role without PII rights gets column privileges on every column *but* these. Read from
the YAML files themselves rather than from a compiled manifest, so grants never depend
on a dbt run having happened first.

Activation's tables are not dbt models; their personal columns are exactly the contact
fields the exports need (:data:`ACTIVATION_PII`), so the activation roles may read them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

#: Personal columns of the activation schema: what exports and pushes need to reach a person.
ACTIVATION_PII = frozenset({"email", "first_name", "last_name"})


def is_pii(column: dict) -> bool:
    """Return whether a column entry of a dbt YAML file is marked ``pii: true``."""
    for meta in (column.get("meta"), (column.get("config") or {}).get("meta")):
        if isinstance(meta, dict) and meta.get("pii") is True:
            return True
    return False


@lru_cache(maxsize=4)
def pii_columns(project_dir: Path | None = None) -> dict[str, frozenset[str]]:
    """Return {model or seed name: its PII columns} for every one that has any."""
    if project_dir is None:
        from lifecycle.transform import PROJECT_DIR

        project_dir = PROJECT_DIR
    found: dict[str, frozenset[str]] = {}
    for path in sorted([*project_dir.glob("models/**/*.yml"), *project_dir.glob("seeds/*.yml")]):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for kind in ("models", "seeds"):
            for node in doc.get(kind) or []:
                marked = {c["name"] for c in node.get("columns") or [] if is_pii(c)}
                if marked:
                    found[node["name"]] = found.get(node["name"], frozenset()) | marked
    return found
