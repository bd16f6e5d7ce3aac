"""The schedule simulators (`dist_s2s/bench/one_f_one_b_sim.py` for 1F1B, `wavefront_sim.py`): validated here.

    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/pipeline_simulator.py --config configs/multi30k-paper.yaml \
        --stages 2 --micro-batches 4 --output benchmarks/results/simulator-cpu-multi30k.json
    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/pipeline_simulator.py --config configs/multi30k-paper.yaml \
        --stages 2 --parallel.schedule=wavefront --parallel.placement=colocated --timeline docs/timeline-wavefront.png
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
import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_s2s.bench.one_f_one_b_sim import simulate, stage_costs
from dist_s2s.bench.run import Mode, run_mode
from dist_s2s.bench.timeline import as_rows, plot, simulated_rows
from dist_s2s.bench.wavefront_sim import operation_costs, simulate_program
from dist_s2s.bench.worker import real_batches
from dist_s2s.config import load_config
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.placement import placement, placement_name
from dist_s2s.provenance import provenance


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


def _keep_busy(config_path: str, overrides: list[str], batches_dir: str, events) -> None:
    """A neighbour process: the same step program as the measured one, over and over, one thread."""
    torch.set_num_threads(1)
    config = load_config(config_path, overrides)
    batches = real_batches(config, batches_dir, 3)
    torch.manual_seed(config.train.seed)
    model = Seq2Seq(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size)
    layout = placement(config.parallel.placement, config.model.num_layers, config.model.softmax_shards,
                       config.parallel.stages)
    ready, stop = events
    while not stop.is_set():
        for batch in batches:
            operation_costs(model, layout, batch, config.parallel.chunk_steps, precision=config.train.precision,
                            dropout=config.model.dropout)
        ready.release()  # warmed up: one round done


@contextlib.contextmanager
def busy_neighbours(count: int, config_path: str, overrides: list[str], batches_dir: str):
    """`count` processes computing beside the measurement, as the other stages of a pipeline do: on a CPU
    they share its caches and memory bandwidth, which slows the operations (docs/benchmarks.md)."""
    context = mp.get_context("spawn")
    stop, ready = context.Event(), context.Semaphore(0)
    workers = [context.Process(target=_keep_busy, args=(config_path, overrides, batches_dir, (ready, stop)))
               for _ in range(count)]
    for worker in workers:
        worker.start()
    for _ in workers:  # each has loaded its data and run the program once
        ready.acquire(timeout=600)
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)


def predict_1f1b(model, batches, args, link) -> tuple[float, dict, list]:
    stage_costs(model, batches[:1], args.stages, args.micro_batches)  # warm-up
    costs = stage_costs(model, batches[1:], args.stages, args.micro_batches)
    predicted = simulate(costs, args.micro_batches, *link)
    words = sum(b.words for b in batches[1:]) / len(batches[1:])
    details = {"forward_s": costs.forward_s, "backward_s": costs.backward_s,
               "activation_bytes": costs.activation_bytes, "optimizer_s": costs.optimizer_s,
               "predicted_bubble_fraction": round(predicted["bubble_fraction"], 3),
               "single_process_words_per_sec": round(words / (sum(costs.forward_s) + sum(costs.backward_s))
                                                     / args.micro_batches, 1)}
    print(f"stage forward s/micro-batch {[round(f, 4) for f in costs.forward_s]}, backward "
          f"{[round(b, 4) for b in costs.backward_s]}, sends {[int(a) for a in costs.activation_bytes]} B")
    last = simulate(stage_costs(model, batches[-1:], args.stages, args.micro_batches), args.micro_batches, *link)
    return words / predicted["step_s"], details, simulated_rows(last["timeline"], args.stages)


def predict_wavefront(model, batches, args, *, config, link) -> tuple[float, dict, list]:
    layout = placement(config.parallel.placement, config.model.num_layers, config.model.softmax_shards, args.stages)
    options = {"precision": config.train.precision, "dropout": config.model.dropout}
    operation_costs(model, layout, batches[0], config.parallel.chunk_steps, **options)  # warm-up
    runs = [operation_costs(model, layout, batch, config.parallel.chunk_steps, step=index, **options)
            for index, batch in enumerate(batches[1:], start=1)]
    predictions = [simulate_program(run, args.stages, *link) for run in runs]
    step_s = sum(p["step_s"] for p in predictions)
    by_kind: dict[str, float] = {}
    for run in runs:
        for op, seconds in zip(run.program, run.seconds):
            by_kind[f"{op.kind}@stage{op.stage}"] = by_kind.get(f"{op.kind}@stage{op.stage}", 0.0) + seconds
    details = {"placement": placement_name(config.parallel.placement, config.model.num_layers,
                                           config.model.softmax_shards, args.stages),
               "chunk_steps": config.parallel.chunk_steps,
               "seconds_by_operation_and_stage": {k: round(v / len(runs), 5) for k, v in sorted(by_kind.items())},
               "optimizer_s": sum(r.optimizer_s for r in runs) / len(runs),
               "stage_optimizer_s": [round(sum(r.stage_optimizer_s[s] for r in runs) / len(runs), 5)
                                     for s in range(args.stages)],
               "predicted_busy_fraction": round(sum(p["busy_fraction"] for p in predictions) / len(predictions), 3),
               "single_process_words_per_sec": round(sum(r.words for r in runs)
                                                     / sum(sum(r.seconds) + r.optimizer_s for r in runs), 1)}
    print(f"per step, seconds by operation and stage: {details['seconds_by_operation_and_stage']}")
    return sum(r.words for r in runs) / step_s, details, simulated_rows(predictions[-1]["timeline"], args.stages)


def arguments() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", help="prepared data whose train batches are used (default data.out_dir)")
    parser.add_argument("--stages", type=int, required=True)
    parser.add_argument("--micro-batches", type=int, default=1, help="1F1B micro-batches")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-measure", action="store_true", help="predict only (no multi-process run)")
    parser.add_argument("--link-gbps", type=float, help="link bandwidth in GB/s (default: measured gloo)")
    parser.add_argument("--link-latency-us", type=float, default=None)
    parser.add_argument("--alone", action="store_true",
                        help="time the operations with no busy neighbour processes (default: stages - 1 of them)")
    parser.add_argument("--timeline", type=Path, help="PNG: the last timed step, measured and simulated")
    parser.add_argument("--output", type=Path)
    args, overrides = parser.parse_known_args()
    return args, [*overrides, f"--parallel.micro_batches={args.micro_batches}"]


def main() -> None:
    args, overrides = arguments()
    config = load_config(args.config, overrides)
    schedule = config.parallel.schedule
    batches_dir = args.batches or config.data.out_dir
    warmup = 2
    batches = real_batches(config, batches_dir, warmup + args.steps)[warmup - 1:]  # the measured run's, + 1 warm-up
    torch.set_num_threads(1)
    ranks = None
    if not args.no_measure:  # first, while this process is small: the memory the one-process timing frees
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # slows the ranks started after it (docs/benchmarks.md)
        ranks = run_mode(Mode("pipeline", args.stages, 1), args.config, overrides=overrides, batches=batches_dir,
                         steps=args.steps, warmup=warmup, config=config, record_timeline=args.timeline is not None)
    torch.manual_seed(config.train.seed)
    model = Seq2Seq(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size)
    link = (args.link_gbps * 1e9, (args.link_latency_us or 0.0) * 1e-6) if args.link_gbps else measure_link()
    if schedule == "wavefront":
        neighbours = 0 if args.no_measure or args.alone else args.stages - 1
        overrides_all = [*overrides, f"--parallel.stages={args.stages}"]
        with busy_neighbours(neighbours, args.config, overrides_all, batches_dir):
            predicted, details, simulated = predict_wavefront(model, batches, args, config=config, link=link)
        details["busy_neighbours"] = neighbours
    else:
        predicted, details, simulated = predict_1f1b(model, batches, args, link)
    result = {
        **provenance(config, config_path=args.config, overrides=overrides), "batches": batches_dir,
        "stages": args.stages, "schedule": schedule, "micro_batches": args.micro_batches, **details,
        "link_gb_per_s": link[0] / 1e9, "link_latency_us": link[1] * 1e6,
        "predicted_words_per_sec": round(predicted, 1), "device": "cpu",
    }
    print(f"link {link[0] / 1e9:.2f} GB/s, {link[1] * 1e6:.0f} µs; predicted: {predicted:,.0f} words/s")
    if ranks is not None:
        compare_with_the_real_run(result, ranks, args, config=config, simulated=simulated)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")


def compare_with_the_real_run(result: dict, ranks: list[dict], args, *, config, simulated) -> None:
    """The measured words/s and the prediction's error into `result`; with --timeline, both steps drawn."""
    measured = ranks[0]["words"] / ranks[0]["seconds"]
    result["measured_words_per_sec"] = round(measured, 1)
    result["prediction_error"] = round(result["predicted_words_per_sec"] / measured - 1, 3)
    print(f"measured:  {measured:,.0f} words/s (prediction {100 * result['prediction_error']:+.1f}%)")
    if args.timeline:
        by_stage = [r["timeline"] for r in sorted(ranks, key=lambda r: r["stage"])]
        label = f"{args.stages} stages, {result['schedule']}" + (
            f" ({result['placement']}, chunks of {config.parallel.chunk_steps} steps)"
            if result["schedule"] == "wavefront" else f" ({args.micro_batches} micro-batches)")
        plot([(f"measured: {label}, one step of {args.config}", as_rows(by_stage)),
              ("simulated: the same step from one-process costs and the measured link", simulated)],
             args.timeline)
        print(f"timeline: {args.timeline}")


if __name__ == "__main__":
    main()
