"""The LDT dual branch: a primary that trains the stable layers and an auxiliary that trains the unstable ones.

Each branch's frozen group follows the other branch's trained group by EMA every ``interval`` steps, and the
deployed *composite* takes the stable tensors from the auxiliary and the unstable tensors from the primary (the
frozen, smoothed copy of each group). Buffers (e.g. BatchNorm statistics) of the composite come from the primary,
as the official merge does.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ldt.core.exchange import ExchangeConfig, exchange_weights
from ldt.core.partition import Partition, PartitionError

STATE_FORMAT = "ldt.dual_branch/1"


def set_trainable(model: nn.Module, names: Sequence[str]) -> None:
    """``requires_grad`` on exactly the parameters named in ``names``; others are frozen and lose their grad."""
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
        if name not in wanted:
            param.grad = None


def materialise(template: nn.Module, state: dict[str, torch.Tensor], requires_grad: dict[str, bool]) -> nn.Module:
    """A copy of ``template`` holding ``state``, with the user's original ``requires_grad`` flags and no gradients,
    so the deployed network behaves like the model that was handed in."""
    network = copy.deepcopy(template)
    network.load_state_dict(state, strict=True)
    for name, param in network.named_parameters():
        param.requires_grad_(requires_grad[name])
        param.grad = None
    return network


def check_same_architecture(first: nn.Module, second: nn.Module, what: str = "branches") -> None:
    """Raise unless both models have the same parameter names, shapes and dtypes (in the same order)."""
    a = [(n, tuple(p.shape), p.dtype) for n, p in first.named_parameters()]
    b = [(n, tuple(p.shape), p.dtype) for n, p in second.named_parameters()]
    if a != b:
        only_a = sorted({x[0] for x in a} - {x[0] for x in b})
        only_b = sorted({x[0] for x in b} - {x[0] for x in a})
        shape = sorted(x[0] for x, y in zip(a, b) if x[0] == y[0] and x != y)
        raise PartitionError(
            f"cannot exchange between {what} of different architectures ({type(first).__name__} vs "
            f"{type(second).__name__}): only in the first {only_a[:10]}, only in the second {only_b[:10]}, "
            f"different shape/dtype {shape[:10]}"
        )


def check_two_groups(partition: Partition, model: nn.Module) -> None:
    """Raise unless ``partition`` covers ``model`` exactly and both groups are non-empty."""
    partition.check_model(model)
    if not partition.stable or not partition.unstable:
        raise PartitionError(
            f"a dual branch needs both groups non-empty (stable: {len(partition.stable)}, unstable: "
            f"{len(partition.unstable)}); use a single network for FT/LP-FT"
        )


class EMAPlan:
    """Frozen ← W·frozen + (1−W)·trained over fixed tensor lists, vectorised with ``torch._foreach_*``."""

    def __init__(self, frozen: list[torch.Tensor], trained: list[torch.Tensor], weights: list[float]) -> None:
        self.frozen, self.trained = frozen, trained
        self.keep = weights
        self.take = [1.0 - w for w in weights]

    @torch.no_grad()
    def apply(self) -> None:
        if not self.frozen:
            return
        torch._foreach_mul_(self.frozen, self.keep)
        torch._foreach_add_(self.frozen, torch._foreach_mul(self.trained, self.take))


class DualBranch:
    """Primary + auxiliary copies of one model for LDT (and DeFT, which is LDT with a backbone/head partition).

    ``model`` becomes the primary (it is not copied); the auxiliary is a deep copy. Give each branch its own
    optimizer over :meth:`primary_parameters` / :meth:`auxiliary_parameters` (frozen tensors get no gradient and
    no optimizer state), and call :meth:`step` once after both optimizers stepped.
    """

    def __init__(
        self,
        model: nn.Module,
        partition: Partition,
        config: ExchangeConfig | None = None,
        *,
        auxiliary: nn.Module | None = None,
    ) -> None:
        check_two_groups(partition, model)
        self.partition = partition
        self.config = config or ExchangeConfig()
        self.primary = model
        if auxiliary is None:
            auxiliary = copy.deepcopy(model)
        else:
            check_same_architecture(model, auxiliary)
        self.auxiliary = auxiliary
        self.original_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self.step_count = 0
        set_trainable(self.primary, partition.stable)
        set_trainable(self.auxiliary, partition.unstable)
        self.stable_weights, self.unstable_weights = exchange_weights(partition, self.config)
        self._build_plans()

    def _build_plans(self) -> None:
        prim = dict(self.primary.named_parameters())
        aux = dict(self.auxiliary.named_parameters())
        stable, unstable = self.partition.stable, self.partition.unstable
        self.to_auxiliary = EMAPlan(
            [aux[n] for n in stable], [prim[n] for n in stable], [self.stable_weights[n] for n in stable]
        )
        self.to_primary = EMAPlan(
            [prim[n] for n in unstable], [aux[n] for n in unstable], [self.unstable_weights[n] for n in unstable]
        )

    # ---- training ------------------------------------------------------------------------------------------------
    def primary_parameters(self) -> list[nn.Parameter]:
        """The primary's trainable (stable) parameters, for its optimizer."""
        return [p for p in self.primary.parameters() if p.requires_grad]

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """The auxiliary's trainable (unstable) parameters, for its optimizer."""
        return [p for p in self.auxiliary.parameters() if p.requires_grad]

    def step(self) -> bool:
        """Count one training step; every ``interval`` steps run the exchange. Returns whether it ran."""
        self.step_count += 1
        if self.step_count % self.config.interval == 0:
            self.exchange()
            return True
        return False

    def exchange(self) -> None:
        """Each branch's frozen group ← EMA towards the other branch's trained group (Eq. 8 / 11)."""
        self.to_auxiliary.apply()
        self.to_primary.apply()

    def repartition(self, partition: Partition) -> None:
        """Switch to a new partition mid-training; each branch keeps its current weights.

        The primary then trains ``partition.stable`` and the auxiliary ``partition.unstable`` (``requires_grad`` is
        reset per branch, newly frozen tensors lose their grad), and the exchange plan (with DPU, the ranks of the
        new scores) follows the new groups. The step counter goes on, so the exchange schedule is not restarted.
        The trainable tensors change: build the optimizers again over :meth:`primary_parameters` /
        :meth:`auxiliary_parameters`. A partition that cannot be used is rejected before anything changes.
        """
        check_two_groups(partition, self.primary)
        stable_weights, unstable_weights = exchange_weights(partition, self.config)
        self.partition = partition
        self.stable_weights, self.unstable_weights = stable_weights, unstable_weights
        set_trainable(self.primary, partition.stable)
        set_trainable(self.auxiliary, partition.unstable)
        self._build_plans()

    def to(self, *args, **kwargs) -> "DualBranch":
        """Move both branches (``nn.Module.to`` arguments) and rebuild the exchange plans."""
        self.primary.to(*args, **kwargs)
        self.auxiliary.to(*args, **kwargs)
        self._build_plans()
        return self

    # ---- deployment ----------------------------------------------------------------------------------------------
    def composite_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """State dict of the deployed network: auxiliary's stable tensors, primary's unstable tensors and buffers."""
        state = OrderedDict((k, v.detach().clone()) for k, v in self.primary.state_dict().items())
        aux = self.auxiliary.state_dict()
        for name in self.partition.stable:
            state[name] = aux[name].detach().clone()
        return state

    def composite(self) -> nn.Module:
        """A fresh module of the model's class holding the composite weights (one network at inference)."""
        return materialise(self.primary, self.composite_state_dict(), self.original_flags)

    # ---- resume --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "primary": self.primary.state_dict(),
            "auxiliary": self.auxiliary.state_dict(),
            "partition": self.partition.to_dict(),
            "exchange": self.config.to_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore branches and exchange schedule; the partition and exchange rule must be the ones in use."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a dual-branch state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        saved = Partition.from_dict(state["partition"])
        if (saved.stable, saved.unstable) != (self.partition.stable, self.partition.unstable):
            raise PartitionError("the saved state was trained with a different partition than this dual branch")
        if ExchangeConfig(**state["exchange"]) != self.config:
            raise ValueError(f"the saved state used exchange {state['exchange']}, this run uses {self.config.to_dict()}")
        self.primary.load_state_dict(state["primary"], strict=True)
        self.auxiliary.load_state_dict(state["auxiliary"], strict=True)
        self.step_count = int(state["step"])
