"""The MLflow registry side of FraudGuard: the `champion` alias, its journaled moves, recovery, verification.

MLflow keeps no alias history and has no compare-and-set on aliases, and anyone with write access to
the tracking store can edit tags and aliases. So:
- every move of `champion` is a transaction in the signed audit log (fraudguard.audit): an `intent`
  entry, then the alias moves only if the champion is still the one the caller expects (compare-and-set
  under the registry lock), then a `commit` entry. A crash at any point leaves either a finished move
  or an intent that `recover` completes (alias already moved) or reverts (alias not moved);
- the champion history is the committed moves of that log; tags on versions are display only;
- `verify_registry` checks signatures, continuity, that the alias equals the last committed move's
  target, that the log was not trimmed (anchor file beside the key), and that every champion had a
  valid signed pass attestation (fraudguard.attestation).
`move_champion` alone moves `champion`; `recover` alone repairs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import unquote, urlparse

from fraudguard.audit import (
    CHECKPOINT_TAG,
    AuditAction,
    AuditEntry,
    AuditEvent,
    Checkpoint,
    audit_entries_from_tags,
    audit_tag_key,
    chain_entry,
    check_audit_tags,
    checkpoint_problem,
    current_actor,
    new_txid,
    parse_checkpoint,
    sign_checkpoint,
)
from fraudguard.errors import AuditError, RegistryError
from fraudguard.faults import crash_point
from fraudguard.names import (  # noqa: F401 - re-exported: registry.CHAMPION_ALIAS etc. are imported elsewhere
    APPROVER_TAG,
    BLOCKED_REASONS_TAG,
    CHAMPION_ALIAS,
    GATE_TAG_PREFIX,
    STATUS_TAG,
    WEIGHTS_SHA_TAG,
)
from fraudguard.signing import Signer, Verifier, signing_key_path
from fraudguard.store import resilient

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

SHA256_TAG = WEIGHTS_SHA_TAG
WEIGHTS_FILE_NAME = "model.pt"
LOCK_DIR_ENV = "FRAUDGUARD_REGISTRY_LOCK_DIR"
LOCK_TIMEOUT_ENV = "FRAUDGUARD_REGISTRY_LOCK_TIMEOUT_S"
ANCHOR_DIR_ENV = "FRAUDGUARD_AUDIT_ANCHOR_DIR"
# Display statuses (tags, never trusted): what the committed history says each version is now.
STATUS_CHAMPION = "champion"
STATUS_RETIRED = "retired"
STATUS_ROLLED_BACK_FROM = "rolled_back_from"
STATUS_BLOCKED = "blocked"

MoveAction = Literal["promote", "rollback"]


@dataclass(frozen=True)
class ChampionChange:
    """One committed move of `champion`: to `version` from `previous` (None for the first champion)."""

    seq: int
    version: int
    previous: int | None
    action: str
    time: str
    actor: str
    audit_seq: int = 0
    approver: str = ""
    reasons: tuple[str, ...] = ()
    recovered: bool = False
    attestation: str = ""


@dataclass(frozen=True)
class ChampionMove:
    """What move_champion did: the history entry and its intent and commit audit entries."""

    change: ChampionChange
    intent: AuditEntry
    audit: AuditEntry
    recovery: "RecoveryOutcome | None" = None


@dataclass(frozen=True)
class RecoveryOutcome:
    """What recovery found and did: `completed` or `reverted` a half-done move, or `restored` a hand-moved alias."""

    kind: Literal["completed", "reverted", "restored"]
    action: str
    from_version: int | None
    to_version: int | None
    entry: AuditEntry

    def describe(self) -> str:
        if self.kind == "restored":
            return (f"champion alias had been moved outside fraudguard to {self.from_version}; "
                    f"restored to {self.to_version} (audit entry {self.entry.seq})")
        return (f"{self.kind} an interrupted {self.action} {self.from_version} -> {self.to_version} "
                f"(audit entry {self.entry.seq})")


class ChampionChanged(RegistryError):
    """The champion is no longer the one the gates compared against: the move was not made."""


# ---------------------------------------------------------------------------------------------- lock

LOCK_BACKEND_ENV = "FRAUDGUARD_REGISTRY_LOCK"
LOCK_URL_ENV = "FRAUDGUARD_REGISTRY_LOCK_URL"
LOCK_BACKENDS = ("file", "postgres")


@dataclass(frozen=True)
class LockBackend:
    """Where the registry lock lives: a lock file (one host) or a PostgreSQL advisory lock (every host).

    `target` is the lock file path or the PostgreSQL connection URL; `key` the advisory lock key.
    """

    kind: Literal["file", "postgres"]
    target: str
    key: int = 0

    def describe(self) -> str:
        if self.kind == "file":
            return f"lock file {self.target}"
        parsed = urlparse(self.target)
        return f"PostgreSQL advisory lock {self.key} on {parsed.hostname}:{parsed.port or 5432}{parsed.path}"


def lock_path_for(client: "MlflowClient") -> Path:
    """The lock file guarding this client's registry: next to a sqlite/file store, else $LOCK_DIR or a private
    folder of this user's ($XDG_RUNTIME_DIR or ~/.cache, then fraudguard/locks).

    A file lock only serialises processes on one host; a remote registry shared by hosts needs the
    PostgreSQL backend (lock_backend_for) or $FRAUDGUARD_REGISTRY_LOCK_DIR on a shared filesystem.
    """
    uri = registry_uri_of(client)
    override = os.environ.get(LOCK_DIR_ENV)
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:12]
    if override:
        return Path(override) / f"fraudguard-registry-{digest}.lock"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(unquote(uri[len("sqlite:///"):]))
        return db.parent / f"{db.name}.fraudguard.lock"
    if parsed.scheme in ("", "file"):
        store = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        return store / ".fraudguard-registry.lock"
    # Not the shared temporary directory: its predictable name there let any local user hold the lock (and block
    # every promotion and rollback). A folder of this user's own, 0700.
    private = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache") / "fraudguard" / "locks"
    private.mkdir(parents=True, exist_ok=True, mode=0o700)
    return private / f"fraudguard-registry-{digest}.lock"


def advisory_lock_key(registry_uri: str) -> int:
    """A signed 64-bit advisory lock key for a registry: sha256 of its URI without credentials.

    Every host must name the registry by the same URI (scheme, host, port, path), as it does anyway
    to share the audit anchor; the key never depends on who connects.
    """
    parsed = urlparse(registry_uri.strip())
    host = (parsed.hostname or "").lower()
    port = f":{parsed.port}" if parsed.port else ""
    scheme = parsed.scheme.split("+")[0].lower()
    canonical = f"{scheme}://{host}{port}{parsed.path.rstrip('/')}" if parsed.netloc else registry_uri.strip()
    return int.from_bytes(hashlib.sha256(canonical.encode("utf-8")).digest()[:8], "big", signed=True)


def _psycopg_url(url: str) -> str:
    """postgresql+psycopg://... (SQLAlchemy style) -> postgresql://... (libpq style)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def lock_backend_for(client: "MlflowClient") -> LockBackend:
    """The lock backend for this client's registry, chosen explicitly or from the configuration.

    $FRAUDGUARD_REGISTRY_LOCK = `file` | `postgres` chooses; unset, it is `postgres` when
    $FRAUDGUARD_REGISTRY_LOCK_URL is set or the registry itself is a PostgreSQL store, else `file`.
    The PostgreSQL lock uses $FRAUDGUARD_REGISTRY_LOCK_URL (a role that needs no table rights), else
    the registry's own database URI.
    """
    uri = registry_uri_of(client)
    choice = os.environ.get(LOCK_BACKEND_ENV, "").strip().lower()
    url = os.environ.get(LOCK_URL_ENV, "").strip()
    is_pg_store = urlparse(uri).scheme.split("+")[0] in ("postgresql", "postgres")
    if choice and choice not in LOCK_BACKENDS:
        raise RegistryError(f"${LOCK_BACKEND_ENV}={choice!r}: expected one of {', '.join(LOCK_BACKENDS)}")
    if not choice:
        choice = "postgres" if (url or is_pg_store) else "file"
    if choice == "file":
        return LockBackend("file", str(lock_path_for(client)))
    if not url and not is_pg_store:
        raise RegistryError(f"${LOCK_BACKEND_ENV}=postgres but ${LOCK_URL_ENV} is not set and the registry "
                            f"{urlparse(uri).scheme}://{urlparse(uri).hostname} is not a PostgreSQL store")
    return LockBackend("postgres", _psycopg_url(url or uri), advisory_lock_key(uri))


