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

from fraudguard.child_interpreter import exit_with_parent

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


# A database just copied from the template is migrated and has Prefect's block types: the server need not check
# either on start (~0.5 s of its boot: the migration check, loading every Prefect collection to hash the blocks).
SEEDED_DATABASE_SETTINGS = {"PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
                            "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
                            "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}


def temporary_server_env(home: Path, base: dict[str, str] | None = None, seeded: bool = False) -> dict[str, str]:
    """The temporary server's environment (run it with cwd=home): UI off, Prefect's ephemeral-server flags,
    the home's database at HOME_DATABASE_URL unless another database is configured; seeded: the home's
    database was just copied from the template (seed_prefect_database), so the start-up checks are skipped."""
    env = dict(os.environ if base is None else base)
    env.update(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1",
               PREFECT__SERVER_FINAL="1")
    if not any(env.get(name) for name in DATABASE_URL_ENVS):
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = HOME_DATABASE_URL
        if seeded:
            env.update(SEEDED_DATABASE_SETTINGS)
    return env


def free_port() -> int:
    """A port of 8000-8999 that 127.0.0.1 can bind now (Prefect's range for its temporary server)."""
    import random
    import socket

    for _ in range(50):
        port = random.randint(8000, 8999)  # nosec B311 - picking a port, not a secret
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the range is busy: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryServer:
    """Prefect's temporary API server as a process of ours: the command Prefect's own temporary server runs
    (temporary_server_argv) in `home` with `env`, on a free port; a health check that does not wait (ready),
    one that does (wait), and stop. `fraudguard run` (cli.run.EarlyPrefectServer) and create_template use it.
    log_path: the server's stderr goes to that file (read for the reason when it exits early); otherwise to
    this process's stderr."""

    def __init__(self, home: Path, timeout_s: float, env: dict[str, str], log_path: Path | None = None) -> None:
        self.home = home
        self.timeout_s = timeout_s
        self.port = 0
        self.process: "subprocess.Popen[bytes] | None" = None
        self._env = env
        self._log_path = log_path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self.port = free_port()
        # In its home: the database URL is relative to it (HOME_DATABASE_URL).
        # It lives as long as this process: a kill -9 of the command must not leave it serving (see exit_with_parent).
        die_with_us = exit_with_parent()
        if self._log_path is None:
            self.process = subprocess.Popen(temporary_server_argv(self.port), cwd=self.home,  # nosec B603 - fixed argv
                                            env=self._env, preexec_fn=die_with_us)
            return
        # A file, not a pipe: a server that writes much never blocks on it.
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(temporary_server_argv(self.port), cwd=self.home,  # nosec B603 - fixed argv
                                            env=self._env, stdout=subprocess.DEVNULL, stderr=log,
                                            preexec_fn=die_with_us)

    def ready(self) -> bool:
        """Whether the server answers its health check now (does not wait); also true when its process has
        ended (there is nothing to wait for: wait() says why)."""
        if self.process is None or self.process.poll() is not None:
            return True
        return self._answers(timeout_s=1)

    def _answers(self, timeout_s: float) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=timeout_s) as response:  # nosec B310 - our http://127.0.0.1 URL
                return bool(response.status == 200)
        except OSError:  # refused, reset or timed out: not up yet
            return False

    def wait(self) -> str | None:
        """Block until the server answers its health check; the reason (one line) when it never did."""
        import time

        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None, "start() first"
            code = self.process.poll()
            if code == 3:  # uvicorn could not bind: another process took the port meanwhile
                self.start()
                self.port_changed()
                continue
            if code is not None:
                return f"the server process exited with status {code} before answering{self._log_tail()}"
            if self._answers(timeout_s=5):
                return None
            time.sleep(0.02)
        return (f"no answer from {self.api_url}/health within {self.timeout_s:.0f} s "
                "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def port_changed(self) -> None:
        """Called when wait() restarted the server on another port (a subclass may publish the new URL)."""

    def _log_tail(self) -> str:
        if self._log_path is None or not self._log_path.is_file():
            return ""
        lines = self._log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def stop(self) -> None:
        """Terminate the server (as Prefect stops its temporary server: 5 s, then kill)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def create_template(target: Path, timeout_s: float = 600) -> Path:
    """Boot Prefect's temporary server once in a scratch home (it migrates the new database and registers the
    block types), stop it, and store its database at `target` as one closed SQLite file, with Prefect's memo
    beside it (<target>.memo.toml). Replaced atomically: a crash leaves the old template or none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as scratch:
        home = Path(scratch)
        env = {key: value for key, value in os.environ.items()
               if key not in ("PREFECT_API_URL", "PREFECT_PROFILE", *DATABASE_URL_ENVS)}
        env = temporary_server_env(home, {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        server = TemporaryServer(home, timeout_s, env, log_path=home / "server.log")
        server.start()
        try:
            problem = server.wait()
            if problem is not None:
                raise RuntimeError(f"Prefect's server did not start while preparing the template: {problem}")
        finally:
            server.stop()
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
