"""The team stack on one machine: PostgreSQL, an MLflow server (basic-auth, served artifacts) and a Prefect
server on it, and process workers on the `fraudguard` pool, each in its own directory (standing in for hosts).

`python -m fraudguard.stack up|down|env` (what `make stack` / `make stack-down` run). Everything is started
on 127.0.0.1, its PID written to `<stack dir>/state.json`, and stopped by that PID. Secrets are generated on
first start into `<stack dir>/secrets/` (mode 0600), never into the repository. A real multi-host install
uses the same settings: see deploy/ and docs/team.md.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import glob
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess  # nosec B404 -- starts the stack's own services (fixed argv, no shell)
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fraudguard.errors import FraudGuardError
from fraudguard.files import write_json

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MODEL_NAME = "fraudguard"
POOL = "fraudguard"
PIPELINE_USER = "fraudguard-pipeline"
PREFECT_USER = "fraudguard"  # the one identity of Prefect's server basic auth (user:password)
REVIEWER_USER = "fraudguard-reviewer"
ADMIN_USER = "admin"
PG_SUPERUSER = "fraudguard_admin"
PG_SYSTEM_USER = "postgres"  # Debian's package creates it; else FALLBACK_PG_USER is created
FALLBACK_PG_USER = "fraudguard-pg"
STATE_FILE = "state.json"


class StackError(FraudGuardError):
    """A stack service failed to install, start or stop; the message names it and its log."""


@dataclass
class StackState:
    """What `up` started and where: URLs, PIDs, logs and credentials files (state.json)."""

    base: str
    pg_port: int
    mlflow_port: int
    prefect_port: int
    pg_data: str
    pids: dict[str, int] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)
    # Each process's start time (/proc/PID/stat, clock ticks since boot): a PID reused by another process after a
    # crash or a reboot is not ours, and is neither stopped nor taken for a running stack.
    started: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        ticks = process_start_ticks(pid)
        if ticks is not None:
            self.started[name] = ticks

    def is_ours(self, name: str) -> bool:
        """Whether the process state.json names `name` is still the one `up` started."""
        pid = self.pids[name]
        if not _alive(pid):
            return False
        recorded = self.started.get(name)
        if recorded is None:  # a state.json written before start times were kept: the PID is all there is
            return True
        return process_start_ticks(pid) == recorded

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def secrets_dir(self) -> Path:
        return Path(self.base) / "secrets"

    @property
    def prefect_auth_string(self) -> str:
        """`user:password` for Prefect's server basic auth (PREFECT_API_AUTH_STRING on every client)."""
        return f"{PREFECT_USER}:{_secret(Path(self.base), 'prefect-auth')}"

    def credentials_file(self, who: str) -> Path:
        """MLflow's credentials-file format ([mlflow] mlflow_tracking_username/password) for one identity."""
        return self.secrets_dir / f"{who}.credentials"

    def save(self) -> None:
        path = Path(self.base) / STATE_FILE
        write_json(path, asdict(self))

    @classmethod
    def load(cls, base: Path) -> "StackState":
        return cls(**json.loads((base / STATE_FILE).read_text()))


# ------------------------------------------------------------------------------------------ secrets

def _secret(base: Path, name: str) -> str:
    """A generated secret, kept in <base>/secrets/<name> (0600) so restarts reuse it."""
    directory = base / "secrets"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def write_credentials_file(path: Path, username: str, password: str) -> None:
    """An MLflow credentials file (the format of ~/.mlflow/credentials), mode 0600."""
    _write_private(path, f"[mlflow]\nmlflow_tracking_username = {username}\nmlflow_tracking_password = {password}\n")


# ------------------------------------------------------------------------------------------ processes

