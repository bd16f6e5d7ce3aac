"""A probe of how a launched rank's process ends (issue 31), loaded into every rank by putting this folder first on
PYTHONPATH with EXIT_PROBE=<a folder>: it appends to <folder>/rank-<RANK> the number of gloo threads alive when the
exit handlers run and, if the interpreter then finalizes, when it does. A rank that finalizes with gloo threads alive
leaves their teardown to the interpreter's exit, which now and then aborts (docs/robustness.md)."""

import atexit
import os


def _gloo_threads(listdir=os.listdir, open=open):  # bound now: a finalizing interpreter has cleared its globals
    return sum("gloo" in open(f"/proc/self/task/{task}/comm").read() for task in listdir("/proc/self/task"))


if os.environ.get("RANK") is not None and os.environ.get("EXIT_PROBE"):
    _path = os.path.join(os.environ["EXIT_PROBE"], "rank-" + os.environ["RANK"])
    atexit.register(lambda: open(_path, "a").write(f"exit handlers ran: {_gloo_threads()} gloo threads\n"))

    class _Finalized:
        def __del__(self, path=_path, open=open, threads=_gloo_threads):
            open(path, "a").write(f"interpreter finalized: {threads()} gloo threads\n")

    _sentinel = _Finalized()
