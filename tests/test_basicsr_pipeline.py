"""BasicSR's own ``train_pipeline`` drives LDTModel end to end: training, validation, checkpoints and resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.sr_fixtures import tiny_cameras, tiny_options


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def basicsr_options(data_root, name: str, total_iter: int) -> dict:
    """Our tiny options, spelling out every key BasicSR's pipeline reads from the raw file itself."""
    opt = tiny_options(data_root, name, "ldt")
    opt["datasets"]["train"].update(dataset_enlarge_ratio=1, prefetch_mode=None)
    opt["train"].update(total_iter=total_iter, warmup_iter=-1,
                        pixel_opt={"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"})
    opt["val"] = {"val_freq": 3, "save_img": False, "pbar": False,
                  "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 4, "test_y_channel": True}}}
    return opt


def run_pipeline(tmp_path, monkeypatch, opt: dict, *flags: str) -> None:
    path = tmp_path / f"{opt['name']}_{opt['train']['total_iter']}.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    start_pipeline(tmp_path, monkeypatch, str(path), *flags)


def start_pipeline(root, monkeypatch, option_file: str, *flags: str) -> None:
    launch(root, monkeypatch, "-opt", option_file, *flags)


def launch(root, monkeypatch, *argv: str) -> None:
    from ldt.sr.basicsr_pipeline import run

    elsewhere = root / "elsewhere"  # the experiments live under root, whatever the working directory
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    run(root)


def test_basicsr_pipeline_trains_validates_saves_and_resumes(data_root, tmp_path, monkeypatch):
    from ldt.models.ldt_model import LDTModel

    validated = []
    original = LDTModel.nondist_validation

    def spy(self, loader, current_iter, tb_logger, save_img):
        original(self, loader, current_iter, tb_logger, save_img)
        validated.append((loader.dataset.opt["name"], current_iter, dict(self.metric_results)))

    monkeypatch.setattr(LDTModel, "nondist_validation", spy)
    run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "pipe", 3))
    exp = tmp_path / "experiments" / "pipe"
    assert (exp / "models" / "net_g_3.pth").is_file() and (exp / "training_states" / "3.state").is_file()
    assert (exp / "models" / "net_g_latest.pth").is_file() and (exp / "partition.json").is_file()
    # Both validation sets at iteration 3, and again after training (BasicSR labels that one total_iter + 1).
    assert [(name, it) for name, it, _ in validated] == [("source", 3), ("pan", 3), ("source", 4), ("pan", 4)]
    assert all(0 < metrics["psnr"] < 100 for _, _, metrics in validated)
    saved = torch.load(exp / "models" / "net_g_3.pth", weights_only=True)["params"]

    # Resume to 6 iterations: the partition comes from the state (no probe), training goes on from iteration 3.
    def no_probe(*args, **kwargs):
        raise AssertionError("resuming must not probe again")

    monkeypatch.setattr("ldt.core.methods.probe_gradients", no_probe)
    stepped = []
    step = LDTModel.optimize_parameters
    monkeypatch.setattr(LDTModel, "optimize_parameters", lambda self, it: stepped.append(it) or step(self, it))
    run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "pipe", 6), "--auto_resume")
    assert stepped == [4, 5, 6]
    assert (exp / "models" / "net_g_6.pth").is_file() and (exp / "training_states" / "6.state").is_file()
    resumed = torch.load(exp / "models" / "net_g_6.pth", weights_only=True)["params"]
    assert any(not torch.equal(resumed[k], saved[k]) for k in saved)  # it trained on
    assert not list(tmp_path.glob("experiments/pipe_archived_*"))  # a resume keeps the folder


