"""The 1F1B schedule simulator (`dist_s2s/bench/schedule.py`): validated here, then projected.

    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/pipeline_simulator.py --config configs/multi30k.yaml \
        --stages 2 --micro-batches 4 --output benchmarks/results/simulator-cpu-multi30k.json
    .venv/bin/python benchmarks/pipeline_simulator.py --config configs/paper.yaml --batches runs/data/multi30k \
        --stages 8 --micro-batches 8 --no-measure --link-gbps 12 --link-latency-us 10

In one run: per-stage forward/backward times measured in this process on real batches (one
thread, as each pipeline rank gets), the gloo link between two local processes measured by
ping-pong, the simulator's prediction, and the real multi-process pipeline (`dist-s2s bench`
mode pipeline:S@1) for comparison. With --no-measure only the prediction is made (for layouts
this machine cannot run as separate devices, like the paper's 8 GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_s2s.bench.run import Mode, run_mode
from dist_s2s.bench.schedule import simulate, stage_costs
from dist_s2s.bench.worker import real_batches
from dist_s2s.config import load_config
from dist_s2s.model.seq2seq import Seq2Seq


def _ping_pong(rank: int, port: int, sizes: list[int], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for size in sizes:
        buffer = torch.zeros(max(1, size // 4))
        for _ in range(3):  # warm-up
            (dist.send if rank == 0 else dist.recv)(buffer, 1 - rank)
        started = time.perf_counter()
        for _ in range(20):
            if rank == 0:
                dist.send(buffer, 1)
                dist.recv(buffer, 1)
            else:
                dist.recv(buffer, 0)
                dist.send(buffer, 0)
        results[size] = (time.perf_counter() - started) / 40
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def measure_link() -> tuple[float, float]:
    """(bytes/s, latency s) of gloo send/recv between two local processes, fitted on 4 KB and 4 MB."""
    import socket
    import tempfile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        small, large = 4096, 4 * 2**20
        mp.spawn(_ping_pong, args=(port, [small, large], out.name), nprocs=2)
        times = {int(k): v for k, v in json.loads(Path(out.name).read_text()).items()}
    bandwidth = (large - small) / max(times[large] - times[small], 1e-9)
    return bandwidth, max(times[small] - small / bandwidth, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", help="prepared data whose train batches are used (default data.out_dir)")
    parser.add_argument("--stages", type=int, required=True)
    parser.add_argument("--micro-batches", type=int, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-measure", action="store_true", help="predict only (no multi-process run)")
    parser.add_argument("--link-gbps", type=float, help="link bandwidth in GB/s (default: measured gloo)")
    parser.add_argument("--link-latency-us", type=float, default=None)
    parser.add_argument("--output", type=Path)
    args, overrides = parser.parse_known_args()
    overrides = [*overrides, f"--parallel.micro_batches={args.micro_batches}"]
    config = load_config(args.config, overrides)
    batches_dir = args.batches or config.data.out_dir
    batches = real_batches(config, batches_dir, args.steps + 1)
    torch.set_num_threads(1)
    torch.manual_seed(config.train.seed)
    model = Seq2Seq(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size)
    stage_costs(model, batches[:1], args.stages, args.micro_batches)  # warm-up
    costs = stage_costs(model, batches[1:], args.stages, args.micro_batches)
    if args.link_gbps:
        bandwidth, latency = args.link_gbps * 1e9, (args.link_latency_us or 0.0) * 1e-6
    else:
        bandwidth, latency = measure_link()
    predicted = simulate(costs, args.micro_batches, bandwidth, latency)
    words = sum(b.words for b in batches[1:]) / len(batches[1:])
    result = {
        "config": args.config, "overrides": overrides, "batches": batches_dir, "stages": args.stages,
        "micro_batches": args.micro_batches, "forward_s": costs.forward_s, "backward_s": costs.backward_s,
        "activation_bytes": costs.activation_bytes, "optimizer_s": costs.optimizer_s,
        "link_gb_per_s": bandwidth / 1e9, "link_latency_us": latency * 1e6,
        "predicted_words_per_sec": round(words / predicted["step_s"], 1),
        "predicted_bubble_fraction": round(predicted["bubble_fraction"], 3),
        "single_process_words_per_sec": round(words / (sum(costs.forward_s) + sum(costs.backward_s))
                                              / args.micro_batches, 1),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": "cpu",
    }
    print(f"stage forward s/micro-batch {[round(f, 4) for f in costs.forward_s]}, backward "
          f"{[round(b, 4) for b in costs.backward_s]}, sends {[int(a) for a in costs.activation_bytes]} B; "
          f"link {bandwidth / 1e9:.2f} GB/s, {latency * 1e6:.0f} µs")
    print(f"predicted: {result['predicted_words_per_sec']:,.0f} words/s, bubble "
          f"{result['predicted_bubble_fraction']:.2f}")
    if not args.no_measure:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        ranks = run_mode(Mode("pipeline", args.stages, 1), args.config, overrides, batches_dir, args.steps, 2,
                         args.micro_batches)
        measured = ranks[0]["words"] / ranks[0]["seconds"]
        result["measured_words_per_sec"] = round(measured, 1)
        result["prediction_error"] = round(result["predicted_words_per_sec"] / measured - 1, 3)
        print(f"measured:  {measured:,.0f} words/s (prediction {100 * result['prediction_error']:+.1f}%)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
