"""The download-free synthetic camera benchmark: determinism, counts, shapes, caching, camera differences, and that
the DRealSR dataset class reads it unchanged. Everything uses the tiny build (3 small photos, well under a second)."""

from __future__ import annotations

import dataclasses
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import ldt.data  # noqa: F401  (registers the dataset into basicsr)
from basicsr.data import build_dataset
from ldt.data.cameras import (
    DatasetError, camera_of, camera_val_options, decode_image, find_split_dirs, pair_folders, parse_name,
)
from ldt.data.synthetic_cameras import (
    MANIFEST, SYNTHETIC_CAMERAS, TINY, BuildOptionError, bicubic_downsample, build_bicubic_pretrain_set, build_synthetic_cameras,
    camera_bicubic_psnr,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_synthetic_cameras.py"
CAMERA_KEYS = [camera.key for camera in SYNTHETIC_CAMERAS]


def build(root: Path, **kwargs) -> Path:
    return build_synthetic_cameras(root, tiny=True, progress=False, **kwargs)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("synthetic") / "synthetic_cameras")


def test_two_builds_are_byte_identical(tiny: Path, tmp_path: Path) -> None:
    assert files(build(tmp_path / "again")) == files(tiny)


def test_seed_changes_the_noise(tiny: Path, tmp_path: Path) -> None:
    other = files(build(tmp_path / "seed1", seed=1))
    lr_name = "x4/Test_x4/test_LR/P1000101_x1.png"
    assert other[lr_name] != files(tiny)[lr_name]


