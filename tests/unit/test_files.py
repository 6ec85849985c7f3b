"""The shared file helpers: one sha256 of a file, one JSON writer, one JSON-object reader."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from fraudguard.errors import DataError
from fraudguard.files import finite_or_null, read_json_object, sha256_file, write_json


def test_sha256_file_is_the_digest_of_the_bytes_across_read_blocks(tmp_path):
    data = bytes(range(256)) * 5000  # > 1 MiB: more than one read block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_a_missing_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        sha256_file(tmp_path / "missing.bin")


def test_write_json_makes_folders_ends_with_a_newline_and_leaves_no_temporary_file(tmp_path):
    path = write_json(tmp_path / "a" / "b" / "report.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_write_json_replaces_an_existing_file_whole(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"rows": list(range(1000))})
    write_json(path, {"rows": 1})
    assert json.loads(path.read_text(encoding="utf-8")) == {"rows": 1}


def test_write_json_uses_the_default_for_values_json_cannot_encode(tmp_path):
    path = write_json(tmp_path / "r.json", {"where": tmp_path}, default=str)
    assert json.loads(path.read_text(encoding="utf-8")) == {"where": str(tmp_path)}


def test_finite_or_null_turns_nan_and_infinities_into_null_at_any_depth():
    data = {"loss": math.nan, "history": [{"ap": math.inf}, {"ap": 0.5}], "n": 3, "t": (-math.inf, 1.0)}
    assert finite_or_null(data) == {"loss": None, "history": [{"ap": None}, {"ap": 0.5}], "n": 3, "t": [None, 1.0]}


def test_read_json_object_returns_what_write_json_wrote(tmp_path):
    record = {"source": "batch.csv", "rows": 3, "nested": {"a": [1, 2]}}
    path = write_json(tmp_path / "record.json", record, sort_keys=True)
    assert read_json_object(path, "intake record", DataError) == record


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", r"unreadable intake record \(not readable JSON\)"),
     ("[1, 2]", r"intake record is not a JSON object \(got list\)"),
     ('"text"', r"intake record is not a JSON object \(got str\)")],
)
def test_read_json_object_raises_the_callers_error_naming_the_file_and_the_problem(tmp_path, content, problem):
    path = tmp_path / "record.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=problem) as raised:
        read_json_object(path, "intake record", DataError)
    message = str(raised.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_read_json_object_of_a_missing_file_raises_the_callers_error(tmp_path):
    from fraudguard.errors import StaticAnalysisError

    with pytest.raises(StaticAnalysisError, match="missing.json: unreadable bandit report"):
        read_json_object(tmp_path / "missing.json", "bandit report", StaticAnalysisError)
