"""Methods on unusual models and user mistakes: tied and left-out parameters, low precision, wrappers, optimizers that
do not match the branches, EMA copies, resume checks, snapshots, and errors raised before any data is read."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import threading

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ldt.core import (
    DualBranch,
    ExchangeConfig,
    MethodConfig,
    MethodError,
    Partition,
    PartitionError,
    ProbeError,
    SingleBranchLDT,
    method_class,
    match_parameters,
    partition_by_patterns,
    partition_by_score,
    prepare_method,
    probe_gradients,
    warmup,
)
from ldt.core.config import describe_errors

ALL_METHODS = ("ft", "ft_ema", "lpft", "deft", "ldt", "ldt_s")


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def data(count: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)) for _ in range(count)]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4))


class Tied(nn.Module):
    """The output layer shares the input layer's weight (``head.weight = emb.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(4, 4, bias=False)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(x))))


class Counting:
    """A loss that counts its calls: errors must come before any batch is evaluated."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        self.calls += 1
        return mse(model, batch)


def config(method: str, **options) -> MethodConfig:
    options.setdefault("unstable_ratio", 0.5)
    options.setdefault("probe", {"num_batches": 4})
    options.setdefault("exchange", {"interval": 1})
    if method == "lpft":
        options.setdefault("warmup", {"steps": 2})
    return MethodConfig(method=method, **options)


def prepared(model: nn.Module, method: str, head=(r"^4\.",), **options):
    return prepare_method(model, config(method, **options), batches=data(), loss_fn=mse, head_patterns=list(head),
                          log=lambda _: None)


def train(method, steps: int = 4) -> list[torch.optim.Optimizer]:
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    for batch in data(steps, seed=1):
        method.train_step(batch, mse, optimizers)
    return optimizers


# ---- 1. tied parameters ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deft", "ldt", "ldt_s", "ft_ema"])
def test_every_alias_of_a_tied_parameter_deploys_the_deployed_value(name):
    method = prepared(Tied(), name, head=[r"^mid\."])
    train(method)
    live = method.deployed_tensors()
    assert live["head.weight"] is live["emb.weight"]
    state = method.deployed_state_dict()
    deployed = method.deployed()
    assert torch.equal(state["head.weight"], state["emb.weight"])
    assert torch.equal(deployed.emb.weight, live["emb.weight"]) and deployed.head.weight is deployed.emb.weight
    if name == "ft_ema":  # the EMA, not the trained network
        assert not torch.equal(deployed.emb.weight, method.model.emb.weight)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: .cpu() copies each alias there"))])
@pytest.mark.parametrize("name", ["ft", "ldt", "ft_ema"])
def test_a_tied_parameter_is_saved_once_in_the_weights_file(name, device, tmp_path):
    """deployed_state_dict cloned each alias of a tied parameter apart, so net_g_*.pth held its values twice (and
    loaded as two independent tensors); on CUDA save_weights' per-key .cpu() copied them apart again. Both aliases
    are one tensor now, in memory and in the file."""
    from ldt.sr.checkpoints import save_weights

    method = prepared(Tied().to(device), name, head=[r"^mid\."])
    state = method.deployed_state_dict()
    assert state["head.weight"] is state["emb.weight"]
    save_weights(tmp_path / "net.pth", method.checkpoint())
    for params in torch.load(tmp_path / "net.pth", weights_only=True).values():
        assert params["head.weight"].untyped_storage().data_ptr() == params["emb.weight"].untyped_storage().data_ptr()
        assert torch.equal(params["head.weight"], state["emb.weight"].cpu())


def test_dual_branch_composite_takes_the_tied_stable_weight_from_the_auxiliary():
    model = Tied()
    dual = DualBranch(model, partition_by_patterns(model, [r"^mid\."]), ExchangeConfig(dpu=False, weight=0.5, interval=1))
    with torch.no_grad():
        dual.primary.emb.weight.add_(1.0)
    dual.step()
    composite = dual.composite()
    assert torch.equal(composite.emb.weight, dual.auxiliary.emb.weight)
    assert not torch.equal(composite.emb.weight, dual.primary.emb.weight)


@pytest.mark.parametrize("where", ["deft", "lpft", "partition_by_patterns", "warmup"])
def test_a_head_pattern_that_matches_only_the_alias_of_a_tied_parameter_names_the_tie(where):
    """named_parameters() lists a tied tensor once, under its first name (emb.weight): a pattern for the other name
    (head.weight, which the model and its state dict have) matched 'no parameter', with no word of the tie."""
    tie = r"'head\.weight' is tied to 'emb\.weight'"
    if where in ("deft", "lpft"):
        loss = Counting()
        with pytest.raises(MethodError, match=rf"head_patterns: .*{tie}"):
            prepare_method(Tied(), config(where), batches=data(), loss_fn=loss, head_patterns=[r"^head\."])
        assert loss.calls == 0
    elif where == "partition_by_patterns":
        with pytest.raises(PartitionError, match=tie):
            partition_by_patterns(Tied(), [r"^head\."])
    else:
        with pytest.raises(ValueError, match=tie):
            match_parameters(Tied(), [r"^head\."])


# ---- 2. low precision --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parameters_below_float32_are_refused_before_any_batch(dtype):
    loss = Counting()
    for name in ("ft", "ldt"):
        with pytest.raises(MethodError, match=r"model: parameter '0\.weight' is torch\.\w+16: .*keep float32 .*autocast"):
            prepare_method(mlp().to(dtype), config(name), batches=data(), loss_fn=loss)
    model = mlp().to(dtype)
    with pytest.raises(PartitionError, match="below float32"):
        DualBranch(model, partition_by_patterns(model, [r"^4\."]))
    assert loss.calls == 0


# ---- 3. a deployed EMA keeps tracking after deepcopy and Module.to --------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "to(float64)"])
def test_deployed_ema_tracks_after_deepcopy_and_to(how):
    method = prepare_method(mlp(), MethodConfig(method="ft_ema"), log=lambda _: None)
    batches = data(5, seed=2)
    if how == "deepcopy":
        method = copy.deepcopy(method)
    else:
        method.model.to(torch.float64)
        batches = [(x.double(), y.double()) for x, y in batches]
    expected = {name: p.detach().clone() for name, p in method.model.named_parameters()}
    optimizer = torch.optim.SGD(method.branches()[0].parameters, lr=0.1)
    for batch in batches:
        method.train_step(batch, mse, [optimizer])
        for name, p in method.model.named_parameters():
            expected[name] = method.decay * expected[name] + (1 - method.decay) * p.detach()
    for name, value in expected.items():
        assert torch.allclose(method.ema[name].to(value), value, atol=1e-6), name
    assert method.ema["0.weight"].dtype == method.model[0].weight.dtype


def test_deployed_ema_follows_one_moved_submodule():
    """Not only a whole-model move: the EMA of a submodule moved on its own moves (and keeps averaging) too."""
    method = prepare_method(mlp(), MethodConfig(method="ft_ema"), log=lambda _: None)
    last = method.model[-1]
    before = last.weight.detach().double().clone()
    last.to(torch.float64)
    with torch.no_grad():
        last.weight.add_(1.0)
    method.step()
    assert method.ema["4.weight"].dtype == torch.float64 and method.ema["0.weight"].dtype == torch.float32
    expected = method.decay * before + (1 - method.decay) * last.weight.detach()
    assert torch.allclose(method.ema["4.weight"], expected, atol=1e-6)


def test_deployed_ema_follows_a_moved_buffer():
    """Module.to changes a parameter in place but replaces a buffer by a new tensor: the EMA must copy the new one."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False))  # a submodule of buffers only
    method = prepare_method(model, MethodConfig(method="ft_ema"), log=lambda _: None)
    model[1].to(torch.float64)
    with torch.no_grad():
        model[1].running_mean.fill_(5.0)
    method.step()
    assert method.ema["1.running_mean"].dtype == torch.float64
    assert torch.equal(method.ema["1.running_mean"], torch.full((4,), 5.0, dtype=torch.float64))
    with torch.no_grad():
        model[1].running_mean.fill_(7.0)
    method.step()  # and keeps copying the live buffer afterwards
    assert torch.equal(method.deployed_state_dict()["1.running_mean"], torch.full((4,), 7.0, dtype=torch.float64))


