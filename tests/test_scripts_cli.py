"""Bad flags of the scripts in scripts/ end in one ``error: --flag: ...`` line and exit status 2 before any work:
no traceback, no silently replaced value. The scripts run in-process (``runpy``, their ``sys.argv`` patched)."""

from __future__ import annotations

import errno
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ldt.atomic
from tests.conftest import load_file_module

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(monkeypatch: pytest.MonkeyPatch, capsys, name: str, *args: str) -> tuple[int, str]:
    """Exit status and the last stderr line of ``scripts/<name> args``."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / name), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return exit_info.value.code, lines[-1] if lines else ""


def assert_flag_error(result: tuple[int, str], option: str, *words: str) -> None:
    code, line = result
    assert code == 2, line
    assert f"error: {option}: " in line, line
    for word in words:
        assert word in line, line


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """Folders look read-only to the writability check (tests cannot mount a read-only file system)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ldt.atomic.tempfile, "mkstemp", refuse)  # the write check ldt.cli calls


# ------------------------------------------------------------------------------------------ build_synthetic_cameras
BUILD = ("--no-progress", "--tiny")


@pytest.mark.parametrize("args, option, words", [
    (["--scale", "0"], "--scale", ["positive"]),
    (["--scale", "-1"], "--scale", ["positive"]),
    (["--seed", "-1"], "--seed", ["non-negative"]),
    (["--patch-size", "30"], "--patch-size", ["multiple"]),
    (["--patch-size", "10000"], "--patch-size", ["larger than"]),
    (["--patch-size", "0"], "--patch-size", ["positive"]),
    (["--patches-per-image", "-1"], "--patches-per-image", ["positive"]),
    (["--patches-per-image", "0"], "--patches-per-image", ["positive"]),
    (["--scale", "3"], "--patch-size", ["32 is not a multiple of scale 3"]),  # the tiny default patch
    (["--scale", "16"], "--patch-size", ["32 px at scale 16 is too small", "at least 48"]),
])
def test_build_synthetic_cameras_rejects_bad_options(tmp_path, monkeypatch, capsys, args, option, words) -> None:
    root = tmp_path / "c"
    assert_flag_error(run_script(monkeypatch, capsys, "build_synthetic_cameras.py", *BUILD, "--root", str(root),
                                 *args), option, *words)
    assert not root.exists()  # nothing built, nothing cached


def test_build_synthetic_cameras_rejects_unusable_roots(tmp_path, monkeypatch, capsys, read_only) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for root, words in ((a_file, ["not a folder"]), (a_file / "sub", ["is a file"]),
                        (tmp_path / "new", ["read-only file system"])):
        assert_flag_error(run_script(monkeypatch, capsys, "build_synthetic_cameras.py", *BUILD, "--root", str(root)),
                          "--root", *words)


@pytest.mark.parametrize("spelling", ["c", "c/", "./c", "link"])
def test_build_synthetic_cameras_refuses_one_folder_for_both_builds(spelling, tmp_path, monkeypatch, capsys) -> None:
    """--bicubic with --bicubic-root the folder of --root: the bicubic build took the camera benchmark's manifest for
    an old build of its own and replaced it, and both were said 'ready'; refused now, before any work."""
    root = tmp_path / "c"
    root.mkdir()  # an empty folder, linked to
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    assert_flag_error(run_script(monkeypatch, capsys, "build_synthetic_cameras.py", *BUILD, "--bicubic", "--root",
                                 str(root), "--bicubic-root", spelling),
                      "--bicubic-root", f"{Path(spelling)} is the folder of --root {root}")
    assert not any(root.iterdir())


def test_build_synthetic_cameras_reports_write_errors_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    import ldt.data.synthetic_cameras as synthetic

    def full_disk(path, rgb):
        raise OSError(f"cannot write {path}")

    monkeypatch.setattr(synthetic, "_write_png", full_disk)
    code, line = run_script(monkeypatch, capsys, "build_synthetic_cameras.py", *BUILD, "--root", str(tmp_path / "c"))
    assert code == 2 and line.startswith(f"error: --root {tmp_path / 'c'}: cannot write"), line


# -------------------------------------------------------------------------------------------------- benchmark_probe
PROBE = ("--arch", "convnet", "--arch-opt", '{"width": 8, "depth": 1}', "--batches", "2", "--batch", "1", "--size",
         "8", "--device", "cpu")


