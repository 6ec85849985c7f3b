"""`fraudguard ci ...`: what the pull-request workflow runs, so that a laptop can run the same.

report: the markdown summary (params diff, metrics diff, gate verdicts); profile: merge params.ci.yaml
over params.yaml; base-metrics: the base revision's metrics on that same profile; bandit: the security scan
with the static-analysis gate's thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=1)


@app.command("report")
def report(
    base: Annotated[str, typer.Option(envvar="BASE_REF",
                                      help="Git rev to diff params and metrics against ($BASE_REF).")] = "HEAD",
    head: Annotated[Optional[str], typer.Option(
        help="Git rev whose params are compared (default: the workspace). CI passes HEAD, since its "
             "workspace carries the CI profile.")] = None,
    gate_dir: Annotated[Path, typer.Option(help="Where the dry-run promotion wrote its gate reports.")]
        = Path("reports/gates"),
    out: Annotated[Path, typer.Option(help="Summary file to write.")] = Path("reports/ci-summary.md"),
    base_metrics: Annotated[Optional[Path], typer.Option(
        help="Output of `ci base-metrics` (the base's metrics on the CI profile) to diff against, instead of "
             "the metrics files committed at --base.")] = None,
    require_gates: Annotated[bool, typer.Option(
        "--require-gates/--no-require-gates",
        help="Exit 1 unless gate verdicts were found and all passed.")] = False,
) -> None:
    """Write the pull-request summary (also appended to $GITHUB_STEP_SUMMARY when set)."""
    from fraudguard.ci_report import build_ci_summary, render_summary, step_summary_path, write_summary
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging

    configure_logging()
    root = Path.cwd()
    try:
        summary = build_ci_summary(root, base_rev=base, head_rev=head, gate_dir=gate_dir,
                                   base_metrics_dir=base_metrics)
    except FraudGuardError as exc:
        _fail(exc)
        return
    write_summary(render_summary(summary), root / out, step_summary_path())
    verdicts = ", ".join(f"{row.name}={'passed' if row.passed else 'failed'}" for row in summary.gates)
    typer.echo(f"wrote {out} (gates: {verdicts or 'none found'})")
    if require_gates and not summary.gates_passed:
        failed = [row.name for row in summary.gates if not row.passed]
        typer.echo("error: " + (f"gate(s) failed: {', '.join(failed)}" if failed
                                else f"no gate verdicts found in {gate_dir}"), err=True)
        raise typer.Exit(code=1)


@app.command("profile")
def profile(
    profile_path: Annotated[Path, typer.Argument(help="Profile of params to merge.")] = Path("params.ci.yaml"),
    params: Annotated[Path, typer.Option(help="params file to rewrite.")] = Path("params.yaml"),
    record: Annotated[Path, typer.Option(help="Where to record what changed.")]
        = Path("reports/ci-profile.json"),
) -> None:
    """Merge a CI profile over params.yaml in place (throwaway CI checkouts; git checkout restores it)."""
    from fraudguard.ci_report import apply_ci_profile
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging

    configure_logging()
    try:
        applied = apply_ci_profile(params, profile_path, record)
    except FraudGuardError as exc:
        _fail(exc)
        return
    for key, (old, new) in sorted(applied.changes.items()):
        typer.echo(f"{key}: {old} -> {new}")
    typer.echo(f"{params}: {len(applied.changes)} value(s) from {profile_path}")


@app.command("base-metrics")
def base_metrics(
    base: Annotated[str, typer.Option(envvar="BASE_REF", help="Git rev whose metrics to compute ($BASE_REF).")]
        = "HEAD",
    profile_path: Annotated[Path, typer.Option("--profile", help="CI profile merged over the base's params.yaml.")]
        = Path("params.ci.yaml"),
    out_dir: Annotated[Path, typer.Option(help="Where the base's metrics files and base.json go.")]
        = Path("reports/ci-base"),
) -> None:
    """Run the base revision's pipeline on the CI profile in a scratch git worktree; keep its metrics files."""
    from fraudguard.ci_report import compute_base_metrics
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging

    configure_logging()
    try:
        result = compute_base_metrics(Path.cwd(), base, profile_path, out_dir)
    except FraudGuardError as exc:
        _fail(exc)
        return
    how = "reused (same commit and profile)" if result.reused else "computed"
    typer.echo(f"base metrics of {base} ({result.commit[:12]}) on {result.profile}: {how} in {out_dir}")


@app.command("bandit")
def bandit(
    out_dir: Annotated[Path, typer.Option(help="Where bandit.json / bandit.sarif go.")] = Path("reports"),
    params: Annotated[Path, typer.Option(help="params file with gates.static_analysis.")]
        = Path("params.yaml"),
) -> None:
    """Bandit over gates.static_analysis.paths as the gate runs it; exit 1 on a finding, a bare nosec or a
    file Bandit could not scan."""
    from fraudguard.ci_report import run_bandit
    from fraudguard.config import load_settings
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging

    configure_logging()
    try:
        settings = load_settings(params)
        result = run_bandit(Path.cwd(), settings.gates.static_analysis, out_dir)
    except FraudGuardError as exc:
        _fail(exc)
        return
    written = ", ".join(str(p) for p in (result.json_path, result.sarif_path) if p is not None)
    typer.echo(f"bandit over {', '.join(result.scanned_paths)}: {result.findings} finding(s) at or above "
               f"severity {settings.gates.static_analysis.min_severity} / confidence "
               f"{settings.gates.static_analysis.min_confidence}; wrote {written}")
    if result.bare_nosec:
        typer.echo(f"error: nosec without a written reason: {', '.join(result.bare_nosec)}", err=True)
    if result.scan_errors:
        typer.echo(f"error: files bandit could not scan (not checked): {'; '.join(result.scan_errors)}", err=True)
    if not result.passed:
        raise typer.Exit(code=1)
