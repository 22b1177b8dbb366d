"""EMA coefficients for the exchange between branches: a fixed ``W`` or the DPU rank rule.

Exchange: ``frozen = W * frozen + (1 - W) * trained``. With DPU the layers of each group are sorted by score in
ascending order and the layer at index ``i`` (0-based) of ``N`` gets ``W_i = base + rank_base * i / N``, so the
highest-variance layer of a group gets the ``W`` closest to 1 (it follows its trained partner most slowly).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ldt.core.config import EmaWeight, Options, PositiveInt, Real
from ldt.core.partition import CRITERIA, GIVEN, Partition, PartitionError


class ExchangeConfig(Options):
    """How and how often the two branches exchange their trained groups (paper defaults)."""

    interval: PositiveInt = Field(10, description="steps between exchanges (LDT-S: steps per turn)")
    dpu: bool = Field(True, description="per-layer W from the score rank (DPU) instead of the fixed weight")
    weight: EmaWeight = Field(0.99, description="fixed W when dpu is false")
    stable_base: EmaWeight = Field(0.99, description="DPU: W of the lowest-score stable layer")
    stable_rank_base: Real = Field(0.01, ge=0, description="DPU: W range over the stable group")
    unstable_base: EmaWeight = Field(0.999, description="DPU: W of the lowest-score unstable layer")
    unstable_rank_base: Real = Field(0.001, ge=0, description="DPU: W range over the unstable group")

    @model_validator(mode="after")
    def _weights_within_one(self) -> "ExchangeConfig":
        """Every W stays within [0, 1]: each base is below 1 by its type (a field error, so a message names the
        option), and the highest-score layer of a group gets base + rank_base."""
        for base, rank in (("stable_base", "stable_rank_base"), ("unstable_base", "unstable_rank_base")):
            if getattr(self, base) + getattr(self, rank) > 1.0 + 1e-12:
                raise ValueError(f"{base} + {rank} must stay within [0, 1]")
        return self

    def identity(self) -> dict:
        """The values that change the result: the fixed weight or the DPU bases, not both."""
        values = self.to_dict()
        unused = ("stable_base", "stable_rank_base", "unstable_base", "unstable_rank_base") if not self.dpu else ("weight",)
        return {key: value for key, value in values.items() if key not in unused}

    def step_decay(self) -> float:
        """The fixed W spread over the interval, ``weight ** (1 / interval)``: the per-step EMA decay with the same
        time constant as the fixed-W exchange (FT-EMA's matched default)."""
        return self.weight ** (1.0 / self.interval)


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
        # a partition built in Python ('given'), or one whose score criterion came without scores: no probe made
        # it, so a criterion names nothing that happened
        which = "this partition has none (it was not made by a probe: partition_by_score records them)" \
            if partition.criterion in (*CRITERIA, GIVEN) else f"the '{partition.criterion}' partition has none"
        raise PartitionError(f"DPU needs layer scores, but {which}; use a probe-based partition or a fixed weight "
                             "(dpu: false)")
    weights = []
    for group, base, rank_base in (
        ("stable", config.stable_base, config.stable_rank_base),
        ("unstable", config.unstable_base, config.unstable_rank_base),
    ):
        per_layer = dpu_weights(partition.layer_scores(group), base, rank_base)
        weights.append({p: w for layer, w in per_layer.items() for p in partition.layers[layer]})
    return weights[0], weights[1]
