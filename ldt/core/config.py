"""Typed, validated option objects: every option is declared once (type, range, default, help) and checked on creation.

They are pydantic models, so plain-PyTorch users get the same checks as YAML users, and the YAML schemas of the SR,
classification and segmentation runners are built from these classes instead of re-declaring their defaults.

Numbers are strict (a boolean is not a number, ``"abc"`` is not a float), with one convenience for option files:
a string that spells a number (PyYAML 1.1 reads ``1e-4`` without a dot as the string ``'1e-4'``) and an integral
float (BasicSR files write ``!!float 5e3``) are read as the number they obviously are.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from ldt.cli import EMPTY_PATH, did_you_mean, meant  # (the one "did you mean", re-exported)

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _to_float(value: Any) -> Any:
    value = _number_from_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


def _to_int(value: Any) -> Any:
    value = _number_from_text(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Real = Annotated[float, BeforeValidator(_to_float)]
"""A float option; numeric strings such as ``'1e-4'`` are accepted."""
Int = Annotated[int, BeforeValidator(_to_int)]
"""An integer option; ``5000.0`` and ``'5e3'`` are accepted as 5000, ``2.5`` is not."""
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveReal = Annotated[Real, Field(gt=0)]
EmaWeight = Annotated[Real, Field(ge=0, lt=1)]
"""An EMA weight W of the exchange: W = 1 would never move the frozen group."""


def _not_empty(path: str) -> str:
    if not path.strip():
        raise ValueError(EMPTY_PATH)
    return path


PathText = Annotated[str, AfterValidator(_not_empty)]
"""A file or folder option. An empty one (``--force_yml path:pretrain_network_g=$W`` with ``W`` unset) is an error:
to pathlib it is the current folder, which exists, and to a ``pretrain_network_g`` check it was no weights at all."""
MAX_SEED = 2**31 - 1
Seed = Annotated[Int, Field(ge=0, le=MAX_SEED)]
"""A seed numpy, torch and ``random`` all take, with room for the per-rank and per-worker offsets BasicSR adds
(numpy takes seeds below 2**32 only)."""


class Options(BaseModel):
    """Base of every option object: unknown keys are errors, values are strict and immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    def to_dict(self) -> dict:
        return self.model_dump(mode="python")


class ProbeConfig(Options):
    """The gradient probe that scores layers (LDT, LDT-S)."""

    num_batches: PositiveInt = Field(300, description="probe batches in total (over all ranks), as the official code")
    train_mode: bool = Field(True, description="probe in train mode (stochastic depth active), as the official code")


class WarmupConfig(Options):
    """Head warm-up before the partition (LP-FT's linear probe; LDT's head warm-up)."""

    steps: NonNegativeInt = Field(0, description="head-only training steps before the probe (0 = none)")
    patterns: list[str] | None = Field(
        None, description="regexes of the parameters that warm up (null = the network's head patterns)"
    )
    lr: PositiveReal = Field(1e-4, description="Adam learning rate of the warm-up")


# ------------------------------------------------------------------------------------------------ error messages


def _alternatives(annotation: Any) -> list[Any]:
    """The annotations a value of ``annotation`` may have, through Annotated and Optional / Union."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _alternatives(arg)]
    return [annotation]


def annotation_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Annotated and Union)."""
    return [leaf for leaf in _alternatives(annotation) if inspect.isclass(leaf) and issubclass(leaf, BaseModel)]


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none", "constrained-int", "constrained-float",
                "constrained-str"}


def _tags(model: type[BaseModel]) -> tuple[str, ...]:
    field = model.model_fields.get("type")
    return typing.get_args(field.annotation) if field is not None and typing.get_origin(field.annotation) is Literal else ()


