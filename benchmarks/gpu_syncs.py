"""How often each step of the main job's model makes the host wait for the GPU, as torch counts it.

    python3 benchmarks/gpu_syncs.py --batches runs/data/multi30k --output runs/gpu-kit/syncs.json

`torch.cuda.set_sync_debug_mode("warn")` warns at every call that waits for the device; the counts here are
those warnings, per training step (with and without dropout, fp32 and bf16) and per beam search (with its
decoder steps), beside the budgets the CPU tests hold the same code to (tests/sync_counter.py: 0 a training
step, 1 a decoder step and 5 a search). Part of `benchmarks/gpu_kit.sh run`; needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from dist_s2s.bench.worker import real_batches
from dist_s2s.config import load_config
from dist_s2s.decode import beam
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.step import SingleDeviceSteps

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi30k.yaml"


def waits(action) -> int:
    """The device waits torch reports while `action` runs (after the device has caught up)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def training_step_waits(batches_dir: str, *overrides: str) -> int:
    config = load_config(CONFIG, ["--train.device=cuda", *overrides])
    torch.manual_seed(0)
    steps = SingleDeviceSteps(config, Seq2Seq(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size),
                              torch.device("cuda"))
    batches = [batch.pin_memory().to("cuda") for batch in real_batches(config, batches_dir, 2)]
    steps.train_step(batches[0], config.optim.lr, 1)  # the first step allocates and tunes
    return waits(lambda: steps.train_step(batches[1], config.optim.lr, 2))


def beam_search_waits(batches_dir: str) -> dict[str, int]:
    config = load_config(CONFIG, ["--train.device=cuda"])
    torch.manual_seed(0)
    model = Seq2Seq(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size).cuda().eval()
    batch = real_batches(config, batches_dir, 1)[0]
    ensemble, steps = beam.Ensemble([model]), []
    step = beam.Ensemble.step
    beam.Ensemble.step = lambda self, *args: steps.append(1) or step(self, *args)
    try:
        with torch.no_grad():
            beam.beam_search(ensemble, batch.src.cuda(), batch.src_lengths, 12)
            steps.clear()
            count = waits(lambda: beam.beam_search(ensemble, batch.src.cuda(), batch.src_lengths, 12))
    finally:
        beam.Ensemble.step = step
    return {"waits": count, "decoder_steps": len(steps), "budget": len(steps) + 5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", required=True, help="the main job's prepared data")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_syncs: needs a CUDA GPU", file=sys.stderr)
        return 1
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "training_step": {name: training_step_waits(args.batches, *overrides) for name, overrides in (
                  ("fp32", ["--model.dropout=0", "--train.precision=fp32"]),
                  ("fp32, dropout 0.2", ["--model.dropout=0.2", "--train.precision=fp32"]),
                  ("bf16, dropout 0.2 (the main job)", ["--model.dropout=0.2", "--train.precision=bf16"]))},
              "training_step_budget": 0, "beam_search_12": beam_search_waits(args.batches)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    over = any(count > 0 for count in report["training_step"].values()) or \
        report["beam_search_12"]["waits"] > report["beam_search_12"]["budget"]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
