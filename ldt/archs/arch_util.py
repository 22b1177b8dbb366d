"""Pieces shared by our architecture files: stochastic depth, official-checkpoint loading, padding.

Not a ``*_arch.py`` file, so importing it registers nothing.
"""

from __future__ import annotations

from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from ldt.weights import read_weights


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``drop_prob`` while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


# The head (DeFT's unstable group, LP-FT's warm-up) of BasicSR's own SR networks; ours declare HEAD_PATTERNS.
BASICSR_HEAD_PATTERNS: dict[str, list[str]] = {
    "SwinIR": [r"^conv_before_upsample\.", r"^upsample\.", r"^conv_last\."],
    "EDSR": [r"^upsample\.", r"^conv_last\."],
    "MSRResNet": [r"^upconv", r"^conv_hr\.", r"^conv_last\."],
}


def head_patterns(arch_type: str, arch: type | None = None) -> list[str] | None:
    """Regexes of an SR network's reconstruction head: the class's ``HEAD_PATTERNS``, else BasicSR's table, else None."""
    patterns = getattr(arch, "HEAD_PATTERNS", None) or BASICSR_HEAD_PATTERNS.get(arch_type)
    return list(patterns) if patterns else None


def load_pretrained(model: nn.Module, path: str | PathLike, key: str | None = None, strict: bool = True) -> nn.Module:
    """Load an official ``.pth`` (``{'params': ...}``, ``{'params_ema': ...}`` or a bare state_dict) into ``model``;
    a file that is unreadable or does not fit raises :class:`ldt.weights.WeightsError` naming it."""
    model.load_state_dict(read_weights(path, key, model, strict=strict), strict=strict)
    return model


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, int, int]:
    """Pad an NCHW tensor on the bottom/right so H and W are multiples of ``multiple``; return it and the pads.

    Reflect padding needs the pad to be smaller than the side; fall back to replicate for tiny inputs.
    """
    height, width = x.shape[-2:]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    if pad_h or pad_w:
        if mode == "reflect" and (pad_h >= height or pad_w >= width):
            mode = "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, pad_h, pad_w


def init_transformer_weights(module: nn.Module) -> None:
    """The official HAT/MambaIR init (``model.apply``): truncated-normal linears (std 0.02), zero biases, unit
    LayerNorms; convolutions keep PyTorch's default. Matching it keeps from-scratch runs comparable to theirs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
