"""Checks every architecture file must pass, shared by ``tests/test_arch_*.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ldt.archs.arch_util import load_pretrained

CHECKPOINT_LAYOUTS = ("params", "params_ema", "module_prefix")


def check_strict_load_round_trip(make: Callable[[int], nn.Module], tmp_path: Path, layout: str,
                                 input_shape: tuple[int, ...]) -> None:
    """A checkpoint in any BasicSR layout loads strictly into a differently seeded model and reproduces its outputs."""
    source = make(1).eval()
    state = source.state_dict()
    if layout == "module_prefix":
        checkpoint = {"params": {f"module.{k}": v for k, v in state.items()}}
    else:
        checkpoint = {layout: state}
    path = tmp_path / "net_g.pth"
    torch.save(checkpoint, path)
    target = load_pretrained(make(2), path, strict=True).eval()
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.rand(*input_shape)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def check_registered(name: str, cls: type, kwargs: dict, scale: int) -> None:
    """BasicSR's registry resolves ``name`` to our class, and what it builds runs."""
    import ldt.archs  # noqa: F401  (registers every *_arch.py)
    from basicsr.utils.registry import ARCH_REGISTRY

    assert ARCH_REGISTRY.get(name) is cls
    model = ARCH_REGISTRY.get(name)(**kwargs)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8 * scale, 8 * scale)


def check_forward_backward(model: nn.Module, size: tuple[int, int], scale: int) -> None:
    """Training-mode forward of a batch of 2 gives the upscaled shape, and every parameter gets a finite gradient."""
    model.train()
    x = torch.rand(2, 3, *size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)
    out.mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def check_declared_ranges_at_construction(cls: type, kwargs: dict) -> None:
    """Every bound declared on a constructor parameter (``Annotated[int, Ge(1)]``) is enforced by a plain Python call:
    a value just outside it raises one line naming the class and the argument (the cases come from the declarations,
    so a newly ranged argument is covered without a new test case)."""
    import typing

    import pytest

    outside = {"ge": lambda limit: limit - 1, "gt": lambda limit: limit, "le": lambda limit: limit + 1,
               "lt": lambda limit: limit}
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    cases = [(name, outside[key](getattr(item, key))) for name, hint in hints.items()
             if typing.get_origin(hint) is typing.Annotated for item in hint.__metadata__
             for key in outside if getattr(item, key, None) is not None]
    assert len(cases) >= 3, cases
    for name, value in cases:
        with pytest.raises(ValueError) as raised:
            cls(**{**kwargs, name: value})
        assert str(raised.value).startswith(f"{cls.__name__}: {name}: must be "), (name, value, str(raised.value))
        assert "\n" not in str(raised.value)


def _wrong_values(hint) -> list:
    """Values of the wrong type for an annotation: text for a number, a bool or a fraction for an integer, a number
    for a list, and so on; none for a kind the check leaves alone (``type[nn.Module]``, Literal, Any)."""
    import types
    import typing
    from collections.abc import Sequence

    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _wrong_values(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        return [v for v in _wrong_values(members[0]) if all(v in _wrong_values(m) for m in members[1:])]
    kind = origin or hint
    if kind is bool:
        return [1, "yes"]
    if kind is int:
        return ["36", True, 36.5]
    if kind is float:
        return ["0.5", False]
    if kind is str:
        return [5]
    if isinstance(kind, type) and issubclass(kind, Sequence):
        return [6, "66"]
    return []


def check_declared_types_at_construction(cls: type, kwargs: dict) -> None:
    """Every argument's declared type is enforced by a plain Python call, in the option checks' words
    (``SAFMN: dim: expected an integer, got str '36'``), one line, before anything is built; and no stricter than the
    option schema: the arguments as the schema passes them (lists for tuples) and with every list as a tuple build.
    The cases come from the annotations, so a newly typed argument is covered without a new test case."""
    import typing

    import pytest

    from ldt.core.config import network_schema

    hints = {n: h for n, h in typing.get_type_hints(cls.__init__, include_extras=True).items() if n != "return"}
    cases = [(name, value) for name, hint in hints.items() for value in _wrong_values(hint)]
    assert {"36", 6} & {value for _, value in cases} and len(cases) >= 5, cases
    for name, value in cases:
        with pytest.raises(ValueError) as raised:
            cls(**{**kwargs, name: value})
        message = str(raised.value)
        assert message.startswith(f"{cls.__name__}: {name}: expected ") and "\n" not in message, (name, value, message)
        assert f"got {type(value).__name__} {value!r}" in message, message
    schema = network_schema(cls)
    as_passed = schema.model_validate({"type": cls.__name__, **kwargs}).model_dump(exclude_unset=True, exclude={"type"})
    with torch.device("meta"):
        cls(**as_passed)
        cls(**{k: tuple(v) if isinstance(v, list) else list(v) if isinstance(v, tuple) else v
               for k, v in as_passed.items()})
