"""LDT-S: the time-multiplexed schedule, its EMA values, composite and resume."""

from __future__ import annotations

import pytest
import torch

from ldt.core import ExchangeConfig, Partition, PartitionError, SingleBranchLDT, warmup
from tests.conftest import TinyNet, ce_loss, make_batches


def head_partition(model) -> Partition:
    names = [n for n, _ in model.named_parameters()]
    return Partition(stable=[n for n in names if not n.startswith("head")], unstable=["head.weight", "head.bias"])


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def sgd_steps(single: SingleBranchLDT, opt, batches) -> None:
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        ce_loss(single.model, batch).backward()
        opt.step()
        single.step()


def test_schedule_alternates_groups_and_applies_ema(tiny_net):
    part = head_partition(tiny_net)
    w = 0.9
    single = SingleBranchLDT(tiny_net, part, ExchangeConfig(dpu=False, weight=w), phase_steps=2)
    opt = torch.optim.SGD(single.trainable_parameters(), lr=0.1)
    start = snapshot(tiny_net)

    sgd_steps(single, opt, make_batches(1, seed=1))  # primary's turn, step 1
    now = snapshot(tiny_net)
    assert single.phase == "stable"
    assert not torch.equal(now["body.0.weight"], start["body.0.weight"])
    assert torch.equal(now["head.weight"], start["head.weight"])

    sgd_steps(single, opt, make_batches(1, seed=2))  # end of the primary's turn: switch
    assert single.phase == "unstable"
    trained_stable = {n: single.parked[i] for i, n in enumerate(part.stable)}
    live = snapshot(tiny_net)
    for name in part.stable:  # live stable = EMA of the start towards the trained values
        assert torch.allclose(live[name], w * start[name] + (1 - w) * trained_stable[name]), name
    for name in part.unstable:  # the auxiliary's unstable group, untouched so far
        assert torch.equal(live[name], start[name])
    assert [n for n, p in tiny_net.named_parameters() if p.requires_grad] == part.unstable

    sgd_steps(single, opt, make_batches(2, seed=3))  # auxiliary's turn, then switch back
    assert single.phase == "stable"
    trained_unstable = {n: single.parked[i] for i, n in enumerate(part.unstable)}
    live = snapshot(tiny_net)
    for name in part.stable:  # the primary's trained stable values are back
        assert torch.equal(live[name], trained_stable[name]), name
    for name in part.unstable:
        assert torch.allclose(live[name], w * start[name] + (1 - w) * trained_unstable[name]), name

    composite = single.composite()
    ema = dict(zip(part.stable + part.unstable, single.ema["stable"] + single.ema["unstable"]))
    for name, p in composite.named_parameters():
        assert torch.equal(p, ema[name]), name


def test_ldt_s_resume_is_bit_identical(tmp_path):
    def run(resume_at):
        torch.manual_seed(0)
        model = TinyNet()
        part = head_partition(model)
        config = ExchangeConfig(dpu=False)
        single = SingleBranchLDT(model, part, config, phase_steps=3)
        opt = torch.optim.Adam(single.trainable_parameters(), lr=1e-2)
        for i, batch in enumerate(make_batches(8, seed=5)):
            if i == resume_at:
                torch.save({"ldt": single.state_dict(), "opt": opt.state_dict()}, tmp_path / "s.pth")
                torch.manual_seed(9)
                single = SingleBranchLDT(TinyNet(), part, config, phase_steps=3)
                opt = torch.optim.Adam(single.trainable_parameters(), lr=1e-2)
                state = torch.load(tmp_path / "s.pth", weights_only=True)
                single.load_state_dict(state["ldt"])
                opt.load_state_dict(state["opt"])
            sgd_steps(single, opt, [batch])
        return single.composite_state_dict()

    straight, resumed = run(None), run(4)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_warmup_trains_only_the_named_subset(tiny_net):
    before = snapshot(tiny_net)
    tiny_net.body[0].weight.requires_grad_(False)
    losses = warmup(tiny_net, make_batches(1), ce_loss, [r"^head\."], steps=5,
                    optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.5))
    assert len(losses) == 5 and losses[-1] < losses[0]
    after = snapshot(tiny_net)
    for name in before:
        assert torch.equal(before[name], after[name]) == (not name.startswith("head.")), name
    assert tiny_net.body[0].weight.requires_grad is False and tiny_net.head.weight.requires_grad is True


