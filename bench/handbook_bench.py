"""Handbook-size speed: the pipeline on the params.handbook.yaml world (5,000 customers, 10,000 terminals,
183 days, ~1.79 M rows), each phase timed against the target of issue #10 (2 cores).

    python bench/handbook_bench.py [--scale 0.25] [--skip-flow] [--keep]

--scale multiplies the customer and terminal counts (and card_precision_k) of the profile, so the rows scale
with it (0.25: ~0.45 M rows); the targets are for scale 1, so at another scale the figures are indicative.

In a scratch copy of the project (bench_project.make_temp_project) with the profile merged over params.yaml
by `fraudguard ci profile`:
  simulate        the simulator writes the world to a file outside the project (a bank's export); not a target.
  import+validate `fraudguard data import FILE --new-history` (validates, copies into data/raw, `dvc add`) plus
                  `fraudguard data validate` (the validate stage), each a fresh process, wall time.
  featurize       `python -m fraudguard.stages.featurize`, a fresh process, wall time.
  epochs          in this process, train_model for 1 epoch on the full training split, adversarially augmented
                  (train.adversarial as configured) and clean; the epoch's own seconds (history).
  flow            `fraudguard run` (train-and-promote, in-process Prefect), wall time; its log timestamps give
                  the register-model task and all gates (prepare-gates + the concurrent gate tasks).
  register, gates then `fraudguard register` and `fraudguard promote --dry-run` (every gate on that new version,
                  against the flow's champion) as commands of their own, wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess  # nosec B404 - runs fraudguard of this environment with fixed argument lists
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import BIN, ROOT, make_temp_project, print_bench_json, run_cmd, scratch_dir  # noqa: E402

PROFILE = ROOT / "params.handbook.yaml"
TARGETS_S = {
    "import_plus_validate_s": 30.0,
    "featurize_s": 10.0,
    "augmented_epoch_s": 5.0,
    "register_s": 10.0,
    "gates_s": 60.0,
    "flow_s": 360.0,
}
TARGET_RATIO = 2.0


def scaled_profile(scale: float) -> dict[str, Any]:
    """params.handbook.yaml with the customer and terminal counts and card_precision_k times `scale`."""
    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    if scale != 1.0:
        sim = profile["simulate"]
        sim["n_customers"] = max(1, round(sim["n_customers"] * scale))
        sim["n_terminals"] = max(1, round(sim["n_terminals"] * scale))
        profile["evaluate"]["card_precision_k"] = max(1, round(profile["evaluate"]["card_precision_k"] * scale))
    return profile


CPU_S: dict[str, float] = {}  # CPU seconds (user + system) of each timed command, by figure name


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cmd(name: str, cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600,
              check: bool = True) -> tuple[Any, float]:
    """Run a command; its wall seconds, and its CPU seconds (with its children) recorded in CPU_S[name].
    check=False: a non-zero exit (a gate that blocks) is an outcome to report, not a bench failure."""
    cpu, start = _children_cpu_s(), time.perf_counter()
    if check:
        proc = run_cmd(cmd, cwd, env, timeout=timeout)
    else:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,  # nosec B603 - fixed argv
                              check=False)
    wall = time.perf_counter() - start
    CPU_S[name] = _children_cpu_s() - cpu
    return proc, wall


def prepare_project(tmp: Path, scale: float) -> tuple[Path, dict[str, str]]:
    """Scratch project with the (scaled) handbook profile merged over its params.yaml, committed."""
    # With data/raw pulled, as in a user's checkout: `fraudguard data import` refuses to replace a tracked
    # version it cannot see (it checks the import against it).
    root, env = make_temp_project(tmp, pull_data=True)
    profile_path = tmp / "params.handbook.yaml"
    profile_path.write_text(yaml.safe_dump(scaled_profile(scale), sort_keys=False), encoding="utf-8")
    run_cmd([str(BIN / "fraudguard"), "ci", "profile", str(profile_path), "--record",
             str(tmp / "profile-record.json")], root, env)
    run_cmd(["git", "commit", "-qam", "handbook profile"], root, env)
    return root, env


def simulate_export(root: Path, out: Path) -> tuple[int, float, float]:
    """The profile's world written to `out` (rows, fraud rate, seconds)."""
    from fraudguard.config import load_settings
    from fraudguard.data.io import write_transactions
    from fraudguard.data.simulator import simulate_transactions

    start = time.perf_counter()
    frame = simulate_transactions(load_settings(root / "params.yaml").simulate)
    write_transactions(frame, out)
    return len(frame), float(frame["TX_FRAUD"].mean()), time.perf_counter() - start