@pytest.mark.parametrize("fault", ["option", "mis-scaled pair"])
def test_bad_input_is_train_pips_line_before_basicsr_starts(data_root, tmp_path, monkeypatch, capsys, fault):
    """BasicSR's pipeline ran none of Train_pip.py's start-up checks: a bad option was a traceback from the model's
    set-up, after BasicSR had made experiments/<name>; a mis-scaled PairedImageDataset pair a traceback mid-epoch
    ('Scale mismatches', no file named). Now both are Train_pip.py's line, exit 2, before any folder is made."""
    from ldt.sr.train import main as train_main
    from tests.test_sr_pipeline import _paired_folders, _paired_set

    opt = basicsr_options(data_root, "bad", 3)
    if fault == "option":
        opt["ldt"]["exchange"]["interval"] = 0
    else:
        hr_dir, lr_dir = _paired_folders(tmp_path / "set5", short="bird")
        opt["datasets"]["train"] = _paired_set("DF2K", hr_dir, lr_dir, gt_size=32, batch_size_per_gpu=2,
                                               num_worker_per_gpu=0, dataset_enlarge_ratio=1, prefetch_mode=None)
    with pytest.raises(SystemExit) as stop:
        run_pipeline(tmp_path, monkeypatch, opt)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and not (tmp_path / "experiments").exists(), lines
    assert train_main(["-opt", str(tmp_path / "bad_3.yml"), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == lines


def test_an_option_file_that_is_a_fifo_is_one_line_not_a_hang(tmp_path, monkeypatch, capsys):
    """BasicSR opens -opt itself: a FIFO waited for a writer forever (and /dev/zero never ends)."""
    import os

    from ldt.sr.basicsr_pipeline import run

    fifo = tmp_path / "options.yml"
    os.mkfifo(fifo)
    monkeypatch.setattr(sys, "argv", ["train.py", "-opt", str(fifo)])
    with pytest.raises(SystemExit) as stop:
        run(tmp_path)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: -opt {fifo} is a FIFO (named pipe), not a regular file\n"


@pytest.mark.parametrize("given", ["a file with base:", "a bare name"])
def test_base_files_and_bare_names_run_under_basicsr(data_root, tmp_path, monkeypatch, given):
    """BasicSR reads -opt itself and knows neither our ``base:`` inheritance nor bare names under options/train:
    both passed our start-up checks, then failed inside BasicSR with a traceback. Now BasicSR reads the file our
    checks read, merged with its base files: the experiment folder keeps that merged copy under the file's name."""
    from ldt.sr import options

    folder = tmp_path / "options"
    folder.mkdir()
    (folder / "parent.yml").write_text(yaml.safe_dump(basicsr_options(data_root, "parent", 3), sort_keys=False))
    if given == "a bare name":
        monkeypatch.setitem(options.OPTION_DIRS, "train", folder)
        name, option_file = "parent", "parent"
    else:
        (folder / "child.yml").write_text("base: parent.yml\nname: child\nval: {val_freq: 2}\n")
        name, option_file = "child", str(folder / "child.yml")
    start_pipeline(tmp_path, monkeypatch, option_file)
    exp = tmp_path / "experiments" / name
    assert (exp / "models" / "net_g_3.pth").is_file()
    kept = yaml.safe_load((exp / f"{name}.yml").read_text())
    assert "base" not in kept and kept["name"] == name and kept["network_g"]["type"] == "SAFMN"
    assert kept["val"]["val_freq"] == (2 if name == "child" else 3) and kept["val"]["metrics"]


def test_auto_resume_says_where_it_found_no_state(tmp_path, capsys):
    """BasicSR's --auto_resume looked in ./experiments (the working directory), not in the root it writes the
    experiment to: run elsewhere, it found no state, started afresh and archived the run it was to resume, silently."""
    import basicsr.train

    from ldt.compat import patch_basicsr_train

    patch_basicsr_train()
    states = tmp_path / "experiments" / "fresh" / "training_states"
    opt = {"name": "fresh", "auto_resume": True, "path": {"training_states": str(states)}}
    assert basicsr.train.load_resume_state(opt) is None
    assert capsys.readouterr().out == f"--auto_resume: no training state in {states}; starting afresh\n"


def test_force_yml_reaches_basicsr_applied(data_root, tmp_path, monkeypatch):
    """BasicSR re-applied --force_yml with its own exec-based parser after our checks had applied it with ours: an
    entry for a section the file leaves to its defaults (``speed:tf32``) was a KeyError traceback from inside
    BasicSR. Now BasicSR reads the file with the entries applied, and the kept copy holds them."""
    opt = basicsr_options(data_root, "forced", 3)
    run_pipeline(tmp_path, monkeypatch, opt, "--force_yml", "speed:tf32=false", "logger:save_checkpoint_freq=1")
    exp = tmp_path / "experiments" / "forced"
    assert (exp / "models" / "net_g_1.pth").is_file()  # BasicSR's loop read the override
    kept = yaml.safe_load((exp / "forced_3.yml").read_text())
    assert kept["speed"] == {"tf32": False} and kept["logger"]["save_checkpoint_freq"] == 1


def test_numbers_written_as_text_reach_basicsr_as_numbers(data_root, tmp_path, monkeypatch):
    """PyYAML reads ``1e3`` (no ``!!float``) as text, which our checks take as a number; BasicSR read the text
    itself where its loop reads the raw file (``current_iter % save_checkpoint_freq``: a TypeError traceback after
    the checks had passed; the data loader's batch size)."""
    opt = basicsr_options(data_root, "texts", 2)
    opt["logger"]["save_checkpoint_freq"] = "1e3"
    opt["datasets"]["train"]["batch_size_per_gpu"] = "2"
    opt["train"]["optim_g"]["lr"] = "1e-3"
    run_pipeline(tmp_path, monkeypatch, opt)
    exp = tmp_path / "experiments" / "texts"
    assert (exp / "models" / "net_g_latest.pth").is_file()
    kept = yaml.safe_load((exp / "texts_2.yml").read_text())
    assert kept["logger"]["save_checkpoint_freq"] == 1000 and kept["datasets"]["train"]["batch_size_per_gpu"] == 2
    assert kept["train"]["optim_g"]["lr"] == 1e-3


@pytest.mark.parametrize("entry, words", [("train:total_itr=3", "total_itr"),
                                          ("ldt:exchange:interval=0", "ldt:exchange:interval"),
                                          ("val:val_freq=[1", "not valid YAML")])
def test_a_bad_force_yml_entry_is_one_line_naming_it(data_root, tmp_path, monkeypatch, capsys, entry, words):
    """Our checks read the options with the overrides applied: a bad entry is one line naming it, before BasicSR."""
    with pytest.raises(SystemExit) as stop:
        run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "bad", 3), "--force_yml", entry)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"--force_yml '{entry}'" in lines[0] and words in lines[0], lines
    assert not (tmp_path / "experiments").exists()


