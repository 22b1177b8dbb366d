"""Pieces shared by our architecture files: argument ranges, stochastic depth, official-checkpoint loading, padding.

Not a ``*_arch.py`` file, so importing it registers nothing.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import types
import typing
from collections.abc import Sequence
from os import PathLike
from typing import Annotated, Any, TypeVar, Union

from annotated_types import Ge, Gt, Le, Lt, MinLen
import torch
import torch.nn.functional as F
from torch import nn

from ldt.core.config import TYPE_WORDS, bound_problem, type_problem
from ldt.weights import read_weights

# Ranges of the constructors' arguments, written on their annotations: the option check (ldt.sr.options) rejects a
# value outside them as network_g:<argument>, before anything is built, and @check_arguments makes a plain Python
# call check them too. The upper bounds are far above every published model and stop a typo (1e30) from hanging or
# overflowing the build.
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


def _fits(annotation: Any, value: Any) -> bool:
    """Whether ``value`` is of the kind ``annotation`` (one member of a union) stands for, so that only its ranges
    apply: ``0`` is held to ``Count``, not to the ``tuple[Count, Count]`` beside it, nor ``None`` to a range."""
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    kind = typing.get_origin(base) or base
    if kind is type(None):
        return value is None
    if kind in (int, float):
        return isinstance(value, numbers.Real)
    if inspect.isclass(kind) and issubclass(kind, Sequence) and kind is not str:
        return isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    return True


def range_problem(annotation: Any, value: Any, where: str) -> tuple[str, str] | None:
    """(the argument, ``depths[1]`` for an item, and what is wrong) for the first range declared in ``annotation``
    (``Annotated`` bounds, in unions, sequences and tuples too) that ``value`` breaks; None if it breaks none."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        for bound in annotation.__metadata__:
            problem = bound_problem(bound, value)
            if problem:
                return where, problem
        return range_problem(args[0], value, where)
    if origin in (Union, types.UnionType):
        fitting = [member for member in args if _fits(member, value)]
        problems = [range_problem(member, value, where) for member in fitting]
        return problems[0] if problems and None not in problems else None
    if args and _fits(annotation, value) and inspect.isclass(origin) and issubclass(origin, Sequence):
        item_types = args if origin is tuple and Ellipsis not in args else args[:1] * len(value)
        for index, (item_type, item) in enumerate(zip(item_types, value)):
            problem = range_problem(item_type, item, f"{where}[{index}]")
            if problem:
                return problem
    return None


def _kind(annotation: Any) -> Any:
    """The class ``annotation`` checks a value against (``int`` for ``Count``, ``Sequence`` for ``tuple[int, int]``)."""
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    return typing.get_origin(base) or base


def _sequence(kind: Any) -> bool:
    return inspect.isclass(kind) and issubclass(kind, Sequence) and kind is not str


def kind_problem(annotation: Any, value: Any, where: str) -> tuple[str, str] | None:
    """(the argument, ``depths[1]`` for an item, and what is wrong) when ``value`` is not of the type ``annotation``
    declares (through Annotated, unions, sequences and tuples), in the option checks' words; None if it is.

    No stricter than the option schema: a number is a number for ``float``, any list or tuple is a list for a
    ``Sequence`` or ``tuple`` (an option file gives lists); but text is no number and a bool no integer, as in the
    schema's strict mode. Annotations of other kinds (``type[nn.Module]``, ``Any``) are not checked."""
    kind = _kind(annotation)
    if typing.get_origin(annotation) is Annotated:
        return kind_problem(typing.get_args(annotation)[0], value, where)
    if kind in (Union, types.UnionType):
        members = typing.get_args(annotation)
        problems = [kind_problem(member, value, where) for member in members]
        if None in problems:
            return None
        inside = [problem for problem in problems if problem[0] != where]  # an item of the member of its kind
        if inside:
            return inside[0]
        named = [problem[1] for member, problem in zip(members, problems) if member is not type(None)]
        return where, " or ".join(dict.fromkeys(named))
    if kind is type(None):
        return None if value is None else (where, f"expected None, got {type(value).__name__} {value!r}")
    if kind is bool:
        return None if isinstance(value, bool) else (where, type_problem(TYPE_WORDS[bool], value))
    if kind in (int, float):
        fits = numbers.Integral if kind is int else numbers.Real
        return None if isinstance(value, fits) and not isinstance(value, bool) else \
            (where, type_problem(TYPE_WORDS[kind], value))
    if kind is str:
        return None if isinstance(value, str) else (where, type_problem(TYPE_WORDS[str], value))
    if _sequence(kind):
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            return where, type_problem(TYPE_WORDS[list], value)
        args = typing.get_args(annotation)
        item_types = args if kind is tuple and Ellipsis not in args else args[:1] * len(value)
        for index, (item_type, item) in enumerate(zip(item_types, value)):
            problem = kind_problem(item_type, item, f"{where}[{index}]")
            if problem:
                return problem
    return None


def _is_ranged(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Annotated or any(_is_ranged(a) for a in typing.get_args(annotation))


NetworkClass = TypeVar("NetworkClass", bound=type)


def check_arguments(cls: NetworkClass) -> NetworkClass:
    """Class decorator: every construction checks its arguments against the types and ranges declared on the
    constructor's annotations (those the option check reads), so ``SAFMN(n_blocks=0)`` or ``SAFMN(dim='36')`` in
    Python fails in one line naming the class and argument instead of building a broken network (or failing deep
    inside torch); the constructor's own :class:`ArgumentError` (rules across arguments) names the class too.
    Defaults are ours and valid, so only the arguments given are checked (microseconds, against a build of
    milliseconds)."""
    init = cls.__init__
    positional = [name for name, parameter in list(inspect.signature(init).parameters.items())[1:]
                  if parameter.kind is parameter.POSITIONAL_OR_KEYWORD]
    hints = {name: hint for name, hint in typing.get_type_hints(init, include_extras=True).items() if name != "return"}
    ranged = {name for name, hint in hints.items() if _is_ranged(hint)}

    @functools.wraps(init)
    def checked_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        for name, value in [*zip(positional, args), *kwargs.items()]:
            if name not in hints:
                continue
            problem = kind_problem(hints[name], value, name) or \
                (range_problem(hints[name], value, name) if name in ranged else None)
            if problem:
                raise ArgumentError(*problem, network=cls.__name__)
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