# Where free_port looks: above the well-known and registered services most machines run, below the kernel's
# ephemeral range (read from /proc where there is one).
PORT_FLOOR = 20000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections and bind(0): Linux's from /proc, else
    IANA's dynamic range."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def free_port(within: tuple[int, int] | None = None, avoid: Iterable[int] = ()) -> int:
    """A port 127.0.0.1 can bind now, for a server started next, picked outside the ephemeral range.

    A port the kernel hands out for bind(0) is in its ephemeral range, where any outgoing connection on the
    machine may take it as its source port between this check and the server's own bind (a Prefect or MLflow
    server binds seconds after it starts). `within` narrows the search (inclusive); `avoid` are ports already
    promised to other servers of the same start. Falls back to bind(0) when the range has no free port."""
    import random

    ephemeral_low, ephemeral_high = ephemeral_port_range()
    low, high = within or (PORT_FLOOR, ephemeral_low - 1)
    avoided = set(avoid)
    candidates = [port for port in range(low, high + 1)
                  if port not in avoided and not ephemeral_low <= port <= ephemeral_high]
    for port in random.sample(candidates, min(len(candidates), 200)):  # nosec B311 - a port, not a secret
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (mlflow, prefect), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path, **kwargs) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kwargs)


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:  # nosec B310 - http://127.0.0.1 URL built here
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"{what} did not start (log {log}):\n{_tail(log)}")
        time.sleep(0.5)


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, field 22 of /proc/PID/stat); None where /proc cannot say."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces and parentheses
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def signal_disposition(pid: int, sig: int) -> str:
    """What process `pid` does with `sig`, from /proc/PID/status: "ignored", "blocked", "handled" or "default"
    ("unknown" where /proc cannot say). Said when a process outlives its stop signal: an ignored SIGINT is
    inherited across exec from whoever started it, a handled one means the process chose to wait."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    masks = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigBlk", "SigIgn", "SigCgt"):
            masks[key] = int(value.strip(), 16)
    bit = 1 << (sig - 1)
    for key, word in (("SigIgn", "ignored"), ("SigBlk", "blocked"), ("SigCgt", "handled")):
        if key not in masks:
            return "unknown"
        if masks[key] & bit:
            return word
    return "default"


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """Signal the process group led by `pid` (its children too); SIGKILL it if it outlives timeout_s."""
    if not _alive(pid):
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        logger.warning("process %d did not stop within %.0f s of signal %d (%s); killing it", pid, timeout_s, sig,
                       signal_disposition(pid, sig))
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while _alive(pid) and time.monotonic() < deadline + 10:
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------ packages

# One Debian install at a time from this host's processes: test workers running in parallel on a fresh CI
# machine would otherwise both run apt-get, and the second fails on dpkg's lock.
_APT_INSTALL_LOCK = Path(tempfile.gettempdir()) / "fraudguard-apt-install.lock"


def install_debian_package(package: str, what: str, present: Callable[[], bool]) -> None:
    """`apt-get install` Debian's `package` as root (after `apt-get update`), unless `present()` says another
    process installed it while this one waited for the install lock. StackError naming `what` when it cannot
    (not root, no apt-get) or apt-get fails; dpkg's own lock (another apt user) is waited for up to 10 min."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"{what} not found and cannot install it here: run `apt-get install -y {package}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_for_dpkg = ["-o", "DPkg::Lock::Timeout=600"]
    # O_NOFOLLOW: as root in a world-writable temp dir, never open a link someone else left under that name.
    try:
        descriptor = os.open(_APT_INSTALL_LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StackError(f"cannot open the install lock {_APT_INSTALL_LOCK} ({exc.strerror}; a symbolic link there "
                         f"is refused): remove it, then install {package} again") from exc
    with os.fdopen(descriptor, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if present():
            return
        logger.info("installing Debian's %s (apt-get, as root)", package)
        for cmd in (["apt-get", *wait_for_dpkg, "update", "-q"],
                    ["apt-get", *wait_for_dpkg, "install", "-y", "-q", package]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)  # nosec B603 - fixed argv
            if proc.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


# ------------------------------------------------------------------------------------------ postgres

_DEBIAN_INITDB = "/usr/lib/postgresql/*/bin/initdb"  # one per installed major version


def postgres_bin_dir(install: bool = True) -> Path:
    """The directory holding initdb/postgres; installs Debian's `postgresql` (as root) when missing."""
    found = sorted(glob.glob(_DEBIAN_INITDB))
    initdb = shutil.which("initdb")
    if not found and initdb:
        found = [initdb]
    if not found and install:
        install_debian_package("postgresql", "PostgreSQL server binaries (initdb)",
                               present=lambda: bool(glob.glob(_DEBIAN_INITDB)))
        return postgres_bin_dir(install=False)
    if not found:
        raise StackError("PostgreSQL server binaries (initdb) not found after installing `postgresql`")
    return Path(found[-1]).parent


def postgres_os_user() -> pwd.struct_passwd | None:
    """The unprivileged account the postgres server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in (PG_SYSTEM_USER, FALLBACK_PG_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_PG_USER],
                   check=True, capture_output=True)
    return pwd.getpwnam(FALLBACK_PG_USER)


def _as_user(user: pwd.struct_passwd | None) -> dict:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _pg_data_dir(base: Path, user: pwd.struct_passwd | None) -> Path:
    """<base>/pg, or a folder in /tmp when the postgres account cannot reach <base> (a 0700 parent)."""
    wanted = base / "pg"
    if user is None:
        return wanted
    for parent in [base, *base.parents]:
        if parent.exists() and not (parent.stat().st_mode & 0o001):
            import hashlib

            digest = hashlib.sha256(str(base).encode()).hexdigest()[:10]
            return Path("/tmp") / f"fraudguard-pg-{digest}"  # nosec B108 - owned 0700 by the postgres account
    return wanted


def _claim_data_dir(data: Path, user: pwd.struct_passwd | None) -> None:
    """Create the data folder 0700 for the postgres account, or accept an existing one only if it is a real folder
    (not a link) owned by that account with no access for others; StackError naming it otherwise. The /tmp
    fallback's name is predictable: anyone could create it first."""
    try:
        data.mkdir(parents=True, mode=0o700)
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid, follow_symlinks=False)
        return
    except FileExistsError:
        pass
    info = os.lstat(data)
    owner = user.pw_uid if user is not None else os.getuid()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner or info.st_mode & 0o077:
        raise StackError(f"{data} exists but is not a private folder of uid {owner} (mode {stat.filemode(info.st_mode)}, "
                         f"uid {info.st_uid}): someone else may have made it; remove it and run `make stack` again")


def start_postgres(base: Path, port: int, superuser_password: str) -> tuple[subprocess.Popen, Path]:
    """initdb (first time) and start a postgres server on 127.0.0.1:port, as an unprivileged account."""
    bindir = postgres_bin_dir()
    user = postgres_os_user()
    data = _pg_data_dir(base, user)
    log = base / "logs" / "postgres.log"
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "HOME": user.pw_dir if user else os.environ.get("HOME", "/tmp")}  # nosec B108 - HOME fallback only, nothing is written there
    _claim_data_dir(data, user)
    if not (data / "PG_VERSION").exists():
        # The password file sits in a directory of our own with a random name (mkdtemp: 0700), created with
        # O_EXCL | O_NOFOLLOW: beside a predictable /tmp data folder, a local user could plant the file (and read
        # the superuser password written into it) or a symbolic link (root then wrote and chowned its target).
        holder = Path(tempfile.mkdtemp(prefix="fraudguard-initdb-"))
        pwfile = holder / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(superuser_password + "\n")
        if user is not None:
            os.chown(holder, user.pw_uid, user.pw_gid, follow_symlinks=False)
            os.chown(pwfile, user.pw_uid, user.pw_gid, follow_symlinks=False)
        try:
            proc = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--pwfile", str(pwfile),
                                   "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8"],
                                  env=env, capture_output=True, text=True, timeout=300, **_as_user(user))
        finally:
            shutil.rmtree(holder, ignore_errors=True)
        if proc.returncode != 0:
            raise StackError(f"initdb {data} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    server = _spawn([str(bindir / "postgres"), "-D", str(data), "-h", HOST, "-p", str(port),
                     "-k", str(data), "-c", "max_connections=200"], log, env, data, **_as_user(user))
    deadline = time.monotonic() + 60
    while not _pg_ready(port, superuser_password):
        if server.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"postgres did not start (log {log}):\n{_tail(log)}")
        time.sleep(0.3)
    return server, data


