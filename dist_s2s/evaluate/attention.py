"""Pictures of where the attention looked: one heat map a sentence, as alignment figures are drawn.

For each of the first `eval.attention_plots` sentences, the first model of the ensemble is run teacher-forced
on the source and the translation it produced (attention has no input feeding, so these are the weights
its decoder used), and the [output position × source position] weights are drawn with the source pieces in
reading order on one axis and the output pieces, </s> last, on the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dist_s2s.data.vocab import BOS_ID  # noqa: E402
from dist_s2s.decode.translator import Translation, Translator  # noqa: E402
from dist_s2s.device import to_device
from dist_s2s.train.tracking import RUN_ID_FILE, Tracker  # noqa: E402

log = logging.getLogger(__name__)


def track_attention_plots(config, translator: Translator, sources: list[list[int]],
                          translations: list[Translation]) -> list[Path]:
    """`translate`'s pictures: under train.run_dir/translate-attention, and an MLflow run of their own there."""
    out_dir = Path(config.train.run_dir) / "translate-attention"
    (out_dir / RUN_ID_FILE).unlink(missing_ok=True)  # every translation is its own MLflow run
    paths = attention_plots(translator, sources, translations, count=config.eval.attention_plots, out_dir=out_dir)
    tracker = Tracker(config, out_dir, run_name="translate attention", store_dir=Path(config.train.run_dir))
    for path in paths:
        tracker.log_artifact(path, "attention")
    tracker.finish()
    log.info("translate: the attention of %d sentences drawn into %s and MLflow run %s", len(paths), out_dir,
             tracker.run_id)
    return paths


def attention_plots(translator: Translator, sources: list[list[int]], translations: list[Translation], *,
                    count: int, out_dir: Path) -> list[Path]:
    """PNG files of the first `count` non-empty sentences' attention, written under `out_dir`."""
    model = translator.ensemble.models[0]
    if model.attention is None or count <= 0:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (ids, translation) in enumerate(zip(sources, translations)):
        if len(paths) == count:
            break
        if not ids:
            continue
        weights = attention_weights(translator, ids, translation.ids)
        source = translator.src_codec.pieces(ids)
        if translator.prepared.reverse_source:  # the model read it reversed: draw it in reading order
            source, weights = source[::-1], weights.flip(-1)
        target = [*translator.tgt_codec.pieces(translation.ids), "</s>"]
        paths.append(_draw(weights, source, target, out_dir / f"attention-{index:04d}.png"))
    return paths


@torch.no_grad()
def attention_weights(translator: Translator, src_ids: list[int], tgt_ids: list[int]) -> torch.Tensor:
    """[output position (</s> last) × source position] weights of the ensemble's first model, teacher-forced on
    `tgt_ids`: the weights its decoder used to produce them."""
    device = translator.device
    src = to_device(torch.tensor([src_ids]), device)
    tgt_in = to_device(torch.tensor([[BOS_ID, *tgt_ids]]), device)
    return translator.ensemble.models[0].attention_weights(src, torch.tensor([len(src_ids)]), tgt_in)[0].float().cpu()


def _draw(weights: torch.Tensor, source: list[str], target: list[str], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(0.35 * len(source) + 2, 0.35 * len(target) + 1.5))
    axes.imshow(weights.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(source)), source, rotation=90, fontsize=8)
    axes.set_yticks(range(len(target)), target, fontsize=8)
    axes.set_xlabel("source")
    axes.set_ylabel("output")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
