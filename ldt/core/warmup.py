"""Warm-up: train only a named subset (e.g. a random classification head) with the rest frozen.

LDT probes gradient variance after the warm-up, so that a random head does not dominate the scores.
"""

from __future__ import annotations

import numbers
from typing import Callable, Collection, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ldt.core.dual import set_trainable
from ldt.core.partition import match_names, tied_alias_note
from ldt.core.probe import LossFn, agree, batch_loss, progress_bar, uninitialised

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def match_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the parameters matching any regex in ``patterns`` (``re.search``); error if a pattern matches none."""
    names, unmatched = match_names((name for name, _ in model.named_parameters()), patterns)
    if unmatched:
        raise ValueError(f"warm-up patterns match no parameter of {type(model).__name__}: {unmatched}"
                         f"{tied_alias_note(model, unmatched)}")
    return names


def average_gradients(params: list[nn.Parameter]) -> None:
    """Mean of each gradient over the ranks (a parameter without a gradient on this rank counts as zero)."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def warmup(
    model: nn.Module,
    batches: Iterable,
    loss_fn: LossFn,
    trainable: Sequence[str],
    steps: int,
    *,
    optimizer_factory: OptimizerFactory | None = None,
    progress: bool = False,
    distributed: bool = True,
    exclude: Collection[str] = (),
) -> list[float]:
    """Train the parameters matching ``trainable`` (regexes) for ``steps`` steps; the rest stay frozen.

    Matching parameters named in ``exclude`` (prepare_method passes those the user froze) and those that are not
    floating point (they cannot have a gradient) stay frozen too. ``batches`` is re-iterated when exhausted.
    It runs in train mode (BatchNorm statistics follow the warm-up batches); the model's ``requires_grad`` flags and
    the train/eval mode of every submodule are restored afterwards.
    Under an initialised ``torch.distributed`` process group (and ``distributed=True``) the trained parameters'
    gradients are averaged across ranks before every step, as DDP would, so all ranks warm up the same head on the
    union of their batches and the probe that follows sees one model. Returns the loss of every step.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:  # 2.5 ran 3 steps, True 1
        raise ValueError(f"warm-up steps must be an integer >= 0, got {steps!r}")
    problem = uninitialised(model, "the warm-up")
    if problem:
        raise ValueError(problem)
    named, excluded = dict(model.named_parameters()), set(exclude)
    names = [name for name in match_parameters(model, trainable)
             if name not in excluded and named[name].is_floating_point()]
    if not names:
        raise ValueError(f"warm-up patterns {list(trainable)} match only parameters that cannot train (frozen or not "
                         "floating point)")
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = [(module, module.training) for module in model.modules()]
    losses: list[float] = []
    agreeing = False  # inside a step, before its gradients are averaged: a failure there is agreed on (agree)
    try:
        set_trainable(model, names)
        params = [p for p in model.parameters() if p.requires_grad]
        sync = distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        optimizer = (optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=1e-4)))(params)
        model.train()
        iterator = iter(batches)
        with progress_bar(steps, progress, desc="LDT warm-up") as bar:  # closed on a failure too
            while len(losses) < steps:
                agreeing = sync
                try:
                    batch = next(iterator)
                except StopIteration:
                    iterator = iter(batches)
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        if losses:  # iter() of a generator is the spent generator itself
                            raise ValueError(f"the warm-up batches ran out after {len(losses)} of {steps} steps and "
                                             "cannot be iterated again (a one-shot generator? give an iterable that "
                                             "restarts: a list, a DataLoader)") from None
                        raise ValueError("the warm-up received no batch: the warm-up loader given as batches= is "
                                         "empty") from None
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(loss_fn, model, batch, f"warm-up step {len(losses)}", ValueError)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"warm-up step {len(losses)}: loss is {loss.item()}")
                loss.backward()
                if sync:
                    agreeing = False
                    agree(None)  # a step that failed on another rank (a batch it cannot read) stops this one too
                    average_gradients(params)
                optimizer.step()
                losses.append(loss.item())
                if bar is not None:
                    bar.update(1)
    except Exception as err:  # noqa: BLE001 (re-raised by agree)
        if agreeing:
            agree(err)  # the other ranks stop too, instead of waiting in the gradients' all-reduce
        raise
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        for module, mode in modes:
            module.training = mode
    return losses
