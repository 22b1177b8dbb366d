"""EMA coefficients for the exchange between branches: a fixed ``W`` or the DPU rank rule.

Exchange: ``frozen = W * frozen + (1 - W) * trained``. With DPU the layers of each group are sorted by score in
ascending order and the layer at index ``i`` (0-based) of ``N`` gets ``W_i = base + rank_base * i / N``, so the
highest-variance layer of a group gets the ``W`` closest to 1 (it follows its trained partner most slowly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ldt.core.partition import Partition, PartitionError


@dataclass(frozen=True)
class ExchangeConfig:
    """How and how often the two branches exchange their trained groups (paper defaults)."""

    interval: int = 10
    dpu: bool = True
    weight: float = 0.99
    stable_base: float = 0.99
    stable_rank_base: float = 0.01
    unstable_base: float = 0.999
    unstable_rank_base: float = 0.001

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"exchange interval must be a positive integer, got {self.interval!r}")
        for name in ("weight", "stable_base", "unstable_base"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"exchange {name} must be in [0, 1], got {value}")
        for base, rank in (("stable_base", "stable_rank_base"), ("unstable_base", "unstable_rank_base")):
            if getattr(self, rank) < 0 or getattr(self, base) + getattr(self, rank) > 1.0 + 1e-12:
                raise ValueError(f"exchange {base} + {rank} must stay within [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def dpu_weights(layer_scores: list[tuple[str, float]], base: float, rank_base: float) -> dict[str, float]:
    """DPU coefficient of each layer: ascending score rank ``i`` of ``N`` gives ``base + rank_base * i / N``.

    Ties keep the given (network) order.
    """
    ordered = sorted(layer_scores, key=lambda item: item[1])
    count = len(ordered)
    return {layer: base + rank_base * index / count for index, (layer, _) in enumerate(ordered)}


def exchange_weights(partition: Partition, config: ExchangeConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Per-parameter ``W`` for the stable and the unstable group (parameter name -> W)."""
    if not config.dpu:
        return ({p: config.weight for p in partition.stable}, {p: config.weight for p in partition.unstable})
    if not partition.scores:
        raise PartitionError(
            f"DPU needs layer scores, but the '{partition.criterion}' partition has none; use a probe-based "
            "partition or a fixed weight (dpu: false)"
        )
    weights = []
    for group, base, rank_base in (
        ("stable", config.stable_base, config.stable_rank_base),
        ("unstable", config.unstable_base, config.unstable_rank_base),
    ):
        per_layer = dpu_weights(partition.layer_scores(group), base, rank_base)
        weights.append({p: w for layer, w in per_layer.items() for p in partition.layers[layer]})
    return weights[0], weights[1]
