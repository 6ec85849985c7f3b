"""File helpers every module shares: the sha256 of a file and the one way to write and read a JSON file.

One helper each, so a digest computed at training time and one checked at load time can never differ
by construction, every JSON report the project writes has the same shape on disk (UTF-8, indented,
newline-terminated, written whole or not at all), and every JSON record it reads back fails the same way:
one line naming the file and what it should have held, raised as the caller's domain error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from fraudguard.errors import FraudGuardError

_BLOCK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks; OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def finite_or_null(value: Any) -> Any:
    """`value` with NaN and infinities (nested in dicts and lists) made None: JSON has no such numbers and
    DVC rejects a metrics file that holds them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def write_json(path: Path | str, data: Any, *, sort_keys: bool = False, indent: int | None = 2,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write `data` as JSON to `path` (folders made, trailing newline) and return the path.

    Written to a sibling temporary file and renamed over the target, so a reader (DVC, a CI step, a
    concurrent run) sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json_object(path: Path | str, what: str, error_type: type[FraudGuardError]) -> dict[str, Any]:
    """The JSON object stored at `path`; `error_type` (one line naming the file and `what` it should hold,
    e.g. "intake record") when the file cannot be read, is not JSON, or holds something other than an object."""
    from fraudguard.data.io import clip_text

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error_type(f"{path}: unreadable {what} (not readable JSON): {clip_text(exc)}") from exc
    if not isinstance(data, dict):
        raise error_type(f"{path}: {what} is not a JSON object (got {type(data).__name__})")
    return data