def time_epochs(root: Path) -> dict[str, Any]:
    """One augmented and one clean epoch of train_model on the project's full training split."""
    from fraudguard.config import load_settings
    from fraudguard.data.io import read_transactions
    from fraudguard.training import train_model

    settings = load_settings(root / "params.yaml", overrides={"train.epochs": 1})
    train = read_transactions(root / "data" / "features" / "train.parquet")
    augmented = train_model(train, settings, adversarial=True, progress=False)
    clean = train_model(train, settings, adversarial=False, progress=False)
    aug, cln = augmented.history[-1], clean.history[-1]
    return {
        "train_rows": len(train),
        "fit_rows": augmented.n_fit_rows,
        "batch_size": settings.train.batch_size,
        "attack": settings.train.adversarial.attack,
        "augmented_epoch_s": aug["seconds"],
        "augmented_epoch_cpu_s": aug["cpu_seconds"],
        "clean_epoch_cpu_s": cln["cpu_seconds"],
        "augmented_crafting_s": aug["adversarial_seconds"],
        "clean_epoch_s": cln["seconds"],
        "augmented_to_clean_ratio": aug["seconds"] / cln["seconds"],
    }


def flow_figures(proc: Any, started: float, ended: float, root: Path) -> dict[str, Any]:
    """register-model and all-gates seconds from the flow's log timeline; gate durations from its summary."""
    from end_to_end_bench import run_timeline

    figures: dict[str, Any] = {}
    timeline = run_timeline(proc.stderr, started, ended)
    if timeline is not None:
        segments = dict(timeline)
        figures["timeline_s"] = {label: round(seconds, 2) for label, seconds in timeline}
        figures["register_s"] = segments.get("task register-model")
        gate_segments = [v for k, v in segments.items() if k == "task prepare-gates" or "gate tasks" in k]
        figures["gates_s"] = sum(gate_segments) if gate_segments else None
        figures["dvc_repro_s"] = segments.get("task dvc-repro")
    summaries = sorted((root / "reports" / "gates").glob("v*/gate_summary.json"))
    if summaries:
        summary = json.loads(summaries[-1].read_text())
        figures["per_gate_s"] = {g["name"]: float(g["duration_s"]) for g in summary["gates"]}
        figures["gates_passed"] = {g["name"]: bool(g["passed"]) for g in summary["gates"]}
    history = root / "models" / "training_history.json"
    if history.is_file():
        epochs = json.loads(history.read_text())
        figures["train_epochs"] = len(epochs)
        figures["train_epochs_sum_s"] = round(sum(float(h.get("seconds", 0.0)) for h in epochs), 2)
    evaluation = root / "models" / "evaluation.json"
    if evaluation.is_file():
        figures["evaluation"] = json.loads(evaluation.read_text())
    return figures


