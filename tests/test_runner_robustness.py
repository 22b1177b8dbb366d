"""The shared sweep (ldt.runner.main / sweep, ldt.sweep.Records) against hostile input: an unwritable or full
--out, data errors found only inside a run (in-process and in a data-loader worker), weights changed in place,
foreign records, repeated flag values and two sweeps on one folder. Fake runs: no training, seconds in all."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import warnings
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ldt import runner
from ldt.atomic import DiskError
from ldt.cli import STOP_SIGNALS
from ldt.sweep import LOCK_FILE, RESULTS_FILE, TABLES_LOCK_FILE, Records, run_hash, sweep_lock
from tests.conftest import lock_held_elsewhere

ARGS = Namespace(collect=None, device="cpu", workers=None, progress=False)


@dataclass(frozen=True)
class FakeConfig:
    """A run configuration as the runners' (the fields the sweep reads)."""

    seed: int = 0
    weights: str | None = None
    method: str = "ft"
    backbone: str = "tiny"
    ema_decay: float | None = None

    def hparams(self) -> dict:
        return {"seed": self.seed, "weights": self.weights}

    def describe(self) -> str:
        return f"fake seed={self.seed}"


def fake_run(config: FakeConfig, **_) -> dict:
    return {"seed": config.seed, "score": 1.0}


def no_run(*args, **kwargs):
    raise AssertionError("no run may start")


