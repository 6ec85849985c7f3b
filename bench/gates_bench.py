"""Gate cost on the default params.yaml world: every gate alone (sequentially), then all of them
concurrently as promotion runs them, for a first candidate (no champion) and for a second candidate
with a champion present (non-inferiority and drift-vs-champion then have a champion to compare with).

    python bench/gates_bench.py [--keep]

Works in a throw-away copy of the project (temp dir: its own git, DVC cache, MLflow SQLite store,
XDG_CACHE_HOME and PREFECT_HOME); the checkout's mlflow.db, data/, models/ and dvc.lock are untouched.
Target stated in the issue: all gates under 60 s together on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import make_temp_project, print_bench_json, scratch_dir, timed  # noqa: E402

# ------------------------------------------------------------------------------------------ the bench

def time_gates(client, root: Path, settings, version: int, label: str) -> dict[str, Any]:
    """Context once, then each gate alone (sequentially), then all concurrently with run_gates."""
    from fraudguard.promotion import (
        STANDARD_HEAVY_IMPORTS,
        build_gate_context,
        discover_gates,
        run_gates,
        warm_imports,
    )

    report_dir = root / "reports" / "gates" / f"bench-v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    from fraudguard.registry import get_champion_version

    champion = get_champion_version(client, settings.registry.model_name)
    (candidate, context, _digests), context_s = timed(build_gate_context, client, root, settings, version,
                                                      report_dir, champion)
    gates = discover_gates(settings.gates)
    _, warm_s = timed(warm_imports, gates, STANDARD_HEAVY_IMPORTS)
    print(f"\n[{label}] version {version}; champion in context: "
          f"{context.champion.version if context.champion else 'none'}")
    print(f"  build_gate_context {context_s:7.2f} s   (download + sha256-check bundles, read features)")
    print(f"  warm_imports       {warm_s:7.2f} s   (torch, sklearn, art, evidently imported once)")

    alone: dict[str, float] = {}
    verdicts: dict[str, bool] = {}
    for name, fn in gates.items():
        start = time.perf_counter()
        result = fn(candidate, context, getattr(settings.gates, name, None))
        alone[name] = time.perf_counter() - start
        verdicts[name] = result.passed
    (results, durations), concurrent_s = timed(run_gates, candidate, context, settings, gates)
    sum_alone = sum(alone.values())
    print(f"  {'gate':<16}{'alone s':>9}{'in concurrent run s':>21}  verdict")
    for r in results:
        print(f"  {r.name:<16}{alone[r.name]:9.2f}{durations[r.name]:21.2f}  {'passed' if r.passed else 'FAILED'}")
    print(f"  sum of gates alone (sequential)   {sum_alone:7.2f} s")
    print(f"  all gates concurrently (run_gates) {concurrent_s:6.2f} s wall  "
          f"(target < 60 s on 2 cores: {'met' if concurrent_s < 60 else 'NOT met'})")
    return {
        "version": version,
        "champion_present": context.champion is not None,
        "context_s": round(context_s, 3),
        "warm_imports_s": round(warm_s, 3),
        "sequential_sum_s": round(sum_alone, 3),
        "concurrent_total_s": round(concurrent_s, 3),
        "per_gate_alone_s": {k: round(v, 3) for k, v in alone.items()},
        "per_gate_in_concurrent_s": dict(durations),
        "all_passed": all(r.passed for r in results),
        "under_60s": concurrent_s < 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp project (path printed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with scratch_dir("fraudguard-gates-bench-", args.keep) as tmp:
        root, _env = make_temp_project(tmp)
        from fraudguard.config import load_settings
        from fraudguard.pipeline import reproduce_stages
        from fraudguard.promotion import promote_version
        from fraudguard.tracking import configure_mlflow, log_training_run

        outcome, repro_s = timed(reproduce_stages, root)
        print(f"temp project {root} (default params.yaml); dvc repro ran {list(outcome.ran)} in {repro_s:.1f} s")
        settings = load_settings(root / "params.yaml")
        client = configure_mlflow(root, settings.registry)
        first, reg_s = timed(log_training_run, root, settings)
        print(f"registered version {first.version} in {reg_s:.1f} s")
        no_champion = time_gates(client, root, settings, first.version, "first candidate, no champion")

        promoted, promote_s = timed(promote_version, client, root, settings, version=first.version,
                                    actor="bench")
        print(f"\npromote_version(v{first.version}) with the real gates: promoted={promoted.promoted} "
              f"in {promote_s:.1f} s (gates, tags, reports logged, alias moved)")
        # The second candidate is the same trained outputs registered again: what is measured is the cost
        # of the gates with a champion to compare with, not a different model.
        second, _ = timed(log_training_run, root, settings)
        with_champion = time_gates(client, root, settings, second.version,
                                   "second candidate, champion present (same trained outputs)")
        print(f"\ncores usable: {len(os.sched_getaffinity(0))}; load avg (1 min) {os.getloadavg()[0]:.2f}")
        figures = {
            "no_champion": no_champion,
            "with_champion": with_champion,
            "promote_version_s": round(promote_s, 3),
            "dvc_repro_s": round(repro_s, 3),
            "target_s": 60,
        }
    print_bench_json(figures)


if __name__ == "__main__":
    main()
