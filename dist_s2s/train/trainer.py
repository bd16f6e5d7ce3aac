"""`dist-s2s train` on one device: the paper's recipe (§3.4), the reference the pipeline must match.

    dist-s2s train --config configs/multi30k.yaml
    dist-s2s train --config configs/tiny.yaml --train.max_steps=20 --train.resume=true

One step: batch of `train.batch_size` similar-length sentences → summed NLL / sentences →
backward → rescale the gradient to norm 5 when larger → plain SGD at the scheduled rate.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from dist_s2s.config import Config
from dist_s2s.data.loader import BatchLoader
from dist_s2s.data.manifest import MANIFEST, data_config_hash, load_manifest
from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.checkpoint import CheckpointDir, check_compatible, load_checkpoint
from dist_s2s.train.clipping import clip_gradients
from dist_s2s.train.plots import loss_curve
from dist_s2s.train.schedule import learning_rate
from dist_s2s.train.tracking import Tracker

log = logging.getLogger(__name__)


def ensure_prepared(config: Config) -> dict[str, Any]:
    """The manifest of this data config, running `prepare` first when it is missing or stale.

    Ray is imported only when preparing is needed."""
    path = Path(config.data.out_dir) / MANIFEST
    if path.is_file():
        manifest = load_manifest(Path(config.data.out_dir))
        if manifest["config_hash"] == data_config_hash(config.data):
            return manifest
        log.info("train: %s was prepared with another data config; preparing again", config.data.out_dir)
    else:
        log.info("train: no prepared data in %s; running prepare", config.data.out_dir)
    from dist_s2s.data.prepare import prepare

    return prepare(config)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def compatibility(config: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must share with the config to be loaded into its model."""
    return {
        "vocab.src_size": manifest["vocab"]["src_size"], "vocab.tgt_size": manifest["vocab"]["tgt_size"],
        "model.embedding_dim": config.model.embedding_dim, "model.hidden_size": config.model.hidden_size,
        "model.num_layers": config.model.num_layers,
        "vocab.src_sha256": manifest["vocab"]["src_sha256"], "vocab.tgt_sha256": manifest["vocab"]["tgt_sha256"],
    }


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    steps: int = 0
    sentences: int = 0
    nll: float = 0.0
    target_tokens: int = 0
    words: int = 0
    grad_norm: float = 0.0
    started: float = 0.0