@pytest.mark.parametrize("args, option, words", [
    (["--batches", "0"], "--batches", ["positive"]),
    (["--batch", "0"], "--batch", ["positive"]),
    (["--size", "0"], "--size", ["positive"]),
    (["--scale", "0"], "--scale", ["positive"]),
    (["--arch", "Foo"], "--arch", ["unknown arch 'Foo'"]),
    (["--arch", "SAFNM"], "--arch", ["unknown arch 'SAFNM' (did you mean 'SAFMN'?)"]),
    (["--arch", "safmn"], "--arch", ["unknown arch 'safmn' (did you mean 'SAFMN'?)"]),  # benchmark.py's spelling
    (["--arch", "mambair"], "--arch", ["(did you mean 'MambaIR'?)"]),
    (["--arch-opt", "{bad"], "--arch-opt", ["not valid JSON"]),
    (["--arch-opt", "[1]"], "--arch-opt", ["JSON object"]),
    (["--arch-opt", '{"colour": 1}'], "--arch-opt", ["colour"]),
    (["--device", "foo"], "--device", ["not a torch device"]),
    pytest.param(["--device", "cuda"], "--device", ["CUDA is not available"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    (["--arch", "SAFMN", "--arch-opt", '{"dim": 8, "n_blocks": 1}', "--size", "4"], "--size", ["8x8"]),
    (["--arch", "SAFMN", "--arch-opt", '{"dim": 8, "n_blocks": 1, "upscaling_factor": 2}'], "--scale", ["x4"]),
])
def test_benchmark_probe_rejects_bad_options(monkeypatch, capsys, args, option, words) -> None:
    def no_children(*a, **k):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(subprocess, "run", no_children)
    assert_flag_error(run_script(monkeypatch, capsys, "benchmark_probe.py", *PROBE, *args), option, *words)


@pytest.mark.parametrize("args, option, shown", [
    (["--arch", "SAFMN", "--arch-opt", '{"dim": 8, "n_blocks": 0}'], "--arch-opt",
     '{"dim": 8, "n_blocks": 0}: SAFMN: n_blocks: must be >= 1, got 0'),
    (["--arch", "SAFMN", "--arch-opt", '{"dimm": 8}'], "--arch-opt",
     "{\"dimm\": 8}: SAFMN.__init__() got an unexpected keyword argument 'dimm'"),
    (["--arch-opt", '{"colour": 1}'], "--arch-opt", '{"colour": 1}: convnet takes only width, depth, not colour'),
    (["--arch", "SAFMN", "--arch-opt", '{"dim": 8, "n_blocks": 1}', "--size", "4"], "--size",
     "4x4 inputs: SAFMN needs inputs of at least 8x8 pixels"),
])
def test_benchmark_probe_names_the_arch_once(monkeypatch, capsys, args, option, shown) -> None:
    """The --arch-opt / --size lines put the arch's name before the constructor's message, which names it too since
    the archs check their arguments ('SAFMN does not accept ...: SAFMN: n_blocks: ...'): the name now comes once."""
    code, line = run_script(monkeypatch, capsys, "benchmark_probe.py", *PROBE, *args)
    arch = args[args.index("--arch") + 1] if "--arch" in args else "convnet"
    assert code == 2 and f"error: {option}: {shown}" in line, line
    assert line.count(arch) == 1, line


def test_benchmark_probe_names_the_arch_of_a_message_without_it() -> None:
    probe = load_file_module(SCRIPTS / "benchmark_probe.py", "ldt_benchmark_probe")
    assert probe.arch_problem("HAT", RuntimeError("shape  mismatch\n in attn")) == "HAT: shape mismatch in attn"
    assert probe.arch_problem("HAT", ValueError("HAT: depths[1]: must be >= 1")) == "HAT: depths[1]: must be >= 1"
    assert probe.arch_problem("HAT", ValueError("HATS are hats")) == "HAT: HATS are hats"


def test_benchmark_probe_convnet_follows_scale() -> None:
    probe = load_file_module(SCRIPTS / "benchmark_probe.py", "ldt_benchmark_probe")
    model = probe.build_model("convnet", {"width": 4, "depth": 1}, scale=2)
    assert model(torch.zeros(1, 3, 5, 5)).shape[-1] == 10


def test_benchmark_probe_child_failure_is_one_line(monkeypatch, capsys) -> None:
    def failing_child(cmd, **kwargs):
        stderr = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", failing_child)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "benchmark_probe.py"), *PROBE])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / "benchmark_probe.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip() == "error: the plain run failed: RuntimeError: boom"


def test_benchmark_probe_child_killed_by_a_signal_is_named(monkeypatch, capsys) -> None:
    """A mode's process killed by the kernel (the OOM killer's SIGKILL) says so, not 'exit status -9'."""
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: subprocess.CompletedProcess(cmd, -9, "", ""))
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "benchmark_probe.py"), *PROBE])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / "benchmark_probe.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: the plain run failed: killed by SIGKILL (out of memory? use "
                                               "a smaller --batch, --size or --batches)")


def test_benchmark_probe_out_of_memory_in_a_mode_is_one_line(monkeypatch, capsys) -> None:
    """What a mode's process prints when its batches do not fit: the line the parent shows (the test above)."""
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 19660800000 bytes.")

    monkeypatch.setattr(torch, "rand", out_of_memory)
    code, line = run_script(monkeypatch, capsys, "benchmark_probe.py", *PROBE, "--batch", "100000", "--mode", "plain")
    assert code == 2 and line.startswith("error: out of memory at --batches 2 --batch 100000 --size 8 (convnet on "
                                         "cpu): DefaultCPUAllocator: can't allocate memory"), line


# --------------------------------------------------------------------------------------------------- benchmark_scan
SCAN = ("--batch", "1", "--length", "16", "--channels", "8", "--groups", "2", "--state", "4", "--device", "cpu",
        "--repeat", "1", "--warmup", "0")


@pytest.mark.parametrize("args, option, words", [
    (["--batch", "0"], "--batch", ["positive"]),
    (["--state", "0"], "--state", ["positive"]),
    (["--repeat", "0"], "--repeat", ["positive"]),
    (["--length", "0"], "--length", ["positive"]),
    (["--channels", "7"], "--channels", ["divisible by --groups 2"]),
    (["--groups", "0"], "--groups", ["positive"]),
    (["--warmup", "-1"], "--warmup", ["non-negative"]),
    (["--chunk-sizes", "foo"], "--chunk-sizes", ["'foo'"]),
    (["--chunk-sizes", "auto", "0"], "--chunk-sizes", ["'0'"]),
    (["--device", "foo"], "--device", ["not a torch device"]),
    pytest.param(["--device", "cuda"], "--device", ["CUDA is not available"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_benchmark_scan_rejects_bad_options(monkeypatch, capsys, args, option, words) -> None:
    assert_flag_error(run_script(monkeypatch, capsys, "benchmark_scan.py", *SCAN, *args), option, *words)


@pytest.mark.parametrize("value, says", [
    (None, "LDT_SCAN_BACKEND unset, auto: cpu tensors"),
    ("torch", "LDT_SCAN_BACKEND=torch: requested"),
    ("trition", "LDT_SCAN_BACKEND=trition: unknown selective-scan backend 'trition' (did you mean 'triton'?)"),
])
def test_benchmark_scan_header_says_what_a_call_without_a_backend_runs(monkeypatch, capsys, value, says) -> None:
    """The rows name their backends; the header said 'auto picks ...' whatever LDT_SCAN_BACKEND said, so a user who
    set it read a backend a training run would not use. It now says what such a call runs here, and why."""
    if value is None:
        monkeypatch.delenv("LDT_SCAN_BACKEND", raising=False)
    else:
        monkeypatch.setenv("LDT_SCAN_BACKEND", value)
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "benchmark_scan.py"), *SCAN, "--skip-naive"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPTS / "benchmark_scan.py"), run_name="__main__")
    assert done.value.code is None  # the table still comes, exit 0
    header = capsys.readouterr().out.splitlines()[0]
    runs = "fails here" if value == "trition" else "runs 'torch' here"
    assert f"each row names its backend; a call that names none (a training run) {runs} ({says}" in header, header
    assert "auto picks" not in header, header


# -------------------------------------------------------------------------------------------------------- benchmark
BENCH = ("--device", "cpu", "--arch", "safmn_tiny", "--batch-size", "1", "--patch", "8", "--iters", "2",
         "--warmup-iters", "1", "--probe-batches", "1")


@pytest.mark.parametrize("args, option, words", [
    (["--unstable-ratio", "1.5"], "--unstable-ratio", ["between 0 and 1"]),
    (["--unstable-ratio", "0"], "--unstable-ratio", ["between 0 and 1"]),
    (["--unstable-ratio", "0.99"], "--unstable-ratio", ["stable group empty for the 40 layers", "use at most 0.975"]),
    (["--patch", "1"], "--patch", ["at least 8x8"]),
    (["--json", "{tmp}"], "--json", ["is a folder"]),
    (["--json", "{tmp}/afile/x.json"], "--json", ["is a file"]),
])
def test_benchmark_rejects_bad_options(tmp_path, monkeypatch, capsys, args, option, words) -> None:
    (tmp_path / "afile").write_text("x")
    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    monkeypatch.setattr(bench, "measure_training", lambda *a, **k: pytest.fail("measured despite a bad flag"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*BENCH, *(arg.format(tmp=tmp_path) for arg in args)])
    err = capsys.readouterr().err
    assert_flag_error((exit_info.value.code, err.strip().splitlines()[-1]), option, *words)


def test_benchmark_rejects_unwritable_json_before_measuring(tmp_path, capsys, read_only) -> None:
    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args([*BENCH, "--json", str(tmp_path / "out" / "x.json")])
    assert_flag_error((exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]), "--json",
                      "read-only file system")


