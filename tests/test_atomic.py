"""Checked JSON reads (``ldt.atomic.read_json_object`` / ``read_json_dict``) and what each cache does when its
manifest or summary was truncated or replaced by hand: caches of generated data rebuild, files whose content decides
what may be deleted or trusted are refused in one line naming them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ldt.atomic import DiskError, FileContentError, atomic_write_bytes, make_dirs, read_json_dict, read_json_object
from tests.conftest import fill, hold_in_another_process, lock_held_elsewhere


@pytest.mark.parametrize("content,problem", [
    ('{"hash": "ab', "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"other": 1}', "lacks 'hash'"),
    (b"\xff\xfe\x00", "not UTF-8 text"),
])
def test_a_broken_json_file_is_one_line_naming_it(content, problem, tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(FileContentError) as caught:
        read_json_object(path, ("hash",), remedy="delete it")
    message = str(caught.value)
    assert message.startswith(f"{path}: {problem}") and message.endswith("; delete it") and "\n" not in message
    assert read_json_dict(path) == ({"other": 1} if "lacks" in problem else {})  # it asks for no key


def test_missing_and_good_files(tmp_path):
    with pytest.raises(FileContentError, match="No such file"):
        read_json_object(tmp_path / "absent.json")
    assert read_json_dict(tmp_path / "absent.json") == {}
    (tmp_path / "good.json").write_text('{"hash": "x", "n": 1}')
    assert read_json_object(tmp_path / "good.json", ("hash",)) == {"hash": "x", "n": 1}
    atomic_write_bytes(tmp_path / "sub" / "blob.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "blob.bin").read_bytes() == b"\x00\x01"


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    """``--root FILE`` (test.py, the sweeps): the message names the file in the way, not a raw ``[Errno 20]``."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DiskError) as err:
        make_dirs(tmp_path / "afile" / "results" / "t")
    assert str(err.value) == f"cannot create {tmp_path / 'afile' / 'results' / 't'}: {tmp_path / 'afile'} is a file, " \
                             "not a folder"
    with pytest.raises(DiskError, match="afile is a file, not a folder"):
        make_dirs(tmp_path / "afile")
    with pytest.raises(DiskError, match="afile is a file, not a folder"):
        atomic_write_bytes(tmp_path / "afile" / "x.json", b"{}")


def test_a_broken_synthetic_camera_manifest_is_refused_and_nothing_is_deleted(tmp_path):
    from ldt.data.synthetic_cameras import MANIFEST, build_synthetic_cameras

    root = build_synthetic_cameras(tmp_path / "cams", tiny=True, progress=False)
    manifest = root / MANIFEST
    for broken in (manifest.read_text()[:40], json.dumps({"hash": 1, "config": [], "files": [], "complete": True})):
        manifest.write_text(broken)
        before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
        with pytest.raises(FileContentError, match=rf"^{manifest}: .*; delete {root} to rebuild the benchmark$"):
            build_synthetic_cameras(root, tiny=True, progress=False)
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == before


def test_broken_manifests_of_generated_datasets_rebuild_them(tmp_path):
    from ldt.classification.toy import MANIFEST as TOY_MANIFEST, build_toy_domains
    from ldt.segmentation.generated import MANIFEST as STREET_MANIFEST, GeneratedConfig, build_generated

    toy = build_toy_domains(tmp_path / "toy", images_per_class=2, size=16)
    good = (toy / TOY_MANIFEST).read_text()
    (toy / TOY_MANIFEST).write_text(good[:10])
    assert build_toy_domains(toy, images_per_class=2, size=16) == toy and (toy / TOY_MANIFEST).read_text() == good
    tiny = GeneratedConfig(height=32, width=64, train_per_domain=1, val_per_domain=1, pretrain_train=1, pretrain_val=1)
    streets = build_generated(tmp_path / "streets", tiny)
    good = (streets / STREET_MANIFEST).read_text()
    (streets / STREET_MANIFEST).write_text("[]")
    assert build_generated(streets, tiny) == streets and (streets / STREET_MANIFEST).read_text() == good


