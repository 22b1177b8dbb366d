"""Run integrity under faults: reruns, resumes with changed options, unreadable files, NaN, signals, disk problems,
leftovers and late data errors. Each case checks the exit code, that the one-line message names the culprit, and
that nothing already written changed (file hashes before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import fill
from tests.sr_fixtures import register_spare_net, tiny_cameras, tiny_options

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (log files aside: a rerun may append to them)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".log"}


def write(opt: dict, folder: Path, file: str = "run.yml") -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def cli(opt: dict, root: Path, capsys, *flags: str) -> tuple[int, list[str]]:
    """``Train_pip.py -opt <opt> --root <root> <flags>`` in this process: (exit code, stderr 'error:' lines)."""
    from ldt.sr.train import main

    capsys.readouterr()
    code = main(["-opt", str(write(opt, root, f"{opt['name'].replace('/', '_')}.yml")), "--root", str(root), *flags])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")] or err.splitlines()[-3:]


def latest(root: Path, name: str) -> dict:
    return torch.load(root / "experiments" / name / "models" / "net_g_latest.pth", weights_only=True)["params"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def options(data_root, name: str, **train) -> dict:
    opt = tiny_options(data_root, name, "ldt")
    opt["train"].update(train)
    return opt


# ---- 1. a rerun of a name archives the old run; --auto_resume resumes only the same run --------------------------------
def test_a_rerun_of_an_experiment_name_archives_the_earlier_run(data_root, tmp_path, capsys):
    assert cli(options(data_root, "same"), tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "same"
    before = snapshot(exp)
    assert cli(options(data_root, "same", optim_g={"type": "Adam", "lr": 5e-4}), tmp_path, capsys)[0] == 0
    archived = list((tmp_path / "experiments").glob("same_archived_*"))
    assert len(archived) == 1 and snapshot(archived[0]) == before  # the first run, byte for byte
    assert snapshot(exp) != before and (exp / "models" / "net_g_best.pth").is_file()


def test_a_second_run_of_a_name_that_is_training_is_refused_and_touches_nothing(data_root, tmp_path, capsys):
    """Two runs of one name at once would archive and overwrite each other's folder; the lock goes with the run."""
    from ldt.atomic import lock_beside
    from tests.conftest import lock_held_elsewhere

    assert cli(options(data_root, "busy"), tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "busy"
    with lock_held_elsewhere(lock_beside(exp), 60) as holder:  # a run of this name in another process
        before = snapshot(tmp_path / "experiments")
        code, lines = cli(options(data_root, "busy"), tmp_path, capsys)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {exp} is in use by another run (pid {holder.pid}, since ") and \
            lines[0].endswith(f"lock {lock_beside(exp)}): wait for it to finish, or choose another name")
        assert snapshot(tmp_path / "experiments") == before and not list(exp.parent.glob("busy_archived_*"))
    assert cli(options(data_root, "busy"), tmp_path, capsys)[0] == 0  # released: a rerun archives as usual
    assert len(list(exp.parent.glob("busy_archived_*"))) == 1


@pytest.mark.slow
def test_a_rerun_that_would_archive_a_live_run_of_a_name_inside_it_is_refused(data_root, tmp_path, capsys):
    """The lock of 'outer/inner' is experiments/outer/.inner.lock: a rerun of 'outer' archived the live run's folder
    and lock with its own. It is refused now; the reverse, 'outer/inner' while 'outer' trains, is fine (neither writes
    the other's files), and once the inner run is done a rerun of 'outer' archives it with the rest, as before."""
    from ldt.atomic import lock_beside
    from tests.conftest import lock_held_elsewhere

    assert cli(options(data_root, "outer"), tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "outer"
    inner = exp / "inner"
    (inner / "models").mkdir(parents=True)
    (inner / "models" / "net_g_3.pth").write_bytes(b"a live run's checkpoint")
    with lock_held_elsewhere(lock_beside(inner), 60) as holder:  # a run of outer/inner, training
        before = snapshot(exp)
        code, lines = cli(options(data_root, "outer"), tmp_path, capsys)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {exp} holds {inner}, which is in use by another run (pid {holder.pid}, "
                                   "since ") and \
            lines[0].endswith(f"lock {lock_beside(inner)}): wait for it to finish, or choose another name"), lines
        assert snapshot(exp) == before and not list(exp.parent.glob("outer_archived_*"))
    with lock_held_elsewhere(lock_beside(exp), 60):  # 'outer' trains; a run of a name inside it may start
        outer_files = {k: v for k, v in snapshot(exp).items() if not k.startswith(("inner", ".inner.lock"))}
        assert cli(options(data_root, "outer/inner"), tmp_path, capsys)[0] == 0
        assert {k: v for k, v in snapshot(exp).items() if not k.startswith(("inner", ".inner.lock"))} == outer_files
    assert cli(options(data_root, "outer"), tmp_path, capsys)[0] == 0  # nothing live inside: archived whole
    (archived,) = exp.parent.glob("outer_archived_*")
    assert (archived / "inner" / "models" / "net_g_best.pth").is_file()


def test_an_evaluation_or_a_stage_rebuild_never_moves_a_live_run_inside_its_folder(data_root, tmp_path):
    """test.py archives results/<name> and a demo / sweep stage deletes its folder to start afresh: each went
    through a live run of a name inside it."""
    from ldt.atomic import BusyError, lock_beside
    from ldt.sr.checkpoints import archive
    from ldt.sr.experiment import run_stage
    from tests.conftest import lock_held_elsewhere

    results, stage = tmp_path / "results" / "t", tmp_path / "experiments" / "stage"
    for folder in (results, stage):
        (folder / "inner").mkdir(parents=True)
        (folder / "results.json").write_text("{}")
    with lock_held_elsewhere(lock_beside(results / "inner")), lock_held_elsewhere(lock_beside(stage / "inner")):
        before = [snapshot(results), snapshot(stage)]
        with pytest.raises(BusyError, match=f"^{results} holds {results / 'inner'}, which is in use by another run"):
            archive(results)
        with pytest.raises(BusyError, match=f"^{stage} holds {stage / 'inner'}, which is in use by another run"):
            run_stage(options(data_root, "stage"), tmp_path, force=True)
        assert [snapshot(results), snapshot(stage)] == before


def test_a_second_test_py_of_a_name_that_is_evaluating_is_refused_and_touches_nothing(data_root, tmp_path, capsys):
    """The second evaluation archived the first's folder mid-way, and the two wrote each other's results."""
    from ldt.archs.safmn_arch import SAFMN
    from ldt.atomic import lock_beside
    from ldt.sr.evaluate import main as test_main
    from tests.conftest import lock_held_elsewhere

    opt = options(data_root, "evaluated")
    torch.save({"params": SAFMN(**{k: v for k, v in opt["network_g"].items() if k != "type"}).state_dict()},
               tmp_path / "net.pth")
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
                "path": {"pretrain_network_g": str(tmp_path / "net.pth")},
                "datasets": {"test_1": {**opt["datasets"]["val_2"]}}}
    command = ["-opt", str(write(test_opt, tmp_path, "t.yml")), "--root", str(tmp_path)]
    assert test_main(command) == 0
    out = tmp_path / "results" / "t"
    with lock_held_elsewhere(lock_beside(out), 60) as holder:  # an evaluation of this name in another process
        before = snapshot(tmp_path / "results")
        capsys.readouterr()
        code, lines = test_main(command), capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {out} is in use by another run (pid {holder.pid}, since ") and \
            lines[0].endswith(f"lock {lock_beside(out)}): wait for it to finish, or choose another name")
        assert snapshot(tmp_path / "results") == before and not list(out.parent.glob("t_archived_*"))
    assert test_main(command) == 0 and len(list(out.parent.glob("t_archived_*"))) == 1  # released


def test_a_folder_where_a_lock_file_goes_is_one_line_in_train_test_and_a_stage(data_root, tmp_path, capsys):
    """A ``.<name>.lock`` folder (made by hand or by another tool) could not be opened as a file, so training, test.py
    and a demo / sweep stage went ahead unlocked, without a word: a second run of the name was not refused."""
    from ldt.archs.safmn_arch import SAFMN
    from ldt.atomic import DiskError, lock_beside
    from ldt.sr.evaluate import main as test_main
    from ldt.sr.experiment import run_stage

    opt = options(data_root, "locked", total_iter=1)
    exp, out = tmp_path / "experiments" / "locked", tmp_path / "results" / "t"
    for folder in (exp, out, tmp_path / "experiments" / "stage"):
        lock_beside(folder).mkdir(parents=True)
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and lines == [f"error: cannot lock {lock_beside(exp)}: it is a folder, not a file (made by hand "
                                   "or by another tool?); move it away"], lines
    assert not exp.exists()
    torch.save({"params": SAFMN(**{k: v for k, v in opt["network_g"].items() if k != "type"}).state_dict()},
               tmp_path / "net.pth")
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
                "path": {"pretrain_network_g": str(tmp_path / "net.pth")},
                "datasets": {"test_1": {**opt["datasets"]["val_2"]}}}
    capsys.readouterr()
    assert test_main(["-opt", str(write(test_opt, tmp_path, "t.yml")), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: cannot lock {lock_beside(out)}: it is a folder, not a "
                                                     "file (made by hand or by another tool?); move it away"]
    assert not out.exists()
    with pytest.raises(DiskError, match=f"^cannot lock {lock_beside(tmp_path / 'experiments' / 'stage')}: it is a "
                                        "folder"):
        run_stage(options(data_root, "stage"), tmp_path)


def test_a_folder_named_as_a_lock_inside_an_archived_folder_is_archived_with_it(tmp_path):
    """No run of experiments/a/b can hold a lock that is a folder (it is refused), so archiving a is not."""
    from ldt.atomic import lock_beside
    from ldt.sr.checkpoints import archive

    folder = tmp_path / "a"
    lock_beside(folder / "b").mkdir(parents=True)
    [(old, new)] = archive(folder)
    assert old == folder and (new / ".b.lock").is_dir() and not folder.exists()


@pytest.mark.parametrize("section,key,value,named", [
    ("ldt", "unstable_ratio", 0.4, "ldt:unstable_ratio: 0.5 -> 0.4"),
    ("ldt", "method", "ldt_s", "ldt:method: 'ldt' -> 'ldt_s'"),
    ("network_g", "dim", 12, "network_g:dim: 8 -> 12"),
    ("datasets", "train", None, "datasets:train:cameras"),
])
def test_auto_resume_refuses_a_state_of_other_options(section, key, value, named, data_root, tmp_path, capsys):
    assert cli(options(data_root, "other", total_iter=3), tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "other"
    before = snapshot(exp)
    opt = options(data_root, "other", total_iter=6)
    if section == "datasets":
        opt["datasets"]["train"]["cameras"] = ["olympus", "sony"]
        opt["datasets"]["val_2"]["cameras"] = ["dsc"]
    else:
        opt[section][key] = value
    code, lines = cli(opt, tmp_path, capsys, "--auto_resume")
    assert code == 2 and len(lines) == 1
    assert f"cannot resume {exp / 'training_states' / '3.state'}: it was trained with other options" in lines[0]
    assert named in lines[0] and "without --auto_resume" in lines[0]
    assert snapshot(exp) == before


# ---- 2. a resume applies what may change --------------------------------------------------------------------------------
def test_a_resume_applies_a_new_learning_rate_and_length(data_root, tmp_path, capsys):
    assert cli(options(data_root, "longer", total_iter=3), tmp_path, capsys)[0] == 0
    opt = options(data_root, "longer", total_iter=6, optim_g={"type": "Adam", "lr": 5e-4, "betas": [0.0, 0.99]})
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0
    # the run's log files (BasicSR's logger does not propagate: caplog saw the lines only after some other test had
    # turned propagation on, so the test failed alone)
    text = "".join(path.read_text() for path in (tmp_path / "experiments" / "longer").glob("train_longer_*.log"))
    assert "resume: train:optim_g:lr: 0.001 -> 0.0005 (applied)" in text
    assert "resume: train:total_iter: 3 -> 6 (applied)" in text
    state = torch.load(tmp_path / "experiments" / "longer" / "training_states" / "6.state", weights_only=True)
    assert {g["lr"] for o in state["optimizers"] for g in o["param_groups"]} == {5e-4}


# ---- 3. unreadable files: one line naming the file -------------------------------------------------------------------
@pytest.fixture
def weights_files(data_root, tmp_path):
    from ldt.archs.hat_arch import HAT

    files = {"empty": tmp_path / "empty.pth", "truncated": tmp_path / "truncated.pth",
             "foreign": tmp_path / "foreign.pth", "other net": tmp_path / "hat.pth"}
    files["empty"].write_bytes(b"")
    torch.save({"params": {"w": torch.zeros(1000)}}, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:300])
    files["foreign"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    torch.save({"params": HAT(embed_dim=6, depths=[1], num_heads=[1], window_size=4, img_size=8,
                              squeeze_factor=2).state_dict()}, files["other net"])
    return files


REASONS = {"empty": "is empty (0 bytes)", "truncated": "is truncated", "foreign": "is not a PyTorch checkpoint",
           "other net": "does not fit SAFMN: missing"}


def test_pretrained_weights_with_an_empty_params_ema_load_params_and_the_run_log_says_so(data_root, tmp_path, capsys):
    from ldt.archs.safmn_arch import SAFMN

    opt = options(data_root, "ema_empty", total_iter=1)
    network = {k: v for k, v in opt["network_g"].items() if k != "type"}
    weights = tmp_path / "ema_empty.pth"
    torch.save({"params": SAFMN(**network).state_dict(), "params_ema": {}}, weights)
    opt["path"]["pretrain_network_g"] = str(weights)
    assert cli(opt, tmp_path, capsys)[0] == 0
    said = [line for line in run_log(tmp_path / "experiments" / "ema_empty").splitlines() if "is empty" in line]
    assert len(said) == 1 and said[0].endswith(f"{weights}: its 'params_ema' entry is empty: the weights are its "
                                               "'params' entry"
                                               f" ({len(SAFMN(**network).state_dict())} tensors)"), said


@pytest.mark.parametrize("kind", list(REASONS))
def test_a_broken_pretrained_file_is_one_line_in_train_and_test(kind, weights_files, data_root, tmp_path, capsys):
    from ldt.sr.evaluate import main as test_main

    opt = options(data_root, "pre")
    opt["path"]["pretrain_network_g"] = str(weights_files[kind])
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and str(weights_files[kind]) in lines[0] and REASONS[kind] in lines[0], lines
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "path": opt["path"],
                "datasets": {"test_1": {**opt["datasets"]["val_2"]}}}
    code = test_main(["-opt", str(write(test_opt, tmp_path, "t.yml")), "--root", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and REASONS[kind] in lines[0], lines
    # Nothing new on disk: test.py left an empty results/t and its lock file behind.
    assert not any((tmp_path / folder).exists() for folder in ("experiments", "tb_logger", "results"))


@pytest.mark.parametrize("kind", ["missing", "truncated"])
def test_a_broken_resume_state_is_one_line_and_creates_nothing(kind, weights_files, data_root, tmp_path, capsys):
    opt = options(data_root, "resumed")
    opt["path"]["resume_state"] = str(weights_files.get(kind, tmp_path / "missing.state"))
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and opt["path"]["resume_state"] in lines[0], lines
    assert not any((tmp_path / folder).exists() for folder in ("experiments", "tb_logger", "results"))


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_broken_newest_state_falls_back_to_the_newest_intact_one(damage, data_root, tmp_path, capsys, caplog):
    assert cli(options(data_root, "straight", total_iter=9), tmp_path, capsys)[0] == 0
    assert cli(options(data_root, "broken", total_iter=6), tmp_path, capsys)[0] == 0
    newest = tmp_path / "experiments" / "broken" / "training_states" / "6.state"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3] if damage == "truncate" else b"")
    with caplog.at_level("WARNING", logger="basicsr"):
        assert cli(options(data_root, "broken", total_iter=9), tmp_path, capsys, "--auto_resume")[0] == 0
    assert f"skipping training state {newest}" in caplog.text
    assert same_weights(latest(tmp_path, "straight"), latest(tmp_path, "broken"))  # resumed from 3.state, exactly


@pytest.mark.parametrize("damage", ['{"value": 2', '{"value": "high", "iter": 3}', '{"value": true, "iter": 3}'])
def test_a_hand_broken_best_score_stops_a_resume_in_one_line(damage, data_root, tmp_path, capsys):
    assert cli(options(data_root, "best", total_iter=3), tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "best"
    (exp / "best.json").write_text(damage)
    before = snapshot(exp)
    code, lines = cli(options(data_root, "best", total_iter=6), tmp_path, capsys, "--auto_resume")
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {exp / 'best.json'}: "), lines
    assert snapshot(exp) == before


def test_an_older_best_score_of_nan_is_no_best_on_resume(data_root, tmp_path, capsys):
    """The previous version wrote a NaN score as the string 'nan' (ldt.cli.number_back reads it back): a resume
    refused that best.json ('value' is 'nan', not a number). It now reads as NaN, which is no best: the resume
    keeps the state's best and trains on."""
    assert cli(options(data_root, "best", total_iter=3), tmp_path, capsys)[0] == 0
    best = tmp_path / "experiments" / "best" / "best.json"
    best.write_text('{"value": "nan", "iter": 3, "set": "val_2"}')
    code, lines = cli(options(data_root, "best", total_iter=6), tmp_path, capsys, "--auto_resume")
    assert code == 0, lines


# ---- 3b. path:resume_state never mixes two runs in one folder; a run that cannot start archives nothing ------------
def test_resume_state_refuses_a_folder_holding_a_run_it_does_not_continue(data_root, tmp_path, capsys):
    assert cli(options(data_root, "first", total_iter=6), tmp_path, capsys)[0] == 0
    assert cli(options(data_root, "victim", total_iter=6), tmp_path, capsys)[0] == 0
    states = tmp_path / "experiments" / "first" / "training_states"
    before = {name: snapshot(tmp_path / "experiments" / name) for name in ("first", "victim")}
    for name, state in (("victim", states / "3.state"), ("first", states / "3.state")):  # another run's; a rollback
        opt = options(data_root, name, total_iter=9)
        opt["path"]["resume_state"] = str(state)
        code, lines = cli(opt, tmp_path, capsys)
        exp = tmp_path / "experiments" / name
        assert code == 2 and lines == [f"error: path:resume_state: {exp} holds a run that {state} does not continue "
                                       f"(its newest state is {exp / 'training_states' / '6.state'}); resume it under "
                                       "another name, or move that folder away"], lines
    assert {name: snapshot(tmp_path / "experiments" / name) for name in ("first", "victim")} == before
    opt = options(data_root, "branch", total_iter=9)  # a new name continues the older state
    opt["path"]["resume_state"] = str(states / "3.state")
    assert cli(opt, tmp_path, capsys)[0] == 0
    opt = options(data_root, "first", total_iter=5)
    code, lines = cli(opt, tmp_path, capsys, "--auto_resume")
    assert code == 2 and lines == [f"error: train:total_iter: 5 is before the iteration of {states / '6.state'} (6): "
                                   "nothing to train; raise it to go on"]


@pytest.mark.parametrize("problem", ["truncated weights", "NaN weights", "probe batch"])
def test_a_run_that_cannot_start_leaves_the_earlier_run_in_place(problem, data_root, tmp_path, capsys):
    assert cli(options(data_root, "kept", total_iter=3), tmp_path, capsys)[0] == 0
    before = snapshot(tmp_path / "experiments")
    opt = options(data_root, "kept", total_iter=3)
    weights = tmp_path / "experiments" / "kept" / "models" / "net_g_latest.pth"
    broken = tmp_path / "broken.pth"
    if problem == "truncated weights":
        broken.write_bytes(weights.read_bytes()[:1000])
        expected = f"weights file {broken} is truncated or not a PyTorch checkpoint"
    elif problem == "NaN weights":
        saved = torch.load(weights, weights_only=True)
        saved["params"] = {k: v * float("nan") for k, v in saved["params"].items()}
        torch.save(saved, broken)
        expected = f"weights file {broken}: 'to_feat.weight' has NaN/inf values"
    else:
        opt["ldt"]["probe"] = {"batch_size": 100}
        expected = "ldt:probe:batch_size: 100 is more than the"
    if problem != "probe batch":
        opt["path"]["pretrain_network_g"] = str(broken)
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert snapshot(tmp_path / "experiments") == before and not list((tmp_path / "experiments").glob("*_archived_*"))


def test_the_log_file_holds_the_info_lines_and_files_are_readable_by_others(data_root, tmp_path, capsys):
    assert cli(options(data_root, "logged", total_iter=3), tmp_path, capsys)[0] == 0
    opt = options(data_root, "logged", total_iter=6, optim_g={"type": "Adam", "lr": 5e-4, "betas": [0.0, 0.99]})
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0
    exp = tmp_path / "experiments" / "logged"
    text = "".join(path.read_text() for path in exp.glob("train_logged_*.log"))  # one file per second
    assert "INFO: Partition: " in text and text.count("Training done in") == 2
    assert text.count("INFO: Model [LDTModel] is created.") == 2  # BasicSR's lines, for tools that read its logs
    assert re.search(r"INFO: Network: SAFMN, with parameters: \d{1,3}(,\d{3})*\n", text)
    # what the resume logged before the folder was prepared is in the file too
    assert "resume: train:optim_g:lr: 0.001 -> 0.0005 (applied)" in text and "Resumed from " in text
    umask = os.umask(0)
    os.umask(umask)
    for path in (exp / "results.json", exp / "models" / "net_g_latest.pth", exp / "training_states" / "6.state"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert json.loads((exp / "results.json").read_text())["train_seconds"] > \
        torch.load(exp / "training_states" / "3.state", weights_only=True)["extra"]["train_seconds"] > 0


# ---- 4. NaN: the message names the last finite checkpoint; a non-finite state is never saved ----------------------------
def test_non_finite_weights_are_never_saved_and_the_message_names_the_last_finite_state(data_root, tmp_path, capsys,
                                                                                       monkeypatch):
    from ldt.models.ldt_model import LDTModel

    step = LDTModel.optimize_parameters

    def diverge_at_6(self, current_iter):
        step(self, current_iter)
        if current_iter == 6:
            with torch.no_grad():
                next(self.method.branches()[0].module.parameters()).fill_(float("inf"))

    monkeypatch.setattr(LDTModel, "optimize_parameters", diverge_at_6)
    opt = options(data_root, "nan", total_iter=9)
    code, lines = cli(opt, tmp_path, capsys)
    states = tmp_path / "experiments" / "nan" / "training_states"
    assert code == 2 and len(lines) == 1
    assert "iteration 6: the weights are not finite (primary:" in lines[0]
    assert f"the last finite checkpoint is {states / '3.state'}" in lines[0] and "lower train:optim_g:lr" in lines[0]
    assert sorted(p.name for p in states.iterdir()) == ["3.state"]
    monkeypatch.setattr(LDTModel, "optimize_parameters", step)
    opt["train"]["optim_g"] = {"type": "Adam", "lr": 5e-4, "betas": [0.0, 0.99]}
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0  # and it goes on from there with a lower lr


# ---- 6. disk problems ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_unwritable_experiments_folder_is_one_line(data_root, tmp_path):
    """As a user without the right to write (root without CAP_DAC_OVERRIDE: permissions apply to it as to anyone)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the permission override")
    root = tmp_path / "readonly"
    (root / "experiments").mkdir(parents=True)
    (root / "experiments").chmod(0o555)
    opt_file = write(options(data_root, "denied"), tmp_path)
    drop = "-dac_override,-dac_read_search"
    result = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable,
                             str(PROJECT / "Train_pip.py"), "-opt", str(opt_file), "--root", str(root)],
                            capture_output=True, text=True, timeout=300, cwd=PROJECT)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"cannot create {root / 'experiments' / 'denied'}: permission denied" in lines[0]
    assert not list((root / "experiments").iterdir())


@pytest.mark.slow
def test_an_unwritable_results_folder_stops_test_py_before_it_evaluates(data_root, tmp_path, capsys):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the permission override")
    assert cli(options(data_root, "tested", total_iter=3), tmp_path, capsys)[0] == 0
    opt = options(data_root, "tested")
    opt["path"]["pretrain_network_g"] = str(tmp_path / "experiments" / "tested" / "models" / "net_g_latest.pth")
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "path": opt["path"],
                "datasets": {"test_1": {**opt["datasets"]["val_2"]}}}
    root = tmp_path / "readonly"
    (root / "results").mkdir(parents=True)
    (root / "results").chmod(0o555)
    drop = "-dac_override,-dac_read_search"
    result = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable,
                             str(PROJECT / "test.py"), "-opt", str(write(test_opt, tmp_path, "t.yml")), "--root",
                             str(root)], capture_output=True, text=True, timeout=300, cwd=PROJECT)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: cannot write in {root / 'results'}: permission denied"], result.stderr[-2000:]
    assert not any((root / 'results').iterdir())  # refused before anything was created


def test_a_full_disk_at_the_start_stops_train_and_test_before_any_work(data_root, disk, tmp_path, capsys,
                                                                      monkeypatch):
    """An empty file can still be created on a full disk, so the folder looked writable: training ran its warm-up
    and probe (minutes) before partition.json failed, test.py evaluated every image before results.json did."""
    import ldt.sr.evaluate
    import ldt.sr.train

    assert cli(options(data_root, "weights", total_iter=1), tmp_path, capsys)[0] == 0
    opt = options(data_root, "full")
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "datasets": {"test_1": opt["datasets"]["val_2"]},
                "path": {"pretrain_network_g": str(tmp_path / "experiments" / "weights" / "models" / "net_g_latest.pth")}}
    train_file, test_file = write(opt, tmp_path, "full.yml"), write(test_opt, tmp_path, "t.yml")
    fill(disk)
    for module, builder in ((ldt.sr.train, "LDTModel"), (ldt.sr.evaluate, "build_model")):
        monkeypatch.setattr(module, builder, lambda *a, **k: pytest.fail("the network was built"))
    # test.py creates nothing before its checks: the nearest folder that exists is named
    for entry, options_file, folder in ((ldt.sr.train, train_file, disk / "experiments/full"),
                                        (ldt.sr.evaluate, test_file, disk)):
        capsys.readouterr()
        assert entry.main(["-opt", str(options_file), "--root", str(disk)]) == 2
        assert capsys.readouterr().err.splitlines() == [f"error: cannot write in {folder}: no space left on device"]
    assert not (disk / "results").exists()


def test_a_disk_that_fills_as_the_log_file_opens_is_one_line(data_root, disk, tmp_path, capsys, monkeypatch):
    """A disk that fills while a run works (another job's output): the log file's buffered lines cannot be written,
    and closing it raised an OSError traceback that hid the one line of the write that failed."""
    from ldt.sr.train import RunLog

    to_file = RunLog.to_file

    def fill_then_open(self, path: Path) -> None:
        fill(disk)
        to_file(self, path)

    monkeypatch.setattr(RunLog, "to_file", fill_then_open)
    code, lines = cli(options(data_root, "filled", total_iter=3), disk, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: cannot write ") and "no space left on device" in lines[0]


def test_a_broken_symlink_or_a_folder_where_a_file_goes_is_said_in_words(data_root, tmp_path, capsys):
    """They were '[Errno 17] File exists' (a symlink whose target is gone as the experiment folder) and '[Errno 21]
    Is a directory' (a folder where best.json or the log file goes), which do not say what is in the way."""
    from ldt.atomic import DiskError
    from ldt.sr.train import RunLog

    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "gone").symlink_to(tmp_path / "moved_away")
    code, lines = cli(options(data_root, "gone", total_iter=1), tmp_path, capsys)
    assert code == 2 and lines == [f"error: cannot create {experiments / 'gone'}: {experiments / 'gone'} is a symlink "
                                   f"to {tmp_path / 'moved_away'}, which does not exist"], lines
    (experiments / "best" / "best.json").mkdir(parents=True)
    code, lines = cli(options(data_root, "best", total_iter=1), tmp_path, capsys)
    best = experiments / "best" / "best.json"
    assert code == 2 and lines == [f"error: cannot write {best}: {best} is a folder, not a file (the previous file, "
                                   "if any, is intact)"], lines
    with RunLog(True) as log, pytest.raises(DiskError, match=f"^cannot write {best}: {best} is a folder, not a file$"):
        log.to_file(best)


def tensorboard_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if type(t).__module__.startswith("tensorboard.")]


def test_a_tensorboard_log_whose_disk_fills_mid_run_is_one_warning_and_training_goes_on(data_root, disk, tmp_path,
                                                                                       capsys, monkeypatch):
    """SummaryWriter writes in a thread of its own: a full disk failed that thread (a thread traceback) and the next
    add_scalar raised its OSError, a traceback that ended the run. The curves are a view (the validation history is
    in the states and results.json); the run goes on, its checkpoints stop it if the disk stays full. The writer is
    closed on every way out (it was left running when a run stopped)."""
    import threading

    from ldt.models.ldt_model import LDTModel

    unhandled: list = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)  # a thread's traceback would land here
    step, filler, page = LDTModel.optimize_parameters, disk / "filler", os.sysconf("SC_PAGE_SIZE")
    filled_at: list[int] = []

    def fill_as_the_curves_need_a_page(self, current_iter: int) -> None:
        """Another job's output fills the disk, and is gone once the writer's thread has met it. A file's last page
        takes writes on a full disk: it is filled when this step's curve points need a new page."""
        (events,) = (disk / "tb_logger" / "curves").glob("events.out.tfevents.*")
        if not filled_at and -events.stat().st_size % page < 256:
            fill(disk)
            filled_at.append(current_iter)
        elif filler.exists() and not tensorboard_threads():
            filler.unlink()
        step(self, current_iter)

    monkeypatch.setattr(LDTModel, "optimize_parameters", fill_as_the_curves_need_a_page)
    opt = options(data_root, "curves", total_iter=60)
    opt["val"]["val_freq"] = opt["logger"]["save_checkpoint_freq"] = 60
    opt["logger"].update(use_tb_logger=True, print_freq=1)
    from ldt.sr.train import main

    capsys.readouterr()
    code = main(["-opt", str(write(opt, tmp_path)), "--root", str(disk)])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "TensorBoard" in line]
    assert code == 0 and len(warnings) == 1 and not unhandled and "Traceback" not in err, err[-3000:]
    assert "WARNING: the TensorBoard log stopped at iteration " in warnings[0] and warnings[0].endswith(
        f": cannot write in {disk / 'tb_logger' / 'curves'}: no space left on device; training goes on (the "
        "validation history is kept in the training states and results.json)"), warnings
    assert filled_at and not filler.exists(), filled_at  # the disk filled mid-run, and was freed before the end
    results = json.loads((disk / "experiments" / "curves" / "results.json").read_text())
    assert results["iterations"] == 60 and [h["iter"] for h in results["history"]] == [60]
    assert threading.excepthook == unhandled.append and not tensorboard_threads()

    def stop_at_2(self, current_iter: int) -> None:
        step(self, current_iter)
        if current_iter == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(LDTModel, "optimize_parameters", stop_at_2)
    opt["train"]["total_iter"] = 6
    assert cli(opt, disk, capsys)[0] == 128 + signal.SIGTERM
    assert not tensorboard_threads()  # closed, its events written


