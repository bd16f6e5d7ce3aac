"""The private DeepSpeed names dist-s2s relies on (`parallel/deepspeed_hooks.py`) are there, in the version
they were written against: on another DeepSpeed this fails first, naming what to check."""

from __future__ import annotations

import deepspeed

from dist_s2s.parallel import deepspeed_hooks


def test_the_installed_deepspeed_is_the_one_the_hooks_were_written_against():
    assert deepspeed.__version__ == deepspeed_hooks.WRITTEN_AGAINST, (
        f"DeepSpeed {deepspeed.__version__} is installed; dist_s2s/parallel/deepspeed_hooks.py was written against "
        f"{deepspeed_hooks.WRITTEN_AGAINST}: read each hook there (PRIVATE_NAMES) against the new source, then raise "
        "WRITTEN_AGAINST and the pin in constraints.txt")


def test_every_private_name_the_hooks_use_exists():
    assert deepspeed_hooks.missing_private_names() == [], (
        "DeepSpeed no longer has these private names that dist_s2s/parallel/deepspeed_hooks.py relies on")
