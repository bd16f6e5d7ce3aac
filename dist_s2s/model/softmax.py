"""The plain softmax over the target vocabulary (§3.5: "4 GPUs ... 1000 × 20000 each"), cut into shards.

Each shard turns its vocabulary slice's logits into a `SoftmaxPartial` per target position: the largest
logit, Σ exp(logit - largest) and the target word's logit if the slice holds it. `merge` combines two
partials exactly (an online log-sum-exp), so partials computed anywhere (one device, one pipeline stage
per shard, several shards on one stage) add up to the loss of one full softmax: `nll()`.

`shard_partial` computes a partial with a hand-written backward: one pass over the logits each way,
d logit_j = g_sum · exp(logit_j - max) plus corrections at the argmax and the target. Left to autograd,
the same math costs six passes over the [N, V] logits in the backward (the max's scatter, the
subtraction's negation, the exponential's product, the upcasts under bf16; docs/benchmarks.md has what
that cost). On a CPU it works through a block of rows at a time,
so the fp32 temporaries stay in cache; on a GPU in one go.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dist_s2s.data.vocab import PAD_ID
from dist_s2s.model.layers import at_least_fp32

CACHE_BLOCK_ELEMENTS = 2**18
"""fp32 elements of one block of logits on a CPU (1 MB: within a core's L2)."""


class SoftmaxPartial(NamedTuple):
    """A log-sum-exp over the vocabulary slices seen so far, per target position [N], fp32."""

    max_logit: torch.Tensor
    sum_exp: torch.Tensor
    """Σ exp(logit - max_logit) over the slices seen so far."""
    target_logit: torch.Tensor
    """The target word's logit, once its slice has been seen (0 before)."""

    def nll(self) -> torch.Tensor:
        """-log p(target) = logsumexp(all logits) - target logit."""
        return self.max_logit + torch.log(self.sum_exp) - self.target_logit


def merge(first: SoftmaxPartial | None, second: SoftmaxPartial) -> SoftmaxPartial:
    """The partial of both slices (`first` None: nothing seen yet)."""
    if first is None:
        return second
    largest = torch.maximum(first.max_logit, second.max_logit)
    sum_exp = (first.sum_exp * torch.exp(first.max_logit - largest)
               + second.sum_exp * torch.exp(second.max_logit - largest))
    return SoftmaxPartial(largest, sum_exp, first.target_logit + second.target_logit)


def masked_nll(partial: SoftmaxPartial, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) a position, 0 where the target is padding (its position still went through the softmax:
    selecting the real ones by a mask would make a GPU's host wait to learn how many there are)."""
    return partial.nll() * (targets != PAD_ID)


def merge_all(partials: list[SoftmaxPartial]) -> SoftmaxPartial:
    merged = None
    for partial in partials:
        merged = merge(merged, partial)
    return merged


def shard_partial(logits: torch.Tensor, local_targets: torch.Tensor) -> SoftmaxPartial:
    """logits [N, V] of one slice (any float dtype; bf16 under autocast), local_targets [N] (target id minus
    the slice's first id: outside [0, V) when another slice holds it) → the slice's partial, in fp32 or more."""
    return SoftmaxPartial(*_ShardPartial.apply(logits, local_targets))


def _row_blocks(logits: torch.Tensor) -> list[slice]:
    rows = logits.shape[0]
    step = rows if logits.is_cuda else max(8, CACHE_BLOCK_ELEMENTS // max(1, logits.shape[1]))
    return [slice(start, start + step) for start in range(0, rows, step)]


class _ShardPartial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, local_targets: torch.Tensor):
        size = logits.shape[1]
        mine = (local_targets >= 0) & (local_targets < size)
        local = local_targets.clamp(0, size - 1)
        largest, argmax = logits.max(dim=1)
        largest = at_least_fp32(largest)
        sum_exp = torch.empty_like(largest)
        for rows in _row_blocks(logits):
            sum_exp[rows] = torch.exp(at_least_fp32(logits[rows]) - largest[rows, None]).sum(dim=1)
        target = at_least_fp32(logits.gather(1, local[:, None]).squeeze(1)) * mine
        ctx.save_for_backward(logits, largest, argmax, sum_exp, local, mine)
        return largest, sum_exp, target

    @staticmethod
    def backward(ctx, grad_max: torch.Tensor, grad_sum: torch.Tensor, grad_target: torch.Tensor):
        logits, largest, argmax, sum_exp, local, mine = ctx.saved_tensors
        at_argmax = grad_max - grad_sum * sum_exp  # d max / d logit_argmax, and d sum_exp through the max
        at_target = grad_target * mine
        grad = torch.empty_like(logits)
        for rows in _row_blocks(logits):
            block = torch.exp(at_least_fp32(logits[rows]) - largest[rows, None]).mul_(grad_sum[rows, None])
            block.scatter_add_(1, argmax[rows, None], at_argmax[rows, None])
            block.scatter_add_(1, local[rows, None], at_target[rows, None])
            grad[rows] = block
        return grad, None


class SoftmaxShard(nn.Module):
    """Output words [start, start + size) of the plain softmax: an H × size slice and its bias."""

    def __init__(self, hidden_size: int, start: int, size: int):
        super().__init__()
        self.start, self.size = start, size
        self.weight = nn.Parameter(torch.empty(size, hidden_size))
        self.bias = nn.Parameter(torch.empty(size))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor,
                state: SoftmaxPartial | None = None) -> SoftmaxPartial:
        """hidden [N, H], targets [N] (vocabulary ids) → `state` with this slice folded in. The product runs
        in the autocast dtype; the partial is fp32 (exp and sums of 20,000 logits lose too much in bf16)."""
        return merge(state, shard_partial(self.logits(hidden), targets - self.start))

    def forward_deferring_weight_grads(self, hidden: torch.Tensor, targets: torch.Tensor,
                                       state: SoftmaxPartial | None) -> tuple[SoftmaxPartial, torch.Tensor]:
        """`forward`, also returning the logits, so that a backward can stop at them: the caller takes
        d hidden and d logits (`torch.autograd.grad`, which leaves the weights alone) and later
        `add_weight_grads` turns d logits into the slice's weight and bias gradients. A pipeline stage
        runs that where it would otherwise wait (the split of the backward that zero-bubble pipelines
        make, Qi et al. 2023)."""
        logits = self.logits(hidden)
        return merge(state, shard_partial(logits, targets - self.start)), logits

    def add_weight_grads(self, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Accumulate d weight = Σ d logitsᵀ · hidden and d bias = Σ d logits over (hidden, d logits) pieces,
        each product in d logits' dtype (as autocast's backward computes it), the sums in fp32. One
        product a piece, [hidden | 1]ᵀ · d logits: the bias rides as a column of ones, and this orientation
        runs the CPU's faster bf16 kernel (docs/benchmarks.md)."""
        total = None
        for hidden, grad in pieces:
            inputs = torch.cat([hidden.detach().to(grad.dtype), hidden.new_ones(hidden.shape[0], 1, dtype=grad.dtype)],
                               dim=1)
            product = inputs.t().contiguous() @ grad  # [H + 1, V]
            total = at_least_fp32(product) if total is None else total.add_(product)
        if total is None:
            return
        for parameter, grad in ((self.weight, total[:-1].t()), (self.bias, total[-1])):
            if parameter.grad is None:
                parameter.grad = grad.to(parameter.dtype).contiguous()
            else:
                parameter.grad.add_(grad)


def shard_bounds(vocab_size: int, shards: int) -> list[tuple[int, int]]:
    """(start, size) of each shard; sizes differ by at most one when the vocabulary does not divide."""
    base, extra = divmod(vocab_size, shards)
    bounds, start = [], 0
    for index in range(shards):
        size = base + (1 if index < extra else 0)
        bounds.append((start, size))
        start += size
    return bounds
