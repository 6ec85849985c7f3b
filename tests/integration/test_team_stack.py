"""The team stack for real: PostgreSQL, an MLflow server with basic-auth and served artifacts, a Prefect
server on PostgreSQL and two process workers, started by fraudguard.stack (what `make stack` runs) on
127.0.0.1 and stopped by PID at the end of the module, even on failure.

PostgreSQL's binaries are installed by the stack (apt-get, as root) when missing; if that is impossible the
fixture fails loudly: nothing here is skipped.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, small_params
from fraudguard.config import merge_overrides
from project_factory import LENIENT_GATES, make_project, run_checked

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
NAME = "fraudguard"
EXPERIMENT = "fraudguard-test"
UUID = re.compile(r"UUID:\s*([0-9a-f-]{36})")


def _credentials(path: Path) -> tuple[str, str]:
    parser = configparser.ConfigParser()
    parser.read(path)
    return parser["mlflow"]["mlflow_tracking_username"], parser["mlflow"]["mlflow_tracking_password"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(state, pipeline env): the whole stack up; the test process acts as a pipeline host."""
    from fraudguard.stack import stack_down, stack_up, stop_pid, worker_env

    base = tmp_path_factory.mktemp("team_stack")
    state = None
    saved = dict(os.environ)
    try:
        # The workers sign with the session's pipeline key (conftest), as this process does.
        state = stack_up(base / "stack", workers=2,
                         worker_env_extra={"FRAUDGUARD_SIGNING_KEY": os.environ["FRAUDGUARD_SIGNING_KEY"]})
        host = base / "host"
        env = worker_env(state, host)
        # This process is a pipeline host too; the signing key and anchors stay the session's (conftest).
        for name in ("FRAUDGUARD_SIGNING_KEY", "FRAUDGUARD_AUDIT_ANCHOR_DIR", "PREFECT_HOME"):
            env.pop(name)
        env["PREFECT_HOME"] = str(host / "prefect-home")
        (host / "prefect-home").mkdir(parents=True)
        os.environ.update(env)
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        from fraudguard.tracking import apply_mlflow_credentials

        assert apply_mlflow_credentials() == "fraudguard-pipeline"
        yield state, env
    finally:
        os.environ.clear()
        os.environ.update(saved)
        # In the whole suite (not alone) this teardown has taken 66 s: say where, per process, when it is slow.
        stops: list[logging.LogRecord] = []
        collector = logging.Handler(logging.INFO)
        collector.emit = stops.append  # type: ignore[method-assign]
        stack_logger = logging.getLogger("fraudguard.stack")
        stack_logger.addHandler(collector)
        level, stack_logger.level = stack_logger.level, logging.INFO
        started = time.monotonic()
        try:
            if state is not None:
                # In the whole suite the workers have outlived SIGINT by 30 s each (not alone): nothing of their
                # shutdown is under test here, so 10 s each before stack_down's own stop (which then finds them gone).
                for name, pid in state.pids.items():
                    if name.startswith("worker-"):
                        stop_pid(pid, signal.SIGINT, timeout_s=10)
            stack_down(base / "stack")
        finally:
            stack_logger.removeHandler(collector)
            stack_logger.setLevel(level)
        if state is not None and state.pg_data.startswith("/tmp/fraudguard-pg-"):
            shutil.rmtree(state.pg_data, ignore_errors=True)
        if time.monotonic() - started > 20:
            warnings.warn(f"team stack teardown took {time.monotonic() - started:.0f} s: "
                          + "; ".join(record.getMessage() for record in stops), stacklevel=1)


def _client(state):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=state.mlflow_url, registry_uri=state.mlflow_url)


@pytest.fixture(scope="module")
def versions(stack):
    """Five registered versions, logged by the pipeline identity through the server's artifact proxy."""
    from registry_helpers import register_version

    state, _ = stack
    client = _client(state)
    client.create_experiment(EXPERIMENT)
    work = Path(state.base).parent / "versions"
    return [register_version(client, NAME, work / f"w{i}", f"team-weights-{i}".encode()) for i in range(5)]


