"""Static-analysis gate: Bandit over the code the candidate was built from.

Blocks on any finding at or above both `min_severity` and `min_confidence`, and on any bare `nosec`
comment: a suppression must name the Bandit test it silences and say why (`# nosec B404 - only runs git with fixed
arguments`). Bandit reads no configuration file of the scanned tree (tools.run_bandit): the policy of record is
the only one.
"""

from __future__ import annotations

import io
import logging
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fraudguard.files import write_json
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate
from fraudguard.tools import read_bandit_report, run_bandit

if TYPE_CHECKING:
    from fraudguard.config import StaticAnalysisGateSettings

logger = logging.getLogger(__name__)

NAME = "static_analysis"
_LEVELS = {"undefined": 0, "low": 1, "medium": 2, "high": 3}
_NOSEC_RE = re.compile(r"#\s*nosec\b(?P<rest>.*)$", re.IGNORECASE)
# Test ids (B602) and plugin names (subprocess_popen_with_shell_equals_true) are not a reason.
_TEST_REF_RE = re.compile(r"\b(B\d{3}|[a-z0-9]+(?:_[a-z0-9]+)+)\b", re.IGNORECASE)
_MIN_REASON_LETTERS = 8


@dataclass(frozen=True)
class BareNosec:
    """A `nosec` comment without a named Bandit test or a written reason."""

    path: str
    line: int
    text: str
    problem: str = "no written reason"


def blocking_findings(report: dict, min_severity: str, min_confidence: str) -> list[dict]:
    """The findings of a Bandit JSON report at or above both levels (what blocks the gate and CI)."""
    min_sev, min_conf = _LEVELS[min_severity], _LEVELS[min_confidence]
    return [
        r for r in report.get("results", [])
        if _LEVELS.get(str(r.get("issue_severity", "")).lower(), 0) >= min_sev
        and _LEVELS.get(str(r.get("issue_confidence", "")).lower(), 0) >= min_conf
    ]


def scan_errors(report: dict) -> list[str]:
    """"file: reason" for each file Bandit could not scan. A file not scanned was not checked, so the gate
    and CI both fail closed on any."""
    return [f"{e.get('filename')}: {e.get('reason')}" for e in report.get("errors", [])]


def _nosec_problem(comment: str) -> str | None:
    """Why a `nosec` comment is not an acceptable suppression; None when it is one, or is no nosec at all.

    What counts as nosec, and which tests it silences, is Bandit's own reading (its NOSEC_COMMENT and test lookup),
    not a second pattern of ours: `# nosecurity` and `#nosec_` slipped past a word-boundary pattern while Bandit read
    them as a nosec naming no test it knows, which silences every finding on the line."""
    from bandit.core.manager import NOSEC_COMMENT, _parse_nosec_comment

    bandits = NOSEC_COMMENT.search(comment)
    if bandits is None:
        # Bandit ignores a nosec it cannot read (`# NOSEC`); still refused without a reason, as before.
        ours = _NOSEC_RE.search(comment)
        return None if ours is None or _reason_letters(ours.group("rest")) >= _MIN_REASON_LETTERS \
            else "no written reason"
    if not _parse_nosec_comment(comment):
        return "no Bandit test named: it silences every finding on its line"
    if _reason_letters(comment[bandits.start():].replace("nosec", " ", 1)) < _MIN_REASON_LETTERS:
        return "no written reason"
    return None


def _reason_letters(text: str) -> int:
    return sum(ch.isalpha() for ch in _TEST_REF_RE.sub(" ", text))


def find_bare_nosec(paths: list[Path]) -> list[BareNosec]:
    """Every `nosec` comment that names no Bandit test or gives no written reason, in the Python files under
    `paths`."""
    found = []
    # Bandit's nosec parser warns once per word of a reason that is not a test name: quiet for the whole scan.
    quiet = logging.getLogger("bandit.core.manager")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for root in paths:
            found += _bare_nosec_under(root)
    finally:
        quiet.setLevel(level)
    return found