def dict_value_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a ``dict[str, Model]`` annotation holds as values (through Optional and Annotated)."""
    return [model for leaf in _alternatives(annotation) if typing.get_origin(leaf) is dict
            for model in annotation_models(typing.get_args(leaf)[1])]


def _readable_loc(model: type[BaseModel], loc: Sequence) -> tuple[list[str], list[str]]:
    """(the option path of a pydantic error without union tags and indices shown as [i]; the field names of the
    model the last element belongs to, for "did you mean")."""
    path: list[str] = []
    current: list[type[BaseModel]] = [model]
    siblings: list[str] = list(model.model_fields)
    keyed: list[type[BaseModel]] = []  # the value models of a dict field: the next element is one of its keys
    for element in loc:
        if isinstance(element, int):
            path[-1:] = [f"{path[-1]}[{element}]"] if path else [f"[{element}]"]
            continue
        if keyed:
            path.append(str(element))
            current, keyed = keyed, []
            continue
        tagged = [m for m in current if element in _tags(m)] if len(current) > 1 else []
        if tagged:
            current = tagged
            continue
        if current and not any(element in m.model_fields for m in current) and len(current) > 1:
            continue  # a union member's label
        if not current and path and ("[" in str(element) or str(element) in _TYPE_LABELS):
            continue  # the label of a union member that is not a model (e.g. 'str' of 'str | list[str]')
        siblings = [name for m in current for name in m.model_fields]
        path.append(str(element))
        field = next((m.model_fields[element] for m in current if element in m.model_fields), None)
        current = annotation_models(field.annotation) if field is not None else []
        if field is not None and not current:
            keyed = dict_value_models(field.annotation)
    return path, siblings


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, dict) else "a mapping"


def type_problem(expected: str, value: Any) -> str:
    """What an option (or constructor argument) of the wrong type reads: ``expected an integer, got str '36'``;
    ``expected`` is one of :data:`TYPE_WORDS`' values."""
    return f"expected {expected}, got {type(value).__name__} {_shown(value)}"


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
              dict: "a mapping"}
"""How :func:`type_problem` names the type a value should have."""


def unknown_choice(kind: str, name: str, choices: Sequence[str]) -> str:
    """``unknown KIND 'NAME'``, :func:`~ldt.cli.did_you_mean`'s hint, ``; choose from A, B``: one wording for every
    runner's unknown method (the registry's, the classification and segmentation runners')."""
    return f"unknown {kind} {name!r}" + did_you_mean(name, choices) + f"; choose from {', '.join(choices)}"


def _message(error: dict, siblings: list[str]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    shown = _shown(value)
    if kind == "extra_forbidden":
        return "unknown option" + did_you_mean(error["loc"][-1], siblings, f"; known: {', '.join(siblings)}")
    if kind == "missing":
        return "missing (required)"
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        options = [c.strip() for c in choices.split(",") if c.strip()]
        return f"must be one of {choices}, got {shown}" + (did_you_mean(value, options) if isinstance(value, str)
                                                            else "")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = str(ctx.get("expected_tags", "")).replace("'", "")
        if kind == "union_tag_not_found":
            return f"missing 'type' (one of {tags})" if tags else "missing 'type'"
        return (f"unknown type '{ctx.get('tag')}'; choose from {tags}"
                + did_you_mean(ctx.get("tag"), [t.strip() for t in tags.split(",")]))
    if kind in _ERROR_BOUNDS:
        key = _ERROR_BOUNDS[kind]
        return f"must {'have' if key.endswith('length') else 'be'} {BOUNDS[key]} {_limit_text(ctx[key])}, got {shown}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return type_problem(TYPE_WORDS[int], value)
    if kind in ("float_type", "float_parsing"):
        return type_problem(TYPE_WORDS[float], value)
    if kind == "bool_type":
        return type_problem(TYPE_WORDS[bool], value)
    if kind == "string_type":
        return type_problem(TYPE_WORDS[str], value)
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if value is None:  # `train: ~`, or a section whose children are all commented out
            return "is empty (null): give it options, or leave the section out for its defaults"
        return type_problem(TYPE_WORDS[dict], value)
    if kind in ("list_type", "tuple_type", "sequence_str") or (kind == "is_instance_of"
                                                                and ctx.get("class") == "Sequence"):
        return type_problem(TYPE_WORDS[list], value)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {shown}"


# A value of the wrong type for one member of a union, left out where another member took the value's type (it
# checked the value's items, or its range).
_MEMBER_MISMATCHES = {"string_type", "int_type", "float_type", "bool_type", "dict_type", "model_type",
                      "model_attributes_type", "list_type", "tuple_type", "sequence_str", "is_instance_of"}
_ERROR_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le",
                 "too_short": "min_length", "too_long": "max_length"}
"""pydantic's error for each bound of :data:`BOUNDS` (the value had the type, not the range)."""