# ---- 4. parameters the user froze, and integer parameters, are left out ------------------------------------------
@pytest.mark.parametrize("name", ALL_METHODS)
def test_user_frozen_parameters_are_left_out_of_every_method(name, caplog):
    model = mlp()
    model[0].requires_grad_(False)
    model[4].bias.requires_grad_(False)  # inside the head: the warm-up and DeFT leave it out too
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n in ("0.weight", "0.bias", "4.bias")}
    with caplog.at_level(logging.INFO, logger="ldt.core"):
        method = prepare_method(model, config(name), batches=data(), loss_fn=mse, head_patterns=[r"^4\."])
    notes = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith(f"3 parameter(s) left out of {name}") and "'0.weight'" in notes[0]
    if method.partition is not None:
        assert set(frozen) <= set(method.partition.excluded)
    trained = {id(p) for branch in method.branches() for p in branch.parameters}
    assert all(id(p) not in trained for branch in method.branches()
               for n, p in branch.module.named_parameters() if n in frozen)
    train(method)
    deployed = method.deployed()
    for n, p in deployed.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]) and not p.requires_grad, n
    assert torch.equal(model[0].weight, frozen["0.weight"])


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("change", ["freeze", "unfreeze"])
def test_requires_grad_changed_mid_training_is_refused(name, change):
    """The flags are read once, at prepare_method: a tensor frozen afterwards would still be exchanged (or trained
    again at LDT-S's next turn), one unfrozen would be in no optimizer. The next step names it instead."""
    model = mlp()
    model[0].bias.requires_grad_(False)  # left out from the start
    method = prepared(model, name)
    optimizers = train(method, steps=1)
    if change == "freeze":
        target = next(n for n, p in method.model.named_parameters() if p.requires_grad)
    else:
        target = "0.bias"
    method.model.get_parameter(target).requires_grad_(change == "unfreeze")
    with pytest.raises(MethodError, match=rf"requires_grad of '{re.escape(target)}' in the \w+ branch was set to "
                                          rf"{change == 'unfreeze'} after prepare_method: {name} decides"):
        method.train_step(data(1)[0], mse, optimizers)


def test_a_tensor_frozen_mid_training_trains_no_more_after_a_repartition():
    """The documented way to freeze a tensor mid-training: repartition() with it excluded; it keeps its value."""
    method = prepared(mlp(), "ldt")
    train(method, steps=1)
    part = method.partition
    target = part.stable[0]
    moved = Partition(stable=part.stable[1:], unstable=part.unstable, excluded=[*part.excluded, target],
                      scores={k: v for k, v in part.scores.items() if k != target},
                      layers={k: v for k, v in part.layers.items() if k != target})
    method.repartition(moved)
    kept = method.model.get_parameter(target).detach().clone()
    train(method, steps=2)
    assert torch.equal(method.deployed().get_parameter(target), kept)


class WithIndex(nn.Module):
    """An integer parameter (it must have requires_grad=False) beside trainable layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 4)
        self.idx = nn.Parameter(torch.arange(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x[:, self.idx])))))


@pytest.mark.parametrize("name", ["ft_ema", "ldt", "ldt_s", "deft"])
def test_integer_parameters_are_left_out(name):
    method = prepared(WithIndex(), name, head=[r"^c\."])
    if method.partition is not None:
        assert "idx" in method.partition.excluded
    train(method)
    assert torch.equal(method.deployed().idx, torch.arange(4))


def test_a_given_partition_must_exclude_the_frozen_parameters():
    model = mlp()
    model[0].requires_grad_(False)
    with pytest.raises(MethodError, match=r"partition: it puts 2 parameter\(s\) that do not train .*'0\.weight'"):
        prepare_method(model, config("deft"), partition=partition_by_patterns(model, [r"^4\."]))


def test_warmup_patterns_that_match_only_frozen_parameters_are_an_error():
    model = mlp()
    model[4].requires_grad_(False)
    with pytest.raises(MethodError, match=r"head_patterns: the head patterns match only parameters that do not train"):
        prepare_method(model, config("lpft"), batches=data(), loss_fn=mse, head_patterns=[r"^4\."])


@pytest.mark.parametrize("steps", [2.5, True, -1, "3"])
def test_warmup_steps_that_are_no_count_are_refused_before_any_step(steps):
    """warmup(steps=2.5) ran 3 steps and steps=True 1, without a word: a count is an integer >= 0."""
    model = mlp()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^warm-up steps must be an integer >= 0, got {re.escape(repr(steps))}$"):
        warmup(model, data(), mse, [r"^4\."], steps)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


# ---- 5. optimizers that do not match the branches ----------------------------------------------------------------
def test_optimizers_must_match_the_branches():
    method = prepared(mlp(), "ldt_fixed")
    batch = data(1)[0]
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    with pytest.raises(MethodError, match="the optimizer of the primary branch lacks"):
        method.train_step(batch, mse, optimizers[::-1])
    with pytest.raises(MethodError, match=r"ldt_fixed trains 2 branch\(es\) \(primary, auxiliary\): pass one optimizer"):
        method.train_step(batch, mse, optimizers[:1])
    method.train_step(batch, mse, optimizers)
    method.repartition(partition_by_patterns(method.model, [r"^0\."]))
    with pytest.raises(MethodError, match="optimizer of the primary branch lacks .* again after repartition"):
        method.train_step(batch, mse, optimizers)
    method.train_step(batch, mse, [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()])


def test_an_optimizer_with_another_networks_parameters_is_an_error():
    method = prepared(mlp(), "ft")
    stranger = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([*method.branches()[0].parameters, *stranger.parameters()], lr=0.1)
    with pytest.raises(MethodError, match="the optimizer of the net branch holds 2 parameter"):
        method.train_step(data(1)[0], mse, [optimizer])


# ---- 6. a resumed partition must decide the same exchange ----------------------------------------------------------
def reranked(partition: Partition) -> dict:
    """The same groups, the scores of the stable group reversed (so other DPU weights)."""
    scores = dict(partition.scores)
    stable = [layer for layer, _ in partition.layer_scores("stable")]
    for layer, other in zip(stable, reversed(stable)):
        scores[layer] = partition.scores[other]
    return {**partition.to_dict(), "scores": scores}


def test_resume_rejects_the_same_groups_with_other_scores():
    model = mlp()
    partition = partition_by_score(probe_gradients(model, data(), mse), 0.5)
    assert len(partition.layer_scores("stable")) > 1
    dual = DualBranch(model, partition)
    state = dual.state_dict()
    state["partition"] = reranked(partition)
    with pytest.raises(PartitionError, match="same groups but other scores"):
        dual.load_state_dict(state)
    single = SingleBranchLDT(mlp(), partition)
    state = single.state_dict()
    state["partition"] = reranked(partition)
    with pytest.raises(PartitionError, match="same groups but other scores"):
        single.load_state_dict(state)
    fixed = DualBranch(mlp(), partition, ExchangeConfig(dpu=False))
    state = fixed.state_dict()
    state["partition"] = reranked(partition)
    fixed.load_state_dict(state)  # with a fixed W the scores decide nothing


# ---- 7. state_dict holds live tensors (as torch); deepcopy is the snapshot -------------------------------------------
@pytest.mark.parametrize("name", ["ldt", "ldt_s", "ft_ema"])
def test_a_deepcopied_state_rolls_back_and_the_state_holds_live_tensors(name):
    method = prepared(mlp(), name)
    optimizers = train(method, 2)
    deployed, live = method.deployed_state_dict(), copy.deepcopy(method.model.state_dict())
    best = copy.deepcopy(method.state_dict())
    for batch in data(3, seed=4):
        method.train_step(batch, mse, optimizers)
    method.load_state_dict(best)
    assert all(torch.equal(v, method.deployed_state_dict()[k]) for k, v in deployed.items())
    assert all(torch.equal(v, method.model.state_dict()[k]) for k, v in live.items())
    if name == "ldt_s":
        state = method.single.state_dict()
        assert state["ema"]["stable"][0] is method.single.ema["stable"][0] and state["parked"][0] is method.single.parked[0]


# ---- 8. W = 1 cannot move the frozen group ------------------------------------------------------------------------
@pytest.mark.parametrize("options,message", [
    ({"dpu": False, "weight": 1.0}, "weight: must be < 1, got 1.0"),
    ({"stable_base": 1.0, "stable_rank_base": 0.0}, "stable_base: must be < 1, got 1.0"),
    ({"unstable_base": 1.0, "unstable_rank_base": 0.0}, "unstable_base: must be < 1, got 1.0"),
])
def test_a_weight_of_one_is_refused(options, message):
    """A field error, so every message (the SR options', the runners' flags) names the option."""
    with pytest.raises(ValidationError) as err:
        ExchangeConfig(**options)
    assert describe_errors(err.value, ExchangeConfig) == [message]


# ---- 9. repartition_every is the training loop's job -----------------------------------------------------------------
def test_train_step_refuses_repartition_every():
    method = prepared(mlp(), "ldt", repartition_every=2)
    with pytest.raises(MethodError, match="repartition_every: train_step does not re-probe"):
        train(method, 1)


# ---- 10. wrapped models ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [nn.DataParallel, lambda m: torch.compile(m, backend="eager")])
def test_wrapped_models_are_refused_before_the_probe(wrap):
    loss = Counting()
    with pytest.raises(MethodError, match=r"^model: (DataParallel|torch\.compile) wraps the model: pass the bare model"):
        prepare_method(wrap(mlp()), config("ldt"), batches=data(), loss_fn=loss)
    assert loss.calls == 0


# ---- 11. errors before expensive work; what a probe without gradients left ------------------------------------------
@pytest.mark.parametrize("decay", [1.5, -0.2, 1.0])
def test_an_invalid_ema_decay_is_refused_before_the_warmup(decay):
    loss = Counting()
    with pytest.raises(MethodError, match=rf"ema_decay: must be in \[0, 1\), got {decay}"):
        prepare_method(mlp(), config("ldt", warmup={"steps": 3}), batches=data(), loss_fn=loss,
                       head_patterns=[r"^4\."], ema_decay=decay)
    assert loss.calls == 0


class Gated(nn.Module):
    """An MLP with a one-element parameter (a scalar gate)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.gate = mlp(), nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.body(x) * self.gate


