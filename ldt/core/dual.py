"""The LDT dual branch: a primary that trains the stable layers and an auxiliary that trains the unstable ones.

Each branch's frozen group follows the other branch's trained group by EMA every ``interval`` steps, and the
deployed *composite* takes the stable tensors from the auxiliary and the unstable tensors from the primary (the
frozen, smoothed copy of each group). Buffers (e.g. BatchNorm statistics) of the composite come from the primary,
as the official merge does.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterable, Sequence

import torch
from torch import nn

from ldt.core.exchange import ExchangeConfig, exchange_weights
from ldt.core.partition import Partition, PartitionError, not_a_partition, parameter_aliases

STATE_FORMAT = "ldt.dual_branch/1"
STATE_ENTRIES = dict.fromkeys(("format", "primary", "auxiliary", "partition", "exchange", "step"))
"""The entries of :meth:`DualBranch.state_dict` (for :func:`require_entries`)."""
COPIES = ("every LDT method deploys a copy of the model (copy.deepcopy; a dual branch's auxiliary is one too): keep "
          "such an object outside the model, or leave it out of its copies (__deepcopy__)")
"""Why a model must be copyable (:func:`copy_problem`'s callers add it)."""
Entries = Mapping[str, "Entries | None"]
"""The entries a saved state must have: each key maps to the entries of the dict it holds, or None (any value)."""


def _entry_problem(state: Mapping, entries: Entries) -> tuple[str, str | None] | None:
    """(the path of the first entry at fault, 'dual:primary'; the type found where a dict belongs, None if missing)."""
    for key, inner in entries.items():
        if key not in state:
            return key, None
        if inner is not None:
            value = state[key]
            if not isinstance(value, Mapping):
                return key, type(value).__name__
            problem = _entry_problem(value, inner)
            if problem:
                return f"{key}:{problem[0]}", problem[1]
    return None


def require_entries(state: Mapping, entries: Entries, what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first entry of ``entries`` that ``state`` lacks (as a path, 'dual:primary'): a state
    cut short or of another version would otherwise fail loading with a bare KeyError naming only the key."""
    problem = _entry_problem(state, entries)
    if problem:
        path, found = problem
        wrong = f" has no '{path}' entry" if found is None else f"'s '{path}' is a {found}, not a dict"
        raise error(f"{what}{wrong}: it is incomplete or of another version")


def state_problems(live: Mapping[str, torch.Tensor], saved: Mapping) -> list[str]:
    """What keeps ``saved`` from loading into the tensors ``live`` (a state dict), each part one phrase naming up to
    three keys: tensors of other shapes, values that are no tensor or of a dtype that does not cast to the live one
    (``torch.can_cast``: a complex tensor into a float one, a float into an integer buffer), missing and extra keys."""
    resized, wrong = [], []
    for key, tensor in live.items():
        value = saved.get(key)
        if key not in saved:
            continue
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key} ({type(value).__name__})")
        elif value.shape != tensor.shape:
            resized.append(f"{key} {list(value.shape)} (model {list(tensor.shape)})")
        elif not torch.can_cast(value.dtype, tensor.dtype):
            wrong.append(f"{key} ({value.dtype}, model {tensor.dtype})")
    missing = [key for key in live if key not in saved]
    extra = [key for key in saved if key not in live]
    parts = [f"{len(resized)} tensor(s) of other shapes, e.g. {resized[:3]}"] if resized else []
    parts += [f"{len(wrong)} of another type, e.g. {wrong[:3]}"] if wrong else []
    parts += [f"{len(missing)} missing, e.g. {missing[:3]}"] if missing else []
    parts += [f"{len(extra)} not in the model, e.g. {extra[:3]}"] if extra else []
    return parts


def check_network_state(
    module: nn.Module, saved: Mapping, error: type[Exception] = ValueError, part: str | None = None
) -> None:
    """Raise ``error`` in one line unless ``saved`` (a ``state_dict``) has ``module``'s keys and shapes, and tensors
    of dtypes that cast to its own (:func:`state_problems`): a state of another network (a wider variant, another
    scale) otherwise fails in torch's many-line ``load_state_dict`` error, or, for a dual branch, as a partition
    that differs. ``part``: the entry of a larger saved state that ``saved`` is, named at the end ('ema')."""
    parts = state_problems(module.state_dict(), saved)
    if parts:
        where = f" (in its '{part}')" if part else ""
        raise error(f"the saved state is of another network than this {type(module).__name__}: "
                    f"{'; '.join(parts)}{where}")


def left_out_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters no method trains: those that are not real floating point (no gradient; a float32
    EMA of an integer or complex tensor is meaningless) and those the user froze (``requires_grad=False``)."""
    return [name for name, p in model.named_parameters() if not (p.is_floating_point() and p.requires_grad)]


def low_precision(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Why the first floating parameter below float32 among ``named`` breaks LDT, or None: an EMA step
    ``W·frozen + (1−W)·trained`` with W near 1 rounds back to ``frozen`` in bfloat16 (it stalls) and overshoots in
    float16."""
    low = next(((name, p.dtype) for name, p in named if p.is_floating_point() and p.dtype.itemsize < 4), None)
    if low is None:
        return None
    return (f"parameter '{low[0]}' is {low[1]}: the EMAs W·frozen + (1−W)·trained stall or overshoot below "
            "float32; keep float32 parameters and use torch.autocast for speed")


def replaced_state(module: nn.Module, replacements: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """``module.state_dict(keep_vars=True)`` (its live parameters and buffers) with the parameters named in
    ``replacements`` replaced under *every* key that holds them.

    Matched by tensor identity: a tied parameter (``head.weight = emb.weight``) is listed once by
    ``named_parameters()`` but under both names by ``state_dict()``, and ``load_state_dict`` writes both, so a
    stale alias would silently overwrite the replacement.
    """
    state = module.state_dict(keep_vars=True)
    for alias, name in parameter_aliases(module).items():
        if name in replacements:
            state[alias] = replacements[name]
    return state


def cloned(
    state: dict[str, torch.Tensor], like: dict[str, torch.Tensor] | None = None
) -> "OrderedDict[str, torch.Tensor]":
    """Detached copies of ``state``, each on the device of ``like[key]`` (default: where it is)."""
    like = state if like is None else like
    return OrderedDict((k, v.detach().to(like[k].device, copy=True)) for k, v in state.items())


def set_trainable(model: nn.Module, names: Sequence[str]) -> None:
    """``requires_grad`` on exactly the parameters named in ``names``; others are frozen and lose their grad."""
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
        if name not in wanted:
            param.grad = None


def _kept_tensors(value: object) -> Iterable[torch.Tensor]:
    """The tensors inside ``value`` (a tensor, or lists, tuples and dicts of them), as a module attribute keeps them."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _kept_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _kept_tensors(item)


def _module_tensors(networks: Iterable[nn.Module]) -> Iterable[torch.Tensor]:
    """Every tensor the modules of ``networks`` keep as attributes (parameters and buffers too: their dicts)."""
    for network in networks:
        for module in network.modules():
            for value in vars(module).values():
                yield from _kept_tensors(value)


def detach_on_copy(networks: Iterable[nn.Module], memo: dict[int, object]) -> None:
    """Make ``copy.deepcopy(..., memo)`` copy detached each tensor that autograd produced and a module of ``networks``
    keeps (the weight a hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` computes, its last activation,
    an attention map kept for a visualisation): ``copy.deepcopy`` alone refuses such tensors."""
    for tensor in _module_tensors(networks):
        if tensor.grad_fn is not None and id(tensor) not in memo:
            memo[id(tensor)] = tensor.detach().clone()


def copy_problem(model: nn.Module) -> str | None:
    """Why :func:`copy_network` cannot copy ``model`` (an attribute ``copy.deepcopy`` refuses: a lock, an open file, a
    writer with a thread), naming the first such attribute, or None. Every tensor the model keeps is left uncopied
    (the memo maps it to itself), so the check costs no tensor memory and can run before any work."""
    memo: dict[int, object] = {id(t): t for t in _module_tensors([model])}
    try:
        copy.deepcopy(model, dict(memo))
        return None
    except Exception as err:  # noqa: BLE001 (what deepcopy raises depends on the object: TypeError, RuntimeError, ...)
        failure = err
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key == "_modules":  # each submodule is tried on its own
                continue
            try:
                copy.deepcopy(value, dict(memo))
            except Exception as err:  # noqa: BLE001
                where = f"{prefix}.{key}" if prefix else key
                return f"'{where}' of type {type(value).__name__} cannot be copied: {err}"
    return f"{type(model).__name__} cannot be copied: {failure}"


def copy_network(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` (hooks included), with the tensors its forwards computed and kept copied detached
    (:func:`detach_on_copy`): else a model that keeps one could get no auxiliary branch after the probe, nor a
    deployed network after training. A model that cannot be copied is a ``TypeError`` naming the attribute."""
    memo: dict[int, object] = {}
    detach_on_copy([model], memo)
    try:
        return copy.deepcopy(model, memo)
    except Exception as err:
        problem = copy_problem(model)
        if problem is None:
            raise
        raise TypeError(f"{problem}; {COPIES}") from err


def materialise(template: nn.Module, state: dict[str, torch.Tensor], requires_grad: dict[str, bool]) -> nn.Module:
    """A copy of ``template`` holding ``state``, with the user's original ``requires_grad`` flags and no gradients,
    so the deployed network behaves like the model that was handed in."""
    network = copy_network(template)
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


def user_frozen(flags: dict[str, bool]) -> list[str]:
    """The names whose ``requires_grad`` was off in ``flags`` (a model's flags when it was handed in)."""
    return [name for name, trains in flags.items() if not trains]


def check_two_groups(
    partition: Partition, model: nn.Module, empty: str | None = None, *, frozen: Sequence[str] | None = None
) -> None:
    """Raise unless ``partition`` covers ``model`` exactly, both groups are non-empty (else ``empty``, if given) and
    every grouped parameter can train and be exchanged (is floating point, at least float32, and not one the user
    froze: ``frozen``, by default the model's parameters with ``requires_grad=False`` now)."""
    problem = not_a_partition(partition)
    if problem:
        raise PartitionError(f"the partition {problem}")
    partition.check_model(model)
    if not partition.stable or not partition.unstable:
        raise PartitionError(empty or (
            f"a dual branch needs both groups non-empty (stable: {len(partition.stable)}, unstable: "
            f"{len(partition.unstable)}); use a single network for FT/LP-FT"
        ))
    named = dict(model.named_parameters())
    grouped = partition.stable + partition.unstable
    untrainable = [n for n in grouped if not named[n].is_floating_point()]
    if untrainable:
        raise PartitionError(f"parameters that are not floating point cannot train: move {untrainable[:5]} to "
                             "the partition's excluded list")
    left_frozen = set(user_frozen({n: p.requires_grad for n, p in named.items()}) if frozen is None else frozen)
    frozen_grouped = [n for n in grouped if n in left_frozen]
    if frozen_grouped:
        raise PartitionError(f"{len(frozen_grouped)} grouped parameter(s) were frozen by the user "
                             f"(requires_grad=False), so a branch would train them: {frozen_grouped[:5]}; move them "
                             "to the partition's excluded list or unfreeze them")
    problem = low_precision((n, named[n]) for n in grouped)
    if problem:
        raise PartitionError(problem)


def step_count(value: object) -> bool:
    """Whether ``value`` is a saved step count (an int >= 0, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_saved_partition(saved: dict, partition: Partition, config: ExchangeConfig, what: str) -> None:
    """Raise unless the ``saved`` partition (a ``to_dict``) decides the same exchange as ``partition`` under
    ``config``: the same groups and the same per-layer W (with DPU the scores' ranks decide them)."""
    other = Partition.from_dict(saved)
    if (other.stable, other.unstable) != (partition.stable, partition.unstable):
        raise PartitionError(f"the saved state was trained with a different partition than this {what}: prepare the "
                             "method with the one the state holds (partition=Partition.from_dict of its 'partition' "
                             "entry, resuming=True); after repartition() that is the last one")
    try:
        same = exchange_weights(other, config) == exchange_weights(partition, config)
    except PartitionError:
        same = False
    if not same:
        raise PartitionError(f"the saved state's partition has the same groups but other scores, so other exchange "
                             f"weights (DPU ranks) than this {what}")


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
            auxiliary = copy_network(model)
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
        check_two_groups(partition, self.primary, frozen=user_frozen(self.original_flags))
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
    def composite_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """The deployed network's state as the live tensors themselves (read, never modify): the auxiliary's
        stable parameters, the primary's unstable and excluded parameters and buffers (every alias of a tied one)."""
        aux = dict(self.auxiliary.named_parameters())
        return replaced_state(self.primary, {name: aux[name] for name in self.partition.stable})

    def composite_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """State dict of the deployed network (copies of :meth:`composite_tensors`)."""
        return cloned(self.composite_tensors())

    def composite(self) -> nn.Module:
        """A fresh module of the model's class holding the composite weights (one network at inference)."""
        return materialise(self.primary, self.composite_state_dict(), self.original_flags)

    # ---- resume --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything to resume; like ``nn.Module.state_dict`` its tensors are the live ones (``torch.save`` it, or
        ``copy.deepcopy`` it for an in-memory snapshot that later training does not change)."""
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
        require_entries(state, STATE_ENTRIES, "the saved dual-branch state")
        check_network_state(self.primary, state["primary"])
        check_network_state(self.auxiliary, state["auxiliary"])
        if ExchangeConfig(**state["exchange"]) != self.config:
            raise ValueError(f"the saved state used exchange {state['exchange']}, this run uses {self.config.to_dict()}")
        check_saved_partition(state["partition"], self.partition, self.config, "dual branch")
        if not step_count(state["step"]):
            raise ValueError(f"the saved dual-branch state's 'step' is {state['step']!r:.40}, not a step count")
        self.primary.load_state_dict(state["primary"], strict=True)
        self.auxiliary.load_state_dict(state["auxiliary"], strict=True)
        self.step_count = int(state["step"])
