"""DVC versioning of data/raw with the real `dvc` and `git` in temporary repositories: push/pull
through a local-directory remote, regeneration on a fresh clone, the md5-mismatch refusal, import."""

from __future__ import annotations

import json
import subprocess  # nosec B404
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from fraudguard.cli import app
from fraudguard.config import load_settings
from fraudguard.data import schema
from fraudguard.data.io import file_md5, read_transactions, write_transactions
from fraudguard.data.validation import QuarantineShareExceeded
from fraudguard.data.versioning import (
    DEFAULT_REMOTE_NAME,
    TEAM_REMOTE_NAME,
    PullOutcome,
    directory_md5,
    ensure_default_remote,
    import_data,
    pull_data,
    push_data,
    simulate_raw_data,
    track_raw_data,
    tracked_md5,
)
from fraudguard.errors import DataError, DataVersionError
from fraudguard.paths import ProjectPaths
from fraudguard.tools import run_dvc

pytestmark = pytest.mark.slow

TINY = {"simulate": {"n_customers": 40, "n_terminals": 80, "n_days": 10}}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,  # nosec B603 B607
                          text=True).stdout


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """HOME and the cache dir (where the default remote lives) under tmp_path, never the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "fraudguard-test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "test@fraudguard.local")


@pytest.fixture
def origin(tmp_path) -> ProjectPaths:
    """A committed project: params.yaml, simulated data/raw tracked by data.dvc."""
    root = tmp_path / "origin"
    root.mkdir()
    git(root, "init", "-q")
    run_dvc(["init", "-q"], root)
    paths = ProjectPaths.at(root)
    paths.params.write_text(yaml.safe_dump(small_params(TINY)))
    simulate_raw_data(paths, load_settings(paths.params).simulate)
    track_raw_data(paths)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "data")
    return paths


def clone(origin: ProjectPaths, tmp_path: Path, name: str = "clone") -> ProjectPaths:
    git(tmp_path, "clone", "-q", str(origin.root), name)
    return ProjectPaths.at(tmp_path / name)


def test_data_dvc_records_the_md5_dvc_computes(origin):
    assert tracked_md5(origin) == directory_md5(origin.raw_dir)
    assert "Data and pipelines are up to date" in run_dvc(["status", "data.dvc"], origin.root).stdout


def test_default_remote_is_a_local_dir_under_the_cache_home(origin, tmp_path):
    assert ensure_default_remote(origin) == DEFAULT_REMOTE_NAME
    url = run_dvc(["config", f"remote.{DEFAULT_REMOTE_NAME}.url"], origin.root).stdout.strip()
    assert url == str(tmp_path / "cache" / "fraudguard" / "dvc-remote")
    # Added to .dvc/config.local: the committed config stays remote-free for everyone else.
    assert "remote" not in (origin.root / ".dvc" / "config").read_text()


def test_a_configured_default_remote_is_kept(origin, tmp_path):
    run_dvc(["remote", "add", "-d", "team", str(tmp_path / "team-remote")], origin.root)
    assert ensure_default_remote(origin) == "team"


def pull_with_params(paths: ProjectPaths) -> PullOutcome:
    """pull_data with the checkout's own params.yaml sections."""
    settings = load_settings(paths.params)
    return pull_data(paths, settings.data_remote, settings.simulate)


def test_push_then_pull_on_a_fresh_clone_gets_the_remote_copy(origin, tmp_path):
    push_data(origin)
    fresh = clone(origin, tmp_path)
    outcome = pull_with_params(fresh)
    assert outcome.source == "remote"
    assert file_md5(fresh.raw_dir / "transactions.parquet") == file_md5(origin.raw_dir / "transactions.parquet")


def _use_team_remote(origin: ProjectPaths, url: str) -> None:
    """params.yaml's data_remote.url set and committed, as a team does once."""
    origin.params.write_text(yaml.safe_dump(small_params({**TINY, "data_remote": {"url": url}})))
    git(origin.root, "commit", "-qam", "team DVC remote")


