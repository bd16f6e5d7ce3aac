"""Python's garbage collector, set for a process that imports torch, DeepSpeed and MLflow.

Those imports leave hundreds of thousands of long-lived objects; at the default thresholds the
collector walks them again and again while they load, and once more at exit (measured in
docs/platform.md, "Process start and exit"). Every `dist-s2s` process and benchmark worker starts
with `collect_less_often` and ends with `leave_without_collecting`.
"""

from __future__ import annotations

import gc


def collect_less_often() -> None:
    """Young objects collected after 100,000 net allocations instead of 700; cycles are still collected."""
    gc.set_threshold(100_000, 50, 100)


def leave_without_collecting() -> None:
    """No last full collection at exit over what the imports left: nothing still alive needs it."""
    gc.freeze()