def test_benchmark_json_that_cannot_be_written_keeps_the_previous_file(tmp_path, monkeypatch, capsys) -> None:
    """A disk that fills while the report is written leaves an earlier --json file whole (the write is atomic)."""
    import pathlib

    out = tmp_path / "bench.json"
    out.write_text('{"previous": true}\n')
    real_write_text = pathlib.Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*BENCH, "--iters", "1", "--warmup-iters", "0", "--json", str(out)])
    monkeypatch.undo()
    assert_flag_error((exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]), "--json",
                      "no space left on device", "is intact")
    assert out.read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no temporary file left behind


def test_benchmark_out_of_memory_is_one_line_naming_the_sizes(monkeypatch, capsys) -> None:
    """A batch too large for the device (torch's CUDA out-of-memory error, raised here on the CPU) ends in one line
    naming the sizes that asked for it, not a traceback from inside the step."""
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity\n"
                                     "of 139.81 GiB of which 1.2 GiB is free.")

    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    monkeypatch.setattr(bench, "measure_training", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(list(BENCH))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: out of memory at --batch-size 1 --patch 8 (safmn_tiny on cpu): "), lines
    assert "Tried to allocate 20.00 GiB" in lines[0] and lines[0].endswith("; use smaller sizes"), lines


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 44236800000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB."),
    MemoryError("Unable to allocate 20.0 GiB"),
])
def test_benchmark_out_of_memory_in_the_patch_check_is_one_line(monkeypatch, capsys, error) -> None:
    """The one-patch check said '--patch: ARCH cannot run on PxP inputs: ... can't allocate memory', as if the arch
    could not take that size (a MemoryError was a traceback); now the out-of-memory line of the measured steps."""
    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise error

    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    monkeypatch.setattr(bench, "build_network", lambda arch: (Hungry(), 4))
    monkeypatch.setattr(bench, "measure_training", lambda *a, **k: pytest.fail("measured despite the error"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(list(BENCH))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: out of memory at --patch 8 (safmn_tiny on cpu, one patch): "), lines
    assert lines[0].endswith("; use smaller sizes") and "cannot run on" not in lines[0], lines


def test_benchmark_scan_out_of_memory_is_one_line_naming_the_sizes(monkeypatch, capsys) -> None:
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1327104000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(torch, "randn", out_of_memory)
    code, line = run_script(monkeypatch, capsys, "benchmark_scan.py", "--device", "cpu", "--batch", "100000")
    assert code == 2 and line.startswith("error: out of memory at --batch 100000 --length 2304 --channels 1440 "
                                         "--groups 4 --state 16: "), line
    assert "can't allocate memory" in line, line


# ---------------------------------------------------------------------------------------------- benchmark_data_check
@pytest.mark.parametrize("args, option", [
    (["--pairs", "0"], "--pairs"),
    (["--hr", "0", "--pairs", "2"], "--hr"),
    (["--hr", "2", "--pairs", "2"], "--hr"),
    (["--repeat", "0", "--pairs", "2", "--hr", "32"], "--repeat"),
])
def test_benchmark_data_check_rejects_bad_options(monkeypatch, capsys, args, option) -> None:
    assert_flag_error(run_script(monkeypatch, capsys, "benchmark_data_check.py", *args), option)


@pytest.mark.parametrize("hr", ["4", "5", "31"])
def test_benchmark_data_check_names_the_smallest_hr_for_the_scale(monkeypatch, capsys, hr) -> None:
    """--hr 5 wrote 5 px HR / 1 px LR pairs and timed them: no x4 pair anything here trains on."""
    monkeypatch.setattr(Path, "mkdir", lambda *a, **k: pytest.fail("wrote a fixture despite the error"))
    assert_flag_error(run_script(monkeypatch, capsys, "benchmark_data_check.py", "--pairs", "2", "--hr", hr),
                      "--hr", f"an integer >= 32, got {hr}", "LR = HR // 4", "8 px")


def test_benchmark_data_check_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    """The fixture goes to a temporary folder (TMPDIR): a full disk there is named, not an OSError traceback."""
    import pathlib
    import tempfile

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what TMPDIR sets
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    code, line = run_script(monkeypatch, capsys, "benchmark_data_check.py", "--pairs", "2", "--hr", "32")
    assert code == 2 and line.startswith("error: cannot write the fixture in ") and str(tmp_path) in line, line
    assert "no space left on device" in line and "TMPDIR" in line, line
    assert list(tmp_path.iterdir()) == []  # the temporary folder is removed


def test_benchmark_data_check_names_an_hr_size_that_does_not_fit_in_memory(monkeypatch, capsys) -> None:
    import numpy as np

    class NoMemory:
        def integers(self, *args, **kwargs):
            raise MemoryError("Unable to allocate 27.9 GiB for an array with shape (100000, 100000, 3)")

    monkeypatch.setattr(np.random, "default_rng", lambda seed: NoMemory())
    assert_flag_error(run_script(monkeypatch, capsys, "benchmark_data_check.py", "--pairs", "2", "--hr", "100000"),
                      "--hr", "100000 px", "Unable to allocate 27.9 GiB")


# ---------------------------------------------------------------------------------------------------- index_drealsr
@pytest.mark.parametrize("args, option, words", [
    (["--cameras", "foo"], "--cameras", ["unknown camera 'foo'"]),
    (["--meta-info", "{tmp}/afile"], "--meta-info", ["not a folder"]),
    (["--lmdb", "{tmp}/afile/l"], "--lmdb", ["is a file"]),
    (["--check-sizes", "--size-tolerance", "-1"], "--size-tolerance", ["non-negative"]),
    (["--scale", "0"], "--scale", ["positive"]),
    (["--scale", "-4"], "--scale", ["positive"]),
])
def test_index_drealsr_rejects_bad_options(tmp_path, monkeypatch, capsys, args, option, words) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "root").mkdir()
    args = [arg.format(tmp=tmp_path) for arg in args]
    assert_flag_error(run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), *args),
                      option, *words)