SPELLINGS = {"-opt=FILE": ["-opt={}"], "--opt FILE": ["--opt", "{}"], "--opt=FILE": ["--opt={}"]}  # -o: refused


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_opt_is_read_by_our_checks(data_root, tmp_path, monkeypatch, spelling):
    """Our start-up checks scanned argv for '-opt FILE' only: '--opt FILE' (Train_pip.py's spelling) passed them
    unseen and BasicSR refused it; '-opt=FILE' (which argparse accepts) escaped the -opt file check. Now argv is read
    by a parser like BasicSR's, and BasicSR is handed '-opt' with the file our checks read ('-o FILE', which BasicSR's
    parser took, is refused as every abbreviation is: test_scripts_cli)."""
    folder = tmp_path / "options"
    folder.mkdir()
    (folder / "parent.yml").write_text(yaml.safe_dump(basicsr_options(data_root, "parent", 3), sort_keys=False))
    (folder / "child.yml").write_text("base: parent.yml\nname: child\n")
    launch(tmp_path, monkeypatch, *[part.format(folder / "child.yml") for part in SPELLINGS[spelling]])
    assert (tmp_path / "experiments" / "child" / "models" / "net_g_3.pth").is_file()
    assert "base" not in yaml.safe_load((tmp_path / "experiments" / "child" / "child.yml").read_text())


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_an_opt_fifo_is_the_opt_line(tmp_path, monkeypatch, capsys, spelling):
    import os

    from ldt.sr.basicsr_pipeline import run

    fifo = tmp_path / "options.yml"
    os.mkfifo(fifo)
    monkeypatch.setattr(sys, "argv", ["train.py", *[part.format(fifo) for part in SPELLINGS[spelling]]])
    with pytest.raises(SystemExit) as stop:
        run(tmp_path)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: -opt {fifo} is a FIFO (named pipe), not a regular file\n"