def _pg_url(user: str, password: str, port: int, db: str, driver: str = "") -> str:
    return f"postgresql{'+' + driver if driver else ''}://{user}:{password}@{HOST}:{port}/{db}"


def _pg_ready(port: int, password: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(_pg_url(PG_SUPERUSER, password, port, "postgres"), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def create_databases(port: int, admin_password: str, roles: dict[str, str]) -> None:
    """Roles mlflow, prefect and fraudguard_lock and their databases (idempotent)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_url(PG_SUPERUSER, admin_password, port, "postgres"), autocommit=True) as conn:
        for role, password in roles.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        owners = {"mlflow": "mlflow", "mlflow_auth": "mlflow", "prefect": "prefect", "fraudguard_locks": PG_SUPERUSER}
        for db, owner in owners.items():
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
        # The lock role may connect to its own database and nothing else: advisory locks need no table rights,
        # so a pipeline host's lock password grants no write access to the tracking store.
        # postgres and template1 too: PUBLIC may connect to them by default (superusers connect regardless).
        for db in ("mlflow", "mlflow_auth", "prefect", "postgres", "template1"):
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        conn.execute("REVOKE ALL ON DATABASE fraudguard_locks FROM PUBLIC")
        conn.execute("GRANT CONNECT ON DATABASE fraudguard_locks TO fraudguard_lock")


# ------------------------------------------------------------------------------------------ redis

def redis_server_binary(install: bool = True) -> Path:
    """Debian's `redis-server` executable; installs the `redis-server` package (as root) when missing."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file()
                                             else None)
    if found is None and install:
        install_debian_package("redis-server", "redis-server",
                               present=lambda: Path("/usr/bin/redis-server").is_file())
        return redis_server_binary(install=False)
    if found is None:
        raise StackError("redis-server not found after installing the `redis-server` package")
    return Path(found)


def start_redis(data_dir: Path, port: int, timeout_s: float = 30) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:port in its own process group, persisting to an append-only file in data_dir
    (a restart finds the state), protected mode on, no RDB snapshots. Stop it with stop_pid(proc.pid)."""
    binary = redis_server_binary()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = data_dir / "redis.log"
    proc = _spawn([str(binary), "--bind", HOST, "--port", str(port), "--dir", str(data_dir),
                   "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                   "--protected-mode", "yes", "--logfile", ""], log, {"PATH": os.environ.get("PATH", "")},
                  data_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return proc
        except OSError:  # not listening yet, or still loading its append-only file
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc.pid)
            raise StackError(f"redis-server on {HOST}:{port} did not start:\n{_tail(log)}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ mlflow

def _mlflow_api(url: str, path: str, user: str, password: str, body: dict | None = None,
                method: str = "POST") -> tuple[int, dict]:
    """One MLflow REST call with basic auth: (status, json body)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"{url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # nosec B310 - the stack's own http URL
            text = resp.read()
            return resp.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"message": text.decode(errors="replace")[:500]}