def test_index_drealsr_a_split_named_twice_is_indexed_once_and_a_list_flag_given_twice_is_an_error(
        tmp_path, monkeypatch, capsys) -> None:
    """``--splits test test --lmdb OUT`` wrote the test LMDBs, then ended at its second 'test' in 'error: LMDB
    OUT/…/olympus_HR.lmdb already exists', naming what the run itself had just written; ``--cameras olympus --cameras
    pan`` indexed pan alone, silently (argparse keeps the last flag)."""
    write_one_pair(tmp_path / "root")
    out = tmp_path / "lmdb"
    assert run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--splits", "test", "test",
                      "--lmdb", str(out)) == (0, "")
    assert (out / "x4" / "test" / "olympus_LR.lmdb" / "meta_info.txt").is_file()
    for flag, values in (("--cameras", ["olympus", "pan"]), ("--splits", ["test", "train"])):
        code, line = run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), flag, values[0], flag,
                                values[1])
        assert code == 2 and line.endswith(f"error: argument {flag}: given twice; list all its values after one "
                                           f"{flag}"), line


def test_index_drealsr_names_a_missing_root_and_a_file_as_root(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    for root, problem in ((tmp_path / "missing", "does not exist"), (tmp_path / "afile", "is not a folder")):
        code, line = run_script(monkeypatch, capsys, "index_drealsr.py", str(root))
        assert code == 2 and line.endswith(f"error: {root} {problem}"), line


@pytest.mark.parametrize("option", ["--meta-info", "--lmdb"])
def test_index_drealsr_rejects_unwritable_outputs(tmp_path, monkeypatch, capsys, read_only, option) -> None:
    (tmp_path / "root").mkdir()
    assert_flag_error(run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), option,
                                 str(tmp_path / "out")), option, "read-only file system")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_benchmark_unusable_scan_backend_is_one_line(capsys) -> None:
    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*BENCH, "--scan-backend", "cuda"])
    assert_flag_error((exit_info.value.code, capsys.readouterr().err.strip()), "--scan-backend", "needs CUDA")


