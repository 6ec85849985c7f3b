"""The pull-request summary: params diff, metrics diff and gate verdicts as one markdown page.

GitHub Actions and `make ci-report` on a laptop build it with the same functions, so the job summary
a reviewer reads is the file a developer can regenerate locally. Also the CI profile (small params
merged over params.yaml in a throwaway checkout), the base revision's metrics on that same profile (so
the metrics diff compares like with like) and the Bandit run of the security job.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess  # nosec B404 - runs git and the project's own CLI with fixed argument lists, no shell
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fraudguard.config import Settings, StaticAnalysisGateSettings, flat_keys, merge_overrides, parse_settings
from fraudguard.errors import ConfigError, DataVersionError, FraudGuardError, StaticAnalysisError
from fraudguard.files import sha256_file, write_json
from fraudguard.tools import read_bandit_report, run_dvc, tool_path
from fraudguard.tools import run_bandit as run_bandit_tool

log = logging.getLogger(__name__)

SUMMARY_TITLE = "FraudGuard pull-request report"
DEFAULT_PROFILE = Path("params.ci.yaml")
PROFILE_RECORD = Path("reports") / "ci-profile.json"
DEFAULT_SUMMARY = Path("reports") / "ci-summary.md"
DEFAULT_GATE_DIR = Path("reports") / "gates"
DEFAULT_BASE_METRICS_DIR = Path("reports") / "ci-base"
# What `ci base-metrics` writes next to the base's metrics files: which revision and profile made them.
BASE_RECORD = "base.json"
# What fraudguard.promotion writes per gated version: <gate dir>/v<version>/gate_summary.json.
PROMOTION_SUMMARY = "gate_summary.json"


@dataclass(frozen=True)
class GateRow:
    """One gate verdict as the summary shows it, read back from what the promotion wrote."""

    name: str
    passed: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class CiSummary:
    """Everything the pull-request summary shows; `render_summary` turns it into markdown."""

    base_rev: str
    head_rev: str | None
    params_diff_md: str
    metrics_diff_md: str
    gates: tuple[GateRow, ...]
    gate_dir: Path
    profile: dict[str, Any] | None = None
    # The base side of the metrics diff when it was produced with the CI profile (`ci base-metrics`).
    base_metrics: "BaseMetrics | None" = None
    # What the pull request changes in the CI profile itself ((key, base, head) rows): the dry-run gates above judge
    # by the profile's values, and `dvc params diff` covers params.yaml only.
    profile_changes: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def gates_passed(self) -> bool:
        """True when at least one gate verdict was found and every one passed."""
        return bool(self.gates) and all(row.passed for row in self.gates)


@dataclass(frozen=True)
class ProfileApplication:
    """What merging the CI profile over params.yaml changed: dotted key -> (before, after)."""

    profile_path: Path
    params_path: Path
    changes: dict[str, tuple[Any, Any]]


@dataclass(frozen=True)
class BaseMetrics:
    """The base revision's metrics files, produced by its own code with the CI profile merged over its params."""

    directory: Path
    base_rev: str
    commit: str
    profile: str
    profile_sha256: str
    reused: bool = False        # found in directory (a cache keyed on commit and profile), not recomputed


@dataclass(frozen=True)
class BanditRun:
    """One Bandit scan with the static-analysis gate's thresholds, and where its reports went."""

    json_path: Path
    sarif_path: Path | None
    findings: int
    scanned_paths: tuple[str, ...]
    # Bandit suppression comments (nosec) without a written reason ("file:line"), which the gate also blocks on.
    bare_nosec: tuple[str, ...] = ()
    # "file: reason" for each file Bandit could not scan; the gate fails closed on these, and so does CI.
    scan_errors: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.findings == 0 and not self.bare_nosec and not self.scan_errors


# ------------------------------------------------------------------------------------- git and dvc


