"""A run's new MLflow sqlite store is a copy of an empty one MLflow made once (`train/sqlite_store.py`)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dist_s2s.train.sqlite_store import MAKE_STORE, cached_store_path, empty_store, start_from_empty_store


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "dist-s2s"


def schema(path: Path) -> tuple[list, list]:
    """Every table and index with its definition's clauses, and the schema version. The clauses as a set:
    MLflow's own migrations write a table's constraints in a different order from one store to the next."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        versions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    db.close()
    clauses = lambda sql: tuple(sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))  # noqa: E731
    return [(kind, name, clauses(sql)) for kind, name, sql in rows], versions


def default_experiment(path: Path) -> tuple:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT name, artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
    db.close()
    return row


def test_a_new_store_is_a_copy_with_the_schema_mlflow_makes_and_its_default_experiment_beside_it(cache, tmp_path):
    from mlflow.tracking import MlflowClient

    made_by_mlflow = tmp_path / "mlflow" / "mlflow.db"
    made_by_mlflow.parent.mkdir()
    subprocess.run([sys.executable, "-c", MAKE_STORE, f"sqlite:///{made_by_mlflow}"], check=True)
    copied = tmp_path / "run" / "mlflow.db"
    copied.parent.mkdir()
    assert start_from_empty_store(f"sqlite:///{copied}")
    assert empty_store().parent == cache
    (tables, versions), (expected_tables, expected_versions) = schema(copied), schema(made_by_mlflow)
    assert versions == expected_versions
    assert tables == expected_tables, (f"only in the copy: {sorted(set(tables) - set(expected_tables))}; only in "
                                       f"MLflow's: {sorted(set(expected_tables) - set(tables))}")
    assert default_experiment(copied) == ("Default", str(copied.parent / "mlruns" / "0"))
    client = MlflowClient(f"sqlite:///{copied}")
    run = client.create_run(client.create_experiment("dist-s2s"))
    client.log_metric(run.info.run_id, "train/loss", 1.5, step=1)
    assert client.get_run(run.info.run_id).data.metrics == {"train/loss": 1.5}
    assert not start_from_empty_store(f"sqlite:///{copied}"), "a store that exists is never replaced"
    assert client.get_run(run.info.run_id).data.metrics == {"train/loss": 1.5}


def test_a_damaged_cached_store_is_left_to_mlflow_once_and_made_again(cache, tmp_path):
    cache.mkdir(parents=True)
    cached_store_path().write_bytes(b"not a database")
    first = tmp_path / "first" / "mlflow.db"
    first.parent.mkdir()
    assert not start_from_empty_store(f"sqlite:///{first}") and not first.exists(), "MLflow makes this one"
    assert not list(first.parent.iterdir()), "no partial copy left behind"
    second = tmp_path / "second" / "mlflow.db"
    second.parent.mkdir()
    assert start_from_empty_store(f"sqlite:///{second}")
    assert default_experiment(second)[0] == "Default"


def test_only_a_sqlite_file_store_is_copied(cache, tmp_path):
    assert not start_from_empty_store("http://127.0.0.1:5000")
    assert not cache.exists()
