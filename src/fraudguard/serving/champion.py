"""Only a verified champion serves: resolve `@champion`, verify it against its signed attestation, load it
from the verified local files, and follow promote and rollback without dropping a request.

Resolution reads the registry state with the audit chain's signatures checked (registry.read_state): the
alias must equal the last committed move's target (a hand-moved alias or a half-done move is refused), the
version's newest verdict must not be a block, and the committed move names the attestation digest. The
attestation is opened with the public key (attestation.load_attestation); the served model directory is
downloaded to a private folder and its digests checked (served_digests / check_digests); only then is the
bundle loaded with model.load_bundle (weights_only; no pyfunc code from the store runs).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import yaml

from fraudguard.attestation import load_attested_bundle, pull_attested_model
from fraudguard.errors import FraudGuardError, ModelError, RegistryError
from fraudguard.model import ModelBundle
from fraudguard.registry import (
    committed_attestation_for,
    RegistryState,
    committed_champion_attestation,
    disowned_reason,
    get_version,
    read_state,
)
from fraudguard.signing import Verifier

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded, verified champion: what one request scores with (read once per request)."""

    bundle: ModelBundle
    version: int
    attestation: str
    loaded_at: str
    model_dir: Path

    @property
    def key(self) -> tuple[int, str]:
        return (self.version, self.attestation)


def resolve_champion(client: "MlflowClient", model_name: str, verifier: Verifier) -> tuple[int, str]:
    """(version, attestation sha256) of the committed champion; RegistryError when it cannot be trusted."""
    # AuditError on a broken chain or a trimmed log; RegistryError on a half-done move, a hand-moved alias,
    # a block since the promotion, or a move without an attestation.
    return committed_champion_attestation(read_state(client, model_name, verifier))


def load_verified(client: "MlflowClient", model_name: str, version: int, digest: str, verifier: Verifier,
                  cache_dir: Path, feature_names: set[str]) -> ServedModel:
    """Download, verify and load version `version` whose attestation has sha256 `digest`."""
    mv = get_version(client, model_name, version)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = Path(tempfile.mkdtemp(prefix=f"v{version}-{digest[:12]}-", dir=cache_dir))
    try:
        bundle, _ = load_attested_bundle(client, mv, digest, verifier, target)
        where = f"model {model_name!r} version {version}"
        missing = sorted(set(bundle.features) - feature_names)
        if missing:
            raise ModelError(f"{where}: uses feature(s) the gateway does not compute: {missing}")
        # Warm-up: the first real request must not pay for lazy initialisation.
        bundle.predict_proba_standardized(np.zeros((1, len(bundle.features)), dtype=np.float32))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    logger.info("%s version %s verified against attestation %s and loaded", model_name, version, digest[:16])
    return ServedModel(bundle, version, digest, now, target)


@dataclass(frozen=True)
class PulledModel:
    """A model directory pulled by pull_verified: every file matched the signed attestation when it was pulled."""

    version: int
    attestation: str
    model_dir: Path


def pull_verified(client: "MlflowClient", model_name: str, verifier: Verifier, dst: Path,
                  version: int | None = None) -> PulledModel:
    """Download version `version` (None: the committed champion) into the new folder dst as an MLflow model
    directory, once the audit log commits an attestation for it and every file matches that attestation.

    `mlflow.pyfunc.load_model("models:/...")` runs the model's code/ copy from the store before any check can:
    an insider who edits it there edits the check. A pulled directory was checked by installed code first, so
    `mlflow.pyfunc.load_model(dst)` or `mlflow models serve -m dst` runs only what the gates passed; that load
    checks the audit log again, as a `models:/` load does (the tracking store must be reachable). dst must not
    exist or be empty; nothing is left in it when the pull fails.
    """
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelError(f"{dst}: exists and is not an empty folder; pull into a new one")
    state = read_state(client, model_name, verifier)
    if version is None:
        version, digest = committed_champion_attestation(state)
    else:
        found = committed_attestation_for(state, int(version))
        if found is None:
            raise RegistryError(f"model {model_name!r} version {version} was never promoted: no signed "
                                "attestation to check its files against")
        digest = found
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".pull-v{version}-", dir=dst.parent))
    try:
        model_dir, _ = pull_attested_model(client, get_version(client, model_name, version), digest, verifier,
                                           staging)
        # As a models:/ download has it: the pyfunc's load then checks the audit log again (a version blocked or
        # a log tampered with since the pull is refused). Not a signed file (attestation.DOWNLOAD_ONLY_FILES).
        (model_dir / "registered_model_meta").write_text(
            yaml.safe_dump({"model_name": model_name, "model_version": str(version)}), encoding="utf-8")
        try:
            if dst.exists():
                dst.rmdir()  # only an empty folder: another pull that filled it meanwhile is not overwritten
            model_dir.rename(dst)  # same file system: the checked files are the ones that land in dst
        except OSError as exc:
            raise ModelError(f"{dst}: cannot put the verified model there ({exc}); pull into a new folder") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s version %s pulled into %s, verified against attestation %s", model_name, version, dst,
                digest[:16])
    return PulledModel(int(version), digest, dst)