def sweep_main(out: Path, configs, run=fake_run, args: Namespace = ARGS) -> int:
    return runner.main(args, lambda: (out, configs), run, lambda folder: "table")


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# ---- 1. unwritable or full --out -----------------------------------------------------------------------------------
def test_an_unwritable_out_is_one_line_before_any_run(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert sweep_main(tmp_path / "file" / "out", [FakeConfig()], no_run) == 2
    assert f"cannot create {tmp_path / 'file' / 'out'}" in error_line(capsys)


def test_an_unwritable_out_flag_is_one_line_before_the_data_is_built_or_pretrained(tmp_path, capsys):
    """The runners' ``prepare`` builds the demo data and pre-trains its backbone (minutes on a fresh checkout):
    an ``--out`` that is a file, or below one, was found only after that."""
    (tmp_path / "file").write_text("not a folder")

    def prepare():
        raise AssertionError("the data was built before --out was checked")

    for out, problem in ((tmp_path / "file", f"{tmp_path / 'file'} exists and is not a folder"),
                         (tmp_path / "file" / "out", f"{tmp_path / 'file'} is a file, not a folder")):
        args = Namespace(**vars(ARGS), out=out)
        assert runner.main(args, prepare, no_run, lambda folder: "table") == 2
        assert error_line(capsys) == f"error: --out: {problem}\n"


def test_a_states_folder_that_is_a_file_is_one_line_before_any_run(tmp_path, capsys):
    """OUT/states in the way: one line naming it, before any run (the first state save came only after the warm-up,
    the probe and --state-minutes of training), and in a sweep whose runs are all recorded (a bare errno before)."""
    states = tmp_path / runner.STATES_FOLDER
    states.write_text("in the way")
    message = f"error: {states} is a file, not a folder: move it away (OUT/states/ holds the training states of " \
              "the runs in progress)\n"
    assert sweep_main(tmp_path, [FakeConfig()], no_run) == 2
    assert error_line(capsys) == message
    states.unlink()
    assert sweep_main(tmp_path, [FakeConfig()]) == 0
    capsys.readouterr()
    if states.exists():
        states.rmdir()
    states.write_text("in the way")
    assert sweep_main(tmp_path, [FakeConfig()], no_run) == 2
    assert error_line(capsys) == message and states.read_text() == "in the way"


def test_a_folder_in_place_of_a_run_state_is_one_line_before_any_run(tmp_path, capsys):
    """A folder at OUT/states/<hash>.pt was read as a broken state (a warning, 'the run starts afresh'), then the
    run's first save failed in a second, error line: one line now, before any run, and the folder is left alone."""
    state = tmp_path / runner.STATES_FOLDER / f"{run_hash(FakeConfig(1).hparams())}.pt"
    state.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning line before the error
        assert sweep_main(tmp_path, [FakeConfig(0), FakeConfig(1)]) == 2
    assert error_line(capsys) == f"error: {state} is a folder, not a file: move it away (a run saves its training " \
                                 "state there)\n"
    assert state.is_dir() and not (tmp_path / RESULTS_FILE).exists()
    with pytest.raises(DiskError, match=rf"^{re.escape(str(state))} is a folder, not a file: move it away"):
        runner.RunState(state, state.stem)


def test_a_full_out_is_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    import ldt.atomic

    monkeypatch.setattr(ldt.atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    assert sweep_main(tmp_path, [FakeConfig()], no_run) == 2
    assert f"cannot write in {tmp_path}: no space left" in error_line(capsys)


def test_a_failed_append_leaves_no_partial_line_and_names_the_file(tmp_path, monkeypatch):
    records = Records(tmp_path / RESULTS_FILE)
    records.append({"options_hash": "a", "value": 1})
    before = records.path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskError, match=rf"{records.path}: no space left on device"):
        records.append({"options_hash": "b", "value": 2})
    assert records.path.read_bytes() == before


def test_a_record_that_cannot_be_written_names_the_run_and_the_file(tmp_path, monkeypatch, capsys):
    def run(config, **_):
        if config.seed == 1:
            monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        return fake_run(config)

    assert sweep_main(tmp_path, [FakeConfig(0), FakeConfig(1)], run) == 2
    line = error_line(capsys)
    assert line.startswith("error: run fake seed=1 finished but its record was not written: ") and \
        f"{tmp_path / RESULTS_FILE}: no space left on device" in line
    monkeypatch.undo()
    assert [r["seed"] for r in Records(tmp_path / RESULTS_FILE).all()] == [0]


def test_a_state_save_on_a_full_disk_is_one_warning_and_the_sweep_goes_on(disk, capsys):
    """The disk fills during a run (another job's files) and is freed before the run ends: the periodic state save
    that found no room costs one warning, not the run and the rest of the sweep."""
    from tests.conftest import fill
    from tests.test_runner import train_mlp

    out = disk / "out"

    def run(config, state, **_):
        if config.seed == 0:  # the saves at steps 6 and 9 find no room
            train_mlp(state, stop=lambda where, count: (where, count) == ("validate", 2) and not fill(disk))
            assert runner.RunState(state.path, state.digest).saved["step"] == 3  # the previous state, intact
            (disk / "filler").unlink()
        return fake_run(config)

    args = Namespace(**{**vars(ARGS), "state_minutes": 0.0})
    with pytest.warns(UserWarning) as warned:
        assert sweep_main(out, [FakeConfig(0), FakeConfig(1)], run, args) == 0
    assert len(warned) == 1 and str(warned[0].message).startswith(
        f"cannot write {out / runner.STATES_FOLDER / run_hash(FakeConfig(0).hparams())}.pt: no space left on device")
    assert [r["seed"] for r in Records(out / RESULTS_FILE).all()] == [0, 1] and not capsys.readouterr().err


# ---- 2. data errors found inside a run -----------------------------------------------------------------------------
def test_a_data_error_inside_a_run_is_one_line_and_keeps_earlier_records(tmp_path, capsys):
    def run(config, **_):
        if config.seed == 1:
            raise ValueError("cannot decode image /data/broken.png: image file is truncated")
        return fake_run(config)

    assert sweep_main(tmp_path, [FakeConfig(0), FakeConfig(1)], run) == 2
    assert "run fake seed=1: cannot decode image /data/broken.png" in error_line(capsys)
    assert [r["seed"] for r in Records(tmp_path / RESULTS_FILE).all()] == [0]


def test_ldt_traceback_shows_where_an_error_inside_a_run_happened(tmp_path, capsys, monkeypatch):
    """A bug raising ValueError inside a run reads like bad input; LDT_TRACEBACK=1 prints the whole chain first."""
    def run(config, **_):
        return {"score": int("not a number")}

    monkeypatch.setenv("LDT_TRACEBACK", "1")
    assert sweep_main(tmp_path, [FakeConfig()], run) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'int("not a number")' in err
    assert "RunFailed: run fake seed=0" in err
    assert err.splitlines()[-1] == "error: run fake seed=0: invalid literal for int() with base 10: 'not a number'"
    monkeypatch.setenv("LDT_TRACEBACK", "0")
    assert sweep_main(tmp_path / "again", [FakeConfig()], run) == 2
    assert "Traceback" not in error_line(capsys)


class Broken(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise ValueError("label /data/bad_labelTrainIds.png: label values [250] are not valid")


def test_a_data_loader_workers_error_stays_one_line(tmp_path, capsys):
    def run(config, workers, **_):
        next(iter(DataLoader(Broken(), num_workers=workers)))

    assert sweep_main(tmp_path, [FakeConfig()], run, Namespace(**{**vars(ARGS), "workers": 1})) == 2
    err = error_line(capsys)
    assert err == "error: run fake seed=0: label /data/bad_labelTrainIds.png: label values [250] are not valid\n"


# ---- 3. weights changed in place -----------------------------------------------------------------------------------
def test_records_of_weights_changed_in_place_are_refused(tmp_path, capsys):
    weights, out = tmp_path / "w.pth", tmp_path / "out"
    torch.save({"w": torch.zeros(2)}, weights)
    configs = [FakeConfig(weights=str(weights))]
    assert sweep_main(out, configs) == 0
    (record,) = Records(out / RESULTS_FILE).all()
    assert record["options_hash"] == run_hash(configs[0].hparams())  # the identity still names the path only
    torch.save({"w": torch.zeros(2)}, weights)  # saved again, same tensors: the same weights
    assert sweep_main(out, configs, no_run) == 0
    torch.save({"w": torch.ones(2)}, weights)
    capsys.readouterr()
    assert sweep_main(out, configs, no_run) == 2
    err = error_line(capsys)
    assert f"weights {weights} changed" in err and str(out / RESULTS_FILE) in err


def test_records_without_a_fingerprint_are_not_checked(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, weights)
    config = FakeConfig(weights=str(weights))
    Records(tmp_path / RESULTS_FILE).append({"options_hash": run_hash(config.hparams()), "seed": 0})
    assert sweep_main(tmp_path, [config], no_run) == 0


# ---- 6. foreign records --------------------------------------------------------------------------------------------
def test_records_without_a_tables_fields_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"options_hash": "a", "score": 1}) + "\n" + json.dumps({"options_hash": "zzz"}) + "\n")
    with pytest.warns(UserWarning, match=rf"{path}:2: a record without 'score'"):
        assert Records(path).having(["score"]) == [{"options_hash": "a", "score": 1}]