def _rest(state, who: str, method: str, path: str, body: dict | None = None) -> int:
    from fraudguard.stack import _mlflow_api

    user, password = _credentials(state.credentials_file(who))
    return _mlflow_api(state.mlflow_url, path, user, password, body, method=method)[0]


def test_stack_runs_every_service_and_two_workers_online(stack):
    from fraudguard.stack import prefect_api

    state, env = stack
    assert set(state.pids) == {"postgres", "mlflow", "prefect", "worker-a", "worker-b"}
    status, workers = prefect_api(state, "POST", "/work_pools/fraudguard/workers/filter", {})
    assert status == 200, workers
    assert {"worker-a", "worker-b"} <= {w["name"] for w in workers if w["status"] == "ONLINE"}
    for who in ("pipeline", "reviewer", "admin"):
        assert state.credentials_file(who).stat().st_mode & 0o077 == 0
    assert not str(state.credentials_file("pipeline")).startswith(str(PROJECT_ROOT))
    assert set(state.started) == set(state.pids)  # start times: a reused PID is never stopped as ours


def test_no_secret_of_the_stack_is_on_a_command_line(stack):
    # The MLflow server got its database URL, the mlflow role's password in it, as an argument: every local user
    # reads /proc/PID/cmdline (`ps`).
    state, _ = stack
    secrets = {path.read_text().strip() for path in state.secrets_dir.iterdir()
               if path.is_file() and not path.name.endswith((".pem", ".env", ".credentials", ".ini"))}
    assert len(secrets) >= 5
    groups = {os.getpgid(pid) for pid in state.pids.values()}
    seen = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) not in groups:
                continue
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        seen += 1
        leaked = [secret[:4] + "..." for secret in secrets if secret and secret in argv]
        assert not leaked, f"pid {proc.name}: a secret on its command line ({argv[:120]}...)"
    assert seen >= len(state.pids)


def test_prefect_api_refuses_requests_without_the_stack_auth_string(stack):
    import base64

    from fraudguard.stack import prefect_api

    state, env = stack
    assert env["PREFECT_API_AUTH_STRING"] == state.prefect_auth_string  # what every worker and CLI sends
    assert prefect_api(state, "POST", "/flow_runs/filter", {}, authenticated=False)[0] == 401
    assert prefect_api(state, "POST", "/deployments/filter", {}, authenticated=False)[0] == 401
    wrong = base64.b64encode(b"fraudguard:not-the-password").decode()
    request = urllib.request.Request(f"{state.prefect_api_url}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {wrong}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert prefect_api(state, "POST", "/flow_runs/filter", {})[0] == 200
    # Probes stay open: GET /api/health needs no credentials (load balancers, `make stack`'s own wait).
    with urllib.request.urlopen(f"{state.prefect_api_url}/health", timeout=10) as resp:
        assert resp.status == 200


def test_reviewer_gets_403_moving_champion_or_editing_gate_and_audit_tags(stack, versions):
    state, _ = stack
    v = str(versions[0])
    forbidden = [
        ("POST", "/api/2.0/mlflow/registered-models/alias", {"name": NAME, "alias": "champion", "version": v}),
        ("DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": NAME, "alias": "champion"}),
        ("POST", "/api/2.0/mlflow/registered-models/set-tag", {"name": NAME, "key": "audit.000001", "value": "{}"}),
        ("DELETE", "/api/2.0/mlflow/registered-models/delete-tag", {"name": NAME, "key": "audit.000001"}),
        ("POST", "/api/2.0/mlflow/model-versions/set-tag", {"name": NAME, "version": v, "key": "gate.quality",
                                                            "value": "passed"}),
        ("DELETE", "/api/2.0/mlflow/model-versions/delete-tag", {"name": NAME, "version": v, "key": "gate.quality"}),
        ("PATCH", "/api/2.0/mlflow/registered-models/update", {"name": NAME, "description": "hand edit"}),
    ]
    for method, path, body in forbidden:
        assert _rest(state, "reviewer", method, path, body) == 403, (method, path)
    assert _rest(state, "reviewer", "GET", f"/api/2.0/mlflow/registered-models/get?name={NAME}") == 200
    # The same call with the pipeline's identity is allowed (a harmless display tag).
    assert _rest(state, "pipeline", "POST", "/api/2.0/mlflow/model-versions/set-tag",
                 {"name": NAME, "version": v, "key": "fraudguard.note", "value": "x"}) == 200