def test_force_yml_given_twice_applies_both(data_root, tmp_path, monkeypatch):
    """BasicSR's parser keeps the last --force_yml flag only: the entries of an earlier one were dropped silently.
    Now the flags add up, as for Train_pip.py, and BasicSR gets the file with all of them applied."""
    run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "twice", 3),
                 "--force_yml", "speed:tf32=false", "--force_yml", "logger:save_checkpoint_freq=1")
    kept = yaml.safe_load((tmp_path / "experiments" / "twice" / "twice_3.yml").read_text())
    assert kept["speed"] == {"tf32": False} and kept["logger"]["save_checkpoint_freq"] == 1


def test_a_missing_or_bad_flag_is_one_line(tmp_path, monkeypatch, capsys):
    from ldt.sr.basicsr_pipeline import run

    for argv, words in ((["--auto_resume"], "-opt"), (["-opt", "x.yml", "--launcher", "mpi"], "--launcher")):
        monkeypatch.setattr(sys, "argv", ["train.py", *argv])
        with pytest.raises(SystemExit) as stop:
            run(tmp_path)
        assert stop.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and words in lines[0], lines


def test_debug_checks_the_experiment_basicsr_runs(data_root, tmp_path, monkeypatch, capsys):
    """BasicSR's --debug runs experiments/debug_<name>, but our checks looked at experiments/<name>: with a state
    there, --debug --auto_resume was taken for a resume, so the probe's checks were skipped, and BasicSR, finding no
    state of debug_<name>, started afresh and failed in the probe after making its folder. Now the checks look at the
    experiment BasicSR runs: the probe's line, before any folder is made."""
    run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "dbg", 3))
    assert (tmp_path / "experiments" / "dbg" / "training_states" / "3.state").is_file()
    capsys.readouterr()
    opt = basicsr_options(data_root, "dbg", 6)
    opt["ldt"]["probe"]["batch_size"] = 1000
    with pytest.raises(SystemExit) as stop:
        run_pipeline(tmp_path, monkeypatch, opt, "--debug", "--auto_resume")
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "ldt:probe:batch_size" in lines[0], lines
    assert not (tmp_path / "experiments" / "debug_dbg").exists()


def test_the_last_iteration_is_saved_off_the_checkpoint_frequency(data_root, tmp_path, monkeypatch):
    """basicsr 1.4.2's loop saves a state only at multiples of logger:save_checkpoint_freq (the end saves
    net_g_latest.pth, no state): a run of 4 iterations saving every 3 kept 3.state, and --auto_resume retrained
    iteration 4. Now the last iteration is saved as the loop saves the others: net_g_4.pth and 4.state, with the
    epoch the loop was in, and a resume goes on from it."""
    from basicsr.data.data_sampler import EnlargedSampler

    from ldt.models.ldt_model import LDTModel
    from ldt.sr.checkpoints import read_state

    events = []  # ("epoch", e) and ("step", iteration), in the loop's order
    set_epoch, step = EnlargedSampler.set_epoch, LDTModel.optimize_parameters
    monkeypatch.setattr(EnlargedSampler, "set_epoch", lambda self, e: events.append(("epoch", e)) or set_epoch(self, e))
    monkeypatch.setattr(LDTModel, "optimize_parameters", lambda self, it: events.append(("step", it)) or step(self, it))
    opt = basicsr_options(data_root, "last", 4)
    opt["logger"]["save_checkpoint_freq"] = 3
    run_pipeline(tmp_path, monkeypatch, opt)
    exp = tmp_path / "experiments" / "last"
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["3.state", "4.state"]
    assert (exp / "models" / "net_g_4.pth").is_file()
    epoch_of_4 = [e for kind, e in events[: events.index(("step", 4))] if kind == "epoch"][-1]
    state = read_state(exp / "training_states" / "4.state")
    assert state["iter"] == 4 and state["epoch"] == epoch_of_4
    saved = torch.load(exp / "models" / "net_g_4.pth", weights_only=True)["params"]
    latest = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)["params"]
    assert all(torch.equal(saved[k], latest[k]) for k in saved)  # the weights the run ended with

    events.clear()
    run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "last", 6), "--auto_resume")
    assert [it for kind, it in events if kind == "step"] == [5, 6]


