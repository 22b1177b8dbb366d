"""Multi-process training (2 gloo processes on CPU) matches one process with the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.sr_fixtures import SpareNet, register_spare_net, tiny_cameras, tiny_options, write_options

pytestmark = pytest.mark.slow  # two processes per test


def deterministic_options(data_root, name: str, batch: int, method: str) -> dict:
    """No random crop (patch = whole training patch) and no flips: both runs see exactly the same pixels."""
    opt = tiny_options(data_root, name, method)
    opt["datasets"]["train"].update(use_hflip=False, use_rot=False, batch_size_per_gpu=batch)
    opt["ldt"]["probe"] = {"num_batches": 6, "batch_size": 1}
    opt["val"]["val_freq"] = 1000
    opt["logger"]["save_checkpoint_freq"] = 1000
    return opt


def _worker(rank: int, world: int, port: int, options_file: str, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from ldt.cli import leave_process
    from ldt.sr.options import load_options
    from ldt.sr.train import init_distributed, train

    opt = load_options(options_file, is_train=True)
    init_distributed(opt, "pytorch")
    try:
        train(opt, root=Path(root))
    finally:
        dist.destroy_process_group()
    leave_process(0)  # not the interpreter's teardown, which a gloo group now and then aborts (as Train_pip.py)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["ldt", "ldt_s"])
def test_two_process_ddp_equals_single_process(tmp_path, method):
    """Same partition and weights; the tolerance is far below one unsynchronised step (LDT-S once diverged by 4e-6
    because DDP had registered only the group trainable at wrap time)."""
    data_root = tiny_cameras(tmp_path / "cams")
    ddp_file = write_options(deterministic_options(data_root, "ddp", batch=1, method=method), tmp_path)
    mp.spawn(_worker, args=(2, free_port(), str(ddp_file), str(tmp_path)), nprocs=2, join=True)

    from ldt.sr.options import load_options
    from ldt.sr.train import train

    single = load_options(write_options(deterministic_options(data_root, "single", batch=2, method=method), tmp_path), is_train=True)
    single.update(dist=False, rank=0, world_size=1)
    train(single, root=tmp_path)

    def load(name):
        exp = tmp_path / "experiments" / name
        return (exp / "partition.json").read_text(), torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)["params"]

    (ddp_partition, ddp_params), (single_partition, single_params) = load("ddp"), load("single")
    import json

    a, b = json.loads(ddp_partition), json.loads(single_partition)
    assert (a["stable"], a["unstable"]) == (b["stable"], b["unstable"])
    assert a["probe_batches"] == b["probe_batches"] == 6
    for key in single_params:
        assert torch.allclose(ddp_params[key], single_params[key], rtol=1e-5, atol=1e-7), key


@pytest.mark.timeout(300)
def test_two_processes_in_file_order_probe_the_patches_of_one(tmp_path):
    """``ldt:probe:order: file`` under DDP: the ranks' probe batches are together the first ``num_batches`` of one
    process (2 of 3 possible batches here), so the scores are those of one process."""
    import json

    from ldt.sr.options import load_options
    from ldt.sr.train import train

    data_root = tiny_cameras(tmp_path / "cams")

    def options(name: str) -> dict:
        opt = deterministic_options(data_root, name, batch=2, method="ldt")
        opt["ldt"]["probe"] = {"num_batches": 2, "batch_size": 2, "order": "file"}
        opt["train"]["total_iter"] = 1
        return opt

    mp.spawn(_worker, args=(2, free_port(), str(write_options(options("ddp"), tmp_path)), str(tmp_path)), nprocs=2,
             join=True)
    single = load_options(write_options(options("single"), tmp_path), is_train=True)
    single.update(dist=False, rank=0, world_size=1)
    train(single, root=tmp_path)
    a, b = (json.loads((tmp_path / "experiments" / name / "partition.json").read_text()) for name in ("ddp", "single"))
    assert a["probe_batches"] == b["probe_batches"] == 2
    assert (a["stable"], a["unstable"]) == (b["stable"], b["unstable"])
    assert a["scores"].keys() == b["scores"].keys()
    assert all(a["scores"][k] == pytest.approx(b["scores"][k], rel=1e-9, abs=1e-30) for k in b["scores"])


def _spare_net_worker(rank: int, world: int, port: int, options_file: str, root: str) -> None:
    """:func:`_worker` with ``SpareNet`` registered, as the user's ``*_arch.py`` would register it."""
    register_spare_net()
    _worker(rank, world, port, options_file, root)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["ft", "ft_ema"])
