"""Partition rounding, determinism, criteria, pattern partitions and the JSON round trip."""

from __future__ import annotations

import json
import re

import pytest
from torch import nn

from ldt.core import Partition, PartitionError, partition_by_patterns, partition_by_score, probe_gradients, stable_count
from ldt.core.probe import GradientStatistics, Moments
from tests.conftest import ce_loss


def fake_stats(variances: list[float]) -> GradientStatistics:
    """Statistics whose 'var' score is exactly the given numbers (two elements: values m ± sqrt(v/2))."""
    moments = {}
    for i, v in enumerate(variances):
        m = Moments()
        m.merge(2, 1.0 + i, float(v), 2.0 * (1.0 + i))  # count 2, M2 = v -> unbiased var = v
        moments[f"l{i}"] = m
    layers = {f"l{i}": [f"l{i}"] for i in range(len(variances))}
    return GradientStatistics(layers=layers, moments=moments, elementwise=None, num_batches=2, group_by="tensor")


@pytest.mark.parametrize(
    "layers,ratio,expected", [(10, 0.4, 6), (10, 0.5, 5), (10, 0.9, 1), (10, 0.7, 3), (928, 0.4, 556), (928, 0.5, 464), (7, 0.3, 4)]
)
def test_stable_count_is_the_official_rounding(layers, ratio, expected):
    assert stable_count(layers, ratio) == expected


def test_lowest_scores_are_stable_and_ties_keep_network_order():
    stats = fake_stats([5.0, 1.0, 3.0, 3.0, 3.0, 0.5])
    part = partition_by_score(stats, unstable_ratio=0.5)
    # ascending: l5(0.5) l1(1) l2(3) l3(3) l4(3) l0(5): 3 stable -> l5, l1, l2 (l2 first of the tie)
    assert set(part.stable) == {"l5", "l1", "l2"}
    assert part.stable == ["l1", "l2", "l5"]  # listed in network order
    assert part.unstable == ["l0", "l3", "l4"]
    assert part.criterion == "var" and part.unstable_ratio == 0.5 and part.probe_batches == 2
    assert part.scores["l0"] == pytest.approx(5.0)


def test_partition_is_deterministic_on_real_probe(tiny_net, batches):
    stats = probe_gradients(tiny_net, batches, ce_loss)
    first = partition_by_score(stats, 0.4)
    second = partition_by_score(probe_gradients(tiny_net, batches, ce_loss, train_mode=False), 0.4)
    assert first.excluded == ["unused"] and "unused" not in first.stable + first.unstable
    assert len(first.stable) == stable_count(len(stats.layers), 0.4)
    assert partition_by_score(stats, 0.4).to_dict() == first.to_dict()
    assert second.stable + second.unstable + second.excluded  # covers the model
    first.check_model(tiny_net)


@pytest.mark.parametrize("criterion", ["var", "mean", "abs_mean", "var_over_mean"])
def test_every_criterion_sorts_by_its_score(tiny_net, batches, criterion):
    stats = probe_gradients(tiny_net, batches, ce_loss)
    part = partition_by_score(stats, 0.5, criterion)
    scores = stats.scores(criterion)
    assert max(scores[n] for n in part.stable) <= min(scores[n] for n in part.unstable)


def test_random_criterion_is_seeded(tiny_net):
    a = partition_by_score(None, 0.5, "random", seed=3, model=tiny_net)
    b = partition_by_score(None, 0.5, "random", seed=3, model=tiny_net)
    c = partition_by_score(None, 0.5, "random", seed=4, model=tiny_net)
    assert a.to_dict() == b.to_dict()
    assert a.unstable != c.unstable or a.stable != c.stable
    assert a.seed == 3


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_is_rejected(ratio):
    with pytest.raises(PartitionError, match="strictly between"):
        partition_by_score(fake_stats([1, 2, 3]), ratio)


def test_ratio_that_empties_a_group_is_rejected():
    with pytest.raises(PartitionError, match="stable group empty"):
        partition_by_score(fake_stats([1, 2, 3]), 0.9)
    # int(M * (1 - r)) < M for any r > 0, so the unstable group is never empty; a single layer is.
    with pytest.raises(PartitionError, match="stable group empty"):
        partition_by_score(fake_stats([1]), 0.5)