def test_a_disk_that_fills_as_the_tensorboard_log_starts_is_the_same_one_warning(data_root, disk, tmp_path, capsys,
                                                                              monkeypatch):
    """A disk that filled between the start-up room check and SummaryWriter's first write (its file-version record,
    in the constructor): the constructor raised an OSError traceback, and its thread another. Now the warning of a
    disk filling mid-run, and the run goes on. A real full disk, freed once the writer has met it."""
    import threading

    import torch.utils.tensorboard

    unhandled: list = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)  # a thread's traceback would land here
    writer = torch.utils.tensorboard.SummaryWriter

    def fill_then_start(*args, **kwargs):
        filler = fill(disk)
        try:
            return writer(*args, **kwargs)
        finally:
            filler.unlink()

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", fill_then_start)
    opt = options(data_root, "starting", total_iter=3)
    opt["logger"]["use_tb_logger"] = True
    from ldt.sr.train import main

    capsys.readouterr()
    code = main(["-opt", str(write(opt, tmp_path)), "--root", str(disk)])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "TensorBoard" in line]
    assert code == 0 and len(warnings) == 1 and not unhandled and "Traceback" not in err, err[-3000:]
    assert warnings[0].endswith(
        f"WARNING: the TensorBoard log stopped at its start: cannot write in {disk / 'tb_logger' / 'starting'}: no "
        "space left on device; training goes on (the validation history is kept in the training states and "
        "results.json)"), warnings
    assert json.loads((disk / "experiments" / "starting" / "results.json").read_text())["iterations"] == 3
    assert threading.excepthook == unhandled.append and not tensorboard_threads()


