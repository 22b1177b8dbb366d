"""Dual branch: freezing, gradient isolation, exchange and DPU values, composite, resume bit-identity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ldt.core import DualBranch, ExchangeConfig, Partition, PartitionError, dpu_weights, partition_by_score, probe_gradients
from tests.conftest import TinyNet, ce_loss, make_batches


def probed_partition(model, ratio=0.5):
    return partition_by_score(probe_gradients(model, make_batches(4, seed=7), ce_loss), ratio)


def train(dual: DualBranch, opt_p, opt_a, batches) -> None:
    for batch in batches:
        for net, opt in ((dual.primary, opt_p), (dual.auxiliary, opt_a)):
            opt.zero_grad(set_to_none=True)
            ce_loss(net, batch).backward()
            opt.step()
        dual.step()


def test_branches_train_only_their_group(tiny_net):
    part = probed_partition(tiny_net)
    dual = DualBranch(tiny_net, part, ExchangeConfig(interval=1000))
    assert dual.primary is tiny_net and dual.auxiliary is not tiny_net
    prim_names = {n for n, p in dual.primary.named_parameters() if p.requires_grad}
    aux_names = {n for n, p in dual.auxiliary.named_parameters() if p.requires_grad}
    assert prim_names == set(part.stable) and aux_names == set(part.unstable)
    assert len(dual.primary_parameters()) == len(part.stable)

    before_p = {n: p.clone() for n, p in dual.primary.named_parameters()}
    before_a = {n: p.clone() for n, p in dual.auxiliary.named_parameters()}
    opt_p = torch.optim.Adam(dual.primary_parameters(), lr=1e-2)
    opt_a = torch.optim.Adam(dual.auxiliary_parameters(), lr=1e-2)
    train(dual, opt_p, opt_a, make_batches(3))
    for name, p in dual.primary.named_parameters():
        assert torch.equal(p, before_p[name]) == (name not in part.stable), name
        assert (p.grad is None) == (name not in part.stable)
    for name, p in dual.auxiliary.named_parameters():
        assert torch.equal(p, before_a[name]) == (name not in part.unstable), name
    # Frozen tensors have no optimizer state.
    assert len(opt_p.state) == len(part.stable) and len(opt_a.state) == len(part.unstable)


def test_primary_gradient_sees_its_frozen_unstable_values(tiny_net):
    part = Partition(
        stable=[n for n, _ in tiny_net.named_parameters() if not n.startswith("head")],
        unstable=["head.weight", "head.bias"],
        criterion="test",
    )
    dual = DualBranch(tiny_net, part, ExchangeConfig(dpu=False))
    with torch.no_grad():
        dual.primary.head.weight.mul_(3.0)  # primary's frozen head differs from the auxiliary's
    batch = make_batches(1)[0]
    ce_loss(dual.primary, batch).backward()
    reference = copy.deepcopy(dual.primary)
    for p in reference.parameters():
        p.requires_grad_(True)
        p.grad = None
    ce_loss(reference, batch).backward()
    assert torch.allclose(dual.primary.body[0].weight.grad, reference.body[0].weight.grad)
    aux_ref = copy.deepcopy(dual.auxiliary)
    for p in aux_ref.parameters():
        p.requires_grad_(True)
    ce_loss(aux_ref, batch).backward()
    assert not torch.allclose(aux_ref.body[0].weight.grad, reference.body[0].weight.grad)


def test_dpu_weights_by_hand():
    scores = [("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 2.0)]
    # ascending: b(0) c(1) d(2) a(3), N = 4
    assert dpu_weights(scores, 0.99, 0.01) == pytest.approx({"b": 0.99, "c": 0.9925, "d": 0.995, "a": 0.9975})


def test_fixed_weight_exchange_by_hand():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    part = Partition(stable=["0.weight"], unstable=["1.weight"], criterion="test")
    dual = DualBranch(net, part, ExchangeConfig(interval=2, dpu=False, weight=0.9))
    with torch.no_grad():
        dual.primary[0].weight.fill_(1.0)  # trained stable (primary)
        dual.auxiliary[0].weight.fill_(5.0)  # frozen stable (auxiliary)
        dual.primary[1].weight.fill_(2.0)  # frozen unstable (primary)
        dual.auxiliary[1].weight.fill_(-4.0)  # trained unstable (auxiliary)
    assert dual.step() is False  # step 1 of interval 2: nothing
    assert dual.auxiliary[0].weight.item() == 5.0
    assert dual.step() is True
    assert dual.auxiliary[0].weight.item() == pytest.approx(0.9 * 5.0 + 0.1 * 1.0)
    assert dual.primary[1].weight.item() == pytest.approx(0.9 * 2.0 + 0.1 * -4.0)
    assert dual.primary[0].weight.item() == 1.0 and dual.auxiliary[1].weight.item() == -4.0


def test_dpu_exchange_uses_per_layer_weights():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(4)])
    scores = {"0.weight": 1.0, "1.weight": 4.0, "2.weight": 3.0, "3.weight": 2.0}
    part = Partition(
        stable=["0.weight", "3.weight"],
        unstable=["1.weight", "2.weight"],
        criterion="var",
        unstable_ratio=0.5,
        scores=scores,
        layers={n: [n] for n in scores},
    )
    dual = DualBranch(net, part, ExchangeConfig(interval=1))
    # stable: 0(1.0)->i0, 3(2.0)->i1 of 2; unstable: 2(3.0)->i0, 1(4.0)->i1 of 2
    assert dual.stable_weights == pytest.approx({"0.weight": 0.99, "3.weight": 0.995})
    assert dual.unstable_weights == pytest.approx({"2.weight": 0.999, "1.weight": 0.9995})
    with torch.no_grad():
        for i in range(4):
            dual.primary[i].weight.fill_(float(i + 1))
            dual.auxiliary[i].weight.fill_(float(-(i + 1)))
    dual.step()
    assert dual.auxiliary[3].weight.item() == pytest.approx(0.995 * -4 + 0.005 * 4)
    assert dual.primary[1].weight.item() == pytest.approx(0.9995 * 2 + 0.0005 * -2)
    assert dual.primary[2].weight.item() == pytest.approx(0.999 * 3 + 0.001 * -3)


def test_dpu_without_scores_is_an_error(tiny_net):
    part = Partition(stable=[n for n, _ in tiny_net.named_parameters() if n != "head.bias"], unstable=["head.bias"])
    with pytest.raises(PartitionError, match="DPU needs layer scores"):
        DualBranch(tiny_net, part, ExchangeConfig(dpu=True))


def test_dpu_without_scores_names_no_criterion_the_partition_was_not_made_by(tiny_net):
    """A Partition built in Python without scores carried the dataclass default criterion 'var' (now 'given'): the
    message said "the 'var' partition has none", of a partition no probe made; a criterion that makes no scores is
    named."""
    names = [n for n, _ in tiny_net.named_parameters()]
    stable = [n for n in names if n != "head.bias"]
    probed = probed_partition(tiny_net)
    dual = DualBranch(tiny_net, probed, ExchangeConfig(dpu=True))
    for given in ({}, {"criterion": "var"}):
        with pytest.raises(PartitionError, match=r"^DPU needs layer scores, but this partition has none \(it was not "
                                                 r"made by a probe: partition_by_score records them\); use a "
                                                 r"probe-based partition or a fixed weight \(dpu: false\)$"):
            dual.repartition(Partition(stable=stable, unstable=["head.bias"], **given))
    with pytest.raises(PartitionError, match=r"^DPU needs layer scores, but the 'deft' partition has none; "):
        dual.repartition(Partition(stable=stable, unstable=["head.bias"], criterion="deft"))
    assert dual.partition is probed


def test_composite_strict_loads_and_takes_the_right_tensors(tiny_net, tmp_path):
    part = probed_partition(tiny_net)
    dual = DualBranch(tiny_net, part, ExchangeConfig(interval=2))
    opt_p = torch.optim.SGD(dual.primary_parameters(), lr=0.5)
    opt_a = torch.optim.SGD(dual.auxiliary_parameters(), lr=0.5)
    train(dual, opt_p, opt_a, make_batches(5))
    composite = dual.composite()
    assert type(composite) is TinyNet and composite is not dual.primary
    prim, aux = dict(dual.primary.named_parameters()), dict(dual.auxiliary.named_parameters())
    for name, p in composite.named_parameters():
        source = aux if name in part.stable else prim
        assert torch.equal(p, source[name]), name
        assert p.requires_grad
    assert torch.equal(composite.body[1].running_mean, dual.primary.body[1].running_mean)
    assert not torch.equal(dual.primary.body[1].running_mean, dual.auxiliary.body[1].running_mean)
    torch.save({"params": dual.composite_state_dict()}, tmp_path / "net_g.pth")
    plain = TinyNet()
    plain.load_state_dict(torch.load(tmp_path / "net_g.pth", weights_only=True)["params"], strict=True)
    x = make_batches(1)[0][0]
    composite.eval(), plain.eval()
    assert torch.equal(plain(x), composite(x))
    assert sum(p.numel() for p in composite.parameters()) == sum(p.numel() for p in TinyNet().parameters())


def run(steps: int, resume_at: int | None, tmp_path) -> dict[str, torch.Tensor]:
    """Train LDT for ``steps`` steps, optionally saving and resuming into fresh objects at ``resume_at``."""
    torch.manual_seed(0)
    model = TinyNet()
    part = probed_partition(model)
    config = ExchangeConfig(interval=3)

    def build(net):
        dual = DualBranch(net, part, config)
        return dual, torch.optim.Adam(dual.primary_parameters(), lr=1e-2), torch.optim.Adam(dual.auxiliary_parameters(), lr=1e-2)

    dual, opt_p, opt_a = build(model)
    batches = make_batches(steps, seed=11)
    for i, batch in enumerate(batches):
        if i == resume_at:
            state = {"dual": dual.state_dict(), "opt_p": opt_p.state_dict(), "opt_a": opt_a.state_dict()}
            torch.save(state, tmp_path / "state.pth")
            torch.manual_seed(123)
            dual, opt_p, opt_a = build(TinyNet())  # fresh objects, different initial weights
            loaded = torch.load(tmp_path / "state.pth", weights_only=True)
            dual.load_state_dict(loaded["dual"])
            opt_p.load_state_dict(loaded["opt_p"])
            opt_a.load_state_dict(loaded["opt_a"])
        train(dual, opt_p, opt_a, [batch])
    return dual.composite_state_dict()


def test_resume_is_bit_identical(tmp_path):
    straight = run(8, None, tmp_path)
    resumed = run(8, 4, tmp_path)  # step 4 is mid-interval (interval 3)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_rejects_another_partition(tiny_net):
    part = probed_partition(tiny_net)
    dual = DualBranch(tiny_net, part)
    state = dual.state_dict()
    flipped = Partition(stable=part.unstable, unstable=part.stable, excluded=part.excluded, scores=part.scores, layers=part.layers)
    other = DualBranch(TinyNet(), flipped)
    with pytest.raises(PartitionError, match="different partition"):
        other.load_state_dict(state)


def test_different_architectures_cannot_exchange(tiny_net):
    part = probed_partition(tiny_net)
    other = TinyNet()
    other.head = nn.Linear(4, 5)
    with pytest.raises(PartitionError, match="different architectures"):
        DualBranch(tiny_net, part, auxiliary=other)


def test_dual_branch_needs_two_groups(tiny_net):
    part = Partition(stable=[n for n, _ in tiny_net.named_parameters()], unstable=[])
    with pytest.raises(PartitionError, match="both groups"):
        DualBranch(tiny_net, part)


def test_partition_must_match_model(tiny_net):
    part = Partition(stable=["body.0.weight"], unstable=["head.bias"])
    with pytest.raises(PartitionError, match="missing from the partition"):
        DualBranch(tiny_net, part)


def mixed_partition(model, scores: bool = True) -> Partition:
    """Some tensors stay, some swap groups, one becomes excluded (vs. ``probed_partition`` of TinyNet)."""
    names = [n for n, _ in model.named_parameters()]
    stable = ["body.0.weight", "body.0.bias", "head.weight"]
    excluded = ["unused"]
    unstable = [n for n in names if n not in stable + excluded]
    kept = [n for n in names if n not in excluded]
    return Partition(
        stable=stable, unstable=unstable, excluded=excluded, criterion="var", unstable_ratio=0.5,
        scores={n: float(i) for i, n in enumerate(reversed(kept))} if scores else {},
        layers={n: [n] for n in kept} if scores else {},
    )


def test_repartition_refreezes_keeps_weights_and_follows_the_new_plan(tiny_net):
    dual = DualBranch(tiny_net, probed_partition(tiny_net), ExchangeConfig(interval=2))
    opt_p = torch.optim.Adam(dual.primary_parameters(), lr=1e-2)
    opt_a = torch.optim.Adam(dual.auxiliary_parameters(), lr=1e-2)
    train(dual, opt_p, opt_a, make_batches(3))  # step 3: mid-interval, grads still attached
    before_p = {n: p.detach().clone() for n, p in dual.primary.named_parameters()}
    before_a = {n: p.detach().clone() for n, p in dual.auxiliary.named_parameters()}
    new = mixed_partition(tiny_net)
    dual.repartition(new)
    assert dual.partition is new and dual.step_count == 3
    for branch, before, group in ((dual.primary, before_p, new.stable), (dual.auxiliary, before_a, new.unstable)):
        for name, p in branch.named_parameters():
            assert torch.equal(p, before[name]), name  # weights kept
            assert p.requires_grad == (name in group), name
            if name not in group:
                assert p.grad is None, name
    assert [id(p) for p in dual.primary_parameters()] == [id(p) for n, p in dual.primary.named_parameters() if n in new.stable]
    assert [id(p) for p in dual.auxiliary_parameters()] == [id(p) for n, p in dual.auxiliary.named_parameters() if n in new.unstable]
    from ldt.core import exchange_weights

    assert (dual.stable_weights, dual.unstable_weights) == exchange_weights(new, dual.config)

    # The exchange now moves exactly the new groups: auxiliary's stable towards the primary, and back.
    assert dual.step() is True  # step 4
    prim, aux = dict(dual.primary.named_parameters()), dict(dual.auxiliary.named_parameters())
    for name in new.stable:
        w = dual.stable_weights[name]
        assert torch.allclose(aux[name], w * before_a[name] + (1 - w) * before_p[name]), name
        assert torch.equal(prim[name], before_p[name]), name
    for name in new.unstable:
        w = dual.unstable_weights[name]
        assert torch.allclose(prim[name], w * before_p[name] + (1 - w) * before_a[name]), name
        assert torch.equal(aux[name], before_a[name]), name
    assert torch.equal(prim["unused"], before_p["unused"]) and torch.equal(aux["unused"], before_a["unused"])
    composite = dual.composite_state_dict()
    for name in new.unstable + new.excluded:
        assert torch.equal(composite[name], prim[name]), name
    for name in new.stable:
        assert torch.equal(composite[name], aux[name]), name

    # Fresh optimizers over the new groups train only them.
    opt_p = torch.optim.Adam(dual.primary_parameters(), lr=1e-2)
    opt_a = torch.optim.Adam(dual.auxiliary_parameters(), lr=1e-2)
    snap_p = {n: p.detach().clone() for n, p in dual.primary.named_parameters()}
    snap_a = {n: p.detach().clone() for n, p in dual.auxiliary.named_parameters()}
    train(dual, opt_p, opt_a, make_batches(1, seed=3))  # step 5: no exchange
    for name, p in dual.primary.named_parameters():
        assert torch.equal(p, snap_p[name]) == (name not in new.stable), name
    for name, p in dual.auxiliary.named_parameters():
        assert torch.equal(p, snap_a[name]) == (name not in new.unstable), name


def test_repartition_rejects_an_unusable_partition_and_changes_nothing(tiny_net):
    part = probed_partition(tiny_net)
    dual = DualBranch(tiny_net, part, ExchangeConfig(dpu=True))
    with pytest.raises(PartitionError, match="DPU needs layer scores"):
        dual.repartition(mixed_partition(tiny_net, scores=False))
    with pytest.raises(PartitionError, match="both groups"):
        dual.repartition(Partition(stable=[n for n, _ in tiny_net.named_parameters()], unstable=[]))
    with pytest.raises(PartitionError, match="missing from the partition"):
        dual.repartition(Partition(stable=["body.0.weight"], unstable=["head.bias"]))
    assert dual.partition is part
    assert {n for n, p in dual.primary.named_parameters() if p.requires_grad} == set(part.stable)


def test_resume_after_repartition_is_bit_identical(tmp_path):
    def run(resume_at):
        torch.manual_seed(0)
        model = TinyNet()
        first, second = probed_partition(model), mixed_partition(model)
        config = ExchangeConfig(interval=3)
        dual = DualBranch(model, first, config)
        opts = [torch.optim.Adam(ps, lr=1e-2) for ps in (dual.primary_parameters(), dual.auxiliary_parameters())]
        for i, batch in enumerate(make_batches(8, seed=11)):
            if i == 4:
                dual.repartition(second)
                opts = [torch.optim.Adam(ps, lr=1e-2) for ps in (dual.primary_parameters(), dual.auxiliary_parameters())]
            if i == resume_at:
                torch.save({"dual": dual.state_dict(), "opts": [o.state_dict() for o in opts]}, tmp_path / "s.pth")
                torch.manual_seed(5)
                state = torch.load(tmp_path / "s.pth", weights_only=True)
                dual = DualBranch(TinyNet(), Partition.from_dict(state["dual"]["partition"]), config)
                dual.load_state_dict(state["dual"])
                opts = [torch.optim.Adam(ps, lr=1e-2) for ps in (dual.primary_parameters(), dual.auxiliary_parameters())]
                for opt, saved in zip(opts, state["opts"]):
                    opt.load_state_dict(saved)
            train(dual, opts[0], opts[1], [batch])
        return dual.composite_state_dict()

    straight, resumed = run(None), run(6)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_partition_grouping_a_user_frozen_parameter_is_refused(tiny_net):
    """A hand-built branch would otherwise train a tensor the user froze (the methods layer excludes such tensors)."""
    from ldt.core import SingleBranchLDT, partition_by_patterns

    grouping = partition_by_patterns(tiny_net, [r"^head\."])  # made while every parameter trains
    tiny_net.body[0].bias.requires_grad_(False)
    for build in (DualBranch, SingleBranchLDT):
        with pytest.raises(PartitionError, match=r"frozen by the user .*\['body.0.bias'\].*excluded"):
            build(copy.deepcopy(tiny_net), grouping, ExchangeConfig(dpu=False))
    usable = partition_by_patterns(tiny_net, [r"^head\."], excluded=["body.0.bias"])
    for branch in (DualBranch(copy.deepcopy(tiny_net), usable, ExchangeConfig(dpu=False)),
                   SingleBranchLDT(copy.deepcopy(tiny_net), usable, ExchangeConfig(dpu=False))):
        with pytest.raises(PartitionError, match=r"frozen by the user .*\['body.0.bias'\]"):
            branch.repartition(grouping)  # judged by the flags handed in, not by the branches' own freezing
        assert branch.partition is usable
        deployed = branch.composite()
        assert not deployed.body[0].bias.requires_grad and deployed.head.weight.requires_grad


@pytest.mark.parametrize("criterion", ["var", "random"])
@pytest.mark.parametrize("group_by", ["tensor", "module"])
def test_the_building_blocks_leave_a_user_frozen_parameter_untouched(criterion, group_by):
    """probe -> partition -> DualBranch on a model with a tensor frozen from the start: it is not probed, in neither
    group (excluded), never trained, and deployed as it was, with its flag off."""
    torch.manual_seed(0)
    model = TinyNet()
    model.body[0].weight.requires_grad_(False)  # its module's bias still trains
    frozen = model.body[0].weight.detach().clone()
    stats = probe_gradients(model, make_batches(4, seed=7), ce_loss, group_by=group_by)
    part = partition_by_score(stats, 0.5, criterion, model=model)
    assert "body.0.weight" in part.excluded and "body.0.weight" not in part.stable + part.unstable
    assert "body.0.bias" in part.stable + part.unstable
    dual = DualBranch(model, part, ExchangeConfig(interval=1))
    train(dual, torch.optim.SGD(dual.primary_parameters(), lr=0.1), torch.optim.SGD(dual.auxiliary_parameters(), lr=0.1),
          make_batches(3))
    composite = dual.composite()
    assert torch.equal(composite.body[0].weight, frozen) and not composite.body[0].weight.requires_grad
    assert torch.equal(dual.auxiliary.body[0].weight, frozen)


def test_names_given_as_excluded_leave_the_probed_layers():
    """A frozen tensor probed anyway (parameters=) and then given as excluded= is in neither group (it was in a group
    and in excluded: 'names listed more than once')."""
    torch.manual_seed(0)
    model = TinyNet()
    stats = probe_gradients(model, make_batches(4, seed=7), ce_loss)
    part = partition_by_score(stats, 0.5, model=model, excluded=["head.weight"])
    assert "head.weight" in part.excluded and "head.weight" not in part.stable + part.unstable
    assert "head.weight" not in part.layers and "head.weight" not in part.scores