def test_team_remote_in_params_carries_the_exact_data_version_to_another_host(origin, tmp_path, monkeypatch):
    # Shared storage (NFS, an SSH host or a bucket) beside the checkouts, named relative to the project root.
    shared = tmp_path / "shared-storage" / "fraudguard-dvc"
    _use_team_remote(origin, "../shared-storage/fraudguard-dvc")
    assert push_data(origin, load_settings(origin.params).data_remote) == TEAM_REMOTE_NAME
    assert any((shared / "files" / "md5").rglob("*"))
    # Another host: its own clone and its own cache home, whose per-user fallback remote holds nothing.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host-b-cache"))
    host_b = clone(origin, tmp_path, "host-b")
    outcome = pull_with_params(host_b)
    assert outcome.source == "remote"
    assert directory_md5(host_b.raw_dir) == tracked_md5(host_b) == tracked_md5(origin)
    assert file_md5(host_b.raw_dir / "transactions.parquet") == file_md5(origin.raw_dir / "transactions.parquet")
    assert not (tmp_path / "host-b-cache" / "fraudguard").exists()
    # Applied in .dvc/config.local: the clone's work tree stays clean (lineage records no dirty checkout),
    # and plain `dvc pull` there uses the same remote (`fraudguard data remote` says which).
    assert git(host_b.root, "status", "--porcelain") == ""
    assert "remote" not in (host_b.root / ".dvc" / "config").read_text()
    result = CliRunner().invoke(app, ["data", "remote", "--root", str(host_b.root)])
    assert result.exit_code == 0, result.output
    assert f"default DVC remote '{TEAM_REMOTE_NAME}': {shared}" in result.output


def test_pull_without_remote_data_regenerates_the_tracked_version(origin, tmp_path):
    fresh = clone(origin, tmp_path)
    outcome = pull_with_params(fresh)
    assert outcome.source == "regenerated"
    assert directory_md5(fresh.raw_dir) == tracked_md5(fresh)
    # Committed into the clone's DVC cache, so it can be pushed from there.
    assert "Data and pipelines are up to date" in run_dvc(["status", "data.dvc"], fresh.root).stdout


def test_pull_refuses_regenerated_data_that_differs_from_data_dvc(origin, tmp_path):
    fresh = clone(origin, tmp_path)
    fresh.params.write_text(yaml.safe_dump(small_params({**TINY, "simulate": {**TINY["simulate"], "seed": 1}})))
    with pytest.raises(DataVersionError, match=r"regenerated data does not match data.dvc: expected "
                                               rf"{tracked_md5(fresh)}, got \w+\.dir"):
        pull_with_params(fresh)
    assert not fresh.raw_dir.exists()


def current_rows(paths: ProjectPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.raw_dir / "transactions.parquet")


def as_new_transactions(frame: pd.DataFrame) -> pd.DataFrame:
    """The same rows under TRANSACTION_IDs data/raw does not hold (edits of existing ones are changed_history)."""
    return frame.assign(**{schema.TRANSACTION_ID: frame[schema.TRANSACTION_ID].astype("int64") + 10**6})


def snapshot(paths: ProjectPaths) -> tuple:
    """data/raw's md5, data.dvc's bytes and the DVC cache's file list: what an import may change."""
    cache = paths.root / ".dvc" / "cache"
    return (directory_md5(paths.raw_dir), paths.raw_dvc_file.read_bytes(),
            sorted(str(p.relative_to(cache)) for p in cache.rglob("*")))


def test_import_validates_then_versions_the_file(origin, tmp_path):
    before = tracked_md5(origin)
    upload = tmp_path / "upload.csv"
    frame = current_rows(origin)
    frame.loc[0, schema.TX_AMOUNT] = 1.23
    frame.to_csv(upload, index=False)
    outcome = import_data(upload, origin, load_settings(origin.params).validate_)
    assert outcome.rows == len(frame)
    assert len(pd.read_parquet(outcome.raw_file)) == len(frame)
    assert outcome.md5 == tracked_md5(origin) != before
    assert "Data and pipelines are up to date" in run_dvc(["status", "data.dvc"], origin.root).stdout
    assert not list(origin.raw_dir.parent.glob(".import-staging-*"))