def test_unknown_criterion_is_rejected():
    with pytest.raises(PartitionError, match="unknown criterion"):
        partition_by_score(fake_stats([1, 2]), 0.5, "median")


def test_json_round_trip_and_mismatch_errors(tmp_path, tiny_net, batches):
    part = partition_by_score(probe_gradients(tiny_net, batches, ce_loss), 0.4)
    path = part.save(tmp_path / "sub" / "partition.json")
    assert Partition.load(path, tiny_net) == part

    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(PartitionError) as err:
        Partition.load(path, other)
    message = str(err.value)
    assert "partition.json" in message and "'0.weight'" in message and "head.bias" in message

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PartitionError, match="not valid JSON"):
        Partition.load(tmp_path / "bad.json")
    with pytest.raises(PartitionError, match="not found"):
        Partition.load(tmp_path / "missing.json")


def test_pattern_partitions_for_baselines(tiny_net):
    deft = partition_by_patterns(tiny_net, [r"^head\."], criterion="deft")
    assert deft.unstable == ["head.weight", "head.bias"]
    assert "body.0.weight" in deft.stable and deft.criterion == "deft"
    ft = partition_by_patterns(tiny_net, [])
    assert ft.unstable == [] and len(ft.stable) == len(list(tiny_net.parameters()))
    with pytest.raises(PartitionError, match="match no parameter"):
        partition_by_patterns(tiny_net, [r"^decoder\."])


def test_nan_scores_need_more_batches(tiny_net, batches):
    stats = probe_gradients(tiny_net, batches[:1], ce_loss, elementwise=True)
    with pytest.raises(PartitionError, match=r"the probe saw 1 batch\(es\); it needs gradients from at least 2 "
                                             r"batches per layer \(a variance across batches\)"):
        partition_by_score(stats, 0.5, "elementwise_var")


def test_a_partition_of_a_network_with_the_same_names_but_other_shapes_is_refused(tmp_path, tiny_net, batches):
    """Names alone let a partition probed on a narrower variant (same parameter names) drive another network."""
    part = partition_by_score(probe_gradients(tiny_net, batches, ce_loss), 0.4)
    assert part.shapes["head.weight"] == [3, 4] and set(part.shapes) == set(part.names)
    path = part.save(tmp_path / "partition.json")
    assert Partition.load(path, tiny_net).shapes == part.shapes
    wider = type(tiny_net)()
    wider.head = nn.Linear(4, 5)  # same names, another shape
    with pytest.raises(PartitionError) as err:
        Partition.load(path, wider)
    message = str(err.value)
    assert "partition.json" in message and "head.weight [3, 4] (model [5, 4])" in message
    assert partition_by_patterns(tiny_net, [r"^head\."]).shapes == part.shapes


def test_version_1_partition_files_without_shapes_still_load(tmp_path, tiny_net, batches):
    data = partition_by_score(probe_gradients(tiny_net, batches, ce_loss), 0.4).to_dict()
    assert data.pop("format_version") == 2
    del data["shapes"]
    old = tmp_path / "v1.json"
    old.write_text(json.dumps({"format_version": 1, **data}))
    loaded = Partition.load(old, tiny_net)
    assert loaded.shapes == {} and loaded.stable == data["stable"]
    old.write_text(json.dumps({"format_version": 3, **data}))
    with pytest.raises(PartitionError, match="format_version 3 .*reads 1 and 2"):
        Partition.load(old)


@pytest.mark.parametrize("shapes,problem", [
    ({"head.weight": [3, -4]}, "'shapes' must map parameter names to lists of non-negative integers"),
    ({"head.weight": "3x4"}, "'shapes' must map parameter names to lists of non-negative integers"),
    ({"decoder.weight": [3]}, r"'shapes' names parameters in no group: \['decoder.weight'\]"),
])
def test_hand_edited_shapes_are_named(tmp_path, tiny_net, batches, shapes, problem):
    data = partition_by_score(probe_gradients(tiny_net, batches, ce_loss), 0.4).to_dict()
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({**data, "shapes": shapes}))
    with pytest.raises(PartitionError, match=f"edited.json: .*{problem}"):
        Partition.load(path)


@pytest.mark.parametrize("value,shown", [(None, r"got NoneType.*pass partition=None"), ([["stable", []]], "got list"),
                                          ("partition.json", r"got str.*Partition\.load\(path\)")])