def test_a_record_edited_to_a_value_the_table_cannot_read_is_skipped_with_a_warning(tmp_path):
    """A hand-edited field (a number turned into null) once ended ``--collect`` and every sweep in a traceback."""
    from ldt.sweep import write_record_tables

    path = tmp_path / RESULTS_FILE
    path.write_text("".join(json.dumps({"options_hash": h, "score": score}) + "\n"
                            for h, score in (("a", {"x": 1.0}), ("b", None), ("c", {"x": 2.0}))))
    with pytest.warns(UserWarning, match=rf"{path}:2: a record the table cannot read \(TypeError: .*\); ignored"):
        files = write_record_tables(tmp_path, lambda records: {"t.md": str(sum(r["score"]["x"] for r in records))},
                                    ["score"])
    assert files == {"t.md": "3.0"} and (tmp_path / "t.md").read_text() == "3.0"


# The tables of a folder, written by a process of its own (a sweep finishing while a --collect runs).
TABULATE = """
import sys
from ldt.sweep import write_record_tables
write_record_tables(sys.argv[1], lambda records: {"t.md": " ".join(str(r["score"]) for r in records)}, ["score"])
"""


def test_a_collect_that_read_the_records_before_a_sweeps_last_one_cannot_write_over_its_tables(tmp_path, monkeypatch):
    """A ``--collect`` reading the records while a sweep appended its last one wrote its older tables over the
    sweep's (neither took a lock). Now reading the records and writing the tables is one step under OUT's tables
    lock: the sweep waits for the collect and writes last, from every record."""
    import subprocess
    import sys
    import threading

    import ldt.atomic
    from ldt.sweep import write_record_tables

    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"options_hash": "a", "score": 1}) + "\n")
    read, go, real_write = threading.Event(), threading.Event(), ldt.atomic.atomic_write_text

    def write_after_the_sweep(target, text):  # the collect, between reading the records and writing the table
        read.set()
        go.wait(60)
        real_write(target, text)

    monkeypatch.setattr(ldt.atomic, "atomic_write_text", write_after_the_sweep)
    collect = threading.Thread(target=write_record_tables, daemon=True, args=(
        tmp_path, lambda records: {"t.md": " ".join(str(r["score"]) for r in records)}, ["score"]))
    collect.start()
    assert read.wait(60)
    with path.open("a") as records:  # the sweep's last record, then its tables
        records.write(json.dumps({"options_hash": "b", "score": 2}) + "\n")
    sweep = subprocess.Popen([sys.executable, "-c", TABULATE, str(tmp_path)], stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        said = sweep.stderr.readline()  # '' once it has ended: it wrote without waiting for the collect
        assert said.startswith("waiting for pid ") and f"(lock {tmp_path / TABLES_LOCK_FILE})" in said, said
    finally:
        go.set()
        collect.join(60)
        sweep.wait(60)
    assert (tmp_path / "t.md").read_text() == "1 2"


def test_two_records_of_one_run_are_one_warning_naming_their_lines_and_the_last_is_used(tmp_path):
    """A results file appended to another (two machines' sweeps merged), or a line copied by hand, held two records
    of one run: the tables used the last without a word. Now one warning names the lines; the last is used."""
    from ldt.sweep import write_record_tables

    path = tmp_path / RESULTS_FILE
    scores = [("a", 1.0), ("b", 2.0), ("a", 5.0), ("c", 3.0), ("b", 7.0), ("a", 9.0)]
    path.write_text("".join(json.dumps({"options_hash": h, "score": score}) + "\n" for h, score in scores))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = write_record_tables(tmp_path, lambda records: {"t.md": " ".join(str(r["score"]) for r in records)},
                                    {"score": float})
    assert files == {"t.md": "3.0 7.0 9.0"}  # the last record of each run, in file order
    assert [str(w.message) for w in caught] == [
        f"{path}: 2 runs have more than one record (lines 1, 3 and 6 of run a; lines 2 and 5 of run b): the tables "
        "use the last of each (a results file appended to another, or edited by hand?)"]
    path.write_text("".join(json.dumps({"options_hash": h, "score": score}) + "\n" for h, score in scores[:3]))
    with pytest.warns(UserWarning, match=re.escape(f"{path}: lines 1 and 3 are records of one run (a): the tables use "
                                                   "the last, line 3")):
        assert [r["score"] for r in Records(path).having(["score"])] == [2.0, 5.0]


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_where_a_record_needs_an_integer_is_skipped_with_a_warning(tmp_path, value):
    """JSON true for a seed (an int field) passed the type check, a bool being an int in Python: seed 1 in a table."""
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"options_hash": "a", "seed": value}) + "\n" + json.dumps({"options_hash": "b", "seed": 0})
                    + "\n")
    with pytest.warns(UserWarning, match=rf"{path}:1: a record whose 'seed' is of type bool, not int"):
        assert Records(path).having({"seed": int}) == [{"options_hash": "b", "seed": 0}]
    assert len(Records(path).having({"seed": (int, bool)})) == 2  # a bool where a bool is allowed