def test_ddp_trains_a_network_with_a_parameter_its_forward_does_not_use(tmp_path, method):
    """Every parameter trains under FT: DDP, built without find_unused_parameters, stopped the second step in
    'RuntimeError: Expected to have finished reduction in the prior iteration ...'. The branch is now wrapped with it
    when a meta forward and backward of the network leaves a trainable parameter without a gradient."""
    data_root = tiny_cameras(tmp_path / "cams")
    opt = deterministic_options(data_root, "spare", batch=1, method=method)
    opt["network_g"] = {"type": "SpareNet"}
    opt["train"]["total_iter"] = 3
    mp.spawn(_spare_net_worker, args=(2, free_port(), str(write_options(opt, tmp_path)), str(tmp_path)), nprocs=2,
             join=True)
    torch.manual_seed(0)  # the run's manual_seed: the initialisation the spare parameter keeps
    params = torch.load(tmp_path / "experiments" / "spare" / "models" / "net_g_latest.pth", weights_only=True)["params"]
    assert torch.equal(params["spare.weight"], SpareNet().spare.weight)
    assert not torch.equal(params["body.weight"], SpareNet().body.weight)



def two_ranks(tmp_path: Path, options_file: Path, timeout: float = 60, stop_after: Path | None = None,
              site: str | None = None, extra: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """``Train_pip.py -opt FILE --launcher pytorch`` as two ranks on CPU (gloo), started with the variables torchrun
    sets, but without torchrun (which ends the other ranks once one exits): (exit status, stderr) of each, ranks
    still running after ``timeout`` seconds killed (a rank left waiting for another fails the test, not hang it).
    ``stop_after``: once that file exists, both ranks are sent SIGTERM, as a launcher or a cluster sends it.
    ``site``: the text of a ``sitecustomize.py`` each rank runs at its start (a fault injected on one rank).
    ``extra``: more arguments, after the others."""
    repo = Path(__file__).resolve().parents[1]
    path = str(repo)
    if site is not None:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(site)
        path = os.pathsep.join([str(tmp_path / "site"), path])
    port = free_port()
    ranks = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        ranks.append(subprocess.Popen([sys.executable, str(repo / "Train_pip.py"), "-opt", str(options_file),
                                       "--launcher", "pytorch", "--root", str(tmp_path), *extra], env=env, cwd=repo,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    if stop_after is not None:
        deadline = time.monotonic() + timeout
        while not stop_after.exists() and time.monotonic() < deadline and ranks[0].poll() is None:
            time.sleep(0.2)
        time.sleep(1)  # a few steps into training
        for process in ranks:
            process.send_signal(signal.SIGTERM)
    results = []
    for process in ranks:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in ranks:
                other.kill()
            _, stderr = process.communicate()
            stderr += f"\n(still running after {timeout} s: killed)"
        results.append((process.returncode, stderr))
    return results


@pytest.mark.timeout(120)
def test_an_experiment_locked_by_another_run_stops_every_rank_in_one_line(tmp_path):
    """Only rank 0 takes the experiment lock: refused, it exited 2 while rank 1 went on into the barrier after it,
    and failed there with gloo's 'Connection reset by peer' traceback (NCCL waited for the process group's timeout).
    The ranks now agree on the start-up verdict: both stop at once with status 2, the refusal said once (rank 0)."""
    from ldt.atomic import lock_beside
    from tests.conftest import lock_held_elsewhere

    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "locked", "ldt")
    exp = tmp_path / "experiments" / "locked"
    exp.parent.mkdir(parents=True)
    with lock_held_elsewhere(lock_beside(exp), 90) as holder:
        (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {exp} is in use by another run (pid {holder.pid}, "), err0
    assert "Traceback" not in err0 + err1 and "error:" not in err1, (err0, err1)
    assert not exp.exists()


@pytest.mark.timeout(120)
def test_a_probe_share_only_one_rank_lacks_stops_every_rank_in_one_line(tmp_path):
    """``order: file`` deals the probe's batches to the ranks in turn: with one batch in all, rank 1 finds none and
    refused while rank 0 went on into the next collective (a gloo traceback when rank 1 exited; NCCL waited for the
    timeout). Every rank now stops with status 2, rank 1's line said once."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "probe_share", "ldt")
    opt["datasets"]["train"]["batch_size_per_gpu"] = 1
    opt["ldt"]["probe"] = {"num_batches": 2, "batch_size": 64, "order": "file"}
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err1.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "this rank's probe would get no batch" in errors[0], err1
    assert "Traceback" not in err0 + err1 and "error:" not in err0, (err0, err1)
    assert not (tmp_path / "experiments" / "probe_share").exists()


@pytest.mark.timeout(120)
def test_a_stop_by_sigterm_under_ddp_is_one_report(tmp_path):
    """SIGTERM to every rank mid-training: each rank said 'SIGTERM: saving a training state ...', and rank 1, which
    saves nothing, ended in 'stopped by SIGTERM at iteration N: before training began, nothing to save', beside rank
    0's 'saved …/N.state'. Now rank 0 alone says both lines; every rank exits 128 + SIGTERM at the same step."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "stopped", "ldt")
    opt["train"]["total_iter"] = 100000
    opt["val"]["val_freq"] = opt["logger"]["save_checkpoint_freq"] = 100000
    exp = tmp_path / "experiments" / "stopped"
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), stop_after=exp / "partition.json")
    assert (code0, code1) == (128 + signal.SIGTERM, 128 + signal.SIGTERM), (err0, err1)
    stops = [line for line in err0.splitlines() if line.startswith(("SIGTERM", "stopped by"))]
    assert len(stops) == 2 and stops[0].startswith("SIGTERM: saving a training state at the next step"), err0
    state = sorted((exp / "training_states").glob("*.state"))
    assert len(state) == 1 and stops[1] == (f"stopped by SIGTERM at iteration {state[0].stem}: saved {state[0]}; "
                                            "resume with --auto_resume"), err0
    assert "SIGTERM" not in err1 and "Traceback" not in err0 + err1, err1


@pytest.mark.timeout(120)
def test_a_bad_option_under_a_launcher_is_said_once(tmp_path):
    """Every rank reads the options before the process group exists and each said the same error line (eight lines
    on eight GPUs); now the first rank of the machine alone, as BasicSR's pipeline entry point (reporting_rank)."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "bad_option", "ldt")
    opt["ldt"]["method"] = "ldx"
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ldt:method: unknown method 'ldx'" in errors[0], err0
    assert err1 == "" and "Traceback" not in err0, (err0, err1)


@pytest.mark.timeout(120)
def test_a_diverged_ddp_run_is_said_once_naming_the_saved_state(tmp_path):
    """The ranks agree on a non-finite loss (all-reduced) and all stop at the same step: each said its error line,
    rank 1, which saves nothing, with 'no training state was saved yet' beside rank 0's 'the last finite checkpoint
    is …'. Rank 0 alone says it now; every rank exits 2."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "diverged", "ldt")
    opt["train"].update(total_iter=30, optim_g={"type": "Adam", "lr": 1e30})  # diverges within a few steps
    opt["logger"]["save_checkpoint_freq"], opt["val"]["val_freq"] = 1, 1000
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is nan" in errors[0] and "training_states" in errors[0], err0
    assert "error:" not in err1 and "Traceback" not in err0 + err1, (err0, err1)


# Run by rank 0 alone at its start: its ``where`` (LDTModel.save or .evaluate) raises a DiskError at iteration 3.
FAULT_ON_RANK_0 = """
import os
if os.environ.get("RANK") == "0":
    import ldt.sr.train
    from ldt.atomic import DiskError
    from ldt.models.ldt_model import LDTModel
    original = getattr(LDTModel, {where!r})

    def failing(self, *args, **kwargs):
        if {where!r} != "save" or args[1] == 3:
            raise DiskError("cannot write /full/disk: no space left on device (injected)")
        return original(self, *args, **kwargs)

    setattr(LDTModel, {where!r}, failing)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["save", "evaluate"])
def test_a_disk_error_in_rank_0s_save_or_validation_stops_every_rank_in_one_line(tmp_path, where):
    """Only rank 0 saves and validates: its DiskError there (a full disk mid-run) stopped rank 0 alone, and rank 1
    went on into the next step's collective, to fail in gloo's 'Connection reset by peer' traceback (NCCL: to wait for
    the process group's timeout, 2 h). Every rank now stops at once with status 2, rank 0's line said once."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "full_disk", "ldt")
    opt["train"]["total_iter"] = 6
    opt["val"]["val_freq"] = opt["logger"]["save_checkpoint_freq"] = 3
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path),
                                             site=FAULT_ON_RANK_0.format(where=where))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot write /full/disk: no space left on device (injected)"], err0
    assert "error:" not in err1 and "Traceback" not in err0 + err1, (err0, err1)


# Run by rank 1 alone at its start: its first batch of the model's set-up (warm-up or probe) cannot be read.
BATCH_FAILS_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import ldt.sr.train
    from ldt.data.cameras import DatasetError
    from ldt.models.ldt_model import LDTModel

    def failing(self, model, batch):
        raise DatasetError("/data/pair_7.png: truncated image (injected)")

    LDTModel.batch_loss = failing
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["warmup", "probe"])
def test_a_batch_one_rank_cannot_read_in_the_set_up_stops_every_rank_in_one_line(tmp_path, stage):
    """A batch of the warm-up or the probe that fails on rank 1 only: rank 1 stopped, and rank 0, in the warm-up's
    gradient all-reduce or the probe's all-gather, failed with gloo's 'Connection reset by peer' traceback (NCCL waited
    for the process group's timeout). Every rank now stops at once with status 2, rank 1's line said once."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "bad_batch", "ldt")
    if stage == "warmup":
        opt["ldt"]["warmup"] = {"steps": 2}
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), site=BATCH_FAILS_ON_RANK_1)
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err1.splitlines() if line.startswith("error:")]
    assert errors == ["error: /data/pair_7.png: truncated image (injected)"], err1
    assert "error:" not in err0 and "Traceback" not in err0 + err1, (err0, err1)
    assert "LDT warm-up" in err0 + err1 if stage == "warmup" else True


# Run by rank 0 alone at its start: the partition.json its model writes after the probe meets a full disk.
PARTITION_FAILS_ON_RANK_0 = """
import os
if os.environ.get("RANK") == "0":
    import ldt.sr.train
    from ldt.atomic import DiskError
    from ldt.core.partition import Partition

    def failing(self, path):
        raise DiskError(f"cannot write {path}: no space left on device (injected)")

    Partition.save = failing
