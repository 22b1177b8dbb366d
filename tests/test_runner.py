"""The pieces the classification and segmentation runners share (ldt.runner): flags -> core options, selection."""

from __future__ import annotations

import itertools
from argparse import Namespace

import pytest
import torch
from torch import nn

from ldt import runner
from ldt.core import MethodConfig, prepare_method
from ldt.core.config import ProbeConfig
from ldt.core.exchange import ExchangeConfig

FLAGS = dict(criterion="var", unstable_ratio=0.5, seed=0, probe_batches=2, warmup_steps=3, warmup_lr=1e-2,
             interval=1, ema_weight=0.99)


def test_flag_help_is_the_cores_own_description():
    assert runner.flag_help("probe_batches") == ProbeConfig.model_fields["num_batches"].description
    assert runner.flag_help("ema_weight") == ExchangeConfig.model_fields["weight"].description
    assert runner.flag_help("unstable_ratio") == MethodConfig.model_fields["unstable_ratio"].description


def test_method_config_maps_flags_and_drops_the_warmup_of_methods_that_never_warm_up():
    ldt = runner.method_config("ldt_dpu", **FLAGS)
    assert (ldt.probe.num_batches, ldt.warmup.steps, ldt.exchange.interval) == (2, 3, 1)
    assert runner.method_config("ft", **FLAGS).warmup.steps == 0  # FT trains the head with the rest from step 1


@pytest.mark.parametrize("flag, value", [("probe_batches", 0), ("ema_weight", 2.0), ("interval", 0),
                                         ("unstable_ratio", 1.5), ("warmup_lr", -1.0)])
def test_a_bad_flag_is_one_line_naming_that_flag(flag, value):
    with pytest.raises(ValueError) as caught:
        runner.method_config("ldt_fixed", **{**FLAGS, flag: value})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(flag + ": ")


def test_selection_keeps_the_best_deployed_network_and_the_earlier_one_on_ties():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    method = prepare_method(model, runner.method_config("ft", **FLAGS), log=lambda _: None)
    batches = itertools.repeat((torch.randn(4, 2), torch.randn(4, 1)))
    scores = iter([0.1, 0.5, 0.5, 0.2])  # steps 2, 4, 6 and the last (7): step 4 wins, the tie at 6 does not

    def loss_fn(network, batch):
        return nn.functional.mse_loss(network(batch[0]), batch[1])

    seen = {}

    def validate(network):
        score = next(scores)
        seen[score] = seen.get(score) or {k: v.clone() for k, v in network.state_dict().items()}
        return score, {"tag": score}

    best = runner.train_and_select(method, batches, loss_fn, steps=7, eval_every=2, lr=1e-2, weight_decay=0.0,
                                   validate=validate, evaluator=nn.Linear(2, 1))
    assert [entry["step"] for entry in best.history] == [2, 4, 6, 7]
    assert (best.step, best.score, best.details) == (4, 0.5, {"tag": 0.5})
    assert all(torch.equal(best.state[k], seen[0.5][k]) for k in best.state)


def test_collect_without_records_is_one_line_and_exit_2(tmp_path, capsys):
    def tabulate(folder):
        raise FileNotFoundError(f"no records in {folder}")

    assert runner.main(Namespace(collect=str(tmp_path)), lambda: None, lambda *a, **k: {}, tabulate) == 2
    assert capsys.readouterr().err == f"error: no records in {tmp_path}\n"


def test_a_bad_plan_is_one_line_and_exit_2_before_any_run(capsys):
    def prepare():
        raise ValueError("--data nowhere does not exist")

    def run(*args, **kwargs):
        raise AssertionError("no run may start")

    args = Namespace(collect=None, device="cpu", workers=None, progress=False)
    assert runner.main(args, prepare, run, lambda folder: "") == 2
    assert capsys.readouterr().err == "error: --data nowhere does not exist\n"
