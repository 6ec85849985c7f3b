"""DVC stage `validate`: data/raw/* -> data/validated/, data/quarantine/ (+ reason), reports/validation.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from fraudguard.files import write_json
from fraudguard.config import Settings, load_settings
from fraudguard.data.history import history_report, read_intake_record
from fraudguard.data.io import file_md5, read_transactions, write_transactions
from fraudguard.data.validation import (
    QuarantineShareExceeded,
    ValidationResult,
    configured_terminal_locations,
    validate_transactions,
)
from fraudguard.errors import DataError, FraudGuardError
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)


def raw_files(raw_dir: Path) -> list[Path]:
    """Every data file of data/raw (hidden files such as .gitignore skipped), in name order."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: no raw data directory (run `fraudguard data pull` or `simulate`)")
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{raw_dir}: no data files")
    return files


def run_validation(paths: ProjectPaths, settings: Settings) -> ValidationResult:
    """Validate every raw file and write the validated, quarantine and report files. The quarantine
    file and report are written even when the batch is refused (DataError raised afterwards)."""
    files = raw_files(paths.raw_dir)
    frames = [read_transactions(f) for f in files]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    source = ", ".join(str(f.relative_to(paths.root)) for f in files)
    locations = configured_terminal_locations(settings.validate_, paths.root)

    refused: QuarantineShareExceeded | None = None
    try:
        result = validate_transactions(frame, settings.validate_, source=source,
                                       terminal_locations=locations)
    except QuarantineShareExceeded as exc:
        refused, result = exc, exc.result

    report = _stage_report(result, files, paths, refused, settings)
    write_transactions(result.quarantined, paths.quarantine)
    write_json(paths.validation_report, report, sort_keys=True)
    if refused is not None:
        # A stale validated file from an earlier run must not pass for this batch's output.
        paths.validated.unlink(missing_ok=True)
        raise refused
    write_transactions(result.accepted, paths.validated)
    logger.info("validated %d rows: %d accepted, %d quarantined (report %s)", report["rows_in"],
                report["rows_accepted"], report["rows_quarantined"], paths.validation_report)
    return result


def _stage_report(result: ValidationResult, files: list[Path], paths: ProjectPaths,
                  refused: QuarantineShareExceeded | None, settings: Settings) -> dict[str, Any]:
    inputs = {str(f.relative_to(paths.root)): file_md5(f) for f in files}
    return {
        **result.report,
        **history_report(read_intake_record(paths.raw_dir), set(inputs.values()), result.report["fraud_rate"],
                         settings.validate_.max_fraud_rate_change_factor),
        "passed": refused is None,
        "inputs": inputs,
    }


def main(root: Path | str = ".") -> None:
    """Stage entry point: params.yaml and the file layout of the project at `root`."""
    from fraudguard.logs import configure_logging

    configure_logging()
    paths = ProjectPaths.at(root)
    try:
        run_validation(paths, load_settings(paths.params))
    except FraudGuardError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