def test_pipeline_promotes_and_rolls_back_through_the_server_under_the_advisory_lock(stack, versions, small_settings,
                                                                                    tmp_path):
    from fraudguard.promotion import rollback
    from fraudguard.registry import lock_backend_for, read_audit_log
    from fraudguard.signing import load_signer
    from fraudguard.verification import verify_registry
    from registry_helpers import all_passing_gates, promote_with_gates

    state, _ = stack
    client = _client(state)
    assert lock_backend_for(client).kind == "postgres"
    v1, v2 = versions[0], versions[1]
    promote_with_gates(client, NAME, v1, small_settings, tmp_path, all_passing_gates(), actor="pipeline")
    promote_with_gates(client, NAME, v2, small_settings, tmp_path, all_passing_gates(), actor="pipeline")
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == v2
    outcome = rollback(client, small_settings, reason="team stack rollback", actor="pipeline")
    assert (outcome.from_version, outcome.to_version) == (v2, v1)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == v1
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.phase, last.to_version) == ("rollback", "commit", v1)
    report = verify_registry(client, NAME, load_signer().verifier())
    assert report.ok, report.problems


def test_advisory_lock_is_exclusive_across_connections_and_reentrant(stack):
    from fraudguard.errors import RegistryError
    from fraudguard.registry import registry_lock

    state, _ = stack
    client = _client(state)
    outcome: dict[str, object] = {}

    def other_host():
        try:
            with registry_lock(client, timeout_s=1.5):
                outcome["got"] = True
        except RegistryError as exc:
            outcome["error"] = str(exc)

    with registry_lock(client) as held:
        assert "advisory lock" in str(held)
        with registry_lock(client):  # re-entrant within the thread: no second connection, no deadlock
            thread = threading.Thread(target=other_host)
            thread.start()
            thread.join(30)
    assert "still held" in str(outcome.get("error")), outcome
    with registry_lock(client, timeout_s=5):  # released on exit
        pass
    # The lock role reaches its own database only (PUBLIC could connect to postgres and template1 by default).
    import psycopg

    lock_url = os.environ["FRAUDGUARD_REGISTRY_LOCK_URL"]
    with psycopg.connect(lock_url, connect_timeout=5):
        pass
    for other in ("postgres", "template1", "mlflow", "prefect"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(lock_url.rsplit("/", 1)[0] + "/" + other, connect_timeout=5)


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlflow import MlflowClient
    sys.path.insert(0, "tests")
    sys.path.insert(0, "tests/integration")
    from conftest import small_params
    from fraudguard.config import parse_settings
    from fraudguard.errors import RegistryError
    from fraudguard.tracking import apply_mlflow_credentials
    from registry_helpers import all_passing_gates, promote_with_gates

    uri, workdir, start_at = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    versions = [int(v) for v in sys.argv[4:]]
    apply_mlflow_credentials()
    settings = parse_settings(small_params())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    time.sleep(max(0.0, start_at - time.time()))  # both hosts promote at the same instant
    for version in versions:
        while True:
            try:
                promote_with_gates(client, "fraudguard", version, settings, workdir, all_passing_gates(),
                                   actor=f"host-{versions[0]}")
                break
            except RegistryError as exc:  # the other host moved the champion after our gates: re-gate
                assert "re-gate" in str(exc), exc
""")


def test_two_hosts_promoting_at_once_end_consistent_with_a_valid_audit_chain(stack, versions, tmp_path):
    from fraudguard.registry import champion_history
    from fraudguard.signing import load_signer
    from fraudguard.verification import verify_registry

    state, env = stack
    client = _client(state)
    before = len(champion_history(client, NAME))
    champion = int(client.get_model_version_by_alias(NAME, "champion").version)
    candidates = versions[2:]  # never champion before
    start_at = time.time() + 12.0  # after both interpreters have imported mlflow
    procs = []
    for i in (0, 1):
        # Each "host" has its own anchor folder; the signing key is the pipeline's (shared).
        host_env = {**os.environ, "FRAUDGUARD_AUDIT_ANCHOR_DIR": str(tmp_path / f"host{i}" / "anchors"),
                    "FRAUDGUARD_LOG_LEVEL": "WARNING"}
        host_env.pop("MLFLOW_TRACKING_USERNAME", None)
        host_env.pop("MLFLOW_TRACKING_PASSWORD", None)
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, state.mlflow_url, str(tmp_path / f"host{i}"),
                                       str(start_at), *map(str, candidates[i::2])],
                                      cwd=PROJECT_ROOT, env=host_env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-4000:]
    history = champion_history(client, NAME)[before:]
    assert sorted(c.version for c in history) == sorted(candidates)  # no lost moves
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == history[-1].version
    # Each move started from the champion the previous move left: no update from a stale read.
    assert [c.previous for c in history] == [champion] + [c.version for c in history[:-1]]
    report = verify_registry(client, NAME, load_signer().verifier())
    assert report.ok, report.problems


def _code_remote(base: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A small project pushed to a bare repository (the team's git remote), and a checkout of it."""
    checkout = base / "checkout"
    checkout.mkdir(parents=True)
    for name in ("prefect.yaml", "prefect.team.yaml"):
        shutil.copy2(PROJECT_ROOT / name, checkout / name)
    shutil.copytree(PROJECT_ROOT / "flows", checkout / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run_checked(["git", "init", "-q", "-b", "main"], checkout, env)
    run_checked([*git, "add", "-A"], checkout, env)
    run_checked([*git, "commit", "-qm", "team project"], checkout, env)
    bare = base / "remote.git"
    run_checked(["git", "clone", "-q", "--bare", str(checkout), str(bare)], base, env)
    return checkout, bare


def test_rollback_deployment_clones_the_code_from_the_git_remote_on_a_worker(stack, versions, tmp_path):
    from fraudguard.registry import read_audit_log
    from fraudguard.stack import prefect_api

    state, env = stack
    client = _client(state)
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    checkout, bare = _code_remote(tmp_path, full_env)
    full_env["FRAUDGUARD_GIT_REMOTE"] = bare.as_uri()
    full_env.pop("FRAUDGUARD_PROJECT_DIR", None)
    run_checked([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.team.yaml"],
                checkout, full_env)
    status, deployment = prefect_api(state, "GET", "/deployments/name/rollback/team")
    assert status == 200, deployment
    assert deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == bare.as_uri()
    champion = int(client.get_model_version_by_alias(NAME, "champion").version)
    proc = subprocess.run([str(BIN / "prefect"), "deployment", "run", "rollback/team", "--watch",
                           "--watch-interval", "2", "--watch-timeout", "300",
                           "--params", json.dumps({"reason": "rollback from a cloned checkout"})],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=360)
    out = proc.stdout + proc.stderr
    logs = "".join((Path(state.base) / "logs" / f"worker-{n}.log").read_text()[-3000:] for n in ("a", "b"))
    assert proc.returncode == 0, out[-3000:] + "\n--- workers:\n" + logs
    flow_run_id = UUID.search(out).group(1)
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.phase, last.from_version) == ("rollback", "commit", champion)
    assert last.actor == f"prefect:{flow_run_id}"
    assert "rollback from a cloned checkout" in " ".join(last.reasons)


TEAM_MODEL = "fraudguard-workers"  # its own registered model: the versions fixture's stand-in weights stay out
SUBMITTED = re.compile(r"Worker '(worker-[a-z])' submitting flow run")
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _team_project(base: Path, env: dict[str, str]) -> tuple[Path, Path, Path, str]:
    """(checkout, bare git remote, shared DVC remote, data.dvc's md5): a small project whose params name the
    shared DVC remote, its data pushed there, its code pushed to the bare repository the workers clone."""
    from fraudguard.data.versioning import tracked_md5
    from fraudguard.paths import ProjectPaths

    shared_dvc = base / "shared-dvc"  # stands in for shared storage (NFS, S3)
    shared_dvc.mkdir()
    checkout = make_project(base / "checkout", env, merge_overrides(LENIENT_GATES, {
        "registry": {"model_name": TEAM_MODEL, "experiment": TEAM_MODEL},
        "data_remote": {"url": str(shared_dvc)}}))
    shutil.copy2(PROJECT_ROOT / "prefect.team.yaml", checkout / "prefect.team.yaml")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run_checked([*git, "add", "prefect.team.yaml"], checkout, env)
    run_checked([*git, "commit", "-qm", "team deployments"], checkout, env)
    run_checked([str(BIN / "fraudguard"), "data", "push", "--root", str(checkout)], checkout, env)
    md5 = tracked_md5(ProjectPaths.at(checkout))
    assert (shared_dvc / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # the directory's manifest is there
    bare = base / "remote.git"
    run_checked(["git", "clone", "-q", "--bare", str(checkout), str(bare)], base, env)
    # The clone carries the code, params.yaml and data.dvc, never the data (git-ignored, DVC-tracked).
    listed = run_checked(["git", "ls-tree", "-r", "--name-only", "main"], bare, env).stdout.split()
    assert "data.dvc" in listed and not any(name.startswith("data/raw/") for name in listed)
    return checkout, bare, shared_dvc, md5


def _wait_terminal(state, flow_run_ids: list[str], timeout_s: float = 1500) -> dict[str, dict]:
    from fraudguard.stack import prefect_api

    deadline = time.monotonic() + timeout_s
    while True:
        runs = {}
        for flow_run_id in flow_run_ids:
            status, run = prefect_api(state, "GET", f"/flow_runs/{flow_run_id}")
            assert status == 200, run
            runs[flow_run_id] = run
        if all(run["state"]["type"] in TERMINAL for run in runs.values()):
            return runs
        if time.monotonic() > deadline:
            logs = "".join((Path(state.base) / "logs" / f"worker-{n}.log").read_text()[-3000:] for n in ("a", "b"))
            raise AssertionError(f"flow runs not finished after {timeout_s:.0f}s: "
                                 f"{[r['state'] for r in runs.values()]}\n--- workers:\n{logs}")
        time.sleep(3)


def _flow_run_logs(state, flow_run_id: str) -> list[str]:
    from fraudguard.stack import prefect_api

    status, logs = prefect_api(state, "POST", "/logs/filter",
                               {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC",
                                "limit": 200})
    assert status == 200, logs
    return [entry["message"] for entry in logs]


def test_train_and_promote_from_both_workers_at_once_pulls_data_from_the_dvc_remote_and_ends_consistent(
        stack, tmp_path):
    """Two train-and-promote runs of the team deployment, started together: each worker (one run at a time)
    clones the bare repository, pulls data/raw from the shared DVC remote, trains and gates; the promotion
    API serialises the moves (a run whose champion changed under its gates re-gates), then a rollback."""
    from fraudguard.attestation import load_attestation
    from fraudguard.config import parse_settings
    from fraudguard.promotion import rollback
    from fraudguard.registry import champion_history, read_audit_log
    from fraudguard.signing import load_signer
    from fraudguard.stack import prefect_api
    from fraudguard.verification import verify_registry

    state, _ = stack
    client = _client(state)
    verifier = load_signer().verifier()
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    full_env.pop("FRAUDGUARD_PROJECT_DIR", None)
    checkout, bare, shared_dvc, data_md5 = _team_project(tmp_path, full_env)
    full_env["FRAUDGUARD_GIT_REMOTE"] = bare.as_uri()
    run_checked([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.team.yaml"],
                checkout, full_env)
    status, deployment = prefect_api(state, "GET", "/deployments/name/train-and-promote/team")
    assert status == 200, deployment
    assert deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == bare.as_uri()

    # Two candidates (two seeds), scheduled at the same instant; each worker takes one (limit 1 per worker).
    flow_run_ids = []
    for seed in (31, 32):
        status, run = prefect_api(state, "POST", f"/deployments/{deployment['id']}/create_flow_run",
                                  {"parameters": {"params_overrides": {"train": {"seed": seed}}}})
        assert status in (200, 201), run
        flow_run_ids.append(run["id"])
    started = time.monotonic()
    runs = _wait_terminal(state, flow_run_ids)
    print(f"two train-and-promote runs on two workers: {time.monotonic() - started:.0f} s")
    logs = {flow_run_id: _flow_run_logs(state, flow_run_id) for flow_run_id in flow_run_ids}
    for flow_run_id, run in runs.items():
        assert run["state"]["type"] == "COMPLETED", (run["state"], logs[flow_run_id][-20:])
        assert run["state"]["name"].startswith("Promoted v"), run["state"]

    # Two workers: each flow run was submitted by a different one, and ran with that host's environment.
    ran_on = {}
    for flow_run_id in flow_run_ids:
        submitted = {m.group(1) for line in logs[flow_run_id] if (m := SUBMITTED.search(line))}
        # Both workers may poll the run at the same instant: the server lets one propose Pending, the other logs
        # "Aborted submission" in its own log and never runs it.
        submitted = {worker for worker in submitted
                     if f"Aborted submission of flow run '{flow_run_id}'"
                     not in (Path(state.base) / "logs" / f"{worker}.log").read_text()}
        assert len(submitted) == 1, logs[flow_run_id][:10]
        ran_on[flow_run_id] = submitted.pop()
    assert sorted(ran_on.values()) == ["worker-a", "worker-b"], ran_on
    for flow_run_id, worker in ran_on.items():
        assert flow_run_id in (Path(state.base) / "logs" / f"{worker}.log").read_text()
        # The flow run signed its audit entries with its worker's anchor folder (the host's own state).
        anchors = Path(state.base) / "workers" / worker.removeprefix("worker-") / "anchors"
        assert any(p.is_file() for p in anchors.rglob("*")), f"{worker} wrote no audit anchor"

    # Data came through the DVC remote: each clone's pull-data task pulled data.dvc's version, not the simulator.
    for flow_run_id in flow_run_ids:
        assert f"data/raw {data_md5} (remote)" in logs[flow_run_id], [m for m in logs[flow_run_id] if "data/raw" in m]
        assert not any("regenerat" in line for line in logs[flow_run_id])

    # The registry ends consistent: both candidates moved champion in turn, each gated against the champion
    # it replaced (the later one re-gated if the earlier moved while its gates ran), and the chain verifies.
    version_of = {mv.tags["lineage.prefect_flow_run_id"]: int(mv.version)
                  for mv in client.search_model_versions(f"name='{TEAM_MODEL}'")}
    versions = sorted(version_of[flow_run_id] for flow_run_id in flow_run_ids)
    assert len(set(versions)) == 2
    history = champion_history(client, TEAM_MODEL)
    assert sorted(c.version for c in history) == versions
    assert [c.previous for c in history] == [None, history[0].version]
    assert int(client.get_model_version_by_alias(TEAM_MODEL, "champion").version) == history[-1].version
    commits = [e for e in read_audit_log(client, TEAM_MODEL) if e.action == "promote" and e.phase == "commit"]
    assert sorted(e.actor for e in commits) == sorted(f"prefect:{i}" for i in flow_run_ids)
    for entry in commits:
        mv = client.get_model_version(TEAM_MODEL, str(entry.to_version))
        attestation = load_attestation(mv, entry.attestation, verifier)
        assert attestation.predicate["champion_before"] == entry.from_version, (entry, attestation.predicate)
    regated = [i for i in flow_run_ids if any("re-gating version" in line for line in logs[i])]
    print(f"runs ran on {ran_on}; re-gated after ChampionChanged: {regated}")
    report = verify_registry(client, TEAM_MODEL, verifier)
    assert report.ok, report.problems

    # Then a rollback through the same servers puts the first promoted candidate back.
    settings = parse_settings(yaml.safe_load((checkout / "params.yaml").read_text()), source="team project")
    outcome = rollback(client, settings, reason="two-worker rollback", actor="pipeline")
    assert (outcome.from_version, outcome.to_version) == (history[1].version, history[0].version)
    assert int(client.get_model_version_by_alias(TEAM_MODEL, "champion").version) == history[0].version
    report = verify_registry(client, TEAM_MODEL, verifier)
    assert report.ok, report.problems


def test_admin_password_rotation_replaces_the_first_start_password(stack):
    from fraudguard.stack import ADMIN_USER, _mlflow_api, rotate_admin_password

    state, _ = stack
    old = _credentials(state.credentials_file("admin"))[1]
    rotate_admin_password(state)
    new = _credentials(state.credentials_file("admin"))[1]
    assert new != old
    path = f"/api/2.0/mlflow/users/get?username={ADMIN_USER}"
    assert _mlflow_api(state.mlflow_url, path, ADMIN_USER, old, method="GET")[0] == 401
    assert _mlflow_api(state.mlflow_url, path, ADMIN_USER, new, method="GET")[0] == 200


def test_gates_on_a_dask_local_cluster_match_the_in_process_run(stack, small_settings, tmp_path):
    """train-and-promote's gate step on prefect-dask's DaskTaskRunner (LocalCluster, 2 worker processes)."""
    import importlib.util

    from prefect import flow

    from fraudguard.config import ComputeSettings
    from fraudguard.gates.base import GateResult, ModelUnderTest
    from fraudguard.gates.drift import run_drift_gate
    from fraudguard.policy import policy_from_settings
    from fraudguard.promotion import GateRun, run_gate
    from registry_helpers import simple_context

    spec = importlib.util.spec_from_file_location("train_and_promote_flow", PROJECT_ROOT / "flows" / "train_and_promote.py")
    flow_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow_module)

    def where(candidate, context, settings):  # pickled by value to the Dask workers
        import os as worker_os
        return GateResult("where", True, {"pid": float(worker_os.getpid())}, {}, "ran")

    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    gate_run = GateRun(model_name=NAME, version=1, champion_before=None,
                       candidate=ModelUnderTest(bundle=None, version=1, run_id="run"),
                       context=simple_context(small_settings, tmp_path, report_dir),
                       policy=policy_from_settings(small_settings, "test"),
                       gates={"drift": run_drift_gate, "where": where}, report_dir=report_dir, promote=False)

    @flow(name="gates-on-dask")
    def gates_on_dask(local_workers: int):
        return flow_module.run_gate_tasks(gate_run, ComputeSettings(dask_local_workers=local_workers))

    assert flow_module.dask_task_runner(ComputeSettings()) is None  # the default stays in-process
    on_dask = {result.name: result for result, _ in gates_on_dask(2)}
    in_process, _ = run_gate(gate_run, "drift")
    assert (on_dask["drift"].passed, on_dask["drift"].metrics) == (in_process.passed, in_process.metrics)
    assert on_dask["drift"].reason == in_process.reason
    assert int(on_dask["where"].metrics["pid"]) != os.getpid()  # it ran in a Dask worker process