def _bare_nosec_under(root: Path) -> list[BareNosec]:
    found = []
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    for file in files:
        try:
            source = file.read_text(encoding="utf-8")
            tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        except (OSError, UnicodeDecodeError, SyntaxError, tokenize.TokenError) as exc:
            logger.warning("%s: cannot tokenize for nosec check: %s", file, exc)
            continue
        for tok in tokens:
            if tok.type != tokenize.COMMENT:
                continue
            problem = _nosec_problem(tok.string)
            if problem is not None:
                found.append(BareNosec(str(file), tok.start[0], tok.string.strip(), problem))
    return found


def run_static_analysis_gate(
    candidate: ModelUnderTest, context: GateContext, settings: "StaticAnalysisGateSettings"
) -> GateResult:
    """Bandit over the section's paths under context.source_root; fail on a finding at/above both levels
    or a bare nosec. `settings` is the gates.static_analysis section."""
    cfg = settings
    root = Path(context.source_root)
    paths = [root / p for p in cfg.paths if (root / p).exists()]
    missing = [p for p in cfg.paths if not (root / p).exists()]
    if missing:
        logger.warning("static analysis: %s not found under %s, not scanned", missing, root)
    thresholds = {"min_severity": float(_LEVELS[cfg.min_severity]),
                  "min_confidence": float(_LEVELS[cfg.min_confidence])}
    report_json = context.report_dir / f"{NAME}.json"
    if not paths:
        return finish_gate(NAME, False, {}, thresholds, f"none of {cfg.paths} exists under {root}: nothing to "
                           "vouch for", report_json, {"gate": NAME, "passed": False, "paths": cfg.paths})
    report_path = context.report_dir / "bandit.json"
    report = read_bandit_report(run_bandit(paths, report_path))
    blocking = blocking_findings(report, cfg.min_severity, cfg.min_confidence)
    bare = find_bare_nosec(paths)
    errors = scan_errors(report)
    nosec_report = context.report_dir / "bandit_bare_nosec.json"
    write_json(nosec_report, [b.__dict__ for b in bare])

    metrics = {
        "findings_total": float(len(report.get("results", []))),
        "findings_blocking": float(len(blocking)),
        "bare_nosec": float(len(bare)),
        "scan_errors": float(len(errors)),
    }
    problems = []
    if blocking:
        shown = ", ".join(
            f"{r['test_id']} {Path(r['filename']).name}:{r['line_number']} ({r['issue_severity'].lower()})"
            for r in blocking[:5]
        )
        problems.append(f"{len(blocking)} finding(s) at or above {cfg.min_severity}/{cfg.min_confidence}: {shown}")
    if bare:
        shown = ", ".join(f"{Path(b.path).name}:{b.line} ({b.problem})" for b in bare[:5])
        problems.append(f"{len(bare)} nosec without a written reason and a named Bandit test: {shown}")
    if errors:
        shown = ", ".join(errors[:3])
        problems.append(f"{len(errors)} file(s) bandit could not scan: {shown}")
    passed = not problems
    reason = (f"no finding at or above {cfg.min_severity} severity / {cfg.min_confidence} confidence "
              f"in {', '.join(p.name for p in paths)}") if passed else "; ".join(problems)
    return finish_gate(NAME, passed, metrics, thresholds, reason, report_json, {
        "gate": NAME,
        "passed": passed,
        "reason": reason,
        "metrics": metrics,
        "thresholds": thresholds,
        "scanned": [str(p) for p in paths],
        "blocking": [{k: r.get(k) for k in ("test_id", "filename", "line_number", "issue_severity",
                                            "issue_confidence", "issue_text")} for r in blocking],
        "bare_nosec": [f"{b.path}:{b.line}" for b in bare],
        "scan_errors": errors,
    }, extra_reports=(report_path, nosec_report))


GATE = GateSpec(NAME, run_static_analysis_gate, heavy_imports=())
