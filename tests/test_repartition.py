"""``ldt:repartition_every``: periodic re-probing of the composite and re-freezing, in the SR pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from ldt.sr.options import OptionsError, load_options
from tests.sr_fixtures import simulate_crash, tiny_cameras, tiny_options, write_options
from tests.test_sr_pipeline import final_params, run_training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def repartition_options(data_root, name: str, method: str) -> dict:
    opt = tiny_options(data_root, name, method)
    # var/mean rank the tiny SAFMN's layers identically for the whole run; var/|mean| moves two of them.
    opt["ldt"].update(repartition_every=2, criterion="var_over_mean")
    opt["logger"]["save_checkpoint_freq"] = 2
    opt["train"]["scheduler"] = {"type": "MultiStepLR", "milestones": [3], "gamma": 0.5}  # lr halves across a repartition
    return opt


def groups(path) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    return data["stable"], data["unstable"]


@pytest.mark.parametrize("method", ["ldt", "ldt_s"])
def test_repartition_refreezes_rebuilds_optimizers_and_resumes_exactly(method, data_root, tmp_path, monkeypatch):
    from ldt.models.ldt_model import LDTModel

    checked = []
    original_repartition = LDTModel.repartition

    def checked_repartition(self, current_iter):
        lrs = [o.param_groups[0]["lr"] for o in self.optimizers]
        schedules = [s.last_epoch for s in self.schedulers]
        original_repartition(self, current_iter)
        assert [o.param_groups[0]["lr"] for o in self.optimizers] == lrs == [1e-3 if current_iter < 3 else 5e-4] * len(lrs)
        assert [s.last_epoch for s in self.schedulers] == schedules
        assert all(s.optimizer is o for s, o in zip(self.schedulers, self.optimizers, strict=True))
        # The optimizers hold exactly the new trainable tensors, with no state yet.
        partition, branches = self.method.partition, self.method.branches()
        expected = [branch.parameters for branch in branches]
        if method == "ldt":
            trainable = [[n for n, p in b.module.named_parameters() if p.requires_grad] for b in branches]
            assert trainable == [partition.stable, partition.unstable]
        else:
            assert {id(p) for p in expected[0]} == {
                id(p) for n, p in self.net_g.named_parameters() if n in partition.stable + partition.unstable
            }
        for optimizer, params in zip(self.optimizers, expected, strict=True):
            assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in params]
            assert not optimizer.state
        checked.append(current_iter)

    monkeypatch.setattr(LDTModel, "repartition", checked_repartition)
    straight = repartition_options(data_root, f"straight_{method}", method)
    run_training(straight, tmp_path)
    assert checked == [2, 4]  # not at the last iteration
    exp = tmp_path / "experiments" / f"straight_{method}"
    assert sorted(p.name for p in exp.glob("partition*.json")) == ["partition.json", "partition_2.json", "partition_4.json"]
    first = groups(exp / "partition.json")
    assert groups(exp / "partition_4.json") != first, "the test needs a repartition that moves layers"
    saved = torch.load(exp / "training_states" / "4.state", weights_only=True)
    assert (saved["partition"]["stable"], saved["partition"]["unstable"]) == groups(
        exp / "partition_4.json"
    )

    # Crash after iteration 4 (at 5), then --auto_resume from 4.state: restores the iteration-4 partition.
    simulate_crash(monkeypatch, at=5)
    crashed = repartition_options(data_root, f"crash_{method}", method)
    with pytest.raises(KeyboardInterrupt):
        run_training(crashed, tmp_path)
    run_training(crashed, tmp_path, auto_resume=True)
    a, b = final_params(tmp_path, f"straight_{method}"), final_params(tmp_path, f"crash_{method}")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"repartition_every": -1}, "ldt:repartition_every: must be >= 0, got -1"),
        ({"repartition_every": "often"}, "ldt:repartition_every: expected an integer, got str 'often'"),
        ({"repartition_every": 2.5}, "ldt:repartition_every: expected an integer, got float 2.5"),
        ({"repartition_every": True}, "ldt:repartition_every: expected an integer, got bool True"),
        ({"repartition_every": 2, "method": "ft"}, "ldt:repartition_every: ft has no partition to re-probe"),
        ({"repartition_every": 2, "method": "deft"}, "ldt:repartition_every: deft has no partition to re-probe"),
        ({"repartition_every": 2, "criterion": "random"}, "ldt:repartition_every: re-probing needs a probe-based"),
        ({"repartition_every": 2, "partition_file": "PARTITION"}, "ldt:repartition_every: cannot re-probe a fixed"),
    ],
)
def test_bad_repartition_options_are_rejected_before_compute(changes, message, data_root, tmp_path):
    opt = tiny_options(data_root, "bad", "ldt")
    partition_file = tmp_path / "partition.json"
    partition_file.write_text("{}")
    opt["ldt"].update({k: str(partition_file) if v == "PARTITION" else v for k, v in changes.items()})
    with pytest.raises(OptionsError) as err:
        load_options(write_options(opt, tmp_path), is_train=True)
    assert message in str(err.value) and "bad.yml" in str(err.value)
    assert not (tmp_path / "experiments").exists()


def test_repartition_is_off_by_default(data_root):
    opt = tiny_options(data_root, "default", "ldt")
    from ldt.sr.options import prepare_options

    assert prepare_options(opt, is_train=True)["ldt"]["repartition_every"] == 0
