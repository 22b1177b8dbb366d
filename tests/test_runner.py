"""The pieces the classification and segmentation runners share (ldt.runner): flags -> core options, selection."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import os
import signal
from argparse import Namespace
from types import SimpleNamespace

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


@pytest.mark.parametrize("field, value, flag", [
    ("probe_batches", 0, "--probe-batches"), ("ema_weight", 2.0, "--ema-weight"), ("ema_weight", 1.0, "--ema-weight"),
    ("interval", 0, "--interval"), ("unstable_ratio", 1.5, "--unstable-ratio"), ("warmup_lr", -1.0, "--warmup-lr"),
    ("warmup_steps", -1, "--warmup-steps"), ("seed", 2**31, "--seeds"),
])
@pytest.mark.parametrize("method", ["ldt_fixed", "ft"])
def test_a_bad_flag_is_one_line_naming_that_flag(field, value, flag, method):
    """Also for ``ft``, which never warms up: a range does not depend on the methods run (``--warmup-steps -1``
    passed with ``--methods ft`` and failed once ``lpft`` was added to the same command)."""
    with pytest.raises(ValueError) as caught:
        runner.method_config(method, **{**FLAGS, field: value})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(flag + ": "), message


def test_a_method_the_flags_do_not_fit_names_the_flag_and_the_core_problem_names_no_option_path():
    """The core's problem names no option path of its own: the runner names the flag, SR the YAML key."""
    options = runner.method_config("lpft", **{**FLAGS, "warmup_steps": 0})
    config = SimpleNamespace(method="lpft", method_config=lambda: options)
    with pytest.raises(ValueError) as caught:
        runner.check_method(config, lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), ["^1\\."])
    assert str(caught.value) == "lpft: --warmup-steps: lpft needs its head warm-up: must be > 0"


def test_every_runner_flag_is_named_as_its_parser_declares_it():
    """The runners' parsers declare each run field's flag by runner.field_flag, the name their errors give."""
    from ldt.classification.__main__ import parse_args as classification_args
    from ldt.segmentation.__main__ import parse_args as segmentation_args

    for parse in (classification_args, segmentation_args):
        flags = set(parse.__globals__["HYPER"]) | set(runner.FLAG_NAMES.values()) | set(runner.SWEPT)
        with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as shown:
            parse(["--help"])
        for field in flags:
            assert f"  {runner.field_flag(field)} " in shown.getvalue(), field


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

    (tmp_path / "results.jsonl").touch()
    assert runner.main(Namespace(collect=str(tmp_path)), lambda: None, lambda *a, **k: {}, tabulate) == 2
    assert capsys.readouterr().err == f"error: --collect {tmp_path}: no records in {tmp_path}\n"


def test_a_bad_plan_is_one_line_and_exit_2_before_any_run(capsys):
    def prepare():
        raise ValueError("--data nowhere does not exist")

    def run(*args, **kwargs):
        raise AssertionError("no run may start")

    args = Namespace(collect=None, device="cpu", workers=None, progress=False)
    assert runner.main(args, prepare, run, lambda folder: "") == 2
    assert capsys.readouterr().err == "error: --data nowhere does not exist\n"


# ---- run states: a run stopped midway continues exactly ------------------------------------------------------------
def noisy_batches(start: int, stop=lambda position: False):
    """Batch i is fixed by i, plus noise from the global random numbers (as in-process augmentation draws);
    ``stop(i)``: SIGTERM once batch i's noise is drawn (a stop in the middle of loading a batch)."""
    for i in itertools.count(start):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(i))
        noise = torch.randn_like(x)
        if stop(i):
            os.kill(os.getpid(), signal.SIGTERM)
        yield x + 0.1 * noise, x.sum(1, keepdim=True)


def mlp_loss(network, batch):
    return nn.functional.mse_loss(network(batch[0]), batch[1])


