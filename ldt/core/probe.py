"""Gradient-statistics probe: score every layer by how its gradient varies over source-domain batches.

A *layer* is one named parameter tensor (the official LDT unit) or, with ``group_by="module"``, all parameters of one
module. For each layer the probe pools every element of every probe gradient into one sample, as the official code's
``torch.var(torch.stack(grads))`` does, but streams: each batch's gradient is reduced to (count, mean, M2, |g| sum)
in float64 and merged with Chan's parallel update, so no per-batch gradient copy is ever kept. The same merge joins
statistics from several processes, so N ranks give the scores of one process that saw the union of their batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Literal, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

GroupBy = Literal["tensor", "module"]
LossFn = Callable[[nn.Module, object], torch.Tensor]

SCORE_NAMES = ("var", "mean", "abs_mean", "var_over_mean", "elementwise_var")

logger = logging.getLogger("ldt.core")
# torch's errors for tensors on two devices: "Expected all tensors to be on the same device", "... is not on the
# expected device meta!", a convolution's "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor)
# should be the same"
DEVICE_ERROR = re.compile(r"device|type \(.*\) and weight type \(.*\) should be the same")


class ProbeError(RuntimeError):
    """The probe cannot produce meaningful statistics (empty loader, non-finite gradients, ...)."""


def checked_loss(loss: object, where: str, error: type[Exception]) -> torch.Tensor:
    """``loss`` if it is a real one-element tensor that backward can start from; else ``error`` naming ``where``,
    instead of torch's error from deep inside backward (or an AttributeError on a Python float)."""
    if not isinstance(loss, torch.Tensor):
        raise error(f"{where}: loss_fn must return a scalar tensor, got {type(loss).__name__} {loss!r:.40}")
    if loss.numel() != 1:
        raise error(f"{where}: loss_fn must return a scalar tensor, got shape {tuple(loss.shape)} (reduce it, e.g. "
                    ".mean())")
    if not loss.is_floating_point():  # backward starts only from a real one; an integer one has no gradient either
        raise error(f"{where}: loss_fn must return a real floating-point scalar tensor, got {loss.dtype} (a complex "
                    "loss: take .abs() or .real)")
    if not loss.requires_grad:
        raise error(f"{where}: the loss has no gradient (detached, computed under no_grad, or no parameter it "
                    "depends on trains)")
    return loss


def batch_loss(loss_fn: LossFn, model: nn.Module, batch: object, where: str, error: type[Exception]) -> torch.Tensor:
    """``loss_fn(model, batch)``, checked by :func:`checked_loss`. An exception from inside ``loss_fn`` keeps its type
    and traceback and gains a note naming ``where`` and ``batches=``: a batch of another structure otherwise reads as
    a bug of the user's loss ("too many values to unpack"); a batch with tensors on a device the model's parameters
    are not on (left on the CPU, mixed) is named with both devices."""
    try:
        loss = loss_fn(model, batch)
    except Exception as err:
        batch_on = list(dict.fromkeys(str(t.device) for t in batch_tensors(batch)))
        model_on = list(dict.fromkeys(str(p.device) for p in model.parameters()))
        devices = (f"; the batch holds tensors on {', '.join(batch_on)} and the model's parameters are on "
                   f"{', '.join(model_on)}: move the batch to the model's device (in loss_fn, or the loader)"
                   if not set(batch_on) <= set(model_on) and DEVICE_ERROR.search(str(err)) else "")
        err.add_note(f"{where}: raised inside loss_fn(model, batch) on a batch from batches= (a batch of another "
                     f"structure than loss_fn expects?){devices}")
        raise
    return checked_loss(loss, where, error)


