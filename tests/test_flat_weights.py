"""LSTM weights in one flat buffer (what cuDNN runs a stack on, `model/flat_weights.py`), and the dtype the
LSTM kernel runs in on CUDA under autocast (`model/layers.py: cuda_kernel_dtype`).

On CUDA the offsets come from cuDNN; here the same placement runs at a layout with gaps between the weights
(as alignment may leave), so a wrong offset, a copy that does not alias, or a step that does not reach the
buffer would show.
"""

from __future__ import annotations

import torch
from conftest import make_batch

from dist_s2s.config import ModelConfig
from dist_s2s.model import flat_weights
from dist_s2s.model.layers import LSTMLayer, cuda_kernel_dtype, cudnn_has_bf16_rnn, kernel_weights
from dist_s2s.model.seq2seq import Seq2Seq


def gappy_layout(weights: list[torch.Tensor]) -> flat_weights.Layout:
    """Each weight 5 elements after the previous one ends, in reverse order, 3 spare at the end."""
    offsets, position = [0] * len(weights), 0
    for index in reversed(range(len(weights))):
        offsets[index] = position
        position += weights[index].numel() + 5
    return flat_weights.Layout(tuple(offsets), position + 3)


def side_weights(model: Seq2Seq, side: str) -> list[torch.nn.Parameter]:
    return [w for layer in getattr(model, side) for w in layer.lstm._flat_weights]


def small_model() -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(ModelConfig(embedding_dim=6, hidden_size=5, num_layers=3, softmax_shards=2), 23, 19)


def a_batch():
    return make_batch([([5, 6, 7, 8, 9], [4, 5]), ([7, 8], [6, 7, 8, 9]), ([9], [5])])