@pytest.mark.parametrize("digest", [["a"], {"a": 1}, 5, None])
def test_a_record_whose_options_hash_is_not_a_string_is_skipped_with_a_warning(tmp_path, digest):
    """A hand-edited options_hash (a list is unhashable) ended every sweep on the folder in a traceback, before any
    run; the sweep now warns, and trains the run that record claimed to be."""
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"options_hash": digest, "seed": 0}) + "\n")
    with pytest.warns(UserWarning, match=rf"{path}:1: not a complete record"):
        assert sweep_main(tmp_path, [FakeConfig()]) == 0
        assert [record["options_hash"] for record in Records(path).all()] == [run_hash(FakeConfig().hparams())]

def test_a_foreign_records_file_is_one_warning_not_one_per_line(tmp_path):
    """A binary or foreign file given as the records (``--collect`` of the wrong folder) warned once per line: a
    terminal flooded with thousands of two-line warnings before the one-line error. Now one warning counts them."""
    path = tmp_path / RESULTS_FILE
    path.write_bytes(b"\n".join(bytes([n % 256]) * 7 + b"garbage" for n in range(1, 500)) + b"\n"
                     + json.dumps({"options_hash": "a"}).encode() + b"\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Records(path).all() == [{"options_hash": "a"}]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"{path}: " in message and "lines are not complete records" in message and "(lines 1, 2, 3" in message


@pytest.mark.parametrize("entries, message", [
    (["tiny=a.pth", "resnet18=r.pth", "tiny=b.pth"], "--weights: tiny=a.pth and tiny=b.pth: one file per backbone"),
    (["tiny="], "--weights tiny=: no file after '='"), ([""], "--weights '': no file")])
def test_weights_named_twice_or_empty_are_one_line(entries, message):
    """``--weights tiny=a.pth tiny=b.pth`` silently trained from b.pth (the last one won), and an empty path was
    read as the current folder ('weights file . is a folder')."""
    from ldt.sweep import SweepError, parse_weights

    with pytest.raises(SweepError, match=re.escape(message)):
        parse_weights(entries, ["tiny", "resnet18"] if len(entries) > 1 else ["tiny"], ["tiny", "resnet18"],
                      noun="BACKBONE")
    assert parse_weights(["tiny=a.pth", "tiny=a.pth"], ["tiny"], ["tiny"]) == {"tiny": "a.pth"}  # a repeat is one


# ---- 5. and 8. flags both runners share ----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, flag", [("device", "foo", "--device foo"), ("workers", -1, "--workers"),
                                                ("state_minutes", -1.0, "--state-minutes"),
                                                ("state_minutes", float("nan"), "--state-minutes"),
                                                ("state_minutes", -float("inf"), "--state-minutes")])
