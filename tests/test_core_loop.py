"""ldt.core driven by a training loop of the user's own (README "Methods"): mixed precision, gradient accumulation,
clipping, schedulers, resume, export; and the arguments such a loop gets wrong."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from ldt.core import METHODS, MethodConfig, MethodError, Partition, ProbeError, prepare_method


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def data(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)) for _ in range(count)]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4))


def config(name: str) -> MethodConfig:
    warm = {"warmup": {"steps": 2}} if name == "lpft" else {}
    return MethodConfig(method=name, unstable_ratio=0.5, probe={"num_batches": 3}, exchange={"interval": 2}, **warm)


def prepared(name: str, model: nn.Module, **kwargs):
    return prepare_method(model, config(name), batches=data(4, 0), loss_fn=mse, head_patterns=[r"^5\."],
                          log=lambda _: None, **kwargs)


def test_arguments_of_the_wrong_type_are_named():
    """An AttributeError deep inside was all a dict where a Partition or MethodConfig goes got."""
    saved = prepared("ldt", mlp()).partition.to_dict()
    with pytest.raises(MethodError, match=r"^partition: must be a Partition \(Partition\.from_dict\(saved\) reads a "
                                          r"saved to_dict\(\)\), got dict$"):
        prepare_method(mlp(), config("ldt"), partition=saved, resuming=True)
    with pytest.raises(MethodError, match=r"^config: must be a MethodConfig \(MethodConfig\(\*\*options\)\), got dict$"):
        prepare_method(mlp(), {"method": "ldt"}, batches=data(4, 0), loss_fn=mse)
    with pytest.raises(MethodError, match=r"^model: must be a torch\.nn\.Module, got str; batches: must be an "
                                          r"iterable of batches or batches\(purpose, seed\), got int$"):
        prepare_method("net", config("ldt"), batches=4, loss_fn=mse)
    assert prepare_method(mlp(), config("ldt"), partition=Partition.from_dict(saved), resuming=True).partition


# ---- the README's own loop -----------------------------------------------------------------------------------------
def build(method) -> tuple[list, list, list]:
    optimizers = method.check_optimizers([torch.optim.AdamW(b.parameters, lr=1e-2, weight_decay=0.1)
                                          for b in method.branches()])
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in optimizers]
    return optimizers, schedulers, [torch.amp.GradScaler("cpu") for _ in optimizers]


def own_loop(method, parts, batches, accumulate: int = 2) -> None:
    """Autocast, a GradScaler per branch, gradient accumulation, clipping, one scheduler per optimizer."""
    optimizers, schedulers, scalers = parts
    for start in range(0, len(batches), accumulate):
        for branch, optimizer, scaler in zip(method.branches(), optimizers, scalers):
            branch.module.train()
            optimizer.zero_grad(set_to_none=True)
            for batch in batches[start:start + accumulate]:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = mse(branch.module, batch) / accumulate
                scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(branch.parameters, 0.5)
            scaler.step(optimizer)
            scaler.update()
        for scheduler in schedulers:
            scheduler.step()
        method.step()


@pytest.mark.parametrize("name", list(METHODS))
def test_an_own_loop_resumed_from_a_weights_only_file_continues_bit_identically(name):
    batches = data(12, 1)
    straight = prepared(name, mlp())
    own_loop(straight, build(straight), batches)

    method = prepared(name, mlp())
    parts = build(method)
    own_loop(method, parts, batches[:6])
    file = io.BytesIO()
    torch.save({"method": method.state_dict(), "partition": method.partition and method.partition.to_dict(),
                **{key: [p.state_dict() for p in part] for key, part in zip(("optim", "sched", "scaler"), parts)}},
               file)
    file.seek(0)
    saved = torch.load(file, weights_only=True)
    partition = saved["partition"] and Partition.from_dict(saved["partition"])
    resumed = prepared(name, mlp(seed=1), partition=partition, resuming=True)
    resumed.load_state_dict(saved["method"])
    parts = build(resumed)
    for key, part in zip(("optim", "sched", "scaler"), parts):
        for thing, state in zip(part, saved[key], strict=True):
            thing.load_state_dict(state)
    own_loop(resumed, parts, batches[6:])

    expected, got = straight.deployed_state_dict(), resumed.deployed_state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    plain = mlp(seed=2)
    plain.load_state_dict(got, strict=True)
    assert torch.equal(plain(batches[0][0]), resumed.deployed().eval()(batches[0][0]))


@pytest.mark.parametrize("name", ["ldt", "ldt_s"])
def test_check_optimizers_names_what_a_loop_of_ones_own_would_silently_not_train(name):
    method = prepared(name, mlp())
    only_now = [torch.optim.SGD([p for p in b.parameters if p.requires_grad], lr=0.1) for b in method.branches()]
    if name == "ldt_s":  # its one optimizer must hold both groups, though only the current turn's requires grad
        with pytest.raises(MethodError, match=r"optimizer of the net branch lacks 4 of its trainable parameters"):
            method.check_optimizers(only_now)
    else:
        assert method.check_optimizers(only_now) == only_now
    with pytest.raises(MethodError, match=r"optimizer of the \w+ branch holds 8 parameter\(s\) of another network"):
        method.check_optimizers([torch.optim.SGD([*b.parameters, *mlp().parameters()], lr=0.1)
                                 for b in method.branches()])
    with pytest.raises(MethodError, match=r"^optimizers\[0\] is a list, not a torch\.optim\.Optimizer$"):
        method.check_optimizers([list(b.parameters) for b in method.branches()])
    decay = [torch.optim.AdamW([{"params": b.parameters[::2]}, {"params": b.parameters[1::2], "weight_decay": 0}])
             for b in method.branches()]
    assert method.check_optimizers(decay) == decay  # parameter groups that together hold the branch's parameters


@pytest.mark.parametrize("name", ["ft", "ldt", "ft_ema"])
@pytest.mark.parametrize("state", [None, [1, 2]])
def test_loading_something_that_is_not_a_state_is_named(name, state):
    """None (checkpoint.get('method') of a file saved without it) was an AttributeError: no attribute 'get'."""
    with pytest.raises(MethodError, match=rf"^not a '{name}' method state: got {type(state).__name__}, not "
                                          r"method\.state_dict\(\)'s dict$"):
        prepared(name, mlp()).load_state_dict(state)


@pytest.mark.parametrize("name", ["ldt", "ldt_s"])
def test_repartition_names_a_partition_given_as_its_saved_dict(name):
    """A loop that re-probes and keeps partitions as to_dict() got AttributeError: no attribute 'check_model'."""
    method = prepared(name, mlp())
    with pytest.raises(ValueError, match=r"^the partition must be a Partition \(Partition\.from_dict\(saved\) reads a "
                                         r"saved to_dict\(\)\), got dict$"):
        method.repartition(method.partition.to_dict())
    method.repartition(Partition.from_dict(method.partition.to_dict()))


@pytest.mark.parametrize("name, where", [("ldt", "probe batch 0"), ("lpft", "warm-up step 0")])
def test_a_batch_of_the_wrong_structure_says_it_came_from_batches(name, where):
    """The user's loss_fn unpacking a batch of another structure failed as a bare 'too many values to unpack'."""
    with pytest.raises(ValueError, match="too many values to unpack") as caught:
        prepare_method(mlp(), config(name), batches=[(x, y, y) for x, y in data(4, 0)], loss_fn=mse,
                       head_patterns=[r"^5\."], log=lambda _: None)
    assert type(caught.value) is ValueError  # the user's own exception, with a note on where its batch came from
    assert caught.value.__notes__ == [f"{where}: raised inside loss_fn(model, batch) on a batch from batches= (a "
                                      "batch of another structure than loss_fn expects?)"]