def uninitialised(model: nn.Module, before: str) -> str | None:
    """Why ``model`` cannot be used yet, naming its first tensor of a lazy module that no forward has shaped
    (``nn.LazyLinear``), or None: such a tensor has no shape or values to probe, copy, average or check against a
    partition, and torch's own error comes from deep inside (``requires_grad_``, ``.shape``)."""
    name = next((name for name, t in [*model.named_parameters(), *model.named_buffers()] if is_lazy(t)), None)
    if name is None:
        return None
    owner = model.get_submodule(name.rpartition(".")[0])
    return (f"'{name}' is not initialised yet (a {type(owner).__name__}): run one forward on a batch before "
            f"{before}, so that it has its shape and values")


def batch_tensors(batch: object, depth: int = 4) -> list[torch.Tensor]:
    """The tensors of a batch of tensors, tuples, lists and dicts (``depth`` levels deep)."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if depth == 0:
        return []
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    return [t for item in items for t in batch_tensors(item, depth - 1)]


@dataclass
class Moments:
    """Pooled moments of a set of numbers, mergeable exactly (Chan et al.) in float64."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    abs_sum: float = 0.0

    def merge(self, count: int, mean: float, m2: float, abs_sum: float) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.abs_sum += abs_sum
        self.count = total

    def add_tensor(self, values: torch.Tensor) -> None:
        flat = values.detach().reshape(-1).to(torch.float64)
        mean = flat.mean()
        self.merge(flat.numel(), mean.item(), (flat - mean).square().sum().item(), flat.abs().sum().item())

    @property
    def var(self) -> float:
        """Unbiased variance, as ``torch.var`` (NaN for fewer than two numbers)."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def abs_mean(self) -> float:
        return self.abs_sum / self.count if self.count else math.nan


class ElementwiseMoments:
    """Per-element mean and M2 of one parameter's gradient across batches (float64, two tensors of its size)."""

    def __init__(self) -> None:
        self.batches = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add_tensor(self, values: torch.Tensor) -> None:
        self.merge(1, values.detach().to(torch.float64), None)

    def merge(self, batches: int, mean: torch.Tensor, m2: torch.Tensor | None) -> None:
        if batches == 0:
            return
        if m2 is None:
            m2 = torch.zeros_like(mean)
        if self.mean is None:
            self.batches, self.mean, self.m2 = batches, mean.clone(), m2.clone()
            return
        total = self.batches + batches
        delta = mean - self.mean
        self.mean += delta * (batches / total)
        self.m2 += m2 + delta.square() * (self.batches * batches / total)
        self.batches = total

    def variance_sum(self) -> float:
        """Sum over elements of the unbiased per-element variance across batches."""
        if self.m2 is None or self.batches < 2:
            return math.nan
        return (self.m2.sum() / (self.batches - 1)).item()


