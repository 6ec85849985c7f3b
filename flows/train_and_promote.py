"""Prefect flow `train-and-promote`: DVC data -> stages -> MLflow version -> gates -> champion.

Thin by design: every task calls one fraudguard library function. Heavy libraries (torch, ART,
Evidently, MLflow) are imported inside the tasks, so loading this file for a deployment is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote


def _project_root() -> Path:
    # The deployment's pull step sets the working directory to the project checkout.
    return Path(os.environ.get("FRAUDGUARD_PROJECT_DIR", ".")).resolve()


@task(name="validate-params", cache_policy=NO_CACHE)
def validate_params(root: Path, params_overrides: dict[str, Any] | None):
    from fraudguard.pipeline import validate_overrides

    return validate_overrides(root / "params.yaml", params_overrides)


@task(name="read-data-revision", cache_policy=NO_CACHE)
def read_data_revision(root: Path, data_revision: str) -> str:
    """data.dvc as of the git commit `data_revision` names (refused when it names none); root is not written."""
    from fraudguard.pipeline import data_dvc_at_revision

    return data_dvc_at_revision(root, data_revision)


@task(name="pull-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def pull_data(workspace: Path, settings) -> str:
    """The only task with retries: it is the one doing remote I/O. Into the run's workspace: another data
    revision's pull never touches the project's own data.dvc or data/raw."""
    from fraudguard.data.versioning import pull_data as pull
    from fraudguard.paths import ProjectPaths

    outcome = pull(ProjectPaths.at(workspace), settings.data_remote, settings.simulate)
    get_run_logger().info("data/raw %s (%s)", outcome.md5, outcome.source)
    return outcome.md5


@task(name="dvc-repro", cache_policy=NO_CACHE)
def reproduce(root: Path, workspace: Path, settings) -> dict[str, Any]:
    from fraudguard import preload
    from fraudguard.pipeline import reproduce_stages

    # While the training runs (one torch thread), what register-model and the gates need is prepared: Evidently
    # in the drift gate's interpreter, and the rest here when the training runs in fraudguard.stage_interpreter
    # (otherwise root's MLflow store and the font cache in a short-lived interpreter).
    steps = preload.during_training(root, settings.registry, settings.gates)
    outcome = reproduce_stages(workspace, meanwhile=lambda over: preload.run_during_training(steps, over),
                               meanwhile_from="train")
    get_run_logger().info("stages run: %s; up to date: %s", list(outcome.ran), list(outcome.skipped))
    return {"ran": list(outcome.ran), "skipped": list(outcome.skipped), "seconds": outcome.seconds}


@task(name="register-model", cache_policy=NO_CACHE)
def register(root: Path, workspace: Path, settings, flow_run_id: str | None) -> dict[str, Any]:
    """Register the workspace's outputs in root's store; the code revision recorded is root's.

    Runs right after dvc-repro in the same workspace: `dvc repro` has just made every stage's outputs match
    dvc.lock (the weights are what these code, data and effective params produce), so the `dvc status`
    check `fraudguard register` makes (pipeline.require_current_outputs) would only start DVC again to
    prove the same thing.
    """
    from fraudguard.names import CHAMPION_ALIAS
    from fraudguard.tracking import configure_mlflow, find_identical_version, log_training_run

    client = configure_mlflow(root, settings.registry)
    existing = find_identical_version(client, workspace, settings)
    if existing is not None:
        mv = client.get_model_version(settings.registry.model_name, str(existing))
        run = client.get_run(mv.run_id)
        get_run_logger().info("same weights, params and data as version %s: reusing it", existing)
        return {"version": existing, "run_id": mv.run_id, "experiment_id": run.info.experiment_id,
                "tracking_uri": client.tracking_uri, "model_name": settings.registry.model_name,
                "metrics": dict(run.data.metrics), "reused": True,
                "is_champion": CHAMPION_ALIAS in (mv.aliases or [])}
    record = log_training_run(workspace, settings, flow_run_id=flow_run_id, git_root=root)
    experiment_id = client.get_run(record.run_id).info.experiment_id
    return {"version": record.version, "run_id": record.run_id, "experiment_id": experiment_id,
            "tracking_uri": client.tracking_uri, "model_name": settings.registry.model_name,
            "metrics": dict(record.metrics), "reused": False, "is_champion": False}


@task(name="prepare-gates", cache_policy=NO_CACHE)
def prepare_gates(root: Path, workspace: Path, settings, version: int, promote: bool):
    """The promotion API's prepare: recovery, policy of record, candidate and champion loaded once."""
    from fraudguard.promotion import prepare
    from fraudguard.tracking import configure_mlflow

    return prepare(configure_mlflow(root, settings.registry), root, settings, version, promote=promote,
                   workspace=workspace)