def error_places(err: ValidationError, model: type[BaseModel], prefix: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(the option path, a plain message) per place with errors, union tags dropped, with "did you mean": the parts
    of :func:`describe_errors`' lines, for a caller that words the place itself (``SAFMN: dim: ...``).

    A misspelled required key is one problem, not two: its "missing" line is dropped when an unknown key beside it
    is suggested as the fix. A value a union member takes the type of is that member's problem: the other members'
    "expected a string, got list" is dropped when the list's items were looked into (``str | list[str]``: one
    problem per bad item), their "expected a list, got int 0" when the value is out of a member's range
    (``int | tuple[int, int]``: ``must be >= 1, got 0``).
    """
    located = [(error, *_readable_loc(model, error["loc"])) for error in err.errors()]
    suggested = set()
    for error, path, siblings in located:
        hint = meant(path[-1], siblings) if error["type"] == "extra_forbidden" else None
        if hint:
            suggested.add((*path[:-1], hint))
    typed = {":".join([*path[:depth], key.split("[")[0]]) for _, path, _ in located
             for depth, key in enumerate(path) if "[" in key}
    typed |= {":".join(path) for error, path, _ in located if error["type"] in _ERROR_BOUNDS}
    messages: dict[str, list[str]] = {}  # several errors at one place come from the members of a union
    for error, path, siblings in located:
        if error["type"] == "missing" and tuple(path) in suggested:
            continue
        if error["type"] in _MEMBER_MISMATCHES and ":".join(path) in typed:
            continue
        if error["type"].startswith("union_tag"):
            path = [*path, "type"]
        messages.setdefault(":".join([*prefix, *path]), []).append(_message(error, siblings))
    return [(where, " or ".join(dict.fromkeys(texts))) for where, texts in messages.items()]


def describe_errors(err: ValidationError, model: type[BaseModel], prefix: Sequence[str] = ()) -> list[str]:
    """One line per place with errors (:func:`error_places`): ``option:path: message``."""
    return [f"{where}: {text}" if where else text for where, text in error_places(err, model, prefix)]


def validate_into(model: type[BaseModel], data: Any, prefix: Sequence[str], problems: list[str]) -> BaseModel | None:
    """``model`` validated from ``data``, or None with every problem appended to ``problems`` (prefixed)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems += describe_errors(err, model, prefix)
        return None


# -------------------------------------------------------------------------------------- constructor arguments


def _plain_number(value: Any) -> Any:
    """numpy's (and other) integers and reals as the Python int / float they are, so a plain call may pass them."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (float, numbers.Integral)):
        return float(value)
    return value


_NUMBERS = {False: {int: Int, float: Real},
            True: {int: Annotated[int, BeforeValidator(_plain_number)],
                   float: Annotated[float, BeforeValidator(_plain_number)]}}
"""What ``int`` and ``float`` of a constructor become: in option files numbers written as text are read, in a
plain Python call (strict) they are not; in both a bool is no number and an integer is a float."""


def _argument_type(annotation: Any, strict: bool) -> Any:
    """``annotation`` as :func:`network_schema` checks it, at any depth: int / float as :data:`_NUMBERS` says, any
    list or tuple for a ``tuple`` / ``list`` / ``Sequence`` (an option file gives lists, a Python call either); a
    ``type[...]`` (a norm layer class, or any factory) is the constructor's business in a Python call."""
    if annotation is int or annotation is float:
        return _NUMBERS[strict][annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is type:
        return Any if strict else annotation
    if not args or origin is Literal:
        return annotation
    if origin is Annotated:
        return Annotated[(_argument_type(args[0], strict), *annotation.__metadata__)]
    mapped = tuple(_argument_type(a, strict) for a in args)
    if origin in (Union, types.UnionType):
        return Union[mapped]
    if origin is tuple:
        if len(mapped) == 2 and mapped[1] is Ellipsis:
            return Sequence[mapped[0]]
        return Annotated[Sequence[Union[mapped]], Field(min_length=len(mapped), max_length=len(mapped))]
    if origin is list:
        return Sequence[mapped[0]]
    return origin[mapped if len(mapped) > 1 else mapped[0]]


@functools.cache
def network_schema(arch: type, strict: bool = False) -> type[BaseModel]:
    """A model of ``arch``'s constructor arguments: their annotated types and ranges (``Annotated[int, Ge(1)]``),
    unknown keys rejected (unless the constructor takes ``**kwargs``); one per class and mode, built once.

    The default checks a ``network_g`` section (its ``type`` key too; numbers written as text are read). ``strict``
    checks a plain Python call (``@check_arguments``): no numbers as text, no ``type`` key, and nothing required,
    since only the arguments given are checked and Python itself names one that is missing."""
    signature = inspect.signature(arch.__init__)
    try:
        hints = typing.get_type_hints(arch.__init__, include_extras=True)
    except Exception:  # an annotation that does not resolve: check names only
        hints = {}
    fields: dict[str, Any] = {} if strict else {"type": (str, ...)}
    open_kwargs = False
    for name, parameter in list(signature.parameters.items())[1:]:
        if parameter.kind is parameter.VAR_KEYWORD:
            open_kwargs = True
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            continue
        required = parameter.default is inspect.Parameter.empty
        fields[name] = (_argument_type(hints.get(name, Any), strict), (None if strict else ...) if required
                        else parameter.default)
    config = ConfigDict(extra="allow" if open_kwargs else "forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{arch.__name__}{'Arguments' if strict else 'Options'}", __config__=config, **fields)


# --------------------------------------------------------------------------------------------- option reference

BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}
"""The bounds annotated_types declares (``Ge(1)`` has ``ge = 1``) and the sign the reference and the messages show."""


