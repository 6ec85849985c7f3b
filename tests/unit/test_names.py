"""One module of names: the tag names and artifact paths fraudguard writes are spelled only in names.py."""

from __future__ import annotations

from pathlib import Path

import fraudguard.names as names

ROOT = Path(__file__).resolve().parents[2]


def test_tag_names_and_artifact_paths_are_spelled_only_in_the_names_module():
    # Dotted tag names and artifact paths: short words like "champion" also name other things (report keys).
    spelled = {value for key, value in vars(names).items()
               if key.isupper() and isinstance(value, str) and ("." in value or "/" in value)}
    sources = [p for folder in ("src", "flows") for p in (ROOT / folder).rglob("*.py") if p.name != "names.py"]
    literals = [f"{p.relative_to(ROOT)}: {value}" for p in sources for value in spelled
                for quote in ('"', "'") if f"{quote}{value}{quote}" in p.read_text(encoding="utf-8")]
    assert literals == []
