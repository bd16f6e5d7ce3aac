"""The paper's learning-rate schedule and gradient rescaling (§3.4)."""

from __future__ import annotations

import pytest
import torch

from dist_s2s.config import OptimConfig
from dist_s2s.train.clipping import clip_gradients
from dist_s2s.train.schedule import learning_rate


@pytest.mark.parametrize("epochs, lr", [
    (0.0, 0.7), (4.999, 0.7), (5.0, 0.35), (5.49, 0.35), (5.5, 0.175), (6.0, 0.0875), (7.49, 0.7 / 32),
])
def test_lr_is_constant_for_five_epochs_then_halves_every_half_epoch(epochs, lr):
    assert learning_rate(OptimConfig(), epochs) == pytest.approx(lr)


def grads_with_norm(norm: float) -> list[torch.nn.Parameter]:
    parameters = [torch.nn.Parameter(torch.zeros(size)) for size in (3, 4, 2)]
    parameters[0].grad = torch.tensor([3.0, 0.0, 0.0]) * norm / 5
    parameters[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0]) * norm / 5
    return parameters  # the third has no gradient and must be skipped


def test_a_gradient_larger_than_5_is_rescaled_to_norm_5():
    parameters = grads_with_norm(20.0)
    assert clip_gradients(parameters, 5.0) == pytest.approx(20.0)
    after = torch.cat([p.grad for p in parameters[:2]]).norm()
    assert after == pytest.approx(5.0, rel=1e-6)
    assert torch.allclose(parameters[0].grad, torch.tensor([3.0, 0, 0]))


def test_a_gradient_within_the_bound_is_left_alone():
    parameters = grads_with_norm(4.0)
    before = [p.grad.clone() for p in parameters[:2]]
    assert clip_gradients(parameters, 5.0) == pytest.approx(4.0)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, parameters[:2]))


def test_rescaling_agrees_with_torch_clip_grad_norm():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(50)) for _ in range(3)]
    theirs = [torch.nn.Parameter(torch.zeros(50)) for _ in range(3)]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(50) * 3
        b.grad = a.grad.clone()
    norm = clip_gradients(ours, 5.0)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(theirs, 5.0)), rel=1e-6)
    assert all(torch.allclose(a.grad, b.grad, rtol=1e-5) for a, b in zip(ours, theirs))
