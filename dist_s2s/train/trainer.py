"""The training loop: the paper's schedule (§3.4), whatever runs the steps.

    dist-s2s train --config configs/multi30k.yaml
    dist-s2s train --config configs/tiny.yaml --train.max_steps=20 --train.resume=true
    torchrun --nproc_per_node 2 -m dist_s2s train --config configs/tiny.yaml --parallel.stages=2

The loop is the same either way: batches of `train.batch_size` similar-length sentences, the
learning rate by epoch, a log line every `log_every` steps, validation perplexity, checkpoints
with the data cursor. What a step does comes from the `Steps` its caller hands in (`train/step.py`
defines the contract): `SingleDeviceSteps` by default, `parallel.schedules.pipeline_steps`
when the `train` command runs as a pipeline rank. This file imports nothing of `parallel/`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from dist_s2s.config import Config
from dist_s2s.data.feed import BatchFeed
from dist_s2s.data.loader import BatchLoader
from dist_s2s.data.manifest import MANIFEST, Manifest, current_manifest
from dist_s2s.data.shards import write_atomically
from dist_s2s.errors import Terminated, UserError
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.progress import Progress
from dist_s2s.train.best import BestSoFar
from dist_s2s.train.checkpoint import (
    CheckpointDir,
    check_compatible,
    load_checkpoint,
    load_weights,
    model_compatibility,
    read_model,
)
from dist_s2s.train.plots import loss_curve
from dist_s2s.train.schedule import learning_rate
from dist_s2s.train.step import StepResult, Steps, StepsFactory, single_device_steps
from dist_s2s.train.tracking import QuietTracker, Tracker

log = logging.getLogger(__name__)


def ensure_prepared(config: Config) -> Manifest:
    """The manifest of this data config, running `prepare` first when it is missing or stale.

    Ray is imported only when preparing is needed."""
    manifest = current_manifest(config.data)
    if manifest is None:
        log.info("train: %s holds no data prepared with this data config; running prepare", config.data.out_dir)
        from dist_s2s.data.prepare import prepare

        manifest = prepare(config)
    return manifest


def prepared_manifest(config: Config) -> Manifest:
    """The manifest, which pipeline ranks need ready: N processes must not prepare the data at once."""
    manifest = current_manifest(config.data)
    if manifest is None:
        raise UserError(f"{config.data.out_dir} holds no data prepared with this data config; run `dist-s2s prepare` "
                        f"with the same --config first (pipeline ranks do not prepare data)")
    return manifest


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; the launcher may send more
    raise Terminated("stopped by SIGTERM")  # the loop turns it into the line that says how to resume


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    steps: int = 0
    sentences: int = 0
    nll: float | torch.Tensor = 0.0
    target_tokens: int = 0
    words: int = 0
    grad_norm: float | torch.Tensor = 0.0
    started: float = 0.0

    def add(self, result: StepResult) -> None:
        self.steps += 1
        self.sentences += result.sentences
        self.nll += result.nll
        self.target_tokens += result.target_tokens
        self.words += result.words
        self.grad_norm += result.grad_norm


@dataclass
class Run:
    """What a training run holds from its set-up through its loop to its end."""

    config: Config
    manifest: Manifest
    steps: Steps
    loader: BatchLoader
    valid: BatchLoader
    checkpoints: CheckpointDir
    tracker: Tracker | QuietTracker
    feed: BatchFeed
    step: int
    total_steps: int
    best: BestSoFar | None
    """The best checkpoint so far (train.keep_best, train.early_stop_patience), kept by the main process."""
    score_bleu: Callable[[Path], float] | None

    @property
    def run_dir(self) -> Path:
        return Path(self.config.train.run_dir)


def train(config: Config, make_steps: StepsFactory = single_device_steps, *,
          prepare_missing: bool = True, attempt: int = 0,
          score_bleu: Callable[[Path], float] | None = None) -> dict[str, Any] | None:
    """Train to train.max_steps or optim.epochs, or until early stopping; a summary of the run (None on
    pipeline ranks but rank 0).

    `make_steps(config, model)` builds what runs the model, after the model has its initial or
    resumed weights; `prepare_missing` runs `prepare` when the data is missing (one process only);
    `attempt` > 0: a launcher restarted this job (torchrun's TORCHELASTIC_RESTART_COUNT), which then
    resumes from its latest checkpoint as with train.resume; `score_bleu(checkpoint)`: the validation
    BLEU of a checkpoint file, which train.best_metric=bleu needs on the main process (decoding lives
    above this package: the CLI hands it in)."""
    if attempt > 0:
        config = replace(config, train=replace(config.train, resume=True))
    run = _set_up(config, make_steps, prepare_missing, score_bleu)
    if attempt > 0:
        _report_restart(run, attempt)
    summary: dict[str, Any] = {}
    status = "FAILED"
    previous_handler = _on_sigterm(_raise_terminated)
    try:
        _loop(run, summary)
        status = "FINISHED"
    except Terminated:
        raise UserError(f"rank {os.environ.get('RANK', 0)} stopped by SIGTERM at step {run.step + 1} (a launcher ends "
                        f"every rank when one dies; see the other ranks' logs). Resume with --train.resume=true "
                        f"(latest checkpoint: {run.checkpoints.latest()})") from None
    except RuntimeError as error:
        if run.steps.lost_contact(error):
            raise lost_contact_error(error, f"at step {run.step + 1}", f"a rank died or hung for parallel.timeout_s="
                                     f"{config.parallel.timeout_s}; see its log. Resume with --train.resume=true "
                                     f"(latest checkpoint: {run.checkpoints.latest()})") from None
        raise
    finally:
        # The launcher's SIGTERM often follows a peer's death within milliseconds: let it not cut the
        # closing work (tracking, the error line) short; the launcher kills for good 30 s later.
        _on_sigterm(signal.SIG_IGN)
        try:
            _finish(run, status)
        finally:
            _on_sigterm(previous_handler)
    if not run.steps.is_main:
        return None
    best = run.checkpoints.best()
    return {**summary, "step": run.step, "checkpoint": str(run.checkpoints.latest()),
            **({"best_checkpoint": str(best)} if best else {}),
            "mlflow_run_id": run.tracker.run_id, "tracking_uri": run.tracker.uri}


def _set_up(config: Config, make_steps: StepsFactory, prepare_missing: bool,
            score_bleu: Callable[[Path], float] | None = None) -> Run:
    """The model with its initial or resumed weights, its steps, the data, tracking and the inputs logged."""
    run_dir = Path(config.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = ensure_prepared(config) if prepare_missing else prepared_manifest(config)
    torch.manual_seed(config.train.seed)
    model = Seq2Seq(config.model, manifest.vocab.src_size, manifest.vocab.tgt_size)
    checkpoints = CheckpointDir(run_dir / "checkpoints", keep=config.train.keep_checkpoints,
                                keep_best=config.train.keep_best)
    resumed = _resume(config, checkpoints, model, manifest)  # weights go in before a pipeline takes the model

    steps = make_steps(config, model)
    loader = BatchLoader(config.data.out_dir, config.data.train_split, config.train.batch_size, seed=config.train.seed,
                         replica=steps.replica, replicas=config.parallel.data)
    valid = BatchLoader(config.data.out_dir, config.train.valid_split, config.train.batch_size, shuffle=False,
                        replica=steps.replica, replicas=config.parallel.data)
    step = 0
    if resumed is not None:
        steps.load_optimizer_state(resumed["optimizer"], checkpoints.latest())
        loader.load_state_dict(resumed["loader"])
        torch.set_rng_state(resumed["rng"]["torch"])
        restore_cuda_rng(resumed["rng"].get("cuda") or [])
        step = resumed["step"]
        log.info("train: resumed at step %d, epoch %.3f", step, loader.epoch_progress)

    tracker = Tracker(config, run_dir, run_name=run_dir.name) if steps.is_main else QuietTracker()
    if steps.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if step == 0:
        for path in (run_dir / "config.yaml", Path(config.data.out_dir) / MANIFEST,
                     *(Path(config.data.out_dir) / name for name in manifest.vocab.files())):
            tracker.log_artifact(path, "inputs")

    _wait_for_every_process(config, steps, tracker)
    per_epoch = loader.batches_per_epoch()
    total_steps = config.train.max_steps or math.ceil(config.optim.epochs * per_epoch)
    log.info("train: %s parameters, %d batches/epoch, %d steps (%.2f epochs), from step %d",
             f"{sum(p.numel() for p in model.parameters()):,}", per_epoch, total_steps, total_steps / per_epoch, step)
    feed = BatchFeed(loader, steps.device if steps.device.type == "cuda" else None)
    best = None
    if config.train.keep_best or config.train.early_stop_patience:
        if config.train.best_metric == "bleu" and steps.is_main and score_bleu is None:
            raise UserError("train.best_metric=bleu decodes the validation split at every checkpoint: run it through "
                            "`dist-s2s train`, or pass train(..., score_bleu=...)")
        # the evaluations of the checkpoints up to the resumed one: ranks and patience as if never interrupted
        best = BestSoFar.replay(config.train.best_metric, [e for e in checkpoints.evaluations() if e["step"] <= step])
    return Run(config, manifest, steps, loader, valid, checkpoints, tracker, feed, step, total_steps, best,
               score_bleu)


def _wait_for_every_process(config: Config, steps: Steps, tracker: Tracker | QuietTracker) -> None:
    """Every process set up (`Steps.ready`): from here parallel.timeout_s bounds the waits."""
    try:
        steps.ready()
    except RuntimeError as error:
        tracker.finish("FAILED")
        steps.close(finished=False)
        if steps.lost_contact(error):
            raise lost_contact_error(error, "before the first step", f"a rank died, or took longer than "
                                     f"parallel.start_timeout_s={config.parallel.start_timeout_s} to set up; see "
                                     f"its log") from None
        raise


def lost_contact_error(error: RuntimeError, when: str, what_now: str) -> UserError:
    """The one line of a rank that lost another: which rank, when, what the communication library said."""
    return UserError(f"rank {os.environ.get('RANK')} lost contact with another rank {when} "
                     f"({str(error).splitlines()[0][:300]}): {what_now}")


def _loop(run: Run, summary: dict[str, Any]) -> None:
    """Steps to run.total_steps: a log line every train.log_every, validation every valid_every, a checkpoint
    every checkpoint_every (and each at the last step)."""
    config, steps, train_config = run.config, run.steps, run.config.train
    window = Window(started=time.perf_counter())
    with Progress("training", run.total_steps, unit="steps", done=run.step, show=steps.is_main,
                  log_lines=False) as bar:
        while run.step < run.total_steps:
            fed = next(run.feed)
            lr = learning_rate(config.optim, fed.epoch_before)
            run.step += 1
            step, last = run.step, run.step == run.total_steps
            window.add(steps.train_step(fed.batch, lr, step))
            if steps.is_main:
                _note_step(run.run_dir, step)
            bar.advance()
            if step % train_config.log_every == 0 or last:
                summary.update(_log_window(window, step, epochs=fed.epoch_after, lr=lr, tracker=run.tracker))
                window = Window(started=time.perf_counter())
            checkpoint_now = step % train_config.checkpoint_every == 0 or last
            if step % train_config.valid_every == 0 or last or (checkpoint_now and run.best is not None):
                validation_started = time.perf_counter()
                nll_sum, tokens = steps.validation_nll(run.valid)
                summary["valid/ppl"] = math.exp(nll_sum / tokens)
                run.tracker.log_metrics({"valid/ppl": summary["valid/ppl"]}, step)
                log.info("step %d | valid ppl %.2f", step, summary["valid/ppl"])
                window.started += time.perf_counter() - validation_started  # not training time
            if checkpoint_now:
                started = time.perf_counter()
                weights = steps.checkpoint_state(run.checkpoints, step)
                if steps.is_main:
                    evaluate = None
                    if run.best is not None:
                        def evaluate(path, step=step):
                            return _score_checkpoint(run, path, step, ppl=summary["valid/ppl"])
                    _save(run.checkpoints, step, weights, cursor=fed.cursor, config=config, manifest=run.manifest,
                          run_id=run.tracker.run_id, evaluate=evaluate)
                window.started += time.perf_counter() - started
                if train_config.early_stop_patience and not last and _stop_early(run):
                    if window.steps:
                        summary.update(_log_window(window, step, epochs=fed.epoch_after, lr=lr, tracker=run.tracker))
                    summary["stopped_early"] = True
                    break


def _score_checkpoint(run: Run, path: Path, step: int, *, ppl: float) -> dict[str, Any]:
    """The just-written checkpoint's validation score (the step's perplexity, or its BLEU decoded from the
    file), counted towards the best so far; what the index records."""
    metric = run.config.train.best_metric
    value = ppl if metric == "ppl" else run.score_bleu(path)
    improved = run.best.observe(step, value)
    run.tracker.log_metrics({f"valid/{metric}": value, f"valid/best_{metric}": run.best.value}, step)
    log.info("step %d | valid %s %.2f: %s", step, metric, value, "the best so far" if improved else
             f"the best is still {run.best.value:.2f} (step {run.best.step})")
    return {"metric": metric, "value": value, "best": improved}


def _stop_early(run: Run) -> bool:
    """Whether train.early_stop_patience checkpoints in a row have not improved (decided by the main process,
    agreed by every process, so that a pipeline's ranks stop at the same step)."""
    patience = run.config.train.early_stop_patience
    stop = run.steps.is_main and run.best.since >= patience
    if not run.steps.agree(stop):
        return False
    if run.steps.is_main:
        log.info("train: early stop at step %d: valid %s has not improved on %.2f (step %d) for %d checkpoints "
                 "(train.early_stop_patience=%d)", run.step, run.best.metric, run.best.value, run.best.step,
                 run.best.since, patience)
        run.tracker.set_tags({"stopped_early": f"step {run.step}"})
    return True


PROGRESS_FILE = "last_step"
"""The last step rank 0 finished, written after each: what a restarted attempt repeats is counted from it."""


def _note_step(run_dir: Path, step: int) -> None:
    """Through a rename: a process killed while writing leaves the previous note whole, never an empty one."""
    write_atomically(run_dir / PROGRESS_FILE, f"{step}\n".encode(), durable=False)


def _report_restart(run: Run, attempt: int) -> None:
    """One line (and an MLflow tag and metric) for a restarted attempt: where it resumed, what it repeats."""
    noted = run.run_dir / PROGRESS_FILE
    reached = int(noted.read_text()) if noted.is_file() else run.step
    repeated = max(0, reached - run.step)
    checkpoint = run.checkpoints.latest()
    if not run.steps.is_main:
        return
    log.warning("train: restart %d (torchrun restarted the job's workers): resumed from %s at step %d; the "
                "failed attempt had finished step %d, so %d steps run again (at most train.checkpoint_every=%d); "
                "the data cursor and RNG come from the checkpoint, so no example is skipped or counted twice",
                attempt, checkpoint.name if checkpoint else "no checkpoint (from the start)", run.step, reached,
                repeated, run.config.train.checkpoint_every)
    run.tracker.set_tags({"restarts": str(attempt)})
    run.tracker.log_metrics({"train/restart": attempt, "train/steps_repeated": repeated}, run.step)


def _finish(run: Run, status: str) -> None:
    """The loss curve and the last checkpoint to tracking, the run's status, the steps and the feed closed."""
    metrics_file = run.run_dir / "metrics.jsonl"
    if run.steps.is_main and metrics_file.is_file() and metrics_file.stat().st_size:
        run.tracker.log_artifact(loss_curve(metrics_file, run.run_dir / "loss_curve.png"), "plots")
    if status == "FINISHED" and run.step > 0 and run.checkpoints.latest():
        run.tracker.log_artifact(run.checkpoints.latest(), "checkpoints")
    run.tracker.finish(status)
    run.steps.close(finished=status == "FINISHED")
    run.feed.close()


def restore_cuda_rng(states: list[torch.Tensor]) -> None:
    """The saved generator state of each GPU this host has; a checkpoint from a host with more GPUs
    (or none) restores what fits instead of failing with an IndexError."""
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(states[:present]):
        torch.cuda.set_rng_state(state, index)
    if len(states) != present and (states or present):
        log.info("train: the checkpoint holds the RNG state of %d GPUs, this host has %d: restored %d",
                 len(states), present, min(len(states), present))


def _on_sigterm(handler):
    """Install a SIGTERM handler and return the previous one (a no-op outside the main thread)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _log_window(window: Window, step: int, *, epochs: float, lr: float, tracker) -> dict[str, float]:
    nll, grad_norm = float(window.nll), float(window.grad_norm)  # the window's only reads of device values
    elapsed = max(time.perf_counter() - window.started, 1e-9)
    metrics = {
        "train/loss": nll / window.sentences,
        "train/ppl": math.exp(nll / window.target_tokens),
        "train/lr": lr,
        "train/grad_norm": grad_norm / window.steps,
        "train/words_per_sec": window.words / elapsed,
        "train/epoch": epochs,
    }
    tracker.log_metrics(metrics, step)
    log.info("step %d | epoch %.2f | loss %.3f | ppl %.2f | lr %.4g | grad norm %.2f | words/s %.0f",
             step, epochs, metrics["train/loss"], metrics["train/ppl"], lr, metrics["train/grad_norm"],
             metrics["train/words_per_sec"])
    return metrics


def _resume(config: Config, checkpoints: CheckpointDir, model: Seq2Seq, manifest: Manifest) -> dict[str, Any] | None:
    """Load the latest checkpoint's weights into `model` when resuming; its state (step, cursor, RNG, the
    optimizer's state under the unsharded names, for the steps once built)."""
    latest = checkpoints.latest()
    if latest is None:
        if config.train.resume:
            log.info("train: resume requested but %s has no checkpoint; starting fresh", checkpoints.directory)
        return None
    if not config.train.resume:
        raise UserError(f"{config.train.run_dir} already has checkpoints (latest {latest.name}): "
                        f"pass --train.resume=true to continue, or choose another --train.run_dir")
    for name in checkpoints.discard_partial():
        log.warning("train: removed %s, a checkpoint write that an earlier run did not finish", name)
    state = load_checkpoint(latest, checkpoints.expected_sha256(latest))
    check_compatible(latest, state["compat"], model_compatibility(config.model, manifest))
    weights, state["optimizer"] = read_model(latest, state)
    load_weights(model, latest, weights)
    log.info("train: resuming from %s", latest)
    return state


def _save(checkpoints: CheckpointDir, step: int, weights: dict[str, Any], *, cursor: dict[str, Any], config: Config,
          manifest: Manifest, run_id: str | None, evaluate: Callable[[Path], dict[str, Any]] | None = None) -> Path:
    return checkpoints.save(step, {
        **weights,
        "loader": cursor,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "compat": model_compatibility(config.model, manifest),
        "config": config.to_dict(),
        "mlflow_run_id": run_id,
    }, evaluate=evaluate)