@pytest.mark.parametrize("name, error, step", [("lpft", ValueError, "warm-up"), ("ldt", ProbeError, "probe")])
def test_an_empty_loader_names_the_argument(name, error, step):
    """The warm-up said only 'the warm-up loader is empty', naming no argument."""
    with pytest.raises(error, match=rf"^the {step} received no batch: the {step} loader given as batches= is empty$"):
        prepare_method(mlp(), config(name), batches=[], loss_fn=mse, head_patterns=[r"^5\."], log=lambda _: None)


@pytest.mark.parametrize("name, ema, path", [("ft", None, "model"), ("ldt", None, "dual:primary"),
                                             ("ldt_s", None, "single:ema:unstable"), ("ft", 0.9, "ema:0.weight")])
def test_a_state_missing_an_inner_entry_is_named(name, ema, path):
    """A state with the right header but an entry missing (another version, cut short) was a bare KeyError."""
    method = prepared(name, mlp(), ema_decay=ema)
    state = method.state_dict()
    *outer, last = path.split(":")
    inner = state
    for key in outer:  # copies down to the entry: the live state stays whole
        inner[key] = dict(inner[key])
        inner = inner[key]
    del inner[last]
    with pytest.raises(MethodError, match=rf"^the saved method state has no '{path}' entry: it is incomplete or of "
                                          r"another version$"):
        method.load_state_dict(state)


