"""The red team's registry findings (issue 9's table), each a regression test through the real CLI.

Every case runs `fraudguard` in a subprocess against a real sqlite MLflow store. Crashes use the
test-only fault hook $FRAUDGUARD_CRASH_AFTER, which SIGKILLs the process right after the named registry
write. Set-up promotions that are not under test run in-process with stand-in gates named after every
configured gate (fast); the promotions under test run the real gates under a lenient committed policy.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from fraudguard.audit import AuditEvent, chain_entry
from fraudguard.config import Settings, load_settings
from fraudguard.policy import committed_policy
from fraudguard.promotion import decide, prepare, run_gates
from fraudguard.registry import CHAMPION_ALIAS, get_champion_version, read_audit_log
from fraudguard.signing import load_signer, load_verifier
from fraudguard.verification import verify_registry

from registry_helpers import (
    all_passing_gates,
    candidate_for,
    commit_params,
    failing_gate,
    simple_context,
    write_pipeline_outputs,
)

pytestmark = pytest.mark.slow

NAME = "fraudguard"
FRAUDGUARD = str(Path(sys.executable).parent / "fraudguard")
# Gates pass on random-weight models: these tests are about the registry, not the gates' judgement.
LENIENT_POLICY = {
    "gates": {
        "quality": {"min_average_precision": 0.0, "min_card_precision_at_k": 0.0, "min_recall_at_fpr": 0.0,
                    "non_inferiority_tolerance": 1.0, "max_false_positive_rate": 1.0},
        "robustness": {"epsilons": [1.0], "min_robust_recall": 0.0, "min_dilution_recall": 0.0,
                       "non_inferiority_tolerance": 1.0,
                       "hopskipjump_samples": 0, "max_attack_rows": 50,
                       "split_payments": {"splits": 3, "min_flagged_share": 0.0}},
        "drift": {"drift_share_threshold": 1.0},
        "static_analysis": {"paths": ["gatecheck"]},
        "privacy": {"max_attack_auc": 1.0, "sample_size": 100, "min_sample_size": 4},
    },
}


def _merge(base: dict, extra: dict) -> dict:
    from fraudguard.config import merge_overrides

    return merge_overrides(base, extra)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Three versions registered by the real tracking code, snapshotted once; each test restores it in place
    (same absolute paths, so the store's artifact URIs stay valid)."""
    import torch

    from fraudguard.tracking import configure_mlflow, log_training_run

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("redteam")
    work, snapshot = base / "work", base / "snapshot"
    root, store = work / "project", work / "store"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        versions = []
        for seed in (0, 1, 2):
            write_pipeline_outputs(root, seed)
            params = _merge(yaml.safe_load((root / "params.yaml").read_text()), LENIENT_POLICY)
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            settings = load_settings(root / "params.yaml")
            configure_mlflow(root, settings.registry)  # sets MLflow's process-wide URI, which an earlier test may have set
            versions.append(log_training_run(root, settings, flow_run_id=None).version)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    (root / "gatecheck").mkdir()
    (root / "gatecheck" / "ok.py").write_text("def add(a: int, b: int) -> int:\n    return a + b\n")
    commit_params(root)
    shutil.copytree(work, snapshot)
    return work, snapshot, uri, versions


def _restore(snapshot: Path, work: Path) -> None:
    """Put the work folder back as snapshotted. The database is restored in place with sqlite's backup API:
    this process's MLflow keeps pooled connections to that file, which a replaced file would strand."""
    import sqlite3

    for entry in snapshot.iterdir():
        target = work / entry.name
        if entry.name == "store":
            for item in entry.iterdir():
                if item.name == "mlflow.db":
                    continue
                shutil.rmtree(work / "store" / item.name, ignore_errors=True)
                if item.is_dir():
                    shutil.copytree(item, work / "store" / item.name)
                else:
                    shutil.copy2(item, work / "store" / item.name)
            with sqlite3.connect(entry / "mlflow.db") as source, sqlite3.connect(target / "mlflow.db") as dest:
                source.backup(dest)
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(entry, target)


