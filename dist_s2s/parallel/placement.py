"""Which stage holds which LSTM layer pair and which softmax shard.

`chain` deals the units in order, [embeddings + LSTM pairs 0 … L-1 | shards 0 … S-1], as evenly
as counts allow (`stages.stage_boundaries`): with L + S stages it is the paper's layout (§3.5,
one layer or one 1000 × 20000 slice a GPU). It is the only placement 1F1B can run, because
DeepSpeed's engine passes activations to the next stage only. `colocated` gives every stage a
share of the layers *and* a share of the vocabulary (2 stages, 2 layers, 2 shards: stage 0 holds
layer 0 and half the softmax, stage 1 layer 1 and the other half), so the softmax of a chunk
runs on devices that would otherwise wait for the LSTM wavefront. The embeddings always live
with layer 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from dist_s2s.parallel.stages import stage_boundaries

PLACEMENTS = ("chain", "colocated")


def placement_name(name: str, num_layers: int, num_shards: int, stages: int) -> str:
    """`auto` is colocated when every stage can hold a layer pair and a shard, else chain."""
    if name != "auto":
        return name
    return "colocated" if stages <= min(num_layers, num_shards) else "chain"


@dataclass(frozen=True)
class Placement:
    layers: tuple[tuple[int, ...], ...]
    """Per stage, the LSTM layer pairs (encoder layer k with decoder layer k) it holds."""
    shards: tuple[tuple[int, ...], ...]
    """Per stage, the softmax shards it holds."""

    @property
    def stages(self) -> int:
        return len(self.layers)

    def stage_of_layer(self, layer: int) -> int:
        return next(stage for stage, held in enumerate(self.layers) if layer in held)

    @property
    def hops(self) -> list[tuple[int, tuple[int, ...]]]:
        """(stage, layers) for each run of consecutive layers on one stage, bottom to top: the path a
        chunk's activations travel."""
        hops: list[tuple[int, list[int]]] = []
        for layer in range(sum(len(held) for held in self.layers)):
            stage = self.stage_of_layer(layer)
            if hops and hops[-1][0] == stage:
                hops[-1][1].append(layer)
            else:
                hops.append((stage, [layer]))
        return [(stage, tuple(layers)) for stage, layers in hops]

    @property
    def top_stage(self) -> int:
        """The stage of the top layer: it sends every decoder chunk to the softmax and sums the loss."""
        return self.hops[-1][0]

    @property
    def shard_stages(self) -> list[int]:
        return [stage for stage, held in enumerate(self.shards) if held]

    def unit_order(self) -> tuple[list[int], list[int]]:
        """Indices into `stages.pipeline_units` (0 = embeddings, 1 … L = LSTM pairs, L+1 … = shards),
        grouped by stage, and DeepSpeed `parts` (where each stage's group starts, plus the end)."""
        num_layers = sum(len(held) for held in self.layers)
        order, parts = [], [0]
        for stage in range(self.stages):
            if 0 in self.layers[stage]:
                order.append(0)
            order += [1 + layer for layer in self.layers[stage]]
            order += [1 + num_layers + shard for shard in self.shards[stage]]
            parts.append(len(order))
        return order, parts


def placement(name: str, num_layers: int, num_shards: int, stages: int) -> Placement:
    """The named placement of L layer pairs and S shards on `stages` stages (`auto`: `placement_name`)."""
    name = placement_name(name, num_layers, num_shards, stages)
    if name == "chain":
        parts = stage_boundaries(num_layers, num_shards, stages)
        units = [range(max(parts[s], 1) - 1, parts[s + 1] - 1) for s in range(stages)]  # 0-based, embeddings aside
        return Placement(layers=tuple(tuple(u for u in held if u < num_layers) for held in units),
                         shards=tuple(tuple(u - num_layers for u in held if u >= num_layers) for held in units))
    if name == "colocated":
        return Placement(layers=tuple(tuple(k for k in range(num_layers) if k * stages // num_layers == s)
                                      for s in range(stages)),
                         shards=tuple(tuple(k for k in range(num_shards) if k * stages // num_shards == s)
                                      for s in range(stages)))
    raise ValueError(f"unknown placement {name!r} (one of {', '.join(PLACEMENTS)})")