def start_mlflow(base: Path, port: int, pg_port: int, mlflow_db_password: str, admin_password: str,
                 artifacts: Path) -> subprocess.Popen:
    """`mlflow server --app-name basic-auth` on PostgreSQL, serving artifacts from `artifacts`."""
    conf = base / "mlflow" / "basic_auth.ini"
    conf.parent.mkdir(parents=True, exist_ok=True)
    _write_private(conf, (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {_pg_url('mlflow', mlflow_db_password, pg_port, 'mlflow_auth', 'psycopg')}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without it every request pays a PBKDF2 check (~0.1-0.3 s on a busy host); a password change
        # through the API invalidates the entry at once (one server worker here).
        "auth_cache_ttl_seconds = 60\n"))
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(conf),
           # Read only when the auth store has no admin yet (first start); rotate it afterwards (docs/team.md).
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(base, "mlflow-flask-secret")}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    log = base / "logs" / "mlflow.log"
    # The database URL holds the mlflow role's password: through the environment (readable by its owner only), not
    # the command line, which every local user reads in `ps` (/proc/PID/cmdline is 0444).
    env["MLFLOW_BACKEND_STORE_URI"] = _pg_url("mlflow", mlflow_db_password, pg_port, "mlflow", "psycopg")
    proc = _spawn([_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                   "--artifacts-destination", str(artifacts), "--serve-artifacts", "--app-name", "basic-auth"],
                  log, env, base / "mlflow")
    _wait_http(f"http://{HOST}:{port}/health", proc, log, "mlflow server")
    return proc


