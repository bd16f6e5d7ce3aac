"""Run under torchrun by test_pipeline.py: N pipeline steps vs the single-device trainer step, same batches.

Each rank writes rank-<r>.json with the largest parameter difference on its stage and the losses; under the
wavefront schedule, per step, whether an encoder chunk boundary fell inside some sentences and past the end
of others.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from sync_counter import SyncCounter

from dist_s2s.collector import collect_less_often, leave_without_collecting
from dist_s2s.config import load_config
from dist_s2s.data.loader import BatchLoader
from dist_s2s.model.dropout import step_dropout
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.wavefront.messages import StageMessages
from dist_s2s.train.clipping import clip_gradients
from dist_s2s.train.optimizer import build_optimizer, optimizer_state, unsharded


def step_engine(engine, config, batch, step: int):
    """One pipeline step; the step's NLL per sentence, on the device."""
    from dist_s2s.parallel.one_f_one_b import micro_batches, training_scale

    micro, replicas = config.parallel.micro_batches, config.parallel.data
    if config.parallel.schedule == "wavefront":
        return engine.train_wavefront(batch, scale=replicas / batch.step_sentences, step=step) / batch.step_sentences
    scale = training_scale(batch, micro, replicas)
    return engine.train_batch(data_iter=micro_batches(batch, micro, scale, seed=config.train.seed, step=step))


def main() -> None:
    out_dir, steps, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", overrides)
    from dist_s2s.parallel.process_group import join_process_group

    join_process_group(config)
    from dist_s2s.parallel.schedules import pipeline_steps

    vocab = json.loads((Path(config.data.out_dir) / "manifest.json").read_text())["vocab"]
    torch.manual_seed(config.train.seed)
    model = Seq2Seq(config.model, vocab["src_size"], vocab["tgt_size"])
    torch.manual_seed(config.train.seed)
    reference = Seq2Seq(config.model, vocab["src_size"], vocab["tgt_size"])
    pipeline = pipeline_steps(config, model)
    pipeline.ready()
    engine = pipeline.engine
    if os.environ.get("POSTED_ON_THE_WORLD_GROUP"):  # the negative case of the NCCL-rules check
        engine.messages.__class__ = PostedOnTheWorldGroup
    replica = engine.grid.data_parallel_id
    pipeline_batches = iter(BatchLoader(config.data.out_dir, "train", config.train.batch_size, seed=config.train.seed,
                                        replica=replica, replicas=config.parallel.data))
    reference_batches = iter(BatchLoader(config.data.out_dir, "train", config.train.batch_size, seed=config.train.seed))
    optimizer = build_optimizer(reference.parameters(), config.optim)
    losses, reference_losses, norms, reference_norms, shapes, splits, syncs, where = [], [], [], [], [], [], [], []
    micro = config.parallel.micro_batches
    counter = SyncCounter(device=[*model.parameters()])
    for step in range(1, steps + 1):
        batch = next(pipeline_batches)
        shapes.append([[part.src.shape[1], part.tgt_in.shape[1]] for part in batch.split(micro)])
        counter.calls.clear()
        counter.where.clear()
        with counter:  # every step, so that what the engine allocates in the first is known
            loss = step_engine(engine, config, batch, step)
        if step > 1:
            syncs.append(dict(counter.calls))
            where.append({f"{k[0]} @ {k[1]}": v for k, v in counter.where.items()})
        losses.append(float(loss))
        if config.parallel.schedule == "wavefront":
            boundaries = range(config.parallel.chunk_steps, batch.src.shape[1], config.parallel.chunk_steps)
            lengths = batch.src_lengths.tolist()
            splits.append(any(min(lengths) < b < max(lengths) for b in boundaries))
        norms.append(float(engine.last_grad_norm))
        batch = next(reference_batches)
        optimizer.zero_grad()
        nll, _ = reference(batch, step_dropout(config.model.dropout, batch.lines, seed=config.train.seed, step=step,
                                               device=torch.device("cpu")))
        (nll / batch.step_sentences).backward()
        reference_norms.append(float(clip_gradients(list(reference.parameters()), config.optim.max_grad_norm)))
        optimizer.step()
        reference_losses.append(float(nll.detach()) / batch.step_sentences)
    expected = dict(reference.named_parameters())
    local = model.names_of(engine.module.parameters())
    difference = max(float((p.detach().cpu() - expected[name]).abs().max())
                     for name, p in zip(local, engine.module.parameters()))
    rank = int(os.environ["RANK"])
    from dist_s2s.parallel.stage_checkpoint import stage_state
    from dist_s2s.train.checkpoint import write_part

    part = None
    if replica == 0:
        part = write_part(out_dir / "pipeline.pt", f"stage-{engine.stage_id}", stage_state(engine, model),
                          optimizer_state(engine.optimizer, model))
    if rank == 0:
        torch.save(reference.unsharded_state_dict(), out_dir / "reference.pt")
        torch.save(unsharded(optimizer_state(optimizer, reference)), out_dir / "reference-optimizer.pt")
    (out_dir / f"rank-{rank}.json").write_text(json.dumps({
        "stage": engine.stage_id, "local": local, "part": part, "max_difference": difference,
        "micro_batch_shapes": shapes, "losses": losses, "reference_losses": reference_losses, "norms": norms,
        "reference_norms": reference_norms, "chunk_boundary_inside_some_past_others": splits,
        "device": str(engine.device), "backend": torch.distributed.get_backend(), "syncs": syncs, "where": where,
        "group_timeouts": group_timeouts(), "timeout_s": config.parallel.timeout_s,
    }))
    more_messages(engine, config, next(pipeline_batches))
    pipeline.close()  # leave together, as a finished run does