def other_world_under_the_same_ids(paths: ProjectPaths, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Another simulated world (another seed) written as an export: its TRANSACTION_IDs start at 0 too, as a
    bank's own export over the simulated default data would."""
    from fraudguard.data.simulator import simulate_transactions

    other = simulate_transactions(load_settings(paths.params).simulate.model_copy(update={"seed": 7}))
    export = tmp_path / "bank_export.parquet"
    write_transactions(other, export)
    return export, other


def test_import_of_other_data_under_the_same_ids_is_refused_and_data_raw_kept(origin, tmp_path):
    before, shared = snapshot(origin), len(current_rows(origin))
    export, other = other_world_under_the_same_ids(origin, tmp_path)
    assert len(other) > shared  # every id of data/raw is in the export, under another transaction
    with pytest.raises(DataError, match=r"bank_export.parquet: \d+ of the \d+ transactions it shares with .* "
                                        r"have other values .*max_changed_history_share.*--new-history"):
        import_data(export, origin, load_settings(origin.params).validate_)
    assert snapshot(origin) == before
    report = json.loads(origin.import_report.read_text())
    assert report["passed"] is False and report["intake"]["history"]["existing_transactions"] == shared
    assert report["reasons"]["changed_history"] > 0.9 * shared


def test_new_history_replaces_data_raw_with_the_file_and_records_what_it_replaced(origin, tmp_path):
    previous_md5, previous_rows = tracked_md5(origin), len(current_rows(origin))
    export, other = other_world_under_the_same_ids(origin, tmp_path)
    result = CliRunner().invoke(app, ["data", "import", str(export), "--new-history", "--root", str(origin.root)])
    assert result.exit_code == 0, result.output
    assert f"history: replaced (--new-history): the previous version {previous_md5} ({previous_rows} rows)" \
        in result.output
    stored = current_rows(origin)
    quarantined = pd.read_parquet(origin.import_quarantine)
    assert len(stored) + len(quarantined) == len(other)  # every row of the file accepted or quarantined
    expected = other.set_index(schema.TRANSACTION_ID).loc[stored[schema.TRANSACTION_ID], schema.TX_AMOUNT]
    assert stored[schema.TX_AMOUNT].to_numpy().tolist() == expected.to_numpy().tolist()
    intake = json.loads((origin.raw_dir / ".intake.json").read_text())
    assert intake["history"]["replaced"] is True and intake["history"]["changed_history"] == 0
    assert intake["previous_md5"] == previous_md5 and intake["previous_rows"] == previous_rows
    assert tracked_md5(origin) == directory_md5(origin.raw_dir) != previous_md5
    # What reviewers see: the validation report, the version's lineage tag and the data_changes gate's metric.
    from fraudguard.lineage import validation_lineage
    from fraudguard.stages import validate as stage

    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    assert json.loads(origin.validation_report.read_text())["history"]["replaced"] is True
    assert validation_lineage(origin.validation_report)["lineage.validation.history_replaced"] == "true"
    assert data_changes_verdict(origin, tmp_path).metrics["history_replaced"] == 1.0


def test_new_history_and_a_relabel_list_together_are_refused(origin, tmp_path):
    export, _ = other_world_under_the_same_ids(origin, tmp_path)
    relabels = tmp_path / "relabels.csv"
    relabels.write_text("TRANSACTION_ID,TX_FRAUD\n1,1\n")
    with pytest.raises(DataError, match="--new-history replaces .* --relabel edits it"):
        import_data(export, origin, load_settings(origin.params).validate_, relabels=relabels, new_history=True)


def test_import_removing_more_than_half_the_rows_needs_force(origin, tmp_path):
    before = snapshot(origin)
    upload = tmp_path / "upload.parquet"
    current_rows(origin).head(10).to_parquet(upload)
    with pytest.raises(DataError, match=r"upload.parquet: 10 rows would replace the \d+ rows.*--force"):
        import_data(upload, origin, load_settings(origin.params).validate_)
    assert snapshot(origin) == before
    assert import_data(upload, origin, load_settings(origin.params).validate_, force=True).rows == 10
    assert tracked_md5(origin) == directory_md5(origin.raw_dir) != before[0]


def test_failed_dvc_add_leaves_raw_data_dvc_and_cache_as_they_were(origin, tmp_path):
    """dvc add stores the new directory object, then fails to store the data file (a file blocks its
    folder in the cache): the import must undo the half-done cache write and keep the old version."""
    upload = tmp_path / "upload.parquet"
    frame = current_rows(origin)
    frame = pd.concat([frame, as_new_transactions(frame.tail(1))], ignore_index=True)
    frame.to_parquet(upload)
    predicted = tmp_path / "predicted" / "raw"
    write_transactions(read_transactions(upload), predicted / "transactions.parquet")
    data_md5 = file_md5(predicted / "transactions.parquet")
    cache = origin.root / ".dvc" / "cache" / "files" / "md5"
    blocker = cache / data_md5[:2]
    assert not blocker.exists()
    blocker.write_text("not a directory")
    before = snapshot(origin)
    with pytest.raises(DataVersionError, match="dvc add"):
        import_data(upload, origin, load_settings(origin.params).validate_)
    assert snapshot(origin) == before  # the cache's file list included: no directory object left behind
    assert not list(origin.raw_dir.parent.glob(".import-staging-*"))


def test_import_with_a_broken_dvc_config_changes_nothing(origin, tmp_path):
    upload = tmp_path / "upload.parquet"
    as_new_transactions(current_rows(origin)).to_parquet(upload)
    (origin.root / ".dvc" / "config.local").write_text("[core\nthis is not ini\n")
    before = snapshot(origin)
    with pytest.raises(DataVersionError):
        import_data(upload, origin, load_settings(origin.params).validate_, force=True)
    assert snapshot(origin) == before


def test_refused_import_writes_its_quarantine_report_and_says_where(origin, tmp_path):
    before = snapshot(origin)
    upload = tmp_path / "upload.csv"
    frame = as_new_transactions(current_rows(origin))
    frame.loc[: len(frame) // 5, schema.TX_AMOUNT] = -1.0
    frame.to_csv(upload, index=False)
    with pytest.raises(QuarantineShareExceeded, match=r"quarantined rows in .*reports/import/quarantine.parquet"):
        import_data(upload, origin, load_settings(origin.params).validate_)
    assert snapshot(origin) == before
    quarantined = pd.read_parquet(origin.import_quarantine)
    assert len(quarantined) == len(frame) // 5 + 1
    assert set(quarantined["reason"]) == {"negative_amount"}
    assert json.loads(origin.import_report.read_text())["passed"] is False


def test_cli_import_prints_reasons_with_counts_and_where_the_report_is(origin, tmp_path):
    upload = tmp_path / "upload.csv"
    frame = as_new_transactions(current_rows(origin)).astype(str)
    frame.loc[[1, 2], schema.TX_AMOUNT] = "-1"
    frame.loc[3, schema.TX_DATETIME] = "2024-04-01 08:00:00+02:00"
    frame.to_csv(upload, index=False)
    result = CliRunner().invoke(app, ["data", "import", str(upload), "--force", "--root", str(origin.root)])
    assert result.exit_code == 0, result.output
    assert "quarantine reasons: negative_amount 2, timezone_offset 1" in result.stdout
    assert "velocity check: off" in result.stdout
    assert "reports/import/quarantine.parquet" in result.stdout


def test_cli_import_refuses_a_symlink_unless_told_to_follow_it(origin, tmp_path):
    upload = tmp_path / "upload.parquet"
    current_rows(origin).to_parquet(upload)
    (tmp_path / "link.parquet").symlink_to(upload)
    args = ["data", "import", str(tmp_path / "link.parquet"), "--root", str(origin.root)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1
    assert "is a symbolic link" in refused.stderr
    assert CliRunner().invoke(app, [*args, "--follow-symlinks"]).exit_code == 0


def test_import_of_a_file_missing_a_column_leaves_data_untouched(origin, tmp_path):
    before = tracked_md5(origin)
    upload = tmp_path / "upload.csv"
    pd.read_parquet(origin.raw_dir / "transactions.parquet").drop(columns=[schema.TX_FRAUD]).to_csv(upload)
    with pytest.raises(DataError, match="upload.csv: missing required column"):
        import_data(upload, origin, load_settings(origin.params).validate_)
    assert tracked_md5(origin) == before == directory_md5(origin.raw_dir)


def test_cli_pull_error_exits_1_with_the_message_and_no_traceback(origin, tmp_path):
    fresh = clone(origin, tmp_path)
    fresh.params.write_text(yaml.safe_dump(small_params({**TINY, "simulate": {**TINY["simulate"], "seed": 1}})))
    result = CliRunner().invoke(app, ["data", "pull", "--root", str(fresh.root)])
    assert result.exit_code == 1
    assert "regenerated data does not match data.dvc" in result.stderr
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ poisoning: history is immutable

def flip_frauds(frame: pd.DataFrame, share: float = 0.3) -> tuple[pd.DataFrame, list[int]]:
    """The label-flip attack on existing rows: `share` of the frauds relabelled legitimate (scenario too)."""
    frauds = frame.index[frame[schema.TX_FRAUD] == 1]
    flipped = list(frauds[: max(2, int(round(share * len(frauds))))])
    attacked = frame.copy()
    attacked.loc[flipped, [schema.TX_FRAUD, schema.TX_FRAUD_SCENARIO]] = 0
    return attacked, [int(i) for i in frame.loc[flipped, schema.TRANSACTION_ID]]


def import_version_with_frauds(paths: ProjectPaths, tmp_path: Path, n_frauds: int = 10) -> pd.DataFrame:
    """Import (as new transactions) the tiny world with `n_frauds` scenario-1 frauds, which it lacks; returns it."""
    frame = as_new_transactions(current_rows(paths))
    frame.loc[: n_frauds - 1, [schema.TX_AMOUNT, schema.TX_FRAUD, schema.TX_FRAUD_SCENARIO]] = [300.0, 1, 1]
    upload = tmp_path / "with_frauds.parquet"
    frame.to_parquet(upload)
    # Every previous transaction is replaced (deleted): on purpose here.
    import_data(upload, paths, load_settings(paths.params).validate_, force=True)
    return current_rows(paths)


def data_changes_verdict(paths: ProjectPaths, tmp_path: Path, champion_data_md5: str | None = None):
    """The data_changes gate on the checkout's own validation report (a candidate with no run); with
    `champion_data_md5`, against a champion gated on that data/raw (the md5 its signed attestation holds)."""
    from fraudguard.gates.base import GateContext, ModelUnderTest
    from fraudguard.gates.data_changes import run_data_changes_gate

    settings = load_settings(paths.params)
    empty = pd.DataFrame()
    champion = None if champion_data_md5 is None else \
        ModelUnderTest(bundle=None, version=3, gated_data_md5=champion_data_md5)
    context = GateContext(settings=settings, train_features=empty, test_features=empty, newest_window=empty,
                          source_root=paths.root, report_dir=tmp_path / "gates", champion=champion)
    return run_data_changes_gate(ModelUnderTest(bundle=None), context, settings.gates.data_changes)


def test_label_flip_import_keeps_the_old_labels_and_quarantines_the_flips_as_changed_history(origin, tmp_path):
    from fraudguard.stages import validate as stage

    before = import_version_with_frauds(origin, tmp_path)
    attacked, flipped = flip_frauds(before)
    upload = tmp_path / "upload.csv"
    attacked.to_csv(upload, index=False)
    outcome = import_data(upload, origin, load_settings(origin.params).validate_)
    assert outcome.validation_report["reasons"]["changed_history"] == len(flipped)
    pd.testing.assert_series_equal(current_rows(origin)[schema.TX_FRAUD].astype("int64"),
                                   before[schema.TX_FRAUD].astype("int64"))
    quarantined = pd.read_parquet(origin.import_quarantine)
    flips = quarantined[quarantined["reason"] == "changed_history"]
    assert sorted(flips[schema.TRANSACTION_ID].astype("int64")) == sorted(flipped)

    report = stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_).report
    stage_report = json.loads(origin.validation_report.read_text())
    assert stage_report["history"]["checked"] and stage_report["history"]["changed_history"] == len(flipped)
    assert stage_report["history"]["label_changes"] == 0
    assert not stage_report["fraud_rate_change"]["exceeded"]
    assert report["rows_in"] == len(before)
    assert data_changes_verdict(origin, tmp_path).passed


def test_label_flip_behind_a_decoy_copy_of_its_id_is_kept_out_as_changed_history(origin, tmp_path):
    from fraudguard.stages import validate as stage

    before = import_version_with_frauds(origin, tmp_path)
    attacked, flipped = flip_frauds(before)
    decoys = before[before[schema.TRANSACTION_ID].isin(flipped)].astype(str).assign(**{schema.TX_AMOUNT: ""})
    upload = tmp_path / "decoy.csv"
    pd.concat([attacked.astype(str), decoys], ignore_index=True).to_csv(upload, index=False)
    outcome = import_data(upload, origin, load_settings(origin.params).validate_)
    assert outcome.validation_report["reasons"]["changed_history"] == 2 * len(flipped)
    stored = current_rows(origin)
    assert len(stored) == len(before)
    pd.testing.assert_series_equal(stored[schema.TX_FRAUD].astype("int64"), before[schema.TX_FRAUD].astype("int64"))
    quarantined = pd.read_parquet(origin.import_quarantine)
    changed = quarantined[quarantined["reason"] == "changed_history"]
    assert sorted(set(changed[schema.TRANSACTION_ID].astype("int64"))) == sorted(flipped)
    result = stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    accepted = result.accepted.set_index(schema.TRANSACTION_ID)
    assert (accepted.loc[flipped, schema.TX_FRAUD] == 1).all()
    assert json.loads(origin.validation_report.read_text())["history"]["changed_history"] == 2 * len(flipped)


def test_an_id_stored_twice_stays_quarantined_when_a_later_file_gives_one_copy(origin, tmp_path):
    from fraudguard.stages import validate as stage

    before = import_version_with_frauds(origin, tmp_path)
    fraud = as_new_transactions(before.iloc[[0]])  # a fraud under an id data/raw does not hold
    twice = pd.concat([before, fraud, fraud.assign(**{schema.TX_FRAUD: 0, schema.TX_FRAUD_SCENARIO: 0})],
                      ignore_index=True)
    first = tmp_path / "twice.parquet"
    twice.to_parquet(first)
    import_data(first, origin, load_settings(origin.params).validate_)
    duplicate_id = int(fraud[schema.TRANSACTION_ID].iloc[0])
    # The later file keeps only the copy labelled legitimate: it must not decide which copy is the transaction.
    upload = tmp_path / "one_copy.csv"
    twice.iloc[:-2].pipe(lambda f: pd.concat([f, twice.iloc[[-1]]], ignore_index=True)).to_csv(upload, index=False)
    imported = CliRunner().invoke(app, ["data", "import", str(upload), "--root", str(origin.root)])
    assert imported.exit_code == 0, imported.output
    assert "1 of those row(s) give an id the previous version held more than once" in imported.output
    assert json.loads(origin.import_report.read_text())["reasons"]["changed_history"] == 1
    stored = current_rows(origin)
    copies = stored[stored[schema.TRANSACTION_ID].astype("int64") == duplicate_id]
    assert sorted(copies[schema.TX_FRAUD].astype("int64")) == [0, 1] and len(stored) == len(twice)
    quarantined = pd.read_parquet(origin.import_quarantine)
    assert list(quarantined.loc[quarantined["reason"] == "changed_history", schema.TRANSACTION_ID]
                .astype("int64")) == [duplicate_id]
    result = stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    assert duplicate_id not in set(result.accepted[schema.TRANSACTION_ID].astype("int64"))
    history = json.loads(origin.validation_report.read_text())["history"]
    assert history["changed_history_unresolved_duplicate"] == 1 and history["changed_history"] == 1


def test_deleting_existing_transactions_is_printed_tagged_and_blocks_promotion_until_acknowledged(origin, tmp_path):
    from fraudguard.lineage import validation_lineage
    from fraudguard.stages import validate as stage

    before = current_rows(origin)
    # Five transactions deleted, five new ones in their place: the row count alone would not show it.
    upload = tmp_path / "upload.parquet"
    pd.concat([before.iloc[5:], as_new_transactions(before.iloc[:5])], ignore_index=True).to_parquet(upload)
    imported = CliRunner().invoke(app, ["data", "import", str(upload), "--root", str(origin.root)])
    assert imported.exit_code == 0, imported.output
    assert "5 transaction(s) of the previous version are not in this file" in imported.stderr
    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    assert json.loads(origin.validation_report.read_text())["history"]["previous_transactions_missing"] == 5
    assert validation_lineage(origin.validation_report)["lineage.validation.deleted_transactions"] == "5"
    blocked = data_changes_verdict(origin, tmp_path)
    assert not blocked.passed and blocked.metrics["deleted_transactions"] == 5.0
    assert "5 transaction(s) of the previous version deleted not acknowledged" in blocked.reason
    ack = CliRunner().invoke(app, ["data", "acknowledge", "--as", "reviewer", "--reason", "scheme purge",
                                   "--root", str(origin.root)])
    assert ack.exit_code == 0, ack.output
    assert data_changes_verdict(origin, tmp_path).passed


def test_replacing_most_transactions_by_new_ones_needs_force(origin, tmp_path):
    before = current_rows(origin)
    keep = len(before) // 4
    upload = tmp_path / "upload.parquet"
    pd.concat([before.iloc[:keep], as_new_transactions(before.iloc[keep:])], ignore_index=True).to_parquet(upload)
    with pytest.raises(DataError, match=r"removing \d+ \(7\d\.\d%\) of them.*--force"):
        import_data(upload, origin, load_settings(origin.params).validate_)


def test_history_is_unchecked_when_data_raw_holds_a_file_besides_the_imported_one(origin, tmp_path):
    from fraudguard.stages import validate as stage

    before = import_version_with_frauds(origin, tmp_path)
    attacked, _ = flip_frauds(before)
    # Written beside the import's file, not through `data import`: its flipped rows were never diffed.
    write_transactions(as_new_transactions(attacked), origin.raw_dir / "side.parquet")
    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    report = json.loads(origin.validation_report.read_text())
    assert report["history"]["checked"] is False
    assert "side.parquet" in report["history"]["reason"] and "besides the imported one" in report["history"]["reason"]
    assert report["fraud_rate_change"]["checked"] is False


def test_reviewed_relabel_is_applied_counted_and_blocks_promotion_until_acknowledged(origin, tmp_path):
    from fraudguard.stages import validate as stage

    attacked, flipped = flip_frauds(import_version_with_frauds(origin, tmp_path), share=0.5)
    upload, relabel = tmp_path / "upload.csv", tmp_path / "relabel.csv"
    attacked.to_csv(upload, index=False)
    pd.DataFrame({schema.TRANSACTION_ID: flipped, schema.TX_FRAUD: 0}).to_csv(relabel, index=False)
    imported = CliRunner().invoke(app, ["data", "import", str(upload), "--relabel", str(relabel),
                                        "--root", str(origin.root)])
    assert imported.exit_code == 0, imported.output
    assert f"{len(flipped)} reviewed label change(s) applied" in imported.stdout
    assert "promotion is blocked until `fraudguard data acknowledge`" in imported.stderr
    assert (current_rows(origin)[schema.TX_FRAUD].astype("int64").to_numpy()
            == attacked[schema.TX_FRAUD].to_numpy()).all()

    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    report = json.loads(origin.validation_report.read_text())
    assert report["history"]["label_changes"] == len(flipped)
    assert report["fraud_rate_change"]["exceeded"]
    blocked = data_changes_verdict(origin, tmp_path)
    assert not blocked.passed and "not acknowledged" in blocked.reason

    ack = CliRunner().invoke(app, ["data", "acknowledge", "--as", "reviewer", "--reason", "chargeback review",
                                   "--root", str(origin.root)])
    assert ack.exit_code == 0, ack.output
    passed = data_changes_verdict(origin, tmp_path)
    assert passed.passed and "acknowledged by reviewer" in passed.reason


def test_data_edited_in_place_after_the_champion_was_gated_blocks_until_acknowledged(origin, tmp_path):
    """Editing data/raw by hand (no `data import`, so no diff of its history) and `dvc add`-ing it used to pass the
    data_changes gate as "unchecked"; so did deleting the intake record."""
    from fraudguard.data.history import INTAKE_RECORD_NAME
    from fraudguard.stages import validate as stage

    before = import_version_with_frauds(origin, tmp_path)
    champion_data = directory_md5(origin.raw_dir)  # what the champion was gated on
    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    assert "is not the data champion" not in data_changes_verdict(origin, tmp_path, champion_data).reason
    attacked, flipped = flip_frauds(before)
    write_transactions(attacked, origin.raw_dir / "transactions.parquet")  # insider: labels flipped in place
    track_raw_data(origin)
    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    blocked = data_changes_verdict(origin, tmp_path, champion_data)
    assert not blocked.passed and blocked.metrics["changed_outside_import"] == 1.0
    assert "is not the data champion version 3 was gated on" in blocked.reason
    assert "stale intake record" in blocked.reason
    assert data_changes_verdict(origin, tmp_path).passed  # no champion yet: nothing gated to compare with
    (origin.raw_dir / INTAKE_RECORD_NAME).unlink()  # deleting the record only changes the reason
    stage.run(stage.ValidatePaths.of(origin), load_settings(origin.params).validate_)
    assert "no intake record" in data_changes_verdict(origin, tmp_path, champion_data).reason
    ack = CliRunner().invoke(app, ["data", "acknowledge", "--as", "reviewer", "--reason", "relabelled by the bank",
                                   "--root", str(origin.root)])
    assert ack.exit_code == 0 and "did not check" in ack.output, ack.output
    assert data_changes_verdict(origin, tmp_path, champion_data).passed