def test_device_and_workers_are_checked_before_planning(tmp_path, capsys, field, value, flag):
    args = Namespace(**{**vars(ARGS), field: value})
    assert runner.main(args, no_run, no_run, lambda folder: "") == 2
    assert flag in error_line(capsys)


def test_workers_far_beyond_the_cpus_are_refused(monkeypatch):
    """``--workers 100000`` was accepted and forked loader processes until the machine ran out of them."""
    monkeypatch.setattr(runner, "usable_cpus", lambda: 2)
    assert runner.check_workers(8) == 8
    with pytest.raises(ValueError, match=re.escape("--workers must be at most 8 (4 per CPU this process may use, "
                                                   "2 here), got 100000")):
        runner.check_workers(100000)


def test_negative_seeds_name_the_flag():
    with pytest.raises(ValueError, match="--seeds must be non-negative"):
        runner.check_seeds([0, -1])


@pytest.mark.parametrize("change, message", [
    ({"lr": -1.0}, "--lr must be positive"), ({"lr": float("nan")}, "--lr must"),
    ({"weight_decay": -1.0}, "--weight-decay must be non-negative"),
    ({"ema_decay": 2.0}, "--ema-decay must be in [0, 1)"),
    ({"steps": 0}, "--steps must be positive"), ({"eval_every": 0}, "--eval-every must be positive"),
    ({"holdout_fraction": 1.0}, "--holdout-fraction must be in (0, 1)"),
])
def test_shared_training_options_are_checked(change, message):
    """Each is one line naming the flag the user typed, not the run field behind it."""
    options = {"steps": 1, "eval_every": 1, "holdout_fraction": 0.2, "lr": 1e-3, "weight_decay": 0.0,
               "ema_decay": None, **change}
    with pytest.raises(ValueError) as caught:
        runner.check_training(Namespace(**options))
    assert str(caught.value).startswith(message), caught.value


def test_repeated_values_are_dropped_in_one_line(capsys):
    assert runner.unique("--seeds", [0, 0, 1]) == [0, 1]
    assert capsys.readouterr().out == "--seeds: repeated 0 dropped (each run is trained once)\n"
    assert runner.unique("--methods", ["ft"]) == ["ft"] and capsys.readouterr().out == ""


def test_a_run_planned_twice_is_counted_once(tmp_path, capsys):
    assert sweep_main(tmp_path, [FakeConfig(), FakeConfig()]) == 0
    assert capsys.readouterr().out.startswith("1 runs, 0 already recorded")


# ---- 10. two sweeps on one folder ----------------------------------------------------------------------------------
def test_a_second_sweep_on_the_same_out_is_refused(tmp_path, capsys):
    with lock_held_elsewhere(tmp_path / LOCK_FILE, 60) as holder:  # a sweep in another process
        assert sweep_main(tmp_path, [FakeConfig()], no_run) == 2
        assert f"another sweep is running on {tmp_path} (pid {holder.pid}, since " in error_line(capsys)
    assert sweep_main(tmp_path, [FakeConfig()]) == 0  # released with the first
    with sweep_lock(tmp_path):  # this process's own lock: the sweep inside re-enters it
        assert sweep_main(tmp_path / ".", [FakeConfig(1)]) == 0