def train_mlp(state=None, stop=lambda where, count: False, steps=9):
    """LDT+DPU on a small MLP with global-RNG noise in its batches and dropout: a resume must restore the branches,
    the exchange schedule, both optimizers, the selection, the random numbers and the stream position."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    stream = runner.ResumableStream(lambda start: noisy_batches(start, lambda i: stop("batch", i)),
                                    state.position if state else 0)
    counts = {"step": 0, "validate": 0}

    def loss_fn(network, batch):  # a dual-branch step calls it twice: call 9 is step 5's primary
        counts["step"] += 1
        if stop("step", counts["step"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return mlp_loss(network, batch)

    config = runner.method_config("ldt_dpu", **{**FLAGS, "warmup_steps": 0, "interval": 2})
    method = runner.prepared(state, lambda **resume: prepare_method(
        model, config, batches=stream, loss_fn=mlp_loss, log=lambda _: None, **resume))

    def validate(network):
        counts["validate"] += 1
        torch.rand(())  # as a DataLoader's iterator draws its seed from the global random numbers
        if stop("validate", counts["validate"]):
            os.kill(os.getpid(), signal.SIGTERM)
        network.eval()
        with torch.no_grad():
            return -float(mlp_loss(network, next(noisy_batches(1000)))), {}

    with runner.stop_on_signal():
        best = runner.train_and_select(method, stream, loss_fn, steps=steps, eval_every=3, lr=1e-2, weight_decay=0.0,
                                       validate=validate, evaluator=copy.deepcopy(model), state=state)
    return best, method.state_dict()


def assert_same_run(a, b):
    (best_a, final_a), (best_b, final_b) = a, b
    assert best_a.history == best_b.history and (best_a.step, best_a.score) == (best_b.step, best_b.score)
    assert all(torch.equal(best_a.state[k], best_b.state[k]) for k in best_a.state)
    flat_a, flat_b = dict(_tensors(final_a)), dict(_tensors(final_b))
    assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}")


@pytest.mark.parametrize("where, count, saved_step", [("step", 9, 5), ("validate", 2, 6), ("batch", 2 + 5, 5)])
def test_a_run_stopped_in_a_step_or_in_validation_continues_bit_identically(tmp_path, default_sigint, where, count,
                                                                              saved_step):
    """A stop inside a training step takes effect after it (the state is a whole step's); one during validation or
    while a batch loads at once, with the random-number state of the last step's end (validation and loading draw
    random numbers before the stop), and the resumed run validates that step first."""
    straight = train_mlp(runner.RunState(tmp_path / "straight.pt", "straight"))
    state = runner.RunState(tmp_path / "run.pt", "run")
    with pytest.raises(runner.Stopped):
        train_mlp(state, stop=lambda w, c: (w, c) == (where, count))
    resumed = runner.RunState(tmp_path / "run.pt", "run")
    assert resumed.saved["step"] == saved_step
    assert resumed.saved["checked"] == 3  # step 6's validation was cut short: it is redone
    assert_same_run(train_mlp(resumed), straight)
    assert_same_run(straight, train_mlp())  # and saving states changes nothing


def test_a_run_state_of_another_run_or_unreadable_starts_afresh_with_a_warning(tmp_path):
    train_mlp(runner.RunState(tmp_path / "a.pt", "a"), steps=3)
    with pytest.warns(UserWarning, match="the state of run a, not of b; the run starts afresh"):
        assert runner.RunState(tmp_path / "a.pt", "b").saved is None
    (tmp_path / "cut.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"cut.pt: not a readable run state \(cut off, or not written by this "
                                         r"runner: \w+\); the run starts afresh$"):
        assert runner.RunState(tmp_path / "cut.pt", "a").saved is None


def test_a_periodic_state_save_on_a_full_disk_warns_once_and_the_run_goes_on(disk, default_sigint):
    """A periodic save only shortens what a kill -9 would cost: the disk filling after the first save (step 3) keeps
    that state whole, warns once (the saves at steps 6 and 9 both fail), and the run ends as an uninterrupted one."""
    from tests.conftest import fill

    straight = train_mlp()
    path = disk / "states" / "run.pt"
    state = runner.RunState(path, "run", every_s=0.0)
    with pytest.warns(UserWarning) as warned:
        run = train_mlp(state, stop=lambda where, count: (where, count) == ("validate", 2) and not fill(disk))
    assert_same_run(run, straight)
    assert [str(w.message) for w in warned] == [
        f"cannot write {path}: no space left on device (the previous file, if any, is intact); the run goes on and "
        "tries again at its next save (a stop, or kill -9, resumes from the previous state)"]
    assert runner.RunState(path, "run").saved["step"] == 3 and sorted(p.name for p in path.parent.iterdir()) == \
        ["run.pt"]


def test_a_periodic_state_save_that_fails_for_another_reason_still_ends_the_run(tmp_path, monkeypatch):
    """Only a disk without room is waited out: a read-only or unwritable states folder is not freed by training on."""
    import errno

    from ldt.atomic import DiskError

    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    with pytest.raises(DiskError, match="run.pt: read-only file system"):
        train_mlp(runner.RunState(tmp_path / "run.pt", "run", every_s=0.0))


def test_state_minutes_inf_saves_only_when_stopped(tmp_path):
    import math

    assert runner.check_state_minutes(math.inf) == math.inf
    assert not runner.RunState(tmp_path / "s.pt", "s", every_s=60 * math.inf).due()
    assert runner.RunState(tmp_path / "s.pt", "s", every_s=0.0).due()
