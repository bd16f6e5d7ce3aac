"""A new MLflow sqlite store, made by copying an empty one.

MLflow makes a new sqlite store by creating its tables and running every schema migration since its
first release: 2.3 s on a 2-core machine, twice that under load, at the start of every run; in a
pipeline the other ranks wait for rank 0 meanwhile. The empty store is made by MLflow itself once per
MLflow version, kept in the user's cache (`$XDG_CACHE_HOME/dist-s2s`, else `~/.cache/dist-s2s`) and
copied: 30 ms. The copy differs from what MLflow would have made in one row only: its Default
experiment (which dist-s2s never logs to) keeps its artifacts beside the store, not under the
working directory of whoever made it, with its creation time now. Whatever goes wrong here leaves
the making to MLflow, as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist-s2s"


def start_from_empty_store(uri: str) -> bool:
    """When `uri` names a sqlite file that does not exist, put a copy of the empty store there; whether
    it did."""
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(uri[len("sqlite:///"):])
    if path.exists():
        return False
    try:
        _copy_empty_store(path)
        return True
    except (OSError, sqlite3.Error, subprocess.CalledProcessError) as error:  # MLflow makes it, as before
        log.debug("tracking: no copy of the empty MLflow store at %s (%s); MLflow makes it", path, error)
        return False


MAKE_STORE = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
"""MLflow creating and migrating a new store's tables, in an interpreter of its own: nothing this process has
imported or opened takes part."""


def cached_store_path() -> Path:
    """Where the installed MLflow's empty store is kept."""
    return cache_dir() / f"mlflow-{version('mlflow')}-empty.db"


def empty_store() -> Path:
    """The empty store of the installed MLflow, made by MLflow the first time it is asked for."""
    template = cached_store_path()
    if not template.is_file():
        template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=template.parent) as scratch:
            made = Path(scratch) / "mlflow.db"
            subprocess.run([sys.executable, "-c", MAKE_STORE, f"sqlite:///{made}"], check=True, capture_output=True,
                           env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
            os.replace(made, template)  # whole or not at all, whoever else makes it at the same time
    return template


def _copy_empty_store(path: Path) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(empty_store(), partial)
        _make_default_experiment_local(partial, path.parent.resolve() / "mlruns" / "0")
        os.replace(partial, path)
    except sqlite3.DatabaseError:  # a damaged cached copy: made again the next time
        cached_store_path().unlink(missing_ok=True)
        raise
    finally:
        partial.unlink(missing_ok=True)


def _make_default_experiment_local(store: Path, artifacts: Path) -> None:
    """Point the Default experiment at `artifacts`, created now; a store without it or without its schema
    version is not an empty MLflow store (sqlite3.DatabaseError)."""
    now = int(time.time() * 1000)
    with sqlite3.connect(store) as db:
        if db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] != 1:
            raise sqlite3.DatabaseError(f"{store}: no MLflow schema version")
        changed = db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                             "WHERE experiment_id = 0", (str(artifacts), now, now)).rowcount
        if changed != 1:
            raise sqlite3.DatabaseError(f"{store}: no Default experiment")
    db.close()