def test_a_folder_where_the_sweep_lock_goes_is_one_line(tmp_path, capsys):
    """It could not be opened as a lock file, and the sweep ran unlocked: a second sweep on the --out went ahead."""
    (tmp_path / LOCK_FILE).mkdir()
    assert sweep_main(tmp_path, [FakeConfig()], no_run) == 2
    assert error_line(capsys) == (f"error: cannot lock {tmp_path / LOCK_FILE}: it is a folder, not a file (made by "
                                  "hand or by another tool?); move it away\n")


def test_a_folder_where_the_tables_lock_goes_is_one_line_for_collect(tmp_path, capsys):
    """--collect takes OUT/.tables.lock to write the tables: a folder there is one line naming it, as for the sweep's."""
    from ldt.sweep import write_record_tables

    Records(tmp_path / RESULTS_FILE).append({"options_hash": "a", "value": 1})
    (tmp_path / TABLES_LOCK_FILE).mkdir()
    args = Namespace(**{**vars(ARGS), "collect": str(tmp_path)})
    assert runner.main(args, no_run, no_run, lambda folder: write_record_tables(
        folder, lambda records: {"table.md": "x"})["table.md"]) == 2
    assert error_line(capsys) == (f"error: --collect {tmp_path}: cannot lock {tmp_path / TABLES_LOCK_FILE}: it is a "
                                  "folder, not a file (made by hand or by another tool?); move it away\n")
    assert not (tmp_path / "table.md").exists()


# ---- 11. writing the tables ----------------------------------------------------------------------------------------
def test_a_table_write_that_fails_keeps_the_previous_table_and_is_one_line(tmp_path, capsys, monkeypatch):
    """A sweep killed or out of space while writing a table must not leave a cut-off table for the next reader, and
    ``--collect`` on a disk that refuses it is one line, not a traceback."""
    from ldt.sweep import write_record_tables

    Records(tmp_path / RESULTS_FILE).append({"options_hash": "a", "value": 1})
    (tmp_path / "table.md").write_text("the previous table\n")
    real_write_text = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(DiskError, match=rf"^cannot write {tmp_path / 'table.md'}: no space left on device"):
        write_record_tables(tmp_path, lambda records: {"table.md": "a new table, twice as long as needed\n"})
    assert (tmp_path / "table.md").read_text() == "the previous table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [TABLES_LOCK_FILE, RESULTS_FILE, "table.md"]  # no leftover
    args = Namespace(**{**vars(ARGS), "collect": str(tmp_path)})
    assert runner.main(args, no_run, no_run, lambda folder: write_record_tables(
        folder, lambda records: {"table.md": "x" * 10})["table.md"]) == 2
    assert "no space left on device" in error_line(capsys)


@pytest.mark.parametrize("collect", [False, True])
def test_an_output_whose_reader_has_gone_ends_in_the_work_done(tmp_path, capsys, monkeypatch, collect):
    """``python -m ldt.classification | head -1``: once head had read its line, the next print raised EPIPE, and the
    sweep ended in 'error: [Errno 32] Broken pipe', exit 2, also before training a run (a resumed run's first line),
    or after it, naming no file. What the reader left is not printed now; the work goes on to its end (both runners
    end through ldt.cli.exit_with, as every command does)."""
    from ldt.cli import exit_with

    configs = [FakeConfig(0), FakeConfig(1)]
    if collect:
        assert sweep_main(tmp_path, configs) == 0
        capsys.readouterr()
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    with open(write, "w") as gone:
        monkeypatch.setattr("sys.stdout", gone)
        args = Namespace(**{**vars(ARGS), "collect": str(tmp_path) if collect else None})
        with pytest.raises(SystemExit) as exited:
            exit_with(lambda: sweep_main(tmp_path, configs, args=args))
        assert exited.value.code == 0
    assert [r["seed"] for r in Records(tmp_path / RESULTS_FILE).all()] == [0, 1]
    assert capsys.readouterr().err == ""


# ---- signals: SIGTERM (preemption) and Ctrl-C end a sweep in one line ------------------------------------------------
@pytest.fixture(autouse=True)
def _sigint(default_sigint):
    yield


class Slow(Dataset):
    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int):
        import time

        time.sleep(0.05)
        return index


