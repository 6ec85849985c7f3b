"""Rollback latency: `fraudguard rollback --to V` as a user runs it, against a bare script that only moves
the `champion` alias (`MlflowClient().set_registered_model_alias`), both as fresh subprocesses (so both
pay interpreter start-up), and the same comparison in-process (promotion.rollback vs the bare call).

    python bench/rollback_bench.py [--n 5] [--keep]

Works in a throw-away copy of the project (see bench_project.make_temp_project); the checkout's stores are
untouched. Issue target: user-facing command / bare alias-moving script <= 1.2.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import BIN, make_temp_project, print_bench_json, run_cmd, scratch_dir, timed  # noqa: E402

BARE_SCRIPT = ("import sys; from mlflow import MlflowClient; "
               "MlflowClient().set_registered_model_alias(sys.argv[1], 'champion', sys.argv[2])")


def subprocess_seconds(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    run_cmd(cmd, cwd, env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="timed rollbacks per method")
    parser.add_argument("--keep", action="store_true", help="keep the temp project (path printed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with scratch_dir("fraudguard-rollback-bench-", args.keep) as tmp:
        root, env = make_temp_project(tmp)
        from fraudguard.config import load_settings
        from fraudguard.gates.base import GateResult
        from fraudguard.pipeline import reproduce_stages
        from fraudguard.promotion import promote_version, rollback
        from fraudguard.registry import CHAMPION_ALIAS, get_champion_version
        from fraudguard.tracking import configure_mlflow, log_training_run

        _, repro_s = timed(reproduce_stages, root)
        settings = load_settings(root / "params.yaml")
        name = settings.registry.model_name
        client = configure_mlflow(root, settings)

        def always_pass(candidate, context, section):
            return GateResult(name="always_pass", passed=True, metrics={}, thresholds={},
                              reason="bench set-up only")

        versions = []
        for _ in range(2):
            record = log_training_run(root, settings)
            promote_version(client, root, settings, version=record.version, actor="bench",
                            gates={"always_pass": always_pass})
            versions.append(record.version)
        a, b = versions
        print(f"temp project {root}: dvc repro {repro_s:.1f} s; versions {a} and {b} registered from the same "
              f"trained outputs and promoted with a trivial always-pass gate mapping (set-up only; the real "
              f"gates are not what this bench measures); champion = {get_champion_version(client, name)}")

        def other(current: int | None) -> int:
            return a if current == b else b

        cli_s, bare_s = [], []
        fraudguard = str(BIN / "fraudguard")
        # Interleaved, so that load changes on the shared machine hit both methods alike.
        for _ in range(args.n):
            target = other(get_champion_version(client, name))
            cli_s.append(subprocess_seconds(
                [fraudguard, "rollback", "--to", str(target), "--reason", "bench", "--root", str(root)], root, env))
            assert get_champion_version(client, name) == target, "fraudguard rollback did not move champion"
            target = other(target)
            bare_s.append(subprocess_seconds([sys.executable, "-c", BARE_SCRIPT, name, str(target)], root, env))
            assert get_champion_version(client, name) == target, "bare script did not move champion"

        # In-process: one untimed warm-up of each, then interleaved timed calls.
        rollback(client, settings, to_version=other(get_champion_version(client, name)), reason="warm-up")
        client.set_registered_model_alias(name, CHAMPION_ALIAS, str(other(get_champion_version(client, name))))
        lib_s, alias_s = [], []
        for _ in range(args.n):
            target = other(get_champion_version(client, name))
            lib_s.append(timed(rollback, client, settings, to_version=target, reason="bench")[1])
            target = other(target)
            alias_s.append(timed(client.set_registered_model_alias, name, CHAMPION_ALIAS, str(target))[1])
        assert get_champion_version(client, name) == target

        def med(xs: list[float]) -> float:
            return statistics.median(xs)

        cli_ratio = med(cli_s) / med(bare_s)
        lib_ratio = med(lib_s) / med(alias_s)
        print(f"\nN = {args.n} alternating moves per method; medians (min-max)")
        print(f"  subprocess `fraudguard rollback --to V`         {med(cli_s):7.3f} s ({min(cli_s):.3f}-{max(cli_s):.3f})")
        print(f"  subprocess `python -c <set_registered_model_alias>` {med(bare_s):5.3f} s "
              f"({min(bare_s):.3f}-{max(bare_s):.3f})")
        print(f"  ratio CLI / bare script                          {cli_ratio:7.2f}  "
              f"(issue target <= 1.2: {'met' if cli_ratio <= 1.2 else 'NOT met'})")
        print(f"  in-process promotion.rollback(...)               {med(lib_s) * 1000:7.1f} ms "
              f"({min(lib_s) * 1000:.1f}-{max(lib_s) * 1000:.1f})")
        print(f"  in-process client.set_registered_model_alias     {med(alias_s) * 1000:7.1f} ms "
              f"({min(alias_s) * 1000:.1f}-{max(alias_s) * 1000:.1f})")
        print(f"  ratio rollback / bare alias call (in-process)    {lib_ratio:7.2f}  "
              "(rollback also re-reads the registry, checks gate verdicts, downloads and sha256-checks the "
              "weights, writes the audit entry and status tags, under a file lock)")
        print(f"cores usable: {len(os.sched_getaffinity(0))}; load avg (1 min) {os.getloadavg()[0]:.2f}")
        figures = {
            "n": args.n,
            "cli_median_s": round(med(cli_s), 4),
            "bare_script_median_s": round(med(bare_s), 4),
            "ratio_cli_vs_bare_script": round(cli_ratio, 3),
            "cli_target_met": cli_ratio <= 1.2,
            "inprocess_rollback_median_ms": round(med(lib_s) * 1000, 2),
            "inprocess_alias_median_ms": round(med(alias_s) * 1000, 2),
            "ratio_inprocess_rollback_vs_alias": round(lib_ratio, 3),
            "cli_all_s": [round(x, 4) for x in cli_s],
            "bare_script_all_s": [round(x, 4) for x in bare_s],
        }
    print_bench_json(figures)


if __name__ == "__main__":
    main()
