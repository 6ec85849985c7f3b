"""The pull-request summary: params diff, metrics diff and gate verdicts as one markdown page.

GitHub Actions and `make ci-report` on a laptop build it with the same functions, so the job summary
a reviewer reads is the file a developer can regenerate locally. Also the CI profile (small params
merged over params.yaml in a throwaway checkout) and the Bandit run of the security job.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess  # nosec B404 -- runs the project's own dvc/bandit executables with argument lists
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fraudguard.config import Settings, StaticAnalysisGateSettings, merge_overrides, parse_settings
from fraudguard.errors import ConfigError, DataVersionError, FraudGuardError
from fraudguard.pipeline import tool_path

log = logging.getLogger(__name__)

SUMMARY_TITLE = "FraudGuard pull-request report"
DEFAULT_PROFILE = Path("params.ci.yaml")
PROFILE_RECORD = Path("reports") / "ci-profile.json"
DEFAULT_SUMMARY = Path("reports") / "ci-summary.md"
DEFAULT_GATE_DIR = Path("reports") / "gates"
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
class BanditRun:
    """One Bandit scan with the static-analysis gate's thresholds, and where its reports went."""

    json_path: Path
    sarif_path: Path | None
    findings: int
    scanned_paths: tuple[str, ...]
    # `# nosec` comments without a written reason ("file:line"), which the gate also blocks on.
    bare_nosec: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.findings == 0 and not self.bare_nosec


# --------------------------------------------------------------------------------------------- dvc


def _run_dvc(root: Path, args: list[str]) -> str:
    """Run `dvc <args>` in root and return stdout; a failure raises DataVersionError with dvc's words."""
    cmd = [tool_path("dvc"), *args]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True,  # nosec B603 - fixed argv, no shell
                          check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataVersionError(
            f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}): "
            + (" | ".join(detail[-5:]) or "no output")
        )
    return proc.stdout.strip()


def _table_rows_or_empty(markdown: str) -> str:
    # dvc prints a bare header when there is nothing to compare; a table without rows says nothing.
    return markdown if len(markdown.splitlines()) > 2 else ""


def dvc_params_diff_md(root: Path, a_rev: str, b_rev: str | None = None) -> str:
    """`dvc params diff --md` from a_rev to b_rev (the workspace when None); '' when nothing changed."""
    return _table_rows_or_empty(
        _run_dvc(root, ["params", "diff", a_rev, *([b_rev] if b_rev else []), "--md"]))


def dvc_metrics_diff_md(root: Path, a_rev: str, b_rev: str | None = None) -> str:
    """`dvc metrics diff --md` from a_rev to b_rev (the workspace when None); '' when nothing changed."""
    return _table_rows_or_empty(
        _run_dvc(root, ["metrics", "diff", a_rev, *([b_rev] if b_rev else []), "--md"]))


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


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {what} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a mapping at top level")
    return data


def merge_ci_profile(params: dict[str, Any], profile: dict[str, Any],
                     source: str = "<ci profile>") -> tuple[Settings, dict[str, tuple[Any, Any]]]:
    """params with the profile merged over it, validated; plus what changed (dotted key -> before, after).

    A profile key that params.yaml does not have is refused by name, before any file is touched.
    """
    before = _flatten(params)
    unknown = sorted(key for key in _flatten(profile) if key not in before)
    if unknown:
        raise ConfigError(f"{source}: keys not in params.yaml: {', '.join(unknown)}")
    merged = merge_overrides(params, profile)
    settings = parse_settings(merged, source=f"params.yaml + {source}")
    after = _flatten(merged)
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
        record = {"profile": str(profile_path),
                  "changes": {key: {"before": old, "after": new} for key, (old, new) in changes.items()}}
        record_path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
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
    parts += ["", f"### Metrics diff (`{summary.base_rev}` → workspace)", ""]
    parts.append(summary.metrics_diff_md or "_No metrics changed._")
    if summary.profile:
        changes = summary.profile.get("changes", {})
        parts += ["", f"### CI profile `{summary.profile.get('profile', '')}`", "",
                  "The pipeline above ran with these values instead of params.yaml's:", "",
                  "| Param | params.yaml | CI |", "|---|---|---|"]
        for key, change in sorted(changes.items()):
            parts.append(f"| {_cell(key)} | {_cell(change.get('before'))} | {_cell(change.get('after'))} |")
    return "\n".join(parts) + "\n"


