"""Long commands say how far they are: a bar on a terminal, a log line now and then in a log or a pipe."""

from __future__ import annotations

import logging

from dist_s2s.progress import Progress


def test_without_a_terminal_progress_is_a_plain_log_line_with_the_rate(caplog):
    caplog.set_level(logging.INFO, logger="dist_s2s.progress")
    with Progress("translate", 100, unit="sentences", every_s=0.0) as bar:
        bar.advance(40)
        bar.advance(60)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("translate: 40 of 100 sentences done (") and lines[0].endswith(" sentences/s)")
    assert lines[-1].startswith("translate: 100 of 100 sentences done")


def test_the_rate_can_count_other_work_than_the_steps(caplog):
    caplog.set_level(logging.INFO, logger="dist_s2s.progress")
    with Progress("prepare: tokenize", 3, unit="chunks", rate_unit="pairs", every_s=3600.0) as bar:
        for _ in range(3):
            bar.advance(work=10_000)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["prepare: tokenize: 3 of 3 chunks done"]
    assert caplog.records[0].getMessage().endswith(" pairs/s)")


def test_a_silent_progress_and_a_failed_command_say_nothing(caplog):
    caplog.set_level(logging.INFO, logger="dist_s2s.progress")
    with Progress("quiet", 5, unit="steps", show=False, every_s=0.0) as bar:
        bar.advance(5)
    try:
        with Progress("failing", 5, unit="steps", every_s=3600.0) as bar:
            bar.advance(1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert caplog.records == []
