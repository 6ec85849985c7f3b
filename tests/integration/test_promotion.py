"""Gated promotion and rollback against a real sqlite MLflow store (custom gates where ML gates don't matter)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fraudguard.errors import RegistryError
from fraudguard.gates.base import GateResult
from fraudguard.promotion import STEP_BACK_REASON, discover_gates, promote_version, rollback
from fraudguard.registry import (
    ChampionChange,
    champion_history,
    get_champion_version,
    previous_champion,
    read_audit_log,
)
from fraudguard.signing import load_verifier
from fraudguard.verification import verify_registry

from registry_helpers import (
    all_passing_gates,
    artifact_file,
    candidate_for,
    failing_gate,
    make_client,
    passing_gate,
    promote_with_gates,
    register_version,
    simple_context,
)

NAME = "fraudguard"


@pytest.fixture
def world(tmp_path, small_settings):
    client = make_client(tmp_path / "store")
    versions = [register_version(client, NAME, tmp_path / f"w{i}", f"weights-{i}".encode()) for i in range(3)]
    return client, versions, small_settings, tmp_path


def _promote(world, version, gates, promote=True):
    client, _, settings, tmp_path = world
    if not promote:
        from fraudguard.policy import policy_from_settings

        report_dir = tmp_path / "reports" / f"v{version}"
        report_dir.mkdir(parents=True, exist_ok=True)
        return promote_version(client, tmp_path, settings, version=version, promote=False, actor="tester",
                               gates=gates, candidate=candidate_for(client, NAME, version),
                               context=simple_context(settings, tmp_path, report_dir),
                               policy=policy_from_settings(settings, "test"))
    return promote_with_gates(client, NAME, version, settings, tmp_path, gates)


OK_GATE_NAMES = ["quality", "privacy"]


def _ok_gates(report_dir=None):
    return {"quality": passing_gate("quality", report_dir), "privacy": passing_gate("privacy")}


def _rollback(world, **kwargs):
    client, _, settings, _ = world
    return rollback(client, settings, required_gates=OK_GATE_NAMES, **kwargs)


def _snapshot(client, version):
    """Everything a failed promotion must leave alone: champion alias, its tags, history."""
    return (get_champion_version(client, NAME), dict(client.get_model_version(NAME, str(version)).tags),
            champion_history(client, NAME))


def test_all_gates_passing_moves_champion_with_a_signed_attestation(world):
    client, (v1, _, _), _, tmp_path = world
    outcome = _promote(world, v1, _ok_gates())
    assert outcome.promoted and not outcome.blocked and outcome.champion_after == v1
    aliases = client.get_registered_model(NAME).aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": v1}
    entry = read_audit_log(client, NAME)[-1]
    assert (entry.action, entry.phase, entry.to_version, entry.actor) == ("promote", "commit", v1, "tester")
    assert entry.gates == {"quality": "passed", "privacy": "passed"}
    report = verify_registry(client, NAME, load_verifier())
    assert report.ok, report.problems
    assert report.champion_attestation.gates["quality"]["thresholds"] == {"min_score": 0.5}


def test_verdicts_are_recorded_as_tags_table_and_run_artifacts(world):
    client, (v1, _, _), _, tmp_path = world
    report_dir = tmp_path / "reports" / f"v{v1}"
    report_dir.mkdir(parents=True)
    _promote(world, v1, _ok_gates(report_dir))
    mv = client.get_model_version(NAME, str(v1))
    assert mv.tags["gate.quality"] == "passed" and mv.tags["gate.privacy"] == "passed"
    assert "| quality | passed |" in mv.description
    logged = {a.path for a in client.list_artifacts(mv.run_id, "gates/quality")}
    assert "gates/quality/quality_report.json" in logged
    assert "gates/gate_summary.json" in {a.path for a in client.list_artifacts(mv.run_id, "gates")}
    run_metrics = client.get_run(mv.run_id).data.metrics  # the compare view shows gate figures per version
    assert run_metrics["gate.quality.score"] == 1.0 and run_metrics["gate.privacy.passed"] == 1.0


def test_failing_gate_leaves_champion_exactly_as_it_was(world):
    client, (v1, v2, _), _, _ = world
    _promote(world, v1, _ok_gates())
    before = _snapshot(client, v1)
    outcome = _promote(world, v2, {**_ok_gates(), "robustness": failing_gate("robustness")})
    assert outcome.blocked and not outcome.promoted and "robustness" in outcome.summary()
    assert _snapshot(client, v1) == before
    assert outcome.failed_gates == ["robustness"]
    tags = client.get_model_version(NAME, str(v2)).tags
    assert tags["fraudguard.status"] == "blocked" and "robustness" in tags["fraudguard.blocked_reasons"]
    assert tags["gate.robustness"] == "failed"
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.from_version, last.to_version) == ("block", v1, v2)
    assert set(client.get_registered_model(NAME).aliases) == {"champion"}


def test_gate_that_raises_counts_as_failed_with_the_error_as_reason(world):
    client, (v1, _, _), _, _ = world

    def exploding(candidate, context, settings) -> GateResult:
        raise ValueError("feature matrix has NaN in column TX_AMOUNT")

    outcome = _promote(world, v1, {**_ok_gates(), "exploding": exploding})
    assert outcome.blocked and outcome.failed_gates == ["exploding"]
    assert "NaN in column TX_AMOUNT" in outcome.results[-1].reason
    assert get_champion_version(client, NAME) is None


def test_gates_run_concurrently(world):
    client, (v1, _, _), _, _ = world
    barrier = threading.Barrier(2, timeout=20)

    def meeting(name):
        def run(candidate, context, settings) -> GateResult:
            barrier.wait()  # only returns if the other gate runs at the same time
            return GateResult(name, True, {}, {}, "met the other gate")
        return run

    outcome = _promote(world, v1, {"a": meeting("a"), "b": meeting("b")})
    assert outcome.promoted and [r.passed for r in outcome.results] == [True, True]


def test_concurrent_gates_each_score_their_own_copy_of_the_candidate_and_champion_models(world):
    """Gates run at once in threads; a torch module shared between a gate taking gradients (ART) and gates
    scoring it crashed the flow process (SIGSEGV in libtorch). Each gate gets copies no other gate holds."""
    import dataclasses

    import torch

    from fraudguard.gates.base import ModelUnderTest
    from fraudguard.model import FraudMLP, ModelBundle, Standardizer
    from fraudguard.policy import policy_from_settings
    from fraudguard.promotion import promote_version

    from registry_helpers import simple_context

    client, (v1, _, _), settings, tmp_path = world
    features = tuple(settings.model.features)

    def bundle(seed: int) -> ModelBundle:
        torch.manual_seed(seed)
        module = FraudMLP(len(features), (4,), 0.0).eval()
        return ModelBundle(module, Standardizer(features, np.zeros(len(features)), np.ones(len(features))),
                           (4,), 0.0, threshold=0.5)

    candidate = dataclasses.replace(candidate_for(client, NAME, v1), bundle=bundle(1))
    report_dir = tmp_path / "reports" / "copies"
    report_dir.mkdir(parents=True)
    context = dataclasses.replace(simple_context(settings, tmp_path, report_dir),
                                  champion=ModelUnderTest(bundle=bundle(2), version=None))
    barrier = threading.Barrier(3, timeout=20)
    seen: dict[str, tuple] = {}

    def recording(name):
        def run(candidate_seen, context_seen, _settings) -> GateResult:
            barrier.wait()  # all three gates hold their models at the same time
            seen[name] = (candidate_seen.bundle, context_seen.champion.bundle, context_seen.train_features)
            return GateResult(name, True, {}, {}, "recorded its models")
        return run

    outcome = promote_version(client, tmp_path, settings, version=v1, promote=False, actor="tester",
                              gates={name: recording(name) for name in ("a", "b", "c")}, candidate=candidate,
                              context=context, policy=policy_from_settings(settings, "test"))
    assert [r.passed for r in outcome.results] == [True, True, True]
    modules = [m for cand, champ, _ in seen.values() for m in (cand.module, champ.module)]
    originals = (candidate.bundle.module, context.champion.bundle.module)
    assert len({id(m) for m in (*modules, *originals)}) == 8, "a torch module was shared between gates"
    x = torch.randn(16, len(features))
    for cand, champ, frame in seen.values():
        assert torch.equal(cand.module(x), candidate.bundle.module(x))  # same weights: a copy, not a new model
        assert torch.equal(champ.module(x), context.champion.bundle.module(x))
        assert frame is context.train_features  # the data, only read, is not copied


def test_dry_run_tags_the_version_but_moves_no_alias(world):
    client, (v1, _, _), _, _ = world
    outcome = _promote(world, v1, _ok_gates(), promote=False)
    assert outcome.dry_run and not outcome.promoted
    assert client.get_registered_model(NAME).aliases == {}
    assert client.get_model_version(NAME, str(v1)).tags["gate.quality"] == "passed"
    assert read_audit_log(client, NAME) == []


def test_promote_defaults_to_the_newest_version(world):
    client, (_, _, v3), settings, tmp_path = world
    report_dir = tmp_path / "reports" / "newest"
    report_dir.mkdir(parents=True)
    from fraudguard.policy import policy_from_settings

    outcome = promote_version(client, tmp_path, settings, gates=_ok_gates(),
                              candidate=candidate_for(client, NAME, v3),
                              context=simple_context(settings, tmp_path, report_dir),
                              policy=policy_from_settings(settings, "test"))
    assert outcome.version == v3 and get_champion_version(client, NAME) == v3


def test_a_failed_run_does_not_block_the_version_another_run_made_champion_while_its_gates_ran(world):
    """Two runs gating one version (a reused identical version): B promotes it while A's gates fail. A's block of
    the serving champion disowned it for new replicas while `status` and `audit verify` called it verified."""
    from fraudguard.registry import ChampionChanged, committed_champion_attestation, read_state

    client, (v1, v2, _), settings, tmp_path = world
    _promote(world, v1, _ok_gates())

    def failing_after_the_other_run_promotes(candidate, context, section) -> GateResult:
        assert promote_with_gates(client, NAME, v2, settings, tmp_path / "run-b", _ok_gates()).promoted
        return GateResult("quality", False, {"average_precision": 0.1}, {}, "run A's data says no")

    with pytest.raises(ChampionChanged, match=f"version {v2} became the champion while these gates ran"):
        _promote(world, v2, {"quality": failing_after_the_other_run_promotes, "privacy": passing_gate("privacy")})
    assert get_champion_version(client, NAME) == v2
    assert [e.action for e in read_audit_log(client, NAME)].count("block") == 0
    assert committed_champion_attestation(read_state(client, NAME, load_verifier()))[0] == v2
    assert client.get_model_version(NAME, str(v2)).tags["fraudguard.status"] == "champion"
    assert verify_registry(client, NAME, load_verifier()).ok


def test_an_alias_moved_by_hand_while_the_gates_ran_does_not_keep_the_block_out_of_the_log(world):
    """The insider points `champion` at the candidate while its gates run and back afterwards: the block used to be
    skipped as "became the champion" (the alias was read, not the signed log), and the failed version then loaded
    as a never-judged candidate."""
    from fraudguard.registry import disowned_reason, read_state

    client, (v1, v2, _), settings, tmp_path = world
    _promote(world, v1, _ok_gates())

    def failing_with_the_alias_moved(candidate, context, section) -> GateResult:
        client.set_registered_model_alias(NAME, "champion", str(v2))
        return GateResult("quality", False, {"average_precision": 0.1}, {}, "below the floor")

    outcome = _promote(world, v2, {"quality": failing_with_the_alias_moved, "privacy": passing_gate("privacy")})
    assert outcome.blocked
    client.set_registered_model_alias(NAME, "champion", str(v1))  # and back
    blocks = [e for e in read_audit_log(client, NAME) if e.action == "block"]
    assert [(e.to_version, e.from_version) for e in blocks] == [(v2, v1)]
    assert disowned_reason(read_state(client, NAME, load_verifier()), v2)
    assert verify_registry(client, NAME, load_verifier()).ok


def test_rollback_restores_the_previous_champion_and_is_audited(world):
    client, (v1, v2, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    _promote(world, v2, _ok_gates())
    outcome = _rollback(world, reason="v2 flags every night transaction", actor="oncall")
    assert (outcome.from_version, outcome.to_version) == (v2, v1)
    assert get_champion_version(client, NAME) == v1
    assert client.get_model_version(NAME, str(v2)).tags["fraudguard.status"] == "rolled_back_from"
    assert client.get_model_version(NAME, str(v1)).tags["fraudguard.status"] == "champion"
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.phase, last.from_version, last.to_version, last.actor) == \
        ("rollback", "commit", v2, v1, "oncall")
    assert last.reasons == ("v2 flags every night transaction", STEP_BACK_REASON)
    assert champion_history(client, NAME)[-1].action == "rollback"
    assert verify_registry(client, NAME, load_verifier()).ok


def test_rollback_to_altered_served_weights_is_refused_and_changes_nothing(world):
    client, (v1, v2, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    _promote(world, v2, _ok_gates())
    artifact_file(client, NAME, v1, served=True).write_bytes(b"weights swapped by an attacker")
    before = (_snapshot(client, v2), read_audit_log(client, NAME))
    with pytest.raises(RegistryError, match=f"version {v1}.*model.pt.*differ from the signed attestation"):
        _rollback(world)
    assert (_snapshot(client, v2), read_audit_log(client, NAME)) == before


def test_rollback_to_a_version_that_failed_a_gate_is_refused(world):
    client, (v1, v2, v3), settings, _ = world
    _promote(world, v1, _ok_gates())
    assert _promote(world, v2, {"quality": failing_gate("quality")}).blocked
    with pytest.raises(RegistryError, match="blocked at audit entry"):
        _rollback(world, to_version=v2)
    assert get_champion_version(client, NAME) == v1


def test_rollback_without_history_names_the_way_out(world):
    client, (v1, _, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    with pytest.raises(RegistryError, match="--to.*to_version"):
        _rollback(world)


def test_previous_champion_skips_versions_rolled_back_from():
    def change(seq, version, previous, action):
        return ChampionChange(seq, version, previous, action, "t", "a")

    history = [change(1, 1, None, "promote"), change(2, 2, 1, "promote"), change(3, 3, 2, "promote"),
               change(4, 2, 3, "rollback")]
    assert previous_champion(history, current=2) == 1
    assert previous_champion(history + [change(5, 3, 2, "promote")], current=3) == 2


def test_rollback_back_to_a_version_undoes_the_earlier_rollback():
    """Case 11: away from v3, back to v3; a plain rollback then finds v1 again."""
    def change(seq, version, previous, action):
        return ChampionChange(seq, version, previous, action, "t", "a")

    history = [change(1, 1, None, "promote"), change(2, 3, 1, "promote"), change(3, 1, 3, "rollback"),
               change(4, 3, 1, "rollback")]
    assert previous_champion(history, current=3) == 1


def test_gates_are_discovered_from_params_sections(small_settings):
    from fraudguard.gates.table import GATE_TABLE

    gates = discover_gates(small_settings.gates)
    assert list(gates) == list(small_settings.gates.model_dump())
    assert all(gates[name] == GATE_TABLE[name].run for name in gates)


@pytest.fixture
def tracked_project(tmp_path, monkeypatch):
    """A project with two versions registered by the real tracking code (random-weight bundles)."""
    import torch

    from fraudguard.config import load_settings
    from fraudguard.tracking import configure_mlflow, log_training_run
    from registry_helpers import commit_params, write_pipeline_outputs

    torch.set_num_threads(1)
    root = tmp_path / "project"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    versions = []
    for seed in (0, 1):
        write_pipeline_outputs(root, seed)
        settings = load_settings(root / "params.yaml")
        client = configure_mlflow(root, settings.registry)
        versions.append(log_training_run(root, settings).version)
    commit_params(root)
    return client, root, settings, versions


def _cli():
    import typer

    from fraudguard.cli import registry as registry_commands

    app = typer.Typer()
    registry_commands.register(app)
    return app


@pytest.mark.slow
def test_promotion_builds_its_context_from_the_registry_and_feature_files(tracked_project):
    import pandas as pd

    from fraudguard.gates.drift import run_drift_gate

    client, root, settings, (v1, v2) = tracked_project
    seen = {}

    def probe(candidate, context, settings_) -> GateResult:
        seen[candidate.version] = (candidate, context)
        return GateResult("probe", True, {}, {}, "looked at the context")

    gates = {"drift": run_drift_gate, "probe": probe}
    promote_version(client, root, settings, version=v1, gates=gates)
    outcome = promote_version(client, root, settings, version=v2, gates=gates)
    assert outcome.promoted and outcome.champion_before == v1
    candidate, context = seen[v2]
    assert candidate.bundle.predict_proba(context.test_features).shape == (len(context.test_features),)
    assert context.champion.version == v1 and set(settings.model.features) <= set(context.champion.train_features)
    assert seen[v1][1].champion is None
    window_start = context.test_features["TX_DATETIME"].max() - pd.Timedelta(days=settings.gates.drift.window_days)
    assert 0 < len(context.newest_window) < len(context.test_features)
    assert context.newest_window["TX_DATETIME"].min() > window_start
    assert (root / "reports" / "gates" / f"v{v2}" / "drift_vs_champion.html").exists()


@pytest.mark.slow
def test_cli_rollback_status_and_audit_verify(tracked_project):
    from typer.testing import CliRunner

    client, root, settings, (v1, v2) = tracked_project
    for version in (v1, v2):
        _promote_tracked(client, root, settings, version)
    runner = CliRunner()
    result = runner.invoke(_cli(), ["rollback", "--reason", "bad night", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert f"champion: {v2} -> {v1}" in result.output and get_champion_version(client, NAME) == v1
    status = runner.invoke(_cli(), ["status", "--root", str(root)])
    assert status.exit_code == 0, status.output
    assert f"champion: {v1}" in status.output
    assert "rollback" in status.output and "lineage.git_commit" in status.output
    assert "record verified" in status.output
    verify = runner.invoke(_cli(), ["audit", "verify", "--root", str(root)])
    assert verify.exit_code == 0 and "6 entries" in verify.output


@pytest.mark.slow
def test_cli_rollback_to_tampered_weights_exits_1_and_names_the_version(tracked_project):
    from typer.testing import CliRunner

    from registry_helpers import served_weights_file

    client, root, settings, (v1, v2) = tracked_project
    for version in (v1, v2):
        _promote_tracked(client, root, settings, version)
    weights = served_weights_file(client, NAME, v1)
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    result = CliRunner().invoke(_cli(), ["rollback", "--root", str(root)])
    assert result.exit_code == 1
    assert f"version {v1}" in result.output and "differ from the signed attestation" in result.output
    assert get_champion_version(client, NAME) == v2


@pytest.mark.slow
def test_cli_promote_with_every_configured_gate_blocks_a_random_model(tracked_project):
    from typer.testing import CliRunner

    client, root, settings, (v1, _) = tracked_project
    result = CliRunner().invoke(_cli(), ["promote", "--version", str(v1), "--root", str(root)])
    assert result.exit_code == 1
    # No src/ under the temporary project: static analysis fails closed; a random model fails quality.
    assert "static_analysis" in result.output and "quality" in result.output
    assert get_champion_version(client, NAME) is None
    tags = client.get_model_version(NAME, str(v1)).tags
    assert set(settings.gates.model_dump()) <= {k.removeprefix("gate.") for k in tags if k.startswith("gate.")}


def _promote_tracked(client, root, settings, version):
    return promote_version(client, root, settings, version=version, gates=all_passing_gates())


def test_each_gate_receives_its_own_params_section(world):
    client, (v1, _, _), settings, _ = world
    received = {}

    def recorder(name):
        def run(candidate, context, section) -> GateResult:
            received[name] = section
            return GateResult(name, True, {}, {}, "recorded")
        return run

    _promote(world, v1, {"drift": recorder("drift"), "custom": recorder("custom")})
    assert received == {"drift": settings.gates.drift, "custom": None}


@pytest.mark.slow
def test_cli_audit_verify_exits_1_naming_the_edited_entry(tracked_project):
    import json

    from typer.testing import CliRunner

    client, root, settings, (v1, v2) = tracked_project
    for version in (v1, v2):
        _promote_tracked(client, root, settings, version)
    entry = json.loads(client.get_registered_model(NAME).tags["audit.000001"])
    entry["reasons"] = ["nothing to see here"]
    client.set_registered_model_tag(NAME, "audit.000001", json.dumps(entry))
    result = CliRunner().invoke(_cli(), ["audit", "verify", "--root", str(root)])
    assert result.exit_code == 1 and "audit entry 1" in result.output