def set_up_identities(url: str, admin_password: str, pipeline_password: str, reviewer_password: str) -> None:
    """Users pipeline (MANAGE on `fraudguard`) and reviewer (READ), and the registered model itself."""
    for user, password in ((PIPELINE_USER, pipeline_password), (REVIEWER_USER, reviewer_password)):
        status, body = _mlflow_api(url, "/api/2.0/mlflow/users/create", ADMIN_USER, admin_password,
                                   {"username": user, "password": password})
        if status != 200 and "already exists" not in json.dumps(body):
            raise StackError(f"creating MLflow user {user}: HTTP {status} {body}")
    status, body = _mlflow_api(url, "/api/2.0/mlflow/registered-models/create", ADMIN_USER, admin_password,
                               {"name": MODEL_NAME})
    if status != 200 and "RESOURCE_ALREADY_EXISTS" not in json.dumps(body):
        raise StackError(f"creating registered model {MODEL_NAME}: HTTP {status} {body}")
    # MANAGE, not EDIT: MLflow checks "delete" for removing an alias, which recovery needs to revert an
    # interrupted first promotion. The reviewer reads only; so does anyone else (default_permission READ).
    for user, permission in ((PIPELINE_USER, "MANAGE"), (REVIEWER_USER, "READ")):
        grant = {"username": user, "resource_type": "registered_model", "resource_id": MODEL_NAME}
        status, body = _mlflow_api(url, "/api/3.0/mlflow/users/permissions/grant", ADMIN_USER, admin_password,
                                   {**grant, "permission": permission})
        if status == 400 and body.get("error_code") == "RESOURCE_ALREADY_EXISTS":  # a restart: grant afresh
            _mlflow_api(url, "/api/3.0/mlflow/users/permissions/revoke", ADMIN_USER, admin_password, grant)
            status, body = _mlflow_api(url, "/api/3.0/mlflow/users/permissions/grant", ADMIN_USER,
                                       admin_password, {**grant, "permission": permission})
        if status != 200:
            raise StackError(f"granting {permission} on {MODEL_NAME} to {user}: HTTP {status} {body}")


def rotate_admin_password(state: StackState) -> None:
    """A new MLflow admin password (after the first start, and whenever an admin leaves): set on the server
    through the update-password API with the current one, then written to secrets/ and admin.credentials."""
    base = Path(state.base)
    current = _secret(base, "mlflow-admin")
    new = secrets.token_urlsafe(24)
    status, body = _mlflow_api(state.mlflow_url, "/api/2.0/mlflow/users/update-password", ADMIN_USER, current,
                               {"username": ADMIN_USER, "password": new, "current_password": current},
                               method="PATCH")
    if status != 200:
        raise StackError(f"rotating the MLflow admin password: HTTP {status} {body}")
    _write_private(base / "secrets" / "mlflow-admin", new)
    write_credentials_file(state.credentials_file("admin"), ADMIN_USER, new)


