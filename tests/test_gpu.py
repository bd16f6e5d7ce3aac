"""Checks only a GPU can make (`benchmarks/gpu_check.sh` runs them first); skipped without CUDA."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import batch_of, make_batch, run_pipeline

from dist_s2s.config import load_config
from dist_s2s.model.layers import cudnn_has_bf16_rnn
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.step import SingleDeviceSteps

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def gpu_steps(*overrides: str) -> SingleDeviceSteps:
    config = load_config(None, ["--model.embedding_dim=64", "--model.hidden_size=64", "--model.num_layers=2",
                                "--model.softmax_shards=2", "--train.device=cuda", *overrides])
    torch.manual_seed(0)
    return SingleDeviceSteps(config, Seq2Seq(config.model, 200, 200), torch.device("cuda"))


def a_batch():

    return batch_of([9, 7, 7, 3], [5, 8, 2, 6], vocab=200)


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # one stack a side, or one call a layer
def test_under_bf16_the_lstm_runs_in_bf16_where_cudnn_has_bf16_rnns_else_fp32_never_fp16(caplog, dropout):
    caplog.set_level(logging.INFO)
    steps = gpu_steps("--train.precision=bf16", f"--model.dropout={dropout}")
    steps.train_step(a_batch(), 0.7, 1)
    expected = torch.bfloat16 if cudnn_has_bf16_rnn(torch.device("cuda")) else torch.float32
    assert steps.lstm_dtype.dtype == expected, (f"the LSTM ran in {steps.lstm_dtype.dtype} with cuDNN "
                                                f"{torch.backends.cudnn.version()}")
    assert steps.lstm_dtype.kernel == "CudnnRnnBackward0", "cuDNN's kernel, not PyTorch's per-step fallback"
    assert f"the LSTM kernels ran in {expected} (CudnnRnnBackward0)" in caplog.text


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("calls", ["stacked", "layer by layer"])
def test_a_cuda_lstm_call_copies_no_weights_each_time_and_warns_nothing(precision, calls):
    """A stack runs on its shared buffer as it is; a layer called alone into that buffer (a model told
    stack_layers=False, attention pictures) gets its weights placed once a version, not copied (and warned
    about) at every call."""
    import warnings

    steps = gpu_steps(f"--train.precision={precision}")
    encoder = [w for layer in steps.model.encoder for w in layer.lstm._flat_weights]
    assert len({w.untyped_storage().data_ptr() for w in encoder}) == 1, "one buffer for the encoder's stack"
    steps.model.stack_layers = calls == "stacked"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps.train_step(a_batch(), 0.7, 1)
        steps.train_step(a_batch(), 0.7, 2)
    copies = [str(w.message) for w in caught if "contiguous chunk of memory" in str(w.message)]
    assert not copies, copies
    assert len({w.untyped_storage().data_ptr() for w in encoder}) == 1, "still one buffer after the update"


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_training_step_never_waits_for_the_device(dropout):
    steps = gpu_steps(f"--model.dropout={dropout}")
    batch = a_batch()
    steps.train_step(batch, 0.7, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps.train_step(batch, 0.7, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_beam_search_waits_for_the_device_once_a_step_and_once_for_its_results():
    import warnings

    from dist_s2s.decode.beam import Ensemble, beam_search

    torch.manual_seed(0)
    config = load_config(None, ["--model.embedding_dim=16", "--model.hidden_size=16", "--model.num_layers=2"])
    model = Seq2Seq(config.model, 200, 200).cuda().eval()
    batch = a_batch()
    src = batch.src.cuda()
    beam_search(Ensemble([model]), src, batch.src_lengths, 4)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = beam_search(Ensemble([model]), src, batch.src_lengths, 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    decoder_steps = int(batch.src_lengths.max()) * 2 + 10 + 1  # at most: every sentence to its length limit
    assert found and len(caught) <= decoder_steps + 5, [str(w.message)[:80] for w in caught[:10]]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: two NCCL ranks cannot share one GPU")
@pytest.mark.parametrize("schedule", [("--parallel.schedule=wavefront",),
                                      ("--parallel.schedule=1f1b", "--parallel.micro_batches=2")])
def test_two_stages_on_two_gpus_over_nccl_match_one_in_fp32_and_meet_nccls_rules(prepared_tiny, tmp_path, schedule):
    from conftest import assert_runs_under_nccl_rules

    ranks = run_pipeline(prepared_tiny, tmp_path, 2, "--parallel.stages=2", "--train.device=cuda", *schedule,
                         env={"DS_ACCELERATOR": "cuda"})
    assert [rank["device"] for rank in ranks] == ["cuda:0", "cuda:1"]
    assert {rank["backend"] for rank in ranks} == {"nccl"}
    assert all(rank["max_difference"] < 1e-5 for rank in ranks), ranks
    assert_runs_under_nccl_rules(tmp_path / "comms")  # here the tensors' devices are checked against each rank's


def test_on_cuda_each_side_runs_as_one_stack_and_matches_the_layer_by_layer_model():

    from dist_s2s.config import ModelConfig

    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=12, num_layers=3, softmax_shards=2), 37, 41)
    model = model.double().cuda()
    batch = make_batch([([5, 6, 7, 8, 9], [4, 5]), ([7, 8], [6, 7, 8, 9]), ([9], [5])]).to("cuda")
    losses = []
    for stack in (None, False):  # None: the CUDA default, stacked
        model.stack_layers = stack
        losses.append(float(model(batch)[0]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