def test_a_run_of_a_name_in_use_is_refused_by_the_lock_train_pip_takes(data_root, tmp_path, monkeypatch, capsys):
    """BasicSR's pipeline took no experiment lock: a second run of a name still training (a pipeline run or a
    Train_pip.py run) archived the live run's folder and wrote its own. Now it takes Train_pip.py's lock (the same
    file): refused in Train_pip.py's line, exit 2, nothing touched; released, a rerun archives as before."""
    from ldt.atomic import lock_beside
    from ldt.sr.train import main as train_main
    from tests.conftest import lock_held_elsewhere
    from tests.test_run_integrity import snapshot

    opt = basicsr_options(data_root, "busy", 3)
    run_pipeline(tmp_path, monkeypatch, opt)
    exp = tmp_path / "experiments" / "busy"
    capsys.readouterr()
    with lock_held_elsewhere(lock_beside(exp), 60) as holder:  # a run of this name in another process
        before = snapshot(tmp_path / "experiments")
        with pytest.raises(SystemExit) as stop:
            run_pipeline(tmp_path, monkeypatch, opt)
        assert stop.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: {exp} is in use by another run (pid {holder.pid}, since ") and \
            lines[0].endswith(f"lock {lock_beside(exp)}): wait for it to finish, or choose another name"), lines
        assert snapshot(tmp_path / "experiments") == before and not list(exp.parent.glob("busy_archived_*"))
        assert train_main(["-opt", str(tmp_path / "busy_3.yml"), "--root", str(tmp_path)]) == 2
        assert capsys.readouterr().err.splitlines() == lines  # the same lock, the same line
    run_pipeline(tmp_path, monkeypatch, opt)  # released: a rerun archives the earlier run, as BasicSR does
    assert len(list(exp.parent.glob("busy_archived_*"))) == 1


