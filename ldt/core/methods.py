"""Fine-tuning methods as objects, and a registry by name: FT, FT-EMA, LP-FT, DeFT, LDT (fixed W / DPU), LDT-S.

A method is a small object in the spirit of DomainBed's algorithm classes and ``torch.optim.swa_utils.AveragedModel``:

* :meth:`Method.branches` — the networks that train and the parameters each branch's optimizer steps;
* :meth:`Method.step` — what runs after every training step (the exchange, LDT-S's turn switch, an EMA);
* :meth:`Method.deployed` — the one network that is validated, saved and used at inference;
* :meth:`Method.state_dict` / :meth:`Method.load_state_dict` — everything needed to resume exactly (live tensors, as
  ``nn.Module.state_dict``: ``copy.deepcopy`` the state for an in-memory snapshot);
* :meth:`Method.repartition` — switch to a new partition mid-training (LDT, LDT-S).

Each method's rules live in its class: whether it warms up a head, where its partition comes from (none, the head
patterns, probe scores), which exchange options it fixes (DeFT: a fixed W), which options change its result (the run
identity), and which option values cannot work (:meth:`Method.check`, run before any data is read).
Parameters that are not floating point or that the user froze (``requires_grad=False``) before the method is made
are left out: never probed, in neither group, never trained, deployed as they are.
:func:`prepare_method` runs the method's preparation (warm-up, probe, partition) and returns it ready to train; the
training loop stays the caller's, so SR (BasicSR), classification, segmentation and plain PyTorch share it.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Literal, Sequence

import torch
import torch.distributed as dist
from pydantic import Field, field_validator
from torch import nn

from ldt.core import dual, single
from ldt.core.config import NonNegativeInt, Options, PathText, ProbeConfig, Real, Seed, WarmupConfig, unknown_choice
from ldt.core.dual import (
    DualBranch,
    EMAPlan,
    Entries,
    check_network_state,
    check_two_groups,
    copy_problem,
    detach_on_copy,
    left_out_parameters,
    low_precision,
    materialise,
    require_entries,
)
from ldt.core.exchange import ExchangeConfig, exchange_weights
from ldt.core.partition import (
    CRITERIA,
    Partition,
    PartitionError,
    match_names,
    not_a_partition,
    parameter_aliases,
    partition_by_patterns,
    partition_by_score,
    stable_count,
    tied_alias_note,
)
from ldt.core.probe import LossFn, ProbeError, batch_loss, layer_groups, probe_gradients, uninitialised
from ldt.core.single import SingleBranchLDT
from ldt.core.warmup import warmup

logger = logging.getLogger("ldt.core")
NO_GRAD_HINT = "freeze them before prepare_method, or make the probe's loss reach them"
"""What :func:`score_partition`'s warning about parameters without a probe gradient tells a caller of this API."""

STATE_FORMAT = "ldt.method/1"
BatchSource = Callable[[str, int], Iterable]
"""``batches(purpose, seed)``: the batches for ``purpose`` ('warmup' or 'probe'), in an order given by ``seed``."""
Problem = tuple[str, str]
"""(option path inside the method options, what is wrong), e.g. ``('warmup:steps', 'lpft needs ...')``. The message
names no option path: the caller names the option as its user sets it (``ldt:warmup:steps``, ``--warmup-steps``)."""


# each model prepare_method was given -> (the method's name, the requires_grad flags it read): a method may set them
# (a dual branch's primary freezes its unstable group), and a second prepare_method must not read those as the user's
PREPARED: "weakref.WeakKeyDictionary[nn.Module, tuple[str, dict[str, bool]]]" = weakref.WeakKeyDictionary()


class MethodError(ValueError):
    """A method cannot run with these options or on this model; the message names the option."""


