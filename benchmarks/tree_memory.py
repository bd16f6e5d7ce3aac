"""Peak memory of this process and every process under it (Ray's raylet, GCS and workers), sampled.

Two sums are kept: resident size (RSS), which counts a page shared by several processes once per
process (the Ray object store's shared memory, the libraries every worker maps) and so overstates,
and proportional set size (PSS), which divides each shared page among the processes mapping it and
so adds up to what the tree really occupies. PSS is read from /proc/<pid>/smaps_rollup, which the
kernel computes by walking the page tables: a tenth of a second for a whole Ray tree, so it is
sampled less often than RSS.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import psutil

ROLES = ("driver", "raylet", "gcs_server", "workers", "other")


def role_of(process: psutil.Process, me: psutil.Process) -> str:
    if process.pid == me.pid:
        return "driver"
    name = process.name()
    if name in ("raylet", "gcs_server"):
        return name
    cmdline = " ".join(process.cmdline()[:2])
    return "workers" if "default_worker.py" in cmdline or name.startswith("ray::") else "other"


class TreeMemory:
    """Peak summed RSS (every `interval` s) and PSS (every `pss_interval` s), overall and by role."""

    def __init__(self, interval: float = 0.1, pss_interval: float = 1.0):
        self.interval, self.pss_interval = interval, pss_interval
        self.peak = 0
        self.peak_pss = 0
        self.role_peaks: dict[str, int] = defaultdict(int)
        self.role_peaks_pss: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        last_pss = 0.0
        while not self._stop.is_set():
            with_pss = time.monotonic() - last_pss >= self.pss_interval
            totals: dict[str, int] = defaultdict(int)
            totals_pss: dict[str, int] = defaultdict(int)
            for process in [me, *me.children(recursive=True)]:
                try:
                    role = role_of(process, me)
                    if with_pss:
                        info = process.memory_full_info()
                        totals_pss[role] += info.pss
                    else:
                        info = process.memory_info()
                    totals[role] += info.rss
                except psutil.Error:
                    pass  # a worker that exited between listing and reading
            self.peak = max(self.peak, sum(totals.values()))
            for role, value in totals.items():
                self.role_peaks[role] = max(self.role_peaks[role], value)
            if with_pss:
                last_pss = time.monotonic()
                self.peak_pss = max(self.peak_pss, sum(totals_pss.values()))
                for role, value in totals_pss.items():
                    self.role_peaks_pss[role] = max(self.role_peaks_pss[role], value)
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """Megabytes: the peaks of the sums, and each role's own peak (these need not add up to the first)."""
        mb = lambda value: round(value / 2**20)  # noqa: E731
        return {"peak_rss_mb": mb(self.peak), "peak_pss_mb": mb(self.peak_pss),
                "role_peak_rss_mb": {role: mb(self.role_peaks[role]) for role in ROLES if role in self.role_peaks},
                "role_peak_pss_mb": {role: mb(self.role_peaks_pss[role]) for role in ROLES
                                     if role in self.role_peaks_pss}}
