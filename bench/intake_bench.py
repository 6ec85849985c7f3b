"""Intake: reading and validating a default-size (~229k-row) simulated CSV, clean and with one bad
timestamp (a per-row parsing fallback made the bad file ~40x slower), and quarantine precision on
the clean default world (frauds quarantined, genuine rows quarantined, with and without the true
terminal-location table), and what reading a CSV line for line costs (read_transactions against pandas' bare
read_csv with the same options, on the plain file and on one with every field quoted, where the check for
records that run over several lines scans every value).

    python bench/intake_bench.py [--repeats 3]
    python bench/intake_bench.py --params params.handbook.yaml --precision-only   # handbook-size world
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from bench_project import print_bench_json
from fraudguard.config import load_settings
from fraudguard.data import schema
from fraudguard.data.io import read_transactions
from fraudguard.data.simulator import simulate_world
from fraudguard.data.validation import validate_transactions

ROOT = Path(__file__).resolve().parents[1]


def intake_seconds(path: Path, settings, repeats: int) -> float:
    """Best of `repeats` wall times of read + validate (what import and the validate stage do)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        validate_transactions(read_transactions(path), settings, source=str(path))
        best = min(best, time.perf_counter() - started)
    return best


def csv_timing(frame, validate, repeats: int) -> dict:
    """Best read + validate time of the world as a CSV, clean and with one unparseable timestamp."""
    with tempfile.TemporaryDirectory() as tmp:
        clean_csv, bad_csv = Path(tmp) / "clean.csv", Path(tmp) / "bad.csv"
        frame.to_csv(clean_csv, index=False)
        bad = frame.astype({schema.TX_DATETIME: str})
        bad.loc[len(bad) // 2, schema.TX_DATETIME] = "2024-04-31 25:61:00"
        bad.to_csv(bad_csv, index=False)
        clean_s = intake_seconds(clean_csv, validate, repeats)
        bad_s = intake_seconds(bad_csv, validate, repeats)
    print(f"{len(frame)} rows: clean CSV {clean_s:.2f} s, one bad timestamp {bad_s:.2f} s, "
          f"ratio {bad_s / clean_s:.2f} (target <= 1.5)")
    return {"clean_csv_s": round(clean_s, 3), "bad_timestamp_csv_s": round(bad_s, 3),
            "bad_vs_clean_ratio": round(bad_s / clean_s, 3)}


def line_check_timing(frame, repeats: int) -> dict:
    """Best read_transactions time against pandas' own read of the same CSV (its checks: NUL bytes, header,
    records over several lines), unquoted and with every field quoted."""
    import csv

    import pandas as pd

    def best(read) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            read()
            times.append(time.perf_counter() - started)
        return min(times)

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, quoting in (("plain", csv.QUOTE_MINIMAL), ("all_quoted", csv.QUOTE_ALL)):
            path = Path(tmp) / f"{label}.csv"
            frame.to_csv(path, index=False, quoting=quoting)
            bare = best(lambda: pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8"))
            checked = best(lambda: read_transactions(path))
            print(f"{label} CSV: read_transactions {checked:.3f} s, pandas read_csv {bare:.3f} s, "
                  f"ratio {checked / bare:.2f}")
            figures[f"{label}_csv_read_s"] = round(checked, 3)
            figures[f"{label}_csv_read_vs_pandas"] = round(checked / bare, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", default="params.yaml", help="a profile overlaid on params.yaml")
    parser.add_argument("--precision-only", action="store_true", help="skip the CSV timing; quarantine only")
    args = parser.parse_args()
    # A profile (params.handbook.yaml) is an overlay on params.yaml, as `fraudguard ci profile` applies it.
    overlay = yaml.safe_load((ROOT / args.params).read_text()) if args.params != "params.yaml" else None
    settings = load_settings(ROOT / "params.yaml", overrides=overlay)
    world = simulate_world(settings.simulate)
    frame = world.transactions
    validate = settings.validate_
    figures: dict = {"params": args.params, "rows": len(frame)}
    if not args.precision_only:
        figures.update(csv_timing(frame, validate, args.repeats))
        figures.update(line_check_timing(frame, args.repeats))
    frauds = int((frame[schema.TX_FRAUD] == 1).sum())
    genuine = len(frame) - frauds
    for label, locations in (("no_locations", None), ("true_locations", world.terminals)):
        result = validate_transactions(frame, validate, terminal_locations=locations)
        q = result.quarantined
        q_frauds = int((q[schema.TX_FRAUD] == 1).sum())
        q_genuine = len(q) - q_frauds
        print(f"{label}: {q_frauds} of {frauds} frauds and {q_genuine} of {genuine} genuine rows "
              f"({q_genuine / genuine:.4%}) quarantined (target: 0 frauds, <= 0.01 % genuine); "
              f"flagged {result.report['flagged']}; reasons {result.report['reasons']}")
        figures[label] = {"frauds_quarantined": q_frauds, "genuine_quarantined": q_genuine,
                          "genuine_quarantined_share": round(q_genuine / genuine, 6),
                          "frauds_flagged": sum(result.report["flagged"].values())}
    print_bench_json(figures)


if __name__ == "__main__":
    main()