@dataclass
class Project:
    root: Path
    client: MlflowClient
    settings: Settings
    versions: list[int]
    env: dict[str, str]

    def fg(self, *args: str, crash_after: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the real CLI on this project."""
        full_env = {**self.env, **(env or {})}
        if crash_after:
            full_env["FRAUDGUARD_CRASH_AFTER"] = crash_after
        return subprocess.run([FRAUDGUARD, *args, "--root", str(self.root)], cwd=self.root, env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    def promote_setup(self, version: int, gates=None) -> None:
        """A promotion that is set-up, not under test: stand-in gates, the committed policy."""
        report_dir = self.root / "reports" / "setup" / f"v{version}"
        report_dir.mkdir(parents=True, exist_ok=True)
        run = prepare(self.client, self.root, self.settings, version, policy=committed_policy(self.root, self.settings),
                      gates=gates or all_passing_gates(), candidate=candidate_for(self.client, NAME, version),
                      context=simple_context(self.settings, self.root, report_dir))
        results, durations = run_gates(run)
        decide(self.client, run, results, durations, actor="setup")

    @property
    def champion(self) -> int | None:
        return get_champion_version(self.client, NAME)

    def audit(self):
        return read_audit_log(self.client, NAME)

    def verify(self):
        return verify_registry(self.client, NAME, load_verifier())


@pytest.fixture
def project(template, tmp_path, monkeypatch):
    work, snapshot, uri, versions = template
    _restore(snapshot, work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FRAUDGUARD_AUDIT_ANCHOR_DIR", str(tmp_path / "anchors"))
    monkeypatch.setenv("FRAUDGUARD_LOG_LEVEL", "WARNING")
    root = work / "project"
    env = {**os.environ, "FRAUDGUARD_ACTOR": "red-team"}
    return Project(root, MlflowClient(tracking_uri=uri, registry_uri=uri), load_settings(root / "params.yaml"),
                   versions, env)


def _killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------------------------- cases 1 and 2

@pytest.mark.parametrize("crash_after, champion_after, recovery", [
    ("intent", 1, "reverted"),    # intent written, alias not moved
    ("alias", 2, "completed"),    # case 1: alias moved, no commit entry yet
    ("commit", 2, None),          # case 2: entry written, nothing after it (no separate head to lose)
])
def test_kill_9_during_promote_leaves_a_record_the_next_command_makes_whole(project, crash_after, champion_after,
                                                                            recovery):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    killed = project.fg("promote", "--version", str(v2), crash_after=crash_after)
    assert _killed(killed), killed.stderr[-2000:]

    verify = project.fg("audit", "verify")
    if recovery is None:
        assert verify.returncode == 0, verify.stderr  # case 2: no false tampering alarm
    else:
        assert verify.returncode == 1 and "half-done" in verify.stderr and "audit recover" in verify.stderr

    status = project.fg("status")
    assert status.returncode == 0, status.stdout + status.stderr
    if recovery:
        assert f"recovered: {recovery} an interrupted promote {v1} -> {v2}" in status.stdout
        last = project.audit()[-1]
        assert (last.phase, last.recovered) == ("commit" if recovery == "completed" else "abort", True)
    assert project.champion == [None, v1, v2][champion_after]
    report = project.verify()
    assert report.ok, report.problems
    if crash_after == "commit":  # case 2: later commands are not refused
        rollback = project.fg("rollback", "--to", str(v1))
        assert rollback.returncode == 0, rollback.stderr[-2000:]
        assert project.champion == v1 and project.verify().ok


# ------------------------------------------------------------------------------------------ case 3

def test_kill_9_of_rollback_then_the_same_command_never_returns_to_the_bad_version(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    assert _killed(project.fg("rollback", "--reason", "v2 is bad", crash_after="alias"))
    assert project.champion == v1

    retry = project.fg("rollback", "--reason", "v2 is bad")
    assert retry.returncode == 0, retry.stderr
    assert "completed an interrupted rollback" in retry.stdout and project.champion == v1
    again = project.fg("rollback")
    assert again.returncode == 1 and "no earlier good champion" in again.stderr and project.champion == v1
    assert [(c.action, c.previous, c.version) for c in project.verify().history] == [
        ("promote", None, v1), ("promote", v1, v2), ("rollback", v2, v1)]


@pytest.mark.parametrize("crash_after", ["commit", "status"])
def test_a_rollback_killed_after_its_commit_and_run_again_does_not_step_back_a_second_time(project, crash_after):
    """Killed after the commit there is nothing to recover, so the retry looked like a second rollback and moved the
    good v2 back to v1. A plain rollback from a champion that a rollback put there now names the way on instead."""
    v1, v2, v3 = project.versions
    for version in (v1, v2, v3):
        project.promote_setup(version)
    assert _killed(project.fg("rollback", "--reason", "v3 is bad", crash_after=crash_after))
    assert project.champion == v2

    retry = project.fg("rollback", "--reason", "v3 is bad")
    assert retry.returncode == 1 and project.champion == v2, retry.stdout + retry.stderr[-2000:]
    assert f"champion {v2} is there by the rollback from version {v3}" in retry.stderr
    assert f"fraudguard rollback --to {v1}" in retry.stderr and "Traceback" not in retry.stderr
    further = project.fg("rollback", "--to", str(v1), "--reason", "v2 is bad too")
    assert further.returncode == 0 and project.champion == v1, further.stderr[-2000:]
    assert [(c.action, c.previous, c.version) for c in project.verify().history] == [
        ("promote", None, v1), ("promote", v1, v2), ("promote", v2, v3), ("rollback", v3, v2), ("rollback", v2, v1)]


# ------------------------------------------------------------------------------------------ case 4

def _lock_store(db: Path, seconds: float) -> subprocess.Popen:
    """Another writer holding sqlite's exclusive lock for `seconds`."""
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); c.execute('ROLLBACK')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_store_locked_by_another_writer_is_waited_out(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    db = Path(project.env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    # Shorter than sqlite's own busy wait: a longer hold can catch MLflow's store start-up, whose table
    # check does not survive a locked file (an MLflow limit; the over-budget case below covers our retries).
    locker = _lock_store(db, 3)
    promote = project.fg("promote", "--version", str(v2))
    locker.wait(timeout=60)
    assert promote.returncode == 0, promote.stderr[-3000:]
    assert project.champion == v2 and project.verify().ok


def test_a_store_locked_past_the_retry_budget_fails_in_one_line_and_loses_nothing(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    db = Path(project.env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    locker = _lock_store(db, 60)
    promote = project.fg("promote", "--version", str(v2), env={"FRAUDGUARD_STORE_RETRY_S": "1"})
    locker.kill()  # the other writer dies holding the lock: sqlite releases it with the process
    locker.wait(timeout=60)
    assert promote.returncode == 1
    assert "Traceback" not in promote.stderr and "database is locked" in promote.stderr
    assert project.fg("status").returncode == 0  # recovers anything half-done; the record verifies
    assert project.champion in (v1, v2) and project.verify().ok


# ------------------------------------------------------------------------------------------ case 5

def test_promotion_gated_against_a_champion_that_a_rollback_replaced_is_not_applied(project):
    v1, v2, v3 = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    report_dir = project.root / "reports" / "race"
    report_dir.mkdir(parents=True)
    run = prepare(project.client, project.root, project.settings, v3, gates=all_passing_gates(),
                  candidate=candidate_for(project.client, NAME, v3),
                  context=simple_context(project.settings, project.root, report_dir))
    assert run.champion_before == v2
    results, durations = run_gates(run)
    rollback = project.fg("rollback", "--reason", "v2 misbehaves")  # lands while the gates ran
    assert rollback.returncode == 0 and project.champion == v1
    with pytest.raises(Exception, match=f"checked against {v2}.*re-gate"):
        decide(project.client, run, results, durations, actor="racer")
    assert project.champion == v1
    history = project.verify().history
    assert [(c.previous, c.version) for c in history][-1] == (v2, v1)


# ------------------------------------------------------------------------------------------ case 6

def test_edited_tags_cannot_turn_a_blocked_or_ungated_version_into_champion(project):
    v1, v2, v3 = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2, gates={**all_passing_gates(), "quality": failing_gate("quality")})
    assert project.champion == v1
    for version in (v2, v3):  # the insider deletes the block and marks every gate passed
        project.client.delete_model_version_tag(NAME, str(version), "fraudguard.status") \
            if "fraudguard.status" in project.client.get_model_version(NAME, str(version)).tags else None
        for gate in all_passing_gates():
            project.client.set_model_version_tag(NAME, str(version), f"gate.{gate}", "passed")
    blocked = project.fg("rollback", "--to", str(v2))
    assert blocked.returncode == 1 and "blocked at audit entry" in blocked.stderr
    ungated = project.fg("rollback", "--to", str(v3))
    assert ungated.returncode == 1 and "never promoted" in ungated.stderr
    assert project.champion == v1 and project.verify().ok


# ------------------------------------------------------------------------------------------ case 7

def test_uncommitted_threshold_edit_cannot_regate_a_blocked_version(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    params_file = project.root / "params.yaml"
    lenient = params_file.read_text()
    strict = _merge(yaml.safe_load(lenient), {"gates": {"quality": {"min_average_precision": 0.99}}})
    params_file.write_text(yaml.safe_dump(strict, sort_keys=False))
    commit_params(project.root)  # the policy of record is now strict
    blocked = project.fg("promote", "--version", str(v2))
    assert blocked.returncode == 1 and "BLOCKED by quality" in blocked.stderr

    params_file.write_text(lenient)  # relaxed in the working tree only
    again = project.fg("promote", "--version", str(v2))
    assert again.returncode == 1
    assert "gates.quality.min_average_precision" in again.stderr and "commit" in again.stderr
    assert project.champion == v1 and project.verify().ok


# ------------------------------------------------------------------------------------------ case 8

def test_audit_chain_rewritten_with_db_access_but_without_the_key_is_detected(project, tmp_path):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    insider = load_signer(tmp_path / "insider-key.pem")
    prev = None
    for entry in project.audit():  # consistent rewrite: valid hashes and links, the insider's signature
        event = AuditEvent(entry.action, entry.phase, entry.from_version, entry.to_version, txid=entry.txid,
                           reasons=("routine",), gates=entry.gates, attestation=entry.attestation,
                           actor="mallory")
        prev = chain_entry(prev, event, insider, now=entry.time)
        project.client.set_registered_model_tag(NAME, f"audit.{prev.seq:06d}", prev.to_json())
    verify = project.fg("audit", "verify")
    assert verify.returncode == 1 and "audit entry 1" in verify.stderr and "signature" in verify.stderr
    assert project.fg("status").returncode == 1
    refused = project.fg("rollback")
    assert refused.returncode == 1 and "signature" in refused.stderr and project.champion == v2


def test_a_serving_host_that_read_the_log_refuses_it_trimmed_back_past_a_rollback(project, tmp_path, monkeypatch):
    from fraudguard.errors import AuditError
    from fraudguard.audit import audit_tag_key
    from fraudguard.serving.champion import resolve_champion

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    assert project.fg("rollback", "--reason", "v2 misses fraud").returncode == 0 and project.champion == v1
    monkeypatch.setenv("FRAUDGUARD_AUDIT_ANCHOR_DIR", str(tmp_path / "serving-host"))  # a host that never writes
    assert resolve_champion(project.client, NAME, load_verifier())[0] == v1
    entries = project.audit()
    for entry in entries:  # insider: delete the rollback's entries and point the alias back at v2
        if entry.action == "rollback":
            project.client.delete_registered_model_tag(NAME, audit_tag_key(entry.seq))
    project.client.set_registered_model_alias(NAME, CHAMPION_ALIAS, str(v2))
    with pytest.raises(AuditError, match="newest entries removed"):
        resolve_champion(project.client, NAME, load_verifier())


def _checkpoint_signed_days_ago(project: Project, head, days: int) -> str:
    import datetime as dt

    from fraudguard.audit import sign_checkpoint

    signed_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    return sign_checkpoint(NAME, head, load_signer(create=False), now=signed_at)


def test_a_brand_new_serving_host_refuses_a_log_trimmed_back_past_a_rollback(project, tmp_path, monkeypatch):
    """A fresh replica has no anchor: the signed checkpoint is what tells it the log was trimmed."""
    from fraudguard.audit import CHECKPOINT_TAG, audit_tag_key
    from fraudguard.errors import AuditError
    from fraudguard.serving.champion import resolve_champion

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    # The checkpoint the pipeline signed when v2 was promoted, had that been 8 days ago: what an insider replays.
    old_checkpoint = _checkpoint_signed_days_ago(project, project.audit()[-1], days=8)
    assert project.fg("rollback", "--reason", "v2 misses fraud").returncode == 0 and project.champion == v1
    for entry in project.audit():  # insider: delete the rollback's entries and point the alias back at v2
        if entry.action == "rollback":
            project.client.delete_registered_model_tag(NAME, audit_tag_key(entry.seq))
    project.client.set_registered_model_alias(NAME, CHAMPION_ALIAS, str(v2))

    def fresh_host(name: str):
        monkeypatch.setenv("FRAUDGUARD_AUDIT_ANCHOR_DIR", str(tmp_path / name))  # a replica that never read the log
        return resolve_champion(project.client, NAME, load_verifier())

    with pytest.raises(AuditError, match="signed checkpoint .* names entry .*newest entries removed"):
        fresh_host("replica-1")  # the rollback's checkpoint left in place
    project.client.set_registered_model_tag(NAME, CHECKPOINT_TAG, old_checkpoint)  # v2's own, replayed
    with pytest.raises(AuditError, match="expired"):
        fresh_host("replica-2")
    project.client.delete_registered_model_tag(NAME, CHECKPOINT_TAG)
    with pytest.raises(AuditError, match="no signed checkpoint"):
        fresh_host("replica-3")
    # The key holder's refresh does not bless the trimmed log on its own (its anchor saw the rollback).
    refresh = project.fg("audit", "checkpoint", "--accept-head")
    assert refresh.returncode == 1 and "newest entries removed" in refresh.stderr, refresh.stderr[-2000:]


def test_a_log_deleted_whole_with_its_checkpoint_is_refused_by_a_host_without_an_anchor(project, tmp_path, monkeypatch):
    """An empty log without a checkpoint read as a model never judged: wiping every entry, the checkpoint and the
    alias erased the rollback and the block from `audit verify` on a fresh host, and the rolled-back version loaded
    as a never-judged candidate."""
    from fraudguard.audit import CHECKPOINT_TAG, audit_tag_key
    from fraudguard.errors import AuditError
    from fraudguard.registry import read_state

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    assert project.fg("rollback", "--reason", "v2 misses fraud").returncode == 0 and project.champion == v1
    for entry in project.audit():
        project.client.delete_registered_model_tag(NAME, audit_tag_key(entry.seq))
    project.client.delete_registered_model_tag(NAME, CHECKPOINT_TAG)
    project.client.delete_registered_model_alias(NAME, CHAMPION_ALIAS)
    monkeypatch.setenv("FRAUDGUARD_AUDIT_ANCHOR_DIR", str(tmp_path / "fresh-host"))
    with pytest.raises(AuditError, match="has status .* the log and its checkpoint were deleted"):
        read_state(project.client, NAME, load_verifier())
    verify = project.fg("audit", "verify", env={"FRAUDGUARD_AUDIT_ANCHOR_DIR": str(tmp_path / "fresh-cli")})
    assert verify.returncode != 0 and "were deleted" in verify.stderr + verify.stdout


def test_the_audit_checkpoint_is_refreshed_by_the_key_holder_and_an_expired_one_needs_an_operator(project, tmp_path):
    from fraudguard.audit import CHECKPOINT_TAG

    v1, _, _ = project.versions
    project.promote_setup(v1)
    assert project.fg("audit", "checkpoint").returncode == 0  # a scheduled refresh of a valid one needs no one
    # Eight days without a refresh (the scheduled job stopped): the last checkpoint has expired.
    project.client.set_registered_model_tag(NAME, CHECKPOINT_TAG,
                                            _checkpoint_signed_days_ago(project, project.audit()[-1], days=8))
    expired = project.fg("audit", "verify")
    assert expired.returncode == 1 and "expired" in expired.stderr
    refused = project.fg("audit", "checkpoint")
    assert refused.returncode == 1 and "--accept-head" in refused.stderr and "newest entry is 2" in refused.stderr
    accepted = project.fg("audit", "checkpoint", "--accept-head")
    assert accepted.returncode == 0 and "entry 2 signed" in accepted.stdout, accepted.stderr[-2000:]
    fresh = project.fg("audit", "verify", env={"FRAUDGUARD_AUDIT_ANCHOR_DIR": str(tmp_path / "fresh")})
    assert fresh.returncode == 0, fresh.stderr[-2000:]


# ------------------------------------------------------------------------------------------ case 9

def _served_dir(project: Project, version: int) -> Path:
    import mlflow.artifacts

    uri = project.client.get_model_version_download_uri(NAME, str(version))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=project.client.tracking_uri,
                                                 registry_uri=project.client.tracking_uri))


def _load_pyfunc(project: Project, uri: str) -> subprocess.CompletedProcess:
    code = (f"import mlflow; m = mlflow.pyfunc.load_model({uri!r}); "
            "print('loaded version', m.unwrap_python_model().verified_version)")
    return subprocess.run([sys.executable, "-c", code], cwd=project.root, env=project.env, capture_output=True,
                          text=True, timeout=300)


def _load_champion(project: Project) -> subprocess.CompletedProcess:
    return _load_pyfunc(project, f"models:/{NAME}@{CHAMPION_ALIAS}")


def test_served_weights_swapped_with_their_hash_tag_refuse_to_load(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    loaded = _load_champion(project)
    assert loaded.returncode == 0 and f"loaded version {v2}" in loaded.stdout, loaded.stderr[-2000:]
    v1_weights = _served_dir(project, v1) / "artifacts" / "model.pt"
    shutil.copy2(v1_weights, _served_dir(project, v2) / "artifacts" / "model.pt")  # v1 served as v2...
    v1_sha = project.client.get_model_version(NAME, str(v1)).tags["artifact.sha256"]
    project.client.set_model_version_tag(NAME, str(v2), "artifact.sha256", v1_sha)  # ...with its hash recorded
    refused = _load_champion(project)
    assert refused.returncode != 0 and "differ from the signed attestation" in refused.stderr
    verify = project.fg("audit", "verify")
    assert verify.returncode == 1 and f"champion {v2}" in verify.stderr and "model.pt" in verify.stderr


def test_served_threshold_edit_refuses_to_load(project):
    v1, _, _ = project.versions
    project.promote_setup(v1)
    preprocess = _served_dir(project, v1) / "artifacts" / "preprocess.json"
    meta = json.loads(preprocess.read_text())
    meta["threshold"] = 1.0  # nothing would ever be flagged (in range: the loader refuses > 1)
    preprocess.write_text(json.dumps(meta))
    refused = _load_champion(project)
    assert refused.returncode != 0 and "preprocess.json" in refused.stderr
    assert project.fg("status").returncode == 1


def test_a_check_edited_in_the_stores_code_copy_passes_a_models_uri_load_but_model_pull_refuses_it(project, tmp_path):
    """MLflow puts the model's code/ copy of fraudguard first on sys.path, so a `models:/` load runs the store's
    check: an insider who edits it there loads anything. `fraudguard model pull` checks every file against the
    signed attestation with installed code before anything from the store runs."""
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    pulled = project.fg("model", "pull", str(tmp_path / "good"))
    assert pulled.returncode == 0 and f"version {v1}" in pulled.stdout, pulled.stderr[-2000:]
    assert "mlflow models serve -m" in pulled.stdout
    loaded = _load_pyfunc(project, str(tmp_path / "good"))  # the pulled copy still follows the audit log
    assert loaded.returncode == 0 and f"loaded version {v1}" in loaded.stdout, loaded.stderr[-2000:]

    check = _served_dir(project, v1) / "code" / "fraudguard" / "attestation.py"
    with check.open("a", encoding="utf-8") as out:  # the insider's edit: the load-time check does nothing
        out.write("\n\ndef verify_loaded_model(model_dir, verifier=None):\n    return None\n")
    unchecked = _load_champion(project)
    assert unchecked.returncode == 0 and "loaded version None" in unchecked.stdout, unchecked.stderr[-2000:]
    refused = project.fg("model", "pull", str(tmp_path / "edited"))
    assert refused.returncode == 1 and "code/ copy of fraudguard" in refused.stderr, refused.stderr[-2000:]
    assert "differ from the signed attestation" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "edited").exists() and not list(tmp_path.glob(".pull-*"))
    from fraudguard.errors import ModelError, RegistryError
    from fraudguard.serving.champion import pull_verified

    with pytest.raises(RegistryError, match=f"version {v2} was never promoted"):
        pull_verified(project.client, NAME, load_verifier(), tmp_path / "candidate", version=v2)
    with pytest.raises(ModelError, match="not an empty folder"):
        pull_verified(project.client, NAME, load_verifier(), tmp_path / "good")


def test_compiled_python_planted_in_the_stores_code_copy_is_refused_by_model_pull(project, tmp_path):
    """No digest covers `__pycache__` (Python writes it beside code it imports, so the manifest leaves it out), and
    Python runs an unchecked-hash .pyc in place of its source: planted in the store's code copy, the insider's
    check reached the pulled model, which every file check called clean."""
    import py_compile

    v1, _, _ = project.versions
    project.promote_setup(v1)
    code = _served_dir(project, v1) / "code" / "fraudguard"
    edited = tmp_path / "attestation.py"
    edited.write_text((code / "attestation.py").read_text(encoding="utf-8")
                      + "\n\ndef verify_loaded_model(model_dir, verifier=None):\n    return None\n", encoding="utf-8")
    planted = code / "__pycache__" / f"attestation.{sys.implementation.cache_tag}.pyc"
    planted.parent.mkdir(exist_ok=True)
    py_compile.compile(str(edited), cfile=str(planted), dfile=str(code / "attestation.py"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    refused = project.fg("model", "pull", str(tmp_path / "pulled"))
    assert refused.returncode == 1 and "compiled Python" in refused.stderr, refused.stderr[-2000:]
    assert "code/fraudguard/__pycache__" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "pulled").exists() and not list(tmp_path.glob(".pull-*"))


def test_a_pulled_model_of_a_version_rolled_back_from_since_the_pull_no_longer_loads(project, tmp_path):
    """The load-time check counted only blocks against a version that is not the champion: a copy of v2 pulled
    while it was champion kept loading after `fraudguard rollback` moved away from it, on every restart."""
    from fraudguard.errors import RegistryError
    from fraudguard.serving.champion import pull_verified

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    assert project.fg("model", "pull", str(tmp_path / "v2")).returncode == 0
    rolled = project.fg("rollback", "--reason", "v2 flags every night payment")
    assert rolled.returncode == 0 and project.champion == v1, rolled.stderr[-2000:]

    loaded = _load_pyfunc(project, str(tmp_path / "v2"))
    assert loaded.returncode != 0 and f"version {v2} was rolled back from" in loaded.stderr, loaded.stdout
    assert "v2 flags every night payment" in loaded.stderr
    with pytest.raises(RegistryError, match=f"version {v2} was rolled back from"):
        pull_verified(project.client, NAME, load_verifier(), tmp_path / "again", version=v2)
    back = project.fg("rollback", "--to", str(v2), "--reason", "false alarm")  # undoing the rollback serves it again
    assert back.returncode == 0 and project.champion == v2, back.stderr[-2000:]
    assert _load_pyfunc(project, str(tmp_path / "v2")).returncode == 0


def test_a_gateway_stops_serving_a_version_rolled_back_from_even_when_its_successor_cannot_load(project, tmp_path):
    """A failed switch kept the old model serving. After a rollback the old model is the one rolled away from: an
    insider who broke the restored version's files (or tags) held every replica on it. Now a replica drops a version
    the audit log disowns (503, /health says why); an earlier champion replaced by a promotion keeps serving."""
    from fraudguard.features import feature_names
    from fraudguard.serving.champion import ChampionFollower

    v1, v2, v3 = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2)
    follower = ChampionFollower(project.client, NAME, load_verifier(), tmp_path / "cache",
                                set(feature_names(project.settings.featurize)) | {"TX_AMOUNT"}, interval_s=3600)
    assert follower.check() and follower.current.version == v2
    rolled = project.fg("rollback", "--reason", "v2 flags every night payment")
    assert rolled.returncode == 0 and project.champion == v1, rolled.stderr[-2000:]
    weights = _served_dir(project, v1) / "artifacts" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")  # the insider breaks the restored version

    assert not follower.check()
    assert follower.current is None, "still serving the version the rollback removed"
    assert "differ from the signed attestation" in follower.status.last_error
    assert f"stopped serving version {v2}: model {NAME!r} version {v2} was rolled back from" in follower.status.last_error
    assert follower.status.failed_target[0] == v1

    weights.write_bytes(weights.read_bytes()[:-1])  # repaired: the next check serves the rollback's target
    assert follower.check() and follower.current.version == v1
    project.promote_setup(v3)
    weights = _served_dir(project, v3) / "artifacts" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")  # a promotion's new champion that fails to load ...
    assert not follower.check() and follower.current.version == v1  # ... leaves the good previous one serving


def _set_served_threshold(project: Project, version: int, threshold: float) -> None:
    preprocess = _served_dir(project, version) / "artifacts" / "preprocess.json"
    meta = json.loads(preprocess.read_text())
    meta["threshold"] = threshold
    preprocess.write_text(json.dumps(meta))


def _recording_gates(seen: list, of=lambda candidate, context: candidate.bundle) -> dict:
    """Stand-in gates that pass and record the threshold of a bundle they were handed (default: the candidate's)."""
    gates = dict(all_passing_gates())
    first = next(iter(gates))
    passing = gates[first]

    def record(candidate, context, settings):
        seen.append(of(candidate, context).threshold)
        return passing(candidate, context, settings)
    gates[first] = record
    return gates


def _prepare_promotion(project: Project, version: int, gates=None):
    return prepare(project.client, project.root, project.settings, version,
                   policy=committed_policy(project.root, project.settings), gates=gates or all_passing_gates())


def test_served_files_edited_after_registration_are_refused_before_any_gate(project):
    from fraudguard.errors import ModelError

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    entries = len(project.audit())
    served_preprocess = _served_dir(project, v2) / "artifacts" / "preprocess.json"
    registered = served_preprocess.read_bytes()
    _set_served_threshold(project, v2, 1.0)  # insider: the served copy, not the run's bundle/ folder
    seen: list = []
    with pytest.raises(ModelError, match="preprocess.json.*differ from what `fraudguard register` signed"):
        _prepare_promotion(project, v2, _recording_gates(seen))
    assert seen == [] and project.champion == v1 and len(project.audit()) == entries
    served_preprocess.write_bytes(registered)  # put back as registered: the gates test the signed, served copy
    run = _prepare_promotion(project, v2, _recording_gates(seen))
    outcome = decide(project.client, run, *run_gates(run), actor="red-team")
    assert seen == [json.loads(registered)["threshold"]] and outcome.promoted
    from fraudguard.attestation import PREPROCESS_SUBJECT, load_attestation
    from fraudguard.files import sha256_file
    from fraudguard.provenance import PROVENANCE_TAG
    from fraudguard.signing import sha256_text

    mv = project.client.get_model_version(NAME, str(v2))
    attestation = load_attestation(mv, outcome.attestation, load_verifier())
    assert attestation.subjects[PREPROCESS_SUBJECT] == sha256_file(served_preprocess)
    assert attestation.predicate["provenance"] == sha256_text(mv.tags[PROVENANCE_TAG])
    status = project.fg("status")
    assert f"build provenance {attestation.predicate['provenance'][:16]} checked before the gates" in status.stdout


def test_served_files_edited_while_registration_runs_are_never_signed(project):
    """The insider edits the served copy inside `fraudguard register`, after MLflow uploaded it and before the
    build provenance is signed. Registration compares the store's copy with the one it built and refuses to
    sign; the version is left without provenance, so no promotion takes it."""
    import threading
    import time

    from fraudguard.errors import ModelError, SignatureError
    from fraudguard.provenance import PROVENANCE_TAG
    from fraudguard.tracking import configure_mlflow, log_training_run

    v1, *_ = project.versions
    project.promote_setup(v1)
    entries = len(project.audit())
    logged_models = _served_dir(project, v1).parent.parent  # <artifact root>/models/<model id>/artifacts
    before = set(logged_models.iterdir())
    edited, stop = threading.Event(), threading.Event()

    def insider() -> None:  # polls the store's files for the new upload, as a script with file access would
        while not stop.is_set():
            for model_dir in set(logged_models.iterdir()) - before:
                preprocess = model_dir / "artifacts" / "artifacts" / "preprocess.json"
                try:
                    meta = json.loads(preprocess.read_text())
                except (OSError, ValueError):
                    continue  # not uploaded yet
                preprocess.write_text(json.dumps({**meta, "threshold": 1.0}))
                edited.set()
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=insider, daemon=True)
    watcher.start()
    try:
        configure_mlflow(project.root, project.settings.registry)
        with pytest.raises(ModelError, match=r"not what this registration built.*\(artifacts/preprocess.json\)"):
            log_training_run(project.root, project.settings, flow_run_id=None)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert edited.is_set()
    planted = max(int(mv.version) for mv in project.client.search_model_versions(f"name='{NAME}'"))
    assert planted > max(project.versions)
    assert PROVENANCE_TAG not in (project.client.get_model_version(NAME, str(planted)).tags or {})
    with pytest.raises(SignatureError, match="no signed build provenance"):
        _prepare_promotion(project, planted)
    assert project.champion == v1 and len(project.audit()) == entries


def test_a_version_registered_in_the_store_without_the_pipeline_key_is_never_promoted(project, tmp_path, caplog):
    """Anyone with write access to the store can register a model (here: v2's files with a threshold no fraud
    reaches). Every gate would pass it here (stand-ins); the build provenance only `fraudguard register` signs
    is what refuses it, and a provenance copied from a real version names the version it is for."""
    from fraudguard.errors import SignatureError
    from fraudguard.provenance import PROVENANCE_TAG

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    entries = len(project.audit())
    model_dir = tmp_path / "model"
    shutil.copytree(_served_dir(project, v2), model_dir)
    meta = json.loads((model_dir / "artifacts" / "preprocess.json").read_text())
    (model_dir / "artifacts" / "preprocess.json").write_text(json.dumps({**meta, "threshold": 1.0}))
    source = project.client.get_model_version(NAME, str(v2))
    run = project.client.create_run(project.client.get_run(source.run_id).info.experiment_id)
    project.client.log_artifacts(run.info.run_id, str(model_dir), "model")
    project.client.set_terminated(run.info.run_id)
    forged = project.client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model",
                                                 run_id=run.info.run_id,
                                                 tags={k: v for k, v in source.tags.items() if k != PROVENANCE_TAG})
    planted = int(forged.version)
    assert PROVENANCE_TAG not in (project.client.get_model_version(NAME, str(planted)).tags or {})
    with pytest.raises(SignatureError, match="no signed build provenance"):
        _prepare_promotion(project, planted)
    project.client.set_model_version_tag(NAME, str(planted), PROVENANCE_TAG, source.tags[PROVENANCE_TAG])
    with pytest.raises(SignatureError, match=f"is for 'fraudguard' version {v2} \\(copied from another version\\)"):
        _prepare_promotion(project, planted)
    refused = project.fg("promote")  # the newest version is the planted one: the CLI names why, no traceback
    assert refused.returncode == 1 and "build provenance" in refused.stderr and "Traceback" not in refused.stderr
    assert project.champion == v1 and len(project.audit()) == entries and project.verify().ok
    with caplog.at_level("WARNING", logger="fraudguard.promotion"):  # a dry run says so and still runs the gates
        dry = prepare(project.client, project.root, project.settings, planted, promote=False,
                      gates=all_passing_gates())
    assert dry.provenance is None and "dry run" in caplog.text and "build provenance" in caplog.text