def registry_uri_of(client: Any) -> str:
    inner = getattr(client, "inner", client)
    return str(getattr(inner, "_registry_uri", None) or inner.tracking_uri)


_thread_state = threading.local()


@contextlib.contextmanager
def registry_lock(client: "MlflowClient", timeout_s: float | None = None) -> Iterator[Path | str]:
    """Hold the exclusive registry lock (re-entrant within a thread); RegistryError after the timeout.

    The backend is lock_backend_for(client): a file lock (yields its path) or a PostgreSQL advisory
    lock that every host sharing the registry sees (yields its description).
    """
    backend = lock_backend_for(client)
    held: dict[str, int] = getattr(_thread_state, "held", None) or {}
    _thread_state.held = held
    key = f"{backend.kind}:{backend.target}#{backend.key}"
    token: Path | str = Path(backend.target) if backend.kind == "file" else backend.describe()
    if held.get(key):
        held[key] += 1
        try:
            yield token
        finally:
            held[key] -= 1
        return
    timeout = timeout_s if timeout_s is not None else float(os.environ.get(LOCK_TIMEOUT_ENV, "120"))
    acquire = _file_lock if backend.kind == "file" else _advisory_lock
    with acquire(backend, timeout):
        held[key] = 1
        try:
            yield token
        finally:
            held[key] = 0


