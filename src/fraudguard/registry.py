"""The MLflow registry side of FraudGuard: the `champion` alias, its history, the registry lock.

MLflow keeps no alias history and has no compare-and-set on aliases, so:
- the champion history lives in the registry itself: it is the promote/rollback entries of the
  hash-chained audit log (registered-model tags `audit.NNNNNN`, see fraudguard.audit), so the history is
  tamper-evident and costs no extra write per move;
- every read-check-write of `champion` runs under an exclusive file lock derived from the store location,
  and re-reads the champion under it. `set_champion` / `move_champion_locked` alone move `champion`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from fraudguard.audit import (
    AuditEntry,
    AuditEvent,
    append_audit_entry_unlocked,
    audit_entries_from_tags,
    check_audit_tags,
    current_actor,
)
from fraudguard.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
STATUS_TAG = "fraudguard.status"
BLOCKED_REASONS_TAG = "fraudguard.blocked_reasons"
GATE_TAG_PREFIX = "gate."
SHA256_TAG = "artifact.sha256"
WEIGHTS_FILE_NAME = "model.pt"
LOCK_DIR_ENV = "FRAUDGUARD_REGISTRY_LOCK_DIR"
LOCK_TIMEOUT_ENV = "FRAUDGUARD_REGISTRY_LOCK_TIMEOUT_S"

ChampionAction = Literal["promote", "rollback"]
_ANY = object()


@dataclass(frozen=True)
class ChampionChange:
    """One move of `champion`: to `version` from `previous` (None for the first champion)."""

    seq: int
    version: int
    previous: int | None
    action: str
    time: str
    actor: str
    audit_seq: int = 0


@dataclass(frozen=True)
class ChampionMove:
    """What set_champion did: the history entry and the audit entry it appended."""

    change: ChampionChange
    audit: AuditEntry


# ---------------------------------------------------------------------------------------------- lock

def lock_path_for(client: "MlflowClient") -> Path:
    """The lock file guarding this client's registry: next to a sqlite/file store, else $LOCK_DIR or tmp.

    A file lock only serialises processes on one host; a remote registry shared by hosts needs
    $FRAUDGUARD_REGISTRY_LOCK_DIR on a shared filesystem.
    """
    uri = str(getattr(client, "_registry_uri", None) or client.tracking_uri)
    override = os.environ.get(LOCK_DIR_ENV)
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:12]
    if override:
        return Path(override) / f"fraudguard-registry-{digest}.lock"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path.db -> path "//abs/path.db"; sqlite:///rel.db -> "/rel.db"
        raw = unquote(uri[len("sqlite:///"):])
        db = Path(raw)
        return db.parent / f"{db.name}.fraudguard.lock"
    if parsed.scheme in ("", "file"):
        store = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        return store / ".fraudguard-registry.lock"
    return Path(tempfile.gettempdir()) / f"fraudguard-registry-{digest}.lock"


_thread_state = threading.local()


@contextlib.contextmanager
def registry_lock(client: "MlflowClient", timeout_s: float | None = None) -> Iterator[Path]:
    """Hold the exclusive registry lock (re-entrant within a thread); RegistryError after the timeout."""
    from filelock import FileLock, Timeout

    path = lock_path_for(client)
    held: dict[str, int] = getattr(_thread_state, "held", None) or {}
    _thread_state.held = held
    key = str(path)
    if held.get(key):
        held[key] += 1
        try:
            yield path
        finally:
            held[key] -= 1
        return
    timeout = timeout_s if timeout_s is not None else float(os.environ.get(LOCK_TIMEOUT_ENV, "120"))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise RegistryError(
            f"registry lock {path} still held by another process after {timeout:.0f}s; "
            "another promotion or rollback is running"
        ) from exc
    held[key] = 1
    try:
        yield path
    finally:
        held[key] = 0
        lock.release()


# ------------------------------------------------------------------------------------------ reading

def _mlflow_error() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def get_registered_tags_and_aliases(client: "MlflowClient", model_name: str) -> tuple[dict[str, str], dict[str, int]]:
    """The registered model's tags and aliases (alias -> version), in one registry call."""
    try:
        model = client.get_registered_model(model_name)
    except _mlflow_error() as exc:
        raise RegistryError(f"registered model {model_name!r} not found or unreadable: {exc}") from exc
    aliases = {alias: int(version) for alias, version in (model.aliases or {}).items()}
    return dict(model.tags or {}), aliases


