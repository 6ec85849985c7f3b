"""Static-analysis gate with the real Bandit on temporary source trees."""

from __future__ import annotations

import json

from fraudguard.config import parse_settings
from fraudguard.gates.base import GateContext, ModelUnderTest
from fraudguard.gates.static_analysis import find_bare_nosec, run_static_analysis_gate

from conftest import small_params

CLEAN = 'def add(a: int, b: int) -> int:\n    return a + b\n'
SHELL = 'import subprocess\n\n\ndef run(cmd):\n    subprocess.run(cmd, shell=True)\n'


def _tree(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _gate(small_settings, root, report_dir):
    context = GateContext(settings=small_settings, train_features=None, test_features=None, newest_window=None,
                          source_root=root, report_dir=report_dir)
    return run_static_analysis_gate(ModelUnderTest(bundle=None), context, small_settings.gates.static_analysis)


def test_shell_true_subprocess_blocks(tmp_path, small_settings):
    root = _tree(tmp_path / "repo", {"src/pkg/run.py": SHELL, "flows/flow.py": CLEAN})
    result = _gate(small_settings, root, tmp_path / "reports")
    assert not result.passed
    assert "B602" in result.reason and "run.py:5" in result.reason
    assert result.metrics["findings_blocking"] >= 1


def test_clean_tree_passes_and_saves_the_json_report(tmp_path, small_settings):
    root = _tree(tmp_path / "repo", {"src/pkg/add.py": CLEAN, "flows/flow.py": CLEAN})
    result = _gate(small_settings, root, tmp_path / "reports")
    assert result.passed, result.reason
    report = json.loads((tmp_path / "reports" / "bandit.json").read_text())
    assert report["results"] == [] and (tmp_path / "reports" / "bandit.json") in result.report_paths
    # Through finish_gate, like every gate: its JSON report first, with the verdict it returned.
    verdict = json.loads(result.report_paths[0].read_text())
    assert result.report_paths[0].name == "static_analysis.json" and verdict["passed"] and verdict["scan_errors"] == []


def test_bare_nosec_is_a_finding(tmp_path, small_settings):
    root = _tree(tmp_path / "repo", {"src/pkg/run.py": SHELL.replace("shell=True)", "shell=True)  # nosec B602")})
    result = _gate(small_settings, root, tmp_path / "reports")
    assert not result.passed and "nosec without a written reason" in result.reason
    assert result.metrics["findings_blocking"] == 0  # bandit itself honoured the nosec


def test_nosec_with_a_written_reason_is_accepted(tmp_path, small_settings):
    line = 'import subprocess  # nosec B404 - only runs git with a fixed argument list\n'
    root = _tree(tmp_path / "repo", {"src/pkg/git.py": line})
    assert find_bare_nosec([root / "src"]) == []
    assert _gate(small_settings, root, tmp_path / "reports").passed


def test_nosec_inside_a_string_is_not_a_comment(tmp_path):
    root = _tree(tmp_path / "repo", {"src/doc.py": 'HELP = "write # nosec with a reason"\n'})
    assert find_bare_nosec([root / "src"]) == []


def test_finding_below_the_severity_threshold_passes(tmp_path):
    settings = parse_settings(small_params({"gates": {"static_analysis": {"min_severity": "high"}}}))
    # B404 (import subprocess) is low severity: reported, not blocking.
    root = _tree(tmp_path / "repo", {"src/pkg/imp.py": "import subprocess  # noqa\n"})
    result = _gate(settings, root, tmp_path / "reports")
    assert result.passed and result.metrics["findings_total"] >= 1


def test_no_scanned_path_fails_closed(tmp_path, small_settings):
    result = _gate(small_settings, tmp_path / "empty", tmp_path / "reports")
    assert not result.passed and "nothing to vouch for" in result.reason


def test_a_bandit_config_file_in_the_scanned_tree_does_not_silence_the_gate(tmp_path, small_settings):
    # Bandit obeyed a `.bandit` found under the targets: `skips` or `exclude` there passed a shell=True call.
    for name, ini in (("skips", "[bandit]\nskips: B602,B404\n"), ("exclude", "[bandit]\nexclude: run.py\n")):
        root = _tree(tmp_path / name, {"src/pkg/run.py": SHELL, "src/pkg/.bandit": ini})
        result = _gate(small_settings, root, tmp_path / f"reports-{name}")
        assert not result.passed and "B602" in result.reason, (name, result.reason)


def test_a_nosec_bandit_reads_as_naming_no_test_is_refused(tmp_path, small_settings):
    # Bandit reads `# nosecurity ...` and `#nosec_` as a nosec naming no test it knows: every finding on the line
    # silenced. A word-boundary pattern did not see them as nosec at all.
    for i, comment in enumerate(("# nosecurity: reviewed by the platform team", "#nosec_ reviewed and accepted",
                                 "# nosec - reviewed and accepted by the platform team")):
        root = _tree(tmp_path / f"repo{i}", {"src/pkg/run.py": SHELL.replace("shell=True)", f"shell=True)  {comment}")})
        result = _gate(small_settings, root, tmp_path / f"reports{i}")
        assert not result.passed and "no Bandit test named" in result.reason, (comment, result.reason)
    named = SHELL.replace("shell=True)", "shell=True)  # nosec B602 - the command is a fixed list")
    assert _gate(small_settings, _tree(tmp_path / "named", {"src/pkg/run.py": named}), tmp_path / "r-named").passed