@task(name="gate", task_run_name="gate-{name}", cache_policy=NO_CACHE)
def run_gate(name: str, gate_run):
    from fraudguard.promotion import run_gate as run_one

    result, seconds = run_one(gate_run, name)
    log = get_run_logger()
    (log.info if result.passed else log.warning)("%s: %s (%.1f s)", "passed" if result.passed else "FAILED",
                                                 result.reason, seconds)
    if not result.passed:
        # A failed gate shows as a failed task in the UI; the verdict still travels as the state's data.
        return Failed(name="Gate failed", message=f"{name}: {result.reason}", data=(result, seconds))
    return result, seconds


def gate_verdict(future):
    """(GateResult, seconds) of a gate task, passed or failed (a failed gate task carries its verdict)."""
    future.wait()
    state = future.state
    verdict = state.result(raise_on_failure=False)
    if isinstance(verdict, BaseException):  # the task itself crashed: that gate counts as failed
        from fraudguard.gates.base import GateResult

        return GateResult(name=state.name, passed=False, metrics={}, thresholds={},
                          reason=f"gate task crashed: {type(verdict).__name__}: {verdict}"), 0.0
    return verdict


def dask_task_runner(compute):
    """prefect-dask's DaskTaskRunner for `compute` (params.yaml), or None to run on the flow's own runner."""
    if not (compute.dask_address or compute.dask_local_workers):
        return None
    from prefect_dask import DaskTaskRunner

    from fraudguard.compute import dask_client_security, local_cluster_security

    if compute.dask_address:
        return DaskTaskRunner(address=compute.dask_address, client_kwargs={"security": dask_client_security(compute)})
    # TLS with a throw-away certificate: without it any local process could connect to the cluster and run code on
    # workers holding the signing key.
    return DaskTaskRunner(cluster_kwargs={"n_workers": compute.dask_local_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "security": local_cluster_security()})


def run_gate_tasks(gate_run, compute) -> list:
    """Every gate as its own task, all at once: on the flow's threads, or on Dask when `compute` says so.

    quote() keeps Prefect from walking the frames; on Dask the prepared run is pickled to the workers, which
    report each gate as a task run of this flow run.
    """
    runner = dask_task_runner(compute)
    if runner is None:
        futures = [run_gate.submit(name, quote(gate_run)) for name in gate_run.gate_names]
        return [gate_verdict(future) for future in futures]
    with runner:
        # Parameters given to a task runner directly are not unquoted: pass the run itself.
        futures = [runner.submit(run_gate, parameters={"name": name, "gate_run": gate_run})
                   for name in gate_run.gate_names]
        return [gate_verdict(future) for future in futures]


def await_approval(root: Path, version: int, timeout_s: int):
    """Suspend until a reviewer answers the approval form (Prefect UI or `fraudguard approve`)."""
    from prefect.flow_runs import suspend_flow_run

    from fraudguard.approval import ApprovalInput, approval_key, change_authors, check_approval

    get_run_logger().info("version %s passed every gate and needs a second person's approval: answer the form "
                          "in the Prefect UI, or run `fraudguard approve %s --as NAME`", version, version)
    answer = suspend_flow_run(wait_for_input=ApprovalInput, timeout=timeout_s, key=approval_key(version))
    return check_approval(answer, change_authors(root))


@task(name="decide-and-promote", cache_policy=NO_CACHE)
def decide_and_promote(root: Path, settings, gate_run, gate_runs: list, approval=None):
    """The promotion API's decide: verdicts recorded, then champion moved only if every gate passed."""
    from fraudguard.promotion import approval_result, decide
    from fraudguard.tracking import configure_mlflow

    results = [result for result, _ in gate_runs]
    durations = {result.name: round(seconds, 3) for result, seconds in gate_runs}
    if approval is not None:
        results.append(approval_result(approval.approved, approval.reason))
    return decide(configure_mlflow(root, settings.registry), gate_run, results, durations,
                  actor=f"prefect:{flow_run.get_id() or 'local'}",
                  approver=approval.approver if approval is not None and approval.approved else "")