@dataclass
class SwitchStatus:
    """What /health reports about following the champion."""

    last_check: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    failed_target: tuple[int, str] | None = None
    switches: int = 0


class ChampionFollower:
    """Holds the served model and swaps it atomically when `champion` moves to a verified version.

    A failed resolution, verification or load keeps the current model and is reported (status, log).
    `lock` is held for the whole of each check (tests hold it to make a check wait).
    """

    def __init__(self, client: "MlflowClient", model_name: str, verifier: Verifier, cache_dir: Path,
                 feature_names: set[str], interval_s: float,
                 on_change: Callable[[ServedModel | None, ServedModel], None] | None = None):
        self.client, self.model_name, self.verifier = client, model_name, verifier
        self.cache_dir, self.feature_names, self.interval_s = Path(cache_dir), feature_names, interval_s
        self.on_change = on_change or (lambda old, new: None)
        self.current: ServedModel | None = None
        self.status = SwitchStatus()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Resolve the champion; switch to it if it changed and verifies. True when a switch happened."""
        with self.lock:
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self.status.last_check = now
            state = None
            try:
                state = read_state(self.client, self.model_name, self.verifier)
                target = committed_champion_attestation(state)
                if self.current is not None and self.current.key == target:
                    self.status.failed_target = None
                    self.status.last_error = None
                    return False
                served = load_verified(self.client, self.model_name, target[0], target[1], self.verifier,
                                       self.cache_dir, self.feature_names)
            except FraudGuardError as exc:
                self._failed(now, str(exc), locals().get("target"), state)
                return False
            except Exception as exc:  # MLflow, OS and torch errors of a broken store: keep serving, report
                self._failed(now, f"{type(exc).__name__}: {str(exc)[:300]}", locals().get("target"), state)
                return False
            old, self.current = self.current, served  # one reference assignment: requests see old or new
            self.status.switches += 1
            self.status.failed_target = None
            self.status.last_error = None
            logger.info("serving %s version %s (was %s)", self.model_name, served.version,
                        old.version if old else None)
            self.on_change(old, served)
            if old is not None:
                shutil.rmtree(old.model_dir, ignore_errors=True)
            return True

    def _failed(self, now: str, message: str, target, state: RegistryState | None = None) -> None:
        """Report a refused switch. The current model keeps serving unless the audit log (`state`, read and
        verified) has since disowned it: a rollback moved away from it or a block judged it. Keeping a rolled-back
        version because its successor fails to load would let anyone who can break the successor's files or tags
        hold the fleet on the version the rollback removed."""
        old = self.current
        disowned = None if old is None or state is None else disowned_reason(state, old.version)
        if old is not None and disowned is not None:
            message = f"{message}; stopped serving version {old.version}: {disowned}"
            self.current = None
            shutil.rmtree(old.model_dir, ignore_errors=True)
        serving = f"; still serving version {self.current.version}" if self.current else "; nothing to serve"
        if self.status.last_error != message:
            logger.error("champion switch refused: %s%s", message, serving)
        self.status.last_error, self.status.last_error_at = message, now
        self.status.failed_target = target

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.interval_s):
                self.check()

        self._thread = threading.Thread(target=loop, name="champion-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