@dataclass
class GradientStatistics:
    """Per-layer gradient statistics collected by :func:`probe_gradients`.

    ``layers`` maps a layer name to the parameter names it pools, in network order; ``no_grad`` lists the
    parameters that no probe batch gave a gradient, ``not_probed`` those the probe left out (frozen with
    ``requires_grad=False``, not floating point, or not named in ``parameters=``): neither gets a score, and
    :func:`~ldt.core.partition.partition_by_score` puts both in neither LDT group.
    """

    layers: dict[str, list[str]]
    moments: dict[str, Moments]
    elementwise: dict[str, ElementwiseMoments] | None
    num_batches: int
    group_by: GroupBy
    grad_batches: dict[str, int] = field(default_factory=dict)
    param_shapes: dict[str, torch.Size] = field(default_factory=dict, repr=False)
    no_grad: list[str] = field(default_factory=list)
    not_probed: list[str] = field(default_factory=list)

    def scores(self, criterion: str) -> dict[str, float]:
        """Score of every layer that received a gradient, for ``criterion`` in :data:`SCORE_NAMES`."""
        if criterion == "var":
            return {name: m.var for name, m in self.moments.items()}
        if criterion == "mean":
            return {name: m.mean for name, m in self.moments.items()}
        if criterion == "abs_mean":
            return {name: m.abs_mean for name, m in self.moments.items()}
        if criterion == "var_over_mean":
            # Normalised by the gradient magnitude: dividing by the signed mean would flip sign and explode for
            # layers whose gradients average to ~0.
            return {name: (m.var / m.abs_mean if m.abs_sum > 0 else 0.0) for name, m in self.moments.items()}
        if criterion == "elementwise_var":
            if self.elementwise is None:
                raise ValueError("criterion 'elementwise_var' needs probe_gradients(..., elementwise=True)")
            return {
                layer: sum(self.elementwise[p].variance_sum() for p in params)
                / sum(self.elementwise[p].mean.numel() for p in params)
                for layer, params in self.layers.items()
            }
        raise ValueError(f"unknown score criterion {criterion!r}; choose one of {SCORE_NAMES}")

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Merge the statistics of every rank, in rank order, so that each rank holds those of the union.

        Every rank must have probed the same model; a rank may have seen no batch.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return
        device = collective_device(group)
        world = dist.get_world_size(group)
        layer_names = list(self.moments)
        param_names = list(self.grad_batches)
        rows = [[m.count, m.mean, m.m2, m.abs_sum] for m in self.moments.values()]
        rows += [[self.grad_batches[p], 0.0, 0.0, 0.0] for p in param_names] + [[self.num_batches, 0.0, 0.0, 0.0]]
        local = torch.tensor(rows, dtype=torch.float64, device=device)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
        per_rank = [g.cpu().tolist() for g in gathered]
        self.moments = {name: Moments() for name in layer_names}
        for rank_rows in per_rank:
            for row, name in zip(rank_rows, layer_names):
                self.moments[name].merge(int(row[0]), row[1], row[2], row[3])
        offset = len(layer_names)
        self.grad_batches = {p: sum(int(r[offset + i][0]) for r in per_rank) for i, p in enumerate(param_names)}
        batch_counts = [int(r[-1][0]) for r in per_rank]
        self.num_batches = sum(batch_counts)
        if self.elementwise is None:
            return
        for name, local_e in self.elementwise.items():
            # Ranks whose layer saw no gradient contribute zeros with a batch count of zero (ignored by merge).
            shape = self.param_shapes[name]
            mean = local_e.mean if local_e.mean is not None else torch.zeros(shape, dtype=torch.float64)
            m2 = local_e.m2 if local_e.m2 is not None else torch.zeros(shape, dtype=torch.float64)
            stacked = torch.stack([mean, m2]).to(device)
            parts = [torch.empty_like(stacked) for _ in range(world)]
            dist.all_gather(parts, stacked, group=group)
            counts = torch.tensor([float(local_e.batches)], dtype=torch.float64, device=device)
            count_parts = [torch.empty_like(counts) for _ in range(world)]
            dist.all_gather(count_parts, counts, group=group)
            merged = ElementwiseMoments()
            for part, count in zip(parts, count_parts):
                part = part.cpu()
                merged.merge(int(count.item()), part[0], part[1])
            self.elementwise[name] = merged

    def finalize(self) -> None:
        """Move parameters that no batch gave a gradient to ``no_grad``, and drop layers left empty; a layer whose
        gradients have no element (a size-0 parameter) has no score either: its parameters join ``no_grad``."""
        self.no_grad = [p for params in self.layers.values() for p in params if self.grad_batches.get(p, 0) == 0]
        missing = set(self.no_grad)
        for layer in list(self.layers):
            kept = [p for p in self.layers[layer] if p not in missing]
            if kept and self.moments[layer].count > 0:
                self.layers[layer] = kept
            else:
                self.no_grad += kept
                del self.layers[layer]
                del self.moments[layer]
        missing = set(self.no_grad)
        if self.elementwise is not None:
            for name in missing:
                self.elementwise.pop(name, None)


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where ``group``'s (the default group's) collective tensors live: this rank's GPU under NCCL, else the CPU."""
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class FailedOnAnotherRank(Exception):
    """Another rank of the process group failed before a collective this rank was about to enter (:func:`agree`):
    that rank raises (and reports) its own error; this one stops too, instead of waiting in the collective."""

    def __init__(self) -> None:
        super().__init__("stopped: another rank failed (it says why)")


