"""Alembic, driven from code: the scripts ship inside the package, no alembic.ini needed."""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

SCRIPT_LOCATION = "mainsail:migrations"
# Made at run time, one per index version (each fixes its own vector dimension): not in the
# models, so comparing the models with the database leaves them out.
RUNTIME_INDEX_PREFIX = "ix_chunks_embedding_v"


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's ``include_object`` hook: skips the per-version vector indexes."""
    return not (type_ == "index" and reflected and (name or "").startswith(RUNTIME_INDEX_PREFIX))


def alembic_config(url: URL | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        config.attributes["url"] = url
    return config


@cache
def head_revisions() -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def upgrade(url: URL, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def revision(*, message: str, autogenerate: bool, url: URL | None) -> None:
    """Write the next migration, numbered in sequence (0002, 0003, ...) so files sort by age."""
    config = alembic_config(url)
    existing = list(ScriptDirectory.from_config(config).walk_revisions())
    command.revision(
        config, message=message, autogenerate=autogenerate, rev_id=f"{len(existing) + 1:04d}"
    )
