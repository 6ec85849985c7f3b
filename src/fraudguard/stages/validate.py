"""DVC stage `validate`: data/raw/* -> data/validated/, data/quarantine/ (+ reason), reports/validation.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fraudguard.config import Settings, ValidateSettings
from fraudguard.files import write_json
from fraudguard.data.history import history_report, read_intake_record
from fraudguard.data.io import file_md5, read_transactions, write_quarantine, write_transactions
from fraudguard.data.validation import (
    QuarantineShareExceeded,
    ValidationResult,
    configured_terminal_locations,
    validate_transactions,
)
from fraudguard.errors import DataError
from fraudguard.paths import ProjectPaths
from fraudguard.stages import stage_main

logger = logging.getLogger(__name__)

PARAMS = ("validate",)


def section_of(settings: Settings) -> ValidateSettings:
    return settings.validate_


@dataclass(frozen=True)
class ValidatePaths:
    """The validate stage's files: every file of raw_dir in; the validated and quarantined rows and the report
    out. root: what input names in the report and a relative terminal_locations path are relative to."""

    root: Path
    raw_dir: Path
    validated: Path
    quarantine: Path
    report: Path

    @classmethod
    def of(cls, project: ProjectPaths) -> "ValidatePaths":
        return cls(project.root, project.raw_dir, project.validated, project.quarantine, project.validation_report)


def raw_files(raw_dir: Path) -> list[Path]:
    """Every data file of data/raw (hidden files such as .gitignore skipped), in name order."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: no raw data directory (run `fraudguard data pull` or `simulate`)")
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{raw_dir}: no data files")
    return files


def run(paths: ValidatePaths, section: ValidateSettings) -> ValidationResult:
    """Validate every raw file and write the validated, quarantine and report files. The quarantine
    file and report are written even when the batch is refused (DataError raised afterwards); on any
    other failure none of the three is left from an earlier run to pass for this one's."""
    for output in (paths.report, paths.validated, paths.quarantine):
        output.unlink(missing_ok=True)
    files = raw_files(paths.raw_dir)
    frames = [read_transactions(f) for f in files]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    source = ", ".join(str(f.relative_to(paths.root)) for f in files)
    locations = configured_terminal_locations(section, paths.root)

    refused: QuarantineShareExceeded | None = None
    try:
        result = validate_transactions(frame, section, source=source,
                                       terminal_locations=locations)
    except QuarantineShareExceeded as exc:
        refused, result = exc, exc.result

    report = _stage_report(result, files, paths, refused, section)
    write_quarantine(result.quarantined, paths.quarantine)
    if refused is None:
        write_transactions(result.accepted, paths.validated)
    write_json(paths.report, report, sort_keys=True)  # last: a report is there only beside its outputs
    if refused is not None:
        raise refused
    logger.info("validated %d rows: %d accepted, %d quarantined (report %s)", report["rows_in"],
                report["rows_accepted"], report["rows_quarantined"], paths.report)
    return result


def _stage_report(result: ValidationResult, files: list[Path], paths: ValidatePaths,
                  refused: QuarantineShareExceeded | None, section: ValidateSettings) -> dict[str, Any]:
    inputs = {str(f.relative_to(paths.root)): file_md5(f) for f in files}
    return {
        **result.report,
        **history_report(read_intake_record(paths.raw_dir), inputs, result.report["fraud_rate"],
                         section.max_fraud_rate_change_factor),
        "passed": refused is None,
        "inputs": inputs,
    }


def main(root: Path | str = ".") -> None:
    """Stage entry point: params.yaml and the file layout of the project at `root`."""
    stage_main(root, lambda project, settings: run(ValidatePaths.of(project), section_of(settings)))


if __name__ == "__main__":
    main()
