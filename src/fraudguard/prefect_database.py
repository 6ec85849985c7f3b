"""The database of `fraudguard run`'s temporary Prefect server: prepared once at install, copied into each new
Prefect home.

On its first start in a new PREFECT_HOME, Prefect's temporary server migrates a new SQLite database (every
Alembic migration of Prefect's schema: ~5.5 s on 2 cores) and registers Prefect's block types in it (~2.4 s);
with its ~3.7 s of imports, that was the largest single piece of a run's orchestration overhead
(bench/end_to_end_bench.py), paid again by every new project (`fraudguard run` keeps Prefect's state in the
project's .prefect/). `make install` therefore boots that server once in a scratch home (`python -m
fraudguard.prefect_database create`) and keeps its database and Prefect's memo of the block registration;
`fraudguard run` copies both to where Prefect would create its own.

What keeps this honest: the template holds only the schema, its Alembic revision and Prefect's built-in block
types (no runs, no keys: Prefect makes its block-encryption key on first use, in each home). Prefect still
migrates on start, so a template of an older schema is brought up to date. The memo is Prefect's own: a hash of
the block registry, the installed collections and the database URL, so the server registers again whenever
any of them differs from the template's. For the URL to be the same in every home, the temporary server runs
in its home with the database URL `sqlite+aiosqlite:///./prefect.db` (the same file as Prefect's default).
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


# The database URL of the temporary server, relative to its working directory (its PREFECT_HOME): one URL
# string for every home, so Prefect's memo of the block registration carries over from the template.
HOME_DATABASE_URL = f"sqlite+aiosqlite:///./{DATABASE_FILE}"
MEMO_FILE = "memo_store.toml"  # Prefect's default PREFECT_MEMO_STORE_PATH, in PREFECT_HOME


def temporary_server_argv(port: int) -> list[str]:
    """The command Prefect's temporary server runs: uvicorn serving Prefect's API app, UI off."""
    from importlib.util import find_spec

    spec = find_spec("prefect")
    if spec is None or spec.origin is None:
        raise RuntimeError("prefect is not installed in this environment")
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def temporary_server_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The temporary server's environment (run it with cwd=home): UI off, Prefect's ephemeral-server flags,
    the home's database at HOME_DATABASE_URL unless another database is configured."""
    env = dict(os.environ if base is None else base)
    env.update(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1",
               PREFECT__SERVER_FINAL="1")
    if not any(env.get(name) for name in DATABASE_URL_ENVS):
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = HOME_DATABASE_URL
    return env


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_template(target: Path, timeout_s: float = 600) -> Path:
    """Boot Prefect's temporary server once in a scratch home (it migrates the new database and registers the
    block types), stop it, and store its database at `target` as one closed SQLite file, with Prefect's memo
    beside it (<target>.memo.toml). Replaced atomically: a crash leaves the old template or none."""
    import time
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as scratch:
        home = Path(scratch)
        env = {key: value for key, value in os.environ.items()
               if key not in ("PREFECT_API_URL", "PREFECT_PROFILE", *DATABASE_URL_ENVS)}
        env = temporary_server_env(home, {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        port = _free_port()
        log_path = home / "server.log"  # a file, not a pipe: a server that writes much never blocks on it
        with log_path.open("wb") as log:
            server = subprocess.Popen(temporary_server_argv(port), cwd=home, env=env,  # nosec B603 - fixed argv
                                      stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if server.poll() is not None:
                    tail = log_path.read_text(encoding="utf-8", errors="replace").strip()
                    raise RuntimeError(f"Prefect's server exited {server.returncode} while preparing the template: "
                                       f"{(tail.splitlines() or ['no output'])[-1]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:  # nosec B310 - our http://127.0.0.1 URL
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Prefect's server did not answer within {timeout_s:.0f} s")
                time.sleep(0.2)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        staging = target.with_name(f".{target.name}.tmp")
        staging.unlink(missing_ok=True)
        # SQLite's backup API: one consistent file with the WAL folded in, whatever state the source is in.
        source, copy = sqlite3.connect(home / DATABASE_FILE), sqlite3.connect(staging)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # a single file; Prefect turns WAL on when it connects
        finally:
            source.close()
            copy.close()
        memo = home / MEMO_FILE
        if memo.is_file():
            shutil.copyfile(memo, memo_path(target))
        else:
            memo_path(target).unlink(missing_ok=True)
        os.replace(staging, target)
    return target


def memo_path(template: Path) -> Path:
    """Where Prefect's memo of the template's block registration is kept, beside the template."""
    return template.with_name(f"{template.stem}.memo.toml")


def seed_prefect_database(prefect_home: Path) -> Path | None:
    """Copy the template to <prefect_home>/prefect.db (and its memo, when the home has none) when Prefect would
    create a new database there; the path written, or None (a database exists, another database is
    configured, or no template)."""
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
    memo, home_memo = memo_path(template), prefect_home / MEMO_FILE
    if memo.is_file() and not home_memo.exists():
        shutil.copyfile(memo, home_memo)
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
