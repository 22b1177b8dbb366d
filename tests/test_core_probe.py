"""The probe's streaming statistics equal a brute-force computation on stored gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ldt.core import ProbeError, probe_gradients
from tests.conftest import ce_loss, make_batches


def stored_gradients(model, batches):
    """Brute force: keep every batch's gradient, as the official code does."""
    grads = {name: [] for name, p in model.named_parameters()}
    model.train()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        ce_loss(model, batch).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads[name].append(p.grad.detach().clone().double())
    return {k: torch.stack(v) for k, v in grads.items() if v}


def brute_scores(stacked: torch.Tensor) -> dict[str, float]:
    return {
        "var": torch.var(stacked).item(),
        "mean": torch.mean(stacked).item(),
        "abs_mean": stacked.abs().mean().item(),
        "var_over_mean": torch.var(stacked).item() / stacked.abs().mean().item(),
        "elementwise_var": stacked.var(dim=0).mean().item(),
    }


def test_scores_match_brute_force(tiny_net, batches):
    snapshot = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    torch.manual_seed(1)
    stats = probe_gradients(tiny_net, batches, ce_loss, elementwise=True)
    # BatchNorm running stats moved in train mode; restore them so the brute force sees the same model.
    tiny_net.load_state_dict(snapshot)
    expected = stored_gradients(tiny_net, batches)
    assert set(stats.layers) == set(expected)
    for criterion in ("var", "mean", "abs_mean", "var_over_mean", "elementwise_var"):
        scores = stats.scores(criterion)
        for name, stacked in expected.items():
            assert scores[name] == pytest.approx(brute_scores(stacked)[criterion], rel=1e-9, abs=1e-15), (criterion, name)
    assert stats.num_batches == len(batches)


def test_probe_restores_flags_grads_and_mode(tiny_net, batches):
    tiny_net.head.weight.requires_grad_(False)
    tiny_net.eval()
    sentinel = torch.ones_like(tiny_net.body[0].weight)
    tiny_net.body[0].weight.grad = sentinel
    before = {k: v.clone() for k, v in tiny_net.named_parameters()}
    stats = probe_gradients(tiny_net, batches, ce_loss)
    assert "head.weight" not in stats.layers and stats.not_probed == ["head.weight"]  # frozen by the user
    assert tiny_net.head.weight.requires_grad is False
    assert tiny_net.body[0].weight.grad is sentinel
    assert tiny_net.head.bias.grad is None
    assert not tiny_net.training
    for name, p in tiny_net.named_parameters():
        assert torch.equal(p, before[name]), f"probe changed {name}"


def test_no_gradient_parameters_are_reported(tiny_net, batches):
    stats = probe_gradients(tiny_net, batches, ce_loss)
    assert stats.no_grad == ["unused"]
    assert "unused" not in stats.scores("var")


def test_module_grouping_pools_weight_and_bias(tiny_net, batches):
    snapshot = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    stats = probe_gradients(tiny_net, batches, ce_loss, group_by="module")
    tiny_net.load_state_dict(snapshot)
    expected = stored_gradients(tiny_net, batches)
    pooled = torch.cat([expected["head.weight"].reshape(len(batches), -1), expected["head.bias"].reshape(len(batches), -1)], 1)
    assert stats.layers["head"] == ["head.weight", "head.bias"]
    assert stats.scores("var")["head"] == pytest.approx(torch.var(pooled).item(), rel=1e-9)


def test_num_batches_limits_the_probe(tiny_net, batches):
    stats = probe_gradients(tiny_net, iter(batches), ce_loss, num_batches=2)
    assert stats.num_batches == 2


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_a_num_batches_that_is_no_count_is_named(tiny_net, batches, count):
    """num_batches=0 was 'the probe loader given as batches= is empty' of a full loader, 2.5 probed 3 batches."""
    with pytest.raises(ProbeError, match=rf"^num_batches must be a positive integer \(or None: the whole loader\), "
                                         rf"got {count!r}$"):
        probe_gradients(tiny_net, iter(batches), ce_loss, num_batches=count)


def test_empty_loader_is_an_error(tiny_net):
    with pytest.raises(ProbeError, match="empty"):
        probe_gradients(tiny_net, [], ce_loss)