class MethodConfig(Options):
    """Options of a method (the ``ldt:`` block of an SR option file). Each method reads only what it uses."""

    method: str = Field("ldt", description="the method (see the methods table)")
    criterion: Literal[CRITERIA] = Field("var", description="probe score that ranks the layers (paper Table 2)")
    unstable_ratio: Real = Field(0.4, gt=0, lt=1, description="fraction of layers marked unstable (paper Table 9)")
    group_by: Literal["tensor", "module"] = Field("tensor", description="a layer is one parameter tensor (official) or one module")
    seed: Seed = Field(0, description="seed of the probe's data order and of the 'random' criterion")
    partition_file: PathText | None = Field(None, description="reuse a saved partition.json instead of probing")
    head_patterns: list[str] | None = Field(
        None, description="regexes of the head (DeFT's unstable group, LP-FT's warm-up); null = the network's own"
    )
    repartition_every: NonNegativeInt = Field(0, description="re-probe and re-freeze every N iterations (0 = off)")
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    exchange: ExchangeConfig = Field(default_factory=ExchangeConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        method_class(name)
        return name


@dataclass
class Branch:
    """One network that trains: a name for logs, the module to run forward, the parameters its optimizer steps.

    ``alternating``: the trainable subset of ``parameters`` changes during training (LDT-S trains its groups in
    turn), so a wrapper such as DDP must register all of them and tolerate unused ones.
    """

    name: str
    module: nn.Module
    parameters: list[nn.Parameter]
    alternating: bool = False


def _head(config: MethodConfig, default: Sequence[str] | None) -> list[str] | None:
    patterns = config.head_patterns if config.head_patterns is not None else default
    return list(patterns) if patterns is not None else None


def _check_patterns(
    model: nn.Module, patterns: list[str] | None, where: str, role: str, left_out: set[str]
) -> list[Problem]:
    if patterns is None:
        return [(where, f"no default {role} for {type(model).__name__}: set {where} (regexes of parameter names)")]
    if not patterns:
        return [(where, f"the {role} patterns are empty")]
    names = [name for name, _ in model.named_parameters()]
    try:
        matched, unmatched = match_names(names, patterns)
    except re.error as err:
        return [(where, f"invalid regex: {err}")]
    if unmatched:
        return [(where, f"{unmatched} match no parameter of {type(model).__name__}"
                        f"{tied_alias_note(model, unmatched)}")]
    trained = [name for name in matched if name not in left_out]
    if not trained:
        return [(where, f"the {role} patterns match only parameters that do not train (frozen or not floating "
                        f"point): {matched[:5]}")]
    if len(trained) == len(names) - len(left_out):
        return [(where, f"the {role} patterns match every parameter{' that trains' if left_out else ''}, leaving "
                        f"nothing outside the {role}")]
    return []


def _wrapper(model: nn.Module) -> str | None:
    """The name of the wrapper around ``model`` (DataParallel, DDP, torch.compile), if any: its parameter names carry
    a prefix ('module.', '_orig_mod.') that neither the partition nor the deployed architecture has."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return type(model).__name__
    return "torch.compile" if isinstance(getattr(model, "_orig_mod", None), nn.Module) else None


def _model_problems(model: nn.Module, left_out: set[str]) -> list[Problem]:
    """What makes ``model`` itself unusable for every method, whatever the options."""
    wrapper = _wrapper(model)
    if wrapper:
        return [("model", f"{wrapper} wraps the model: pass the bare model to prepare_method and wrap the branches "
                          "afterwards (method.branches())")]
    lazy = uninitialised(model, "prepare_method")
    if lazy:
        return [("model", lazy)]
    trained = [(name, p) for name, p in model.named_parameters() if name not in left_out]
    if not trained:
        return [("model", f"no parameter of {type(model).__name__} trains (all are frozen with requires_grad=False "
                          "or not floating point)")]
    precision, copying = low_precision(trained), copy_problem(model)
    return [("model", problem) for problem in (precision, copying and f"{copying}; {dual.COPIES}") if problem]


def check_flags(method: "Method", branch: str, named: Iterable[tuple[str, nn.Parameter]], trains: set[str]) -> None:
    """Raise unless exactly the parameters in ``trains`` of ``branch`` require grad: the method sets the branches'
    flags (the user's are read once, at prepare_method), so a flag changed since would be silently ignored (a tensor
    unfrozen mid-training is in no optimizer) or undone (at the next turn switch or repartition)."""
    changed = next(((name, p.requires_grad) for name, p in named if p.requires_grad != (name in trains)), None)
    if changed is None:
        return
    name, flag = changed
    fix = "freeze a tensor before prepare_method (it is then left out)"
    if method.partition_source == "score":
        fix += ", or repartition() with it in the partition's excluded list"
    raise MethodError(f"requires_grad of '{name}' in the {branch} branch was set to {flag} after prepare_method: "
                      f"{method.name} decides which tensors train from the flags at prepare_method and sets the "
                      f"branches' flags itself; {fix}")


def _probe_size_problems(
    model: nn.Module, config: MethodConfig, grouped: dict[str, list[str]], left_out: set[str]
) -> list[Problem]:
    """Why ``probe:num_batches`` cannot give ``config.criterion`` a value for every layer, before any batch is read:
    ``elementwise_var`` is a variance across batches, and the pooled criteria (``var``, ``var_over_mean``) have
    none for a one-element layer (a scalar gate) from one batch. The pooled ones are defined from one batch otherwise
    (the variance over the elements of its gradient, as the official ``torch.var(torch.stack(grads))``)."""
    count = config.probe.num_batches
    if count >= 2 or config.criterion not in ("elementwise_var", "var", "var_over_mean"):
        return []
    if config.criterion == "elementwise_var":
        return [("probe:num_batches", f"criterion elementwise_var is a variance across probe batches: it needs at "
                                      f"least 2, got {count}")]
    named = dict(model.named_parameters())
    single = [layer for layer, names in grouped.items()
              if sum(named[n].numel() for n in names if n not in left_out) == 1]
    if not single:
        return []
    return [("probe:num_batches", f"criterion {config.criterion} pools the elements of a layer's probe gradients, "
                                  f"so {count} batch gives no variance for the {len(single)} layer(s) of one element "
                                  f"({', '.join(single[:5])}): use at least 2")]


def _decay_problem(decay: float | None) -> str | None:
    return None if decay is None or 0.0 <= decay < 1.0 else f"must be in [0, 1), got {decay}"


def partition_problems(
    partition: Partition, model: nn.Module, config: MethodConfig, left_out: Sequence[str]
) -> list[str]:
    """Why a given partition (a file, a training state) cannot drive this method's exchange on ``model``, if not."""
    left_out = set(left_out)
    trained = [name for name in partition.stable + partition.unstable if name in left_out]
    if trained:
        return [f"it puts {len(trained)} parameter(s) that do not train (frozen or not floating point) in a group: "
                f"{trained[:5]}; list them in 'excluded'"]
    try:
        check_two_groups(partition, model)
        exchange_weights(partition, config.exchange)
    except PartitionError as err:
        return [str(err)]
    return []


class Method:
    """Base of all methods; see the module docstring. Subclasses set the class attributes and the state hooks."""

    name: ClassVar[str]
    label: ClassVar[str]  # for tables and logs
    summary: ClassVar[str]  # one line: what trains and what is deployed
    warmup_rule: ClassVar[Literal["never", "optional", "required"]] = "optional"
    partition_source: ClassVar[Literal["none", "head", "score"]] = "none"
    repartitions: ClassVar[bool] = False
    forced_exchange: ClassVar[dict] = {}
    ema_by_default: ClassVar[bool] = False

    model: nn.Module  # the network the method trains (the primary for dual branches); the deployed template
    partition: Partition | None
    repartition_every: int = 0  # read by the loop that drives repartition(), never by train_step

    # ---- rules --------------------------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, config: MethodConfig) -> MethodConfig:
        """``config`` with the options this method fixes (e.g. DeFT's fixed W) applied."""
        if not cls.forced_exchange:
            return config
        return config.model_copy(update={"exchange": config.exchange.model_copy(update=cls.forced_exchange)})

    @classmethod
    def identity(cls, config: MethodConfig) -> dict:
        """The options that change this method's result (for run identities): what it does not read is left out."""
        config = cls.resolve(config)
        values: dict = {"method": cls.name}
        if cls.warmup_rule != "never" and config.warmup.steps:
            values["warmup"] = config.warmup.to_dict()
        if cls.partition_source == "head" or (cls.warmup_rule != "never" and config.warmup.steps):
            values["head_patterns"] = config.head_patterns
        if cls.partition_source == "score":
            values.update(criterion=config.criterion, unstable_ratio=config.unstable_ratio, group_by=config.group_by,
                          seed=config.seed, partition_file=config.partition_file, probe=config.probe.to_dict(),
                          repartition_every=config.repartition_every)
        if cls.partition_source != "none":
            values["exchange"] = config.exchange.identity()
        return values

    @classmethod
    def check(cls, config: MethodConfig, model: nn.Module, head_patterns: Sequence[str] | None = None) -> list[Problem]:
        """Every problem these options have with this method and ``model`` (which may live on the meta device)."""
        config = cls.resolve(config)
        left_out = set(left_out_parameters(model))
        problems: list[Problem] = _model_problems(model, left_out)
        if problems:
            return problems
        head = _head(config, head_patterns)
        if cls.warmup_rule == "never" and config.warmup.steps:
            problems.append(("warmup:steps", f"{cls.name} trains every layer from the first step; a head warm-up "
                                             "first is LP-FT (method lpft)"))
        if cls.warmup_rule == "required" and not config.warmup.steps:
            problems.append(("warmup:steps", f"{cls.name} needs its head warm-up: must be > 0"))
        if cls.warmup_rule != "never" and config.warmup.steps:
            patterns = config.warmup.patterns if config.warmup.patterns is not None else head
            where = "warmup:patterns" if config.warmup.patterns is not None else "head_patterns"
            problems += _check_patterns(model, patterns, where, "head", left_out)
        if config.repartition_every and not cls.repartitions:
            able = ", ".join(name for name, method in METHODS.items() if method.repartitions)
            problems.append(("repartition_every", f"{cls.name} has no partition to re-probe ({able} do)"))
        if cls.partition_source == "head":
            problems += _check_patterns(model, head, "head_patterns", "head", left_out)
        if cls.partition_source == "score":
            problems += cls._check_score_partition(config, model, left_out)
        return problems

    @classmethod
    def _check_score_partition(cls, config: MethodConfig, model: nn.Module, left_out: set[str]) -> list[Problem]:
        problems: list[Problem] = []
        if config.partition_file is not None:
            if config.repartition_every:
                problems.append(("repartition_every", "cannot re-probe a fixed partition_file"))
            path = Path(config.partition_file).expanduser()
            try:
                partition = Partition.load(path, model)
            except PartitionError as err:
                return problems + [("partition_file", str(err))]
            return problems + [("partition_file", f"{path}: {problem}")
                               for problem in partition_problems(partition, model, config, sorted(left_out))]
        if config.repartition_every and config.criterion == "random":
            problems.append(("repartition_every", "re-probing needs a probe-based criterion, not 'random'"))
        grouped = layer_groups(model, config.group_by)
        groups = grouped.values()
        layers = sum(any(name not in left_out for name in names) for names in groups)
        if config.criterion != "random":
            problems += _probe_size_problems(model, config, grouped, left_out)
        trained = f"{layers} trained layers" if left_out else f"{layers} layers"
        if layers < 2:
            problems.append(("unstable_ratio", f"{type(model).__name__} has {layers} {'trained ' * bool(left_out)}"
                                               f"layer(s) (group_by {config.group_by}); LDT needs at least 2"))
        elif stable_count(layers, config.unstable_ratio) == 0:
            largest = math.floor((1 - Fraction(1, layers)) * 10**4) / 10**4  # rounded down: usable as written
            problems.append(("unstable_ratio", f"{config.unstable_ratio} leaves the stable group empty for the "
                                               f"{trained} of {type(model).__name__} (group_by "
                                               f"{config.group_by}): use at most {largest:g}"))
        return problems

    # ---- preparation --------------------------------------------------------------------------------------------
    @classmethod
    def make_partition(
        cls,
        model: nn.Module,
        config: MethodConfig,
        batches: BatchSource,
        loss_fn: LossFn,
        head_patterns: Sequence[str] | None,
        progress: bool,
        log: Callable[[str], None],
        warn: Callable[[str], None] = logger.warning,
        no_grad_hint: str = NO_GRAD_HINT,
    ) -> Partition | None:
        if cls.partition_source == "none":
            return None
        if cls.partition_source == "head":
            return partition_by_patterns(model, _head(config, head_patterns), criterion=cls.name,
                                         excluded=left_out_parameters(model))
        return score_partition(model, config, batches, loss_fn, seed=config.seed, progress=progress, log=log,
                               warn=warn, no_grad_hint=no_grad_hint)

    # ---- training -----------------------------------------------------------------------------------------------
    def branches(self) -> list[Branch]:
        raise NotImplementedError

    def step(self) -> None:
        """After every training step (all branches' optimizers stepped)."""

    def train_step(self, batch, loss_fn: LossFn, optimizers: Sequence[torch.optim.Optimizer]) -> dict[str, float]:
        """One plain step: each branch's forward, backward and optimizer step in turn, then :meth:`step`.

        One branch after the other, so activations are never held for two branches at once. ``optimizers``: one per
        branch, in the order of :meth:`branches`, each over its ``parameters`` (checked once per optimizer and
        partition: :meth:`check_optimizers`). ``repartition_every`` is not driven here. Returns the losses.
        """
        if self.repartition_every:
            raise MethodError("repartition_every: train_step does not re-probe; set it to 0, or drive branches() and "
                              "step() from your loop and call repartition() every N steps (as the SR model does)")
        if not callable(loss_fn):
            raise MethodError(f"loss_fn must be callable (model, batch) -> loss, got {type(loss_fn).__name__}")
        branches = self.branches()
        for branch in branches:
            if any(p.dtype.itemsize < 4 for p in branch.parameters):  # model.half() after prepare_method
                raise MethodError(f"the {branch.name} branch: {low_precision(branch.module.named_parameters())}")
        optimizers = self.check_optimizers(optimizers, branches)
        losses = {}
        for branch, optimizer in zip(branches, optimizers, strict=True):
            branch.module.train()
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(loss_fn, branch.module, batch, f"{self.name}: the {branch.name} branch", MethodError)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.name}: the loss of the {branch.name} branch is {loss.item()}")
            loss.backward()
            if not any(p.grad is not None for p in branch.parameters if p.requires_grad):
                raise MethodError(f"{self.name}: the {branch.name} branch: the loss gave none of the branch's trained "
                                  "parameters a gradient: loss_fn must compute it with the model it is given "
                                  "(loss_fn(model, batch) -> model(x)), not with a network of its own (the model "
                                  "passed to prepare_method is only the primary)")
            optimizer.step()
            losses[branch.name] = loss.item()
        self.step()
        return losses

    def check_optimizers(
        self, optimizers: Iterable[torch.optim.Optimizer], branches: list[Branch] | None = None
    ) -> list[torch.optim.Optimizer]:
        """Raise unless there is one optimizer per branch, in the order of :meth:`branches`, each stepping exactly its
        branch's ``parameters`` (parameter groups may split them): swapped, shared or stale optimizers (not rebuilt
        after :meth:`repartition`), or LDT-S's built over only the group that requires grad now, would silently
        train nothing. :meth:`train_step` calls it every step; a loop of your own calls it after building them. The
        verdict is kept per optimizer object, partition and the tensors it holds (a group added with
        ``add_param_group`` is checked; so is a deep copy of this method object), so a check costs a lookup and one
        pass over the optimizer's parameter ids. Returns the optimizers as a list (a generator is read once)."""
        branches = self.branches() if branches is None else branches
        if isinstance(optimizers, torch.optim.Optimizer):
            names = ", ".join(branch.name for branch in branches)
            raise MethodError(f"optimizers: pass a list with one optimizer per branch ({names}), got a single "
                              f"{type(optimizers).__name__}")
        optimizers = list(optimizers)
        odd = next((i for i, opt in enumerate(optimizers) if not isinstance(opt, torch.optim.Optimizer)), None)
        if odd is not None:
            raise MethodError(f"optimizers[{odd}] is a {type(optimizers[odd]).__name__}, not a torch.optim.Optimizer")
        if len(optimizers) != len(branches):
            raise MethodError(f"{self.name} trains {len(branches)} branch(es) ({', '.join(b.name for b in branches)}): "
                              f"pass one optimizer per branch in that order, got {len(optimizers)}")
        verified = self.__dict__.setdefault("_verified_optimizers", {})
        for index, (branch, optimizer) in enumerate(zip(branches, optimizers)):
            # add_param_group (or a list edited in place) changes what it steps: the tensors it holds are in the key
            holding = tuple(id(p) for group in optimizer.param_groups for p in group["params"])
            ref, owner, partition, at, held_then = verified.get(id(optimizer), (None,) * 5)
            if ref is not None and ref() is optimizer and owner == id(self) and partition is self.partition \
                    and at == index and held_then == holding:
                continue
            held = set(holding)
            names = {id(p): name for name, p in branch.module.named_parameters()}
            missing = [names.get(id(p), "?") for p in branch.parameters if id(p) not in held]
            foreign = len(held - set(names))
            if missing or foreign:
                what = (f"lacks {len(missing)} of its trainable parameters (e.g. '{missing[0]}')" if missing
                        else f"holds {foreign} parameter(s) of another network")
                raise MethodError(f"the optimizer of the {branch.name} branch {what}: build one optimizer per branch "
                                  "over branch.parameters, in the order of branches(), again after repartition()")
            if branch.alternating:
                self._guard_turns(optimizer)
            verified[id(optimizer)] = (weakref.ref(optimizer), id(self), self.partition, index, holding)
        return optimizers

    def _guard_turns(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the optimizer of an alternating branch refuse to step after :meth:`step` switched turns (LDT-S)."""

    def _record_parameters(self, *modules: nn.Module) -> None:
        """Remember the named parameters and saved buffers of the networks that train (the branches), as the method
        was made with them."""
        self._recorded = [(module, tuple(module.named_parameters())) for module in modules]
        self._recorded_buffers = [saved_buffers(module) for module in modules]

    def _unchanged_parameters(self) -> list[tuple[tuple[str, nn.Parameter], ...]]:
        """The recorded networks' named parameters now, after checking that they are still the very tensors under the
        same names, and that the buffers a state dict saves have the same names: a parameter added, replaced or
        removed after the method was made (an adapter, a new head, ``load_state_dict(assign=True)``) is in no group,
        and a tensor added or removed is in neither the other branch nor the EMA, so the deployed network would miss
        it or keep the old tensor. Buffers are compared by name only: ``Module.to`` replaces them. One scan of each
        network's parameters and one of its buffers, as building the branch lists costs."""
        current = []
        buffers = self.__dict__.get("_recorded_buffers")  # absent from a method pickled before buffers were recorded
        for index, (module, recorded) in enumerate(self.__dict__.get("_recorded", ())):
            now = tuple(module.named_parameters())
            culprit = _changed(recorded, now, lambda a, b: a[1] is b[1])
            kind = "parameters"
            if culprit is None and buffers is not None:
                culprit, kind = _changed(buffers[index], saved_buffers(module), lambda a, b: True), "buffers"
            if culprit is not None:
                raise MethodError(f"the {kind} of the model changed after prepare_method (e.g. {culprit}): a tensor "
                                  "added, replaced or removed since is in no group and in neither the other branch "
                                  "nor the EMA; prepare the method on the final model (adapters, heads included)")
            current.append(now)
        return current

    def to(self, *args, **kwargs) -> "Method":
        """Move every network of the method, as ``nn.Module.to`` (same arguments), and return the method.

        ``method.model`` is only the primary of a dual branch: this moves the auxiliary too (LDT-S's host copies take
        the new dtype and stay on the host; a :class:`DeployedEMA`'s EMA follows). A dtype below float32 is refused,
        as by :func:`prepare_method`."""
        dtype = torch._C._nn._parse_to(*args, **kwargs)[1]
        if dtype is not None and dtype.is_floating_point:
            floating = [(name, p) for name, p in self.model.named_parameters() if p.is_floating_point()]
            problem = low_precision((name, torch.empty(0, dtype=dtype)) for name, _ in floating[:1])
            if problem:
                raise MethodError(f"method.to({dtype}): {problem}")
        self._move(*args, **kwargs)
        return self

    def _move(self, *args, **kwargs) -> None:
        self.model.to(*args, **kwargs)

    def __getstate__(self) -> dict:
        """Pickle (``torch.save(method)``) and ``copy.deepcopy`` without the optimizer verdicts: they hold weak
        references, which cannot be pickled, and name optimizers that a copy does not have."""
        state = self.__dict__.copy()
        state.pop("_verified_optimizers", None)
        return state

    def __deepcopy__(self, memo: dict[int, object]) -> "Method":
        """A copy of :meth:`__getstate__` whose networks are copied as :func:`~ldt.core.dual.copy_network` does:
        the tensors their forwards computed and kept (hook-based weight_norm's weight) copied detached, which a plain
        ``copy.deepcopy`` refuses."""
        detach_on_copy(self._networks(), memo)
        twin = object.__new__(type(self))
        memo[id(self)] = twin
        twin.__dict__.update(copy.deepcopy(self.__getstate__(), memo))
        return twin

    def _networks(self) -> list[nn.Module]:
        """The networks the method holds (those that train: the branches), for :meth:`__deepcopy__`."""
        return [module for module, _ in self.__dict__.get("_recorded", ())]

    def repartition(self, partition: Partition) -> None:
        """Switch to ``partition`` (the trainable tensors change: rebuild the optimizers over :meth:`branches`)."""
        raise MethodError(f"{self.name} has no partition to change")

    # ---- deployment ---------------------------------------------------------------------------------------------
    def deployed_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """The deployed network's state dict as the live parameters, buffers or held tensors themselves (no copies:
        read, never modify); every alias of a tied parameter holds the same tensor."""
        raise NotImplementedError

    def deployed_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        self._unchanged_parameters()
        self._warn_if_unmoved()
        return once_per_tensor(self.deployed_tensors(), lambda key, tensor: tensor.detach().clone())  # a tie stays one

    def _unmoved_until(self) -> str | None:
        """When the deployed copy of every group first moves (``'the first exchange (step 10)'``), if it has not moved
        yet although training has begun; None otherwise (a method that deploys what it trains)."""
        return None

    def _warn_if_unmoved(self) -> None:
        """Warn once, on the ``ldt.core`` logger, when the deployed network is still the prepared one after training
        steps: an ``exchange:interval`` longer than the steps trained so far (a short run, an early validation)."""
        until = self._unmoved_until()
        if until is None or self.__dict__.get("_warned_unmoved"):
            return
        self._warned_unmoved = True
        logger.warning(f"the deployed network is still the one prepare_method was given: {self.name} trained "
                       f"{self._steps_taken()} step(s), and its deployed copy of each group moves only at {until}; "
                       "train at least that long, or lower exchange:interval")

    def _steps_taken(self) -> int:
        return 0

    def deployed(self) -> nn.Module:
        """A fresh module of the model's class holding the deployed weights (loads with ``strict=True``)."""
        return materialise(self.model, self.deployed_state_dict(), self.original_flags)

    def checkpoint(self) -> dict[str, "OrderedDict[str, torch.Tensor]"]:
        """The weights to save, under BasicSR's keys: ``params`` (and ``params_ema`` when an EMA is deployed)."""
        return {"params": self.deployed_state_dict()}

    @property
    def deployed_key(self) -> str:
        """The checkpoint key of the deployed network."""
        return "params"

    def held_tensors(self) -> list[torch.Tensor]:
        """Tensors the method keeps besides its branches' modules (EMA copies, parked groups): its extra memory."""
        return []

    # ---- resume -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything to resume exactly. As ``nn.Module.state_dict``, its tensors are the live ones: ``torch.save``
        it, or ``copy.deepcopy`` it for an in-memory snapshot (``best = copy.deepcopy(method.state_dict())``)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ the registry

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available by ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered method called ``name``; an unknown name raises with the choices and a "did you mean"."""
    if name not in METHODS:
        raise MethodError(unknown_choice("method", name, list(METHODS)))
    return METHODS[name]


# ------------------------------------------------------------------------------------------------- the methods


@register_method
class FineTune(Method):
    name = "ft"
    label = "FT"
    summary = "every layer trains from the start; the trained network is deployed"
    warmup_rule = "never"

    def __init__(self, model: nn.Module, partition: Partition | None = None, config: MethodConfig | None = None) -> None:
        self.model, self.partition = model, None
        self.original_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self.left_out = set(left_out_parameters(model))
        self._record_parameters(model)

    def branches(self) -> list[Branch]:
        (named,) = self._unchanged_parameters()
        trained = [(name, p) for name, p in named if name not in self.left_out]
        check_flags(self, "net", named, {name for name, _ in trained})
        return [Branch("net", self.model, [p for _, p in trained])]

    def deployed_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        return self.model.state_dict(keep_vars=True)

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "method": self.name, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.name, {"model": None})
        check_network_state(self.model, state["model"], MethodError)
        self.model.load_state_dict(state["model"], strict=True)


@register_method
class FineTuneEMA(FineTune):
    name = "ft_ema"
    label = "FT-EMA"
    summary = ("FT, deploying an EMA of the trained weights (decay: ema_decay, default the fixed-W exchange's "
               "per-step decay weight^(1/interval))")
    ema_by_default = True


@register_method
class LinearProbeFineTune(FineTune):
    name = "lpft"
    label = "LP-FT"
    summary = "the head alone for warmup:steps (linear probe), then every layer; the trained network is deployed"
    warmup_rule = "required"


class DualMethod(Method):
    """A dual branch (primary trains the stable group, auxiliary the unstable one); deploys the composite."""

    def __init__(self, model: nn.Module, partition: Partition, config: MethodConfig) -> None:
        self.dual = DualBranch(model, partition, config.exchange)
        self.model, self.original_flags = model, self.dual.original_flags
        self.repartition_every = config.repartition_every
        self._record_parameters(self.dual.primary, self.dual.auxiliary)

    @property
    def partition(self) -> Partition:
        return self.dual.partition

    def branches(self) -> list[Branch]:
        primary, auxiliary = self._unchanged_parameters()  # the same order as primary_/auxiliary_parameters()
        moved = next(((name, a, b) for (name, a), (_, b) in zip(primary, auxiliary)
                      if a.dtype != b.dtype or a.device != b.device), None)
        if moved is not None:
            name, a, b = moved
            raise MethodError(f"the primary branch is {a.dtype} on {a.device} but the auxiliary {b.dtype} on "
                              f"{b.device} (e.g. '{name}'): method.model is the primary only; move a dual-branch "
                              "method with method.to(...)")
        check_flags(self, "primary", primary, set(self.partition.stable))
        check_flags(self, "auxiliary", auxiliary, set(self.partition.unstable))
        return [Branch("primary", self.dual.primary, [p for _, p in primary if p.requires_grad]),
                Branch("auxiliary", self.dual.auxiliary, [p for _, p in auxiliary if p.requires_grad])]

    def step(self) -> None:
        self.dual.step()

    def _move(self, *args, **kwargs) -> None:
        self.dual.to(*args, **kwargs)

    def deployed_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        return self.dual.composite_tensors()

    def _steps_taken(self) -> int:
        return self.dual.step_count

    def _unmoved_until(self) -> str | None:
        interval = self.dual.config.interval
        return f"the first exchange (step {interval})" if 0 < self.dual.step_count < interval else None

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "method": self.name, "dual": self.dual.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.name, {"dual": dual.STATE_ENTRIES})
        self.dual.load_state_dict(state["dual"])


@register_method
class DeFT(DualMethod):
    name = "deft"
    label = "DeFT"
    summary = "dual branch with body = stable, head_patterns = unstable, fixed W; deploys the composite"
    partition_source = "head"
    forced_exchange = {"dpu": False}


@register_method
class LDT(DualMethod):
    name = "ldt"
    label = "LDT"
    summary = "probe -> partition by criterion -> dual branch, fixed W or DPU (exchange:dpu); deploys the composite"
    partition_source = "score"
    repartitions = True

    def repartition(self, partition: Partition) -> None:
        self.dual.repartition(partition)


@register_method
class LDTFixedWeight(LDT):
    name = "ldt_fixed"
    label = "LDT (fixed W)"
    summary = "LDT with the fixed W (exchange:dpu false)"
    forced_exchange = {"dpu": False}


@register_method
class LDTDPU(LDT):
    name = "ldt_dpu"
    label = "LDT+DPU"
    summary = "LDT with DPU (exchange:dpu true)"
    forced_exchange = {"dpu": True}


@register_method
class LDTSingle(Method):
    name = "ldt_s"
    label = "LDT-S"
    summary = "probe -> partition -> one network training its groups in turn, EMA partners on the host (LDT-S)"
    partition_source = "score"
    repartitions = True

    def __init__(self, model: nn.Module, partition: Partition, config: MethodConfig) -> None:
        self.single = SingleBranchLDT(model, partition, config.exchange)
        self.model, self.original_flags = model, self.single.original_flags
        self.repartition_every = config.repartition_every
        self._record_parameters(model)

    @property
    def partition(self) -> Partition:
        return self.single.partition

    def branches(self) -> list[Branch]:
        (named,) = self._unchanged_parameters()
        check_flags(self, "net", named, set(getattr(self.partition, self.single.phase)))
        return [Branch("net", self.model, self.single.trainable_parameters(), alternating=True)]

    def step(self) -> None:
        self.single.step()

    def _guard_turns(self, optimizer: torch.optim.Optimizer) -> None:
        self.single.guard(optimizer, MethodError)

    def _move(self, *args, **kwargs) -> None:
        self.single.to(*args, **kwargs)

    def repartition(self, partition: Partition) -> None:
        self.single.repartition(partition)

    def held_tensors(self) -> list[torch.Tensor]:
        return [t for group in self.single.ema.values() for t in group] + list(self.single.parked)

    def deployed_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        return self.single.composite_tensors()

    def _steps_taken(self) -> int:
        return self.single.step_count

    def _unmoved_until(self) -> str | None:
        turn = self.single.phase_steps  # a group's EMA moves at the end of its turn; the second group's at 2 turns
        return f"the end of each group's first turn (steps {turn} and {2 * turn})" \
            if 0 < self.single.step_count < 2 * turn else None

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "method": self.name, "single": self.single.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.name, {"single": single.STATE_ENTRIES})
        self.single.load_state_dict(state["single"])


def saved_buffers(module: nn.Module) -> tuple[tuple[str, None], ...]:
    """The names of the buffers ``module.state_dict()`` saves (not the non-persistent ones), as (name, None) pairs."""
    return tuple((f"{prefix}.{name}" if prefix else name, None) for prefix, sub in module.named_modules()
                 for name, buffer in sub._buffers.items()
                 if buffer is not None and name not in sub._non_persistent_buffers_set)


def _changed(before: tuple[tuple[str, object], ...], now: tuple[tuple[str, object], ...],
             same: Callable[[tuple, tuple], bool]) -> str | None:
    """How ``now`` differs from ``before`` (named tensors, ``same`` comparing two pairs of one name), quoted for a
    message: the first name added or replaced, else removed, else re-registered in another order; None if unchanged."""
    if len(now) == len(before) and all(a[0] == b[0] and same(a, b) for a, b in zip(now, before)):
        return None
    earlier = dict(before)
    added = next((name for name, tensor in now if name not in earlier or not same((name, tensor),
                                                                                   (name, earlier[name]))), None)
    if added is not None:
        return f"'{added}'"
    names = {name for name, _ in now}
    removed = next((name for name, _ in before if name not in names), None)
    if removed is not None:
        return f"'{removed}' removed"
    return f"'{next(a[0] for a, b in zip(before, now) if a[0] != b[0])}' re-registered in another order"


def once_per_tensor(
    state: dict[str, torch.Tensor], fn: Callable[[str, torch.Tensor], torch.Tensor]
) -> "OrderedDict[str, torch.Tensor]":
    """``fn(key, tensor)`` for each distinct tensor of ``state``: the aliases of a tied parameter share the result."""
    done: dict[int, torch.Tensor] = {}
    for key, tensor in state.items():
        if id(tensor) not in done:
            done[id(tensor)] = fn(key, tensor)
    return OrderedDict((key, done[id(tensor)]) for key, tensor in state.items())


def _check_state(state: dict, name: str, entries: Entries, ema: bool = False) -> None:
    """Raise unless ``state`` is a state of method ``name`` (with an EMA or not, as ``ema``) holding ``entries``."""
    if not isinstance(state, Mapping):  # e.g. checkpoint.get('method') of a checkpoint saved without it
        raise MethodError(f"not a {name!r} method state: got {type(state).__name__}, not method.state_dict()'s dict")
    if state.get("format") != STATE_FORMAT or state.get("method") != name:
        raise MethodError(f"not a {name!r} method state (format {state.get('format')!r}, method {state.get('method')!r})")
    if not ema and "ema" in state:  # DeployedEMA's state holds the method's own state under 'inner'
        raise MethodError(f"the saved state was trained with ema_decay {state.get('ema_decay')}: prepare this method "
                          f"with ema_decay={state.get('ema_decay')} to resume it")
    if ema and "ema" not in state:
        raise MethodError("the saved state has no EMA network (it was trained without ema_decay)")
    require_entries(state, entries, "the saved method state", MethodError)


class DeployedEMA(Method):
    """Any method whose deployed network is an EMA of that method's deployed network, updated after every step.

    BasicSR's ``train:ema_decay``: ``ema = decay·ema + (1−decay)·deployed`` on the parameters; buffers (e.g.
    BatchNorm statistics) are copied from the deployed network. Saved beside the method's own network as BasicSR's
    ``params_ema``. Training is the wrapped method's, unchanged.
    """

    def __init__(self, inner: Method, decay: float) -> None:
        problem = _decay_problem(decay)
        if problem:
            raise MethodError(f"ema_decay {problem}")
        self.inner, self.decay = inner, float(decay)
        self.name, self.label, self.summary = inner.name, inner.label, inner.summary
        self.model, self.original_flags = inner.model, inner.original_flags
        self.repartition_every = inner.repartition_every
        self.ema = once_per_tensor(inner.deployed_tensors(), lambda key, tensor: tensor.detach().clone())
        self._build_plan()

    def _build_plan(self) -> None:
        """Average what trains, copy the rest (buffers, parameters that do not train), each shared tensor once.

        The plan holds the live tensors themselves (parameters, buffers, LDT-S's EMA), not state-dict views, so it
        keeps tracking after ``copy.deepcopy`` and ``Module.to`` (:meth:`step` then moves the EMA along).
        """
        live = self.inner.deployed_tensors()
        aliases = parameter_aliases(self.model)
        averaged: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.copied: list[tuple[torch.Tensor, torch.Tensor]] = []
        seen: set[int] = set()
        for key, source in live.items():
            target = self.ema[key]
            if id(target) not in seen:
                seen.add(id(target))
                trains = self.original_flags.get(aliases.get(key, ""), False)
                (averaged if trains else self.copied).append((target, source))
        self.average = EMAPlan([t for t, _ in averaged], [s for _, s in averaged], [self.decay] * len(averaged))
        self.pairs = averaged + self.copied
        # Module.to moves a parameter in place but replaces a buffer by a new tensor: where each buffer lives, to
        # see that it was replaced without building the deployed state dict every step.
        homes = {id(buffer): (module, name) for module in self.model.modules()
                 for name, buffer in module._buffers.items() if buffer is not None}
        self.buffers = [(*homes[id(source)], source) for _, source in self.copied if id(source) in homes]

    def _follow_sources(self) -> None:
        """Move the EMA to the device and dtype of the tensors it follows (after ``Module.to``), keeping ties; not
        below float32 (``model.half()`` after prepare_method), where the EMA stalls."""
        live = self.inner.deployed_tensors()
        problem = low_precision((key, live[key]) for key, target in self.ema.items() if target.is_floating_point())
        if problem:
            raise MethodError(f"ema_decay: {problem}")
        self.ema = once_per_tensor(self.ema, lambda key, tensor: tensor.to(live[key].device, live[key].dtype))
        self._build_plan()

    @property
    def partition(self) -> Partition | None:
        return self.inner.partition

    def _unchanged_parameters(self) -> list[tuple[tuple[str, nn.Parameter], ...]]:
        return self.inner._unchanged_parameters()

    def _networks(self) -> list[nn.Module]:
        return self.inner._networks()

    def branches(self) -> list[Branch]:
        return self.inner.branches()

    def _guard_turns(self, optimizer: torch.optim.Optimizer) -> None:
        self.inner._guard_turns(optimizer)

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        # Every tensor, not one: moving a single submodule (``model.head.to(...)``) must move its EMA too.
        if any((target.device, target.dtype) != (source.device, source.dtype) for target, source in self.pairs) or \
                any(module._buffers.get(name) is not source for module, name, source in self.buffers):
            self._follow_sources()
        self.average.apply()
        for target, source in self.copied:
            target.copy_(source)

    def repartition(self, partition: Partition) -> None:
        self.inner.repartition(partition)
        self._build_plan()

    def _move(self, *args, **kwargs) -> None:
        self.inner._move(*args, **kwargs)
        self._follow_sources()

    def deployed_tensors(self) -> "OrderedDict[str, torch.Tensor]":
        return self.ema

    def _steps_taken(self) -> int:
        return self.inner._steps_taken()

    def _unmoved_until(self) -> str | None:
        return self.inner._unmoved_until()  # an EMA of a network that has not moved has not moved either

    def held_tensors(self) -> list[torch.Tensor]:
        return self.inner.held_tensors() + list({id(t): t for t in self.ema.values()}.values())

    def checkpoint(self) -> dict[str, "OrderedDict[str, torch.Tensor]"]:
        return {"params": self.inner.deployed_state_dict(), "params_ema": self.deployed_state_dict()}

    @property
    def deployed_key(self) -> str:
        return "params_ema"

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "method": self.name, "ema_decay": self.decay, "inner": self.inner.state_dict(),
                "ema": OrderedDict(self.ema)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.name, {"ema_decay": None, "inner": None, "ema": dict.fromkeys(self.ema)}, ema=True)
        if state["ema_decay"] != self.decay:
            raise MethodError(f"the saved state used ema_decay {state['ema_decay']}, this run {self.decay}")
        # all or nothing: the EMA part is checked before the inner method (which checks its own part first) loads
        check_network_state(self.model, state["ema"], MethodError, part="ema")  # the EMA has the model's keys
        self.inner.load_state_dict(state["inner"])
        for name, tensor in self.ema.items():
            tensor.copy_(state["ema"][name])
        self._build_plan()


def effective_ema_decay(config: MethodConfig, ema_decay: float | None = None) -> float | None:
    """The EMA decay a run deploys with: ``ema_decay`` if given (and > 0), else the method's default (FT-EMA:
    the fixed-W exchange's per-step decay), else None (no EMA)."""
    if ema_decay:
        return float(ema_decay)
    cls = method_class(config.method)
    return cls.resolve(config).exchange.step_decay() if cls.ema_by_default else None


def run_identity(config: MethodConfig, ema_decay: float | None = None) -> dict:
    """What makes two runs of a method the same: the options it reads, and the EMA decay it deploys with."""
    values = method_class(config.method).identity(config)
    decay = effective_ema_decay(config, ema_decay)
    return {**values, "ema_decay": decay} if decay else values


# ------------------------------------------------------------------------------------------------- preparation


def probe_share_problem(num_batches: int, world: int) -> str | None:
    """Why ``num_batches`` probe batches in all cannot be shared by ``world`` ranks, or None: every rank probes at
    least one batch (each takes part in the probe's all-reduce), so fewer batches than ranks would probe more than
    asked, and so another partition than the number says."""
    if num_batches >= world:
        return None
    return (f"{num_batches} probe batch(es) in all is fewer than the {world} ranks (world size {world}): every rank "
            f"probes at least one, so {world} would be probed; ask for at least {world}, or run on fewer ranks")


def probe_share(num_batches: int) -> int:
    """This rank's share of ``num_batches`` probe batches (the first ``num_batches mod world`` ranks get one more);
    fewer batches than ranks is a :class:`MethodError` (:func:`probe_share_problem`)."""
    if not (dist.is_available() and dist.is_initialized()):
        return num_batches
    world, rank = dist.get_world_size(), dist.get_rank()
    problem = probe_share_problem(num_batches, world)
    if problem:
        raise MethodError(f"probe:num_batches: {problem}")
    return num_batches // world + (rank < num_batches % world)


def runs_probe(config: MethodConfig) -> bool:
    """Whether making ``config``'s partition probes: a score partition neither read from ``partition_file`` nor
    drawn at random (a sweep checks those runs' probe data before its first run)."""
    return method_class(config.method).partition_source == "score" and config.partition_file is None \
        and config.criterion != "random"


def score_partition(
    model: nn.Module,
    config: MethodConfig,
    batches: BatchSource,
    loss_fn: LossFn,
    *,
    seed: int,
    progress: bool = False,
    log: Callable[[str], None] = logger.info,
    warn: Callable[[str], None] = logger.warning,
    no_grad_hint: str = NO_GRAD_HINT,
) -> Partition:
    """The score partition ``config`` asks for: from ``partition_file``, the seeded 'random' order, or a probe.

    The probe sees ``probe.num_batches`` batches in all (split across ranks under ``torch.distributed``), keeps
    per-element statistics only when the criterion needs them (``elementwise_var``) and never updates the model.
    The parameters of ``model`` that do not train (:func:`~ldt.core.dual.left_out_parameters`: pass a network with
    the user's flags, such as ``method.deployed()``, not a live branch) are not probed and are excluded; those
    the probe finds no gradient for are excluded too, in one ``warn`` naming them and their layers, ending in
    ``no_grad_hint`` (what to change: a caller that builds the model from options names the option).
    """
    if config.partition_file is not None:
        partition = Partition.load(Path(config.partition_file).expanduser(), model)
        log(f"Partition read from {config.partition_file} ({partition.criterion})")
        return partition
    left_out = left_out_parameters(model)
    if config.criterion == "random":
        return partition_by_score(None, config.unstable_ratio, "random", seed=config.seed, model=model,
                                  excluded=left_out)
    share = probe_share(config.probe.num_batches)
    log(f"Probing {config.probe.num_batches} batches ({share} on this rank)")
    stats = probe_gradients(  # probes the parameters that train: the left-out ones come back as stats.not_probed
        model, batches("probe", seed), loss_fn, num_batches=share, group_by=config.group_by,
        elementwise=config.criterion == "elementwise_var", train_mode=config.probe.train_mode, progress=progress,
    )
    if stats.no_grad:
        more = " ..." if len(stats.no_grad) > 5 else ""
        layers = list(dict.fromkeys(name.rpartition(".")[0] or name for name in stats.no_grad))
        warn(f"{len(stats.no_grad)} parameter(s) got no gradient in any of the {stats.num_batches} probe batches (an "
             f"unused branch, a parameter with no elements, or a loss_fn that does not reach them): in neither group, never trained, deployed as "
             f"they are: {stats.no_grad[:5]}{more} (layer(s) {', '.join(layers[:5])}{' ...' if len(layers) > 5 else ''})"
             f"; {no_grad_hint}")
    return partition_by_score(stats, config.unstable_ratio, config.criterion, seed=config.seed, model=model,
                              excluded=left_out)


def as_batch_source(batches: BatchSource | Iterable | None) -> BatchSource:
    if batches is None:
        def missing(purpose: str, seed: int) -> Iterable:
            raise MethodError(f"the method needs {purpose} batches: pass batches= to prepare_method")
        return missing
    if callable(batches):
        return batches
    return lambda purpose, seed: batches


def _argument_types(model: object, config: object, batches: object, partition: object) -> list[Problem]:
    """Arguments of the wrong kind, named before anything reads them (else an AttributeError deep inside)."""
    problems: list[Problem] = []
    if not isinstance(model, nn.Module):
        problems.append(("model", f"must be a torch.nn.Module, got {type(model).__name__}"))
    if not isinstance(config, MethodConfig):
        problems.append(("config", f"must be a MethodConfig (MethodConfig(**options)), got {type(config).__name__}"))
    if batches is not None and not callable(batches) and not isinstance(batches, Iterable):
        problems.append(("batches", f"must be an iterable of batches or batches(purpose, seed), got "
                                    f"{type(batches).__name__}"))
    wrong_partition = None if partition is None else not_a_partition(partition)
    if wrong_partition:
        problems.append(("partition", wrong_partition))
    return problems


def prepare_method(
    model: nn.Module,
    config: MethodConfig,
    *,
    batches: BatchSource | Iterable | None = None,
    loss_fn: LossFn | None = None,
    warmup_loss_fn: LossFn | None = None,
    head_patterns: Sequence[str] | None = None,
    ema_decay: float | None = None,
    partition: Partition | None = None,
    resuming: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = logger.info,
    warn: Callable[[str], None] = logger.warning,
    no_grad_hint: str = NO_GRAD_HINT,
) -> Method:
    """The method ``config.method`` on ``model``, prepared and ready to train.

    Checks the options first (:meth:`Method.check`), then, unless ``partition`` is given (e.g. from a training
    state), runs the head warm-up the options ask for and makes the method's partition (probing ``batches``).
    ``batches`` is an iterable (one stream for warm-up and probe, consumed in that order) or
    ``batches(purpose, seed)``. ``head_patterns``: the network's head, used when the options name none.
    ``ema_decay`` > 0 deploys an EMA of the method's network (:class:`DeployedEMA`; FT-EMA has one by default).
    ``resuming``: the caller loads a :meth:`Method.state_dict` next, so no warm-up runs (LP-FT's head warm-up
    would be overwritten) and a probe-based method must be given the ``partition`` it was trained with.
    Everything that can be checked without data is checked before any batch is read. Parameters that are not
    floating point or have ``requires_grad=False`` now are left out of the method (logged once). ``log`` takes the
    progress lines, ``warn`` the probe's warning about parameters without gradient, which ends in ``no_grad_hint``
    (:func:`score_partition`).
    """
    wrong = _argument_types(model, config, batches, partition)
    if wrong:
        raise MethodError("; ".join(f"{where}: {message}" for where, message in wrong))
    cls = method_class(config.method)
    config = cls.resolve(config)
    decay = effective_ema_decay(config, ema_decay)
    warms = partition is None and not resuming and cls.warmup_rule != "never" and config.warmup.steps > 0
    needs_probe = partition is None and runs_probe(config)
    probes = needs_probe and not resuming
    left_out = left_out_parameters(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    if isinstance(head_patterns, str):  # an iterable of one-character regexes: 'fc' would match every 'f' and 'c'
        raise MethodError(f"head_patterns: must be a list of regexes, got the string {head_patterns!r} "
                          f"(write [{head_patterns!r}])")
    problems = cls.check(config, model, head_patterns)
    earlier = PREPARED.get(model)
    set_since = [name for name, flag in flags.items() if earlier is not None and earlier[1].get(name, flag) != flag]
    if set_since:
        problems.insert(0, ("model", f"{type(model).__name__} was prepared by {earlier[0]} already, which set "
                                     f"requires_grad of {len(set_since)} parameter(s) (e.g. {set_since[:3]}): this "
                                     "method would leave them out as frozen by you; prepare a fresh model "
                                     "(copy.deepcopy it before the first prepare_method), or that method's deployed()"))
    if _decay_problem(decay):
        problems.append(("ema_decay", _decay_problem(decay)))
    meta = next((name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if meta is not None:
        problems.append(("model", f"'{meta}' is on the meta device (no values): materialise the weights "
                                  "(to_empty, then load_state_dict) before prepare_method"))
    for where, function, needed in (("loss_fn", loss_fn, probes or (warms and warmup_loss_fn is None)),
                                    ("warmup_loss_fn", warmup_loss_fn, False)):
        if (function is not None or needed) and not callable(function):
            problems.append((where, f"must be callable (model, batch) -> scalar loss, got {type(function).__name__}"))
    if partition is not None and cls.partition_source != "none":
        problems += [("partition", problem) for problem in partition_problems(partition, model, config, left_out)]
    if resuming and needs_probe:
        problems.append(("partition", f"resuming {cls.name} needs the partition it was trained with"))
    if problems:
        raise MethodError("; ".join(f"{where}: {message}" for where, message in problems))
    if config.repartition_every:
        log(f"repartition_every {config.repartition_every}: the training loop re-probes (score_partition on "
            "method.deployed(), then method.repartition() and new optimizers, as the SR model does); train_step "
            "refuses it")
    if left_out:
        log(f"{len(left_out)} parameter(s) left out of {cls.name} (requires_grad=False or not floating point: not "
            f"probed, never trained, deployed as they are): {left_out[:5]}{' ...' if len(left_out) > 5 else ''}")
    source = as_batch_source(batches)
    head = _head(config, head_patterns)
    if partition is None:
        if warms:
            patterns = config.warmup.patterns if config.warmup.patterns is not None else head
            log(f"Warm-up: {config.warmup.steps} steps on {patterns}")
            warmup(model, source("warmup", config.seed), warmup_loss_fn or loss_fn, patterns, config.warmup.steps,
                   optimizer_factory=lambda params: torch.optim.Adam(params, lr=config.warmup.lr), progress=progress,
                   exclude=left_out)
        try:
            partition = cls.make_partition(model, config, source, loss_fn, head, progress, log, warn, no_grad_hint)
        except ProbeError as err:
            if warms and isinstance(batches, Iterator) and "received no batch" in str(err):
                raise ProbeError(f"{err}: the warm-up used up the one-shot iterator given as batches= (one stream for "
                                 "warm-up and probe); pass an iterable that restarts (a list, a DataLoader) "
                                 "or batches(purpose, seed)") from None
            raise
    method: Method = cls(model, partition, config)
    PREPARED[model] = (cls.name, flags)
    return DeployedEMA(method, decay) if decay else method
