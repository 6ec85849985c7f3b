"""Promote and rollback latency: the team stack (MLflow server on PostgreSQL, basic-auth, advisory lock)
side by side with the embedded default (SQLite store, file lock), in one run.

    python bench/team_bench.py [--n 5]

Starts the stack without workers (fraudguard.stack, scratch directory, stopped by PID at the end), registers
`n + 1` versions in each store, then times `promote_version` (stand-in passing gates: the registry side only:
recovery, audit-chain check, attestation over the served files, journaled move) and `rollback`, interleaving
the two stores so load changes on a shared machine hit both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration"), str(Path(__file__).resolve().parent)]
from bench_project import print_bench_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fraudguard-team-bench-"))
    os.environ["FRAUDGUARD_SIGNING_KEY"] = str(scratch / "keys" / "signing-key.pem")
    os.environ["FRAUDGUARD_AUDIT_ANCHOR_DIR"] = str(scratch / "keys" / "anchors")
    os.environ.setdefault("FRAUDGUARD_LOG_LEVEL", "WARNING")

    from mlflow import MlflowClient

    from conftest import small_params
    from fraudguard.config import parse_settings
    from fraudguard.promotion import rollback
    from fraudguard.stack import stack_down, stack_up, worker_env
    from fraudguard.tracking import apply_mlflow_credentials
    from registry_helpers import all_passing_gates, make_client, promote_with_gates, register_version

    settings = parse_settings(small_params())
    started = time.perf_counter()
    state = stack_up(scratch / "stack", workers=0)
    print(f"stack up in {time.perf_counter() - started:.1f} s")
    try:
        env = worker_env(state, scratch / "host")
        for name in ("FRAUDGUARD_SIGNING_KEY", "FRAUDGUARD_AUDIT_ANCHOR_DIR", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
            env.pop(name)
        os.environ.update(env)  # credentials file and the PostgreSQL lock (only used by the server store)
        apply_mlflow_credentials()
        server = MlflowClient(tracking_uri=state.mlflow_url, registry_uri=state.mlflow_url)
        server.create_experiment("fraudguard-test")
        sqlite = make_client(scratch / "sqlite")
        clients = {"sqlite_file_lock": sqlite, "postgres_server_advisory_lock": server}
        versions = {name: [register_version(c, "fraudguard", scratch / name / f"w{i}", f"w-{name}-{i}".encode())
                           for i in range(args.n + 1)] for name, c in clients.items()}
        timings: dict[str, dict[str, list[float]]] = {name: {"promote": [], "rollback": []} for name in clients}
        for name, c in clients.items():  # first champion: not timed
            os.environ["FRAUDGUARD_REGISTRY_LOCK"] = "file" if name.startswith("sqlite") else "postgres"
            promote_with_gates(c, "fraudguard", versions[name][0], settings, scratch / name, all_passing_gates())
        for i in range(1, args.n + 1):
            order = list(clients.items()) if i % 2 else list(reversed(clients.items()))
            for name, c in order:
                os.environ["FRAUDGUARD_REGISTRY_LOCK"] = "file" if name.startswith("sqlite") else "postgres"
                t = time.perf_counter()
                promote_with_gates(c, "fraudguard", versions[name][i], settings, scratch / name, all_passing_gates())
                timings[name]["promote"].append(time.perf_counter() - t)
                t = time.perf_counter()
                rollback(c, settings, reason="bench", actor="bench")
                timings[name]["rollback"].append(time.perf_counter() - t)
                # forward again so the next promotion starts from the newest champion
                promote_with_gates(c, "fraudguard", versions[name][i], settings, scratch / name, all_passing_gates())
    finally:
        stack_down(scratch / "stack")
    figures = {name: {op: round(statistics.median(v), 3) for op, v in ops.items()} for name, ops in timings.items()}
    for name, ops in figures.items():
        print(f"{name:32s} promote median {ops['promote']:.3f} s   rollback median {ops['rollback']:.3f} s")
    figures["promote_ratio_server_vs_sqlite"] = round(
        figures["postgres_server_advisory_lock"]["promote"] / figures["sqlite_file_lock"]["promote"], 2)
    figures["rollback_ratio_server_vs_sqlite"] = round(
        figures["postgres_server_advisory_lock"]["rollback"] / figures["sqlite_file_lock"]["rollback"], 2)
    figures["n"] = args.n
    print_bench_json(figures)


if __name__ == "__main__":
    main()