@pytest.mark.parametrize("given", [["--local-rank=1"], ["--local-rank", "1"], ["--local_rank", "1"]])
def test_both_spellings_of_local_rank_reach_basicsr_as_its_own(data_root, tmp_path, given):
    """torch.distributed.launch on torch >= 2.0 passes --local-rank; BasicSR's parser (and ours, built like it) knew
    --local_rank only, so every rank stopped at 'unrecognized arguments: --local-rank=1'. Both spellings are read
    now, and BasicSR's own parse_options reads the rank from the arguments it is handed."""
    from basicsr.utils.options import parse_options

    from ldt.sr.basicsr_pipeline import argv_for_basicsr, basicsr_arguments

    path = tmp_path / "rank.yml"
    path.write_text(yaml.safe_dump(basicsr_options(data_root, "rank", 3), sort_keys=False))
    argv = argv_for_basicsr(basicsr_arguments(["-opt", str(path), *given]), str(path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py", *argv])
        _, args = parse_options(str(tmp_path), is_train=True)
    assert args.local_rank == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["option", "fifo"])
def test_under_a_launcher_a_failing_check_is_one_line_from_rank_0_and_every_rank_exits_2(data_root, tmp_path, fault):
    """With --launcher pytorch our start-up checks run on every rank before BasicSR's init_dist: each rank printed
    the same error line (N lines for N GPUs). Now the first rank of each machine (LOCAL_RANK 0) prints it, the
    others exit 2 silently. Two processes with torchrun's variables; the checks fail before any rendezvous."""
    import os
    import subprocess

    from tests.test_sr_ddp import free_port

    path = tmp_path / "bad.yml"
    if fault == "fifo":
        os.mkfifo(path)
    else:
        opt = basicsr_options(data_root, "bad", 3)
        opt["ldt"]["exchange"]["interval"] = 0
        path.write_text(yaml.safe_dump(opt, sort_keys=False))
    project = Path(__file__).resolve().parents[1]
    port, ranks = str(free_port()), []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(project), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        ranks.append(subprocess.Popen([sys.executable, "-m", "ldt.sr.basicsr_pipeline", "-opt", str(path),
                                       "--launcher", "pytorch"], cwd=tmp_path, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    (out0, err0), (out1, err1) = (rank.communicate(timeout=100) for rank in ranks)
    assert [rank.returncode for rank in ranks] == [2, 2], (err0, err1)
    lines = err0.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0] + out0, lines
    assert ("exchange:interval" if fault == "option" else "FIFO") in lines[0], lines
    assert err1 == "", err1
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("launcher, env, reports", [
    ("pytorch", {"RANK": "1", "LOCAL_RANK": "1"}, False),
    ("pytorch", {"RANK": "2", "LOCAL_RANK": "0"}, True),  # the first rank of a second machine: its own view of the data
    ("pytorch", {"RANK": "1"}, False),  # no LOCAL_RANK: the global rank decides
    ("slurm", {"SLURM_PROCID": "3", "SLURM_LOCALID": "1"}, False),
    ("slurm", {"SLURM_PROCID": "4", "SLURM_LOCALID": "0"}, True),
    ("none", {"RANK": "1", "LOCAL_RANK": "1"}, True),  # no launcher: a process of its own
])
def test_which_rank_reports_a_failing_check(tmp_path, monkeypatch, capsys, launcher, env, reports):
    import os

    from ldt.sr.basicsr_pipeline import run

    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fifo = tmp_path / "options.yml"
    os.mkfifo(fifo)
    monkeypatch.setattr(sys, "argv", ["train.py", "-opt", str(fifo), "--launcher", launcher])
    with pytest.raises(SystemExit) as stop:
        run(tmp_path)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"error: -opt {fifo} is a FIFO (named pipe), not a regular file\n" if reports
                                       else "")


@pytest.mark.parametrize("launcher, env, words", [
    ("pytorch", {}, "--launcher pytorch: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set; start it under torchrun"),
    ("slurm", {"SLURM_PROCID": "0"}, "--launcher slurm: SLURM_NTASKS, SLURM_NODELIST not set; start it under srun"),
    ("pytorch", {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "--launcher pytorch: BasicSR's pipeline runs its processes on CUDA GPUs (NCCL) and none is available"),
])
def test_a_launcher_basicsr_cannot_start_is_one_line_before_any_folder(data_root, tmp_path, monkeypatch, capsys,
                                                                        launcher, env, words):
    """BasicSR's init_dist read torchrun's / slurm's variables and set the device to rank % device_count(): a
    KeyError or ZeroDivisionError traceback after our checks had passed. Now one line, and no experiment folder."""
    if "CUDA" in words and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID",
                 "SLURM_NTASKS", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "launched", 2), "--launcher", launcher)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {words}"), lines
    assert not (tmp_path / "experiments").exists()


def test_a_fresh_run_that_would_archive_a_live_run_of_a_name_inside_it_is_refused(data_root, tmp_path, monkeypatch,
                                                                                   capsys):
    """BasicSR's mkdir_and_rename archived experiments/outer on a fresh run of 'outer', moving the folder and lock
    (experiments/outer/.inner.lock) of a live 'outer/inner' run away with it. Refused now, in Train_pip.py's line,
    before BasicSR starts: exit 2, nothing moved."""
    from ldt.atomic import lock_beside
    from ldt.sr.train import main as train_main
    from tests.conftest import lock_held_elsewhere
    from tests.test_run_integrity import snapshot

    exp = tmp_path / "experiments" / "outer"
    inner = exp / "inner"
    (inner / "models").mkdir(parents=True)
    (inner / "models" / "net_g_3.pth").write_bytes(b"a live run's checkpoint")
    (exp / "models").mkdir()
    (exp / "models" / "net_g_2.pth").write_bytes(b"an earlier run of outer")  # Train_pip.py, too, would archive it
    opt = basicsr_options(data_root, "outer", 2)
    with lock_held_elsewhere(lock_beside(inner), 60) as holder:  # a run of outer/inner, training
        before = snapshot(exp)
        with pytest.raises(SystemExit) as stop:
            run_pipeline(tmp_path, monkeypatch, opt)
        assert stop.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: {exp} holds {inner}, which is in use by another run (pid {holder.pid}, "
                                   "since ") and \
            lines[0].endswith(f"lock {lock_beside(inner)}): wait for it to finish, or choose another name"), lines
        assert snapshot(exp) == before and not list(exp.parent.glob("outer_archived_*"))
        assert train_main(["-opt", str(tmp_path / "outer_2.yml"), "--root", str(tmp_path)]) == 2
        assert capsys.readouterr().err.splitlines() == lines  # Train_pip.py's check, Train_pip.py's line


