"""Settings: the one place that reads the environment (and a local `.env`).

Every knob is an environment variable prefixed ``LIFECYCLE_``; a `.env` file in the
working directory is read for local use (real environment variables win). Nothing
else in the package reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dotenv import load_dotenv

#: Database of the warehouse on the embedded server (and the default elsewhere).
WAREHOUSE_DB = "lifecycle"
#: Database that plays the shop's operational orders system on the embedded server.
SHOP_DB = "shop"


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one process."""

    home: Path
    warehouse_url: str | None
    shop_db_url: str | None
    crm_api_url: str | None
    crm_token: str | None = field(repr=False)
    world_dir: Path

    @property
    def state_dir(self) -> Path:
        """Folder for everything the embedded runtime keeps (PostgreSQL data, logs)."""
        return self.home

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded PostgreSQL server."""
        return self.home / "pgdata"


def _path(value: str) -> Path:
    return Path(value).expanduser().resolve()


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Return settings from `env` (default: the process environment plus `.env`)."""
    if env is None:
        load_dotenv(Path.cwd() / ".env", override=False)
        env = dict(os.environ)
    home = _path(env.get("LIFECYCLE_HOME") or ".lifecycle")
    return Settings(
        home=home,
        warehouse_url=env.get("LIFECYCLE_WAREHOUSE_URL") or None,
        shop_db_url=env.get("LIFECYCLE_SHOP_DB_URL") or None,
        crm_api_url=env.get("LIFECYCLE_CRM_API_URL") or None,
        crm_token=env.get("LIFECYCLE_CRM_TOKEN") or None,
        world_dir=_path(env.get("LIFECYCLE_WORLD_DIR") or str(home / "world")),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings of this process (read once)."""
    return load_settings()
