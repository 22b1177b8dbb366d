"""Optimizers, schedulers and the pixel loss of an SR run, from checked options (:mod:`ldt.sr.options`)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ldt.compat import patch_basicsr

patch_basicsr()
from basicsr.losses import build_loss  # noqa: E402
from basicsr.models import lr_scheduler  # noqa: E402

SCHEDULERS = {
    "MultiStepLR": lr_scheduler.MultiStepRestartLR,  # BasicSR's name for its restartable multi-step schedule
    "MultiStepRestartLR": lr_scheduler.MultiStepRestartLR,
    "CosineAnnealingRestartLR": lr_scheduler.CosineAnnealingRestartLR,
}


def make_optimizer(params: list[nn.Parameter], options: dict, *, fused: bool, device: torch.device) -> torch.optim.Optimizer:
    """``train:optim_g`` over ``params``; ``fused`` asks for the fused (CUDA) or foreach (CPU) implementation."""
    kwargs = copy.deepcopy(options)
    kind = kwargs.pop("type")
    if fused:
        kwargs["fused" if device.type == "cuda" else "foreach"] = True
    return getattr(torch.optim, kind)(params, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, options: dict):
    kwargs = copy.deepcopy(options)
    return SCHEDULERS[kwargs.pop("type")](optimizer, **kwargs)


def make_pixel_loss(options: dict) -> nn.Module:
    kwargs = {k: v for k, v in options.items() if v is not None}
    return build_loss(kwargs)