def get_champion_version(client: "MlflowClient", model_name: str) -> int | None:
    """The version the `champion` alias points to, or None when there is no champion."""
    return get_registered_tags_and_aliases(client, model_name)[1].get(CHAMPION_ALIAS)


def history_from_tags(tags: Mapping[str, str]) -> list[ChampionChange]:
    """The champion history held in already-read registered-model tags (promote/rollback audit entries)."""
    changes = []
    for entry in audit_entries_from_tags(tags):
        if entry.action in ("promote", "rollback") and entry.to_version is not None:
            changes.append(ChampionChange(
                seq=len(changes) + 1, version=entry.to_version, previous=entry.from_version,
                action=entry.action, time=entry.time, actor=entry.actor, audit_seq=entry.seq,
            ))
    return changes


def champion_history(client: "MlflowClient", model_name: str) -> list[ChampionChange]:
    """Every move of `champion`, oldest first, as recorded in the registry."""
    return history_from_tags(get_registered_tags_and_aliases(client, model_name)[0])


def newest_version(client: "MlflowClient", model_name: str) -> int:
    """The highest version number of the registered model; RegistryError when it has none."""
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except _mlflow_error() as exc:
        raise RegistryError(f"registered model {model_name!r}: cannot list versions: {exc}") from exc
    if not versions:
        raise RegistryError(f"registered model {model_name!r} has no versions; run `fraudguard register` first")
    return max(int(v.version) for v in versions)


def get_version(client: "MlflowClient", model_name: str, version: int) -> "ModelVersion":
    """The model version, or RegistryError naming it."""
    try:
        return client.get_model_version(model_name, str(version))
    except _mlflow_error() as exc:
        raise RegistryError(f"model {model_name!r} has no version {version}: {exc}") from exc


def gate_verdicts(version: "ModelVersion") -> dict[str, str]:
    """gate name -> "passed" | "failed", from the version's `gate.<name>` tags."""
    return {key[len(GATE_TAG_PREFIX):]: value for key, value in (version.tags or {}).items()
            if key.startswith(GATE_TAG_PREFIX)}


# ------------------------------------------------------------------------------------------ writing

def registry_writer(client: "MlflowClient"):
    """The object to write tags and aliases through: MLflow's registry client when reachable.

    MlflowClient's setters re-read the registered model on every call (a check that the name is not a
    prompt), which doubles the cost of each write; callers here have just read that model themselves.
    """
    getter = getattr(client, "_get_registry_client", None)
    return getter() if callable(getter) else client


def set_champion(
    client: "MlflowClient",
    model_name: str,
    version: int,
    *,
    action: ChampionAction,
    actor: str | None = None,
    reasons: tuple[str, ...] = (),
    gates: Mapping[str, str] | None = None,
    expected_current: object = _ANY,
    move_challenger: bool = False,
) -> ChampionMove:
    """Move `champion` to `version` under the registry lock and append the audit (= history) entry.

    The champion is re-read under the lock; with `expected_current` given, a champion changed by someone
    else meanwhile raises RegistryError and nothing is written.
    """
    with registry_lock(client):
        tags, aliases = get_registered_tags_and_aliases(client, model_name)
        return move_champion_locked(
            client, model_name, version, tags, aliases, action=action, actor=actor, reasons=reasons,
            gates=gates, expected_current=expected_current, move_challenger=move_challenger,
        )


