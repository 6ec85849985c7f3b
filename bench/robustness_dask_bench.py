"""The robustness gate's attack sweep in-process vs split over a 2-worker Dask LocalCluster, in one run.

    python bench/robustness_dask_bench.py [--n 2]

A 300-card world (the robustness test's), one undefended model as candidate and champion, params.yaml's
robustness settings (3 epsilons x FGSM/PGD + HopSkipJump, up to 500 frauds): 14 attacks. Times `start_profile`
+ `collect` for both models in-process (one thread, in order), then on the cluster (one task per model,
attack and epsilon; 2 worker processes of one thread), after one untimed warm-up run that imports torch and
ART on the workers. Runs alternate so load changes on a shared machine hit both alike; medians of `n`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]
from bench_project import print_bench_json  # noqa: E402


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("FRAUDGUARD_LOG_LEVEL", "WARNING")

    from distributed import Client, LocalCluster

    from conftest import small_params
    from fraudguard.config import parse_settings
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, split_train_test
    from fraudguard.gates.robustness import start_profile
    from fraudguard.training import train_model

    _one_thread()
    settings = parse_settings(small_params({"simulate": {"n_customers": 300, "n_terminals": 600}}))
    raw = simulate_transactions(settings.simulate)
    train, test = split_train_test(compute_features(raw, settings.featurize), settings.featurize)
    bundle = train_model(train, settings, adversarial=False, progress=False).bundle
    robustness, threat = settings.gates.robustness, settings.threat_model

    def sweep(executor):
        start = time.perf_counter()
        pending = [start_profile(bundle, test, threat, robustness, executor) for _ in ("candidate", "champion")]
        profiles = [p.collect() for p in pending]
        return profiles, time.perf_counter() - start

    here_s, dask_s, diffs = [], [], []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(_one_thread)
        executor = client.get_executor(pure=False)
        warm, warm_s = sweep(executor)
        print(f"warm-up on Dask (imports on the workers): {warm_s:.2f} s")
        for _ in range(args.n):
            here, seconds = sweep(None)
            here_s.append(seconds)
            on_dask, seconds = sweep(executor)
            dask_s.append(seconds)
            for label, other in (("on Dask", on_dask), ("warm-up on Dask", warm)):
                for model, (a, b) in zip(("candidate", "champion"), zip(here, other)):
                    if (a.n_fraud, a.n_detected, len(a.outcomes)) != (b.n_fraud, b.n_detected, len(b.outcomes)):
                        diffs.append(f"{label} {model}: in-process {a} vs {b}")
                    for x, y in zip(a.outcomes, b.outcomes):
                        if x != y:
                            diffs.append(f"{label} {model}: in-process {x} vs {y}")
    attacks = len(here[0].outcomes) + len(here[1].outcomes)
    n_rows = here[0].n_detected
    in_process, dask = statistics.median(here_s), statistics.median(dask_s)
    print(f"{attacks} attacks on {min(n_rows, robustness.max_attack_rows)} detected frauds per model; outcomes "
          + ("identical in-process and on Dask" if not diffs else "DIFFER:\n  " + "\n  ".join(diffs)))
    print(f"in-process (1 thread, in order)   median {in_process:7.2f} s  {['%.2f' % s for s in here_s]}")
    print(f"Dask LocalCluster (2 x 1 thread)  median {dask:7.2f} s  {['%.2f' % s for s in dask_s]}")
    print(f"speed-up x{in_process / dask:.2f} (os.cpu_count()={os.cpu_count()}, load {os.getloadavg()[0]:.1f})")
    print_bench_json({"attacks": attacks, "identical_outcomes": not diffs, "in_process_s": round(in_process, 3),
                      "dask_2_workers_s": round(dask, 3), "speedup": round(in_process / dask, 3),
                      "load_1min": round(os.getloadavg()[0], 1)})
    if diffs:
        sys.exit(1)


if __name__ == "__main__":
    main()