def test_served_files_swapped_after_the_gates_ran_are_never_signed_or_promoted(project):
    from fraudguard.errors import ModelError

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    entries_before = len(project.audit())
    run = prepare(project.client, project.root, project.settings, v2,
                  policy=committed_policy(project.root, project.settings), gates=all_passing_gates())
    results, durations = run_gates(run)
    _set_served_threshold(project, v2, 1.0)  # insider: between the gates' verdict and the signature
    with pytest.raises(ModelError, match="changed after the gates tested them"):
        decide(project.client, run, results, durations, actor="red-team")
    assert project.champion == v1 and len(project.audit()) == entries_before
    tags = project.client.get_model_version(NAME, str(v2)).tags
    assert not [key for key in tags if key.startswith("fraudguard.attestation")]
    assert project.fg("status").returncode == 0


def _run_artifact(project: Project, version: int, artifact: str) -> Path:
    """The file of `version`'s run in the store (a local artifact root: what an insider with store access edits)."""
    run_id = project.client.get_model_version(NAME, str(version)).run_id
    return Path(project.client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / artifact


def _promote_with_the_real_data_changes_gate(project: Project, version: int):
    """A promotion whose data_changes gate is the real one (the others stand in): its outcome and that gate's result."""
    from fraudguard.gates.data_changes import NAME as DATA_CHANGES, run_data_changes_gate

    report_dir = project.root / "reports" / "under-test" / f"v{version}-{len(project.audit())}"
    report_dir.mkdir(parents=True, exist_ok=True)
    run = prepare(project.client, project.root, project.settings, version,
                  policy=committed_policy(project.root, project.settings),
                  gates={**all_passing_gates(), DATA_CHANGES: run_data_changes_gate},
                  candidate=candidate_for(project.client, NAME, version),
                  context=simple_context(project.settings, project.root, report_dir))
    results, durations = run_gates(run)
    outcome = decide(project.client, run, results, durations, actor="red-team")
    return outcome, next(r for r in results if r.name == DATA_CHANGES)


# What validate records for data whose fraud rate moved beyond the factor (labels flipped by an import).
FRAUD_RATE_CHANGE_FOUND = {"inputs": {"data/raw/transactions.parquet": "a" * 32},
                           "history": {"checked": True, "label_changes": 611, "changed_history": 0},
                           "fraud_rate_change": {"checked": True, "previous": 0.0089, "current": 0.0062,
                                                 "factor": 1.43, "max_factor": 1.25, "exceeded": True}}


def test_a_validation_report_rewritten_in_the_candidates_run_is_never_the_data_gates_reading(project):
    """The data_changes gate's verdict is signed. It judges the validation report of the checkout the gates read;
    the candidate run's copy in the store (which an insider can rewrite) must name the same data and agree."""
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    found = copy.deepcopy(FRAUD_RATE_CHANGE_FOUND)
    (project.root / "reports" / "validation.json").write_text(json.dumps(found))  # what validate found here
    run_copy = _run_artifact(project, v2, "reports/validation.json")
    assert run_copy.is_file()
    hidden = {**found, "history": {**found["history"], "label_changes": 0},
              "fraud_rate_change": {**found["fraud_rate_change"], "current": 0.0089, "factor": 1.0, "exceeded": False}}
    run_copy.write_text(json.dumps(hidden))  # the insider's edit: nothing changed
    outcome, gate = _promote_with_the_real_data_changes_gate(project, v2)
    assert outcome.blocked and project.champion == v1
    assert "disagrees with the checkout's for the same data on fraud_rate_change, history" in gate.reason

    run_copy.write_text(json.dumps({**hidden, "inputs": {"data/raw/transactions.parquet": "b" * 32}}))
    outcome, gate = _promote_with_the_real_data_changes_gate(project, v2)
    assert outcome.blocked and f"validated on data {'b' * 32} but this checkout holds {'a' * 32}" in gate.reason

    run_copy.write_text(json.dumps(found))  # as registered from this checkout: the finding itself is judged
    outcome, gate = _promote_with_the_real_data_changes_gate(project, v2)
    assert outcome.blocked and "fraud rate 0.0089 -> 0.0062" in gate.reason and "not acknowledged" in gate.reason
    assert project.champion == v1 and project.verify().ok


def test_an_acknowledgement_nobody_committed_does_not_pass_the_data_gate_of_a_promotion(project):
    """An acknowledgement is a reviewer's word, and review happens on commits: one written into the working tree
    (by `fraudguard data acknowledge` or by hand) and never committed used to pass the data_changes gate."""
    import subprocess

    from fraudguard.gates.data_changes import acknowledge_data_changes

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    found = copy.deepcopy(FRAUD_RATE_CHANGE_FOUND)
    (project.root / "reports" / "validation.json").write_text(json.dumps(found))
    _run_artifact(project, v2, "reports/validation.json").write_text(json.dumps(found))
    acks = project.settings.gates.data_changes.acknowledgements
    acknowledge_data_changes(found, project.root / acks, "insider", "looks fine to me")
    outcome, gate = _promote_with_the_real_data_changes_gate(project, v2)
    assert outcome.blocked and project.champion == v1 and "not acknowledged" in gate.reason
    assert f"the working tree's {acks} acknowledges this data, but commit" in gate.reason
    assert project.verify().ok

    git = ["git", "-c", "user.name=reviewer", "-c", "user.email=reviewer@example.com"]
    subprocess.run([*git, "add", "-f", str(acks)], cwd=project.root, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-m", "acknowledge the chargeback review"], cwd=project.root, check=True,
                   capture_output=True)
    outcome, gate = _promote_with_the_real_data_changes_gate(project, v2)
    assert gate.passed and "acknowledged by insider" in gate.reason
    assert project.champion == v2 and project.verify().ok


def test_a_drift_reference_swapped_into_the_candidates_run_is_never_signed(project):
    """The monitor compares live traffic with the drift reference the champion's attestation signs. A promotion
    from the checkout signs the run's sample only when it is the sample of the checkout's training features."""
    import pandas as pd

    from fraudguard.errors import RegistryError
    from fraudguard.names import REFERENCE_ARTIFACT

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    entries = len(project.audit())
    reference = _run_artifact(project, v2, REFERENCE_ARTIFACT)
    honest = reference.read_bytes()

    def promote_from_checkout():
        run = prepare(project.client, project.root, project.settings, v2,
                      policy=committed_policy(project.root, project.settings), gates=all_passing_gates())
        return decide(project.client, run, *run_gates(run), actor="red-team")

    # The insider's swap: the test split as the "training" sample, so any recent traffic looks undrifted.
    pd.read_parquet(project.root / "data" / "features" / "test.parquet").to_parquet(reference, index=False)
    with pytest.raises(RegistryError, match="is not the sample of this checkout's training features"):
        promote_from_checkout()
    assert project.champion == v1 and len(project.audit()) == entries  # refused before any gate or record
    # Deleted before the promotion: it was signed without one, and a sample planted after it was read as the
    # champion's reference by the monitor and the next drift gate.
    reference.unlink()
    with pytest.raises(RegistryError, match="register it again"):
        promote_from_checkout()
    assert project.champion == v1 and len(project.audit()) == entries
    reference.write_bytes(honest)
    outcome = promote_from_checkout()
    assert outcome.promoted and project.champion == v2
    from fraudguard.attestation import REFERENCE_SUBJECT, load_attestation
    from fraudguard.files import sha256_file

    signed = load_attestation(project.client.get_model_version(NAME, str(v2)), outcome.attestation, load_verifier())
    assert signed.subjects[REFERENCE_SUBJECT] == sha256_file(reference)


def test_a_worse_champion_copy_planted_in_the_store_is_never_the_quality_gates_reference(project):
    from fraudguard.errors import RegistryError
    from fraudguard.files import sha256_file
    from fraudguard.names import PREPROCESS_ARTIFACT, PREPROCESS_SHA_TAG, REFERENCE_ARTIFACT

    v1, v2, _ = project.versions
    project.promote_setup(v1)
    real_threshold = json.loads((_served_dir(project, v1) / "artifacts" / "preprocess.json").read_text())["threshold"]
    # Insider: a champion that never flags fraud makes any candidate look non-inferior. First the run's
    # bundle/ copy, with its sha256 tag rewritten to match (what the gates used to load).
    planted = _run_artifact(project, v1, PREPROCESS_ARTIFACT)
    meta = json.loads(planted.read_text())
    meta["threshold"] = 1.0
    planted.write_text(json.dumps(meta))
    project.client.set_model_version_tag(NAME, str(v1), PREPROCESS_SHA_TAG, sha256_file(planted))
    seen: list = []
    run = prepare(project.client, project.root, project.settings, v2,
                  policy=committed_policy(project.root, project.settings), gates=_recording_gates(seen, of=lambda candidate, context: context.champion.bundle))
    run_gates(run)
    assert seen == [real_threshold], "the champion compared with must be the signed one, not an editable copy"
    # The data it was gated on comes from the same signed attestation (the data_changes gate compares with it).
    assert run.context.champion.gated_data_md5 == "feedfacefeedfacefeedfacefeedface.dir"
    # Then the served copy itself, and then the drift reference: refused before any gate runs, nothing recorded.
    entries_before = len(project.audit())
    served = _served_dir(project, v1) / "artifacts" / "preprocess.json"
    signed_bytes = served.read_bytes()
    _set_served_threshold(project, v1, 1.0)
    with pytest.raises(RegistryError, match="differ from the signed attestation"):
        prepare(project.client, project.root, project.settings, v2,
                policy=committed_policy(project.root, project.settings), gates=all_passing_gates())
    served.write_bytes(signed_bytes)
    reference = _run_artifact(project, v1, REFERENCE_ARTIFACT)
    reference.write_bytes(reference.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="differs from the digest its signed attestation holds"):
        prepare(project.client, project.root, project.settings, v2,
                policy=committed_policy(project.root, project.settings), gates=all_passing_gates())
    assert project.champion == v1 and len(project.audit()) == entries_before


def test_the_red_team_suite_attacks_the_signed_champion_and_refuses_an_altered_one(project, tmp_path):
    from fraudguard.errors import ModelError
    from fraudguard.paths import ProjectPaths
    from fraudguard.redteam.suite import load_target

    v1, _, _ = project.versions
    project.promote_setup(v1)
    bundle, described = load_target(ProjectPaths.at(project.root), project.settings.registry, "champion",
                                    tmp_path / "first")
    assert described.startswith(f"champion (version {v1}, attestation ")
    _set_served_threshold(project, v1, 1.0)  # attacking a planted copy would report on a model nobody serves
    with pytest.raises(ModelError, match="differ from the signed attestation"):
        load_target(ProjectPaths.at(project.root), project.settings.registry, "champion", tmp_path / "second")


def test_lineage_tags_forged_before_promotion_are_signed_as_claims_that_differ_from_the_gated_checkout(project):
    from fraudguard.attestation import load_attestation
    from fraudguard.lineage import data_md5, git_state
    from fraudguard.paths import ProjectPaths

    v1, _, _ = project.versions
    forged = {"lineage.git_commit": "c0ffee" * 6 + "c0ff", "lineage.data_md5": "0" * 32}
    for key, value in forged.items():  # insider: write access to the store, no key
        project.client.set_model_version_tag(NAME, str(v1), key, value)
    run = prepare(project.client, project.root, project.settings, v1,
                  policy=committed_policy(project.root, project.settings), gates=all_passing_gates())
    outcome = decide(project.client, run, *run_gates(run), actor="red-team")
    predicate = load_attestation(project.client.get_model_version(NAME, str(v1)), outcome.attestation,
                                 load_verifier()).predicate
    assert predicate["lineage"]["data_md5"] == "0" * 32  # the claim, recorded as a claim
    assert predicate["gated_workspace"]["data_md5"] == data_md5(ProjectPaths.at(project.root).raw_dvc_file)
    assert predicate["gated_workspace"]["git_commit"] == git_state(project.root)[0]
    assert predicate["lineage_check"]["data_md5"] == "differs"
    assert predicate["lineage_check"]["git_commit"] == "differs"
    status = project.fg("status")
    assert "signed lineage.data_md5 = " + "0" * 32 + " (differs against the gated checkout)" in status.stdout


def test_pyfunc_load_trusts_the_audit_log_not_an_attestation_left_by_a_killed_promotion(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    killed = project.fg("promote", "--version", str(v2), crash_after="attestation")  # signed, never committed
    assert _killed(killed), killed.stderr[-2000:]
    by_number = _load_pyfunc(project, f"models:/{NAME}/{v2}")  # still a candidate: loads, verifies nothing
    assert by_number.returncode == 0 and "loaded version None" in by_number.stdout, by_number.stderr[-2000:]
    project.client.set_registered_model_alias(NAME, CHAMPION_ALIAS, str(v2))  # insider: the UI's alias editor
    refused = _load_champion(project)
    assert refused.returncode != 0 and "moved outside fraudguard" in refused.stderr, refused.stderr[-2000:]


# ----------------------------------------------------------------------------------------- case 10

def test_champion_moved_by_hand_to_a_blocked_version_is_detected_refused_and_restorable(project):
    v1, v2, _ = project.versions
    project.promote_setup(v1)
    project.promote_setup(v2, gates={**all_passing_gates(), "privacy": failing_gate("privacy")})
    project.client.set_registered_model_alias(NAME, CHAMPION_ALIAS, str(v2))  # the UI's alias editor
    status = project.fg("status")
    assert status.returncode == 1 and "moved outside fraudguard" in status.stdout
    verify = project.fg("audit", "verify")
    assert verify.returncode == 1 and "moved outside fraudguard" in verify.stderr
    loaded = _load_champion(project)
    assert loaded.returncode != 0 and "moved outside fraudguard" in loaded.stderr
    promote = project.fg("rollback")
    assert promote.returncode == 1 and "audit recover" in promote.stderr

    recovered = project.fg("audit", "recover")
    assert recovered.returncode == 0 and f"restored to {v1}" in recovered.stdout
    assert project.champion == v1 and project.fg("status").returncode == 0


# ----------------------------------------------------------------------------------------- case 11

def test_status_tags_and_plain_rollback_stay_true_after_rolling_back_and_forth(project):
    v1, _, v3 = project.versions
    project.promote_setup(v1)
    project.promote_setup(v3)
    assert project.fg("rollback").returncode == 0 and project.champion == v1
    back = project.fg("rollback", "--to", str(v3), "--reason", "v3 was fine after all")
    assert back.returncode == 0 and project.champion == v3

    def status_of(version):
        return project.client.get_model_version(NAME, str(version)).tags.get("fraudguard.status")

    assert status_of(v3) == "champion" and status_of(v1) == "retired"
    assert set(project.client.get_registered_model(NAME).aliases) == {CHAMPION_ALIAS}
    plain = project.fg("rollback")
    assert plain.returncode == 0 and project.champion == v1, plain.stderr
    status = project.fg("status")
    assert status.returncode == 0 and "v3 was fine after all" in status.stdout and "red-team" in status.stdout
    assert "## Champion history" in project.client.get_registered_model(NAME).description


def test_cli_never_shows_a_traceback_when_the_store_is_unreachable(project):
    out = project.fg("status", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "FRAUDGUARD_STORE_RETRY_S": "1"},
                     timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr and out.stderr.count("\n") <= 3, out.stderr
