"""How fast the read-only CLI answers: `status`, `model lineage`, `audit verify` against `fraudguard --version`.

    python bench/cli_bench.py [--n 5] [--keep] [--project DIR]

Each command runs as a user runs it (a fresh `fraudguard` subprocess: interpreter start-up, imports, store
open, registry reads, signature checks) against a throw-away copy of the project holding two promoted
versions (bench_project.make_temp_project; versions registered from one `dvc repro` and promoted with
always-pass stand-in gates: set-up only, the gates are not measured). `fraudguard --version` is the baseline
in the same run: the interpreter and the CLI's own imports, no store; a bare script that imports MLflow and
reads one model version is the floor of any command built on MLflow's client. Runs are interleaved so load changes
on a shared machine hit every command alike. Issue target: each command <= 3 s on a quiet machine.

--keep keeps the scratch project (path printed); --project DIR reuses a kept one (its `project/` folder's
parent, as printed) and skips the set-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import (  # noqa: E402
    BIN,
    make_temp_project,
    print_bench_json,
    project_env,
    run_cmd,
    scratch_dir,
    timed,
)

TARGET_S = 3.0


def keys_env(tmp: Path) -> dict[str, str]:
    """Signing key and audit anchors inside the scratch dir (the checkout's ~/.config stays untouched)."""
    return {"FRAUDGUARD_SIGNING_KEY": str(tmp / "keys" / "signing-key.pem"),
            "FRAUDGUARD_AUDIT_ANCHOR_DIR": str(tmp / "keys" / "anchors")}


def set_up(tmp: Path) -> tuple[Path, dict[str, str], int]:
    """The temp project with two promoted versions; returns (root, env, newest version)."""
    os.environ.update(keys_env(tmp))
    os.environ.pop("FRAUDGUARD_VERIFY_KEY", None)
    root, env = make_temp_project(tmp)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    from fraudguard.config import load_settings
    from fraudguard.gates.base import GateResult
    from fraudguard.pipeline import reproduce_stages
    from fraudguard.promotion import promote_version
    from fraudguard.tracking import configure_mlflow, log_training_run

    _, repro_s = timed(reproduce_stages, root)
    settings = load_settings(root / "params.yaml")
    client = configure_mlflow(root, settings.registry)

    def stand_in(gate: str):
        def run(candidate, context, section) -> GateResult:
            return GateResult(name=gate, passed=True, metrics={}, thresholds={},
                              reason="bench set-up stand-in: always passes")
        return run

    # SET-UP ONLY: stand-in gates named after every configured gate, so the attestations cover the policy.
    stand_ins = {gate: stand_in(gate) for gate in type(settings.gates).model_fields}
    version = 0
    for _ in range(2):
        record = log_training_run(root, settings)
        outcome = promote_version(client, root, settings, version=record.version, actor="bench", gates=stand_ins)
        assert outcome.promoted, outcome.summary()
        version = int(record.version)
    print(f"temp project {root}: dvc repro {repro_s:.1f} s; 2 versions promoted with stand-in gates "
          f"(set-up only)")
    return root, env, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="timed runs per command")
    parser.add_argument("--keep", action="store_true", help="keep the temp project (path printed)")
    parser.add_argument("--project", type=Path, help="reuse a kept scratch dir (skips the set-up)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    scratch = nullcontext(args.project.resolve()) if args.project else scratch_dir("fraudguard-cli-bench-", args.keep)
    with scratch as tmp:
        if args.project:
            root, env, version = tmp / "project", project_env(tmp), 2
        else:
            root, env, version = set_up(tmp)
        env.update(keys_env(tmp))
        env.pop("FRAUDGUARD_VERIFY_KEY", None)
        fraudguard = str(BIN / "fraudguard")
        # The floor of any command built on MLflow's client: import mlflow, open the store, read one version.
        bare_read = ("import sys; from mlflow import MlflowClient; "
                     "print(MlflowClient().get_model_version('fraudguard', sys.argv[1]).tags)")
        commands = {
            "--version (baseline)": [fraudguard, "--version"],
            "bare MLflow read": [sys.executable, "-c", bare_read, str(version)],
            "status": [fraudguard, "status", "--root", str(root)],
            "model lineage": [fraudguard, "model", "lineage", str(version), "--root", str(root)],
            "audit verify": [fraudguard, "audit", "verify", "--root", str(root)],
        }
        for cmd in commands.values():  # warm the file cache and the bytecode once, untimed
            run_cmd(cmd, root, env)
        seconds: dict[str, list[float]] = {label: [] for label in commands}
        for i in range(args.n):
            order = list(commands.items())
            for label, cmd in (order if i % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                run_cmd(cmd, root, env)
                seconds[label].append(time.perf_counter() - start)

        base = statistics.median(seconds["--version (baseline)"])
        load = os.getloadavg()[0]
        print(f"\nfraudguard CLI, {args.n} runs each, median (min-max); load average {load:.1f} on "
              f"{os.cpu_count()} CPUs (a shared machine inflates every figure alike)")
        figures: dict[str, float] = {"load_average": round(load, 2)}
        for label, xs in seconds.items():
            med = statistics.median(xs)
            ratio = med / base
            verdict = "" if label.startswith(("--version", "bare")) else (
                "  <= 3 s" if med <= TARGET_S else "  > 3 s target")
            print(f"  {label:<22} {med:6.2f} s ({min(xs):.2f}-{max(xs):.2f})  x{ratio:4.1f} baseline{verdict}")
            key = label.split(" (")[0].strip("-").replace(" ", "_").lower()
            figures[f"{key}_s"] = round(med, 3)
            figures[f"{key}_ratio"] = round(ratio, 2)
        print_bench_json(figures)


if __name__ == "__main__":
    main()
