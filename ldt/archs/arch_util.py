"""Pieces shared by our architecture files: argument ranges, stochastic depth, official-checkpoint loading, padding.

Not a ``*_arch.py`` file, so importing it registers nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from os import PathLike
from typing import Annotated, Any, TypeVar

from annotated_types import Ge, Gt, Le, Lt, MinLen
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from ldt.core.config import error_places, network_schema
from ldt.weights import read_weights

# Ranges of the constructors' arguments, written on their annotations: the option check (ldt.sr.options) rejects a
# value outside them as network_g:<argument>, before anything is built, and @check_arguments makes a plain Python
# call check them too, both through one model (ldt.core.config.network_schema). The upper bounds are far above
# every published model and stop a typo (1e30) from hanging or overflowing the build.
MAX_BLOCKS = 1000
"""Blocks of one network in all (published: at most 72); more takes minutes to build even on the meta device."""
MAX_WIDTH = 2**14
"""Channels of any layer (published: at most 192); one 3x3 convolution this wide is already 2.4 G parameters."""
MAX_SCALE = 16
"""Upscaling factor (SR benchmarks: x2 to x8); the heads of larger ones grow with its square."""

Count = Annotated[int, Ge(1)]
"""A positive number of things (heads, a reduction factor, an unused size)."""
Blocks = Annotated[int, Ge(1), Le(MAX_BLOCKS)]
Width = Annotated[int, Ge(1), Le(MAX_WIDTH)]
Scale = Annotated[int, Ge(1), Le(MAX_SCALE)]
Ratio = Annotated[float, Gt(0)]
"""A positive factor (an MLP's width ratio, ``img_range``)."""
Rate = Annotated[float, Ge(0), Lt(1)]
"""A dropout or stochastic-depth probability (1 would drop everything)."""
Depths = Annotated[Sequence[Blocks], MinLen(1)]
"""Blocks per residual group, one group at least (their sum: :func:`check_depths`)."""


class ArgumentError(ValueError):
    """A constructor argument the network cannot be built with (alone, or with the others its message names);
    ``argument`` says which, so the option check reports the line as ``network_g:<argument>``; ``network``, the class
    (set by :func:`check_arguments`), heads the line a Python caller sees: ``SAFMN: n_blocks: must be >= 1, got 0``."""

    def __init__(self, argument: str, message: str, network: str = "") -> None:
        super().__init__(argument, message)
        self.argument, self.message, self.network = argument, message, network

    def __str__(self) -> str:
        where = f"{self.network}: {self.argument}" if self.network else self.argument
        return f"{where}: {self.message}"


NetworkClass = TypeVar("NetworkClass", bound=type)


def check_arguments(cls: NetworkClass) -> NetworkClass:
    """Class decorator: every construction checks its arguments against the types and ranges declared on the
    constructor's annotations, through the option check's own model (:func:`ldt.core.config.network_schema`,
    strict: no numbers as text) and in its words, so ``SAFMN(n_blocks=0)`` or ``SAFMN(dim='36')`` in Python fails
    in one line naming the class and argument instead of building a broken network (or failing deep inside torch);
    the constructor's own :class:`ArgumentError` (rules across arguments) names the class too. Defaults are ours
    and valid, so only the arguments given are checked (tens of microseconds, against a build of milliseconds)."""
    init = cls.__init__
    positional = [name for name, parameter in list(inspect.signature(init).parameters.items())[1:]
                  if parameter.kind is parameter.POSITIONAL_OR_KEYWORD]

    @functools.wraps(init)
    def checked_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        schema = network_schema(cls, strict=True)
        given = {name: value for name, value in [*zip(positional, args), *kwargs.items()]
                 if name in schema.model_fields}
        try:
            schema.model_validate(given)
        except ValidationError as err:
            raise ArgumentError(*error_places(err, schema)[0], network=cls.__name__) from None
        try:
            init(self, *args, **kwargs)
        except ArgumentError as err:
            err.network = err.network or cls.__name__
            raise

    cls.__init__ = checked_init
    return cls


def check_depths(depths: Sequence[int]) -> None:
    """The blocks of all groups together stay within :data:`MAX_BLOCKS` (each group's count is ranged on its own)."""
    if sum(depths) > MAX_BLOCKS:
        raise ArgumentError("depths", f"{list(depths)} make {sum(depths)} blocks in all: at most {MAX_BLOCKS}")


def check_width(dim: int, ratio: float, argument: str) -> None:
    """A layer of ``int(dim * ratio)`` channels (an MLP sized by a ratio argument) has 1 to :data:`MAX_WIDTH`."""
    width = dim * ratio
    if not 1 <= width < MAX_WIDTH + 1:
        shown = f"{int(width)}" if width < MAX_WIDTH + 1 else f"more than {MAX_WIDTH}"
        raise ArgumentError(argument, f"{ratio:g} makes layers of int({dim} x {ratio:g}) = {shown} channels: "
                                      f"need 1 to {MAX_WIDTH}")


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