def build_ci_summary(root: Path, base_rev: str, head_rev: str | None = None,
                     gate_dir: Path | None = None, profile_record: Path | None = None) -> CiSummary:
    """Collect the params diff, metrics diff, gate verdicts and CI profile of the checkout at root.

    head_rev None compares params against the workspace; CI passes HEAD there because its workspace
    carries the CI profile, which is not a change of the pull request.
    """
    gate_dir = gate_dir if gate_dir is not None else root / DEFAULT_GATE_DIR
    profile_record = profile_record if profile_record is not None else root / PROFILE_RECORD
    return CiSummary(
        base_rev=base_rev,
        head_rev=head_rev,
        params_diff_md=dvc_params_diff_md(root, base_rev, head_rev),
        metrics_diff_md=dvc_metrics_diff_md(root, base_rev),
        gates=collect_gate_rows(gate_dir),
        gate_dir=gate_dir,
        profile=read_profile_record(profile_record),
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

    Counts the findings at or above min_severity and min_confidence, and the bare `# nosec` comments
    (the gate's own check, reused); failing is left to the caller so every report is written first.
    """
    from fraudguard.gates.static_analysis import find_bare_nosec

    paths = tuple(p for p in settings.paths if (root / p).exists())
    if not paths:
        raise FraudGuardError(f"static analysis: none of {settings.paths} exists under {root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = [tool_path("bandit"), "-r", *paths, "-q",
            "--severity-level", settings.min_severity, "--confidence-level", settings.min_confidence]
    json_path = out_dir / "bandit.json"
    # Bandit exits 1 when it finds issues; the JSON report is the verdict, so the exit code is not.
    proc = subprocess.run([*base, "-f", "json", "-o", str(json_path)], cwd=root,  # nosec B603 - fixed argv
                          capture_output=True, text=True, check=False)
    if not json_path.is_file():
        raise FraudGuardError(f"bandit wrote no report to {json_path} (exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-500:]}")
    report = json.loads(json_path.read_text(encoding="utf-8"))
    if report.get("errors"):
        log.warning("bandit could not scan: %s", report["errors"])
    sarif_path: Path | None = None
    if sarif_formatter_available():
        sarif_path = out_dir / "bandit.sarif"
        subprocess.run([*base, "-f", "sarif", "-o", str(sarif_path)], cwd=root,  # nosec B603 - fixed argv
                       capture_output=True, text=True, check=False)
        if not sarif_path.is_file():
            log.warning("bandit wrote no SARIF report to %s", sarif_path)
            sarif_path = None
    else:
        log.warning("bandit has no SARIF formatter here (install bandit[sarif]); JSON only")
    bare = find_bare_nosec([root / p for p in paths])
    bare_names = tuple(f"{Path(b.path).resolve().relative_to(root.resolve())}:{b.line}" for b in bare)
    (out_dir / "bandit_bare_nosec.json").write_text(json.dumps(list(bare_names), indent=2) + "\n",
                                                    encoding="utf-8")
    return BanditRun(json_path=json_path, sarif_path=sarif_path,
                     findings=len(report.get("results", [])), scanned_paths=paths, bare_nosec=bare_names)


def step_summary_path() -> Path | None:
    """$GITHUB_STEP_SUMMARY as a path when running in GitHub Actions, else None."""
    value = os.environ.get("GITHUB_STEP_SUMMARY")
    return Path(value) if value else None