"""


@pytest.mark.timeout(120)
def test_a_partition_rank_0_cannot_write_stops_every_rank_in_one_line(tmp_path):
    """Rank 0 writes partition.json in the model's set-up: its DiskError there stopped it alone, and rank 1, in DDP's
    first broadcast, failed with gloo's traceback (NCCL waited for the process group's timeout)."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "no_room", "ldt")
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), site=PARTITION_FAILS_ON_RANK_0)
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("partition.json: no space left on device (injected)"), err0
    assert "error:" not in err1 and "Traceback" not in err0 + err1, (err0, err1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", [("--bogus",), ("--launcher", "slurm")])
def test_a_bad_flag_under_a_launcher_is_said_once(tmp_path, extra):
    """Every rank parses the same arguments: argparse's usage and error lines were said once per rank."""
    opt = tiny_options(tmp_path / "cams", "bad_flag", "ldt")
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), extra=extra)
    assert (code0, code1) == (2, 2), (err0, err1)
    assert err0.startswith("Train_pip.py: error: ") and err0.count("\n") == 1 and extra[-1] in err0, err0
    assert err1 == "", err1


# Run by rank 1 alone at its start: once the model is set up (the probe read its batches) and {after} step(s) were fed,
# its training batches cannot be read (``loader``); or the loss of its second step cannot be computed (``forward``).
STEP_FAILS_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import ldt.sr.train
    from ldt.data.cameras import DatasetError
    from ldt.data.drealsr_dataset import DRealSRCameraDataset
    from ldt.models.ldt_model import LDTModel
    steps = []
    init, feed_data, getitem = LDTModel.__init__, LDTModel.feed_data, DRealSRCameraDataset.__getitem__

    def set_up(self, *args, **kwargs):
        init(self, *args, **kwargs)
        steps.append(0)

    def failing(*args, **kwargs):
        raise DatasetError("/data/pair_7.png: truncated image (injected)")

    def counting(self, data):
        steps.append(1)
        feed_data(self, data)
        if {where!r} == "forward" and len(steps) == 3:
            self.cri_pix = failing

    def reading(self, index):
        return failing() if {where!r} == "loader" and len(steps) > {after} else getitem(self, index)

    LDTModel.__init__, LDTModel.feed_data, DRealSRCameraDataset.__getitem__ = set_up, counting, reading
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where, after", [("loader", 0), ("loader", 1), ("loader", 3), ("forward", 1)])
def test_a_training_step_that_fails_on_one_rank_stops_every_rank_in_one_line(tmp_path, where, after):
    """A training batch that rank 1 alone cannot read, or an error in its loss: rank 1 stopped, and rank 0 waited in
    the step's all-reduce of the loss's finiteness (gloo: a 'Connection reset by peer' traceback once rank 1 exited;
    NCCL: the group's timeout). That all-reduce now carries the failure: every rank stops at that step with status 2,
    rank 1's line said once. The first step's batch (no earlier one to stand in for it), the second's (DDP rebuilds
    its buckets in that forward), a later one's, and a forward's."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "bad_step", "ldt")
    opt["train"]["total_iter"] = 6
    opt["val"]["val_freq"] = opt["logger"]["save_checkpoint_freq"] = 1000
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path),
                                             site=STEP_FAILS_ON_RANK_1.format(where=where, after=after))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err1.splitlines() if line.startswith("error:")]
    assert errors == ["error: /data/pair_7.png: truncated image (injected)"], err1
    assert "error:" not in err0 and "Traceback" not in err0 + err1, (err0, err1)


# Run by one rank alone at its start (``ldt:repartition_every: 2``): once the model is set up, the re-probe's batch
# cannot be read on rank 1 (``probe``), or rank 0's partition_2.json meets a full disk (``write``).
REPARTITION_FAILS = """
import os
import ldt.sr.train
from ldt.atomic import DiskError
from ldt.core.partition import Partition
from ldt.data.cameras import DatasetError
from ldt.models.ldt_model import LDTModel
init, batch_loss, save = LDTModel.__init__, LDTModel.batch_loss, Partition.save
set_up = []