def test_a_signal_that_reaches_the_workers_too_is_still_one_line(tmp_path, capfd):
    """Ctrl-C reaches the whole process group, DataLoader workers included: forked with the runner's handler, they
    must end quietly, not each with a traceback of the runner's stop (and then the loader's 'worker exited')."""
    import time

    def run(config, workers, **_):
        batches = iter(DataLoader(Slow(), num_workers=workers))
        next(batches)
        for worker in batches._workers:
            os.kill(worker.pid, signal.SIGINT)
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the stop arrives here

    assert sweep_main(tmp_path, [FakeConfig()], run, Namespace(**{**vars(ARGS), "workers": 2})) == 128 + signal.SIGINT
    err = capfd.readouterr().err  # the workers' stderr too (they write to the inherited descriptor)
    assert "stopped by SIGINT: " in err and "Traceback" not in err, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_run_is_one_line_and_keeps_earlier_records(tmp_path, capsys, signum):
    def run(config, **_):
        if config.seed == 1:
            os.kill(os.getpid(), signum)
        return fake_run(config)

    before = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    assert sweep_main(tmp_path, [FakeConfig(0), FakeConfig(1)], run) == 128 + signum
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stopped by {signal.Signals(signum).name}: "), err
    assert [r["seed"] for r in Records(tmp_path / RESULTS_FILE).all()] == [0]
    assert {number: signal.getsignal(number) for number in STOP_SIGNALS} == before


