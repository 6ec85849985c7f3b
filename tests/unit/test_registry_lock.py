"""The registry lock's backend choice (no servers: only which lock, where, and which key)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fraudguard.errors import RegistryError
from fraudguard.registry import advisory_lock_key, lock_backend_for


def _client(uri: str) -> SimpleNamespace:
    """What lock_backend_for reads of an MlflowClient (a real one would connect to a postgresql URI)."""
    return SimpleNamespace(tracking_uri=uri, _registry_uri=uri)


@pytest.fixture(autouse=True)
def no_lock_env(monkeypatch):
    for name in ("FRAUDGUARD_REGISTRY_LOCK", "FRAUDGUARD_REGISTRY_LOCK_URL", "FRAUDGUARD_REGISTRY_LOCK_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_sqlite_store_defaults_to_the_file_lock_beside_it(tmp_path):
    backend = lock_backend_for(_client(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert (backend.kind, backend.target) == ("file", str(tmp_path / "mlflow.db.fraudguard.lock"))


def test_a_lock_url_selects_the_advisory_lock_for_a_server_registry(monkeypatch):
    monkeypatch.setenv("FRAUDGUARD_REGISTRY_LOCK_URL", "postgresql://lock:pw@db:5432/fraudguard_locks")
    backend = lock_backend_for(_client("http://mlflow.internal:5000"))
    assert backend.kind == "postgres" and backend.target.endswith("/fraudguard_locks")
    assert backend.key == advisory_lock_key("http://mlflow.internal:5000")
    assert "pw" not in backend.describe()


def test_a_postgresql_registry_locks_on_its_own_database_without_the_driver_suffix():
    backend = lock_backend_for(_client("postgresql+psycopg://u:p@db:5432/mlflow"))
    assert (backend.kind, backend.target) == ("postgres", "postgresql://u:p@db:5432/mlflow")


def test_the_explicit_choice_wins_and_postgres_without_a_database_is_an_error(monkeypatch):
    monkeypatch.setenv("FRAUDGUARD_REGISTRY_LOCK_URL", "postgresql://lock:pw@db/locks")
    monkeypatch.setenv("FRAUDGUARD_REGISTRY_LOCK", "file")
    assert lock_backend_for(_client("http://mlflow:5000")).kind == "file"
    monkeypatch.delenv("FRAUDGUARD_REGISTRY_LOCK_URL")
    monkeypatch.setenv("FRAUDGUARD_REGISTRY_LOCK", "postgres")
    with pytest.raises(RegistryError, match="FRAUDGUARD_REGISTRY_LOCK_URL"):
        lock_backend_for(_client("http://mlflow:5000"))
    monkeypatch.setenv("FRAUDGUARD_REGISTRY_LOCK", "zookeeper")
    with pytest.raises(RegistryError, match="expected one of"):
        lock_backend_for(_client("http://mlflow:5000"))


def test_the_advisory_key_names_the_registry_not_who_connects():
    assert advisory_lock_key("http://a:pw@MLflow:5000/") == advisory_lock_key("http://mlflow:5000")
    assert advisory_lock_key("http://mlflow:5000") != advisory_lock_key("http://mlflow:5001")
    assert -2**63 <= advisory_lock_key("http://mlflow:5000") < 2**63