def test_a_broken_pretraining_summary_names_the_files_to_delete(tmp_path):
    from ldt.classification.pretrain import pretrain_summary as tiny_summary
    from ldt.segmentation.pretrain import data_digest, pretrain_summary as backbone_summary

    weights = tmp_path / "tiny-abc.pth"
    weights.with_suffix(".json").write_text('{"classes": [1]')
    with pytest.raises(FileContentError, match=rf"{weights.with_suffix('.json')}: not valid JSON .*; delete it and "
                                               rf"{weights} to pre-train again"):
        tiny_summary(weights)
    weights.with_suffix(".json").write_text('{"wall_s": 1}')
    with pytest.raises(FileContentError, match="lacks 'val_miou'"):
        backbone_summary(weights)
    (tmp_path / "streets").mkdir()
    from ldt.segmentation.generated import MANIFEST

    (tmp_path / "streets" / MANIFEST).write_text("")
    with pytest.raises(FileContentError, match=rf"delete {tmp_path / 'streets'} to generate it again"):
        data_digest(tmp_path / "streets")


# ---- folder locks: two processes writing one folder ------------------------------------------------------------------
def test_a_held_lock_names_its_holder_or_is_waited_for(tmp_path, capsys):
    import time

    from ldt.atomic import BusyError, exclusive_lock, lock_beside

    lock = lock_beside(tmp_path / "experiments" / "run")
    assert lock == tmp_path / "experiments" / ".run.lock"
    holder = hold_in_another_process(lock, 3)
    with pytest.raises(BusyError, match=rf"^busy: pid {holder.pid}, since .* \(lock {lock}\)$"):
        with exclusive_lock(lock, busy="busy: {holder} (lock {lock})"):
            pass
    start = time.monotonic()
    with exclusive_lock(lock):  # waits for the holder to finish
        assert time.monotonic() - start > 1.0  # it held the lock 3 s after saying so
    assert f"waiting for pid {holder.pid}" in capsys.readouterr().err
    holder.wait()
    holder = hold_in_another_process(lock, 30)
    holder.kill()  # kill -9 releases the lock with the process
    holder.wait()
    with exclusive_lock(lock, busy="busy"):
        assert f"pid {__import__('os').getpid()}" in lock.read_text()


def test_a_lock_on_a_full_disk_is_released_without_an_error(disk):
    """The lock file can be created on a full disk but not written: the holder's pid is left out, and the release
    at the end of the block must not fail (a full disk at a run's start ended in an OSError traceback there)."""
    from ldt.atomic import exclusive_lock

    fill(disk)
    ran = False
    with exclusive_lock(disk / ".run.lock", busy="busy"):
        ran = True
    assert ran


def test_a_lock_that_cannot_be_created_runs_unlocked(tmp_path, monkeypatch):
    """On a read-only disk nothing else can write there either; the write itself then names the disk's problem."""
    import errno

    import ldt.atomic
    from ldt.atomic import exclusive_lock, lock_beside

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ldt.atomic.os, "open", refuse)
    ran = False
    with exclusive_lock(lock_beside(tmp_path / "folder"), busy="busy"):
        ran = True
    assert ran and not (tmp_path / ".folder.lock").exists()


def test_something_other_than_a_file_where_a_lock_goes_is_one_line(tmp_path):
    """A folder or FIFO of the lock's name, or a symlink loop, could not be opened as a lock file, and the block ran
    unlocked (a loop raised a bare RuntimeError): the folder beside it can be written, so a second run went ahead."""
    from ldt.atomic import DiskError, exclusive_lock

    folder, fifo, loop = tmp_path / ".folder.lock", tmp_path / ".fifo.lock", tmp_path / ".loop.lock"
    folder.mkdir()
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    for lock, what in ((folder, "it is a folder, not a file"), (fifo, "it is a FIFO (named pipe), not a regular file"),
                       (loop, f"{loop} is a symlink loop")):
        with pytest.raises(DiskError, match=f"^{re.escape(f'cannot lock {lock}: {what}')}"):
            with exclusive_lock(lock, busy="busy"):
                pytest.fail("ran unlocked")