def sgd_steps(model: Seq2Seq, count: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(count):
        optimizer.zero_grad()
        model(a_batch())[0].backward()
        optimizer.step()


def test_shared_weights_are_views_of_one_buffer_at_the_layouts_offsets():
    model = small_model()
    weights = side_weights(model, "encoder")
    values = [w.detach().clone() for w in weights]
    layout = gappy_layout(weights)
    buffer = flat_weights.share(weights, layout)
    assert {w.untyped_storage().data_ptr() for w in weights} == {buffer.untyped_storage().data_ptr()}
    for weight, value, offset in zip(weights, values, layout.offsets):
        assert weight.storage_offset() == offset and torch.equal(weight, value)
        assert torch.equal(buffer[offset:offset + weight.numel()], value.flatten())
    assert all(isinstance(p, torch.nn.Parameter) for p in model.encoder.parameters())


def test_training_on_shared_weights_equals_training_on_separate_ones_bit_for_bit():
    separate, shared = small_model(), small_model()
    for side in ("encoder", "decoder"):
        weights = side_weights(shared, side)
        flat_weights.share(weights, gappy_layout(weights))
    sgd_steps(separate, 3)
    sgd_steps(shared, 3)
    for (name, a), (_, b) in zip(separate.state_dict().items(), shared.state_dict().items()):
        assert torch.equal(a, b), name
    buffer_ptr = side_weights(shared, "encoder")[0].untyped_storage().data_ptr()
    assert all(w.untyped_storage().data_ptr() == buffer_ptr for w in side_weights(shared, "encoder")), \
        "the optimizer's updates landed in the shared buffer, not in copies"


def test_a_checkpoint_of_separate_weights_loads_into_shared_ones_and_they_stay_shared():
    old = small_model()
    sgd_steps(old, 1)
    checkpoint = old.unsharded_state_dict()
    model = small_model()
    weights = side_weights(model, "decoder")
    flat_weights.share(weights, gappy_layout(weights))
    pointers = [w.data_ptr() for w in weights]
    model.load_unsharded_state_dict(checkpoint)
    assert [w.data_ptr() for w in side_weights(model, "decoder")] == pointers
    assert all(torch.equal(a, b) for a, b in zip(model.unsharded_state_dict().values(), checkpoint.values()))
    assert model.unsharded_state_dict().keys() == checkpoint.keys()


def test_a_flat_cast_is_one_buffer_of_cast_weights_whose_gradient_reaches_each_weight():
    model = small_model()
    weights = side_weights(model, "encoder")
    layout = gappy_layout(weights)
    views = flat_weights.flat_cast(weights, layout, torch.bfloat16)
    assert len({v.untyped_storage().data_ptr() for v in views}) == 1
    for view, weight, offset in zip(views, weights, layout.offsets):
        assert view.dtype == torch.bfloat16 and view.storage_offset() == offset and view.is_contiguous()
        assert torch.equal(view, weight.to(torch.bfloat16))
    probes = [torch.randn(w.shape) for w in weights]
    sum((v.float() * p).sum() for v, p in zip(views, probes)).backward()
    for weight, probe in zip(weights, probes):
        assert torch.equal(weight.grad, probe.to(torch.bfloat16).float())


def test_the_packed_layout_leaves_no_gaps():
    layout = flat_weights.packed_layout([(4, 3), (4, 2), (4,), (4,)])
    assert layout == flat_weights.Layout((0, 12, 20, 24), 28)


def test_a_cuda_lstm_under_bf16_runs_in_bf16_only_where_cudnn_has_bf16_rnns_else_fp32():
    ampere = (8, 0)
    assert cudnn_has_bf16_rnn(built=91300, loaded=91300, capability=ampere)
    assert cudnn_has_bf16_rnn(built=91400, loaded=91500, capability=(9, 0))
    assert not cudnn_has_bf16_rnn(built=90800, loaded=91300, capability=ampere), "PyTorch compiled its bf16 RNN out"
    assert not cudnn_has_bf16_rnn(built=91300, loaded=90800, capability=ampere)
    assert not cudnn_has_bf16_rnn(built=91300, loaded=91300, capability=(7, 5)), "Turing has no bf16 arithmetic"
    assert not cudnn_has_bf16_rnn(built=0, loaded=0, capability=(0, 0)), "no cuDNN at all"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cuda_kernel_dtype(torch.device("cpu")) is None, "on a CPU, autocast runs oneDNN's LSTM itself"



def test_the_kernel_that_ran_is_read_off_the_outputs_backward_node():
    layer = LSTMLayer(4, 4)
    layer(torch.randn(2, 3, 4))
    assert layer.kernel == "MkldnnRnnLayerBackward0", "oneDNN's on a CPU (cuDNN's would be CudnnRnnBackward0)"
    with torch.no_grad():
        layer(torch.randn(2, 3, 4))
    assert layer.kernel is None


def test_cast_kernel_weights_are_made_once_per_version_of_the_weights(monkeypatch):
    """What a bf16 cuDNN call (or a single layer's call into a stack's buffer) gets: one cast a step, reused by
    every span and chunk until the optimizer changes the weights."""
    monkeypatch.setattr(flat_weights, "cudnn_layout", lambda shapes, *_, **__: flat_weights.packed_layout(shapes))
    layers = [LSTMLayer(4, 4), LSTMLayer(4, 4)]
    first = kernel_weights(layers, torch.bfloat16)
    assert all(a is b for a, b in zip(first, kernel_weights(layers, torch.bfloat16))), "no second cast"
    with torch.no_grad():
        layers[1].lstm.weight_hh_l0.add_(1.0)  # an optimizer step
    again = kernel_weights(layers, torch.bfloat16)
    assert again[5] is not first[5]
    assert torch.equal(again[5], layers[1].lstm.weight_hh_l0.detach().to(torch.bfloat16))
    sum(w.float().sum() for w in again).backward()
    assert torch.equal(layers[0].lstm.weight_ih_l0.grad, torch.ones(16, 4)), "the cast passes gradients back"


def test_weights_already_in_the_kernels_buffer_are_used_as_they_are(monkeypatch):
    monkeypatch.setattr(flat_weights, "cudnn_layout", lambda shapes, *_, **__: flat_weights.packed_layout(shapes))
    layers = [LSTMLayer(4, 4), LSTMLayer(4, 4)]
    weights = [w for layer in layers for w in layer.lstm._flat_weights]
    flat_weights.share(weights, flat_weights.packed_layout([tuple(w.shape) for w in weights]))
    assert all(a is b for a, b in zip(kernel_weights(layers, torch.float32), weights)), "the stack: no copy"
    alone = kernel_weights(layers[1:], torch.float32)  # one layer of the stack's buffer: cast once, then kept
    assert alone[0] is not weights[4] and alone[0] is kernel_weights(layers[1:], torch.float32)[0]
