"""The database of `fraudguard run`'s temporary Prefect server: migrated once at install, copied into each new
Prefect home.

Prefect's temporary server creates its SQLite database on its first start in a new PREFECT_HOME by running
every Alembic migration of Prefect's schema: about 5.5 s of a ~9 s boot on 2 cores, the largest single
piece of a run's orchestration overhead (bench/end_to_end_bench.py), paid again by every new project
(`fraudguard run` keeps Prefect's state in the project's .prefect/). `make install` therefore migrates one
empty database per installed Prefect version (`python -m fraudguard.prefect_database create`) and `fraudguard
run` copies it to where Prefect would create its own. The copy holds only the schema and its Alembic
revision (no rows, no keys: Prefect makes its block-encryption key on first use, in each home). Prefect
still migrates on start, so a template of an older schema is brought up to date as it would be anyway.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess  # nosec B404 - this interpreter's `prefect` CLI with a fixed argument list
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPLATE_ENV = "FRAUDGUARD_PREFECT_DB_TEMPLATE"
# Settings that point Prefect's server at another database: then there is nothing to seed.
DATABASE_URL_ENVS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
DATABASE_FILE = "prefect.db"  # Prefect's default: sqlite+aiosqlite:///$PREFECT_HOME/prefect.db


def template_path() -> Path | None:
    """Where the migrated template of the installed Prefect lives: $FRAUDGUARD_PREFECT_DB_TEMPLATE (empty:
    none), else <environment prefix>/share/fraudguard/prefect-<version>.db (inside the virtualenv)."""
    chosen = os.environ.get(TEMPLATE_ENV)
    if chosen is not None:
        return Path(chosen) if chosen else None
    return Path(sys.prefix) / "share" / "fraudguard" / f"prefect-{version('prefect')}.db"


def create_template(target: Path) -> Path:
    """Migrate a new, empty Prefect database with Prefect's own `prefect server database upgrade` and store it
    at `target` as one closed SQLite file (replaced atomically: a crash leaves the old one or none)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefect-db-") as scratch:
        migrated = Path(scratch) / DATABASE_FILE
        env = {key: value for key, value in os.environ.items()
               if key not in (*DATABASE_URL_ENVS, "PREFECT_API_URL", "PREFECT_PROFILE")}
        env.update(PREFECT_HOME=scratch, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{migrated}")
        prefect_cli = Path(sys.executable).with_name("prefect")
        proc = subprocess.run(  # nosec B603 - fixed argv, no shell
            [str(prefect_cli), "--no-prompt", "server", "database", "upgrade", "-y"],
            env=env, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0 or not migrated.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"prefect server database upgrade exited {proc.returncode}: {tail[0]}")
        staging = target.with_name(f".{target.name}.tmp")
        staging.unlink(missing_ok=True)
        # SQLite's backup API: one consistent file with the WAL folded in, whatever state the source is in.
        with sqlite3.connect(migrated) as source, sqlite3.connect(staging) as copy:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # a single file; Prefect turns WAL on when it connects
        source.close()
        copy.close()
        os.replace(staging, target)
    return target


def seed_prefect_database(prefect_home: Path) -> Path | None:
    """Copy the migrated template to <prefect_home>/prefect.db when Prefect would create a new database there;
    the path written, or None (a database exists, another database is configured, or no template)."""
    if any(os.environ.get(name) for name in DATABASE_URL_ENVS):
        return None
    database = prefect_home / DATABASE_FILE
    template = template_path()
    if database.exists() or template is None or not template.is_file():
        return None
    prefect_home.mkdir(parents=True, exist_ok=True)
    staging = database.with_name(f".{DATABASE_FILE}.{os.getpid()}.tmp")
    shutil.copyfile(template, staging)
    try:
        # Not os.replace: a concurrent run that created its database meanwhile keeps it.
        os.link(staging, database)
    except FileExistsError:
        return None
    finally:
        staging.unlink(missing_ok=True)
    logger.debug("Prefect database %s copied from the migrated template %s", database, template)
    return database


def main(argv: list[str] | None = None) -> int:
    """`python -m fraudguard.prefect_database create [PATH]`: make the template (what `make install` runs)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "create" or len(args) > 2:
        print("usage: python -m fraudguard.prefect_database create [PATH]", file=sys.stderr)
        return 2
    target = Path(args[1]) if len(args) == 2 else template_path()
    if target is None:
        print(f"${TEMPLATE_ENV} is empty: no template to create", file=sys.stderr)
        return 2
    create_template(target)
    print(f"Prefect database template: {target}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