@contextlib.contextmanager
def _file_lock(backend: LockBackend, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path = Path(backend.target)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise RegistryError(
            f"registry lock {path} still held by another process after {timeout:.0f}s; "
            "another promotion or rollback is running"
        ) from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _advisory_lock(backend: LockBackend, timeout: float) -> Iterator[None]:
    """pg_advisory_lock on its own connection: held by the session, so a killed holder releases it."""
    import psycopg

    where = backend.describe()
    try:
        conn = psycopg.connect(backend.target, autocommit=True, connect_timeout=10,
                               application_name="fraudguard-registry-lock",
                               keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    except psycopg.Error as exc:
        raise RegistryError(f"registry lock: cannot connect for the {where}: "
                            f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from exc
    try:
        try:
            conn.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
            conn.execute("SELECT pg_advisory_lock(%s)", (backend.key,))
            conn.execute("SET statement_timeout = 0")
        except psycopg.errors.QueryCanceled as exc:
            raise RegistryError(f"registry {where} still held by another process after {timeout:.0f}s; "
                                "another promotion or rollback is running") from exc
        except psycopg.Error as exc:
            raise RegistryError(f"registry lock: {where}: {str(exc).strip()[:200]}") from exc
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (backend.key,))
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ reading

def _mlflow_error() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def get_registered_tags_and_aliases(client: "MlflowClient", model_name: str) -> tuple[dict[str, str], dict[str, int]]:
    """The registered model's tags and aliases (alias -> version), in one registry call."""
    try:
        model = resilient(client).get_registered_model(model_name)
    except _mlflow_error() as exc:
        raise RegistryError(f"registered model {model_name!r} not found or unreadable: {exc}") from exc
    aliases = {alias: int(version) for alias, version in (model.aliases or {}).items()}
    return dict(model.tags or {}), aliases


def _registered(client: "MlflowClient", model_name: str) -> bool:
    """Whether the registered model exists (other store errors are raised, not taken for 'no')."""
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        resilient(client).get_registered_model(model_name)
    except _mlflow_error() as exc:
        if getattr(exc, "error_code", None) == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise RegistryError(f"registered model {model_name!r} unreadable: {exc}") from exc
    return True


def get_champion_version(client: "MlflowClient", model_name: str) -> int | None:
    """The version the `champion` alias points to, or None when there is no champion."""
    return get_registered_tags_and_aliases(client, model_name)[1].get(CHAMPION_ALIAS)


def history_from_entries(entries: list[AuditEntry]) -> list[ChampionChange]:
    """The committed moves of `champion`, oldest first."""
    changes: list[ChampionChange] = []
    for entry in entries:
        if entry.phase == "commit" and entry.action in ("promote", "rollback") and entry.to_version is not None:
            changes.append(ChampionChange(
                seq=len(changes) + 1, version=entry.to_version, previous=entry.from_version,
                action=entry.action, time=entry.time, actor=entry.actor, audit_seq=entry.seq,
                approver=entry.approver, reasons=entry.reasons, recovered=entry.recovered,
                attestation=entry.attestation,
            ))
    return changes


def history_from_tags(tags: Mapping[str, str]) -> list[ChampionChange]:
    """The champion history held in already-read registered-model tags."""
    return history_from_entries(audit_entries_from_tags(tags))


def champion_history(client: "MlflowClient", model_name: str) -> list[ChampionChange]:
    """Every committed move of `champion`, oldest first, as recorded in the registry."""
    return history_from_tags(get_registered_tags_and_aliases(client, model_name)[0])


def read_audit_log(client: "MlflowClient", model_name: str) -> list[AuditEntry]:
    """Every audit entry of the registered model, oldest first (unverified)."""
    return audit_entries_from_tags(get_registered_tags_and_aliases(client, model_name)[0])


def newest_version(client: "MlflowClient", model_name: str) -> int:
    """The highest version number of the registered model; RegistryError when it has none."""
    try:
        versions = resilient(client).search_model_versions(f"name='{model_name}'")
    except _mlflow_error() as exc:
        raise RegistryError(f"registered model {model_name!r}: cannot list versions: {exc}") from exc
    if not versions:
        raise RegistryError(f"registered model {model_name!r} has no versions; run `fraudguard register` first")
    return max(int(v.version) for v in versions)


def get_version(client: "MlflowClient", model_name: str, version: int) -> "ModelVersion":
    """The model version, or RegistryError naming it."""
    try:
        return resilient(client).get_model_version(model_name, str(version))
    except _mlflow_error() as exc:
        raise RegistryError(f"model {model_name!r} has no version {version}: {exc}") from exc


def gate_verdicts(version: "ModelVersion") -> dict[str, str]:
    """gate name -> "passed" | "failed", from the version's `gate.<name>` tags (display only)."""
    return {key[len(GATE_TAG_PREFIX):]: value for key, value in (version.tags or {}).items()
            if key.startswith(GATE_TAG_PREFIX)}


def registry_writer(client: "MlflowClient") -> Any:
    """The object to write tags and aliases through: MLflow's registry client, with bounded retries.

    MlflowClient's setters re-read the registered model on every call (a check that the name is not a
    prompt), which doubles the cost of each write; callers here have just read that model themselves.
    """
    inner = getattr(client, "inner", client)
    getter = getattr(inner, "_get_registry_client", None)
    return resilient(getter() if callable(getter) else inner)


# ------------------------------------------------------------------------------------------- anchor

def anchor_path(client: "MlflowClient", model_name: str) -> Path:
    """The file, beside the signing key (outside the registry), pinning the newest audit entry written."""
    base = os.environ.get(ANCHOR_DIR_ENV)
    directory = Path(base).expanduser() if base else signing_key_path().parent / "anchors"
    digest = hashlib.sha256(f"{registry_uri_of(client)}|{model_name}".encode("utf-8")).hexdigest()[:16]
    return directory / f"audit-{digest}.json"


def read_anchor(path: Path) -> tuple[int, str] | None:
    """(seq, hash) pinned in the anchor file, or None when there is none yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return int(data["seq"]), str(data["hash"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"audit anchor {path} is unreadable: {exc}") from exc


def write_anchor(path: Path, entry: AuditEntry) -> None:
    """Pin `entry` as the newest audit entry (atomic replace; never moves the pin backwards)."""
    current = read_anchor(path)
    if current is not None and current[0] > entry.seq:
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"seq": entry.seq, "hash": entry.hash, "time": entry.time}), encoding="utf-8")
    os.replace(tmp, path)


def anchor_problem(entries: list[AuditEntry], anchor: tuple[int, str] | None) -> str:
    """Why the chain does not extend the anchored entry ('' when it does or there is no anchor)."""
    if anchor is None:
        return ""
    seq, digest = anchor
    if len(entries) < seq:
        return (f"the log ends at entry {len(entries)} but entry {seq} was written "
                "(anchor beside the key): newest entries removed")
    if entries[seq - 1].hash != digest:
        return f"entry {seq} differs from the one written (anchor beside the key): the log was rewritten"
    return ""


# ---------------------------------------------------------------------------------- journaled writes

@dataclass
class RegistryState:
    """The registered model's tags and aliases as read under the lock, kept current by our own writes."""

    model_name: str
    tags: dict[str, str]
    aliases: dict[str, int]
    entries: list[AuditEntry] = field(default_factory=list)

    @property
    def champion(self) -> int | None:
        return self.aliases.get(CHAMPION_ALIAS)

    @property
    def history(self) -> list[ChampionChange]:
        return history_from_entries(self.entries)

    @property
    def pending_intent(self) -> AuditEntry | None:
        """The newest entry when it is an intent with no commit or abort yet (a half-done move)."""
        return self.entries[-1] if self.entries and self.entries[-1].phase == "intent" else None

    @property
    def committed_champion(self) -> int | None:
        history = self.history
        return history[-1].version if history else None


def read_state(client: "MlflowClient", model_name: str, verifier: Verifier,
               refreshing_checkpoint: bool = False) -> RegistryState:
    """The registry state, with the audit chain checked (AuditError names the entry at fault): signatures and
    links, this host's anchor, and the signed checkpoint (present, reached by the chain, not expired).

    `refreshing_checkpoint` (refresh_checkpoint only): a missing or expired checkpoint is left to the caller;
    a present one must still be reached by the chain.
    """
    tags, aliases = get_registered_tags_and_aliases(client, model_name)
    check_audit_tags(tags, verifier).raise_if_broken()
    state = RegistryState(model_name, tags, aliases, audit_entries_from_tags(tags))
    path = anchor_path(client, model_name)
    anchor = read_anchor(path)
    problem = anchor_problem(state.entries, anchor)
    if not problem:
        envelope = tags.get(CHECKPOINT_TAG)
        if not (refreshing_checkpoint and envelope is None):
            problem = checkpoint_problem(model_name, state.entries, envelope, verifier,
                                         accept_expired=refreshing_checkpoint)
        if not problem and not state.entries and envelope is None:
            problem = judged_without_a_log(client, model_name)
    if problem:
        raise AuditError(f"audit log of {model_name!r}: {problem}")
    pin_seen_head(path, state.entries, anchor)
    return state


def judged_without_a_log(client: "MlflowClient", model_name: str) -> str:
    """Why an empty audit log without a checkpoint is not a model that was never judged ('' when it is one).

    An empty log read as whole on a host with no anchor: deleting every entry and the checkpoint erased promotions,
    blocks and rollbacks from the record, and blocked or rolled-back versions loaded as never-judged candidates.
    A version's status tag is written only after a log entry about it (a commit, a block), so one beside an empty
    log means the log was deleted. (An attestation tag is not such evidence: a promotion killed before its first
    entry leaves one. Deleting the status tags too is caught only by a host's anchor, $FRAUDGUARD_AUDIT_ANCHOR_DIR.)"""
    from fraudguard.names import STATUS_TAG

    for mv in client.search_model_versions(f"name = '{model_name}'"):
        status = (mv.tags or {}).get(STATUS_TAG)
        if status:
            return (f"the log is empty and has no checkpoint, but version {mv.version} has status {status!r}, which "
                    "is written only after a log entry: the log and its checkpoint were deleted")
    return ""


def pin_seen_head(path: Path, entries: list[AuditEntry], anchor: tuple[int, str] | None) -> None:
    """Pin the newest entry of a chain that was just checked against `anchor`, when it extends it.

    Every host pins the newest entry it has seen, not only the hosts that write: a serving or reviewing host
    then refuses a log trimmed back past what it once read (a rollback undone by deleting its entries).
    """
    if not entries or (anchor is not None and entries[-1].seq <= anchor[0]):
        return
    try:
        write_anchor(path, entries[-1])
    except OSError as exc:
        logger.warning("audit anchor %s not updated (%s): this host cannot detect a later trim", path, exc)


def append_entry(client: "MlflowClient", state: RegistryState, event: AuditEvent, signer: Signer) -> AuditEntry:
    """Chain, sign and store one entry (one tag write); the caller holds the registry lock."""
    prev = state.entries[-1] if state.entries else None
    entry = chain_entry(prev, event, signer)
    key, text = audit_tag_key(entry.seq), entry.to_json()
    registry_writer(client).set_registered_model_tag(state.model_name, key, text)
    state.tags[key] = text
    state.entries.append(entry)
    if entry.phase != "intent":  # an intent is followed by its commit or abort, which refreshes it
        _write_checkpoint(client, state, signer)
    logger.info("audit %06d: %s/%s %s -> %s by %s", entry.seq, entry.action, entry.phase,
                entry.from_version, entry.to_version, entry.actor)
    return entry


def _write_checkpoint(client: "MlflowClient", state: RegistryState, signer: Signer) -> None:
    """Sign the newest entry of `state` as the log's checkpoint (a crash before this leaves an older checkpoint,
    which the chain still reaches)."""
    envelope = sign_checkpoint(state.model_name, state.entries[-1], signer)
    registry_writer(client).set_registered_model_tag(state.model_name, CHECKPOINT_TAG, envelope)
    state.tags[CHECKPOINT_TAG] = envelope


def refresh_checkpoint(client: "MlflowClient", model_name: str, signer: Signer, verifier: Verifier,
                       accept_head: bool = False) -> Checkpoint | None:
    """Re-sign the log's newest entry as its checkpoint, with a fresh expiry (None: the log is empty).

    Run on the host holding the key, more often than the checkpoint's lifetime (cron, a scheduled deployment).
    The chain must reach the current checkpoint and this host's anchor. A checkpoint that is missing (a log
    written before checkpoints) or expired cannot tell whether newest entries were removed meanwhile: then
    only `accept_head`, an operator's statement that the newest entry shown is the newest they know of, lets
    it be re-signed (AuditError otherwise, naming that entry).
    """
    if not _registered(client, model_name):
        return None  # nothing registered yet (a scheduled refresh on a new set-up): no log to checkpoint
    with registry_lock(client):
        state = read_state(client, model_name, verifier, refreshing_checkpoint=True)
        if not state.entries:
            return None
        problem = checkpoint_problem(model_name, state.entries, state.tags.get(CHECKPOINT_TAG), verifier)
        head = state.entries[-1]
        if problem and not accept_head:
            raise AuditError(
                f"audit log of {model_name!r}: {problem}. Its newest entry is {head.seq} ({head.time}: {head.action} "
                f"{head.phase} {head.from_version} -> {head.to_version} by {head.actor}); if that is the newest you "
                "know of (`fraudguard status` lists the history), rerun with --accept-head")
        if problem:
            logger.warning("audit log of %r: %s; re-signed at entry %s as the operator accepted", model_name,
                           problem, head.seq)
        _write_checkpoint(client, state, signer)
        return parse_checkpoint(model_name, state.tags[CHECKPOINT_TAG], verifier)


def _set_alias(client: "MlflowClient", state: RegistryState, version: int | None) -> None:
    writer = registry_writer(client)
    if version is None:
        writer.delete_registered_model_alias(state.model_name, CHAMPION_ALIAS)
        state.aliases.pop(CHAMPION_ALIAS, None)
    else:
        writer.set_registered_model_alias(state.model_name, CHAMPION_ALIAS, str(version))
        state.aliases[CHAMPION_ALIAS] = version


HISTORY_TITLE = "## Champion history"
_HISTORY_ROWS = 25


def history_markdown(history: list[ChampionChange]) -> str:
    """The champion history as a markdown table for the registered model's page in the MLflow UI."""
    lines = [HISTORY_TITLE, "", "Written by fraudguard after every move (display only; "
             "`fraudguard audit verify` checks the signed record).", "",
             "| # | time (UTC) | action | from | to | actor | approver | reason |", "|---|---|---|---|---|---|---|---|"]
    for change in history[-_HISTORY_ROWS:]:
        reason = " ".join("; ".join(change.reasons).split()).replace("|", "/")[:120]
        if change.recovered:
            reason = f"(recovered) {reason}"
        lines.append(f"| {change.seq} | {change.time[:19]} | {change.action} | {change.previous} | {change.version} "
                     f"| {change.actor} | {change.approver or '-'} | {reason} |")
    return "\n".join(lines)


def display_statuses(history: list[ChampionChange]) -> dict[int, str]:
    """version -> status the committed history gives it: champion, rolled_back_from (a rollback left it
    and no later move made it champion or undid that rollback) or retired."""
    rolled_back = _rolled_back_versions(history)
    statuses = {}
    for change in history:
        for version in (change.version, change.previous):
            if version is not None:
                statuses[version] = STATUS_ROLLED_BACK_FROM if version in rolled_back else STATUS_RETIRED
    if history:
        statuses[history[-1].version] = STATUS_CHAMPION
    return statuses


def _refresh_status_tags(client: "MlflowClient", state: RegistryState) -> None:
    """Display statuses and the history table derived from the committed history (never read as evidence)."""
    history = state.history
    if not history:
        return
    last = history[-1]
    writer = registry_writer(client)
    writer.update_registered_model(state.model_name, description=history_markdown(history)[:4900])
    statuses = display_statuses(history)
    for version in {v for v in (last.version, last.previous) if v is not None}:
        writer.set_model_version_tag(state.model_name, str(version), STATUS_TAG, statuses[version])
    if last.approver:
        writer.set_model_version_tag(state.model_name, str(last.version), APPROVER_TAG, last.approver)


def recover_locked(client: "MlflowClient", state: RegistryState, signer: Signer,
                   actor: str | None = None) -> RecoveryOutcome | None:
    """Finish or revert a half-done move found in `state`; the caller holds the lock. None when all is whole.

    The alias already at the intent's target: the move is completed (commit entry). Anywhere else: the
    alias goes back to where the intent started and the move is reverted (abort entry). Both say
    `recovered`. A champion moved by hand is not repaired here (see restore_champion_locked).
    """
    intent = state.pending_intent
    if intent is None:
        return None
    actor = actor or current_actor()
    if state.champion == intent.to_version:
        entry = append_entry(client, state, AuditEvent(
            action=cast(AuditAction, intent.action), phase="commit", txid=intent.txid, from_version=intent.from_version,
            to_version=intent.to_version, reasons=("completed after an interrupted move",),
            gates=intent.gates, attestation=intent.attestation, approver=intent.approver, actor=actor,
            recovered=True), signer)
        _refresh_status_tags(client, state)
        kind: Literal["completed", "reverted"] = "completed"
    else:
        if state.champion != intent.from_version:
            _set_alias(client, state, intent.from_version)
        entry = append_entry(client, state, AuditEvent(
            action=cast(AuditAction, intent.action), phase="abort", txid=intent.txid, from_version=intent.from_version,
            to_version=intent.to_version, reasons=("reverted after an interrupted move",), actor=actor,
            recovered=True), signer)
        kind = "reverted"
    write_anchor(anchor_path(client, state.model_name), entry)
    outcome = RecoveryOutcome(kind, intent.action, intent.from_version, intent.to_version, entry)
    logger.warning("registry recovery: %s", outcome.describe())
    return outcome


def restore_champion_locked(client: "MlflowClient", state: RegistryState, signer: Signer,
                            actor: str | None = None) -> RecoveryOutcome | None:
    """Put a champion alias moved outside fraudguard back on the last committed move's target, audited."""
    committed = state.committed_champion
    if state.pending_intent is not None or state.champion == committed:
        return None
    found = state.champion
    _set_alias(client, state, committed)
    entry = append_entry(client, state, AuditEvent(
        action="repair", phase="record", from_version=found, to_version=committed,
        reasons=(f"champion alias found on {found}, not on the last committed champion {committed}",),
        actor=actor, recovered=True), signer)
    write_anchor(anchor_path(client, state.model_name), entry)
    outcome = RecoveryOutcome("restored", "repair", found, committed, entry)
    logger.warning("registry recovery: %s", outcome.describe())
    return outcome


def recover(client: "MlflowClient", model_name: str, signer: Signer, verifier: Verifier,
            actor: str | None = None, restore_alias: bool = False) -> list[RecoveryOutcome]:
    """Under the lock: finish or revert a half-done move, and (restore_alias) undo a hand-moved alias."""
    with registry_lock(client):
        state = read_state(client, model_name, verifier)
        done = [o for o in (recover_locked(client, state, signer, actor),) if o is not None]
        if restore_alias:
            done += [o for o in (restore_champion_locked(client, state, signer, actor),) if o is not None]
        return done


def alias_drift_problem(state: RegistryState) -> str:
    """Why the alias disagrees with the committed history ('' when it agrees or a move is half-done)."""
    if state.pending_intent is not None or state.champion == state.committed_champion:
        return ""
    return (f"champion alias points at {state.champion} but the last committed move ends at "
            f"{state.committed_champion}: moved outside fraudguard")


def move_champion(
    client: "MlflowClient",
    model_name: str,
    version: int,
    *,
    action: MoveAction,
    expected_current: int | None,
    attestation: str,
    signer: Signer,
    verifier: Verifier,
    actor: str | None = None,
    reasons: tuple[str, ...] = (),
    gates: Mapping[str, str] | None = None,
    approver: str = "",
) -> ChampionMove:
    """Move `champion` to `version` as one journaled transaction: intent, compare-and-set, commit.

    `expected_current` is the champion the caller's checks compared against; when the champion is another
    one by the time the lock is held, ChampionChanged is raised and nothing is written. `attestation` is
    the sha256 of the signed pass attestation that justifies the move.
    """
    actor = actor or current_actor()
    with registry_lock(client):
        state = read_state(client, model_name, verifier)
        recovery = recover_locked(client, state, signer, actor)
        drift = alias_drift_problem(state)
        if drift:
            raise RegistryError(f"model {model_name!r}: {drift}; run `fraudguard audit recover` to restore "
                                f"version {state.committed_champion}, then retry")
        current = state.champion
        if current != expected_current:
            raise ChampionChanged(
                f"champion of {model_name!r} is now {current}, but this {action} was checked against "
                f"{expected_current}; nothing was changed: re-gate (`fraudguard promote --version {version}`)"
                if action == "promote" else
                f"champion of {model_name!r} is now {current}, not {expected_current}; nothing was changed, retry"
            )
        if current == version:
            raise RegistryError(f"version {version} of {model_name!r} is already the champion")
        event: dict[str, Any] = dict(action=action, txid=new_txid(), from_version=current, to_version=version,
                     reasons=tuple(reasons), gates=dict(gates or {}), attestation=attestation,
                     approver=approver, actor=actor)
        intent = append_entry(client, state, AuditEvent(phase="intent", **event), signer)
        crash_point("intent")
        _set_alias(client, state, version)
        crash_point("alias")
        commit = append_entry(client, state, AuditEvent(phase="commit", **event), signer)
        crash_point("commit")
        write_anchor(anchor_path(client, model_name), commit)
        _refresh_status_tags(client, state)
        crash_point("status")
    change = state.history[-1]
    logger.info("champion of %s: %s -> %s (%s by %s)", model_name, current, version, action, actor)
    return ChampionMove(change=change, intent=intent, audit=commit, recovery=recovery)


def record_block(client: "MlflowClient", model_name: str, version: int, *, champion: int | None,
                 reasons: tuple[str, ...], gates: Mapping[str, str], signer: Signer, verifier: Verifier,
                 actor: str | None = None) -> AuditEntry:
    """Append a signed `block` record for `version` (champion untouched). ChampionChanged, nothing written, when
    `version` is the champion by now: another run promoted it while these gates ran (runs that reuse one version
    gate it at once). A block of the serving champion disowned it for new replicas and pyfunc loads while
    running ones, `status` and `audit verify` called it verified; taking a champion back is a rollback's job."""
    with registry_lock(client):
        state = read_state(client, model_name, verifier)
        recover_locked(client, state, signer, actor)
        # The signed log says who the champion is, not the alias: an insider who pointed the alias at `version`
        # while its gates ran (and back after) kept its block out of the log; it loaded as an unjudged candidate.
        if state.committed_champion == version and state.pending_intent is None:
            raise ChampionChanged(
                f"model {model_name!r} version {version} became the champion while these gates ran (another run "
                f"promoted it); their failures are in this run's reports, not recorded as a block of the serving "
                f"champion: if it must go, `fraudguard rollback`")
        entry = append_entry(client, state, AuditEvent(
            action="block", phase="record", from_version=champion, to_version=version, reasons=reasons,
            gates=gates, actor=actor), signer)
        write_anchor(anchor_path(client, model_name), entry)
        return entry


def committed_champion_attestation(state: RegistryState) -> tuple[int, str]:
    """(version, attestation sha256) of the committed champion; RegistryError when it cannot be trusted.

    The alias must equal the last committed move's target (no half-done move, not moved by hand), the
    version's newest verdict must not be a block, and the move must name an attestation.
    """
    name = state.model_name
    intent = state.pending_intent
    if intent is not None:
        raise RegistryError(f"model {name!r}: a {intent.action} {intent.from_version} -> {intent.to_version} "
                            "is half-done; serving stays on the current model until it is committed")
    history = state.history
    if not history:
        raise RegistryError(f"model {name!r} has no committed champion yet")
    committed = history[-1]
    if state.champion != committed.version:
        raise RegistryError(f"model {name!r}: alias champion points at {state.champion} but the last "
                            f"committed move ends at {committed.version} (moved outside fraudguard)")
    verdict = newest_verdict(state.entries, committed.version)
    if verdict is not None and verdict.action == "block":
        raise RegistryError(f"model {name!r} version {committed.version} was blocked after its promotion")
    digest = committed.attestation or (verdict.attestation if verdict is not None else "")
    if not digest:
        raise RegistryError(f"model {name!r} version {committed.version}: its move records no attestation")
    return committed.version, digest


def committed_attestation_for(state: RegistryState, version: int) -> str | None:
    """The attestation sha256 the audit log commits for `version`: the champion's (checked as
    committed_champion_attestation), or for another version its newest committed promotion's.
    None when the log never judged it (a candidate); RegistryError when its newest verdict is a block or a
    rollback moved away from it since it was last champion.
    An attestation tag that no committed move names (a promotion killed or beaten before its commit) counts
    for nothing."""
    if version in (state.champion, state.committed_champion):
        return committed_champion_attestation(state)[1]
    verdict = newest_verdict(state.entries, version)
    if verdict is None:
        return None
    disowned = disowned_reason(state, version)
    if disowned is not None:
        raise RegistryError(disowned)
    return verdict.attestation or None


def disowned_reason(state: RegistryState, version: int) -> str | None:
    """Why the audit log no longer stands behind `version` (its newest verdict is a block, or a rollback moved
    away from it and nothing made it champion since), or None."""
    verdict = newest_verdict(state.entries, version)
    if verdict is not None and verdict.action == "block":
        return (f"model {state.model_name!r} version {version} was blocked: "
                f"{'; '.join(verdict.reasons) or 'see the audit log'}")
    left = _rolled_away_from(state.history, version)
    if left is not None:
        return (f"model {state.model_name!r} version {version} was rolled back from at audit entry "
                f"{left.audit_seq or left.seq} ({'; '.join(left.reasons) or 'see the audit log'}); it serves "
                f"again only once a rollback returns to it or the gates pass it afresh")
    return None


def _rolled_away_from(history: list[ChampionChange], version: int) -> ChampionChange | None:
    """The rollback that moved `champion` away from `version`, when no move has made it champion since."""
    for change in reversed(history):
        if change.version == version:
            return None
        if change.action == "rollback" and change.previous == version:
            return change
    return None


def newest_verdict(entries: list[AuditEntry], version: int) -> AuditEntry | None:
    """The newest entry that judged `version`: a committed promotion to it, or a block of it."""
    for entry in reversed(entries):
        if entry.to_version == version and (
                (entry.action == "block") or (entry.action == "promote" and entry.phase == "commit")):
            return entry
    return None


def _rolled_back_versions(history: list[ChampionChange]) -> set[int]:
    rolled_back: set[int] = set()
    for change in history:
        if change.action == "rollback" and change.version in rolled_back:
            rolled_back.discard(change.version)
        elif change.action == "rollback" and change.previous is not None:
            rolled_back.add(change.previous)
        else:
            rolled_back.discard(change.version)
    return rolled_back


def previous_champion(history: list[ChampionChange], current: int) -> int | None:
    """The most recent earlier champion that is not a version some rollback moved away from.

    A rollback marks the version it leaves as bad; a rollback *to* a version marked bad is an undo: it
    clears that mark and does not mark the version it leaves. A promotion clears its version's mark.
    """
    rolled_back = _rolled_back_versions(history)
    for change in reversed(history):
        if change.version != current and change.version not in rolled_back:
            return change.version
    return None