@pytest.mark.parametrize("value, option, words", [
    ("trition", "LDT_SCAN_BACKEND", ["unknown selective-scan backend 'trition'"]),
    pytest.param("cuda", "LDT_SCAN_BACKEND", ["needs CUDA"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_benchmark_names_the_environment_variable_of_an_unusable_scan_backend(monkeypatch, capsys, value, option,
                                                                             words) -> None:
    """Without --scan-backend the backend comes from LDT_SCAN_BACKEND: the error names the variable, not the flag."""
    bench = load_file_module(SCRIPTS / "benchmark.py", "ldt_benchmark_cli")
    monkeypatch.setenv("LDT_SCAN_BACKEND", value)
    monkeypatch.setattr(bench, "build_network", lambda *a, **k: pytest.fail("built a network despite the error"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(list(BENCH))
    assert_flag_error((exit_info.value.code, capsys.readouterr().err.strip()), option, *words)


def test_index_drealsr_write_failure_after_the_check_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    import ldt.data.indexing

    root = tmp_path / "root" / "x4" / "Test_x4"
    for folder in ("test_HR", "test_LR"):
        (root / folder).mkdir(parents=True)
    (root / "test_HR" / "P1000001_x4.png").write_bytes(b"")
    (root / "test_LR" / "P1000001_x1.png").write_bytes(b"")

    def full_disk(pairs, folder, split, scale, done):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(ldt.data.indexing, "write_meta_info", full_disk)
    code, line = run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--splits", "test",
                            "--meta-info", str(tmp_path / "meta"))
    assert_flag_error((code, line), "--meta-info", "No space left on device")


def write_one_pair(root: Path) -> None:
    """A DRealSR test split with one real Olympus pair (the LMDB writer decodes every image)."""
    import cv2
    import numpy as np

    for folder, side, suffix in (("test_HR", 32, "x4"), ("test_LR", 8, "x1")):
        (root / "x4" / "Test_x4" / folder).mkdir(parents=True)
        cv2.imwrite(str(root / "x4" / "Test_x4" / folder / f"P1000001_{suffix}.png"), np.zeros((side, side, 3), np.uint8))


@pytest.mark.parametrize("option", ["--meta-info", "--lmdb"])
def test_index_drealsr_into_a_folder_another_run_writes_is_refused(option, tmp_path, monkeypatch, capsys) -> None:
    """Two runs into one export folder: the second deleted the LMDB the first was writing (its <db>.partial) and
    rewrote its lists. The second is refused now, in one line, before it pairs a folder or writes a file."""
    from ldt.atomic import lock_beside
    from tests.conftest import lock_held_elsewhere

    root, out = tmp_path / "root", tmp_path / "out"
    write_one_pair(root)
    args = (str(root), "--splits", "test", option, str(out))
    with lock_held_elsewhere(lock_beside(out)) as holder:  # the first run, writing
        code, line = run_script(monkeypatch, capsys, "index_drealsr.py", *args)
    assert code == 2 and line.startswith(f"index_drealsr.py: error: {option}: another scripts/index_drealsr.py is "
                                         f"writing into {out} (pid {holder.pid}, since "), line
    assert not out.exists()
    assert run_script(monkeypatch, capsys, "index_drealsr.py", *args)[0] == 0 and any(out.iterdir())  # once it ends


def test_index_drealsr_full_disk_in_an_export_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    import pathlib

    import lmdb

    write_one_pair(tmp_path / "root")
    args = (str(tmp_path / "root"), "--splits", "test")

    def full_lmdb(path, **kwargs):  # what lmdb raises on a full disk: an lmdb.Error, not an OSError
        raise lmdb.DiskError(f"{path}: No space left on device")

    monkeypatch.setattr(lmdb, "open", full_lmdb)
    assert_flag_error(run_script(monkeypatch, capsys, "index_drealsr.py", *args, "--lmdb", str(tmp_path / "lmdb")),
                      "--lmdb", "cannot write", "olympus_HR.lmdb", "No space left on device")
    assert not list((tmp_path / "lmdb").rglob("*.partial"))

    def half_written(self, text, *rest, **kwargs):  # the disk fills up in the middle of the file
        with open(self, "w") as file:
            file.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", half_written)
    assert_flag_error(run_script(monkeypatch, capsys, "index_drealsr.py", *args, "--meta-info", str(tmp_path / "m")),
                      "--meta-info", "DRealSR_x4_test_olympus.txt", "no space left on device")
    assert not list((tmp_path / "m").iterdir())  # no shortened list that a dataset would read as the whole camera


def test_index_drealsr_lmdb_into_an_output_that_holds_some_of_them_is_refused_before_any_is_written(
        tmp_path, monkeypatch, capsys) -> None:
    """A rerun of --lmdb into an output holding the test split's LMDBs wrote every train LMDB (decoding each image)
    and only then stopped at the test split's ('LMDB … already exists'), leaving a half-done export a third run
    refused at its train split: every LMDB the run would write is now looked for before any work."""
    import cv2
    import numpy as np

    write_one_pair(tmp_path / "root")
    for folder, side, suffix in (("train_HR", 32, "x4"), ("train_LR", 8, "x1")):
        (tmp_path / "root" / "x4" / "Train_x4" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "root" / "x4" / "Train_x4" / folder / f"P1000002_{suffix}.png"),
                    np.zeros((side, side, 3), np.uint8))
    out = tmp_path / "lmdb"
    assert run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--splits", "test",
                      "--lmdb", str(out))[0] == 0
    assert_flag_error(run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--lmdb", str(out)),
                      "--lmdb", f"{out}/x4/test/olympus_HR.lmdb", "olympus_LR.lmdb", "already exist",
                      "remove them or choose another output folder")
    assert not (out / "x4" / "train").exists()
    (out / "x4" / "train" / "pan_HR.lmdb").mkdir(parents=True)  # another download's: no pan pair here, not refused
    assert run_script(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--splits", "train",
                      "--lmdb", str(out))[0] == 0
    assert (out / "x4" / "train" / "olympus_HR.lmdb" / "meta_info.txt").is_file()


@pytest.mark.parametrize("link", ["loop", "dangling"])
@pytest.mark.parametrize("script,option", [("build_synthetic_cameras.py", "--root"), ("index_drealsr.py", "--lmdb")])
def test_an_output_folder_that_is_a_symlink_loop_or_dangling_is_named_before_any_work(link, script, option, tmp_path,
                                                                                      monkeypatch, capsys) -> None:
    """An output folder given as a symlink loop or a symlink whose target is gone passed the start-up check
    (exists() is False, its parent writable) and failed at its mkdir: build_synthetic_cameras.py said
    'error: --root OUT: [Errno 17] File exists: 'OUT'', which names neither the symlink nor what is wrong."""
    out = tmp_path / "out"
    out.symlink_to("out" if link == "loop" else tmp_path / "gone")
    args = ["--root", str(out), "--tiny", "--no-progress"] if script.startswith("build") else \
        [str(tmp_path), "--lmdb", str(out)]
    problem = f"{out} is a symlink loop" if link == "loop" else f"{out} is a symlink to {tmp_path / 'gone'}, which " \
                                                                "does not exist"
    code, line = run_script(monkeypatch, capsys, script, *args)
    assert code == 2 and line.endswith(f"error: {option}: {problem}"), line


EMPTY_PATH = "an empty path (an unset variable?); give a folder or file"


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["scripts/reproduce.py", "--table", "1", "--data", "synthetic_tiny", "--collect", "--out"],
    ["scripts/study.py", "--collect", "--out"],
    ["scripts/build_synthetic_cameras.py", "--tiny", "--root"],
    ["scripts/build_synthetic_cameras.py", "--tiny", "--bicubic-root"],
    ["scripts/index_drealsr.py", "--lmdb"],
    ["scripts/index_drealsr.py", "--meta-info"],
    ["scripts/benchmark.py", "--json"],
    ["Train_pip.py", "-opt", "x.yml", "--root"],
    ["-m", "ldt.classification", "--out"],
    ["-m", "ldt.classification", "--collect"],
    ["-m", "ldt.segmentation", "--out"],
    ["-m", "ldt.segmentation", "--collect"],
], ids=lambda command: " ".join(command[-3:]))
def test_an_empty_path_flag_is_an_error_not_the_current_or_default_folder(command, tmp_path):
    """``--out "$OUT"`` with OUT unset: ``Path('')`` is the current folder (a reproduce --collect wrote its tables
    there) and an empty --out/--collect of the runners fell back to the default folder (its tables rewritten)."""
    root = Path(__file__).resolve().parents[1]
    script = [str(root / command[0]), *command[1:]] if command[0] != "-m" else command
    done = subprocess.run([sys.executable, *script, ""], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
        f"error: argument {command[-1]}: {EMPTY_PATH}"), done.stderr
    assert not list(tmp_path.iterdir())  # nothing written where it ran


@pytest.mark.parametrize("module, argv", [
    ("ldt.sr.reproduce", ["--data", "synthetic", "--table", "1", "--table", "2"]),
    ("ldt.sr.reproduce", ["--table", "1", "--data", "synthetic", "--arch", "safmn", "--arch", "hat"]),
    ("ldt.classification.__main__", ["--seeds", "0", "--seeds", "1"]),
    ("ldt.classification.__main__", ["--methods", "ft", "--methods", "ldt"]),
    ("ldt.segmentation.__main__", ["--seeds", "0", "--seeds", "1"]),
    ("ldt.segmentation.__main__", ["--source", "a", "--source", "b"]),
], ids=lambda value: value if isinstance(value, str) else " ".join(value[-4:]))
def test_a_list_flag_given_twice_is_an_error_not_its_last_values(module, argv, capsys) -> None:
    """argparse kept only the last of a repeated list flag: ``--table 1 --table 2`` ran table 2 alone."""
    import importlib

    loaded = importlib.import_module(module)
    parse = loaded.build_parser().parse_args if hasattr(loaded, "build_parser") else loaded.parse_args
    flag = argv[-2]
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: argument {flag}: given twice; list all its values after one {flag}")


def test_a_list_flag_given_once_keeps_its_values_and_its_default_otherwise() -> None:
    from ldt.classification.__main__ import parse_args

    assert parse_args(["--seeds", "4", "5"]).seeds == [4, 5]
    assert parse_args([]).seeds == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------------ demo
ROOT = SCRIPTS.parent


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "ldt.sr.demo", "--budget", "nope"],
    [sys.executable, "Train_pip.py", "--budget=nope"],  # argparse's --flag=value spelling
    [sys.executable, "Train_pip.py", "--seed=1", "--budget", "nope"],
])
def test_the_demo_reads_its_flags_however_it_is_started(command) -> None:
    """A bad demo flag is refused by the demo's own parser (its choices named), not run as nothing or another command,
    under the command's own name (`python -m ldt.sr.demo` said 'demo.py: error: ...')."""
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-1000:]
    prog = "python -m ldt.sr.demo" if command[1] == "-m" else "Train_pip.py"
    assert proc.stderr.strip().splitlines()[-1] == (f"{prog}: error: argument --budget: invalid choice: 'nope' "
                                                    "(choose from 'full', 'quick')"), proc.stderr


def train_pip_route():
    return load_file_module(ROOT / "Train_pip.py", "ldt_train_pip_route").route


