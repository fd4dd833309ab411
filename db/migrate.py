"""Applies `db/migrations/NNNN_name.sql` once each, in order, each in one transaction with its
`schema_migrations` record under an advisory lock; an edited, already applied migration is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from opsinfra.errors import PipelineError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x0B5_C1_EA  # pg_advisory_xact_lock key for migrations of this project


class MigrationError(PipelineError):
    """A migration failed or the recorded history disagrees with the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    out = []
    for entry in resources.files("db").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {versions}")
    return out


def _ensure_history(conn: psycopg.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer     PRIMARY KEY,
               name       text        NOT NULL,
               checksum   text        NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now()
           )"""
    )


def apply(conninfo: str, *, schema: str | None = None) -> list[Migration]:
    """Apply pending migrations; returns those applied now (empty when up to date)."""
    applied_now: list[Migration] = []
    with psycopg.connect(conninfo, autocommit=False) as conn:
        if schema:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        _ensure_history(conn)
        conn.commit()
        for mig in available():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                row = conn.execute(
                    "SELECT checksum FROM schema_migrations WHERE version = %s", (mig.version,)
                ).fetchone()
                if row is not None:
                    if row[0] != mig.checksum:
                        raise MigrationError(
                            f"migration {mig.version:04d}_{mig.name} changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                try:
                    conn.execute(mig.sql.encode())
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {mig.version:04d}_{mig.name}: {exc}") from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
                applied_now.append(mig)
    return applied_now


def status(conninfo: str, *, schema: str | None = None) -> list[tuple[Migration, bool]]:
    """Every available migration and whether it is applied."""
    with psycopg.connect(conninfo) as conn:
        if schema:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        try:
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        except psycopg.errors.UndefinedTable:
            done = set()
    return [(m, m.version in done) for m in available()]
