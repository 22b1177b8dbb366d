"""Under torch.distributed (2 gloo processes on CPU) the probe's statistics equal one process on all batches."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldt.cli import leave_process
from ldt.core import partition_by_score, probe_gradients, warmup
from tests.conftest import TinyNet, ce_loss, make_batches

pytestmark = pytest.mark.slow  # two processes per test

CRITERIA = ("var", "mean", "abs_mean", "var_over_mean", "elementwise_var")


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """A CPU process group for one spawned worker; all ranks finish their work before it is torn down, and a worker
    whose work ended well leaves at once (:func:`ldt.cli.leave_process`): the interpreter's teardown after a gloo
    group now and then aborts the process (SIGABRT), which mp.spawn reports as the test failing."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()  # gloo can abort a rank whose peer tears the group down first
    finally:
        dist.destroy_process_group()
    leave_process(0)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, world, init_file):
        torch.manual_seed(0)
        model = TinyNet().eval()  # eval: BatchNorm statistics must not depend on which rank saw which batch
        batches = make_batches(6)
        # Uneven shards (4 + 2 batches) to exercise the weighted merge.
        mine = batches[:4] if rank == 0 else batches[4:]
        stats = probe_gradients(model, mine, ce_loss, train_mode=False, elementwise=True)
        record = {c: stats.scores(c) for c in CRITERIA}
        record["num_batches"] = stats.num_batches
        record["unstable"] = partition_by_score(stats, 0.5).unstable
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(record, handle)


@pytest.mark.timeout(120)
def test_two_rank_probe_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = TinyNet().eval()
    stats = probe_gradients(model, make_batches(6), ce_loss, train_mode=False, elementwise=True)
    for rank in range(2):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["num_batches"] == 6
        assert record["unstable"] == partition_by_score(stats, 0.5).unstable
        for criterion in CRITERIA:
            expected = stats.scores(criterion)
            assert record[criterion].keys() == expected.keys()
            for name, value in expected.items():
                assert record[criterion][name] == pytest.approx(value, rel=1e-9, abs=1e-15), (rank, criterion, name)


def _frozen_conv_linear_head() -> torch.nn.Module:
    """No BatchNorm: the loss of a concatenated batch is then exactly the mean of the two ranks' losses."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))


def _warmup_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, world, init_file):
        model = _frozen_conv_linear_head()
        warmup(model, make_batches(3, seed=rank), ce_loss, [r"^2\."], steps=3)
        torch.save(model.state_dict(), os.path.join(out_dir, f"warm{rank}.pt"))


@pytest.mark.timeout(120)
def test_two_rank_warmup_equals_single_process_on_the_union(tmp_path):
    """Ranks warming up on different batches end with the same head: the one of one process on both batches."""
    mp.spawn(_warmup_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    union = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
             for a, b in zip(make_batches(3, seed=0), make_batches(3, seed=1))]
    single = _frozen_conv_linear_head()
    warmup(single, union, ce_loss, [r"^2\."], steps=3)
    start = _frozen_conv_linear_head().state_dict()
    ranks = [torch.load(tmp_path / f"warm{rank}.pt", weights_only=True) for rank in range(2)]
    for name, value in single.state_dict().items():
        for state in ranks:
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    assert not torch.equal(single.state_dict()["2.weight"], start["2.weight"])
    assert torch.equal(single.state_dict()["0.weight"], start["0.weight"])