@flow(name="train-and-promote", log_prints=True)
def train_and_promote(
    data_revision: str | None = None,
    params_overrides: dict[str, Any] | None = None,
    promote: bool = True,
):
    """Train a candidate from the DVC-versioned data and promote it to `champion` if every gate passes.

    data_revision: git revision (a commit, branch or tag) whose data.dvc to train on, in a scratch copy of the
        project (default: the work tree's data.dvc, in the project itself).
    params_overrides: nested or dotted params.yaml keys, validated against the typed settings.
    promote: false runs the gates only (a dry run); `champion` never moves.
    """
    from fraudguard.pipeline import override_workspace

    root = _project_root()
    settings = validate_params(root, params_overrides)
    data_dvc = read_data_revision(root, data_revision) if data_revision else None
    # Overrides or another data version run the stages in a scratch copy of the project: the user's params.yaml,
    # data.dvc and data/raw are never rewritten.
    with override_workspace(root, params_overrides, data_dvc) as (workspace, _):
        data_md5 = pull_data(workspace, settings)
        return _train_and_gate(root, workspace, settings, data_md5, promote)


def _train_and_gate(root: Path, workspace: Path, settings, data_md5: str, promote: bool):
    """The flow after the data: stages in `workspace`, then register, gates and decision in root's store."""
    from fraudguard.reporting import champion_label, promotion_markdown

    stages = reproduce(root, workspace, settings)
    record = register(root, workspace, settings, flow_run.get_id())
    if record["is_champion"] and promote:
        return _finish(Completed, f"Unchanged v{record['version']}",
                       f"nothing changed: version {record['version']} (same weights, params and data) is "
                       "already the champion")
    outcome, approval = _gate_and_decide(root, workspace, settings, record["version"], promote)

    markdown = promotion_markdown(outcome, record, data_md5, stages)
    create_markdown_artifact(markdown=markdown, key="train-and-promote",
                             description=f"gates for fraudguard version {record['version']}")
    version, before = outcome.version, champion_label(outcome.champion_before)
    if outcome.blocked and "approval" in outcome.failed_gates:
        return _finish(Failed, f"Rejected v{version}",
                       f"promotion of version {version} not approved ({approval.reason}); champion unchanged "
                       f"({before})")
    if outcome.blocked:
        return _finish(Failed, f"Blocked v{version}",
                       f"promotion of version {version} blocked by gate(s): {', '.join(outcome.failed_gates)}; "
                       f"champion unchanged ({before})")
    if not promote:
        return _finish(Completed, f"Gates passed v{version}",
                       f"dry run: version {version} passed every gate; champion unchanged ({before})")
    return _finish(Completed, f"Promoted v{version}",
                   f"version {version} is the new champion (was {before})")


# Another host may move `champion` between this run's gates and its move (two workers promoting at once): the
# promotion API then refuses the move (ChampionChanged) and the gates run again against the new champion.
REGATE_ATTEMPTS = 3


def _gate_and_decide(root: Path, workspace: Path, settings, version: int, promote: bool):
    """(outcome, approval): prepare, every gate, approval when required, decide; re-gated when the
    champion changed under the gates. An approved run is not re-gated: the approval was for the old champion."""
    from fraudguard.registry import ChampionChanged

    for attempt in range(1, REGATE_ATTEMPTS + 1):
        gate_run = prepare_gates(root, workspace, settings, version, promote)
        gate_runs = run_gate_tasks(gate_run, settings.compute)
        approval = None
        if promote and settings.promotion.approval.required and all(result.passed for result, _ in gate_runs):
            approval = await_approval(root, gate_run.version, settings.promotion.approval.timeout_s)
        try:
            return decide_and_promote(root, settings, quote(gate_run), quote(gate_runs), approval), approval
        except ChampionChanged as exc:
            if approval is not None or attempt == REGATE_ATTEMPTS:
                raise
            get_run_logger().warning("%s: re-gating version %s against the new champion (attempt %d of %d)",
                                     exc, version, attempt + 1, REGATE_ATTEMPTS)
    raise AssertionError("unreachable")


def _finish(state_cls, name: str, message: str):
    """The run's final state, named after its outcome and version: `prefect deployment run --watch` prints
    only the state's name. One log line says the same; a blocked run is an outcome, not a traceback."""
    get_run_logger().info("%s: %s", name, message)
    return state_cls(name=name, message=message)


if __name__ == "__main__":
    train_and_promote()