@pytest.mark.parametrize("argv, command, arguments", [
    ([], "demo", []),
    (["demo"], "demo", []),
    (["demo", "--force"], "demo", ["--force"]),
    (["--budget", "quick"], "demo", ["--budget", "quick"]),
    (["--bud", "quick"], "demo", ["--bud", "quick"]),  # an abbreviation: the demo refuses it, naming --budget
    (["--bud=quick"], "demo", ["--bud=quick"]),
    (["--force", "--budget", "quick"], "demo", ["--force", "--budget", "quick"]),
    (["--seed", "-1", "--budg", "quick"], "demo", ["--seed", "-1", "--budg", "quick"]),
    (["--budget", "quick", "--stesp", "4"], "demo", ["--budget", "quick", "--stesp", "4"]),  # the demo names it
    (["--budget", "quick", "--f"], "demo", ["--budget", "quick", "--f"]),  # --f: the demo refuses it, naming --force
    (["-opt", "x.yml"], "training", ["-opt", "x.yml"]),
    (["--root", "r", "-opt", "x.yml", "--auto"], "training", ["--root", "r", "-opt", "x.yml", "--auto"]),
    (["-opt", "x.yml", "--f", "ldt:method=ft"], "training", ["-opt", "x.yml", "--f", "ldt:method=ft"]),
    (["--help"], "training", ["--help"]),
])
def test_train_pip_routes_any_demo_flag_anywhere_to_the_demo(argv, command, arguments) -> None:
    """Only a demo flag first (or --seed=1 / --budget=quick) reached the demo: '--bud quick' and
    '--seed 1 --bud quick' went to the training parser, which said 'unrecognized arguments' or '-opt is required'."""
    assert train_pip_route()(argv) == (command, arguments)


@pytest.mark.parametrize("argv, words", [
    (["--budget", "quick", "-opt", "x.yml"], ["--budget runs the demo, -opt trains from an options file"]),
    (["-opt", "x.yml", "--seed", "1"], ["--seed runs the demo, -opt trains"]),
    (["-opt", "x.yml", "--force", "a=b"], ["--force runs the demo", "for training spell out --force_yml"]),
    (["demo", "--root", "r"], ["demo runs the demo, --root trains"]),
    (["--f"], ["--f: an abbreviation of both", "--force, --force_yml", "spell it out"]),
])
def test_train_pip_mixing_demo_and_training_flags_is_one_line(capsys, argv, words) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_pip_route()(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], err