@pytest.mark.parametrize("criterion,model,message", [
    ("elementwise_var", mlp, r"probe:num_batches: criterion elementwise_var is a variance across probe batches: it "
                             r"needs at least 2, got 1"),
    ("var", Gated, r"probe:num_batches: criterion var pools the elements of a layer's probe gradients, so 1 batch "
                   r"gives no variance for the 1 layer\(s\) of one element \(gate\): use at least 2"),
])
def test_a_probe_too_short_for_a_variance_is_refused_before_any_batch(criterion, model, message):
    loss = Counting()
    with pytest.raises(MethodError, match=message):
        prepare_method(model(), config("ldt", criterion=criterion, probe={"num_batches": 1}), batches=data(),
                       loss_fn=loss)
    assert loss.calls == 0


def test_a_one_batch_probe_scores_the_layers_of_several_elements():
    """The documented rule: var pools every element of a layer's probe gradients, so one batch gives a score."""
    method = prepared(mlp(), "ldt", probe={"num_batches": 1})
    assert method.partition.probe_batches == 1 and all(v == v for v in method.partition.scores.values())


def test_parameters_without_gradient_in_the_probe_are_one_warning_before_training(caplog):
    """An unused branch: named with the count and what happens to it, at warning level, before the first step."""
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body, self.unused = mlp(), nn.Linear(4, 4)

        def forward(self, x):
            return self.body(x)

    with caplog.at_level(logging.WARNING, logger="ldt.core"):
        method = prepare_method(Unused(), config("ldt"), batches=data(), loss_fn=mse, log=lambda _: None)
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notes) == 1 and notes[0].startswith("2 parameter(s) got no gradient in any of the 4 probe batches")
    assert "'unused.weight'" in notes[0] and "never trained" in notes[0]
    assert {"unused.weight", "unused.bias"} <= set(method.partition.excluded)


def test_an_empty_stable_group_names_the_layers_without_gradient():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.unused = nn.Linear(4, 4, bias=False), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(PartitionError, match=r"with 1 layers; 2 parameter\(s\) got no gradient .*'unused\.weight'"):
        prepare_method(Unused(), config("ldt", unstable_ratio=0.4), batches=data(), loss_fn=mse)


@pytest.mark.parametrize("method", ["ldt", "ldt_s"])
def test_a_parameter_with_no_elements_is_excluded_not_lost_from_the_partition(method):
    """A size-0 parameter (an empty extra token, a zero-width adapter) gets a gradient of no elements: it used to
    vanish from the probe's layers and prepare_method stopped in 'model parameters missing from the partition'."""
    class Empty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.empty = mlp(), nn.Parameter(torch.zeros(0))

        def forward(self, x):
            return self.body(x) + self.empty.sum()

    model = Empty()
    prepared_method = prepare_method(model, config(method), batches=data(), loss_fn=mse, log=lambda _: None)
    assert "empty" in prepared_method.partition.excluded
    assert "empty" not in prepared_method.partition.stable + prepared_method.partition.unstable
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in prepared_method.branches()]
    prepared_method.train_step(data(1)[0], mse, optimizers)
    model.load_state_dict(prepared_method.deployed_state_dict(), strict=True)