def test_generated_dataset_builds_wait_for_each_other(tmp_path, capsys):
    from ldt.atomic import lock_beside
    from ldt.classification.toy import build_toy_domains

    root = tmp_path / "toy"
    holder = hold_in_another_process(lock_beside(root), 1.0)
    build_toy_domains(root, images_per_class=1, size=8)
    assert f"waiting for pid {holder.pid}" in capsys.readouterr().err
    assert (root / "toy_domains.json").is_file()


@pytest.mark.parametrize("builder", ["toy", "streets"])
def test_a_dataset_build_killed_mid_way_leaves_no_hidden_copy_and_builds_a_readable_folder(tmp_path, builder):
    """kill -9 skips a build's cleanup, so its staging folder stayed (a hidden copy of the data per kill); the next
    build deletes it (not a sibling dataset's), and the dataset is not mkdtemp's 0o700."""
    import os
    import stat

    from ldt.atomic import UMASK

    root = tmp_path / "data"
    killed = tmp_path / ".data-k1ll3d_x"
    (killed / "photo").mkdir(parents=True)
    sibling = tmp_path / ".data-v2-abcdefgh"  # how a build of 'data-v2' names its staging folder
    sibling.mkdir()
    if builder == "toy":
        from ldt.classification.toy import build_toy_domains

        build_toy_domains(root, images_per_class=1, size=8)
    else:
        from ldt.segmentation.generated import GeneratedConfig, build_generated

        build_generated(root, GeneratedConfig(height=32, width=64, train_per_domain=1, val_per_domain=1,
                                              pretrain_train=1, pretrain_val=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data-v2-abcdefgh", ".data.lock", "data"]
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o777 & ~UMASK


@pytest.mark.parametrize("builder", ["toy", "streets"])
def test_a_full_disk_during_a_dataset_build_names_the_dataset_and_leaves_nothing(tmp_path, monkeypatch, builder):
    """The runners printed a bare 'error: [Errno 28] No space left on device', naming nothing."""
    import errno

    from PIL import Image

    from ldt.atomic import DiskError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    root = tmp_path / "data"
    with pytest.raises(DiskError, match=rf"^cannot write the generated \w+ dataset {root}: no space left on device$"):
        if builder == "toy":
            from ldt.classification.toy import build_toy_domains

            build_toy_domains(root, images_per_class=1, size=8)
        else:
            from ldt.segmentation.generated import GeneratedConfig, build_generated

            build_generated(root, GeneratedConfig(height=32, width=64, train_per_domain=1, val_per_domain=1,
                                                  pretrain_train=1, pretrain_val=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.lock"]


FORKING_HOLDER = """
import os, sys, time
from ldt.atomic import exclusive_lock
with exclusive_lock(sys.argv[1]):
    child = os.fork()
    if child == 0:  # as a DataLoader worker: it outlives a killed parent
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
"""


def test_a_lock_goes_with_its_process_even_when_it_forked_workers(tmp_path):
    """Forked children share the lock's open file; they must not keep it after the holder is killed."""
    import signal
    import subprocess
    import sys

    from ldt.atomic import exclusive_lock

    lock = tmp_path / ".run.lock"
    holder = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        with exclusive_lock(lock, busy="still held by {holder}"):  # the child lives on, the lock is free
            os.kill(child, 0)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_lock_file_another_user_created_still_locks(tmp_path, monkeypatch):
    """Without write access to the lock file (another user's, 0644), flock works on a read-only descriptor."""
    from ldt.atomic import BusyError, exclusive_lock

    lock = tmp_path / ".shared.lock"
    real_open = os.open

    def no_write(path, flags, *args):
        if flags & os.O_ACCMODE != os.O_RDONLY and str(path) == str(lock):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    with lock_held_elsewhere(lock) as holder:
        monkeypatch.setattr(os, "open", no_write)
        with pytest.raises(BusyError, match=f"pid {holder.pid}"):
            with exclusive_lock(lock, busy="busy: {holder}"):
                pass
    with exclusive_lock(lock, busy="busy"):  # free again: taken read-only, no pid written
        assert f"pid {holder.pid}" in lock.read_text()


def test_a_rebuild_stopped_while_removing_the_old_build_leaves_the_new_one(tmp_path, monkeypatch):
    """The old build is renamed aside before it is deleted: a kill mid-delete leaves the complete new build in place
    (it used to leave a half-deleted old one with its manifest, which the next call took as cached)."""
    import shutil

    from ldt.classification.toy import MANIFEST, build_toy_domains

    root = tmp_path / "toy"
    build_toy_domains(root, images_per_class=1, size=8, seed=0)
    real_rmtree = shutil.rmtree

    def killed_on_the_old_build(path, *args, **kwargs):
        if Path(path).name.startswith(".toy-") and (Path(path) / MANIFEST).is_file():
            if json.loads((Path(path) / MANIFEST).read_text())["seed"] == 0:
                raise KeyboardInterrupt  # as a kill while the old build is deleted
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_on_the_old_build)
    with pytest.raises(KeyboardInterrupt):
        build_toy_domains(root, images_per_class=1, size=8, seed=1)
    monkeypatch.undo()
    assert json.loads((root / MANIFEST).read_text())["seed"] == 1
    assert len(list(root.rglob("*.png"))) == 16
    build_toy_domains(root, images_per_class=1, size=8, seed=2)  # and the next build clears the leftover
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".toy-")] == []


def _no_bare_constant(name):
    raise AssertionError(f"not strict JSON: bare {name}")


def test_non_finite_floats_are_written_as_strict_json_and_read_back(tmp_path):
    """json.dumps wrote an inf PSNR as the bare token Infinity (and NaN), which jq and JavaScript refuse; the files
    are strict JSON now, and the project reads its own files (and older ones holding Infinity) back as the floats."""
    import math

    from ldt.cli import read_json, strict_json
    from ldt.sweep import Records

    value = {"psnr": float("inf"), "rows": [float("-inf"), float("nan"), 1.5], "name": "inf", "note": "Infinity"}
    text = strict_json(value, indent=1)
    plain = json.loads(text, parse_constant=_no_bare_constant)
    assert plain["psnr"] == math.inf and plain["rows"][0] == -math.inf  # 1e999: any JSON reader's infinity
    back = read_json(text)
    assert back["psnr"] == math.inf and back["rows"][0] == -math.inf and math.isnan(back["rows"][1])
    assert back["rows"][2] == 1.5 and back["name"] == "inf" and back["note"] == "Infinity"  # strings stay strings
    assert strict_json(value, indent=1) == text  # the same file for the same value
    old = tmp_path / "best.json"
    old.write_text('{"value": Infinity, "iter": 3}')  # as an earlier version wrote it
    assert read_json_object(old, ("value", "iter")) == {"value": math.inf, "iter": 3}
    records = Records(tmp_path / "results.jsonl")
    records.append({"options_hash": "h", "psnr": float("inf")})
    for line in records.path.read_text().splitlines():
        json.loads(line, parse_constant=_no_bare_constant)
    assert records.all()[0]["psnr"] == math.inf


@pytest.mark.parametrize("limit", ["file size", "quota"])
def test_a_checkpoint_that_hits_a_file_size_limit_or_a_quota_says_so(limit, tmp_path, monkeypatch):
    """torch.save's zip writer loses the errno of a write that fails: a training state over a file-size limit
    (``ulimit -f``, a batch system's) or a disk quota ended in 'cannot write …/5.state: [enforce fail at
    inline_container.cc:672] . unexpected pos 92224 vs 92116' (the free-space fallback says 'no space left' only
    of a disk that is full). Now the reason is the write's own, in words; the earlier file is intact."""
    import errno
    import subprocess
    import sys

    path = tmp_path / "5.state"
    if limit == "file size":  # a real limit, in a child (Python ignores SIGXFSZ, so the write fails with EFBIG)
        script = ("import resource, sys, torch; from ldt.atomic import DiskError, atomic_torch_save\n"
                  "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
                  "try: atomic_torch_save({'a': torch.zeros(100_000)}, sys.argv[1])\n"
                  "except DiskError as err: print(err)\n")
        path.write_bytes(b"earlier")
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=120)
        message = done.stdout.strip()
        reason = "file too large (a file-size limit: see ulimit -f)"
    else:  # a quota: the write of the open file fails (the disk itself has room, so free space tells nothing)
        import io

        import torch

        from ldt.atomic import atomic_torch_save

        real_open = open

        class OverQuota(io.RawIOBase):
            def writable(self):
                return True

            def write(self, data):
                raise OSError(errno.EDQUOT, "Disk quota exceeded")

        def quota_open(file, mode="r", *args, **kwargs):
            if "w" in mode and str(file).endswith(".tmp"):
                real_open(file, mode, *args, **kwargs).close()
                return io.BufferedWriter(OverQuota())
            return real_open(file, mode, *args, **kwargs)

        import builtins

        path.write_bytes(b"earlier")
        monkeypatch.setattr(builtins, "open", quota_open)
        with pytest.raises(DiskError) as caught:
            atomic_torch_save({"a": torch.zeros(100_000)}, path)
        monkeypatch.undo()
        message, reason = str(caught.value), "disk quota exceeded"
    assert message == f"cannot write {path}: {reason} (the previous file, if any, is intact)", message
    assert path.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["5.state"]