def test_warmup_restores_the_mode_of_every_submodule(tiny_net):
    """The warm-up runs in train mode; afterwards every submodule is back in its own mode (an eval-mode model stays in
    eval mode, a BatchNorm frozen with .eval() stays frozen)."""
    tiny_net.eval()
    warmup(tiny_net, make_batches(2), ce_loss, [r"^head\."], steps=2)
    assert not any(module.training for module in tiny_net.modules())
    tiny_net.train()
    tiny_net.body[1].eval()
    warmup(tiny_net, make_batches(2), ce_loss, [r"^head\."], steps=2)
    assert tiny_net.training and tiny_net.head.training and not tiny_net.body[1].training


def test_warmup_errors(tiny_net):
    with pytest.raises(ValueError, match="match no parameter"):
        warmup(tiny_net, make_batches(1), ce_loss, [r"^classifier"], steps=1)
    with pytest.raises(ValueError, match="empty"):
        warmup(tiny_net, [], ce_loss, [r"^head"], steps=1)


def mixed_partition(model) -> Partition:
    """vs. ``head_partition``: body.0 stays stable, head.weight becomes stable, body.1/3 become unstable,
    head.bias stays unstable, ``unused`` becomes excluded."""
    names = [n for n, _ in model.named_parameters()]
    stable = ["body.0.weight", "body.0.bias", "head.weight"]
    return Partition(stable=stable, unstable=[n for n in names if n not in stable + ["unused"]], excluded=["unused"])


@pytest.mark.parametrize("steps", [1, 3])  # mid primary's turn, mid auxiliary's turn
def test_repartition_keeps_both_branch_views(tiny_net, steps):
    old = head_partition(tiny_net)
    single = SingleBranchLDT(tiny_net, old, ExchangeConfig(dpu=False, weight=0.9), phase_steps=2)
    opt = torch.optim.Adam(single.trainable_parameters(), lr=1e-2)
    sgd_steps(single, opt, make_batches(steps, seed=4))
    phase = single.phase
    # The two (virtual) LDT branches before the switch: P = [trained stable, EMA unstable], A = [EMA stable, trained
    # unstable]; the live network is the one whose turn it is.
    live = snapshot(tiny_net)
    host = {"stable": dict(zip(old.stable, single.ema["stable"])), "unstable": dict(zip(old.unstable, single.ema["unstable"]))}
    parked = dict(zip(getattr(old, "unstable" if phase == "stable" else "stable"), single.parked))
    if phase == "stable":
        primary, auxiliary = live, {**host["stable"], **parked}
    else:
        primary, auxiliary = {**parked, **host["unstable"]}, live
    new = mixed_partition(tiny_net)
    single.repartition(new)
    assert single.phase == phase and single.partition is new
    after = snapshot(tiny_net)
    for name in live:
        assert torch.equal(after[name], live[name]), name  # the live network is unchanged
    assert [n for n, p in tiny_net.named_parameters() if p.requires_grad] == getattr(new, phase)
    named = dict(tiny_net.named_parameters())
    assert [id(p) for p in single.trainable_parameters()] == [id(named[n]) for n in new.stable + new.unstable]
    # Each tensor: trained value from the branch that now trains its group, EMA from the other branch.
    for name, ema in zip(new.stable, single.ema["stable"]):
        assert torch.equal(ema, auxiliary[name]), name
    for name, ema in zip(new.unstable, single.ema["unstable"]):
        assert torch.equal(ema, primary[name]), name
    other = "unstable" if phase == "stable" else "stable"
    source = auxiliary if phase == "stable" else primary
    for name, value in zip(getattr(new, other), single.parked):
        assert torch.equal(value, source[name]), name
    # Training goes on with a fresh optimizer through the next switches.
    opt = torch.optim.Adam(single.trainable_parameters(), lr=1e-2)
    sgd_steps(single, opt, make_batches(4, seed=6))
    composite = single.composite_state_dict()
    for group in ("stable", "unstable"):
        for name, ema in zip(getattr(new, group), single.ema[group]):
            assert torch.equal(composite[name], ema), name
    assert torch.equal(composite["unused"], live["unused"])


