"""One benchmark run's process (or one rank of it): time training steps on real batches.

Started by `bench/run.py`, alone (`plain`, `single`) or under torchrun (`pipeline`); writes
`rank-<r>.json` into the output folder. Not a user command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch

from dist_s2s.bench.flops import training_flops
from dist_s2s.bench.measure import peak_memory_mb
from dist_s2s.bench.plain import PlainSeq2Seq
from dist_s2s.collector import collect_less_often, leave_without_collecting
from dist_s2s.config import load_config
from dist_s2s.data.loader import BatchLoader
from dist_s2s.device import pick_device, synchronize
from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.process_group import end_rank_process, launched_as_ranks
from dist_s2s.train.step import SingleDeviceSteps


def real_batches(config, batches_dir: str, count: int) -> list:
    """The first batches of a prepared training split in the loader's order: real bucketed lengths."""
    loader = BatchLoader(batches_dir, config.data.train_split, config.train.batch_size, seed=config.train.seed)
    batches = []
    while len(batches) < count:  # only the batches needed are read; the next epoch if one is too short
        batches += itertools.islice(loader, count - len(batches))
    largest = max(int(b.src.max()) for b in batches), max(int(b.tgt_out.max()) for b in batches)
    if largest[0] >= config.data.src_vocab_size or largest[1] >= config.data.tgt_vocab_size:
        raise UserError(f"batches from {batches_dir} use word ids up to {largest}, beyond the model's vocabularies "
                        f"({config.data.src_vocab_size}, {config.data.tgt_vocab_size})")
    return batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--mode", choices=["plain", "single", "pipeline"], required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeline", action="store_true", help="record the last timed step's instructions")
    parser.add_argument("--rank", type=int, default=0, help="which of several side-by-side processes this is")
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, overrides)
    batches = real_batches(config, args.batches, args.warmup + args.steps)
    torch.manual_seed(config.train.seed)
    model_class = PlainSeq2Seq if args.mode == "plain" else Seq2Seq
    model = model_class(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size)
    if args.mode == "pipeline":
        from dist_s2s.parallel.process_group import join_process_group

        join_process_group(config)  # the first import of DeepSpeed (deepspeed_hooks.import_deepspeed)
        from dist_s2s.parallel.schedules import pipeline_steps

        steps = pipeline_steps(config, model)
        steps.ready()
        device, rank = steps.device, torch.distributed.get_rank()
    else:
        device, rank = pick_device(config.train.device), args.rank
        steps = SingleDeviceSteps(config, model, device)
    elapsed, words, sentences, flops = 0.0, 0, 0, 0
    entries = None
    for index, batch in enumerate(batches):
        if args.timeline and args.mode == "pipeline" and index == len(batches) - 1:
            entries = steps.record_timeline()
        synchronize(device)
        started = time.perf_counter()
        result = steps.train_step(batch, config.optim.lr, index + 1)
        synchronize(device)
        if index >= args.warmup:
            elapsed += time.perf_counter() - started
            words += result.words
            sentences += result.sentences
            flops += training_flops(config.model, config.data.tgt_vocab_size, batch)
    record = {"rank": rank, "peak_mem_mb": round(peak_memory_mb(device), 1), "threads": torch.get_num_threads(),
              "stage": steps.engine.stage_id if args.mode == "pipeline" else 0, "timeline": entries}
    if rank == 0 or args.mode != "pipeline":  # a pipeline's rank 0 counts the step; side-by-side processes each
        record.update({"seconds": elapsed, "words": words, "sentences": sentences, "flops": flops,
                       "device": str(device)})
    if args.mode == "pipeline":
        steps.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank-{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    collect_less_often()  # as in a training process
    main()
    if launched_as_ranks():  # a pipeline rank ends as a training rank does
        end_rank_process(0)
    leave_without_collecting()
