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
from dist_s2s.model.layers import cuda_kernel_dtype, cudnn_has_bf16_rnn
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
    assert cudnn_has_bf16_rnn(91300) and cudnn_has_bf16_rnn(91400)
    assert not cudnn_has_bf16_rnn(90800) and not cudnn_has_bf16_rnn(None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cuda_kernel_dtype(torch.device("cpu")) is None, "on a CPU, autocast runs oneDNN's LSTM itself"