# ---- 12. partition files with wrong field types ----------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    (lambda d: {**d, "stable": "0.weight"}, "'stable' must be a list of parameter names, got str"),
    (lambda d: {**d, "stable": [*d["stable"], None]}, "'stable' must be a list of parameter names"),
    (lambda d: {**d, "scores": {**d["scores"], "0.weight": "big"}}, "'scores' must map layer names to finite numbers"),
    (lambda d: {**d, "unstable_ratio": "0.5"}, "'unstable_ratio' must be a number strictly between 0 and 1 or null"),
    (lambda d: {k: v for k, v in d.items() if k != "layers"}, "'scores' without 'layers'"),
    (lambda d: {**d, "layers": {k: v for k, v in d["layers"].items() if k != "0.weight"}},
     "'scores' and 'layers' name different layers"),
    (lambda d: {**d, "stable": [], "unstable": d["stable"] + d["unstable"]}, "a dual branch needs both groups"),
])
def test_partition_files_are_checked_field_by_field_and_name_the_file(tmp_path, change, message):
    model = mlp()
    good = partition_by_score(probe_gradients(model, data(), mse), 0.5).to_dict()
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(change(good)))
    with pytest.raises(MethodError) as caught:
        prepare_method(model, config("ldt_dpu", partition_file=str(path)))
    text = str(caught.value)
    assert text.startswith("partition_file: ") and str(path) in text and message in text and "\n" not in text


def test_partition_load_prefixes_the_path(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"stable": "a", "unstable": []}))
    with pytest.raises(PartitionError, match=rf"^partition file {path}: 'stable' must be a list"):
        Partition.load(path)


# ---- 13. the largest usable ratio is suggested rounded down --------------------------------------------------------
def test_the_suggested_ratio_is_usable():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4, bias=False))  # 3 layers
    (where, message), = method_class("ldt").check(MethodConfig(unstable_ratio=0.7), model)
    assert where == "unstable_ratio" and message.endswith("use at most 0.6666")
    assert method_class("ldt").check(MethodConfig(unstable_ratio=0.6666), model) == []


# ---- 14. user mistakes are one-line errors ------------------------------------------------------------------------
def test_user_mistakes_are_one_line_method_errors():
    with pytest.raises(MethodError, match="loss_fn: must be callable"):
        prepare_method(mlp(), config("ldt"), batches=data(), loss_fn="mse")
    with torch.device("meta"):
        meta = mlp()
    with pytest.raises(MethodError, match="model: '0.weight' is on the meta device"):
        prepare_method(meta, config("ldt", criterion="random", exchange={"dpu": False}))
    method = prepared(mlp(), "ldt")
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    batch = data(1)[0]
    with pytest.raises(MethodError, match="loss_fn must be callable"):
        method.train_step(batch, None, optimizers)
    with pytest.raises(MethodError, match=r"primary branch: loss_fn must return a scalar tensor, got shape \(8, 4\)"):
        method.train_step(batch, lambda m, b: (m(b[0]) - b[1]) ** 2, optimizers)
    with pytest.raises(MethodError, match="loss_fn must return a scalar tensor, got float"):
        method.train_step(batch, lambda m, b: 1.0, optimizers)
    with pytest.raises(ProbeError, match="probe batch 0: loss_fn must return a scalar tensor, got float"):
        prepare_method(mlp(), config("ldt"), batches=data(), loss_fn=lambda m, b: 1.0)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64])
def test_a_loss_that_is_not_real_floating_point_is_named_where_it_was_computed(dtype):
    """A complex loss passed the checks and failed inside backward ('grad can be implicitly created only for real
    scalar outputs'); an integer one read as 'the loss has no gradient'."""
    def loss(model, batch):
        value = mse(model, batch)
        return value.to(dtype) if dtype.is_complex else value.detach().to(dtype)

    expected = rf"loss_fn must return a real floating-point scalar tensor, got {re.escape(str(dtype))}"
    with pytest.raises(ProbeError, match=rf"^probe batch 0: {expected}"):
        prepare_method(mlp(), config("ldt"), batches=data(), loss_fn=loss, head_patterns=[r"^4\."])
    with pytest.raises(ValueError, match=rf"^warm-up step 0: {expected}"):
        prepare_method(mlp(), config("lpft", warmup={"steps": 2}), batches=data(), loss_fn=loss,
                       head_patterns=[r"^4\."], log=lambda _: None)
    method = prepared(mlp(), "ft")
    with pytest.raises(MethodError, match=rf"^ft: the net branch: {expected}"):
        method.train_step(data(1)[0], loss, [torch.optim.SGD(method.branches()[0].parameters, lr=0.1)])


# ---- 15. LDT-S phase length; a short probe loader ------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, 2.5, True, "3"])
def test_phase_steps_that_are_not_a_positive_count_are_refused(steps):
    """2.5 was taken: step_count % 2.5 == 0 switched turns every 5 steps."""
    model = mlp()
    with pytest.raises(ValueError, match=f"phase_steps must be a positive number .*, got {re.escape(repr(steps))}$"):
        SingleBranchLDT(model, partition_by_patterns(model, [r"^4\."]), ExchangeConfig(dpu=False), phase_steps=steps)


@pytest.mark.parametrize("ratio", ["0.4", None, 1.5, float("nan")])
def test_partition_by_score_names_a_ratio_that_is_not_a_fraction(ratio):
    """'0.4' was a TypeError ('<' not supported between instances of 'float' and 'str')."""
    with pytest.raises(PartitionError, match=f"^unstable_ratio must be a number strictly between 0 and 1, got "
                                             f"{re.escape(repr(ratio))}$"):
        partition_by_score(None, ratio, "random", model=mlp())


def test_a_short_probe_loader_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ldt.core"):
        stats = probe_gradients(mlp(), data(3), mse, num_batches=10)
    assert stats.num_batches == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["the probe loader ended after 3 of the 10 batches asked for: the scores use 3"]