class NaNGradient(torch.autograd.Function):
    """Adds zero to the loss but sends a NaN gradient to its input."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.sum() * 0

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("nan"))


def test_non_finite_gradient_names_the_layer(tiny_net, batches):
    def poisoned(model, batch):
        return ce_loss(model, batch) + NaNGradient.apply(model.body[3].bias)

    with pytest.raises(ProbeError, match=r"body\.3\.bias"):
        probe_gradients(tiny_net, batches, poisoned)


def test_non_finite_loss_is_an_error(tiny_net, batches):
    with pytest.raises(ProbeError, match="not finite"):
        probe_gradients(tiny_net, batches, lambda m, b: ce_loss(m, b) * float("inf"))


def test_single_batch_gives_nan_elementwise_variance(tiny_net, batches):
    stats = probe_gradients(tiny_net, batches[:1], ce_loss, elementwise=True)
    assert math.isnan(stats.scores("elementwise_var")["head.bias"])


def test_probe_in_train_mode_leaves_batchnorm_statistics_untouched(tiny_net):
    before = {name: b.clone() for name, b in tiny_net.named_buffers()}
    probe_gradients(tiny_net, make_batches(3), ce_loss, train_mode=True)
    for name, buffer in tiny_net.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_module_grouping_keeps_a_parametrized_weight_in_its_module():
    """torch.nn.utils.parametrizations put a module's weight under '<module>.parametrizations.weight.original*': with
    group_by='module' it still pools with the module's bias (one layer per Linear, not one per parametrization)."""
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    from ldt.core import layer_groups

    model = nn.Sequential(weight_norm(nn.Linear(4, 4)), spectral_norm(nn.Linear(4, 4)), nn.Linear(4, 4))
    assert layer_groups(model, "module") == {
        "0": ["0.bias", "0.parametrizations.weight.original0", "0.parametrizations.weight.original1"],
        "1": ["1.bias", "1.parametrizations.weight.original"],
        "2": ["2.weight", "2.bias"],
    }


def test_probe_restores_the_mode_of_every_submodule(tiny_net, batches):
    """A BatchNorm the user froze with .eval() inside a training model stays frozen after the probe (model.train()
    alone would switch every submodule back on)."""
    tiny_net.train()
    tiny_net.body[1].eval()
    probe_gradients(tiny_net, batches, ce_loss, num_batches=2)
    assert tiny_net.training and not tiny_net.body[1].training
    probe_gradients(tiny_net, batches, ce_loss, num_batches=2, train_mode=False)
    assert tiny_net.training and not tiny_net.body[1].training and tiny_net.body[0].training


def test_a_frozen_parameter_is_probed_only_when_named(tiny_net, batches):
    """``parameters=`` probes what it names whatever its flag (a live branch's frozen group); the flag comes back."""
    tiny_net.head.weight.requires_grad_(False)
    names = [name for name, _ in tiny_net.named_parameters()]
    stats = probe_gradients(tiny_net, batches, ce_loss, parameters=names)
    assert "head.weight" in stats.layers and stats.not_probed == []
    assert tiny_net.head.weight.requires_grad is False


def test_a_model_where_nothing_trains_is_named_before_any_batch(tiny_net):
    tiny_net.requires_grad_(False)
    calls = []
    with pytest.raises(ProbeError, match=r"no parameter of TinyNet trains .*parameters="):
        probe_gradients(tiny_net, make_batches(2), lambda m, b: calls.append(b) or ce_loss(m, b))
    assert calls == []


class Bag(torch.nn.Module):
    """An embedding bag of token ids (from the inputs' magnitudes); ``sparse=True`` gives its weight sparse gradients."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 4, sparse=sparse)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x.flatten(1)[:, :6].abs() * 3).long().clamp(max=9)
        return self.head(self.emb(ids).mean(1))


@pytest.mark.parametrize("criterion", ["var", "mean", "abs_mean", "var_over_mean", "elementwise_var"])
def test_sparse_gradients_score_as_their_dense_equivalent(batches, criterion):
    """nn.Embedding(sparse=True) (a memory saving, not another gradient) scores as the same embedding with dense
    gradients: the rows no batch touched count as zeros, as they do in a dense gradient."""
    scores = [probe_gradients(Bag(sparse), batches, ce_loss, elementwise=True).scores(criterion)
              for sparse in (True, False)]
    assert "emb.weight" in scores[0] and scores[0] == pytest.approx(scores[1], rel=1e-9)


@pytest.mark.parametrize("stage", ["probe", "warmup"])
def test_a_batch_that_fails_mid_bar_ends_the_bars_line_before_the_error(stage, tiny_net, capsys):
    """A probe or warm-up batch that failed left its progress bar open: the caller's one error line was written on
    the bar's line (``LDT probe:   0%| ... 0/3 [...]error: ...``) and the bar was drawn again below it."""
    from ldt.core import warmup

    def failing():
        yield from make_batches(1)
        raise OSError("cannot read the second batch")

    run = {"probe": lambda: probe_gradients(tiny_net, failing(), ce_loss, num_batches=3, progress=True,
                                            distributed=False),
           "warmup": lambda: warmup(tiny_net, failing(), ce_loss, [".*"], 3, progress=True, distributed=False)}[stage]
    try:
        run()
    except OSError as err:  # read while the error is handled, as a caller prints its line (the frames still live)
        assert str(err) == "cannot read the second batch"
        assert capsys.readouterr().err.endswith("\n")  # the bar is closed: what is written next starts a line
    else:
        pytest.fail("the failing batch raised nothing")
