"""Run every bench/*_bench.py, collect its figures, write bench/results.json and bench/results.md.

Convention for bench scripts: print human-readable figures as you like, and end with ONE line
    BENCH_JSON {"rows_per_s": 123456.0, "ratio_vs_naive": 41.2, ...}
(a JSON object of numbers, strings or nested objects of them). run_all parses the last such line;
a bench without one is still run and its exit status and output tail are recorded.

Usage: python bench/run_all.py [--only featurize training] [--timeout 1800]   (or `make bench`)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess  # nosec B404 -- runs this repository's own bench scripts with this interpreter
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MARKER = "BENCH_JSON "
log = logging.getLogger("bench.run_all")


@dataclass
class BenchRun:
    """One bench script's run: exit status, wall time, parsed figures and the end of its output."""

    name: str
    script: str
    returncode: int
    seconds: float
    figures: dict[str, Any] | None
    output_tail: str
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """The machine the figures were measured on: cores, CPU model, Python and key library versions."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions = {}
    for pkg in ("torch", "numpy", "pandas", "adversarial-robustness-toolbox", "scikit-learn"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min": load,
        "versions": versions,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def parse_figures(stdout: str) -> dict[str, Any] | None:
    """The JSON object of the last `BENCH_JSON {...}` line in stdout, or None when there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                payload = json.loads(line[len(MARKER):])
            except json.JSONDecodeError as exc:
                raise ValueError(f"malformed {MARKER.strip()} line: {exc}") from exc
            if not isinstance(payload, dict):
                raise ValueError(f"{MARKER.strip()} must be a JSON object, got {type(payload).__name__}")
            return payload
    return None


def discover(only: list[str] | None = None) -> list[Path]:
    """bench/*_bench.py, sorted; with `only`, just the named ones (name = file stem minus _bench)."""
    scripts = sorted(BENCH_DIR.glob("*_bench.py"))
    if only:
        wanted = set(only)
        scripts = [s for s in scripts if s.stem.removesuffix("_bench") in wanted or s.stem in wanted]
    return scripts


def run_bench(script: Path, timeout: float) -> BenchRun:
    """Run one bench script with this interpreter from the project root and collect its figures."""
    name = script.stem.removesuffix("_bench")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,  # nosec B603 - fixed argv, no shell
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return BenchRun(name, str(script.relative_to(ROOT)), -1, time.perf_counter() - started, None,
                        out[-4000:], error=f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - started
    error = None
    try:
        figures = parse_figures(proc.stdout)
    except ValueError as exc:
        figures, error = None, str(exc)
    if proc.returncode != 0:
        error = f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
    # The human-readable figures, minus the machine line, so results.md can show them verbatim.
    tail = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith(MARKER))
    return BenchRun(name, str(script.relative_to(ROOT)), proc.returncode, seconds, figures, tail[-4000:],
                    error=error)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def render_markdown(machine: dict[str, Any], runs: list[BenchRun]) -> str:
    """results.md: the machine, then one table row per figure of each bench."""
    lines = ["# FraudGuard benchmarks", "",
             f"Measured {machine['date_utc']} on {machine['cpu_model']}, {machine['nproc']} usable core(s) "
             f"(load {machine['load_avg_1min']}), Python {machine['python']}, "
             + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".", "",
             "| Bench | Figure | Value |", "|---|---|---|"]
    for run in runs:
        status = "ok" if run.error is None else f"FAILED ({run.error.splitlines()[0][:120]})"
        lines.append(f"| {run.name} | status | {_fmt(status)} |")
        lines.append(f"| {run.name} | wall seconds | {run.seconds:.1f} |")
        for key, value in _flatten(run.figures or {}).items():
            lines.append(f"| {run.name} | {_fmt(key)} | {_fmt(value)} |")
    lines.append("")
    for run in runs:
        if run.output_tail.strip():
            lines += [f"## {run.name}", "", "```", run.output_tail.strip(), "```", ""]
    return "\n".join(lines)


def kept_sections(markdown: str) -> str:
    """Sections a bench writes into results.md itself (between `<!-- NAME:start -->` and `<!-- NAME:end -->`,
    e.g. model_quality_bench --write), which a rewrite of the file keeps."""
    found = re.findall(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->\n?", markdown, flags=re.S)
    spans = [re.search(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->\n?", markdown, re.S)
             for name in dict.fromkeys(found)]
    return "".join(m.group(0) for m in spans if m)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="bench names to run (e.g. featurize training)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per bench script")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    scripts = discover(args.only)
    if not scripts:
        log.error("no bench/*_bench.py scripts found%s", f" for {args.only}" if args.only else "")
        return 1
    machine = machine_info()
    runs = []
    for script in scripts:
        log.info("running %s", script.name)
        run = run_bench(script, args.timeout)
        log.info("%s: %s in %.1f s", run.name, "ok" if run.error is None else run.error, run.seconds)
        runs.append(run)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(
        json.dumps({"machine": machine, "benches": [asdict(r) for r in runs]}, indent=2) + "\n")
    results_md = args.out_dir / "results.md"
    kept = kept_sections(results_md.read_text() if results_md.is_file() else "")
    results_md.write_text(render_markdown(machine, runs) + ("\n" + kept if kept else ""))
    log.info("wrote %s and %s", args.out_dir / "results.json", args.out_dir / "results.md")
    return 0 if all(r.error is None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
