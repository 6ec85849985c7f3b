"""The one runner each for dvc and bandit, with the real executables."""

from __future__ import annotations

import pytest

from fraudguard.errors import DataVersionError, StaticAnalysisError
from fraudguard.tools import read_bandit_report, run_bandit, run_dvc


def test_run_dvc_failure_names_the_command_the_folder_and_dvcs_words(tmp_path):
    # Not a DVC project: dvc refuses, and the error says so without dvc's help footer.
    with pytest.raises(DataVersionError) as err:
        run_dvc(["status"], tmp_path)
    message = str(err.value)
    assert "`dvc status` failed in" in message and str(tmp_path) in message
    assert "Having any troubles?" not in message


def test_run_dvc_unchecked_returns_the_exit_code_and_output(tmp_path):
    proc = run_dvc(["status"], tmp_path, check=False)
    assert proc.returncode != 0 and (proc.stderr or proc.stdout)


def test_run_bandit_reports_a_file_it_could_not_parse_as_a_scan_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.py").write_text("def f(:\n    pass\n")
    report = read_bandit_report(run_bandit(["src"], tmp_path / "out" / "bandit.json", cwd=tmp_path))
    assert [e["filename"] for e in report["errors"]] == ["src/broken.py"]


def test_read_bandit_report_refuses_a_report_that_is_not_json(tmp_path):
    path = tmp_path / "bandit.json"
    path.write_text("not json")
    with pytest.raises(StaticAnalysisError, match="not readable JSON"):
        read_bandit_report(path)