def _run_tool(tool: str, root: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run `<tool> <args>` (git, fraudguard; dvc goes through fraudguard.tools.run_dvc) in root and return
    stdout; a failure raises DataVersionError with the tool's words."""
    exe = shutil.which("git") if tool == "git" else tool_path(tool)
    if exe is None:
        raise DataVersionError(f"{tool} is not installed")
    proc = subprocess.run([exe, *args], cwd=root, capture_output=True, text=True, env=env,  # nosec B603 - fixed argv, no shell
                          check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataVersionError(
            f"`{tool} {' '.join(args)}` failed in {root} (exit {proc.returncode}): "
            + (" | ".join(detail[-5:]) or "no output")
        )
    return proc.stdout.strip()


def _table_rows_or_empty(markdown: str) -> str:
    # dvc prints a bare header when there is nothing to compare; a table without rows says nothing.
    return markdown if len(markdown.splitlines()) > 2 else ""


def dvc_params_diff_md(root: Path, a_rev: str, b_rev: str | None = None) -> str:
    """`dvc params diff --md` from a_rev to b_rev (the workspace when None); '' when nothing changed."""
    return _table_rows_or_empty(
        run_dvc(["params", "diff", a_rev, *([b_rev] if b_rev else []), "--md"], root).stdout.strip())


def dvc_metrics_diff_md(root: Path, a_rev: str, b_rev: str | None = None) -> str:
    """`dvc metrics diff --md` from a_rev to b_rev (the workspace when None); '' when nothing changed."""
    return _table_rows_or_empty(
        run_dvc(["metrics", "diff", a_rev, *([b_rev] if b_rev else []), "--md"], root).stdout.strip())


# ------------------------------------------------------------------------------------------- gates


def _as_float_map(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(key): float(item) for key, item in value.items() if isinstance(item, (int, float))}


def _row_from_mapping(data: dict[str, Any], source: str) -> GateRow | None:
    """A GateRow from a GateResult-shaped mapping (name/gate + passed), else None."""
    name = data.get("name", data.get("gate"))
    passed = data.get("passed")
    if passed is None and isinstance(data.get("verdict"), str):
        passed = data["verdict"].lower() == "passed"
    if not isinstance(name, str) or not isinstance(passed, bool):
        return None
    return GateRow(
        name=name,
        passed=passed,
        reason=str(data.get("reason", "")),
        metrics=_as_float_map(data.get("metrics")),
        thresholds=_as_float_map(data.get("thresholds")),
        source=source,
    )


def _rows_from_json(payload: Any, source: str) -> list[GateRow]:
    """Gate rows from one JSON document: a GateResult mapping, a list of them, or {"gates": ...}."""
    if isinstance(payload, list):
        return [row for item in payload if isinstance(item, dict)
                for row in [_row_from_mapping(item, source)] if row is not None]
    if not isinstance(payload, dict):
        return []
    single = _row_from_mapping(payload, source)
    if single is not None:
        return [single]
    gates = payload.get("gates", payload.get("results"))
    if isinstance(gates, list):
        return _rows_from_json(gates, source)
    if isinstance(gates, dict):
        rows = []
        for name, item in gates.items():
            if isinstance(item, dict):
                row = _row_from_mapping({"name": name, **item}, source)
                if row is not None:
                    rows.append(row)
        return rows
    return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("skipping %s: not readable JSON (%s)", path, exc)
        return None


def collect_gate_rows(gate_dir: Path) -> tuple[GateRow, ...]:
    """The gate verdicts of the latest promotion under gate_dir, one row per gate, sorted by name.

    The promotion writes `<gate_dir>/v<version>/gate_summary.json`; the newest such file is the latest
    dry run, so verdicts of older versions never mix in. Without one, every GateResult-shaped JSON
    file under gate_dir is read instead (gates run on their own).
    """
    if not gate_dir.is_dir():
        return ()
    summaries = sorted(gate_dir.rglob(PROMOTION_SUMMARY), key=lambda p: p.stat().st_mtime)
    for path in reversed(summaries):
        rows = _rows_from_json(_read_json(path), str(path.relative_to(gate_dir)))
        if rows:
            return tuple(sorted(rows, key=lambda row: row.name))
    found: dict[str, GateRow] = {}
    for path in sorted(gate_dir.rglob("*.json")):
        for row in _rows_from_json(_read_json(path), str(path.relative_to(gate_dir))):
            found[row.name] = row
    return tuple(found[name] for name in sorted(found))


# ----------------------------------------------------------------------------------------- profile


def _read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    from fraudguard.config import load_params_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    data = load_params_yaml(text, f"{path} ({what})")  # a repeated key is refused, not the last one kept
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a mapping at top level")
    return data


def merge_ci_profile(params: dict[str, Any], profile: dict[str, Any],
                     source: str = "<ci profile>") -> tuple[Settings, dict[str, tuple[Any, Any]]]:
    """params with the profile merged over it, validated; plus what changed (dotted key -> before, after).

    A profile key that params.yaml does not have is refused by name, before any file is touched.
    """
    before = flat_keys(params)
    unknown = sorted(key for key in flat_keys(profile) if key not in before)
    if unknown:
        raise ConfigError(f"{source}: keys not in params.yaml: {', '.join(unknown)}")
    merged = merge_overrides(params, profile)
    settings = parse_settings(merged, source=f"params.yaml + {source}")
    after = flat_keys(merged)
    changes = {key: (before[key], after[key]) for key in after if before.get(key) != after[key]}
    return settings, changes


def apply_ci_profile(params_path: Path, profile_path: Path,
                     record_path: Path | None = None) -> ProfileApplication:
    """Rewrite params_path with the CI profile merged over it (CI's throwaway checkout only).

    The changes are also recorded in record_path (JSON) so the summary can say what the pipeline ran
    with. Comments in params.yaml are not kept: `git checkout params.yaml` restores the file.
    """
    params = _read_yaml_mapping(params_path, "params file")
    profile = _read_yaml_mapping(profile_path, "CI profile")
    _, changes = merge_ci_profile(params, profile, source=str(profile_path))
    merged = merge_overrides(params, profile)
    header = (f"# params.yaml with {profile_path.name} merged over it for CI "
              "(`git checkout params.yaml` restores the original).\n")
    params_path.write_text(header + yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    if record_path is not None:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record = {"profile": str(profile_path), "profile_sha256": sha256_file(profile_path),
                  "changes": {key: {"before": old, "after": new} for key, (old, new) in changes.items()}}
        write_json(record_path, record, default=str)
    log.info("applied %s to %s: %d value(s) changed", profile_path, params_path, len(changes))
    return ProfileApplication(profile_path=profile_path, params_path=params_path, changes=changes)


def read_profile_record(path: Path) -> dict[str, Any] | None:
    """The record apply_ci_profile wrote, or None when the profile was not applied here."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable CI profile record: {exc}") from exc
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------ base metrics


def metrics_paths(root: Path) -> list[str]:
    """The metrics files dvc.yaml under root declares (relative paths), in stage order."""
    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{root / 'dvc.yaml'}: cannot read the metrics it declares: {exc}") from exc
    paths: list[str] = []
    for stage in stages.values():
        for item in stage.get("metrics", []) or []:
            paths.extend([item] if isinstance(item, str) else list(item))
    return paths


def read_base_record(directory: Path) -> dict[str, Any] | None:
    """What `ci base-metrics` recorded in directory (revision, commit, profile), or None when it holds none."""
    return read_profile_record(directory / BASE_RECORD)


def compute_base_metrics(root: Path, base_rev: str, profile_path: Path, out_dir: Path) -> BaseMetrics:
    """The base revision's metrics on the CI profile, in out_dir: like with like for the metrics diff.

    base_rev is checked out into a scratch git worktree; the profile (this checkout's file) is merged over the
    base's params.yaml; the base's own code simulates the data and runs `dvc repro` up to every stage that
    writes metrics (no registration). out_dir gets those files and base.json (commit, profile sha256); when
    out_dir already holds them for this commit and profile (a CI cache keyed on both), nothing is recomputed.
    """
    root = Path(root).resolve()
    profile_path = (root / profile_path).resolve()
    commit = _run_tool("git", root, ["rev-parse", "--verify", f"{base_rev}^{{commit}}"])
    profile_sha = sha256_file(profile_path)
    existing = read_base_record(out_dir)
    if existing and existing.get("commit") == commit and existing.get("profile_sha256") == profile_sha:
        log.info("base metrics for %s on %s already in %s", commit[:12], profile_path.name, out_dir)
        return BaseMetrics(out_dir, base_rev, commit, str(existing.get("profile")), profile_sha, reused=True)
    with tempfile.TemporaryDirectory(prefix="fraudguard-ci-base-") as tmp:
        worktree = Path(tmp) / "base"
        _run_tool("git", root, ["worktree", "add", "--detach", "--quiet", str(worktree), commit])
        try:
            _run_base_pipeline(worktree, profile_path)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            out_dir.mkdir(parents=True)
            for rel in metrics_paths(worktree):
                if (worktree / rel).is_file():
                    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(worktree / rel, out_dir / rel)
        finally:
            _run_tool("git", root, ["worktree", "remove", "--force", str(worktree)])
    record = {"base_rev": base_rev, "commit": commit, "profile": profile_path.name, "profile_sha256": profile_sha}
    write_json(out_dir / BASE_RECORD, record)
    log.info("base metrics of %s (%s) on %s written to %s", base_rev, commit[:12], profile_path.name, out_dir)
    return BaseMetrics(out_dir, base_rev, commit, profile_path.name, profile_sha)


def _run_base_pipeline(worktree: Path, profile_path: Path) -> None:
    """Profile, simulate and `dvc repro` of every metrics-writing stage, with the worktree's own code."""
    apply_ci_profile(worktree / "params.yaml", profile_path, worktree / PROFILE_RECORD)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PREFECT_"))}
    # The base's code, not the installed package's: stage commands are `python -m fraudguard.stages.<name>`.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(worktree / "src"), env.get("PYTHONPATH", "")]))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    _run_tool("fraudguard", worktree, ["data", "simulate"], env=env)
    stages = yaml.safe_load((worktree / "dvc.yaml").read_text(encoding="utf-8")).get("stages", {})
    with_metrics = [name for name, stage in stages.items() if stage.get("metrics")]
    run_dvc(["repro", *with_metrics], worktree, env=env)


def _flat_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    return {key: float(value) for key, value in flat_keys(data, prefix).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def read_metrics(root: Path, paths: list[str]) -> dict[str, dict[str, float]]:
    """path -> flattened numeric metrics of each metrics file under root that exists."""
    out: dict[str, dict[str, float]] = {}
    for rel in paths:
        data = _read_json(root / rel) if (root / rel).is_file() else None
        if isinstance(data, dict):
            out[rel] = _flat_numbers(data)
    return out


def metrics_diff_table(base: dict[str, dict[str, float]], head: dict[str, dict[str, float]]) -> str:
    """A markdown table of the metrics that differ (as `dvc metrics diff --md`); '' when none does."""
    lines = ["| Path | Metric | base | workspace | Change |", "|---|---|---|---|---|"]
    for path in sorted(set(base) | set(head)):
        old, new = base.get(path, {}), head.get(path, {})
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            if a == b:
                continue
            change = _fmt(b - a) if a is not None and b is not None else "-"
            lines.append(f"| {_cell(path)} | {_cell(key)} | {_fmt(a) if a is not None else '-'} "
                         f"| {_fmt(b) if b is not None else '-'} | {change} |")
    return _table_rows_or_empty("\n".join(lines))


# ---------------------------------------------------------------------------------------- markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_gate_table(rows: tuple[GateRow, ...]) -> str:
    """A markdown table with one row per gate: verdict, reason, measured metrics vs thresholds."""
    lines = ["| Gate | Verdict | Reason | Metrics | Thresholds |", "|---|---|---|---|---|"]
    for row in rows:
        verdict = "✅ passed" if row.passed else "❌ failed"
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(row.metrics.items()))
        thresholds = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(row.thresholds.items()))
        lines.append(f"| {_cell(row.name)} | {verdict} | {_cell(row.reason)} | {_cell(metrics)} "
                     f"| {_cell(thresholds)} |")
    return "\n".join(lines)


def ci_profile_changes(root: Path, base_rev: str, head_rev: str | None,
                       profile: Path = DEFAULT_PROFILE) -> tuple[tuple[str, Any, Any], ...]:
    """(key, base value, head value) for every key of the CI profile that differs between base_rev and head_rev
    (the working tree's file when None); a file missing on one side reads as empty."""
    from fraudguard.config import flat_keys, load_params_yaml
    from fraudguard.policy import CommittedTree

    def at(rev: str | None) -> dict[str, Any]:
        if rev is None:
            path = root / profile
            text = path.read_text(encoding="utf-8") if path.is_file() else ""
        else:
            tree = CommittedTree.resolve(root, rev)
            text = (tree.read_text(profile) if tree is not None else None) or ""
        return flat_keys(load_params_yaml(text, f"{profile} at {rev or 'the working tree'}") or {})

    base, head = at(base_rev), at(head_rev)
    return tuple((key, base.get(key), head.get(key)) for key in sorted(set(base) | set(head))
                 if base.get(key) != head.get(key))


def render_summary(summary: CiSummary) -> str:
    """The whole pull-request report as GitHub-flavoured markdown."""
    head = summary.head_rev or "workspace"
    parts = [f"## {SUMMARY_TITLE}", ""]
    if summary.gates:
        failed = [row.name for row in summary.gates if not row.passed]
        parts.append("**Gates: all passed.**" if not failed
                     else f"**Gates: FAILED: {', '.join(failed)}.**")
    else:
        parts.append(f"**Gates: no verdicts found in `{summary.gate_dir}`.**")
    sources = sorted({row.source for row in summary.gates})
    origin = f" from `{summary.gate_dir / sources[0]}`" if len(sources) == 1 else ""
    parts += ["", f"### Gate verdicts (dry-run promotion){origin}", ""]
    parts.append(render_gate_table(summary.gates) if summary.gates else "_No gate results._")
    parts += ["", f"### Params diff (`{summary.base_rev}` → `{head}`)", ""]
    parts.append(summary.params_diff_md or "_No params changed._")
    if summary.profile_changes:
        from fraudguard.policy import POLICY_KEYS, POLICY_SECTIONS

        policy_keys = {f"{section}.{key}" for section, key in POLICY_KEYS}
        parts += ["", f"### CI profile changed (`{summary.base_rev}` → `{head}`)", "",
                  "The dry-run gates above judged by the CI profile's values; this pull request changes them:", "",
                  "| Param | base | head | |", "|---|---|---|---|"]
        for key, before, after in summary.profile_changes:
            policy = key.split(".")[0] in POLICY_SECTIONS or key in policy_keys
            parts.append(f"| {_cell(key)} | {_cell(before)} | {_cell(after)} | {'⚠️ gate policy' if policy else ''} |")
    parts += ["", *_metrics_heading(summary), ""]
    parts.append(summary.metrics_diff_md or "_No metrics changed._")
    if summary.profile:
        changes = summary.profile.get("changes", {})
        parts += ["", f"### CI profile `{summary.profile.get('profile', '')}`", "",
                  "The pipeline above ran with these values instead of params.yaml's:", "",
                  "| Param | params.yaml | CI |", "|---|---|---|"]
        for key, change in sorted(changes.items()):
            parts.append(f"| {_cell(key)} | {_cell(change.get('before'))} | {_cell(change.get('after'))} |")
    return "\n".join(parts) + "\n"


def _metrics_heading(summary: CiSummary) -> list[str]:
    """The metrics section's title and the line saying which profile each side ran with."""
    base, profile = summary.base_metrics, summary.profile or {}
    if base is None:
        lines = [f"### Metrics diff (`{summary.base_rev}` → workspace)"]
        if profile:
            lines += ["", f"⚠️ Not like with like: the workspace ran with the CI profile `{profile.get('profile', '')}`, "
                      f"the base column holds the metrics files committed on `{summary.base_rev}` (`make ci-base` "
                      "computes them with the same profile)."]
        return lines
    lines = [f"### Metrics diff (`{summary.base_rev}` at `{base.commit[:12]}` → workspace)", ""]
    if profile.get("profile_sha256") == base.profile_sha256:
        lines.append(f"Both sides ran with the CI profile `{base.profile}` (sha256 `{base.profile_sha256[:12]}`); "
                     "the base with its own code and params.yaml.")
    else:
        lines.append(f"⚠️ Not like with like: the base ran with the CI profile `{base.profile}` (sha256 "
                     f"`{base.profile_sha256[:12]}`), the workspace with "
                     + (f"`{profile.get('profile')}` (sha256 `{str(profile.get('profile_sha256', ''))[:12]}`)."
                        if profile else "params.yaml as it is (no CI profile applied)."))
    return lines


def build_ci_summary(root: Path, base_rev: str, head_rev: str | None = None,
                     gate_dir: Path | None = None, profile_record: Path | None = None,
                     base_metrics_dir: Path | None = None) -> CiSummary:
    """Collect the params diff, metrics diff, gate verdicts and CI profile of the checkout at root.

    head_rev None compares params against the workspace; CI passes HEAD there because its workspace
    carries the CI profile, which is not a change of the pull request. base_metrics_dir, when it holds
    `ci base-metrics` output, is the base side of the metrics diff; otherwise the metrics committed at
    base_rev are (`dvc metrics diff`).
    """
    gate_dir = gate_dir if gate_dir is not None else root / DEFAULT_GATE_DIR
    profile_record = profile_record if profile_record is not None else root / PROFILE_RECORD
    record = read_base_record(base_metrics_dir) if base_metrics_dir is not None else None
    base_metrics = None
    if record is not None and base_metrics_dir is not None:
        base_metrics = BaseMetrics(base_metrics_dir, str(record.get("base_rev", base_rev)),
                                   str(record.get("commit", "")), str(record.get("profile", "")),
                                   str(record.get("profile_sha256", "")), reused=True)
        paths = metrics_paths(root)
        metrics_md = metrics_diff_table(read_metrics(base_metrics_dir, paths), read_metrics(root, paths))
    else:
        if base_metrics_dir is not None:
            log.warning("%s holds no base metrics (%s); diffing against the metrics committed at %s",
                        base_metrics_dir, BASE_RECORD, base_rev)
        metrics_md = dvc_metrics_diff_md(root, base_rev)
    return CiSummary(
        base_rev=base_rev,
        head_rev=head_rev,
        params_diff_md=dvc_params_diff_md(root, base_rev, head_rev),
        metrics_diff_md=metrics_md,
        gates=collect_gate_rows(gate_dir),
        gate_dir=gate_dir,
        profile=read_profile_record(profile_record),
        base_metrics=base_metrics,
        profile_changes=ci_profile_changes(root, base_rev, head_rev),
    )


def write_summary(markdown: str, out_path: Path, step_summary: Path | None = None) -> None:
    """Write the summary to out_path and append it to the GitHub step summary file when given."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(markdown, encoding="utf-8")
    if step_summary is not None:
        with step_summary.open("a", encoding="utf-8") as handle:
            handle.write(markdown)


# ------------------------------------------------------------------------------------------ bandit


def sarif_formatter_available() -> bool:
    """Whether the installed Bandit can write SARIF (its formatter needs the `bandit[sarif]` extra)."""
    for entry in importlib.metadata.entry_points(group="bandit.formatters"):
        if entry.name == "sarif":
            try:
                entry.load()
            except ImportError:
                return False
            return True
    return False


def run_bandit(root: Path, settings: StaticAnalysisGateSettings, out_dir: Path) -> BanditRun:
    """Scan settings.paths under root as the static-analysis gate does; JSON (+ SARIF) reports.

    Counts the findings at or above min_severity and min_confidence, the files Bandit could not scan
    and the bare `# nosec` comments, with the gate's own functions; failing is left to the caller so
    every report is written first.
    """
    from fraudguard.gates.static_analysis import blocking_findings, find_bare_nosec, scan_errors

    paths = tuple(p for p in settings.paths if (root / p).exists())
    if not paths:
        raise FraudGuardError(f"static analysis: none of {settings.paths} exists under {root}")
    # The report lists only what is at or above the gate's levels (what a reviewer needs to read).
    levels = ("--severity-level", settings.min_severity, "--confidence-level", settings.min_confidence)
    json_path = run_bandit_tool(paths, out_dir / "bandit.json", cwd=root, extra_args=levels)
    report = read_bandit_report(json_path)
    errors = tuple(scan_errors(report))
    if errors:
        log.warning("bandit could not scan: %s", "; ".join(errors))
    sarif_path: Path | None = None
    if sarif_formatter_available():
        try:
            sarif_path = run_bandit_tool(paths, out_dir / "bandit.sarif", cwd=root, report_format="sarif",
                                         extra_args=levels)
        except StaticAnalysisError as exc:  # the JSON report is the verdict; SARIF is for display
            log.warning("no SARIF report: %s", exc)
    else:
        log.warning("bandit has no SARIF formatter here (install bandit[sarif]); JSON only")
    bare = find_bare_nosec([root / p for p in paths])
    bare_names = tuple(f"{Path(b.path).resolve().relative_to(root.resolve())}:{b.line}" for b in bare)
    write_json(out_dir / "bandit_bare_nosec.json", list(bare_names))
    findings = blocking_findings(report, settings.min_severity, settings.min_confidence)
    return BanditRun(json_path=json_path, sarif_path=sarif_path, findings=len(findings), scanned_paths=paths,
                     bare_nosec=bare_names, scan_errors=errors)


def step_summary_path() -> Path | None:
    """$GITHUB_STEP_SUMMARY as a path when running in GitHub Actions, else None."""
    value = os.environ.get("GITHUB_STEP_SUMMARY")
    return Path(value) if value else None