def test_each_run_warns_on_the_stderr_it_has(tmp_path):
    """BasicSR's console handler keeps the sys.stderr of the process's first run: in a process whose stderr was
    redirected since (pytest's capture of an earlier test, contextlib.redirect_stderr), a run's warnings went to the
    old stream, and were lost."""
    import contextlib
    import io

    from ldt.sr.train import RunLog

    first, now = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(first), RunLog(True):
        pass  # BasicSR's logger is set up here, if no earlier run did
    with contextlib.redirect_stderr(now), RunLog(True) as log:
        log.logger.warning("disk nearly full")
    assert now.getvalue().endswith("WARNING: disk nearly full\n") and "disk nearly full" not in first.getvalue()


def test_a_resume_into_a_read_only_folder_fails_before_training(data_root, disk, tmp_path, capsys):
    from ldt.sr.train import main

    assert cli(options(data_root, "frozen", total_iter=3), disk, capsys)[0] == 0
    opt_file = write(options(data_root, "frozen", total_iter=60), tmp_path, "frozen.yml")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    start = time.time()
    capsys.readouterr()
    code = main(["-opt", str(opt_file), "--root", str(disk), "--auto_resume"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"error: cannot write in {disk / 'experiments' / 'frozen'}: read-only file system"]
    assert time.time() - start < 30  # before 57 iterations of training


def test_an_immutable_file_mid_run_is_one_line_and_the_rest_is_intact(data_root, tmp_path, capsys):
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr")
    assert cli(options(data_root, "immutable", total_iter=3), tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "immutable"
    locked = exp / "models" / "net_g_latest.pth"
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        before = snapshot(exp)
        code, lines = cli(options(data_root, "immutable", total_iter=6), tmp_path, capsys, "--auto_resume")
        assert code == 2 and len(lines) == 1
        assert f"cannot write {locked}: operation not permitted" in lines[0] and "intact" in lines[0]
        after = snapshot(exp)
        kept = ["models/net_g_latest.pth", "models/net_g_3.pth", "training_states/3.state"]
        assert [after[k] for k in kept] == [before[k] for k in kept]  # the locked file and the earlier checkpoint
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_resumes_exactly(data_root, disk, tmp_path, capsys,
                                                                            monkeypatch):
    from ldt.models.ldt_model import LDTModel

    assert cli(options(data_root, "straight", total_iter=6, ), tmp_path, capsys)[0] == 0
    opt = options(data_root, "full", total_iter=3)
    opt["logger"]["keep_last_checkpoints"] = 1
    assert cli(opt, disk, capsys)[0] == 0
    states = disk / "experiments" / "full" / "training_states"
    state_bytes = (states / "3.state").stat().st_size
    weight_bytes = (disk / "experiments" / "full" / "models" / "net_g_3.pth").stat().st_size
    filler = disk / "filler"
    before = snapshot(states)
    step = LDTModel.optimize_parameters

    def fill_while_training(self, current_iter: int) -> None:  # a disk full at the start is refused before training
        if current_iter == 4:
            free = shutil.disk_usage(disk).free
            filler.write_bytes(bytes(free - weight_bytes - state_bytes // 2))  # room for the next weights, not state
        step(self, current_iter)

    monkeypatch.setattr(LDTModel, "optimize_parameters", fill_while_training)
    opt["train"]["total_iter"] = 6
    code, lines = cli(opt, disk, capsys, "--auto_resume")
    assert code == 2 and len(lines) == 1
    assert f"cannot write {states / '6.state'}: no space left on device" in lines[0]
    assert snapshot(states) == before
    filler.unlink()
    monkeypatch.undo()
    assert cli(opt, disk, capsys, "--auto_resume")[0] == 0
    assert same_weights(latest(tmp_path, "straight"), latest(disk, "full"))


# ---- 7. names that escape experiments/ --------------------------------------------------------------------------------
def test_a_name_that_escapes_the_experiments_folder_is_refused(data_root, tmp_path, capsys):
    opt = options(data_root, "x")
    opt["name"] = "../../escaped"
    path = tmp_path / "sub" / "deeper"
    path.mkdir(parents=True)
    from ldt.sr.train import main

    code = main(["-opt", str(write(opt, tmp_path)), "--root", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "name: must be a relative name inside experiments/" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yml", "sub"] and not list(path.iterdir())


# ---- 8. leftovers of a kill -------------------------------------------------------------------------------------------
def test_leftovers_of_an_interrupted_write_are_cleaned_at_the_next_start(data_root, tmp_path, capsys):
    opt = options(data_root, "left", total_iter=6)
    opt["logger"]["keep_last_checkpoints"] = 1
    assert cli(opt, tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "left"
    planted = [exp / "models" / ".net_g_9.pth.x1.tmp", exp / "training_states" / ".9.state.x2.tmp",
               exp / "models" / "net_g_4.pth",  # weights without their state (pruning only follows states)
               exp / "models" / "net_g_8.pth"]  # newer than the state the run resumes from
    for path in planted:
        path.write_bytes(b"left over")
    opt["train"]["total_iter"] = 7
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0
    assert not any(path.exists() for path in planted)
    assert sorted(p.name for p in (exp / "models").glob("net_g_[0-9]*.pth")) == ["net_g_7.pth"]  # the last step's


def test_a_rerun_archives_the_earlier_run_without_its_half_written_files(data_root, tmp_path, capsys):
    """A run killed inside a checkpoint write and rerun afresh kept the half-written temporary file in its archive
    (a state's size of garbage per kill, never cleaned: nothing resumes from an archive)."""
    assert cli(options(data_root, "killed", total_iter=3), tmp_path, capsys)[0] == 0
    planted = tmp_path / "experiments" / "killed" / "training_states" / ".6.state.x1.tmp"
    planted.write_bytes(b"half written")
    assert cli(options(data_root, "killed", total_iter=3), tmp_path, capsys)[0] == 0
    (archived,) = (tmp_path / "experiments").glob("killed_archived_*")
    assert (archived / "training_states" / "3.state").is_file() and not list(archived.rglob("*.tmp"))


@pytest.mark.slow
def test_an_lmdb_export_stopped_by_a_corrupt_image_leaves_nothing_that_blocks_a_rerun(data_root, tmp_path):
    root = tmp_path / "drealsr"
    shutil.copytree(data_root, root)
    victim = sorted((root / "x4" / "Test_x4" / "test_HR").glob("P*.png"))[0]
    good = victim.read_bytes()
    # Pixel data garbled, header and end marker intact: the checks before writing pass, the export's decode fails
    middle = len(good) // 2
    victim.write_bytes(good[:middle] + bytes(b ^ 0xFF for b in good[middle:middle + 40]) + good[middle + 40:])
    script = [sys.executable, str(PROJECT / "scripts" / "index_drealsr.py"), str(root), "--splits", "test",
              "--cameras", "olympus", "--lmdb", str(tmp_path / "lmdb")]
    result = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"cannot decode image {victim}" in result.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "lmdb").rglob("*.lmdb")) and not list((tmp_path / "lmdb").rglob("*.partial"))
    victim.write_bytes(good)
    result = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "lmdb").rglob("*.lmdb")) == ["olympus_HR.lmdb", "olympus_LR.lmdb"]


# ---- 9. data errors before training -----------------------------------------------------------------------------------
def damage_truncate(folder: Path) -> Path:
    victim = sorted(folder.glob("P*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:-40])
    return victim


def damage_loop(folder: Path) -> Path:
    victim = folder / "P9999999_x4.png"
    victim.symlink_to(victim)
    return victim


def damage_dangling(folder: Path) -> Path:
    victim = sorted(folder.glob("P*.png"))[0]
    victim.unlink()
    victim.symlink_to(folder / "gone.png")
    return victim


def damage_unpair(folder: Path) -> Path:
    victim = sorted(folder.glob("P*.png"))[0]
    victim.rename(victim.with_name("P7777777_x4.png"))
    return victim.with_name("P7777777_x4.png")


@pytest.mark.parametrize("damage,reason", [(damage_truncate, "is truncated"), (damage_loop, "a symlink loop"),
                                           (damage_dangling, "a broken symlink"),
                                           (damage_unpair, "without an LR partner")])
def test_bad_training_data_fails_before_training_with_one_line(damage, reason, data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root, symlinks=True)
    victim = damage(root / "x4" / "Train_x4" / "train_HR")
    opt = options(data_root, "baddata")
    for block in opt["datasets"].values():
        block["dataroot"] = str(root)
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and victim.name in lines[0] and reason in lines[0], lines
    assert not (tmp_path / "experiments").exists()  # nothing was created: the data is checked first


def test_a_dataroot_without_the_split_folder_names_the_option_in_train_and_test(data_root, tmp_path, capsys):
    """'no test split for x4 under ROOT' named neither the set nor the option, though several sets share a root."""
    from ldt.archs.safmn_arch import SAFMN
    from ldt.sr.evaluate import main as test_main

    root = tmp_path / "data"
    shutil.copytree(data_root / "x4" / "Train_x4", root / "x4" / "Train_x4")  # a copy without its test split
    opt = options(data_root, "nosplit")
    opt["datasets"]["val_2"]["dataroot"] = str(root)
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: datasets:val_2:dataroot: no test split for x4 under {root}: "), lines
    assert not (tmp_path / "experiments").exists()
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
                "path": {"pretrain_network_g": str(tmp_path / "net.pth")}, "datasets": {"test_1": opt["datasets"]["val_2"]}}
    torch.save({"params": SAFMN(**{k: v for k, v in opt["network_g"].items() if k != "type"}).state_dict()},
               tmp_path / "net.pth")
    capsys.readouterr()
    assert test_main(["-opt", str(write(test_opt, tmp_path, "t.yml")), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: datasets:test_1:dataroot: no test split for x4 under ")


def shrunk_validation_pair(data_root: Path, tmp_path: Path, name: str, lr_size: int) -> tuple[dict, Path, Path]:
    """(options of a run named ``name`` on a copy of the data whose first 'pan' test pair is resized to
    ``lr_size`` px LR, x4 HR; that LR path; that HR path)."""
    import cv2

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    lr = sorted((root / "x4" / "Test_x4" / "test_LR").glob("panasonic_*.png"))[0]
    hr = root / "x4" / "Test_x4" / "test_HR" / lr.name.replace("_x1", "_x4")
    for path, size in ((lr, lr_size), (hr, 4 * lr_size)):
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (size, size)))
    opt = options(data_root, name)
    for block in opt["datasets"].values():
        block["dataroot"] = str(root)
    return opt, lr, hr


def test_a_validation_image_smaller_than_the_network_fails_before_training_and_testing(data_root, tmp_path, capsys):
    from ldt.sr.evaluate import main as test_main

    opt, lr, _ = shrunk_validation_pair(data_root, tmp_path, "small", 6)
    expected = "error: {} set pan: " + f"{lr} is 6x6 pixels, smaller than the 8x8 SAFMN needs; remove it or pad it"
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and lines == [expected.format("validation")] and not (tmp_path / "experiments").exists()
    assert cli(options(data_root, "net", total_iter=1), tmp_path, capsys)[0] == 0
    opt["path"]["pretrain_network_g"] = str(tmp_path / "experiments" / "net" / "models" / "net_g_latest.pth")
    test_opt = {"name": "t", "num_gpu": 0, "network_g": opt["network_g"], "path": opt["path"],
                "datasets": {"test_1": {**opt["datasets"]["val_2"]}}}
    capsys.readouterr()
    assert test_main(["-opt", str(write(test_opt, tmp_path, "t.yml")), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected.format("test")]  # test.py validates nothing


def test_a_validation_image_its_metrics_crop_away_fails_before_training(data_root, tmp_path, capsys):
    """A GT image no larger than the metric's crop borders (and SSIM's window) would validate to NaN."""
    opt, _, hr = shrunk_validation_pair(data_root, tmp_path, "cropped", 8)
    opt["val"]["metrics"] = {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim", "crop_border": 12}}
    code, lines = cli(opt, tmp_path, capsys)
    assert code == 2 and not (tmp_path / "experiments").exists()
    assert lines == [f"error: validation set pan: {hr} is 32x32 pixels, val:metrics:ssim needs at least 35x35 (a crop "
                     "border of 12 px at each side and an 11x11 window) or it is NaN; remove it, or lower "
                     "val:metrics:ssim:crop_border"]


def test_smallest_gt_side_follows_each_metrics_border_and_window():
    from ldt.sr.metrics import DEFAULT_METRICS, smallest_gt_side

    assert smallest_gt_side(DEFAULT_METRICS, 4) == (19, "ssim")
    assert smallest_gt_side({}, 4) == (1, None)  # test.py may only save images: no metric, no GT size
    wide = {**DEFAULT_METRICS, "psnr_wide": {"type": "calculate_psnr", "crop_border": 30}}
    assert smallest_gt_side(wide, 4) == (61, "psnr_wide")


def test_a_stop_during_the_start_up_checks_stops_before_the_folder_and_the_probe(data_root, tmp_path, capsys,
                                                                                 monkeypatch):
    """SIGTERM while the data and weights are checked (minutes on a large set) stops there: the earlier run is not
    archived and the warm-up and probe do not run first (a preemption's grace period would not outlast them)."""
    import ldt.sr.train as train_module

    assert cli(options(data_root, "early", total_iter=3), tmp_path, capsys)[0] == 0
    before = snapshot(tmp_path / "experiments" / "early")
    checks = train_module.check_before_start

    def checks_then_signal(*args, **kwargs):
        checked = checks(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return checked

    monkeypatch.setattr(train_module, "check_before_start", checks_then_signal)
    monkeypatch.setattr(train_module, "LDTModel", lambda *a, **k: pytest.fail("the warm-up and probe ran"))
    code, lines = cli(options(data_root, "early", total_iter=3), tmp_path, capsys)
    assert code == 128 + signal.SIGTERM
    assert lines[-1] == "stopped by SIGTERM at iteration 0: before training began, nothing to save (the warm-up and " \
                        "probe run again)"
    assert snapshot(tmp_path / "experiments" / "early") == before
    assert not [p for p in (tmp_path / "experiments").iterdir() if "archived" in p.name]


def test_a_signal_after_the_last_step_finishes_the_run_then_stops_it_and_says_so(data_root, tmp_path, capsys,
                                                                                monkeypatch):
    """A SIGTERM during the final save was told 'saving a training state at the next step': there is no next step,
    no state was saved, and the run exited 0 (a sweep went on to its next stage). The run finishes now, the message
    says so, and the exit is 128 + the signal as for every stop; a sweep's stage is stamped, so its rerun skips it."""
    import ldt.sr.train as train_module
    from ldt.sr.experiment import run_stage
    from ldt.sr.preemption import Interrupted

    write_results = train_module.write_results

    def signal_then_write(*args, **kwargs) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        return write_results(*args, **kwargs)

    monkeypatch.setattr(train_module, "write_results", signal_then_write)
    code, lines = cli(options(data_root, "last", total_iter=4), tmp_path, capsys)
    exp = tmp_path / "experiments" / "last"
    assert code == 128 + signal.SIGTERM
    assert lines == ["", "SIGTERM: the last iteration is done; finishing the final save, then exiting (send it again "
                     "to exit at once)", f"stopped by SIGTERM after the last iteration (4): the run finished "
                     f"({exp / 'results.json'}); nothing to resume"], lines
    assert json.loads((exp / "results.json").read_text())["iterations"] == 4 and \
        (exp / "models" / "net_g_latest.pth").is_file()
    stage = options(data_root, "stage", total_iter=4)
    with pytest.raises(Interrupted, match=r"^stopped by SIGTERM after the last iteration \(4\): the run finished .*; "
                                          "rerun the same command to resume it$"):
        run_stage(stage, tmp_path)
    monkeypatch.setattr(train_module, "write_results", lambda *a, **k: pytest.fail("a finished stage was retrained"))
    assert run_stage(stage, tmp_path)["iterations"] == 4  # cached


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_signal_at_the_last_stop_check_is_told_what_then_happens(moment, data_root, tmp_path, capsys, monkeypatch):
    """A signal just after the last iteration's stop check, before the loop marked the run as finishing, was told
    'saving a training state at the next step', but the run finished instead (no state saved). The handler is called
    directly at that moment, and just before the check: its message must say what the run then does."""
    from ldt.models.ldt_model import LDTModel
    from ldt.sr.preemption import StopOnSignal
    from ldt.sr.train import main

    step, requested, done, fired = LDTModel.optimize_parameters, StopOnSignal.requested, [], []

    def counted_step(self, current_iter: int) -> None:
        step(self, current_iter)
        done.append(current_iter)

    def signal_at_the_last_check(self, *args, **kwargs):
        last = done[-1:] == [4] and not fired  # the first check after the last step: the loop's
        if last and moment == "before":
            fired.append(self._handle(signal.SIGTERM, None))
        signum = requested(self, *args, **kwargs)
        if last and moment == "after":
            fired.append(self._handle(signal.SIGTERM, None))
        return signum

    monkeypatch.setattr(LDTModel, "optimize_parameters", counted_step)
    monkeypatch.setattr(StopOnSignal, "requested", signal_at_the_last_check)
    opt = options(data_root, f"last_{moment}", total_iter=4)
    capsys.readouterr()
    code = main(["-opt", str(write(opt, tmp_path)), "--root", str(tmp_path)])
    lines = capsys.readouterr().err.splitlines()
    told = [line for line in lines if line.startswith("SIGTERM: ")]
    assert fired and code == 128 + signal.SIGTERM and len(told) == 1, lines[-5:]
    exp = tmp_path / "experiments" / f"last_{moment}"
    if "saving a training state at the next step" in told[0]:
        assert lines[-1] == f"stopped by SIGTERM at iteration 4: saved {exp / 'training_states' / '4.state'}; " \
                            "resume with --auto_resume", (told, lines[-1])
    else:
        assert told[0].startswith("SIGTERM: the last iteration is done; finishing the final save, then exiting")
        assert lines[-1] == f"stopped by SIGTERM after the last iteration (4): the run finished " \
                            f"({exp / 'results.json'}); nothing to resume", (told, lines[-1])


@pytest.mark.parametrize("moment", ["checks", "probe", "before_the_last_check", "after_the_last_check"])
def test_a_signal_before_the_first_step_is_told_what_then_happens(moment, data_root, tmp_path, capsys, monkeypatch):
    """A signal during the start-up checks, the warm-up or the probe was told 'saving a training state at the next
    step', but the run stopped before training with nothing saved. The handler is called directly in each phase, and
    just before and after the stop check that follows the probe: its message must say what the run then does."""
    import ldt.sr.train as train_module
    from ldt.sr.preemption import StopOnSignal

    stops, checks, model, requested, calls = [], train_module.check_before_start, train_module.LDTModel, \
        StopOnSignal.requested, []
    enter = StopOnSignal.__enter__
    monkeypatch.setattr(StopOnSignal, "__enter__", lambda self: stops.append(self) or enter(self))

    def fire(now: str) -> None:
        if now == moment:
            stops[-1]._handle(signal.SIGTERM, None)

    def checks_then_signal(*args, **kwargs):
        checked = checks(*args, **kwargs)
        fire("checks")
        return checked

    def probe_then_signal(*args, **kwargs):
        built = model(*args, **kwargs)  # its warm-up and probe run here
        fire("probe")
        return built

    def signal_around_the_check_after_the_probe(self, *args, **kwargs):
        calls.append(kwargs)
        last = len(calls) == 2  # the second check: after the warm-up and probe, before the first step
        if last:
            fire("before_the_last_check")
        signum = requested(self, *args, **kwargs)
        if last:
            fire("after_the_last_check")
        return signum

    monkeypatch.setattr(train_module, "check_before_start", checks_then_signal)
    monkeypatch.setattr(train_module, "LDTModel", probe_then_signal)
    monkeypatch.setattr(StopOnSignal, "requested", signal_around_the_check_after_the_probe)
    capsys.readouterr()
    code = train_module.main(["-opt", str(write(options(data_root, f"first_{moment}", total_iter=3), tmp_path)),
                              "--root", str(tmp_path)])
    lines = capsys.readouterr().err.splitlines()
    told = [line for line in lines if line.startswith("SIGTERM: ")]
    assert code == 128 + signal.SIGTERM and len(told) == 1, lines[-5:]
    if "saving a training state at the next step" in told[0]:
        state = tmp_path / "experiments" / f"first_{moment}" / "training_states" / "1.state"
        assert moment != "checks" and moment != "probe", told
        assert lines[-1] == f"stopped by SIGTERM at iteration 1: saved {state}; resume with --auto_resume", \
            (told, lines[-1])
    else:
        assert told[0] == "SIGTERM: stopping before training begins (nothing new to save), then exiting (send it " \
                          "again to exit at once)", told
        assert lines[-1] == "stopped by SIGTERM at iteration 0: before training began, nothing to save (the " \
                            "warm-up and probe run again)", (told, lines[-1])


# ---- 5 and the interruption test: kill -9 at seeded moments and SIGTERM, resumed each time, bit-identical ---------------
def driver(progress: Path, opt_file: Path, root: Path, *flags: str, pause: int | None = None,
           hold: int | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.interrupt_driver", str(progress), *([str(pause)] if pause else []), "--",
               "-opt", str(opt_file), "--root", str(root), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOLD_AT_ITER": str(hold or 0)}
    return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(progress: Path, line: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if progress.is_file() and line in progress.read_text().splitlines():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before '{line}': {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no '{line}' within {timeout} s")


@pytest.mark.slow
def test_kill_9_at_seeded_moments_and_sigterm_end_bit_identical(data_root, tmp_path):
    opt = options(data_root, "interrupted", total_iter=16)
    opt["val"]["val_freq"] = 4
    opt["logger"]["save_checkpoint_freq"] = 2
    opt_file = write(opt, tmp_path)
    reference = tmp_path / "reference"
    run = driver(tmp_path / "ref.txt", opt_file, reference)
    assert run.wait(timeout=600) == 0, run.communicate()[1][-2000:]

    rng = random.Random(7)  # seeded moments, in order; SIGTERM leaves steps to go, so the run stops before its end
    first = rng.randint(1, 3)
    pause_at = rng.choice(range(first + 2 - first % 2, 7, 2))  # a state is written at every even iteration
    second = rng.randint(pause_at + 1, 8)
    events = [("kill", first), ("pause", pause_at), ("kill", second), ("term", rng.randint(second + 1, 10))]
    root, flags = tmp_path / "runs", []
    for number, (kind, iteration) in enumerate(events):
        progress = tmp_path / f"progress{number}.txt"
        run = driver(progress, opt_file, root, *flags, pause=iteration if kind == "pause" else None,
                     hold=iteration if kind == "kill" else None)  # a kill lands at its iteration, not later
        wait_for(progress, f"pause {iteration}" if kind == "pause" else f"iter {iteration}", run)
        run.send_signal(signal.SIGTERM if kind == "term" else signal.SIGKILL)
        _, err = run.communicate(timeout=300)
        if kind == "term":
            assert run.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM at iteration" in err, err[-2000:]
            assert "saved" in err.splitlines()[-1]
        else:
            assert run.returncode == -signal.SIGKILL
        flags = ["--auto_resume"]
    run = driver(tmp_path / "final.txt", opt_file, root, *flags)
    assert run.wait(timeout=600) == 0, run.communicate()[1][-2000:]
    assert same_weights(latest(reference, "interrupted"), latest(root, "interrupted"))
    assert not list((root / "experiments" / "interrupted").rglob("*.tmp"))  # the kill in a write left nothing behind


@pytest.mark.slow
def test_a_second_signal_exits_at_once(data_root, tmp_path):
    opt_file = write(options(data_root, "twice", total_iter=400), tmp_path)
    progress = tmp_path / "progress.txt"
    run = driver(progress, opt_file, tmp_path / "runs")
    wait_for(progress, "iter 2", run)
    run.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=120)
    iterations = len(progress.read_text().splitlines())
    assert run.returncode == -signal.SIGTERM and iterations < 400  # killed by the signal's default action


# ---- 8. a finished run: its last step leaves a state, so a rerun never trains again -------------------------------------
def no_training(monkeypatch) -> None:
    """Any training step from now on fails the test."""
    from ldt.models.ldt_model import LDTModel

    def step(self, current_iter: int) -> None:
        raise AssertionError(f"trained again (iteration {current_iter})")

    monkeypatch.setattr(LDTModel, "optimize_parameters", step)


def test_auto_resume_of_a_finished_run_off_the_save_frequency_trains_nothing_and_says_so(data_root, tmp_path, capsys,
                                                                                      monkeypatch):
    opt = options(data_root, "finished", total_iter=5)  # save_checkpoint_freq 3: the last step is off the frequency
    assert cli(opt, tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "finished"
    assert (exp / "training_states" / "5.state").is_file()
    weights = latest(tmp_path, "finished")
    no_training(monkeypatch)
    capsys.readouterr()
    from ldt.sr.train import main

    assert main(["-opt", str(tmp_path / "finished.yml"), "--root", str(tmp_path), "--auto_resume"]) == 0
    told = [line for line in capsys.readouterr().out.splitlines() if "nothing to train" in line]
    assert told == [f"resume: {exp / 'training_states' / '5.state'} is the last iteration (5) of this run: "
                    "nothing to train; its final weights and results are written again"]
    assert same_weights(weights, latest(tmp_path, "finished"))


def test_auto_resume_of_a_finished_run_writes_its_results_from_the_stored_validation(data_root, tmp_path, capsys,
                                                                                     monkeypatch):
    """A run resumed at its last iteration validated again for its results (the whole validation time, for the
    numbers its state's history already held); it writes them from that history now, the same as the run's own."""
    import ldt.sr.train as sr_train

    opt = options(data_root, "validated", total_iter=5)
    assert cli(opt, tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "validated"
    first = json.loads((exp / "results.json").read_text())
    assert first["history"][-1]["iter"] == 5 and first["metrics"]["rows"]
    (exp / "results.json").unlink()
    no_training(monkeypatch)

    def no_validation(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(sr_train, "validate", no_validation)
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0
    again = json.loads((exp / "results.json").read_text())
    assert again["metrics"] == first["metrics"] and again["history"] == first["history"]
    assert again["best"] == first["best"] and again["iterations"] == 5
    from ldt.sr.metrics import DEFAULT_METRICS

    assert sr_train.MetricTable.from_dict({"rows": {"a": {"psnr": 1.0}}, "counts": {"a": 2}}, DEFAULT_METRICS) is None


def run_log(exp: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(exp.glob("train_*.log")))


def test_layers_the_probe_finds_no_gradient_for_are_named_in_the_log_file_with_what_to_change(data_root, tmp_path,
                                                                                                capsys):
    """A network_g whose forward leaves a layer unused: the probe's warning went to the console only (not the run's
    log file) and told a Train_pip.py user to 'freeze them before prepare_method', which no option does. It names
    the layer and network_g now, once on the console and in the log file."""
    register_spare_net()
    opt = options(data_root, "spare", total_iter=2)
    opt["network_g"] = {"type": "SpareNet"}
    assert cli(opt, tmp_path, capsys)[0] == 0
    text = run_log(tmp_path / "experiments" / "spare")
    warned = [line for line in text.splitlines() if "got no gradient" in line]
    assert len(warned) == 1 and "WARNING: 2 parameter(s) got no gradient in any of the 3 probe batches" in warned[0]
    assert "(layer(s) spare)" in warned[0] and "network_g (SpareNet)" in warned[0]
    assert "prepare_method" not in warned[0]


def test_a_finished_run_resumed_with_other_validation_settings_validates_again_and_says_why(data_root, tmp_path,
                                                                                          capsys, monkeypatch):
    """A resume may change val:tile (or the sets' paths), which changes the numbers: the stored validation is reused
    only when made with these settings, and the log says which happened."""
    import ldt.sr.train as sr_train

    opt = options(data_root, "retiled", total_iter=5)
    assert cli(opt, tmp_path, capsys)[0] == 0
    exp = tmp_path / "experiments" / "retiled"
    no_training(monkeypatch)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[3])
        return validate(*args, **kwargs)

    validate = sr_train.validate
    monkeypatch.setattr(sr_train, "validate", counted)
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0
    assert calls == [] and "results: from the stored validation of iteration 5" in run_log(exp)
    opt["val"].update(tile=16, tile_overlap=4)
    assert cli(opt, tmp_path, capsys, "--auto_resume")[0] == 0
    assert calls == [5]
    said = [line for line in run_log(exp).splitlines() if "validating iteration 5 again" in line]
    assert len(said) == 1 and "val:tile: None -> 16" in said[0] and "val:tile_overlap: None -> 4" in said[0]


def test_validation_changes_are_those_that_change_the_numbers(data_root):
    import copy

    from ldt.sr.checkpoints import validation_changes
    from ldt.sr.options import prepare_options

    def prepared(**val) -> dict:
        opt = options(data_root, "v")
        opt["val"].update(val)
        return prepare_options(opt, is_train=True)

    base = prepared()
    assert validation_changes(base, prepared(val_freq=1, pbar=True, tile_overlap=8)) == []  # no tile: no overlap
    assert validation_changes(prepared(tile=48), prepared(tile=48, tile_overlap=8)) == ["val:tile_overlap: 32 -> 8"]
    cropped = prepared(metrics={"psnr": {"type": "calculate_psnr", "crop_border": 0, "test_y_channel": False}})
    changes = validation_changes(base, cropped)
    assert any(line.startswith("val:metrics:psnr:crop_border:") for line in changes)
    assert any(line.startswith("val:metrics:psnr:test_y_channel:") for line in changes)
    moved = copy.deepcopy(base)
    moved["datasets"]["val_2"]["dataroot"] = str(data_root / "elsewhere")
    assert [line.split(":")[:3] for line in validation_changes(base, moved)] == [["datasets", "val_2", "dataroot"]]
    assert validation_changes({}, base) == ["the training state records no options"]


def test_a_finished_run_whose_results_cannot_be_written_keeps_its_final_state_and_a_rerun_writes_them(
        data_root, disk, tmp_path, capsys, monkeypatch):
    import ldt.sr.train as sr_train

    write_results = sr_train.write_results

    def full_disk_at_the_record(*args):
        fill(disk)
        return write_results(*args)

    monkeypatch.setattr(sr_train, "write_results", full_disk_at_the_record)
    opt = options(data_root, "record", total_iter=5)
    code, lines = cli(opt, disk, capsys)
    exp = disk / "experiments" / "record"
    assert code == 2 and len(lines) == 1
    assert f"cannot write {exp / 'results.json'}: no space left on device" in lines[0], lines
    assert (exp / "training_states" / "5.state").is_file() and not (exp / "results.json").exists()
    (disk / "filler").unlink()
    monkeypatch.undo()
    no_training(monkeypatch)
    assert cli(opt, disk, capsys, "--auto_resume")[0] == 0
    assert json.loads((exp / "results.json").read_text())["iterations"] == 5


def test_a_truncated_state_is_skipped_in_a_warning_that_reads_as_a_sentence(tmp_path):
    """'skipping training state …/40.state is truncated or not a PyTorch checkpoint ([Errno 22] Invalid argument)':
    the errno text said nothing more, and 'skipping X is Y' read badly; now 'skipping training state X: truncated
    or not a PyTorch checkpoint'."""
    from ldt.sr.checkpoints import STATE_FORMAT, newest_intact_state

    torch.save({"format": STATE_FORMAT, "iter": 20}, tmp_path / "20.state")
    newest = tmp_path / "40.state"
    torch.save({"format": STATE_FORMAT, "iter": 40, "weights": torch.zeros(10000)}, newest)
    newest.write_bytes(newest.read_bytes()[:30000])  # cut inside its tensor: mmap's EINVAL
    warned = []
    path, state = newest_intact_state(tmp_path, warned.append, mmap=True)
    assert path == tmp_path / "20.state" and state["iter"] == 20
    assert warned == [f"skipping training state {newest}: truncated or not a PyTorch checkpoint"]
    (tmp_path / "40.state").write_bytes(b"")
    warned.clear()
    newest_intact_state(tmp_path, warned.append)
    assert warned == [f"skipping training state {newest}: empty (0 bytes): an interrupted write or download?"]
