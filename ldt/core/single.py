"""LDT-S: the dual branch time-multiplexed onto one network, with the EMA partners parked in host memory.

Schedule (our choice, documented in the README): phases of ``phase_steps`` optimizer steps (default: the exchange
interval) alternate between the *primary's turn* and the *auxiliary's turn*.

* primary's turn: the network holds [trained stable, EMA unstable]; only the stable group trains;
* auxiliary's turn: the network holds [EMA stable, trained unstable]; only the unstable group trains.

At the end of a turn the group that just trained updates its EMA (``ema = W·ema + (1−W)·trained``), is parked on
the host, and the other turn's values are loaded. Every step of LDT-S is therefore a step of one of LDT's two
branches with the other group at its EMA value (updated once per turn pair, not every interval as in LDT), while the
device holds one network and one optimizer
(memory and time per step ≈ plain fine-tuning). Each branch gets half the steps; the deployed composite is
[EMA stable, EMA unstable], the same pair LDT deploys.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch import nn

from ldt.core.dual import (
    COPIES,
    EMAPlan,
    check_network_state,
    check_saved_partition,
    check_two_groups,
    cloned,
    copy_problem,
    materialise,
    replaced_state,
    require_entries,
    set_trainable,
    step_count,
    user_frozen,
)
from ldt.core.exchange import ExchangeConfig, exchange_weights
from ldt.core.partition import Partition

STATE_FORMAT = "ldt.single_branch/1"
PHASES = ("stable", "unstable")
EMPTY_GROUP = "LDT-S needs both the stable and the unstable group non-empty"
STATE_ENTRIES = {**dict.fromkeys(("format", "model", "parked", "phase", "step", "phase_steps", "partition", "exchange")),
                 "ema": dict.fromkeys(PHASES)}
"""The entries of :meth:`SingleBranchLDT.state_dict` (for :func:`~ldt.core.dual.require_entries`)."""


class SingleBranchLDT:
    """LDT-S on ``model`` (trained in place). Optimise :meth:`trainable_parameters`; call :meth:`step` after each step."""

    def __init__(
        self,
        model: nn.Module,
        partition: Partition,
        config: ExchangeConfig | None = None,
        *,
        phase_steps: int | None = None,
        host_device: str | torch.device = "cpu",
    ) -> None:
        check_two_groups(partition, model, EMPTY_GROUP)
        problem = copy_problem(model)  # the deployed network is a copy: refused now, not after training
        if problem:
            raise TypeError(f"{problem}; {COPIES}")
        if phase_steps is not None and (not isinstance(phase_steps, int) or isinstance(phase_steps, bool)
                                        or phase_steps < 1):
            raise ValueError(f"phase_steps must be a positive number of steps (None: the exchange interval), got "
                             f"{phase_steps!r}")
        self.model = model
        self.config = config or ExchangeConfig()
        self.phase_steps = phase_steps if phase_steps is not None else self.config.interval
        self.host_device = torch.device(host_device)
        self.original_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self._use_groups(partition, *exchange_weights(partition, self.config))
        self.ema = {group: [p.detach().to(self.host_device, copy=True) for p in self.live[group]] for group in PHASES}
        # The trained values of the group that is not training now (the auxiliary's unstable group at the start).
        self.parked = [p.detach().to(self.host_device, copy=True) for p in self.live["unstable"]]
        self.phase = "stable"
        self.step_count = 0
        self.switched_at: int | None = None  # step_count of the last switch (see guard)
        set_trainable(model, partition.stable)

    def _use_groups(self, partition: Partition, stable_w: dict[str, float], unstable_w: dict[str, float]) -> None:
        self.partition = partition
        self.weights = {"stable": [stable_w[n] for n in partition.stable], "unstable": [unstable_w[n] for n in partition.unstable]}
        live = dict(self.model.named_parameters())
        self.live = {"stable": [live[n] for n in partition.stable], "unstable": [live[n] for n in partition.unstable]}

    @torch.no_grad()
    def repartition(self, partition: Partition) -> None:
        """Switch to a new partition mid-training; both (virtual) branches keep their current weights.

        LDT-S holds LDT's two branches as the live network (the branch whose turn it is) and, on the host, the other
        branch's view of every grouped tensor (the EMA of the training group and the parked trained values of the
        other group). After the switch each tensor gets, as in :meth:`DualBranch.repartition`, its trained value
        from the branch that now trains its group and its EMA from the other branch, so the live network is
        unchanged and the current turn goes on with the new groups. Tensors that become excluded keep their live
        value. The trainable tensors change: build the optimizer again over :meth:`trainable_parameters`.
        """
        check_two_groups(partition, self.model, EMPTY_GROUP, frozen=user_frozen(self.original_flags))
        weights = exchange_weights(partition, self.config)
        current, other = self.phase, PHASES[1 - PHASES.index(self.phase)]
        # The other branch's value of every grouped tensor: the EMA of the group that trains now (the other branch
        # holds it frozen) and the parked trained values of the group that does not.
        other_view = dict(zip(getattr(self.partition, current), self.ema[current]))
        other_view.update(zip(getattr(self.partition, other), self.parked))
        live = {name: p.detach().to(self.host_device, copy=True) for name, p in self.model.named_parameters()}
        self.ema = {
            current: [other_view.get(n, live[n]).clone() for n in getattr(partition, current)],
            other: [live[n] for n in getattr(partition, other)],
        }
        self.parked = [other_view.get(n, live[n]).clone() for n in getattr(partition, other)]
        self._use_groups(partition, *weights)
        set_trainable(self.model, getattr(partition, self.phase))

    @torch.no_grad()
    def to(self, *args, **kwargs) -> "SingleBranchLDT":
        """Move the network (``nn.Module.to`` arguments); the host copies take its new dtype and stay on the host."""
        self.model.to(*args, **kwargs)
        self._follow_dtype()
        return self

    def _follow_dtype(self) -> None:
        """Give the host copies the dtype of the network's tensors they stand for: ``model.double()`` moves the one
        network alone (it is ``method.model``), and the EMAs would otherwise mix dtypes and deploy the old one."""
        other = PHASES[1 - PHASES.index(self.phase)]
        pairs = [(self.ema[group], self.live[group]) for group in PHASES] + [(self.parked, self.live[other])]
        if all(t.dtype == p.dtype for copies, live in pairs for t, p in zip(copies, live)):
            return
        self.ema = {group: [t.to(dtype=p.dtype) for t, p in zip(self.ema[group], self.live[group])] for group in PHASES}
        self.parked = [t.to(dtype=p.dtype) for t, p in zip(self.parked, self.live[other])]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Both groups: give them all to one optimizer; the frozen group has no grad and is skipped by it."""
        return self.live["stable"] + self.live["unstable"]

    def guard(self, optimizer: torch.optim.Optimizer, error: type[Exception] = RuntimeError) -> None:
        """Make ``optimizer`` raise ``error`` when it steps right after :meth:`step` switched turns with no gradient on
        any of its parameters: :meth:`step` then ran before the optimizer's step, and the switch (which loads the other
        turn's weights and drops the gradients of the group that trained) silently lost that step's update. A
        GradScaler that skips a step never calls the optimizer, so only the wrong order trips it. Once per optimizer."""
        guarded = self.__dict__.setdefault("_guarded", weakref.WeakSet())
        if optimizer in guarded:
            return
        guarded.add(optimizer)
        owner = weakref.ref(self)  # the optimizer must not keep the method alive

        def check_turn(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            single = owner()
            if single is not None and single.switched_at == single.step_count and \
                    all(p.grad is None for group in optimizer.param_groups for p in group["params"]):
                raise error("LDT-S: an optimizer stepped right after method.step() switched turns, with no gradient "
                            "left: call method.step() after the optimizer's step (the switch drops the gradients of "
                            "its step, so that step's update was lost), or no backward ran since the switch")

        optimizer.register_step_pre_hook(check_turn)

    def __getstate__(self) -> dict:
        """Pickle and ``copy.deepcopy`` without the guarded optimizers (weak references; a copy has its own)."""
        state = self.__dict__.copy()
        state.pop("_guarded", None)
        return state

    def step(self) -> bool:
        """Count one step; at the end of a phase switch turns. Returns whether it switched. Call it after the
        optimizer's step (:meth:`guard` makes an optimizer refuse the other order)."""
        self.step_count += 1
        if self.step_count % self.phase_steps == 0:
            self.switch()
            return True
        return False

    @torch.no_grad()
    def switch(self) -> None:
        """End the current turn: EMA the trained group, park it, load the other turn's weights."""
        self._follow_dtype()
        trained, other = self.phase, PHASES[1 - PHASES.index(self.phase)]
        trained_on_host = [p.detach().to(self.host_device, copy=True) for p in self.live[trained]]
        EMAPlan(self.ema[trained], trained_on_host, self.weights[trained]).apply()
        for param, ema in zip(self.live[trained], self.ema[trained]):
            param.copy_(ema)
        for param, parked in zip(self.live[other], self.parked):
            param.copy_(parked)
        self.parked = trained_on_host
        self.phase = other
        self.switched_at = self.step_count
        set_trainable(self.model, getattr(self.partition, other))

    def composite_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """The deployed state as live tensors (read, never modify): the EMA of both groups (on the host), the
        network's excluded parameters and buffers; every alias of a tied parameter."""
        self._follow_dtype()
        return replaced_state(self.model, {name: ema for group in PHASES
                                           for name, ema in zip(getattr(self.partition, group), self.ema[group])})

    def composite_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Copies of :meth:`composite_tensors` on the network's device."""
        return cloned(self.composite_tensors(), self.model.state_dict())

    def composite(self) -> nn.Module:
        return materialise(self.model, self.composite_state_dict(), self.original_flags)

    def _host_problem(self, state: dict) -> str | None:
        """What in the saved turn, step count and host copies (``ema``, ``parked``) does not fit this network and
        partition, naming the entry (checked before anything loads), or None."""
        phase = state["phase"]
        if phase not in PHASES:
            return f"'phase' is {phase!r:.40}, not 'stable' or 'unstable'"
        if not step_count(state["step"]):
            return f"'step' is {state['step']!r:.40}, not a step count"
        other = PHASES[1 - PHASES.index(phase)]
        lists = [(f"ema:{group}", state["ema"][group], group) for group in PHASES] + [("parked", state["parked"], other)]
        for entry, saved, group in lists:
            names, live = getattr(self.partition, group), self.live[group]
            if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
                what = f"holds {len(saved)} tensor(s)" if isinstance(saved, (list, tuple)) else f"is a {type(saved).__name__}"
                return f"'{entry}' {what}, the {group} group {len(live)}"
            for index, (name, tensor, param) in enumerate(zip(names, saved, live)):
                if not isinstance(tensor, torch.Tensor):
                    return f"'{entry}' item {index} ('{name}') is a {type(tensor).__name__}, not a tensor"
                if tensor.shape != param.shape or not torch.can_cast(tensor.dtype, param.dtype):
                    return (f"'{entry}' item {index} ('{name}') is {list(tensor.shape)} {tensor.dtype}, the network's "
                            f"{list(param.shape)} {param.dtype}")
        return None

    def state_dict(self) -> dict:
        """Everything to resume; like ``nn.Module.state_dict`` its tensors are the live ones, the network's and the
        host's alike (``torch.save`` it, or ``copy.deepcopy`` it for an in-memory snapshot)."""
        return {
            "format": STATE_FORMAT,
            "model": self.model.state_dict(),
            "ema": {group: list(self.ema[group]) for group in PHASES},
            "parked": list(self.parked),
            "phase": self.phase,
            "step": self.step_count,
            "phase_steps": self.phase_steps,
            "partition": self.partition.to_dict(),
            "exchange": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an LDT-S state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        require_entries(state, STATE_ENTRIES, "the saved LDT-S state")
        check_network_state(self.model, state["model"])
        if state["phase_steps"] != self.phase_steps or ExchangeConfig(**state["exchange"]) != self.config:
            raise ValueError("the saved LDT-S state used another phase length or exchange rule")
        check_saved_partition(state["partition"], self.partition, self.config, "LDT-S network")
        problem = self._host_problem(state)
        if problem:
            raise ValueError(f"the saved LDT-S state's {problem}")
        self.model.load_state_dict(state["model"], strict=True)
        self.ema = {g: [t.to(self.host_device, copy=True) for t in state["ema"][g]] for g in PHASES}
        self.parked = [t.to(self.host_device, copy=True) for t in state["parked"]]
        self.phase = state["phase"]
        self.step_count = int(state["step"])
        self.switched_at = None
        set_trainable(self.model, getattr(self.partition, self.phase))