def test_repartition_rejects_an_empty_group(tiny_net):
    single = SingleBranchLDT(tiny_net, head_partition(tiny_net), ExchangeConfig(dpu=False))
    with pytest.raises(PartitionError, match="both the stable and the unstable"):
        single.repartition(Partition(stable=[n for n, _ in tiny_net.named_parameters()], unstable=[]))


@pytest.mark.parametrize("edit, found", [
    (lambda s: s["ema"]["stable"].__setitem__(0, torch.zeros(2, 2)),
     r"'ema:stable' item 0 \('unused'\) is \[2, 2\] torch\.float32, the network's \[2\] torch\.float32"),
    (lambda s: s["ema"]["stable"].pop(), r"'ema:stable' holds 6 tensor\(s\), the stable group 7"),
    (lambda s: s["parked"].__setitem__(0, [0.0]), r"'parked' item 0 \('unused'\) is a list, not a tensor"),
    (lambda s: s.update(phase="both"), r"'phase' is 'both', not 'stable' or 'unstable'"),
    (lambda s: s.update(step="five"), r"'step' is 'five', not a step count"),
], ids=["ema-shape", "ema-length", "parked-type", "phase", "step"])
def test_a_bad_ldt_s_state_is_one_line_and_loads_nothing(tiny_net, edit, found):
    """The host copies, the turn and the step count were taken unchecked after the network had loaded: a tensor of
    another shape or a list one short loaded and failed at the next switch or deployed copy, a bad phase or step
    broke the half-loaded object (AttributeError: 'Partition' object has no attribute 'both')."""
    import copy
    single = SingleBranchLDT(tiny_net, head_partition(tiny_net), ExchangeConfig(dpu=False), phase_steps=2)
    other = SingleBranchLDT(TinyNet(), head_partition(tiny_net), ExchangeConfig(dpu=False), phase_steps=2)
    sgd_steps(other, torch.optim.SGD(other.trainable_parameters(), lr=0.1), make_batches(3, seed=1))
    state = copy.deepcopy(other.state_dict())
    edit(state)
    before = copy.deepcopy(single.state_dict())
    with pytest.raises(ValueError, match=rf"^the saved LDT-S state's {found}$"):
        single.load_state_dict(state)
    after = single.state_dict()
    assert after["phase"] == before["phase"] and after["step"] == before["step"]
    for key in before["model"]:
        assert torch.equal(before["model"][key], after["model"][key]), key
    for group in ("stable", "unstable"):
        assert all(torch.equal(a, b) for a, b in zip(before["ema"][group], after["ema"][group], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before["parked"], after["parked"], strict=True))


def test_a_bad_step_count_of_a_dual_branch_state_loads_nothing(tiny_net):
    import copy
    from ldt.core import DualBranch
    dual = DualBranch(tiny_net, head_partition(tiny_net), ExchangeConfig(dpu=False))
    state = copy.deepcopy(DualBranch(TinyNet(), head_partition(tiny_net), ExchangeConfig(dpu=False)).state_dict())
    state["primary"]["body.0.weight"] += 1
    state["step"] = "five"
    before = copy.deepcopy(dual.primary.state_dict())
    with pytest.raises(ValueError, match=r"^the saved dual-branch state's 'step' is 'five', not a step count$"):
        dual.load_state_dict(state)
    assert all(torch.equal(before[key], value) for key, value in dual.primary.state_dict().items())