def agree(failure: BaseException | None) -> None:
    """Before a collective of a loop that may fail on one rank only (a batch it cannot read): every rank says whether
    it failed, in one small all-reduce (nothing without a process group of several ranks). Re-raises ``failure``,
    else raises :class:`FailedOnAnotherRank` if another rank failed. Without it, the ranks that had not failed waited
    in the collective (gloo: a 'Connection reset by peer' traceback once the failed rank exited; NCCL: the group's
    timeout). Each rank must call it once per collective: with its error, or None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([0 if failure is None else 1], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if failure is None and flag.item():
            raise FailedOnAnotherRank()
    if failure is not None:
        raise failure


_PARAMETRIZED = re.compile(r"(?:^|\.)parametrizations\.[^.]+$")  # the container torch.nn.utils.parametrize adds


def layer_groups(model: nn.Module, group_by: GroupBy = "tensor") -> dict[str, list[str]]:
    """Map layer name -> parameter names, in network order (``named_parameters`` order).

    With ``group_by='module'`` a tensor of ``torch.nn.utils.parametrize`` (``conv.parametrizations.weight.original``)
    belongs to the module it parametrizes (``conv``), not to the parametrization's own container."""
    if group_by not in ("tensor", "module"):
        raise ValueError(f"group_by must be 'tensor' or 'module', got {group_by!r}")
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        owner = name.rpartition(".")[0]
        if group_by == "module" and _PARAMETRIZED.search(owner):
            module = _PARAMETRIZED.sub("", owner)
            if parametrize.is_parametrized(model.get_submodule(module)):
                owner = module
        layer = name if group_by == "tensor" else owner or name
        groups.setdefault(layer, []).append(name)
    return groups


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel: probing must not average gradients across ranks inside backward."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def probe_gradients(
    model: nn.Module,
    batches: Iterable,
    loss_fn: LossFn,
    *,
    num_batches: int | None = None,
    group_by: GroupBy = "tensor",
    elementwise: bool = False,
    train_mode: bool = True,
    distributed: bool = True,
    progress: bool = False,
    parameters: Sequence[str] | None = None,
) -> GradientStatistics:
    """Collect per-layer gradient statistics over ``batches`` without updating ``model``.

    ``loss_fn(model, batch)`` returns the scalar loss of one batch. The probe scores the parameters that train: the
    floating-point ones with ``requires_grad=True`` (a tensor the user froze is not probed and is listed in
    ``not_probed``, so a partition made from the statistics leaves it out of both groups). ``parameters`` names
    the ones to probe instead, whatever their flag (e.g. a live branch, whose frozen group has the flag off); each
    probed one gets ``requires_grad=True`` for the probe; flags, grads, the train/eval
    mode of every submodule and buffers (e.g. BatchNorm running statistics, which a train-mode forward updates) are restored after.
    Layers that never receive a gradient (an unused branch; an integer or complex parameter named in ``parameters``,
    which cannot have one: unnamed, it is not probed) are listed in ``no_grad`` and get no score. A loader shorter
    than ``num_batches`` is probed to its end, with a warning. Under an initialised ``torch.distributed`` process
    group (and ``distributed=True``) the statistics of all ranks are merged.
    """
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral)
                                    or num_batches < 1):  # 0 was 'the probe loader is empty', 2.5 probed 3
        raise ProbeError(f"num_batches must be a positive integer (or None: the whole loader), got {num_batches!r}")
    model = unwrap(model)
    problem = uninitialised(model, "probing")
    if problem:
        raise ProbeError(problem)
    groups = layer_groups(model, group_by)
    named = dict(model.named_parameters())
    if parameters is not None:
        unknown = sorted(set(parameters) - set(named))
        if unknown:
            raise KeyError(f"probe parameters not in the model: {unknown}")
        wanted = set(parameters)
    else:
        wanted = {name for name, p in named.items() if p.is_floating_point() and p.requires_grad}
        if not wanted:
            raise ProbeError(f"no parameter of {type(model).__name__} trains (all have requires_grad=False or are "
                             "not floating point): nothing to probe; name the ones to probe with parameters=")
    groups = {layer: [p for p in names if p in wanted] for layer, names in groups.items()}
    groups = {layer: names for layer, names in groups.items() if names}
    moments = {layer: Moments() for layer in groups}
    element_stats = {name: ElementwiseMoments() for names in groups.values() for name in names} if elementwise else None
    grad_batches = {name: 0 for names in groups.values() for name in names}

    saved_flags = {name: p.requires_grad for name, p in named.items()}
    saved_grads = {name: p.grad for name, p in named.items()}
    saved_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = [(module, module.training) for module in model.modules()]  # each one: a BatchNorm frozen by .eval()
    seen = 0
    try:
        for p in named.values():
            p.requires_grad_(False)
            p.grad = None
        for names in groups.values():
            for name in names:
                if named[name].is_floating_point():
                    named[name].requires_grad_(True)
        model.train(train_mode)
        iterator = iter(batches)
        with progress_bar(num_batches, progress) as bar:  # closed on a failure too: the error starts a line
            while num_batches is None or seen < num_batches:
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                for names in groups.values():
                    for name in names:
                        named[name].grad = None
                loss = batch_loss(loss_fn, model, batch, f"probe batch {seen}", ProbeError)
                if not torch.isfinite(loss).all():
                    raise ProbeError(f"probe batch {seen}: the loss is {loss.item()} (not finite)")
                loss.backward()
                for layer, names in groups.items():
                    for name in names:
                        grad = named[name].grad
                        if grad is None:
                            continue
                        if grad.layout != torch.strided:  # nn.Embedding(sparse=True): rows not touched are 0
                            grad = grad.to_dense()
                        if not torch.isfinite(grad).all():
                            raise ProbeError(f"probe batch {seen}: gradient of layer '{name}' has NaN/inf values")
                        grad_batches[name] += 1
                        moments[layer].add_tensor(grad)
                        if element_stats is not None:
                            element_stats[name].add_tensor(grad)
                seen += 1
                if bar is not None:
                    bar.update(1)
    except Exception as err:  # noqa: BLE001 (re-raised by agree)
        if distributed:
            agree(err)  # the ranks that did not fail stop too, instead of waiting in the all-reduce below
        raise
    finally:
        for name, p in named.items():
            p.grad = saved_grads[name]
            p.requires_grad_(saved_flags[name])
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
        for module, mode in modes:
            module.training = mode
    stats = GradientStatistics(
        layers=groups,
        moments=moments,
        elementwise=element_stats,
        num_batches=seen,
        group_by=group_by,
        grad_batches=grad_batches,
        param_shapes={name: p.shape for name, p in named.items()},
        not_probed=[name for name in named if name not in wanted],
    )
    if distributed:
        agree(None)
        stats.all_reduce()
    if stats.num_batches == 0:
        raise ProbeError("the probe received no batch: the probe loader given as batches= is empty")
    if num_batches is not None and seen < num_batches:
        logger.warning(f"the probe loader ended after {seen} of the {num_batches} batches asked for: the scores "
                       f"use {seen}")
    stats.finalize()
    return stats


def progress_bar(total: int | None, enabled: bool, desc: str = "LDT probe") -> ContextManager[Any]:
    """A tqdm bar to use in ``with``, which closes it however the loop ends (left open by a failing batch, the
    caller's error line went on the bar's line); giving None when not ``enabled``. tqdm is imported lazily: the core
    does not need it unless asked for progress."""
    if not enabled:
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True)