def test_a_record_named_nan_keeps_its_name_and_its_nan_metric(tmp_path):
    """strict_json wrote a NaN as the string 'nan' and read_json read every string 'nan' back as the float, so an
    experiment (camera, domain, method) named 'nan' (YAML 'name: nan' is a string) became a float in its record. A
    NaN is spelled so that no string is taken for it now; files of earlier versions still read."""
    import math

    from ldt.cli import read_json, strict_json
    from ldt.sweep import Records, recorded_number

    records = Records(tmp_path / "results.jsonl")
    records.append({"options_hash": "h", "name": "nan", "domains": ["nan", "fog"], "psnr": float("nan")})
    [record] = records.all()
    assert record["name"] == "nan" and record["domains"] == ["nan", "fog"] and math.isnan(record["psnr"])
    line = records.path.read_text()
    json.loads(line, parse_constant=_no_bare_constant)  # still strict JSON, which other readers see as 'nan'
    assert json.loads(line)["psnr"] == "nan"
    back = read_json('{"\\u006ean": 1, "x": "\\u006ean"}')  # a key so spelled stays a key
    assert list(back) == ["nan", "x"] and back["nan"] == 1 and math.isnan(back["x"])
    assert read_json(strict_json({'"\\u006ean"': 1})) == {'"\\u006ean"': 1}  # nor a string holding the spelling
    # the previous version's NaN (a plain 'nan') reads where a number is expected; bare NaN of older ones anywhere
    old = read_json('{"options_hash": "h", "name": "nan", "psnr": "nan", "ssim": NaN}')
    assert old["name"] == "nan" and math.isnan(recorded_number(old["psnr"])) and math.isnan(old["ssim"])
    summary = tmp_path / "tiny.json"
    summary.write_text('{"classes": 4, "name": "nan", "heldout_accuracy": "nan", "wall_s": 1.5}')
    from ldt.classification.pretrain import pretrain_summary

    read = pretrain_summary(tmp_path / "tiny.pth")
    assert read["name"] == "nan" and math.isnan(read["heldout_accuracy"]) and read["wall_s"] == 1.5