def test_a_state_with_a_list_where_a_dict_belongs_is_named():
    method = prepared("ldt", mlp())
    state = {**method.state_dict(), "dual": [1]}
    with pytest.raises(MethodError, match=r"^the saved method state's 'dual' is a list, not a dict: it is incomplete "
                                          r"or of another version$"):
        method.load_state_dict(state)


@pytest.mark.parametrize("name", ["ft", "ldt", "ldt_s"])
def test_check_optimizers_checks_again_after_add_param_group(name):
    """The verdict was kept per optimizer object: a parameter group added afterwards was never checked."""
    method = prepared(name, mlp())
    optimizers = method.check_optimizers([torch.optim.SGD(b.parameters, lr=0.1) for b in method.branches()])
    optimizers[-1].add_param_group({"params": list(mlp().parameters())})
    with pytest.raises(MethodError, match=r"optimizer of the \w+ branch holds 8 parameter\(s\) of another network"):
        method.check_optimizers(optimizers)
    with pytest.raises(MethodError, match=r"holds 8 parameter\(s\) of another network"):
        method.train_step(data(1, 0)[0], mse, optimizers)


@pytest.mark.parametrize("ema", [None, 0.9])
def test_ldt_s_refuses_method_step_before_the_optimizer_step(ema):
    """method.step() before optimizer.step() silently dropped that step's update at every turn switch."""
    method = prepared("ldt_s", mlp(), ema_decay=ema)
    (optimizer,) = method.check_optimizers([torch.optim.SGD(method.branches()[0].parameters, lr=0.1)])
    net = method.branches()[0].module
    for step, batch in enumerate(data(3, 1)):  # the exchange interval is 2: the turns switch at the second step
        optimizer.zero_grad(set_to_none=True)
        mse(net, batch).backward()
        method.step()
        if step < 1:
            optimizer.step()
            continue
        with pytest.raises(MethodError, match=r"^LDT-S: an optimizer stepped right after method\.step\(\) switched "
                                              r"turns, with no gradient left: call method\.step\(\) after the "
                                              r"optimizer's step \(the switch drops the gradients of its step, so that "
                                              r"step's update was lost\), or no backward ran since the switch$"):
            optimizer.step()
        break


def test_ldt_s_in_the_documented_order_is_not_refused():
    """Right after a switch, a GradScaler that skips a step and an optimizer step with fresh gradients are fine."""
    method = prepared("ldt_s", mlp())
    optimizers = method.check_optimizers([torch.optim.SGD(method.branches()[0].parameters, lr=0.1)])
    for batch in data(6, 1):
        method.train_step(batch, mse, optimizers)
    own_loop(method, build(method), data(8, 2), accumulate=1)
