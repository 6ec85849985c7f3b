"""What the flow prepares in another interpreter while the training runs (fraudguard.preload)."""

from __future__ import annotations

import sqlite3

from fraudguard.config import RegistrySettings
from fraudguard.preload import during_training, prepare_elsewhere


def test_prepare_elsewhere_creates_the_mlflow_store_and_the_font_cache(tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    registry = RegistrySettings(model_name="fraudguard", experiment="prepared-elsewhere",
                                reference_sample_rows=1000, reference_sample_seed=0)

    prepare_elsewhere(tmp_path, registry)

    with sqlite3.connect(store) as db:
        names = [name for (name,) in db.execute("SELECT name FROM experiments")]
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert "prepared-elsewhere" in names and revision
    assert list((tmp_path / "cache" / "matplotlib").glob("fontlist-*.json"))


def test_a_failure_elsewhere_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "no-such-scheme://store")
    registry = RegistrySettings(model_name="fraudguard", experiment="x", reference_sample_rows=1000,
                                reference_sample_seed=0)

    prepare_elsewhere(tmp_path, registry)

    assert "preparing the MLflow store and font cache elsewhere failed" in caplog.text


def test_the_training_time_steps_only_start_other_interpreters(tmp_path, small_settings):
    names = [name for name, _ in during_training(tmp_path, small_settings.registry, small_settings.gates)]
    assert names == ["Evidently's interpreter", "MLflow store and font cache, in another interpreter"]