def test_train_pip_routes_by_the_parsers_flags_without_torch() -> None:
    """Train_pip.py reads both commands' flag names from their parsers (ldt.sr.flags, declared once) and routes
    before torch or BasicSR is imported: importing it and routing a demo flag, a training flag and an abbreviation
    loads neither."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import Train_pip; "
            "print([Train_pip.route(a)[0] for a in (['--bud', 'quick'], ['-opt', 'x.yml', '--auto'], [])]); "
            "print(Train_pip.DEMO_FLAGS, Train_pip.TRAINING_FLAGS); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'basicsr', 'numpy', 'cv2'}))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['demo', 'training', 'demo']",
        "('--budget', '--force', '--seed') ('-opt', '--opt', '--launcher', '--force_yml', '--root', '--auto_resume')",
        "[]",
    ], done.stdout


# ------------------------------------------------------------------------------------------------- every command
# Every command with a parser, as the user starts it: a script (run_path) or a module (run_module), and the flags it
# requires, so that argparse gets as far as the unrecognized one.
COMMANDS = [
    ("scripts/benchmark.py", []), ("scripts/benchmark_data_check.py", []), ("scripts/benchmark_probe.py", []),
    ("scripts/benchmark_scan.py", []), ("scripts/build_synthetic_cameras.py", []), ("scripts/gpu_check_scan.py", []),
    ("scripts/index_drealsr.py", []), ("scripts/reproduce.py", ["--table", "1", "--data", "synthetic_tiny"]),
    ("scripts/study.py", []), ("Train_pip.py", []), ("test.py", []), ("examples/toy_domain_shift.py", []),
    ("-m ldt.sr.demo", []), ("-m ldt.sr.options", []), ("-m ldt.classification", []), ("-m ldt.segmentation", []),
    ("-m ldt.sr.basicsr_pipeline", ["-opt", "x.yml"]),
]


def run_command(monkeypatch: pytest.MonkeyPatch, command: str, *args: str) -> int:
    """Exit status of ``command args``, run in-process as it is started from a shell."""
    module = command[3:] if command.startswith("-m ") else None
    path = str(ROOT / command) if module is None else module
    monkeypatch.setattr(sys, "argv", [path, *args])
    monkeypatch.setattr(sys, "path", [str(ROOT / command).rsplit("/", 1)[0] if module is None else str(ROOT),
                                      *sys.path])
    with pytest.raises(SystemExit) as exit_info:
        if module is None:
            runpy.run_path(path, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    return exit_info.value.code


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command, required", COMMANDS, ids=[command for command, _ in COMMANDS])
def test_a_bad_flag_of_every_command_is_one_line_with_its_hint(command, required, monkeypatch, capsys) -> None:
    """The scripts, Train_pip.py / test.py, the demo and ``python -m ldt.sr.options`` printed argparse's usage (up
    to ten lines) above the ``error:`` line, where the runners printed that line alone; --help still shows it."""
    code = run_command(monkeypatch, command, *required, "--hepl")
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith("error: unrecognized arguments: --hepl (did you mean '--help'?)"), err
    assert run_command(monkeypatch, command, "--help") == 0
    assert capsys.readouterr().out.startswith("usage: ")


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command, args, given, full", [
    ("scripts/reproduce.py", ["--table", "2", "--data", "{tmp}/data", "--out", "{tmp}/out", "--seed", "3"],
     "--seed 3", "--seeds"),
    ("Train_pip.py", ["--bud", "nope"], "--bud nope", "--budget"),
    ("Train_pip.py", ["-opt", "{tmp}/x.yml", "--auto"], "--auto", "--auto_resume"),
    ("Train_pip.py", ["-opt", "{tmp}/x.yml", "--f", "a:b=1"], "--f a:b=1", "--force_yml"),  # the demo's --force too
    ("-m ldt.sr.basicsr_pipeline", ["-opt", "{tmp}/x.yml", "--auto"], "--auto", "--auto_resume"),
    ("-m ldt.sr.basicsr_pipeline", ["-opt", "{tmp}/x.yml", "--lo", "1"], "--lo 1", "--local_rank"),  # 2 spellings
    ("-m ldt.classification", ["--out", "{tmp}/out", "--pretrain-st", "0"], "--pretrain-st 0", "--pretrain-steps"),
    # a single-dash flag, which argparse's allow_abbrev=False does not cover
    ("Train_pip.py", ["-o", "{tmp}/x.yml"], "-o {tmp}/x.yml", "-opt"),
    ("test.py", ["-op", "{tmp}/x.yml"], "-op {tmp}/x.yml", "-opt"),
    ("-m ldt.sr.basicsr_pipeline", ["-opt", "{tmp}/x.yml", "-o", "{tmp}/y.yml"], "-o {tmp}/y.yml", "-opt"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_an_abbreviated_flag_is_refused_with_the_full_flag_named(command, args, given, full, tmp_path, monkeypatch,
                                                                 capsys) -> None:
    """argparse took any unambiguous prefix of a flag: reproduce.py's '--seed 3' ran three seeds (read as --seeds),
    where seed 3 was meant, and said nothing. Now it is an unrecognized flag, hinted with the flag it starts."""
    code = run_command(monkeypatch, command, *(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    given = given.replace("{tmp}", str(tmp_path))
    assert err[0].endswith(f"error: unrecognized arguments: {given} (did you mean '{full}'?)"), err
    assert not list(tmp_path.iterdir())  # refused before any work


def test_the_prefix_of_several_flags_names_them(tmp_path, monkeypatch, capsys) -> None:
    """argparse said 'ambiguous option: --t could match --table, --tile'; refusing abbreviations made it a bare
    'unrecognized arguments: --t 2'. The flags it starts are named again."""
    code = run_command(monkeypatch, "scripts/reproduce.py", "--table", "2", "--data", str(tmp_path / "data"), "--t", "2")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].endswith("error: unrecognized arguments: --t 2 (an abbreviation of --table, --tile: spell the flag "
                           "out)"), err


BENCHMARKS = ("scripts/benchmark.py", "scripts/benchmark_data_check.py", "scripts/benchmark_probe.py",
              "scripts/benchmark_scan.py", "scripts/gpu_check_scan.py")


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", BENCHMARKS)
def test_a_benchmark_starts_as_every_command_does(command, monkeypatch, capsys) -> None:
    """The benchmark scripts imported torch outside ldt.cli.starting: their warnings printed in Python's two-line
    format ('/…/scripts/benchmark.py:12: UserWarning: …' and the source line), Ctrl-C while importing was a
    traceback; started as the user starts them, they now show a warning of theirs as one 'warning: …' line."""
    import warnings

    from ldt import cli

    monkeypatch.setattr(warnings, "formatwarning", cli._python_format)  # as a fresh interpreter has it
    assert run_command(monkeypatch, command, "--help") == 0
    capsys.readouterr()
    shown = warnings.formatwarning("a sentence for the user", UserWarning, str(ROOT / command), 12)
    assert shown == "warning: a sentence for the user\n", shown


def test_a_warning_of_a_command_is_one_line(tmp_path):
    """A command's own warnings (a broken line of a sweep's records, an option the run ignores) printed in Python's
    default format, two lines: '/…/ldt/sweep.py:613: UserWarning: …' and the source line of the warnings.warn call
    below it; now 'warning: …', one line, while a library's warnings keep the format that says where they come from."""
    from ldt.cli import format_warning

    (tmp_path / "results.jsonl").write_text('{"options_hash": "ab\n')  # a record cut short
    done = subprocess.run([sys.executable, "-m", "ldt.classification", "--collect", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (f"warning: {tmp_path / 'results.jsonl'}:1: not a complete record (an "
                                           "interrupted write, or edited by hand?); ignored"), done.stderr
    assert "UserWarning" not in done.stderr and "warnings.warn" not in done.stderr and "Records(" not in done.stderr
    library = format_warning("deprecated", UserWarning, torch.__file__, 3)
    assert library.startswith(f"{torch.__file__}:3: UserWarning: deprecated")
    assert format_warning("x", DeprecationWarning, str(ROOT / "ldt" / "cli.py"), 1) != "warning: x\n"


STOP_SIGNALS = pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)


def stopped_run(monkeypatch, capsys, name: str, *args: str) -> tuple[int, list[str]]:
    """Exit status and every stderr line of ``scripts/<name> args`` run in-process (a stop is sent from inside)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / name), *args])
    try:
        runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    except SystemExit as leaving:
        return leaving.code or 0, capsys.readouterr().err.splitlines()
    return 0, capsys.readouterr().err.splitlines()


@STOP_SIGNALS
def test_index_drealsr_stopped_mid_export_is_one_line_and_leaves_whole_files(signum, tmp_path, monkeypatch, capsys,
                                                                            default_sigint) -> None:
    """A stop (SIGTERM, Ctrl-C) in the middle of the second meta-info file's write was a KeyboardInterrupt traceback
    (SIGTERM: a silent exit): one line now, naming the exports written before it, exit 128 + the signal."""
    import pathlib

    import cv2
    import numpy as np

    write_one_pair(tmp_path / "root")
    cv2.imwrite(str(tmp_path / "root" / "x4" / "Test_x4" / "test_HR" / "panasonic_1_x4.png"), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "root" / "x4" / "Test_x4" / "test_LR" / "panasonic_1_x1.png"), np.zeros((8, 8, 3), np.uint8))
    real_write, writes = pathlib.Path.write_text, []

    def stopped_half_way(self, text, *rest, **kwargs):
        writes.append(self)
        if len(writes) < 2:
            return real_write(self, text, *rest, **kwargs)
        real_write(self, text[: len(text) // 2])
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises at the next bytecode
        pytest.fail("the signal did not stop the write")

    monkeypatch.setattr(pathlib.Path, "write_text", stopped_half_way)
    out = tmp_path / "meta"
    code, lines = stopped_run(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--splits", "test",
                              "--meta-info", str(out))
    first = out / "DRealSR_x4_test_olympus.txt"
    assert (code, lines) == (128 + signum, [f"stopped by {signal.Signals(signum).name}: no export is half-written; "
                                            f"1 written before the stop ({first}); rerun the same command"])
    assert [path.name for path in out.iterdir()] == [first.name]  # the cut file's temporary copy is gone
    assert first.read_text() == "P1000001_x4.png P1000001_x1.png\n"


@STOP_SIGNALS
def test_index_drealsr_stopped_in_an_lmdb_names_the_finished_ones_to_remove(signum, tmp_path, monkeypatch, capsys,
                                                                            default_sigint) -> None:
    """The LR database of a camera is cut by the stop: its HR one is whole and named (a rerun refuses it), no
    ``.partial`` folder is left."""
    import lmdb

    write_one_pair(tmp_path / "root")
    real_open = lmdb.open

    def stopped_at_the_second(path, **kwargs):
        if path.endswith("_LR.lmdb.partial"):
            os.kill(os.getpid(), signum)
            time.sleep(5)
        return real_open(path, **kwargs)

    monkeypatch.setattr(lmdb, "open", stopped_at_the_second)
    out = tmp_path / "lmdb"
    code, lines = stopped_run(monkeypatch, capsys, "index_drealsr.py", str(tmp_path / "root"), "--splits", "test",
                              "--lmdb", str(out))
    hr = out / "x4" / "test" / "olympus_HR.lmdb"
    assert (code, lines) == (128 + signum, [f"stopped by {signal.Signals(signum).name}: no export is half-written; "
                                            f"1 written before the stop ({hr}); remove the LMDBs it wrote ({hr}) "
                                            "before rerunning with --lmdb"])
    assert sorted(path.name for path in hr.parent.iterdir()) == [hr.name]


@STOP_SIGNALS
def test_build_synthetic_cameras_stopped_mid_build_is_one_line_and_rebuilds(signum, tmp_path, monkeypatch, capsys,
                                                                           default_sigint) -> None:
    """A stop between two images of the build was a KeyboardInterrupt traceback (SIGTERM: a silent exit): one line
    now, the folder marked unfinished, and the same command rebuilds it."""
    import ldt.data.synthetic_cameras as synthetic

    real_write, written = synthetic._write_png, []

    def stopped_at_the_third(path, rgb):
        written.append(path)
        if len(written) == 3:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        real_write(path, rgb)

    monkeypatch.setattr(synthetic, "_write_png", stopped_at_the_third)
    root = tmp_path / "c"
    code, lines = stopped_run(monkeypatch, capsys, "build_synthetic_cameras.py", *BUILD, "--root", str(root))
    assert (code, lines) == (128 + signum, [f"stopped by {signal.Signals(signum).name}: {root} is half-built, marked "
                                            f"unfinished in its {synthetic.MANIFEST}; rerun the same command to "
                                            "rebuild it"])
    assert synthetic.build_complete(root) is False
    monkeypatch.setattr(synthetic, "_write_png", real_write)
    code, lines = stopped_run(monkeypatch, capsys, "build_synthetic_cameras.py", *BUILD, "--root", str(root))
    assert (code, lines) == (0, []) and synthetic.build_complete(root)


def into_a_closed_pipe(command: list[str], cwd: Path) -> tuple[int, str]:
    """Exit status and stderr of ``command`` writing its stdout into a pipe whose reader has gone (``| head -1``
    once head has its line), so that its first flush meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, *command], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)})
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("problems", [0, 400], ids=["at-exit", "mid-run"])
def test_index_drealsr_into_a_closed_pipe_ends_quietly(problems, tmp_path) -> None:
    """``index_drealsr.py ROOT | head -1``: a short report met the closed pipe at the interpreter's last flush ('Exception
    ignored ... BrokenPipeError'), a long one (a buffer's worth of problem lines) in a print, a BrokenPipeError
    traceback that cut the exports short; both end quietly now, their exports written, with the run's status."""
    write_one_pair(tmp_path / "root")
    for number in range(problems):  # an HR without its LR: one problem line each
        (tmp_path / "root" / "x4" / "Test_x4" / "test_HR" / f"P1{number + 100000:06d}_x4.png").write_bytes(b"")
    assert into_a_closed_pipe([str(SCRIPTS / "index_drealsr.py"), str(tmp_path / "root"), "--splits", "test",
                               "--meta-info", str(tmp_path / "meta")], tmp_path) == (1 if problems else 0, "")
    assert (tmp_path / "meta" / "DRealSR_x4_test_olympus.txt").read_text() == "P1000001_x4.png P1000001_x1.png\n"