@pytest.mark.parametrize("launcher, variables", [("pytorch", {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "{}"}),
                                                 ("slurm", {"SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                                                            "SLURM_NTASKS": "{}"})])
@pytest.mark.parametrize("fault", ["probe share", "batch per rank"])
def test_under_a_launcher_the_checks_split_the_data_over_its_ranks(data_root, tmp_path, monkeypatch, capsys,
                                                                   launcher, variables, fault):
    """Our start-up checks run before BasicSR's process group exists, so they saw one rank: fewer probe batches than
    ranks, or a training batch more than each rank's share of the samples, passed them (Train_pip.py, which checks
    in its process group, refuses both). Now they read the ranks from the launcher's variables, as init_dist does."""
    from ldt.sr.loaders import dataset
    from ldt.sr.options import load_options

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    opt = basicsr_options(data_root, "ranks", 2)
    probe = opt["ldt"]["probe"]["num_batches"]
    path = tmp_path / "ranks.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    samples = len(dataset(load_options(str(path), is_train=True), "train"))
    batch = opt["datasets"]["train"]["batch_size_per_gpu"]
    ranks = probe + 1 if fault == "probe share" else samples  # each rank's share: one sample, fewer than a batch
    assert (-(-samples // ranks) >= batch) if fault == "probe share" else batch > 1  # only the one fault
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(ranks))
    with pytest.raises(SystemExit) as stop:
        run_pipeline(tmp_path, monkeypatch, opt, "--launcher", launcher)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == (f"error: ldt:probe:num_batches: {probe} probe batch(es) in all is fewer than the {ranks} ranks "
                        f"(world size {ranks}): every rank probes at least one, so {ranks} would be probed; ask for at "
                        f"least {ranks}, or run on fewer ranks" if fault == "probe share" else
                        f"error: datasets:train:batch_size_per_gpu: {batch} is more than the {samples} training "
                        f"sample(s) per rank ({ranks} ranks): an epoch would hold no batch"), lines
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("env, reports", [
    ({}, True),
    ({"LOCAL_RANK": "0", "RANK": "2"}, True),  # the first rank of a second machine
    ({"LOCAL_RANK": "1", "RANK": "1"}, False),
    ({"SLURM_LOCALID": "0", "SLURM_PROCID": "4"}, True),
    ({"SLURM_LOCALID": "3", "SLURM_PROCID": "3"}, False),
    ({"RANK": "1"}, True),  # no rank on a machine said: a process of its own, as far as the parse can tell
])
def test_a_bad_flag_under_a_launcher_is_one_line_from_a_machines_first_rank(tmp_path, monkeypatch, capsys, env,
                                                                            reports):
    """The arguments are parsed before --launcher is known: a bad flag was the same line from every rank (eight on
    eight GPUs). Where the environment says this process is a later rank of its machine, it exits 2 silently."""
    from ldt.sr.basicsr_pipeline import run

    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["train.py", "-opt", "x.yml", "--launcher", "mpi"])
    with pytest.raises(SystemExit) as stop:
        run(tmp_path)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert (len(lines) == 1 and "error:" in lines[0] and "--launcher" in lines[0]) if reports else lines == [], lines


@pytest.mark.parametrize("env, name", [({"LOCAL_RANK": "x"}, "LOCAL_RANK"),
                                       ({"RANK": "0", "WORLD_SIZE": "two", "MASTER_ADDR": "127.0.0.1",
                                         "MASTER_PORT": "29500"}, "WORLD_SIZE")])
def test_a_launcher_variable_that_is_no_number_is_one_line_naming_it(data_root, tmp_path, monkeypatch, capsys, env,
                                                                    name):
    """A launcher's variable set by hand to something else was a ValueError traceback from int()."""
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stop:
        run_pipeline(tmp_path, monkeypatch, basicsr_options(data_root, "env", 2), "--launcher", "pytorch")
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: environment variable {name}={env[name]!r} is not a whole "
                                                   "number"), lines
