"""Concurrent gates on one torch module vs on the private copies promotion.run_gate gives each gate.

The gates of a run go at once, in threads. What they do to the model, reduced to its core: two threads take ART
loss gradients (the robustness gate's attacks: .grad filled and cleared on the parameters) while two wrap the
module in new ART classifiers and predict (the privacy gate; wrapping moves the module to its device). Each
trial is a fresh interpreter for `--seconds`; a trial "crashed" when it died by a signal or a thread raised.

    python bench/gate_threads_bench.py [--trials 3] [--seconds 20]

Seen on the 2-core machine (stop 31): shared, 3 of 3 trials died with SIGSEGV in libtorch 2.3 s after the
interpreter started (imports included); private copies, 0 of 3 in 20 s each.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess  # nosec B404 - this interpreter on this file, no shell
import sys
import time

TRIAL = r"""
import sys, threading, time
import numpy as np, torch
from fraudguard.attacks import make_art_classifier
from fraudguard.gates.base import GateContext, ModelUnderTest
from fraudguard.model import FraudMLP, ModelBundle, Standardizer
from fraudguard.promotion import private_models

torch.set_num_threads(1)
mode, seconds = sys.argv[1], float(sys.argv[2])
features = tuple(f"f{i}" for i in range(15))
bundle = ModelBundle(FraudMLP(15, (32, 16), 0.1).eval(), Standardizer(features, np.zeros(15), np.ones(15)),
                     (32, 16), 0.1, threshold=0.5)
candidate = ModelUnderTest(bundle=bundle, version=1)
context = GateContext(settings=None, train_features=None, test_features=None, newest_window=None,
                      source_root=None, report_dir=None)
x = np.random.default_rng(0).normal(size=(256, 15)).astype(np.float32)
labels = np.eye(2, dtype=np.float32)[(np.arange(256) % 7 == 0).astype(int)]
stop, errors = threading.Event(), []

def module():
    return bundle.module if mode == "shared" else private_models(candidate, context)[0].bundle.module

def gradients():
    classifier = make_art_classifier(module(), 15)
    while not stop.is_set():
        classifier.loss_gradient(x, labels)

def predictions():
    own = module()
    while not stop.is_set():
        make_art_classifier(own, 15).predict(x)

def guarded(work):
    try:
        work()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        stop.set()

threads = [threading.Thread(target=guarded, args=(w,)) for w in (gradients, gradients, predictions, predictions)]
for t in threads:
    t.start()
stop.wait(seconds)
stop.set()
for t in threads:
    t.join()
print("TRIAL_ERRORS", len(errors), errors[0][:160] if errors else "")
sys.exit(1 if errors else 0)
"""


def trial(mode: str, seconds: float) -> dict[str, object]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", TRIAL, mode, str(seconds)],  # nosec B603 - fixed argv
                          capture_output=True, text=True, timeout=seconds + 120, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode < 0:
        outcome = f"killed by {signal.Signals(-proc.returncode).name}"
    elif proc.returncode:
        lines = [line for line in proc.stdout.splitlines() if line.startswith("TRIAL_ERRORS")]
        outcome = f"a thread raised ({lines[-1].split(' ', 2)[2] if lines else proc.stderr.strip()[-160:]})"
    else:
        outcome = "ran clean"
    return {"mode": mode, "returncode": proc.returncode, "seconds": round(elapsed, 1), "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    figures: dict[str, object] = {}
    for mode in ("shared", "private"):
        runs = [trial(mode, args.seconds) for _ in range(args.trials)]
        for run in runs:
            print(f"{mode:8s} rc {run['returncode']:>4}  {run['seconds']:6.1f} s  {run['outcome']}")
        figures[f"{mode}_crashed_trials"] = sum(1 for run in runs if run["returncode"] != 0)
    figures["trials"] = args.trials
    figures["seconds_per_trial"] = args.seconds
    print("BENCH_JSON " + json.dumps(figures))


if __name__ == "__main__":
    main()
