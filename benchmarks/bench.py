"""The benchmark script: the same as `dist-s2s bench` (see `dist_s2s/bench/run.py` for the modes).

    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/bench.py --config configs/multi30k-paper.yaml \\
        --parallel.micro_batches=4 --mode plain single single@1 pipeline:1 pipeline:2@1 \\
        --output benchmarks/results/bench-cpu-multi30k.json
    .venv/bin/python benchmarks/results_tables.py    # then refresh the tables in README.md and docs/benchmarks.md
"""

import sys

from dist_s2s.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
