"""Dropout on the non-recurrent connections (Zaremba, Sutskever & Vinyals 2014), with masks that
are a function of where a value is, not of the order it was computed in.

Zaremba et al. trained this very model with dropout on each LSTM layer's input and on the
softmax's input, never on the recurrent (h, c) path. A pipeline computes those values in another
order than one device (time chunks, micro-batches, data replicas, each on its own process), so a
random generator's stream cannot give them the same masks. Here the mask bit of a value is a hash
of (train.seed, step, sentence, site, position, feature): every process that computes a piece of a
step draws exactly that piece of the same mask, and a resumed run draws what a straight run did.
Integer arithmetic only, so the bits are the same on every device.
"""

from __future__ import annotations

import torch

from dist_s2s.device import to_device

_MASK32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding values < 2^32; the
    multipliers are < 2^31 so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def row_keys(lines: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """One 32-bit key per sentence of a step: [B, 2] (input index, line) → [B] int64.

    Keyed by the sentence, not by its row: a micro-batch or a replica holds other rows of the
    same sentences, in another order."""
    base = _mix(torch.tensor([(seed * 0x9E3779B1 + step) & _MASK32], dtype=torch.int64))
    keyed = _mix((base ^ lines[:, 0].to(torch.int64)) & _MASK32)
    return _mix((keyed * 0x2C1B3C6D + lines[:, 1].to(torch.int64)) & _MASK32)


def input_site(side: str, layer: int) -> int:
    """Which connection a mask is for: the input of `side`'s layer `layer` (0: the embeddings' output);
    the decoder's layer L (one past the last) is the softmax's input."""
    return 2 * layer + (side == "decoder")


class Dropout:
    """Inverted dropout at `rate` for the sentences of one step (`keys` from `row_keys`, on the device)."""

    def __init__(self, rate: float, keys: torch.Tensor):
        self.rate = rate
        self.sentences = (keys * 0x7FEB352D) & _MASK32  # [B], shared by every site and chunk of the step
        self.threshold = int(rate * 2**32)
        self.features: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, values: torch.Tensor, site: int, start: int = 0) -> torch.Tensor:
        """values [B, T, D] at positions start … start + T - 1 of their sentences, with the mask applied."""
        _, width, size = values.shape
        positions = torch.arange(start, start + width, device=values.device)
        where = (positions * 0x27D4EB2F + site * 0x165667B1) & _MASK32
        per_position = _mix(self.sentences[:, None] ^ where[None, :])  # [B, T]
        bits = torch.bitwise_xor(per_position[:, :, None], self._feature_keys(site, size, values.device))
        bits.mul_(0x2C1B3C6D).bitwise_and_(_MASK32)
        bits.bitwise_xor_(bits >> 16)
        kept = bits >= self.threshold
        return values * kept.to(values.dtype) * (1.0 / (1.0 - self.rate))

    def _feature_keys(self, site: int, size: int, device: torch.device) -> torch.Tensor:
        """[D] keys of the features, a fixed table per site (built once)."""
        if (site, size) not in self.features:
            self.features[(site, size)] = _mix((torch.arange(size, device=device) * 0x9E3779B1 + site) & _MASK32)
        return self.features[(site, size)]


def step_dropout(rate: float, lines: torch.Tensor, *, seed: int, step: int, device: torch.device) -> Dropout | None:
    """The dropout of one training step, or None when `rate` is 0 (the paper's model)."""
    if rate == 0:
        return None
    return Dropout(rate, to_device(row_keys(lines, seed, step), device))  # pinned: the host does not wait