def test_counts_names_and_shapes(tiny: Path) -> None:
    photos, patches = len(TINY.photos), TINY.patches_per_image
    for split, per_camera in (("train", photos * patches), ("test", photos)):
        result = pair_folders(*find_split_dirs(tiny, split), scale=4)
        assert result.problems() == []
        assert dict(result.counts()) == {key: per_camera for key in CAMERA_KEYS}
        for pair in result.pairs:
            hr = decode_image(Path(pair.hr).read_bytes(), pair.hr)
            lr = decode_image(Path(pair.lr).read_bytes(), pair.lr)
            assert hr.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3)
            if split == "train":
                assert lr.shape[:2] == (TINY.patch_size // 4,) * 2
                assert parse_name(Path(pair.hr).name).patch in range(1, patches + 1)
            assert camera_of(pair.image_id) == pair.camera
    assert {parse_name(p.name).image_id for p in (tiny / "x4/Test_x4/test_HR").iterdir()} >= {
        "P1000101", "panasonic_101", "sony_101", "DSC_0101", "IMG_101", "Canon_101"}


def test_all_cameras_see_the_same_test_scenes(tiny: Path) -> None:
    """Same regions for every camera: HRs differ only by colour rendering, so their structure correlates strongly."""
    hr_dir = tiny / "x4/Test_x4/test_HR"
    olympus = decode_image((hr_dir / "P1000101_x4.png").read_bytes(), "o").mean(axis=2)
    sony = decode_image((hr_dir / "sony_101_x4.png").read_bytes(), "s").mean(axis=2)
    assert np.corrcoef(olympus.ravel(), sony.ravel())[0, 1] > 0.95 and not np.array_equal(olympus, sony)


def test_cameras_differ_measurably(tiny: Path) -> None:
    psnr = camera_bicubic_psnr(tiny)
    assert list(psnr) == CAMERA_KEYS
    assert all(10 < value < 40 for value in psnr.values())
    assert max(psnr.values()) - min(psnr.values()) > 0.5


def test_second_build_is_a_cached_no_op(tmp_path: Path) -> None:
    root = build(tmp_path / "cache")
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    build(root)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_changed_camera_table_or_missing_file_rebuilds(tmp_path: Path) -> None:
    root = build(tmp_path / "cache")
    before = files(root)
    cameras = list(SYNTHETIC_CAMERAS)
    cameras[1] = dataclasses.replace(cameras[1], jpeg_quality=50)
    after = files(build(root, cameras=cameras))
    changed = {name for name in before if before[name] != after[name]}
    assert MANIFEST in changed and any("panasonic" in name for name in changed)
    assert not any("sony" in name for name in changed)  # other cameras' streams do not depend on the table order
    (root / "x4/Test_x4/test_LR/sony_101_x1.png").unlink()
    assert files(build(root)) == before  # missing file -> rebuilt, and back to the default table


def test_interrupted_build_is_redone_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    root = build(tmp_path / "cache")
    manifest = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    (root / "x4/Train_x4/train_HR/stray.png").write_bytes(b"left over")
    build(root)
    assert not (root / "x4/Train_x4/train_HR/stray.png").exists()
    assert json.loads((root / MANIFEST).read_text())["complete"]
    foreign = tmp_path / "foreign"
    (foreign / "x4").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no synthetic_cameras.json"):
        build(foreign)


def test_a_folder_of_another_scale_beside_a_build_is_refused_and_kept(tmp_path: Path) -> None:
    """A build's manifest vouches for its own x<scale> only: after an x2 build into a DRealSR download, an x4 build
    wrote into the download's x4, and the next rebuild deleted that x4 whole."""
    root = tmp_path / "DRealSR"
    mine = root / "x4" / "Train_x4" / "train_HR" / "P1000001_x4_1.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"a real photo")
    build(root, scale=2)  # no x2 there: built beside the download
    before = files(root / "x4")
    with pytest.raises(DatasetError, match=r"DRealSR/x4 exists but is not the build its synthetic_cameras.json "
                                           r"describes \(.*DRealSR/x2\); refusing to overwrite it"):
        build(root)
    assert files(root / "x4") == before and (root / "x2").is_dir()  # nothing changed, the x2 build kept too


def test_bad_table_entries_are_rejected(tmp_path: Path) -> None:
    cameras = [dataclasses.replace(SYNTHETIC_CAMERAS[0], id_format="olympus_{}")]
    with pytest.raises(DatasetError, match="does not match its pattern"):
        build(tmp_path / "bad", cameras=cameras)
    with pytest.raises(DatasetError, match="not a multiple of scale"):
        build(tmp_path / "bad", patch_size=30)


@pytest.mark.parametrize("options, option", [
    (dict(patch_size=0), "patch_size"), (dict(patches_per_image=0), "patches_per_image"),  # not the defaults
    (dict(patches_per_image=-1), "patches_per_image"), (dict(patch_size=-4), "patch_size"),
    (dict(patch_size=10000), "patch_size"), (dict(scale=0), "scale"), (dict(scale=-1), "scale"),
    (dict(seed=-1), "seed"), (dict(scale=3), "patch_size"), (dict(patch_size=2.0), "patch_size"),
    (dict(scale=16), "patch_size"), (dict(patch_size=16), "patch_size"),  # validation metrics would be NaN
])
def test_bad_build_options_name_the_option_and_keep_the_old_build(tiny: Path, tmp_path: Path, options,
                                                                  option: str) -> None:
    root = Path(shutil.copytree(tiny, tmp_path / "copy"))
    before = files(root)
    with pytest.raises(BuildOptionError) as info:
        build(root, **options)
    assert info.value.option == option and str(info.value).startswith(f"{option}: ")
    assert isinstance(info.value, DatasetError)
    assert files(root) == before  # refused before the earlier build was cleared
    with pytest.raises(BuildOptionError, match="patches_per_image: must be positive"):
        build_bicubic_pretrain_set(tmp_path / "bicubic", tiny=True, progress=False, patches_per_image=0)
    assert not (tmp_path / "bicubic").exists()


def test_bicubic_pretrain_set(tmp_path: Path) -> None:
    root = build_bicubic_pretrain_set(tmp_path / "bicubic", tiny=True, progress=False)
    result = pair_folders(*find_split_dirs(root, "train"), scale=4)
    assert dict(result.counts()) == {"bicubic": len(TINY.photos) * 2 * TINY.patches_per_image}
    pair = result.pairs[0]
    hr = decode_image(Path(pair.hr).read_bytes(), pair.hr)
    lr = decode_image(Path(pair.lr).read_bytes(), pair.lr)
    inner = np.abs(bicubic_downsample(hr, 4) - lr)[2:-2, 2:-2]  # patch borders saw more context when built
    assert inner.mean() < 2 / 255
    assert camera_bicubic_psnr(root)["bicubic"] > max(camera_bicubic_psnr(build(tmp_path / "cams")).values())


def test_bicubic_downsample_preserves_constants_and_ramps() -> None:
    ramp = np.tile(np.arange(32, dtype=np.float32)[None, :, None], (16, 1, 3))
    out = bicubic_downsample(ramp, 4)
    assert out.shape == (4, 8, 3)
    assert np.allclose(out[:, 2:-2, 0], (np.arange(8) * 4 + 1.5)[2:-2])  # pixel centres of the 4-px cells
    assert np.allclose(bicubic_downsample(np.full((8, 8, 3), 0.3, np.float32), 4), 0.3)


def test_dataset_reads_the_benchmark(tiny: Path) -> None:
    train = build_dataset({"name": "src", "type": "DRealSRCameraDataset", "dataroot": str(tiny), "split": "train",
                           "cameras": ["olympus"], "scale": 4, "gt_size": 16, "use_hflip": True, "use_rot": True,
                           "io_backend": {"type": "disk"}, "phase": "train"})
    assert len(train) == len(TINY.photos) * TINY.patches_per_image and train[0]["gt"].shape == (3, 16, 16)
    for options in camera_val_options(tiny, ["pan", "sony", "dsc", "img", "canon"]).values():
        val = build_dataset({**options, "phase": "val"})
        item = val[0]
        assert len(val) == len(TINY.photos) and item["gt"].shape[1:] == tuple(4 * n for n in item["lq"].shape[1:])


@pytest.mark.parametrize("manifest", ["unfinished", "unreadable"])
@pytest.mark.parametrize("option", ["dataroot", "dataroot_gt"])
def test_a_dataset_on_a_build_that_did_not_finish_names_it(tiny: Path, tmp_path: Path, manifest: str,
                                                           option: str) -> None:
    """A build stopped midway (SIGTERM in build_synthetic_cameras.py: its manifest says unfinished) was read as it
    was: training and validation on part of the benchmark, without a word."""
    root = tmp_path / "cams"
    shutil.copytree(tiny, root)
    written = json.loads((root / MANIFEST).read_text())
    (root / MANIFEST).write_text(json.dumps({**written, "complete": False}) if manifest == "unfinished" else "{")
    folders = {"dataroot": str(root)} if option == "dataroot" else {
        "dataroot_gt": str(root / "x4" / "Train_x4" / "train_HR"), "dataroot_lq": str(root / "x4" / "Train_x4" / "train_LR")}
    place = f"{root} is" if option == "dataroot" else f"{folders['dataroot_gt']} is in {root},"
    options = {"name": "src", "type": "DRealSRCameraDataset", "split": "train", "cameras": ["olympus"], "scale": 4,
               "gt_size": 16, "io_backend": {"type": "disk"}, "phase": "train", **folders}
    with pytest.raises(DatasetError, match=rf"^{place} a generated benchmark whose build did not finish "):
        build_dataset(options)
    (root / MANIFEST).write_text(json.dumps(written))  # finished: read
    assert len(build_dataset(options)) == len(TINY.photos) * TINY.patches_per_image


def test_build_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    argv = [str(SCRIPT), "--tiny", "--no-progress", "--root", str(tmp_path / "c"), "--bicubic",
            "--bicubic-root", str(tmp_path / "b")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code is None
    out = capsys.readouterr().out
    assert "camera benchmark:" in out and "| olympus | Olympus |" in out and "| bicubic | - |" in out