def started(self, *args, **kwargs):
    init(self, *args, **kwargs)
    set_up.append(1)

def probing(self, model, batch):
    if set_up:
        raise DatasetError("/data/pair_7.png: truncated image (injected)")
    return batch_loss(self, model, batch)

def saving(self, path):
    if set_up:
        raise DiskError(f"cannot write {{path}}: no space left on device (injected)")
    return save(self, path)

if os.environ.get("RANK") == {rank!r}:
    LDTModel.__init__ = started
    if {where!r} == "probe":
        LDTModel.batch_loss = probing
    else:
        Partition.save = saving
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where, rank", [("probe", 1), ("write", 0)])
def test_a_repartition_that_fails_on_one_rank_stops_every_rank_in_one_line(tmp_path, where, rank):
    """``ldt:repartition_every`` probes again mid-training: a probe batch that rank 1 cannot read stopped the other
    ranks quietly with exit status 1 (only the failing rank knew its status), and rank 0's partition_2.json on a
    full disk stopped rank 0 alone, the others waiting in the next step's all-reduce (gloo: a traceback; NCCL: the
    group's timeout). Every rank now stops at that step with status 2, the failing rank's line said once."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "repartition", "ldt")
    opt["ldt"]["repartition_every"] = 2
    opt["train"]["total_iter"] = 6
    opt["val"]["val_freq"] = opt["logger"]["save_checkpoint_freq"] = 1000
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path),
                                             site=REPARTITION_FAILS.format(where=where, rank=str(rank)))
    assert (code0, code1) == (2, 2), (err0, err1)
    failing, other = (err0, err1) if rank == 0 else (err1, err0)
    errors = [line for line in failing.splitlines() if line.startswith("error:")]
    expected = "/data/pair_7.png: truncated image (injected)" if where == "probe" else "partition_2.json: no space"
    assert len(errors) == 1 and expected in errors[0], failing
    assert "error:" not in other and "Traceback" not in err0 + err1, (err0, err1)


@pytest.mark.timeout(120)
def test_a_broken_best_record_on_resume_is_said_once(tmp_path):
    """Every rank read best.json on resume and each said the same 'error: …/best.json: …' line; rank 0, which alone
    selects the best checkpoint, reads it now: said once, every rank exiting 2."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "best", "ldt")
    opt["train"]["total_iter"] = 2
    opt["val"]["val_freq"] = opt["logger"]["save_checkpoint_freq"] = 2
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path))
    assert (code0, code1) == (0, 0), (err0, err1)
    best = tmp_path / "experiments" / "best" / "best.json"
    best.write_text('{"value": "high", "iter": 2}')
    opt["train"]["total_iter"] = 4
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), extra=("--auto_resume",))
    assert (code0, code1) == (2, 2), (err0, err1)
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {best}: 'value' is 'high', not a number; delete it to resume (net_g_best.pth may then "
                      "be replaced by a later, worse network)"], err0
    assert "error:" not in err1 and "Traceback" not in err0 + err1, (err0, err1)