def validation_nll(model: Seq2Seq, loader: BatchLoader, device: torch.device) -> tuple[float, int]:
    """Summed NLL and target tokens (</s> included) over a whole split."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            nll, count = model(batch.to(device))
            total += float(nll)
            tokens += int(count)
    model.train()
    return total, tokens


def train(config: Config) -> dict[str, Any]:
    """Train to train.max_steps or optim.epochs; returns a summary of the run."""
    run_dir = Path(config.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = ensure_prepared(config)
    device = pick_device(config.train.device)
    torch.manual_seed(config.train.seed)
    model = Seq2Seq(config.model, manifest["vocab"]["src_size"], manifest["vocab"]["tgt_size"]).to(device)
    parameters = list(model.parameters())
    optimizer = torch.optim.SGD(parameters, lr=config.optim.lr, momentum=0.0)
    loader = BatchLoader(config.data.out_dir, config.data.train_split, config.train.batch_size, seed=config.train.seed)
    valid = BatchLoader(config.data.out_dir, config.train.valid_split, config.train.batch_size, shuffle=False)
    checkpoints = CheckpointDir(run_dir / "checkpoints", keep=config.train.keep_checkpoints)
    step = _resume(config, checkpoints, model, optimizer, loader, manifest)

    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tracker = Tracker(config, run_dir, run_name=run_dir.name)
    if step == 0:
        for path in (run_dir / "config.yaml", Path(config.data.out_dir) / MANIFEST,
                     Path(config.data.out_dir) / manifest["vocab"]["src_file"],
                     Path(config.data.out_dir) / manifest["vocab"]["tgt_file"]):
            tracker.log_artifact(path, "inputs")

    per_epoch = loader.batches_per_epoch()
    total_steps = config.train.max_steps or math.ceil(config.optim.epochs * per_epoch)
    parameter_count = sum(p.numel() for p in parameters)
    log.info("train: %s parameters on %s, %d batches/epoch, %d steps (%.2f epochs), from step %d",
             f"{parameter_count:,}", device, per_epoch, total_steps, total_steps / per_epoch, step)

    window = Window(started=time.perf_counter())
    batches = iter(loader)
    summary: dict[str, Any] = {}
    status = "FAILED"
    try:
        with _progress(total_steps, step) as advance:
            while step < total_steps:
                epochs_done = loader.epoch_progress
                try:
                    batch = next(batches).to(device)
                except StopIteration:
                    batches = iter(loader)
                    continue
                lr = learning_rate(config.optim, epochs_done)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                nll, target_tokens = model(batch)
                (nll / batch.step_sentences).backward()  # §3.4: the gradient divided by the batch size
                grad_norm = clip_gradients(parameters, config.optim.max_grad_norm)
                optimizer.step()
                step += 1
                advance()

                window.steps += 1
                window.sentences += len(batch)
                window.nll += float(nll.detach())
                window.target_tokens += int(target_tokens)
                window.words += batch.words
                window.grad_norm += grad_norm
                if step % config.train.log_every == 0 or step == total_steps:
                    summary.update(_log_window(window, step, loader.epoch_progress, lr, tracker))
                    window = Window(started=time.perf_counter())
                if step % config.train.valid_every == 0 or step == total_steps:
                    validation_started = time.perf_counter()
                    nll_sum, tokens = validation_nll(model, valid, device)
                    summary["valid/ppl"] = math.exp(nll_sum / tokens)
                    tracker.log_metrics({"valid/ppl": summary["valid/ppl"]}, step)
                    log.info("step %d | valid ppl %.2f", step, summary["valid/ppl"])
                    window.started += time.perf_counter() - validation_started  # not training time
                if step % config.train.checkpoint_every == 0 or step == total_steps:
                    _save(checkpoints, step, model, optimizer, loader, config, manifest, tracker.run_id)
        status = "FINISHED"
    finally:
        if (run_dir / "metrics.jsonl").stat().st_size:
            tracker.log_artifact(loss_curve(run_dir / "metrics.jsonl", run_dir / "loss_curve.png"), "plots")
        if status == "FINISHED" and step > 0 and checkpoints.latest():
            tracker.log_artifact(checkpoints.latest(), "checkpoints")
        tracker.finish(status)
    summary.update({"step": step, "checkpoint": str(checkpoints.latest()), "mlflow_run_id": tracker.run_id,
                    "tracking_uri": tracker.uri})
    return summary


def _log_window(window: Window, step: int, epochs: float, lr: float, tracker: Tracker) -> dict[str, float]:
    elapsed = max(time.perf_counter() - window.started, 1e-9)
    metrics = {
        "train/loss": window.nll / window.sentences,
        "train/ppl": math.exp(window.nll / window.target_tokens),
        "train/lr": lr,
        "train/grad_norm": window.grad_norm / window.steps,
        "train/words_per_sec": window.words / elapsed,
        "train/epoch": epochs,
    }
    tracker.log_metrics(metrics, step)
    log.info("step %d | epoch %.2f | loss %.3f | ppl %.2f | lr %.4g | grad norm %.2f | words/s %.0f",
             step, epochs, metrics["train/loss"], metrics["train/ppl"], lr, metrics["train/grad_norm"],
             metrics["train/words_per_sec"])
    return metrics


def _resume(config: Config, checkpoints: CheckpointDir, model: Seq2Seq, optimizer, loader: BatchLoader,
            manifest: dict[str, Any]) -> int:
    """Restore the latest checkpoint when resuming; the step to continue from."""
    latest = checkpoints.latest()
    if latest is None:
        if config.train.resume:
            log.info("train: resume requested but %s has no checkpoint; starting fresh", checkpoints.directory)
        return 0
    if not config.train.resume:
        raise UserError(f"{config.train.run_dir} already has checkpoints (latest {latest.name}): "
                        f"pass --train.resume=true to continue, or choose another --train.run_dir")
    state = load_checkpoint(latest, checkpoints.expected_sha256(latest))
    check_compatible(latest, state["compat"], compatibility(config, manifest))
    model.load_unsharded_state_dict(state["model"])
    if state["optimizer"]["state"]:  # plain SGD keeps no state; its rate comes from the schedule
        optimizer.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    log.info("train: resumed from %s (step %d, epoch %.3f)", latest, state["step"], loader.epoch_progress)
    return state["step"]


def _save(checkpoints: CheckpointDir, step: int, model: Seq2Seq, optimizer, loader: BatchLoader, config: Config,
          manifest: dict[str, Any], run_id: str | None) -> Path:
    return checkpoints.save(step, {
        "model": model.unsharded_state_dict(),
        "optimizer": optimizer.state_dict(),
        "loader": loader.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "compat": compatibility(config, manifest),
        "config": config.to_dict(),
        "mlflow_run_id": run_id,
    })


class _progress:
    """A progress bar on a terminal; nothing when output is a file or a pipe."""

    def __init__(self, total: int, done: int):
        self.total, self.done = total, done
        self.bar = None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(transient=True, console=Console(stderr=True), redirect_stderr=True)
            self.bar.start()
            self.task = self.bar.add_task("training", total=self.total, completed=self.done)
        return self.advance

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