def test_from_dict_of_something_that_is_not_a_saved_mapping_is_one_partition_error(value, shown):
    """The README's resume saves None for FT / LP-FT: Partition.from_dict(None) was 'TypeError: 'NoneType' object is
    not iterable', a list 'cannot convert dictionary update sequence element #0 to a sequence'."""
    with pytest.raises(PartitionError, match=r"^Partition\.from_dict needs the mapping of a saved to_dict\(\), " + shown):
        Partition.from_dict(value)


@pytest.mark.parametrize("data,where", [
    ({"stable": ["a", "a"], "unstable": ["b"]}, r"'a' \(2 times in stable\)"),
    ({"stable": ["a"], "unstable": ["b"], "excluded": ["a"]}, r"'a' \(in stable, excluded\)"),
])
def test_a_name_listed_twice_says_in_which_groups(data, where):
    """A hand-edited file listing a name twice in one group was 'names listed in more than one group: ['a']': the
    user looked for it in the other group and found it nowhere."""
    with pytest.raises(PartitionError, match=r"^names listed more than once: " + where + "$"):
        Partition.from_dict(data)
    with pytest.raises(PartitionError, match=r"names listed more than once: " + where + "$"):
        Partition(**data).check_model(nn.Linear(1, 1))


@pytest.mark.parametrize("field,value,problem", [
    ("scores", {"a": float("nan"), "b": 2.0}, r"'scores' must map layer names to finite numbers, got dict \{'a': nan"),
    ("scores", {"a": 1.0, "b": float("inf")}, r"'scores' must map layer names to finite numbers"),
    ("unstable_ratio", 5, r"'unstable_ratio' must be a number strictly between 0 and 1 or null, got int 5"),
])
def test_a_partition_file_with_a_number_no_partition_has_is_named(tmp_path, field, value, problem):
    """json reads NaN and Infinity: a NaN score sorted anywhere among the DPU ranks (silently other exchange weights);
    an unstable_ratio of 5 was kept as the partition's own record."""
    data = {"stable": ["a"], "unstable": ["b"], "layers": {"a": ["a"], "b": ["b"]}, "scores": {"a": 1.0, "b": 2.0},
            field: value}
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PartitionError, match=rf"^partition file {re.escape(str(path))}: {problem}"):
        Partition.load(path)


def test_a_partition_built_by_hand_records_no_probe_criterion(tmp_path, tiny_net, batches):
    """Partition(stable=..., unstable=...) took the dataclass default criterion 'var': its file recorded
    'criterion: var' of a partition no probe made. A hand-built one says 'given' (and a file an earlier version
    wrote so, a score criterion without scores, loads as one); a probe's keeps its criterion."""
    names = [name for name, _ in tiny_net.named_parameters()]
    hand = Partition(stable=names[:-1], unstable=names[-1:])
    assert hand.criterion == "given"
    path = hand.save(tmp_path / "hand.json")
    assert json.loads(path.read_text())["criterion"] == "given"
    old = {**hand.to_dict(), "criterion": "var"}  # what an earlier version wrote for it
    path.write_text(json.dumps(old))
    assert Partition.load(path, tiny_net).criterion == "given"
    probed = partition_by_score(probe_gradients(tiny_net, batches, ce_loss), 0.4, "var_over_mean")
    assert Partition.from_dict(probed.to_dict()).criterion == "var_over_mean"


@pytest.mark.parametrize("kwargs,message", [
    ({"excluded": ["head.wieght"]}, "excluded names no parameter of TinyNet: ['head.wieght']"),
    ({"excluded_patterns": [r"^decoder\."]}, r"excluded_patterns match no parameter of TinyNet: ['^decoder\\.']"),
    ({"excluded_patterns": [r"^head\."]},
     r"patterns match only excluded parameters of TinyNet (e.g. 'head.weight'): ['^head\\.']"),
])
def test_pattern_partition_arguments_that_name_nothing_are_refused(tiny_net, kwargs, message):
    """A mistyped name to leave out would silently be trained; a head pattern that matches only what is left out
    does match parameters, so 'matches no parameter' would be untrue."""
    with pytest.raises(PartitionError, match=f"^{re.escape(message)}"):
        partition_by_patterns(tiny_net, [r"^head\."], **kwargs)