@pytest.mark.timeout(60)
def test_a_demo_and_training_flag_mix_under_a_launcher_is_said_once(tmp_path):
    """Train_pip.py routes its arguments (demo or training) before anything else: a mix of both was said once per
    rank; now by the first rank of the machine alone, every rank exiting 2."""
    opt = tiny_options(tmp_path / "cams", "mix", "ldt")
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), extra=("--budget", "quick"))
    assert (code0, code1) == (2, 2), (err0, err1)
    assert err0.startswith("error: --budget runs the demo, -opt trains") and err0.count("\n") == 1, err0
    assert err1 == "", err1


@pytest.mark.timeout(120)
def test_a_ddp_run_ends_its_process_before_the_interpreters_teardown(tmp_path):
    """After a run with a gloo process group, the interpreter's teardown now and then aborted a rank that had ended
    ('terminate called without an active exception', exit -6: gloo's threads still held work freed during
    finalization). Train_pip.py now ends such a process itself once its output is flushed: an atexit handler (the
    teardown) never runs, and both ranks exit 0 with the run's results written."""
    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "ends", "ldt")
    site = "import atexit, sys\natexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
    (code0, err0), (code1, err1) = two_ranks(tmp_path, write_options(opt, tmp_path), site=site)
    assert (code0, code1) == (0, 0), (err0, err1)
    assert "teardown ran" not in err0 + err1, (err0, err1)
    assert (tmp_path / "experiments" / "ends" / "results.json").is_file()