# ------------------------------------------------------------------------------------------ prefect

def start_prefect(base: Path, port: int, pg_port: int, prefect_db_password: str, auth_string: str) -> subprocess.Popen:
    """`prefect server start` on PostgreSQL; every API request but GET /api/health needs basic auth
    (`auth_string`, user:password), so nobody on the network can run, cancel or delete flow runs anonymously."""
    home = base / "prefect" / "server-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": _pg_url("prefect", prefect_db_password, pg_port, "prefect", "asyncpg"),
           "PREFECT_SERVER_API_AUTH_STRING": auth_string}
    env.pop("PREFECT_API_URL", None)
    log = base / "logs" / "prefect-server.log"
    proc = _spawn([_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)], log, env, home.parent)
    _wait_http(f"http://{HOST}:{port}/api/health", proc, log, "prefect server", timeout_s=240)
    return proc


def prefect_api(state: StackState, method: str, path: str, body: dict | None = None,
                authenticated: bool = True) -> tuple[int, object]:
    """One Prefect REST call to the stack's server (with its basic auth unless told not to): (status, json)."""
    headers = {"Content-Type": "application/json"}
    if authenticated:
        headers["Authorization"] = "Basic " + base64.b64encode(state.prefect_auth_string.encode()).decode()
    request = urllib.request.Request(f"{state.prefect_api_url}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # nosec B310 - the stack's own http URL
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")[:500]


def worker_env(state: StackState, worker_dir: Path) -> dict[str, str]:
    """The environment one pipeline host (a worker) runs flows with: servers, its credentials, the lock."""
    base = Path(state.base)
    return {
        "PREFECT_API_URL": state.prefect_api_url,
        "PREFECT_API_AUTH_STRING": state.prefect_auth_string,
        "PREFECT_HOME": str(worker_dir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "MLFLOW_TRACKING_URI": state.mlflow_url,
        "FRAUDGUARD_MLFLOW_CREDENTIALS": str(state.credentials_file("pipeline")),
        "FRAUDGUARD_REGISTRY_LOCK": "postgres",
        "FRAUDGUARD_REGISTRY_LOCK_URL": _pg_url("fraudguard_lock", _secret(base, "pg-lock"), state.pg_port,
                                                "fraudguard_locks"),
        # One signing key for the pipeline identity (distributed to pipeline hosts); one anchor per host.
        "FRAUDGUARD_SIGNING_KEY": str(base / "secrets" / "signing-key.pem"),
        "FRAUDGUARD_AUDIT_ANCHOR_DIR": str(worker_dir / "anchors"),
        "FRAUDGUARD_ACTOR": f"worker-{worker_dir.name}",
        "OMP_NUM_THREADS": "1",
    }


def start_worker(state: StackState, name: str, extra_env: dict[str, str] | None = None,
                 limit: int | None = 1) -> subprocess.Popen:
    """A process worker on the pool in its own directory (a host). `limit` flow runs at a time (None: no
    limit); one by default, as a training run uses the host's cores: a second run waits for another host."""
    worker_dir = Path(state.base) / "workers" / name
    worker_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **worker_env(state, worker_dir), **(extra_env or {})}
    for leaked in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FRAUDGUARD_PROJECT_DIR", "PWD"):
        env.pop(leaked, None)
    log = Path(state.base) / "logs" / f"worker-{name}.log"
    limit_args = ["--limit", str(limit)] if limit else []
    return _spawn([_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", f"worker-{name}",
                   *limit_args], log, env, worker_dir)


def _wait_workers_online(state: StackState, names: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    wanted = {f"worker-{n}" for n in names}
    while True:
        try:
            status, workers = prefect_api(state, "POST", f"/work_pools/{POOL}/workers/filter", {})
            listed = workers if status == 200 and isinstance(workers, list) else []
            online = {w["name"] for w in listed if w.get("status") == "ONLINE"}
            if wanted <= online:
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(_tail(Path(state.base) / "logs" / f"worker-{n}.log", 1500) for n in names)
            raise StackError(f"workers {sorted(wanted)} not online after {timeout_s:.0f}s:\n{logs}")
        time.sleep(1)


# ------------------------------------------------------------------------------------------ up / down

def stack_up(base: Path, *, pg_port: int = 0, mlflow_port: int = 0, prefect_port: int = 0, workers: int = 2,
             artifacts: Path | None = None, worker_env_extra: dict[str, str] | None = None,
             worker_limit: int | None = 1) -> StackState:
    """Start every service (ports 0: free ones); on any failure stop what was started and raise StackError."""
    base = base.resolve()
    if (base / STATE_FILE).exists():
        previous = StackState.load(base)
        if any(previous.is_ours(name) for name in previous.pids):
            raise StackError(f"a stack is already running from {base}: `make stack-down` first")
    base.mkdir(parents=True, exist_ok=True)
    pg_port = pg_port or free_port(avoid=(mlflow_port, prefect_port))
    mlflow_port = mlflow_port or free_port(avoid=(pg_port, prefect_port))
    prefect_port = prefect_port or free_port(avoid=(pg_port, mlflow_port))
    state = StackState(base=str(base), pg_port=pg_port, mlflow_port=mlflow_port, prefect_port=prefect_port, pg_data="")
    passwords = {name: _secret(base, name) for name in
                 ("pg-superuser", "pg-mlflow", "pg-prefect", "pg-lock", "mlflow-admin", "mlflow-pipeline",
                  "mlflow-reviewer")}
    try:
        pg, data = start_postgres(base, state.pg_port, passwords["pg-superuser"])
        state.record("postgres", pg.pid)
        state.pg_data = str(data)
        state.save()
        create_databases(state.pg_port, passwords["pg-superuser"],
                         {"mlflow": passwords["pg-mlflow"], "prefect": passwords["pg-prefect"],
                          "fraudguard_lock": passwords["pg-lock"]})
        mlflow_proc = start_mlflow(base, state.mlflow_port, state.pg_port, passwords["pg-mlflow"],
                                   passwords["mlflow-admin"], artifacts or base / "shared" / "mlflow-artifacts")
        state.record("mlflow", mlflow_proc.pid)
        state.save()
        set_up_identities(state.mlflow_url, passwords["mlflow-admin"], passwords["mlflow-pipeline"],
                          passwords["mlflow-reviewer"])
        for who, user in (("admin", ADMIN_USER), ("pipeline", PIPELINE_USER), ("reviewer", REVIEWER_USER)):
            write_credentials_file(state.credentials_file(who), user, passwords[f"mlflow-{who}"])
        prefect_proc = start_prefect(base, state.prefect_port, state.pg_port, passwords["pg-prefect"],
                                     state.prefect_auth_string)
        state.record("prefect", prefect_proc.pid)
        state.save()
        env = {**os.environ, "PREFECT_API_URL": state.prefect_api_url, "PREFECT_API_AUTH_STRING": state.prefect_auth_string,
               "PREFECT_HOME": str(base / "prefect" / "cli-home")}
        proc = subprocess.run([_bin("prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                              env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise StackError(f"prefect work-pool create {POOL} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        from fraudguard.signing import load_signer

        load_signer(base / "secrets" / "signing-key.pem")  # created once here, not raced by two workers
        names = [chr(ord("a") + i) for i in range(workers)]
        for name in names:
            state.record(f"worker-{name}", start_worker(state, name, worker_env_extra, worker_limit).pid)
            state.workers.append(name)
            state.save()
        _wait_workers_online(state, names)
    except BaseException:
        stack_down(base)
        raise
    return state


# Workers stop on SIGINT (not SIGTERM), postgres shuts down fast on SIGINT, the servers on SIGTERM.
_STOP_ORDER = (("worker-", signal.SIGINT), ("prefect", signal.SIGTERM), ("mlflow", signal.SIGTERM),
               ("postgres", signal.SIGINT))


def stack_down(base: Path) -> list[str]:
    """Stop every process state.json names, by PID (workers first, postgres last); the names stopped."""
    base = base.resolve()
    if not (base / STATE_FILE).exists():
        return []
    state = StackState.load(base)
    stopped = []
    for prefix, sig in _STOP_ORDER:
        for name, pid in list(state.pids.items()):
            if name.startswith(prefix):
                if state.is_ours(name):
                    started = time.monotonic()
                    stop_pid(pid, sig)
                    logger.info("stopped %s (pid %d) in %.1f s", name, pid, time.monotonic() - started)
                    stopped.append(name)
                elif _alive(pid):
                    logger.warning("%s: pid %d is now another process (it started after ours): left alone", name, pid)
                del state.pids[name]
                state.started.pop(name, None)
                state.save()
    return stopped


def describe(state: StackState) -> str:
    base = Path(state.base)
    return "\n".join([
        f"PostgreSQL      {HOST}:{state.pg_port}  (data {state.pg_data})",
        f"MLflow          {state.mlflow_url}  (basic-auth; artifacts served by the server)",
        f"Prefect         {state.prefect_api_url.removesuffix('/api')}  (API {state.prefect_api_url}; basic auth: "
        f"the UI asks for PREFECT_API_AUTH_STRING, in pipeline.env)",
        f"workers         {', '.join('worker-' + n for n in state.workers)} on pool {POOL!r} "
        f"(dirs {base / 'workers'}/*)",
        f"credentials     {state.credentials_file('pipeline')}  (pipeline: MANAGE on {MODEL_NAME!r})",
        f"                {state.credentials_file('reviewer')}  (reviewer: READ)",
        f"                {state.credentials_file('admin')}  (MLflow admin: rotate it, docs/team.md)",
        f"pipeline env    {base / 'secrets' / 'pipeline.env'}  (source it to run fraudguard against the stack)",
        f"data remote     params.yaml data_remote.url: shared storage every host reaches (here, e.g. "
        f"{base / 'shared' / 'dvc-remote'}), docs/team.md",
        f"logs            {base / 'logs'}",
        f"PIDs            {', '.join(f'{k}={v}' for k, v in state.pids.items())}",
    ])


def write_pipeline_env(state: StackState) -> Path:
    """secrets/pipeline.env: the variables a pipeline host needs (`set -a; . pipeline.env`)."""
    env = worker_env(state, Path(state.base) / "workers" / "local")
    env.pop("PREFECT_HOME")
    path = Path(state.base) / "secrets" / "pipeline.env"
    _write_private(path, "".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fraudguard.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "rotate-admin"))
    parser.add_argument("--dir", default=os.environ.get("FRAUDGUARD_STACK_DIR", ".stack"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("FRAUDGUARD_STACK_PG_PORT", 0)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("FRAUDGUARD_STACK_MLFLOW_PORT", 0)))
    parser.add_argument("--prefect-port", type=int, default=int(os.environ.get("FRAUDGUARD_STACK_PREFECT_PORT", 0)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-limit", type=int, default=1,
                        help="flow runs each worker runs at a time (0: no limit; default 1)")
    args = parser.parse_args(argv)
    base = Path(args.dir)
    try:
        if args.command == "up":
            state = stack_up(base, pg_port=args.pg_port, mlflow_port=args.mlflow_port,
                             prefect_port=args.prefect_port, workers=args.workers,
                             worker_limit=args.worker_limit or None)
            write_pipeline_env(state)
            print(describe(state))
        elif args.command == "down":
            stopped = stack_down(base)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "rotate-admin":
            state = StackState.load(base.resolve())
            rotate_admin_password(state)
            print(f"MLflow admin password rotated; new one in {state.credentials_file('admin')}")
        else:
            print(describe(StackState.load(base.resolve())))
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        print(f"fraudguard stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