@pytest.mark.slow
def test_build_synthetic_cameras_into_a_closed_pipe_ends_quietly(tmp_path) -> None:
    """``build_synthetic_cameras.py | head -1``: its PSNR tables met the closed pipe ('Exception ignored ...
    BrokenPipeError' on exit); the build is whole and the command ends quietly, exit 0."""
    from ldt.data.synthetic_cameras import build_complete

    root = tmp_path / "c"
    assert into_a_closed_pipe([str(SCRIPTS / "build_synthetic_cameras.py"), *BUILD, "--root", str(root)],
                              tmp_path) == (0, "")
    assert build_complete(root)


def test_index_drealsr_rerun_removes_the_lists_of_a_camera_gone_and_nothing_else(tmp_path, monkeypatch,
                                                                                  capsys) -> None:
    """A rerun on a download whose pan pairs went away kept DRealSR_x4_test_pan.txt from the run before, which a
    training with that meta_info_file still read: it is removed now, in one line; every other file of the folder
    stays, the lists of a split not found too (a mistyped ROOT finds no split: it must not delete them)."""
    import shutil

    import cv2
    import numpy as np

    root, out = tmp_path / "root", tmp_path / "meta"
    write_one_pair(root)
    for split, folder, side, suffix, name in (("Test", "test_HR", 32, "x4", "panasonic_1"),
                                              ("Test", "test_LR", 8, "x1", "panasonic_1"),
                                              ("Train", "train_HR", 32, "x4", "P1000002"),
                                              ("Train", "train_LR", 8, "x1", "P1000002")):
        (root / "x4" / f"{split}_x4" / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "x4" / f"{split}_x4" / folder / f"{name}_{suffix}.png"),
                    np.zeros((side, side, 3), np.uint8))
    assert run_script(monkeypatch, capsys, "index_drealsr.py", str(root), "--meta-info", str(out))[0] == 0
    before = {"DRealSR_x4_test_olympus.txt", "DRealSR_x4_test_pan.txt", "DRealSR_x4_train_olympus.txt"}
    assert {path.name for path in out.iterdir()} == before
    others = ["notes.txt", "DRealSR_x2_test_pan.txt", "DRealSR_x4_test_pan.txt.bak", "DRealSR_x4_test_foo.txt"]
    for name in others:
        (out / name).write_text("x")
    for folder in ("test_HR", "test_LR"):
        next((root / "x4" / "Test_x4" / folder).glob("panasonic_*")).unlink()

    run_script(monkeypatch, capsys, "index_drealsr.py", str(root), "--splits", "test", "--cameras", "olympus",
               "--meta-info", str(out))  # pan not selected: its list is not this run's to judge
    assert {path.name for path in out.iterdir()} == before | set(others)
    capsys.readouterr()
    shutil.rmtree(root / "x4" / "Train_x4")
    monkeypatch.setattr(sys, "argv", [str(SCRIPTS / "index_drealsr.py"), str(root), "--meta-info", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / "index_drealsr.py"), run_name="__main__")
    removed = [line for line in capsys.readouterr().out.splitlines() if "removed" in line]
    assert exit_info.value.code == 1  # the train split is gone: a problem
    assert removed == [f"  removed {out / 'DRealSR_x4_test_pan.txt'}: a list of an earlier run, for a camera with no "
                       "pair to export in test now"]
    assert {path.name for path in out.iterdir()} == {"DRealSR_x4_test_olympus.txt", "DRealSR_x4_train_olympus.txt",
                                                     *others}
