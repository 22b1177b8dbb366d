"""Under torch.distributed (2 gloo processes on CPU) the probe's statistics equal one process on all batches."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldt.core import partition_by_score, probe_gradients
from tests.conftest import TinyNet, ce_loss, make_batches

CRITERIA = ("var", "mean", "abs_mean", "var_over_mean", "elementwise_var")


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
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
    finally:
        dist.destroy_process_group()


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