def test_resuming_runs_no_warm_up_or_probe_and_needs_the_partition_of_a_probed_method(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a resumed method takes the warm-up's and the probe's results from its state")

    monkeypatch.setattr("ldt.core.methods.warmup", never)
    monkeypatch.setattr("ldt.core.methods.probe_gradients", never)
    lpft = MethodConfig(method="lpft", warmup={"steps": 2}, head_patterns=[r"^4\."])
    assert prepare_method(mlp(), lpft, resuming=True).partition is None
    with pytest.raises(MethodError, match="^partition: resuming ldt_dpu needs the partition it was trained with$"):
        prepare_method(mlp(), MethodConfig(method="ldt_dpu"), batches=data(), loss_fn=mse, resuming=True)


# ---- 16. head patterns given as one string ------------------------------------------------------------------------
def test_head_patterns_given_as_a_string_are_refused():
    """A string is an iterable of one-character regexes: 'fc' would make every name with an 'f' or a 'c' the head."""
    loss = Counting()
    with pytest.raises(MethodError, match=r"^head_patterns: must be a list of regexes, got the string '4' "
                                          r"\(write \['4'\]\)$"):
        prepare_method(mlp(), config("deft"), batches=data(), loss_fn=loss, head_patterns="4")
    assert loss.calls == 0
    with pytest.raises(PartitionError, match=r"patterns must be a list of regexes, got the string 'fc'"):
        partition_by_patterns(mlp(), "fc")
    with pytest.raises(ValueError, match=r"patterns must be a list of regexes, got the string 'fc'"):
        warmup(mlp(), data(), mse, "fc", 1)



# ---- 17. a state saved with an EMA, loaded without one ------------------------------------------------------------
@pytest.mark.parametrize("name", ["ft", "ldt", "ldt_s"])
def test_a_state_saved_with_ema_decay_is_refused_without_one(name):
    with_ema = prepare_method(mlp(), config(name), batches=data(), loss_fn=mse, ema_decay=0.9, log=lambda _: None)
    train(with_ema)
    with pytest.raises(MethodError, match=r"the saved state was trained with ema_decay 0\.9: prepare this method "
                                          r"with ema_decay=0\.9"):
        prepared(mlp(), name).load_state_dict(with_ema.state_dict())


@pytest.mark.parametrize("name", ["ft", "ldt", "ldt_s"])
@pytest.mark.parametrize("bad, found", [
    (lambda ema: ema.update({"0.weight": torch.zeros(3, 3)}), r"1 tensor\(s\) of other shapes, e\.g\. \['0\.weight \[3, 3\] \(model \[6, 4\]\)'\]"),
    (lambda ema: ema.update({"extra.weight": torch.zeros(1)}), r"1 not in the model, e\.g\. \['extra\.weight'\]"),
    (lambda ema: ema.update({"4.bias": [0.0] * 4}), r"1 of another type, e\.g\. \['4\.bias \(list\)'\]"),
    (lambda ema: ema.update({"4.bias": torch.zeros(4, dtype=torch.complex64)}),
     r"1 of another type, e\.g\. \['4\.bias \(torch\.complex64, model torch\.float32\)'\]"),
], ids=["shape", "extra", "not-a-tensor", "dtype"])
def test_a_bad_ema_part_loads_nothing(name, bad, found):
    """DeployedEMA.load_state_dict loaded the inner method, then failed on the EMA tensors: half-loaded."""
    method = prepare_method(mlp(), config(name), batches=data(), loss_fn=mse, ema_decay=0.9, log=lambda _: None)
    train(method)
    other = prepare_method(mlp(), config(name), batches=data(), loss_fn=mse, ema_decay=0.9, log=lambda _: None)
    train(other, 6)
    state = copy.deepcopy(other.state_dict())
    bad(state["ema"])
    before = copy.deepcopy(method.state_dict())
    with pytest.raises(MethodError, match=r"^the saved state is of another network than this Sequential: " + found
                                          + r" \(in its 'ema'\)$"):
        method.load_state_dict(state)
    after = method.state_dict()
    leaves = torch.utils._pytree.tree_leaves
    assert [type(x) for x in leaves(before)] == [type(x) for x in leaves(after)]
    for old, new in zip(leaves(before), leaves(after)):
        assert torch.equal(old, new) if isinstance(old, torch.Tensor) else old == new
    assert not torch.equal(method.deployed_state_dict()["0.weight"], other.deployed_state_dict()["0.weight"])


@pytest.mark.parametrize("name, ema", [("ldt", None), ("deft", None), ("ldt_s", None), ("ldt", 0.9)])
def test_a_deployed_network_no_exchange_reached_yet_is_one_warning(name, ema, caplog):
    """exchange:interval larger than the steps trained: deployed() was the very network prepare_method was given
    (each group's deployed copy is the frozen one, moved only by an exchange), without a word."""
    options = {"exchange": {"interval": 4}, "unstable_ratio": 0.5, "probe": {"num_batches": 4}}
    method = prepare_method(mlp(), MethodConfig(method=name, **options), batches=data(), loss_fn=mse,
                            head_patterns=[r"^4\."], ema_decay=ema, log=lambda _: None)
    initial = mlp().state_dict()
    with caplog.at_level(logging.WARNING, logger="ldt.core"):
        method.deployed()  # before any step: the prepared network, as expected
        assert not caplog.records
        train(method, 3)
        deployed = method.deployed_state_dict()
        method.deployed()
    assert all(torch.allclose(deployed[key], initial[key], atol=1e-6) for key in initial)  # an EMA rounds
    turns = "the end of each group's first turn (steps 4 and 8)" if name == "ldt_s" else "the first exchange (step 4)"
    assert [r.getMessage() for r in caplog.records] == [
        f"the deployed network is still the one prepare_method was given: {name} trained 3 step(s), and its deployed "
        f"copy of each group moves only at {turns}; train at least that long, or lower exchange:interval"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldt.core"):
        train(method, 8 if name == "ldt_s" else 4)
        moved = method.deployed_state_dict()
        assert all(not torch.equal(moved[key], deployed[key]) for key in initial)
    assert not caplog.records


@pytest.mark.parametrize("name, part, ema", [("ldt", "dual", None), ("ldt_s", "single", None), ("ldt", "dual", 0.9)])
def test_a_state_saved_after_a_repartition_names_the_partition_to_resume_with(name, part, ema):
    """A state saved after repartition(), loaded into a method prepared by probing again (the first partition), said
    only 'the saved state was trained with a different partition than this dual branch': not which one to use."""
    method = prepare_method(mlp(), config(name), batches=data(), loss_fn=mse, ema_decay=ema, log=lambda _: None)
    train(method)
    method.repartition(partition_by_score(None, 0.5, "random", seed=3, model=mlp()))
    train(method)
    state = copy.deepcopy(method.state_dict())
    fresh = prepare_method(mlp(), config(name), batches=data(), loss_fn=mse, ema_decay=ema, log=lambda _: None)
    with pytest.raises(PartitionError, match=r"^the saved state was trained with a different partition than this "
                                             r"(dual branch|LDT-S network): prepare the method with the one the state "
                                             r"holds \(partition=Partition\.from_dict of its 'partition' entry, "
                                             r"resuming=True\); after repartition\(\) that is the last one$"):
        fresh.load_state_dict(state)
    saved = (state["inner"] if ema else state)[part]["partition"]
    resumed = prepare_method(mlp(), config(name), partition=Partition.from_dict(saved), resuming=True, ema_decay=ema)
    resumed.load_state_dict(state)
    deployed = method.deployed_state_dict()
    assert all(torch.equal(resumed.deployed_state_dict()[key], deployed[key]) for key in deployed)


# ---- 18. pickling a method that has trained ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_trained_method_pickles_and_trains_on(name):
    method = prepared(mlp(), name)
    train(method)
    buffer = io.BytesIO()
    torch.save(method, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    for key, value in method.deployed_state_dict().items():
        assert torch.equal(restored.deployed_state_dict()[key], value), key
    train(restored)  # the optimizer check runs again on the restored object


# ---- 19. hook-based weight_norm / spectral_norm (WDSR-style SR networks) --------------------------------------------
EVERY_METHOD = ("ft", "ft_ema", "lpft", "deft", "ldt", "ldt_fixed", "ldt_dpu", "ldt_s")
HOOK_NORMS = ("weight_norm", "spectral_norm")


def hooked_conv(norm: str) -> nn.Sequential:
    """Three tiny convolutions, the middle one under a hook-based torch.nn.utils.weight_norm / spectral_norm, whose
    computed weight is a non-leaf tensor attribute (copy.deepcopy refuses it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(2, 1, 3, padding=1))
    getattr(nn.utils, norm)(model[2])
    return model


def images(count: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 1, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)) for _ in range(count)]


def hooked_method(norm: str, name: str, **prepare):
    return prepare_method(hooked_conv(norm), config(name), batches=images(), loss_fn=mse, head_patterns=[r"^4\."],
                          log=lambda _: None, **prepare)


def train_on_images(method, seed: int, steps: int = 3) -> None:
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    for batch in images(steps, seed=seed):
        method.train_step(batch, mse, optimizers)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
@pytest.mark.parametrize("norm", HOOK_NORMS)
@pytest.mark.parametrize("name", EVERY_METHOD)
def test_hook_based_weight_reparametrisations_train_exchange_and_deploy(norm, name):
    """Every method trains such a model and deploys what it defines: the deployed network computes what a fresh one
    loaded with the deployed state computes; a dual branch deploys the auxiliary's stable and the primary's unstable
    tensors, and (spectral_norm) the primary's power-iteration buffers weight_u / weight_v, never the auxiliary's."""
    method = hooked_method(norm, name)
    train_on_images(method, seed=1)
    state = method.deployed_state_dict()
    deployed = method.deployed().eval()
    fresh = hooked_conv(norm)
    fresh.load_state_dict(state, strict=True)
    x = images(1, seed=5)[0][0]
    assert torch.equal(fresh.eval()(x), deployed(x))
    if name in ("deft", "ldt", "ldt_fixed", "ldt_dpu"):
        primary, auxiliary = method.model.state_dict(), method.dual.auxiliary.state_dict()
        for key in method.partition.stable:
            assert torch.equal(state[key], auxiliary[key]) and not torch.equal(state[key], primary[key]), key
        for key in method.partition.unstable:
            assert torch.equal(state[key], primary[key]) and not torch.equal(state[key], auxiliary[key]), key
        for key, _ in method.model.named_buffers():
            assert torch.equal(state[key], primary[key]) and not torch.equal(state[key], auxiliary[key]), key


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
@pytest.mark.parametrize("norm", HOOK_NORMS)
@pytest.mark.parametrize("name", EVERY_METHOD)
def test_hook_based_weight_reparametrisations_resume_pickle_and_deepcopy(norm, name):
    """A saved state resumes bit for bit, torch.save(method) and copy.deepcopy(method) of a method that has trained
    (its modules hold the non-leaf computed weight) make methods that train on exactly as the original, and neither
    the copy nor its training changes the original."""
    method = hooked_method(norm, name)
    train_on_images(method, seed=1)
    saved = io.BytesIO()
    torch.save(method.state_dict(), saved)
    pickled = io.BytesIO()
    torch.save(method, pickled)
    twin = copy.deepcopy(method)
    before = method.deployed_state_dict()
    train_on_images(twin, seed=2)
    assert all(torch.equal(before[key], value) for key, value in method.deployed_state_dict().items())
    resumed = hooked_method(norm, name, partition=method.partition, resuming=True)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    pickled.seek(0)
    unpickled = torch.load(pickled, weights_only=False)
    train_on_images(method, seed=2)
    expected = method.deployed_state_dict()
    for other in (twin, resumed, unpickled):
        if other is not twin:
            train_on_images(other, seed=2)
        assert all(torch.equal(expected[key], value) for key, value in other.deployed_state_dict().items())


def test_parametrized_models_deploy_what_trained():
    """torch.nn.utils.parametrizations (names '...parametrizations.weight.original0', spectral_norm's _u/_v buffers)
    train, exchange and deploy like plain parameters."""
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    def build():
        model = mlp()
        weight_norm(model[0])
        spectral_norm(model[2])
        return model

    x = data(1, seed=5)[0][0]
    for name in ("ft", "ldt", "ldt_s"):
        method = prepared(build(), name)
        train(method)
        fresh = build()
        fresh.load_state_dict(method.deployed_state_dict(), strict=True)
        assert torch.allclose(fresh.eval()(x), method.deployed().eval()(x))
        if name == "ldt":
            assert "0.parametrizations.weight.original0" in method.partition.stable + method.partition.unstable


# ---- 20. the model's parameters changed after prepare_method --------------------------------------------------------
class LoRA(nn.Module):
    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Parameter(0.1 * torch.randn(2, base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.a.T @ self.b.T


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("change", ["adapter", "new head"])
def test_parameters_added_or_replaced_after_prepare_are_refused(name, change):
    """A LoRA adapter or a fresh head put into the model after prepare_method is in no group and not in the other
    branch or the EMA: the deployed network would miss it (KeyError) or silently keep the old tensors."""
    method = prepared(mlp(), name)
    if change == "adapter":
        method.model[2] = LoRA(method.model[2])
        culprit = "2.a"
    else:
        method.model[4] = nn.Linear(6, 4)
        culprit = "4.weight"
    with pytest.raises(MethodError, match=rf"the parameters of the model changed after prepare_method \(e\.g\. "
                                          rf"'{re.escape(culprit)}'\).*prepare the method on the final model"):
        train(method)
    with pytest.raises(MethodError, match="the parameters of the model changed after prepare_method"):
        method.deployed()


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("change", ["added", "removed"])
def test_a_buffer_added_or_removed_after_prepare_is_refused_naming_it(name, change):
    """A buffer registered (or deleted) after prepare_method is not in the EMA's keys, fixed at prepare_method, nor in
    the auxiliary: ft_ema's deployed() failed in torch's many-line load_state_dict error ('Missing key(s): 2.extra')."""
    model = mlp()
    model[2].register_buffer("gone", torch.zeros(2))
    method = prepared(model, name)
    if change == "added":
        method.model[2].register_buffer("extra", torch.ones(3))
        method.model[2].register_buffer("scratch", torch.ones(3), persistent=False)  # not in any state: no change
        culprit = "'2.extra'"
    else:
        del method.model[2].gone
        culprit = "'2.gone' removed"
    with pytest.raises(MethodError, match=rf"^the buffers of the model changed after prepare_method \(e\.g\. "
                                          rf"{re.escape(culprit)}\).*prepare the method on the final model"):
        method.deployed()
    with pytest.raises(MethodError, match="the buffers of the model changed after prepare_method"):
        train(method)


# ---- 21. moving a method after prepare_method -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_to_moves_every_branch_and_the_ema(name):
    method = prepared(mlp(), name)
    assert method.to(torch.float64) is method
    batches = [(x.double(), y.double()) for x, y in data(3, seed=1)]
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    for batch in batches:
        method.train_step(batch, mse, optimizers)
    assert {p.dtype for branch in method.branches() for p in branch.module.parameters()} == {torch.float64}
    assert method.deployed()(batches[0][0]).dtype == torch.float64


@pytest.mark.parametrize("name", ["deft", "ldt"])
def test_moving_only_the_primary_of_a_dual_branch_is_named(name):
    method = prepared(mlp(), name)
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    method.model.to(torch.float64)
    with pytest.raises(MethodError, match=r"the primary branch is torch\.float64 on cpu but the auxiliary "
                                          r"torch\.float32 on cpu \(e\.g\. '0\.weight'\): .*method\.to\("):
        method.train_step((torch.randn(8, 4).double(), torch.randn(8, 4).double()), mse, optimizers)


def test_ldt_s_host_copies_follow_a_model_moved_alone():
    """LDT-S's method.model is its one network: model.double() after prepare_method trained in float64, but the host
    EMAs and parked group stayed float32, so every turn's EMA mixed the two and deployed() came out float32."""
    batches = [(x.double(), y.double()) for x, y in data(5, seed=1)]
    runs = []
    for move in ("method", "model"):
        method = prepared(mlp(), "ldt_s", exchange={"interval": 2})
        method.to(torch.float64) if move == "method" else method.model.double()
        optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
        for batch in batches:
            method.train_step(batch, mse, optimizers)
        assert {t.dtype for t in method.held_tensors()} == {torch.float64}, move
        runs.append(method.deployed_state_dict())
    assert {t.dtype for t in runs[1].values()} == {torch.float64}
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])


@pytest.mark.parametrize("name", ALL_METHODS)
def test_half_precision_after_prepare_is_refused(name):
    """Below float32 is refused at prepare_method; model.half() or method.to(torch.float16) afterwards too."""
    method = prepared(mlp(), name)
    with pytest.raises(MethodError, match=r"parameter '0\.weight' is torch\.float16: .*keep float32"):
        method.to(torch.float16)
    method = prepared(mlp(), name)
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    for branch in method.branches():
        branch.module.half()
    with pytest.raises(MethodError, match=r"parameter '0\.weight' is torch\.float16: .*keep float32"):
        method.train_step((torch.randn(8, 4).half(), torch.randn(8, 4).half()), mse, optimizers)


def test_a_deployed_ema_does_not_follow_below_float32():
    """A loop of its own (no train_step) that halves the model: the EMA would stall in float16, as prepare_method says."""
    method = prepared(mlp(), "ft_ema")
    method.model.half()
    with pytest.raises(MethodError, match=r"ema_decay: parameter '0\.weight' is torch\.float16: .*keep float32"):
        method.step()


# ---- 22. a one-shot generator that the warm-up exhausts -------------------------------------------------------------
def test_a_one_shot_generator_shorter_than_the_warmup_is_named():
    with pytest.raises(ValueError, match=r"the warm-up batches ran out after 3 of 5 steps and cannot be iterated "
                                         r"again \(a one-shot generator\?"):
        prepare_method(mlp(), config("ldt", warmup={"steps": 5}), batches=iter(data(3)), loss_fn=mse,
                       head_patterns=[r"^4\."], log=lambda _: None)
    with pytest.raises(ProbeError, match=r"the probe received no batch: .*the warm-up used up the one-shot iterator"):
        prepare_method(mlp(), config("ldt", warmup={"steps": 3}), batches=iter(data(3)), loss_fn=mse,
                       head_patterns=[r"^4\."], log=lambda _: None)


# ---- 23. the optimizers argument of train_step ------------------------------------------------------------------------
def test_train_step_names_a_single_optimizer_and_takes_a_generator():
    method = prepared(mlp(), "ft")
    optimizer = torch.optim.SGD(method.branches()[0].parameters, lr=0.1)
    with pytest.raises(MethodError, match=r"^optimizers: pass a list with one optimizer per branch \(net\), got a "
                                          r"single SGD$"):
        method.train_step(data(1)[0], mse, optimizer)
    method.train_step(data(1)[0], mse, (o for o in [optimizer]))
    dual = prepared(mlp(), "ldt")
    with pytest.raises(MethodError, match=r"one optimizer per branch \(primary, auxiliary\), got a single Adam"):
        dual.train_step(data(1)[0], mse, torch.optim.Adam(dual.model.parameters()))


@pytest.mark.parametrize("name", ["ft", "ldt"])
def test_parameters_reregistered_in_another_order_are_named(name):
    """The same tensors under the same names but in another order (a parameter popped and registered again): the
    refusal names it instead of escaping as a bare StopIteration."""
    method = prepared(mlp(), name)
    layer = method.model[0]
    layer.register_parameter("weight", layer._parameters.pop("weight"))
    with pytest.raises(MethodError, match=r"the parameters of the model changed after prepare_method \(e\.g\. "
                                          r"'0\.weight' re-registered"):
        method.branches()


# ---- buffers and hooks in the copies (the auxiliary, LDT-S's network, every deployed network) --------------------
@pytest.mark.parametrize("name", ["ft", "deft", "ldt", "ldt_s"])
def test_the_deployed_network_takes_its_buffers_from_the_network_that_trains_the_stable_group(name):
    """BatchNorm statistics are never exchanged: a dual branch deploys the primary's, LDT-S its one network's, and the
    auxiliary's own (moved by its forwards) are never deployed."""
    from tests.conftest import TinyNet, ce_loss, make_batches

    torch.manual_seed(0)
    method = prepare_method(TinyNet(), config(name), batches=make_batches(4), loss_fn=ce_loss,
                            head_patterns=[r"^head\."], log=lambda _: None)
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
    for batch in make_batches(3, seed=1):
        method.train_step(batch, ce_loss, optimizers)
    deployed = dict(method.deployed().named_buffers())
    primary = dict(method.model.named_buffers())
    assert all(torch.equal(deployed[key], primary[key]) for key in primary)
    if name in ("deft", "ldt"):
        auxiliary = dict(method.dual.auxiliary.named_buffers())
        assert not torch.equal(auxiliary["body.1.running_mean"], deployed["body.1.running_mean"])


class SelfHooked(nn.Module):
    """A module that registers a hook of its own in __init__ (a bound method, as archs do)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.calls = 0
        self.inner.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1

    def forward(self, x):
        return self.inner(x)


class Recorder:
    """A hook object with state."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, inputs, output) -> None:
        self.calls += 1


@pytest.mark.parametrize("name", ["ldt", "ldt_s"])
def test_hooks_registered_on_the_model_follow_deepcopy_into_every_copy(name):
    """The auxiliary and every deployed network are copy.deepcopy's of the model: its hooks come along. A plain
    function is the same function in every copy (it sees every copy's calls, each with that copy's module); a hook
    object is copied with its state; a module's own bound-method hook is rebound to the copy; a handle removes the
    hook from method.model only; the probe's forwards run the hooks too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), SelfHooked(), nn.Tanh(), nn.Linear(4, 4))
    seen: list[nn.Module] = []
    handle = model[4].register_forward_hook(lambda module, inputs, output: seen.append(module))
    recorder = Recorder()
    model[0].register_forward_hook(recorder)
    method = prepare_method(model, config(name, probe={"num_batches": 3}), batches=data(), loss_fn=mse,
                            log=lambda _: None)
    assert len(seen) == recorder.calls == model[2].calls == 3  # the probe's batches
    networks = [branch.module for branch in method.branches()] + [method.deployed()]
    if name == "ldt":
        networks.append(method.dual.auxiliary)
    for network in networks:
        seen.clear()
        calls, own = recorder.calls, network[2].calls
        network(data(1)[0][0])
        assert seen == [network[4]]
        copied = next(iter(network[0]._forward_hooks.values()))
        assert (copied is recorder) == (network is model) and recorder.calls == calls + (network is model)
        assert network[2].calls == own + 1
    handle.remove()
    seen.clear()
    for network in networks:
        network(data(1)[0][0])
    assert seen == [n[4] for n in networks if n is not model]


class CachesActivation(nn.Module):
    """Keeps its last output as a plain attribute (attention maps, features kept for a visualisation): after a
    forward with grad it is a non-leaf tensor, which copy.deepcopy refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.last: torch.Tensor | None = None
        self.history: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = torch.tanh(self.inner(x))
        self.history = [self.last]
        return self.last


@pytest.mark.parametrize("name", ["ft", "ldt", "ldt_s"])
def test_a_model_that_caches_its_last_activation_gets_its_copies(name):
    """The probe's (and training's) forwards leave a non-leaf tensor on the module: the auxiliary branch (made after
    the probe), every deployed network and copy.deepcopy(method) must still be made, each holding that value
    detached."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), CachesActivation(), nn.Linear(4, 4))
    method = prepare_method(model, config(name), batches=data(), loss_fn=mse, log=lambda _: None)
    train(method)
    deployed = method.deployed()
    cached = deployed[1].last
    assert cached.grad_fn is None and torch.equal(cached, model[1].last) and deployed[1].history[0] is cached
    fresh = nn.Sequential(nn.Linear(4, 4), CachesActivation(), nn.Linear(4, 4))
    fresh.load_state_dict(method.deployed_state_dict(), strict=True)
    x = data(1, seed=5)[0][0]
    assert torch.equal(fresh(x), deployed(x))
    assert copy.deepcopy(method).model[1].last.grad_fn is None


@pytest.mark.parametrize("where", ["probe", "train_step"])
def test_a_batch_on_another_device_than_the_model_is_noted_with_both_devices(where):
    """A batch left on another device (here 'meta', standing in for cpu vs cuda) failed in torch ('Tensor on device
    cpu is not on the expected device meta!'); train_step added no note at all. The error keeps its type and gains
    a note naming where, the batch's devices and the model's."""
    x, y = data(1)[0]
    batch = (x.to("meta"), y)
    if where == "probe":
        with pytest.raises(RuntimeError) as caught:
            prepare_method(mlp(), config("ldt"), batches=[batch], loss_fn=mse, log=lambda _: None)
        said = "probe batch 0"
    else:
        method = prepared(mlp(), "ldt")
        optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in method.branches()]
        with pytest.raises(RuntimeError) as caught:
            method.train_step(batch, mse, optimizers)
        said = "ldt: the primary branch"
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith(said + ": raised inside loss_fn(model, batch)")
    assert "the batch holds tensors on meta, cpu and the model's parameters are on cpu" in notes[0]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_the_state_of_another_network_is_one_line_naming_the_tensors(method):
    """A state saved from a wider network (same names, other shapes) was torch's many-line 'Error(s) in loading
    state_dict for Sequential: size mismatch for 0.weight ...' (FT, FT-EMA, LP-FT, DeFT), or 'trained with a
    different partition' (LDT, LDT-S), which sent the user looking at the partition."""
    def wide() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 6), nn.Tanh(), nn.Linear(6, 4))

    options = {"warmup": {"steps": 1}} if method == "lpft" else {}
    saved = prepared(wide(), method, **options).state_dict()
    target = prepared(mlp(), method, **options)
    with pytest.raises(ValueError, match=r"^the saved state is of another network than this Sequential: 3 tensor\(s\) "
                                         r"of other shapes, e\.g\. \['0\.weight \[9, 4\] \(model \[6, 4\]\)'"):
        target.load_state_dict(saved)


@pytest.mark.parametrize("method", ["deft", "ldt"])
def test_a_loss_fn_that_ignores_the_branch_it_is_given_is_named(method):
    """loss_fn(model, batch) computing the loss with the model passed to prepare_method (a closure) instead of its
    argument: the auxiliary's loss backpropagated into the primary, so the auxiliary silently never trained."""
    model = mlp()
    trained = prepared(model, method)
    optimizers = [torch.optim.SGD(branch.parameters, lr=0.1) for branch in trained.branches()]
    with pytest.raises(MethodError, match=rf"^{method}: the auxiliary branch: the loss gave none of the branch's "
                                          r"trained parameters a gradient: loss_fn must compute it with the model it "
                                          r"is given"):
        trained.train_step(data(1)[0], lambda _branch, batch: mse(model, batch), optimizers)


@pytest.mark.parametrize("second", ["ft", "ldt"])
def test_preparing_a_model_an_ldt_method_already_froze_in_part_is_named(second):
    """Comparing methods on one model object: the first LDT's primary froze its unstable group, and the second
    prepare_method read those flags as the user's, so FT silently trained half the network (a log line only)."""
    model = mlp()
    prepared(model, "ldt")
    with pytest.raises(MethodError, match=r"^model: Sequential was prepared by ldt already, which set requires_grad of "
                                          r"\d+ parameter\(s\) \(e\.g\. \['[^']+'"):
        prepared(model, second)
    untouched = mlp()
    prepared(untouched, "ft")
    prepared(untouched, "ldt")  # FT sets no flag: the same model again is fine


def test_a_partition_file_built_by_hand_is_read_as_given_not_as_a_probe_criterion(tmp_path, caplog):
    """score_partition logged 'Partition read from FILE (var)' for a partition built in Python and saved: the
    dataclass default criterion named a probe that never ran."""
    model = mlp()
    names = [name for name, _ in model.named_parameters()]
    path = Partition(stable=names[:2], unstable=names[2:]).save(tmp_path / "hand.json")
    with caplog.at_level(logging.INFO, logger="ldt.core"):
        prepare_method(model, config("ldt", partition_file=str(path), exchange={"interval": 1, "dpu": False}))
    assert f"Partition read from {path} (given)" in [r.getMessage() for r in caplog.records]


class HoldsALock(nn.Module):
    """A model that keeps an object copy.deepcopy refuses (a lock, as a logger's writer or a cache with a mutex
    holds): every method deploys a copy of the model, and a dual branch's auxiliary is one."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.net[2].guard = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_model_that_cannot_be_copied_is_named_before_the_warm_up(name):
    """Refused at prepare_method, naming the attribute, before the warm-up trains the head (the user's model) or any
    batch is read; not with a bare TypeError after the probe (dual branch) or after training, at deployed()."""
    model, loss = HoldsALock(), Counting()
    before = copy.deepcopy(model.net.state_dict())
    with pytest.raises(MethodError, match=r"^model: 'net\.2\.guard' of type lock cannot be copied: .*copy of the model"):
        warm = {} if method_class(name).warmup_rule == "never" else {"warmup": {"steps": 2}}
        prepare_method(model, config(name, **warm), batches=data(), loss_fn=loss, head_patterns=[r"^net\.4\."],
                       log=lambda _: None)
    assert loss.calls == 0
    assert all(torch.equal(before[key], value) for key, value in model.net.state_dict().items())


@pytest.mark.parametrize("build", [DualBranch, SingleBranchLDT])
def test_the_building_blocks_name_a_model_that_cannot_be_copied(build):
    model = HoldsALock()
    with pytest.raises(TypeError, match=r"^'net\.2\.guard' of type lock cannot be copied"):
        build(model, partition_by_patterns(model, [r"^net\.4\."]), ExchangeConfig(dpu=False))
    assert all(p.requires_grad for p in model.parameters())


def lazy_mlp() -> nn.Sequential:
    """A first layer that gets its shape at the first forward (``nn.LazyLinear``): until then it has no values."""
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyLinear(6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4))


LAZY = r"'0\.weight' is not initialised yet \(a LazyLinear\): run one forward"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_a_lazy_module_not_run_yet_is_named_before_any_batch(name):
    loss = Counting()
    with pytest.raises(MethodError, match=rf"^model: {LAZY}"):
        prepare_method(lazy_mlp(), config(name), batches=data(), loss_fn=loss, head_patterns=[r"^4\."])
    assert loss.calls == 0


@pytest.mark.parametrize("use", [
    lambda m: probe_gradients(m, data(), mse),
    lambda m: warmup(m, data(), mse, [r"^4\."], 2),
    lambda m: partition_by_patterns(m, [r"^4\."]),
    lambda m: DualBranch(m, partition_by_patterns(mlp(), [r"^4\."]), ExchangeConfig(dpu=False)),
    lambda m: SingleBranchLDT(m, partition_by_patterns(mlp(), [r"^4\."]), ExchangeConfig(dpu=False)),
], ids=["probe", "warmup", "partition_by_patterns", "DualBranch", "SingleBranchLDT"])
def test_the_building_blocks_name_a_lazy_module_not_run_yet(use):
    model = lazy_mlp()
    with pytest.raises((ProbeError, ValueError), match=f"^{LAZY}"):
        use(model)
    assert all(p.requires_grad for p in model.parameters())
