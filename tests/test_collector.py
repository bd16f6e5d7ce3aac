"""A dist-s2s process runs its command with the collector set for torch's, DeepSpeed's and MLflow's imports."""

from __future__ import annotations

import gc

import pytest

from dist_s2s import cli


def test_the_command_runs_with_young_objects_collected_less_often_and_the_exit_skips_a_last_collection(
        monkeypatch):
    during = {}

    def command(argv=None) -> int:
        during["threshold"], during["frozen"] = gc.get_threshold(), gc.get_freeze_count()
        return 3

    monkeypatch.setattr(cli, "main", command)
    before = gc.get_threshold()
    try:
        with pytest.raises(SystemExit) as ended:
            cli.run()
        assert ended.value.code == 3, "the command's exit status is the process's"
        assert during["threshold"] == (100_000, 50, 100) and during["frozen"] == 0, "frozen only after the command"
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