def _line(label: str, value: float | None, target: float | None, unit: str = "s", cpu: float | None = None) -> str:
    if value is None:
        return f"  {label:<34}{'n/a':>9}"
    text = f"  {label:<34}{value:9.2f} {unit}"
    text += f"  (CPU {cpu:7.2f} s)" if cpu is not None else " " * 17
    if target is not None:
        verdict = "met" if value <= target else "NOT met"
        text += f"   target <= {target:g} {unit}: {verdict}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="world size relative to the handbook's")
    parser.add_argument("--skip-flow", action="store_true", help="stop after the epochs (no `fraudguard run`)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project (path printed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    figures: dict[str, Any] = {"scale": args.scale}
    with scratch_dir("fraudguard-handbook-bench-", args.keep) as tmp:
        root, env = prepare_project(tmp, args.scale)
        export = tmp / "handbook.parquet"
        rows, fraud_rate, sim_s = simulate_export(root, export)
        figures.update(rows=rows, fraud_rate=round(fraud_rate, 5), simulate_s=round(sim_s, 2))
        print(f"scale {args.scale}: {rows} rows, fraud rate {fraud_rate:.4f} (simulated in {sim_s:.1f} s)",
              flush=True)

        fg = str(BIN / "fraudguard")
        # --new-history: the export replaces the simulated default data the scratch checkout holds (its ids
        # collide with the export's; without it the import refuses, as it would for a bank's own export).
        _, figures["import_s"] = timed_cmd("import_s", [fg, "data", "import", str(export), "--new-history", "--root",
                                                        str(root)], root, env)
        _, figures["validate_s"] = timed_cmd("validate_s", [fg, "data", "validate", "--root", str(root)], root, env)
        figures["import_plus_validate_s"] = figures["import_s"] + figures["validate_s"]
        CPU_S["import_plus_validate_s"] = CPU_S["import_s"] + CPU_S["validate_s"]
        _, figures["featurize_s"] = timed_cmd("featurize_s", [str(BIN / "python"), "-m", "fraudguard.stages.featurize"], root, env)
        print(f"import {figures['import_s']:.1f} s (CPU {CPU_S['import_s']:.1f} s), validate {figures['validate_s']:.1f} s "
              f"(CPU {CPU_S['validate_s']:.1f} s), featurize {figures['featurize_s']:.1f} s "
              f"(CPU {CPU_S['featurize_s']:.1f} s)", flush=True)

        epochs = time_epochs(root)
        figures.update(epochs)
        print(f"epoch on {epochs['fit_rows']} fit rows (batch {epochs['batch_size']}): augmented "
              f"{epochs['augmented_epoch_s']:.2f} s (CPU {epochs['augmented_epoch_cpu_s']:.2f} s; crafting "
              f"{epochs['augmented_crafting_s']:.2f} s), clean {epochs['clean_epoch_s']:.2f} s "
              f"(CPU {epochs['clean_epoch_cpu_s']:.2f} s)", flush=True)

        if not args.skip_flow:
            # Only what the import versioned: the stages' outputs are DVC's, not git's.
            run_cmd(["git", "add", *(p for p in ("data.dvc", "data/.gitignore") if (root / p).exists())], root, env)
            run_cmd(["git", "commit", "-qm", "imported handbook data"], root, env)
            wall_start = time.time()
            proc, figures["flow_s"] = timed_cmd("flow_s", [fg, "run", "--root", str(root)], root, env, timeout=7200)
            figures["flow_state"] = next((line for line in proc.stdout.splitlines()
                                          if line.startswith("flow run:")), "flow run: ?")
            figures.update(flow_figures(proc, wall_start, time.time(), root))
            # The same two steps again as commands of their own, so that their CPU seconds are known too:
            # a new version of the same outputs, then every gate on it against the flow's champion.
            _, figures["register_cli_s"] = timed_cmd("register_cli_s", [fg, "register", "--root", str(root)], root, env)
            gates, figures["gates_cli_s"] = timed_cmd("gates_cli_s", [fg, "promote", "--dry-run", "--root", str(root)],
                                                      root, env, check=False)
            figures["gates_cli_exit"] = gates.returncode

    print(f"\nhandbook-size figures at scale {args.scale} ({rows} rows); targets are for scale 1.0 on 2 cores;"
          " wall time, CPU seconds in brackets")
    print(_line("import + validate", figures["import_plus_validate_s"], TARGETS_S["import_plus_validate_s"],
                cpu=CPU_S["import_plus_validate_s"]))
    print(_line("  of which import", figures["import_s"], None, cpu=CPU_S["import_s"]))
    print(_line("  of which validate stage", figures["validate_s"], None, cpu=CPU_S["validate_s"]))
    print(_line("featurize stage", figures["featurize_s"], TARGETS_S["featurize_s"], cpu=CPU_S["featurize_s"]))
    print(_line("augmented epoch", figures["augmented_epoch_s"], TARGETS_S["augmented_epoch_s"],
                cpu=figures["augmented_epoch_cpu_s"]))
    print(_line("  of which crafting", figures["augmented_crafting_s"], None))
    print(_line("clean epoch", figures["clean_epoch_s"], None, cpu=figures["clean_epoch_cpu_s"]))
    print(_line("augmented / clean", figures["augmented_to_clean_ratio"], TARGET_RATIO, "x"))
    if not args.skip_flow:
        print(_line("register (flow task)", figures.get("register_s"), TARGETS_S["register_s"]))
        print(_line("  `fraudguard register`", figures["register_cli_s"], TARGETS_S["register_s"],
                    cpu=CPU_S["register_cli_s"]))
        print(_line("all gates (prepare + gate tasks)", figures.get("gates_s"), TARGETS_S["gates_s"]))
        print(_line("  `fraudguard promote --dry-run`", figures["gates_cli_s"], TARGETS_S["gates_s"],
                    cpu=CPU_S["gates_cli_s"]))
        print(_line("whole train-and-promote flow", figures["flow_s"], TARGETS_S["flow_s"], cpu=CPU_S["flow_s"]))
        print(f"  {figures['flow_state']}; {figures.get('train_epochs')} epochs took "
              f"{figures.get('train_epochs_sum_s')} s; per gate {figures.get('per_gate_s')}")
        if "timeline_s" in figures:
            for label, seconds in figures["timeline_s"].items():
                print(f"    {label:<60}{seconds:7.1f} s")
    print(f"cores usable: {len(os.sched_getaffinity(0))}; load avg (1 min) {os.getloadavg()[0]:.2f} "
          "(shared machine: figures are noisy)")
    figures["cpu_s"] = {k: round(v, 2) for k, v in CPU_S.items()}
    print_bench_json({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()})


if __name__ == "__main__":
    main()