def move_champion_locked(
    client: "MlflowClient",
    model_name: str,
    version: int,
    tags: Mapping[str, str],
    aliases: Mapping[str, int],
    *,
    action: ChampionAction,
    actor: str | None = None,
    reasons: tuple[str, ...] = (),
    gates: Mapping[str, str] | None = None,
    expected_current: object = _ANY,
    move_challenger: bool = False,
) -> ChampionMove:
    """set_champion's body, for a caller that holds registry_lock and read `tags`/`aliases` under it."""
    actor = actor or current_actor()
    current = aliases.get(CHAMPION_ALIAS)
    if expected_current is not _ANY and current != expected_current:
        raise RegistryError(
            f"champion of {model_name!r} changed to {current} while this operation expected "
            f"{expected_current}; nothing was changed, retry"
        )
    # Check the audit chain before any write, so a tampered log stops the move cleanly.
    check_audit_tags(tags).raise_if_broken()
    previous_moves = len(history_from_tags(tags))
    writer = registry_writer(client)
    writer.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(version))
    if move_challenger:
        writer.set_registered_model_alias(model_name, CHALLENGER_ALIAS, str(version))
    audit_entry = append_audit_entry_unlocked(
        writer, model_name, tags,
        AuditEvent(action=action, from_version=current, to_version=version, reasons=reasons,
                   gates=dict(gates or {}), actor=actor),
    )
    if action == "promote":
        writer.set_model_version_tag(model_name, str(version), STATUS_TAG, "promoted")
    elif current is not None and current != version:
        # A rollback target keeps the status it earned when it was promoted.
        writer.set_model_version_tag(model_name, str(current), STATUS_TAG, "rolled_back_from")
    change = ChampionChange(seq=previous_moves + 1, version=version, previous=current, action=action,
                            time=audit_entry.time, actor=actor, audit_seq=audit_entry.seq)
    logger.info("champion of %s: %s -> %s (%s by %s)", model_name, current, version, action, actor)
    return ChampionMove(change=change, audit=audit_entry)


# ---------------------------------------------------------------------------------- integrity check

def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_weights(client: "MlflowClient", mv: "ModelVersion", dst: Path) -> Path:
    """Download the version's weights file; RegistryError when it cannot be found."""
    from fraudguard.tracking import WEIGHTS_ARTIFACT, WEIGHTS_PATH_TAG

    tags = mv.tags or {}
    errors: list[str] = []
    run_path = tags.get(WEIGHTS_PATH_TAG, WEIGHTS_ARTIFACT)
    if mv.run_id and run_path:
        try:
            return Path(client.download_artifacts(mv.run_id, run_path, str(dst)))
        except (_mlflow_error(), OSError) as exc:
            errors.append(f"run {mv.run_id} artifact {run_path}: {exc}")
    # Fallback: the registered model's own files (MLflow 3 logged model), searched for the weights name.
    if mv.source:
        import mlflow.artifacts

        try:
            root = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=str(dst / "source"), tracking_uri=client.tracking_uri))
            matches = sorted(p for p in ([root] if root.is_file() else root.rglob(WEIGHTS_FILE_NAME)))
            if matches:
                return matches[0]
            errors.append(f"no {WEIGHTS_FILE_NAME} under {mv.source}")
        except (_mlflow_error(), OSError) as exc:
            errors.append(f"source {mv.source}: {exc}")
    raise RegistryError(
        f"model {mv.name!r} version {mv.version}: weights artifact not found ({'; '.join(errors) or 'no source'})"
    )


def check_weights_integrity(client: "MlflowClient", mv: "ModelVersion") -> str:
    """Download the version's weights and compare their sha256 with its `artifact.sha256` tag.

    Returns the hash; RegistryError naming the version when the tag is missing or the bytes differ.
    """
    expected = (mv.tags or {}).get(SHA256_TAG)
    if not expected:
        raise RegistryError(f"model {mv.name!r} version {mv.version} has no {SHA256_TAG} tag; cannot trust it")
    with tempfile.TemporaryDirectory(prefix="fraudguard-weights-") as tmp:
        actual = _sha256_of(_download_weights(client, mv, Path(tmp)))
    if actual.lower() != expected.lower():
        raise RegistryError(
            f"model {mv.name!r} version {mv.version}: weights sha256 {actual} does not match the recorded "
            f"{SHA256_TAG} {expected}; the artifact was altered"
        )
    return actual