def _limit_text(limit: Any) -> str:
    return f"{limit:g}" if isinstance(limit, float) else f"{limit}"


def type_name(annotation: Any) -> str:
    """A reader's name for an option type: ``integer``, ``number``, ``list of string``, ``a | b``, ``mapping``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(a) for a in args))
    if origin in (list, tuple, Sequence) or origin is typing.get_origin(Sequence[int]):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[1])}" if args else "mapping"
    names = {int: "integer", float: "number", bool: "boolean", str: "string", type(None): "null", Any: "any"}
    if annotation in names:
        return names[annotation]
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _union_bounds(annotation: Any) -> list[Any]:
    """The bounds inside a union's members (``PositiveInt | None``): pydantic lifts a field's own ``Annotated``
    bounds into ``field.metadata``, not those of a member."""
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return []
    bounds = []
    for member in typing.get_args(annotation):
        for item in getattr(member, "__metadata__", ()):
            bounds += getattr(item, "metadata", [item])  # a Field(gt=0) holds its bounds in .metadata
    return bounds


def _constraints(field) -> str:
    parts = []
    for item in [*_union_bounds(field.annotation), *field.metadata]:  # a member's (> 0) before the field's (<= N)
        for key, sign in BOUNDS.items():
            value = getattr(item, key, None)
            if value is not None:
                parts.append(f"{sign} {_limit_text(value)}")
    return ", ".join(dict.fromkeys(parts))


def _default(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    return f"`{value}`" if not isinstance(value, str) or value else "`''`"


def option_rows(model: type[BaseModel], prefix: str = "") -> list[list[str]]:
    """One row per user option of ``model`` (sections expanded), skipping the keys the pipeline sets
    (fields marked ``json_schema_extra={'runtime': True}``)."""
    rows = []
    for name, field in model.model_fields.items():
        if (field.json_schema_extra or {}).get("runtime"):
            continue
        path = f"{prefix}{name}"
        nested = annotation_models(field.annotation)
        if nested and typing.get_origin(field.annotation) is not dict:
            kinds = [tag for model in nested for tag in _tags(model)]
            rows.append([f"`{path}`", "section" if len(nested) == 1 else f"one of type {', '.join(kinds)}",
                         _default(field) if len(nested) > 1 else "", "", field.description or ""])
            for model in nested:
                tag = f" ({', '.join(_tags(model))})" if len(nested) > 1 else ""
                rows += [[f"{row[0]}{tag}", *row[1:]] for row in option_rows(model, f"{path}:")
                         if not (tag and row[0] == f"`{path}:type`")]
            continue
        rows.append([f"`{path}`", type_name(field.annotation), _default(field), _constraints(field),
                     field.description or ""])
    return rows


def runtime(description: str = "set by the pipeline, not by users") -> Any:
    """A key the pipeline (ours or BasicSR's) writes into the options at run time: accepted, not documented."""
    return Field(None, description=description, json_schema_extra={"runtime": True})
