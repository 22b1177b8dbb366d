"""Stable/unstable partitions of a network's parameters, from probe scores or from name patterns.

A :class:`Partition` lists parameter names (the unit the dual branch freezes), the score of every scored layer,
and how it was made, and round-trips through JSON so an expensive probe is computed once.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

from torch import nn

from ldt.atomic import atomic_write_text
from ldt.core.probe import SCORE_NAMES, GradientStatistics, uninitialised

CRITERIA = SCORE_NAMES + ("random",)
GIVEN = "given"
"""The criterion of a partition built by hand (``Partition(stable=..., unstable=...)``): no probe or pattern made it."""
FORMAT_VERSION = 2  # 2 added ``shapes``; version 1 files (names only) still load
READABLE_VERSIONS = (1, 2)


class PartitionError(ValueError):
    """A partition cannot be made or does not fit the model it is applied to."""


@dataclass
class Partition:
    """Which parameters are stable (trained by the primary) and unstable (trained by the auxiliary).

    ``excluded`` parameters belong to neither group: they are frozen in both branches (e.g. parameters that never
    received a gradient in the probe). ``scores`` maps *layer* name to score and ``layers`` maps layer name to its
    parameter names (identical for ``unit='tensor'``); both are empty for pattern partitions. ``shapes`` records each
    parameter's shape when the partition was made, so a partition probed on another network with the same parameter
    names (a narrower variant, another scale's upsampler) is refused; it is empty in version-1 files. ``criterion``
    says how it was made: a probe score or ``'random'`` (:func:`partition_by_score`), a method's name
    (:func:`partition_by_patterns`), or :data:`GIVEN` for one built by hand.
    """

    stable: list[str]
    unstable: list[str]
    excluded: list[str] = field(default_factory=list)
    criterion: str = GIVEN
    unstable_ratio: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    layers: dict[str, list[str]] = field(default_factory=dict)
    unit: str = "tensor"
    probe_batches: int = 0
    seed: int | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)

    # ---- queries -------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.stable + self.unstable + self.excluded

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`PartitionError` listing missing/extra names unless the partition covers ``model`` exactly."""
        require_initialised(model)
        model_names = [name for name, _ in model.named_parameters()]
        mine = self.names
        duplicated = self.listed_twice()
        missing = sorted(set(model_names) - set(mine))
        extra = sorted(set(mine) - set(model_names))
        if duplicated or missing or extra:
            parts = []
            if missing:
                parts.append(f"model parameters missing from the partition: {missing}")
            if extra:
                parts.append(f"partition names not in the model: {extra}")
            if duplicated:
                parts.append(duplicated)
            raise PartitionError("partition does not match the model; " + "; ".join(parts))
        named = dict(model.named_parameters())
        resized = [f"{name} {shape} (model {list(named[name].shape)})" for name, shape in self.shapes.items()
                   if list(named[name].shape) != shape]
        if resized:
            raise PartitionError(f"partition was made for parameters of other shapes (another network with the same "
                                 f"names?): {len(resized)} differ, e.g. {resized[:3]}")

    def listed_twice(self) -> str | None:
        """The names listed more than once, each with where (``'a' (2 times in stable)``, ``'b' (in stable,
        excluded)``), or None."""
        groups = {group: Counter(getattr(self, group)) for group in ("stable", "unstable", "excluded")}
        total = Counter(self.names)
        places = []
        for name in sorted(name for name, count in total.items() if count > 1)[:10]:
            within = [group for group, counts in groups.items() if counts[name]]
            places.append(f"'{name}' ({total[name]} times in {within[0]})" if len(within) == 1 else
                          f"'{name}' (in {', '.join(within)})")
        return f"names listed more than once: {', '.join(places)}" if places else None

    def layer_scores(self, group: str) -> list[tuple[str, float]]:
        """(layer, score) of the scored layers whose parameters are in ``group`` ('stable'/'unstable'), net order."""
        members = set(getattr(self, group))
        return [(layer, self.scores[layer]) for layer, params in self.layers.items() if params[0] in members]

    # ---- persistence ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Partition":
        """A partition from :meth:`to_dict`'s mapping; wrong field types and inconsistent groups, layers and scores
        are a :class:`PartitionError` naming the field (a hand-edited file fails here, not deep inside training)."""
        if not isinstance(data, Mapping):
            hint = {type(None): ": a method without a partition (FT, LP-FT) saves None; pass partition=None",
                    str: ": Partition.load(path) reads a file", Partition: ": it is one already"}
            raise PartitionError(f"Partition.from_dict needs the mapping of a saved to_dict(), got "
                                 f"{type(data).__name__}{hint.get(type(data), '')}")
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version not in READABLE_VERSIONS:
            raise PartitionError(f"unsupported partition format_version {version!r} (this version of ldt reads "
                                 f"{' and '.join(map(str, READABLE_VERSIONS))})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PartitionError(f"unknown partition fields {unknown}")
        missing = sorted(name for name in ("stable", "unstable") if name not in data)
        if missing:
            raise PartitionError(f"not a partition: the fields {missing} are missing")
        problems = [f"'{name}' {problem}" for name, value in data.items() if (problem := _field_problem(name, value))]
        if problems:
            raise PartitionError("; ".join(problems))
        if data.get("criterion") in SCORE_NAMES and not data.get("scores"):
            # a score criterion without scores: the 'var' default that earlier versions gave a hand-built partition
            data["criterion"] = GIVEN
        partition = cls(**data)
        partition.check_consistent()
        return partition

    def check_consistent(self) -> None:
        """Raise unless every name is in one group only and ``layers``/``scores`` describe exactly the grouped names
        (the DPU ranks are read from them)."""
        duplicated = self.listed_twice()
        if duplicated:
            raise PartitionError(duplicated)
        if self.scores and not self.layers:
            raise PartitionError("'scores' without 'layers' (which parameters each scored layer holds)")
        if self.scores and set(self.scores) != set(self.layers):
            raise PartitionError(f"'scores' and 'layers' name different layers: "
                                 f"{sorted(set(self.scores) ^ set(self.layers))[:10]}")
        unknown = sorted(set(self.shapes) - set(self.names))
        if unknown:
            raise PartitionError(f"'shapes' names parameters in no group: {unknown[:10]}")
        if not self.layers:
            return
        in_layers = [p for params in self.layers.values() for p in params]
        grouped = self.stable + self.unstable
        if sorted(in_layers) != sorted(grouped):
            odd = sorted(set(in_layers) ^ set(grouped)) or sorted({p for p in in_layers if in_layers.count(p) > 1})
            raise PartitionError(f"'layers' must list every stable and unstable name exactly once: {odd[:10]}")
        stable = set(self.stable)
        split = [layer for layer, params in self.layers.items() if len({p in stable for p in params}) > 1]
        if split:
            raise PartitionError(f"layers with parameters in both groups: {split[:10]}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (a crash mid-write leaves any previous file intact)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "Partition":
        """Read a partition file; with ``model``, also check that its names match the model's parameters."""
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise PartitionError(f"partition file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PartitionError(f"partition file {path} is not valid JSON: {err}") from None
        except OSError as err:
            raise PartitionError(f"partition file {path} cannot be read: {err.strerror}") from None
        if not isinstance(data, dict):
            raise PartitionError(f"partition file {path} holds a {type(data).__name__}, not a partition")
        try:
            partition = cls.from_dict(data)
        except PartitionError as err:
            raise PartitionError(f"partition file {path}: {err}") from None
        if model is not None:
            try:
                partition.check_model(model)
            except PartitionError as err:
                raise PartitionError(f"{path}: {err}") from None
        return partition


def not_a_partition(value: object) -> str | None:
    """Why ``value`` cannot be used as a :class:`Partition`, or None; a saved ``to_dict()`` is the usual mix-up."""
    if isinstance(value, Partition):
        return None
    saved = " (Partition.from_dict(saved) reads a saved to_dict())" if isinstance(value, Mapping) else ""
    return f"must be a Partition{saved}, got {type(value).__name__}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_FIELD_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "stable": ("must be a list of parameter names", _is_names),
    "unstable": ("must be a list of parameter names", _is_names),
    "excluded": ("must be a list of parameter names", _is_names),
    "criterion": ("must be a string", lambda v: isinstance(v, str)),
    "unstable_ratio": ("must be a number strictly between 0 and 1 or null",
                       lambda v: v is None or (_is_number(v) and 0 < v < 1)),
    "scores": ("must map layer names to finite numbers",  # json reads NaN / Infinity; sorted() ranks NaN anywhere
               lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) and math.isfinite(x)
                                                     for k, x in v.items())),
    "layers": ("must map layer names to lists of parameter names",
               lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_names(x) for k, x in v.items())),
    "unit": ("must be 'tensor' or 'module'", lambda v: v in ("tensor", "module")),
    "probe_batches": ("must be a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "seed": ("must be an integer or null", lambda v: v is None or _is_int(v)),
    "shapes": ("must map parameter names to lists of non-negative integers",
               lambda v: isinstance(v, dict) and all(
                   isinstance(k, str) and isinstance(x, list) and all(_is_int(d) and d >= 0 for d in x)
                   for k, x in v.items())),
}


def require_initialised(model: nn.Module) -> None:
    """Raise :class:`PartitionError` naming a tensor of a lazy module no forward has shaped (:func:`uninitialised`)."""
    problem = uninitialised(model, "making or checking a partition")
    if problem:
        raise PartitionError(problem)


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    require_initialised(model)
    return {name: list(param.shape) for name, param in model.named_parameters()}


def _field_problem(name: str, value: object) -> str | None:
    rule, valid = _FIELD_RULES[name]
    return None if valid(value) else f"{rule}, got {type(value).__name__} {value!r:.60}"


def match_names(names: Iterable[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the ``names`` matching any regex in ``patterns`` by ``re.search``, in their order; the patterns that match
    none). An invalid regex raises ``re.error``; a single string (an iterable of one-character regexes) raises
    :class:`PartitionError`."""
    if isinstance(patterns, str):
        raise PartitionError(f"patterns must be a list of regexes, got the string {patterns!r} (write [{patterns!r}])")
    compiled = [re.compile(p) for p in patterns]
    matched = [name for name in names if any(p.search(name) for p in compiled)]
    return matched, [p.pattern for p in compiled if not any(p.search(n) for n in matched)]


def parameter_aliases(module: nn.Module) -> dict[str, str]:
    """Every state-dict key that holds a parameter -> that parameter's ``named_parameters()`` name (the partition's
    name); a tied parameter has several keys."""
    canonical = {id(p): name for name, p in module.named_parameters()}
    return {alias: canonical[id(p)] for alias, p in module.named_parameters(remove_duplicate=False)}


def tied_alias_note(model: nn.Module, unmatched: Sequence[str]) -> str:
    """Where the ``unmatched`` patterns match the other name of a tied parameter (``head.weight`` of ``head.weight =
    emb.weight``: the model and its state dict have it, ``named_parameters()`` lists the tensor once, under
    ``emb.weight``), the note that names the tie; else ''. Without it such a pattern reads as matching nothing."""
    tied = {alias: name for alias, name in parameter_aliases(model).items() if alias != name}
    hits = match_names(tied, unmatched)[0]
    if not hits:
        return ""
    ties = ", ".join(f"'{alias}' is tied to '{tied[alias]}'" for alias in hits[:3])
    return (f" ({ties}: a tied parameter is one layer, named as named_parameters() lists it; match that name to put "
            "it in the head, or leave it in the body)")


def stable_count(num_layers: int, unstable_ratio: float) -> int:
    """``int(M * (1 - ratio))`` stable layers, in exact decimal arithmetic (the official ``int(M * 0.5)`` at 0.5).

    Binary floating point would give ``int(10 * (1 - 0.9)) == 0``; the decimal reading of the ratio gives 1.
    """
    return int(num_layers * (1 - Fraction(str(unstable_ratio))))


def _check_ratio(unstable_ratio: float) -> None:
    if not _is_number(unstable_ratio) or not 0.0 < unstable_ratio < 1.0:
        raise PartitionError(f"unstable_ratio must be a number strictly between 0 and 1, got {unstable_ratio!r}")


def _without(layers: dict[str, list[str]], names: set[str]) -> dict[str, list[str]]:
    """``layers`` without the parameters in ``names``; a layer left empty is dropped."""
    kept = {layer: [p for p in params if p not in names] for layer, params in layers.items()}
    return {layer: params for layer, params in kept.items() if params}


def partition_by_score(
    stats: GradientStatistics | None,
    unstable_ratio: float,
    criterion: str = "var",
    *,
    seed: int = 0,
    model: nn.Module | None = None,
    excluded: Sequence[str] = (),
) -> Partition:
    """Split layers by score: the lowest-scoring ``int(M·(1−ratio))`` are stable, the rest unstable.

    Ties keep network order (a stable sort), so equal scores give the same partition on every run and rank.
    ``criterion='random'`` needs no statistics: a seeded shuffle of ``model``'s layers replaces the scores.
    Parameters without a gradient in the probe or not probed (frozen: ``stats.not_probed``) are ``excluded``, and so
    are the names in ``excluded`` (parameters that do not train): they leave their layers, so a frozen tensor that
    was probed anyway (``probe_gradients(parameters=...)``) is in neither group either.
    """
    _check_ratio(unstable_ratio)
    if criterion not in CRITERIA:
        raise PartitionError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    not_probed = list(stats.not_probed) if stats is not None else []
    left_out = set(excluded) | set(not_probed)
    if criterion == "random":
        if model is None and stats is None:
            raise PartitionError("criterion 'random' needs the model (or probe statistics) to list its layers")
        layers = _without(stats.layers, left_out) if stats is not None else \
            {n: [n] for n, _ in model.named_parameters() if n not in left_out}
        order = list(range(len(layers)))
        random.Random(seed).shuffle(order)
        scores = {layer: float(rank) for layer, rank in zip(layers, order)}
        no_grad = list(stats.no_grad) if stats is not None else []
        unit, probe_batches = (stats.group_by, stats.num_batches) if stats is not None else ("tensor", 0)
    else:
        if stats is None:
            raise PartitionError(f"criterion {criterion!r} needs probe statistics")
        layers = _without(stats.layers, left_out)
        scores = stats.scores(criterion)
        bad = [layer for layer in layers if scores[layer] != scores[layer]]
        if bad:
            raise PartitionError(
                f"criterion {criterion!r} is undefined (NaN) for layers {bad[:10]}: the probe saw "
                f"{stats.num_batches} batch(es); it needs gradients from at least 2 batches per layer "
                f"({'a variance across batches' if criterion == 'elementwise_var' else 'or 2 gradient elements'})"
            )
        no_grad, unit, probe_batches = list(stats.no_grad), stats.group_by, stats.num_batches

    ordered = sorted(layers, key=lambda layer: scores[layer])  # Python's sort is stable: ties keep network order
    n_stable = stable_count(len(ordered), unstable_ratio)
    if n_stable == 0:  # int(M * (1 - r)) < M for r > 0: only the stable group can end up empty
        why = f"; {len(no_grad)} parameter(s) got no gradient in the probe: {no_grad[:5]}" if no_grad else ""
        not_trained = [name for name in dict.fromkeys([*not_probed, *excluded]) if name not in set(no_grad)]
        why += f"; {len(not_trained)} left out (not trained): {not_trained[:5]}" if not_trained else ""
        raise PartitionError(f"unstable_ratio={unstable_ratio} leaves the stable group empty with {len(ordered)} "
                             f"layers{why}")
    stable_layers = set(ordered[:n_stable])
    stable = [p for layer in layers if layer in stable_layers for p in layers[layer]]
    unstable = [p for layer in layers if layer not in stable_layers for p in layers[layer]]
    partition = Partition(
        stable=stable,
        unstable=unstable,
        excluded=list(dict.fromkeys([*no_grad, *not_probed, *excluded])),
        criterion=criterion,
        unstable_ratio=unstable_ratio,
        scores={layer: float(scores[layer]) for layer in layers},
        layers={layer: list(params) for layer, params in layers.items()},
        unit=unit,
        probe_batches=probe_batches,
        seed=seed if criterion == "random" else None,
        shapes=_shapes(model) if model is not None else
        {name: list(shape) for name, shape in stats.param_shapes.items()},
    )
    if model is not None:
        partition.check_model(model)
    return partition


def partition_by_patterns(
    model: nn.Module,
    unstable_patterns: Sequence[str],
    *,
    criterion: str = "patterns",
    excluded_patterns: Iterable[str] = (),
    excluded: Iterable[str] = (),
) -> Partition:
    """Parameters whose names match any regex in ``unstable_patterns`` (``re.search``) are unstable, others stable.

    Parameters matching ``excluded_patterns`` or named in ``excluded`` belong to neither group; a name or regex there
    that matches no parameter is an error, as one in ``unstable_patterns`` is (a typo would train what it meant to
    leave out). The DeFT baseline is
    ``partition_by_patterns(model, head_patterns)`` (backbone stable, head unstable). FT and LP-FT train one network
    with everything stable: ``partition_by_patterns(model, [])``.
    """
    names = [name for name, _ in model.named_parameters()]
    kind, excluded = type(model).__name__, list(excluded)
    unknown = [name for name in dict.fromkeys(excluded) if name not in set(names)]  # a typo would silently train it
    if unknown:
        raise PartitionError(f"excluded names no parameter of {kind}: {unknown[:10]}")
    by_pattern, unmatched = match_names(names, excluded_patterns)
    if unmatched:
        raise PartitionError(f"excluded_patterns match no parameter of {kind}: {unmatched}"
                             f"{tied_alias_note(model, unmatched)}")
    left_out = set(excluded) | set(by_pattern)
    excluded = [name for name in names if name in left_out]
    unstable, unmatched = match_names([name for name in names if name not in left_out], unstable_patterns)
    grouped = left_out | set(unstable)
    stable = [name for name in names if name not in grouped]
    if unmatched:
        hits, elsewhere = match_names(excluded, unmatched)
        if hits:
            raise PartitionError(f"patterns match only excluded parameters of {kind} (e.g. '{hits[0]}'): "
                                 f"{[p for p in unmatched if p not in elsewhere]}")
        raise PartitionError(f"patterns match no parameter of {kind}: {unmatched}{tied_alias_note(model, unmatched)}")
    return Partition(stable=stable, unstable=unstable, excluded=excluded, criterion=criterion,
                     shapes=_shapes(model))
