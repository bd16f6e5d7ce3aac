"""Every command after training, run on a CPU as a GPU would run it (`sync_counter.py`): the model's weights are
the device's, a tensor handed to the wrong side raises as CUDA would, and the waits for the device stay within
each command's budget.

- `rescore` and `evaluate`'s perplexity (teacher-forced log-probabilities): one read of the device a batch, the
  batch's scores; the lengths stay on the host (moved to the device, they reached the model's masks there: on a
  GPU a CPU `arange` met CUDA lengths, and a CUDA tensor was pinned);
- `translate` and `evaluate`'s translations (the beam search): one flag a decoder step and its results once;
- `evaluate`'s sentence vectors: one read a phrase;
- nothing moved to the device from pageable memory (the host would wait for the copy): no blocking copy at all.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import small_model
from sync_counter import BEAM_RESULT_READS, BEAM_STEP_BUDGET, DeviceMismatch, SyncCounter

from dist_s2s.data.vocab import BOS_ID, EOS_ID
from dist_s2s.decode import beam
from dist_s2s.decode.rescore import pair_log_probs
from dist_s2s.decode.translator import Translator
from dist_s2s.evaluate import analysis

PAIRS = [([5, 6, 7, 8, 9, 10], [4, 5, 6]), ([7, 8], [6, 7, 8, 9]), ([9, 11, 12], [5]), ([13], [6, 6])]


def on_the_device(*models) -> SyncCounter:
    return SyncCounter(device=[p for model in models for p in model.parameters()])


def stand_in(model) -> SimpleNamespace:
    """What the scoring functions use of a `Translator`: its ensemble and device."""
    return SimpleNamespace(ensemble=beam.Ensemble([model]), device=torch.device("cpu"))


@pytest.mark.parametrize("attention", ["none", "luong"])
def test_rescoring_reads_the_device_once_a_batch_and_keeps_the_lengths_on_the_host(attention):
    model = small_model(attention=attention).float().eval()
    with on_the_device(model) as counter:
        scores = pair_log_probs(stand_in(model), PAIRS, batch_size=2)
    assert len(scores) == len(PAIRS) and all(score < 0 for score in scores)
    assert dict(counter.calls) == {"tolist": 2}, dict(counter.where)  # 2 batches


def test_the_counter_raises_where_cuda_raises():
    weight, lengths = torch.randn(3), torch.tensor([3, 1, 2])
    with SyncCounter(device=[weight]) as counter:
        on_device = weight * 2
        with pytest.raises(DeviceMismatch, match="Expected all tensors to be on the same device"):
            torch.lt(torch.arange(3)[None, :], on_device[:, None])  # a host arange meeting device values
        with pytest.raises(DeviceMismatch, match="only host memory can be pinned"):
            on_device.pin_memory()
        on_device[lengths.clamp(max=2)]  # a host index: allowed, the host waits for its copy
        torch.tensor([1, 2], device=weight.device)  # Python data made a device tensor: a blocking copy
    assert dict(counter.calls) == {"host tensor in a device op": 1, "blocking host → device copy": 1}


@pytest.fixture(scope="module")
def translator(trained_tiny) -> Translator:
    from dist_s2s.config import load_config

    arguments, checkpoint, _ = trained_tiny
    config = load_config(Path(arguments[1]), arguments[2:])
    return Translator(config, [Path(checkpoint)], torch.device("cpu"))


def test_translating_reads_one_flag_a_step_and_the_results_once_a_batch(translator, monkeypatch):
    steps = []
    step = beam.Ensemble.step
    monkeypatch.setattr(beam.Ensemble, "step", lambda self, *args: steps.append(1) or step(self, *args))
    lines = ["a man in an orange hat starring at something .", "a boston terrier is running on lush green grass .",
             "two dogs play .", "a girl in a karate uniform breaking a stick with a front kick ."]
    with torch.no_grad(), on_the_device(*translator.ensemble.models) as counter:
        found = translator.translate_ids([translator.source_ids(line) for line in lines], 3, batch_size=2)
    assert all(hypotheses[0].tokens for hypotheses in found)
    assert counter.calls.get("blocking host → device copy", 0) == 0, dict(counter.where)
    assert counter.total <= BEAM_STEP_BUDGET * len(steps) + 2 * BEAM_RESULT_READS, dict(counter.where)


def test_evaluations_perplexity_and_sentence_vectors_read_once_a_batch_and_once_a_phrase(translator):
    from dist_s2s.evaluate.evaluate import split_perplexity

    sources = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    targets = [[1, 4, 5, 2], [1, 6, 2], [1, 7, 8, 9, 2]]  # as prepared: <s> … </s>
    with torch.no_grad(), on_the_device(*translator.ensemble.models) as counter:
        perplexity = split_perplexity(translator, sources, targets)
        vectors = analysis.sentence_vectors(translator, analysis.PHRASES[:3])
    assert perplexity > 1 and vectors.shape[0] == 3
    assert dict(counter.calls) == {"tolist": 1, "cpu": 3}, dict(counter.where)  # 1 batch, 3 phrases


def test_every_non_blocking_copy_to_the_device_starts_from_pinned_memory():
    """CUDA copies from pageable host memory synchronously whatever `non_blocking` says: every copy the package
    asks not to block goes through `device.to_device`, which pins first (the dropout keys did not)."""
    repo = Path(__file__).resolve().parents[1]
    elsewhere = [f"{path.relative_to(repo)}:{number}" for path in sorted((repo / "dist_s2s").rglob("*.py"))
                 if path.name != "device.py"
                 for number, line in enumerate(path.read_text().splitlines(), start=1) if "non_blocking=True" in line]
    assert not elsewhere, elsewhere


def test_an_ensembles_perplexity_is_of_a_distribution_while_its_scores_stay_the_searchs():
    """The members' mean log-probability sums to less than 1 where they disagree: scored as is it reads as the
    members' geometric-mean perplexity; renormalized it is the distribution the search ranks by."""
    first, second = small_model(seed=1).float().eval(), small_model(seed=2).float().eval()
    pair = SimpleNamespace(ensemble=beam.Ensemble([first, second]), device=torch.device("cpu"))
    alone = [pair_log_probs(stand_in(model), PAIRS) for model in (first, second)]
    searched = pair_log_probs(pair, PAIRS)
    assert searched == pytest.approx([(a + b) / 2 for a, b in zip(*alone)], rel=1e-5)  # the beam's scores
    normalized = pair_log_probs(pair, PAIRS, normalized=True)
    assert all(n > s for n, s in zip(normalized, searched)), "renormalizing raises every pair's probability"
    by_hand = []
    for src, tgt in PAIRS:
        source = torch.tensor([src])
        target_in, target_out = torch.tensor([[BOS_ID, *tgt]]), torch.tensor([*tgt, EOS_ID])
        mean = sum(model.log_probs(model.decode(target_in, model.encode(source, torch.tensor([len(src)])))[0][0])
                   for model in (first, second)) / 2
        by_hand.append(torch.log_softmax(mean, dim=-1).gather(1, target_out[:, None]).sum().item())
    assert normalized == pytest.approx(by_hand, rel=1e-5)
    assert pair_log_probs(stand_in(first), PAIRS, normalized=True) == pytest.approx(alone[0], rel=1e-6)