def test_a_signal_during_a_record_append_leaves_no_partial_line(tmp_path, monkeypatch):
    records = Records(tmp_path / RESULTS_FILE)
    records.append({"options_hash": "a", "value": 1})
    before = records.path.read_bytes()
    monkeypatch.setattr(os, "fsync", lambda fd: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(runner.Stopped), runner.stop_on_signal():
        records.append({"options_hash": "b", "value": 2})
    assert records.path.read_bytes() == before


def test_the_state_of_a_run_already_recorded_and_cut_writes_are_deleted(tmp_path):
    """A sweep killed between a run's record and the removal of its state leaves the state behind; one killed in a
    state write leaves a temporary file (as large as a state)."""
    assert sweep_main(tmp_path, [FakeConfig(0)]) == 0
    left = tmp_path / runner.STATES_FOLDER / f"{run_hash(FakeConfig(0).hparams())}.pt"
    left.parent.mkdir()
    left.write_bytes(b"x")
    kept = left.with_name("another-sweeps-run.pt")
    kept.write_bytes(b"y")
    cut = left.with_name(".another-sweeps-run.pt.abc123.tmp")  # what kill -9 leaves of an atomic write
    cut.write_bytes(b"z")
    assert sweep_main(tmp_path, [FakeConfig(0)], no_run) == 0
    assert not left.exists() and not cut.exists() and kept.exists()


def test_records_that_cannot_be_appended_to_are_one_line_before_any_run(tmp_path, capsys):
    """An immutable results.jsonl (chattr +i) was found only when the first run had trained (hours, for a real run)
    and its record could not be appended."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr")
    assert sweep_main(tmp_path, [FakeConfig(0)]) == 0
    path = tmp_path / RESULTS_FILE
    before = path.read_bytes()
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        assert sweep_main(tmp_path, [FakeConfig(0), FakeConfig(1)], no_run) == 2
        assert error_line(capsys) == (f"error: cannot append a record to {path}: operation not permitted (an immutable "
                                      "file? see lsattr); no run started (the earlier records are intact)\n")
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_records_behind_a_broken_symlink_are_one_line_before_any_run(tmp_path, capsys, kind):
    """A results.jsonl that is a symlink loop, or a symlink into a folder that is gone, was found only when the first
    run had trained and its record could not be appended (the second in a bare '[Errno 2] No such file or
    directory'). A symlink to a file not made yet, in a folder that exists, is a results file kept elsewhere: used."""
    path = tmp_path / RESULTS_FILE
    path.symlink_to(RESULTS_FILE if kind == "loop" else tmp_path / "unmounted" / RESULTS_FILE)
    assert sweep_main(tmp_path, [FakeConfig(0)], no_run) == 2
    what = (f"{path} is a symlink loop" if kind == "loop"
            else f"{path} is a symlink to {tmp_path / 'unmounted' / RESULTS_FILE}, which does not exist")
    assert error_line(capsys) == (f"error: cannot append a record to {path}: {what}; no run started (the earlier "
                                  "records are intact)\n")
    (tmp_path / "elsewhere").mkdir()
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere" / RESULTS_FILE)
    assert sweep_main(tmp_path, [FakeConfig(0)]) == 0
    assert [record["seed"] for record in Records(path).all()] == [0]


def test_a_state_that_cannot_be_deleted_once_its_run_is_recorded_is_one_warning(tmp_path, monkeypatch, capsys):
    """An immutable state file (chattr +i) of a run that finished: its record was written, then the sweep ended in
    'error: [Errno 1] Operation not permitted: ...' with the runs after it not trained, and every rerun ended so at
    its start, where it deletes the states of recorded runs. The state is garbage once the record is written: one
    warning naming it, and the sweep goes on."""
    states = tmp_path / runner.STATES_FOLDER
    locked = states / f"{run_hash(FakeConfig(0).hparams())}.pt"
    real_unlink = Path.unlink

    def immutable(path: Path, missing_ok: bool = False) -> None:
        if path == locked:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(path))
        real_unlink(path, missing_ok=missing_ok)

    def saving_run(config: FakeConfig, state, **_) -> dict:
        states.mkdir(exist_ok=True)
        state.path.write_bytes(b"a state")
        return fake_run(config)

    monkeypatch.setattr(Path, "unlink", immutable)
    message = re.escape(f"cannot delete {locked}, the saved state of run fake seed=0, which is recorded: operation "
                        "not permitted")
    for run in (saving_run, no_run):  # the sweep, then its rerun
        with pytest.warns(UserWarning, match=message):
            assert sweep_main(tmp_path, [FakeConfig(0), FakeConfig(1)], run) == 0, capsys.readouterr().err
        assert [r["seed"] for r in Records(tmp_path / RESULTS_FILE).all()] == [0, 1] and locked.exists()
    assert sorted(states.iterdir()) == [locked]  # the other run's state was deleted


def test_states_of_runs_recorded_by_another_sweep_are_deleted_and_unplanned_ones_are_named(tmp_path, capsys):
    """A state whose run has a record is garbage whichever sweep planned it (a sweep killed between the record and the
    state's removal, then rerun with other options); one of a run not recorded and not planned (another command's, or
    a run whose flags changed since its stop: a new run hash) is kept and named in one line."""
    assert sweep_main(tmp_path, [FakeConfig(0)]) == 0
    states = tmp_path / runner.STATES_FOLDER
    states.mkdir(exist_ok=True)
    recorded = states / f"{run_hash(FakeConfig(0).hparams())}.pt"
    unplanned = states / f"{run_hash(FakeConfig(1).hparams())}.pt"
    recorded.write_bytes(b"x")
    unplanned.write_bytes(b"y")
    capsys.readouterr()
    assert sweep_main(tmp_path, [FakeConfig(2)]) == 0
    assert not recorded.exists() and unplanned.exists()
    out = capsys.readouterr().out
    assert f"{states}: 1 saved state(s) of runs this sweep does not plan (0 MiB): the command that started them " \
           "continues them; delete them if they will not be rerun\n" in out


@pytest.mark.parametrize("together", [False, True])
def test_a_sigterm_that_reaches_the_workers_too_is_still_a_stop(tmp_path, capfd, together):
    """``timeout -s TERM`` and batch schedulers signal the whole process group: a DataLoader worker that SIGTERM
    reaches from outside dies of it (torch's worker handler), and torch's SIGCHLD handler then raised 'DataLoader
    worker ... is killed by signal' in the runner, inside the state save of the stop (reported as a disk error)."""
    import subprocess
    import time

    def run(config, workers, state, **_):
        batches = iter(DataLoader(Slow(), num_workers=workers, persistent_workers=True))
        next(batches)
        pids = [str(worker.pid) for worker in batches._workers]
        try:
            if together:  # the workers' SIGCHLD already pending when the stop is handled
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGCHLD})
            subprocess.run(["kill", "-TERM", str(os.getpid()), *pids], check=True)  # main first, as timeout does
            if together:
                time.sleep(1)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGCHLD})
            time.sleep(5)  # the stop arrives here
        except runner.Stopped:
            time.sleep(1)  # the workers die meanwhile (SIGCHLD) while the stop saves the run's state
            raise
        finally:  # a loader thread can take the SIGTERM and the stop land before the unblock: never leave it blocked
            # (a later test's own SIGTERM then went to a leftover thread, and its stop came late or never)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGCHLD})

    assert sweep_main(tmp_path, [FakeConfig()], run, Namespace(**{**vars(ARGS), "workers": 2})) == \
        128 + signal.SIGTERM
    err = capfd.readouterr().err
    assert err.startswith("stopped by SIGTERM: ") and "Traceback" not in err and "error" not in err, err