def group_timeouts() -> list[float]:
    """The seconds each process group of this rank waits before failing, one entry per group and backend."""
    from torch.distributed import distributed_c10d

    return [group._get_backend(device).options._timeout.total_seconds()
            for group in distributed_c10d._world.pg_map for device in group._device_types]


def more_messages(engine, config, batch) -> None:
    """After the compared steps, what the rest of a run sends: an evaluation pass and, for the wavefront,
    a training and an evaluation step at one time step a chunk and at one chunk a side (every sentence
    shorter than it), so that the logged communication (DIST_S2S_COMM_LOG) covers them too."""
    from dist_s2s.parallel.one_f_one_b import evaluation_scale, micro_batches

    replicas = config.parallel.data
    if config.parallel.schedule != "wavefront":
        parts = config.parallel.micro_batches
        engine.eval_batch(micro_batches(batch, parts, evaluation_scale(parts, replicas)), num_micro_batches=parts)
        return
    for chunk_steps in (config.parallel.chunk_steps, 1, 10**6):
        engine.chunk_steps = chunk_steps
        if chunk_steps != config.parallel.chunk_steps:
            engine.train_wavefront(batch, scale=replicas / batch.step_sentences, step=100)
        engine.eval_wavefront(batch)


class PostedOnTheWorldGroup(StageMessages):
    """The wavefront's messaging before it was made NCCL-safe: every receive of a step posted first, on the
    default group, paired with its send by tag (gloo honours tags; NCCL ignores them)."""

    def post_receives(self, program, shape_of) -> None:
        order = [m for op in program for m in op.sends]
        self.tags = {message: index for index, message in enumerate(order)}
        for message in order:
            if message.dst == self.stage and message.src != self.stage:
                buffer = torch.empty(shape_of(message), dtype=torch.float32, device=self.device)
                self.posted[message] = (buffer, torch.distributed.irecv(buffer, src=self.rank_of(message.src),
                                                                        tag=self.tags[message]))

    def send(self, message, tensor) -> None:
        if message.dst == self.stage:
            self.local[message] = tensor.detach()
            return
        tensor = tensor.detach().contiguous()
        self.sent.append((tensor, torch.distributed.isend(tensor, dst=self.rank_of(message.dst),
                                                          tag=self.tags[message])))


if __name__ == "__main__":
    collect_less_often()  # as a dist-s2s process runs
    main()
    leave_without_collecting()
