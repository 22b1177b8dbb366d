"""DRealSR discovery, camera naming, pairing, validation, the BasicSR dataset and LMDB, on tiny generated folders
that use real DRealSR names (doubled test folder, unpaired/corrupt/mis-scaled files, gray/16-bit/alpha images)."""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import ldt.data  # noqa: F401  (registers the dataset into basicsr)
from basicsr.data import build_dataset
from basicsr.utils import FileClient
from basicsr.utils.registry import DATASET_REGISTRY
from ldt.data.cameras import (
    DatasetError, camera_label, camera_of, camera_val_options, collect_pairs, decode_image, find_split_dirs,
    held_out_split, lmdb_paths, pair_names, parse_name, ParsedName, read_lmdb_meta, resolve_cameras,
)
from ldt.data.indexing import write_lmdb, write_meta_info

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "index_drealsr.py"
TRAIN_IDS = {"P1000001": 2, "P1000002": 2, "P1000003": 2, "P1000004": 2, "panasonic_7": 2}  # id -> patches
TEST_IDS = ("P1180001", "P1180002", "panasonic_3", "sony_4", "DSC_0005", "IMG_0006", "IMG_0007", "Canon_8")
EXCESS = {"DSC_0005": 3}  # HR a few px larger than LR x 4, as in DRealSR


def _image(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth random 8-bit BGR image, so area-downsampled LR and HR stay comparable after cropping."""
    small = np.random.default_rng(seed).integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _write_pair(hr_dir: Path, lr_dir: Path, image_id: str, suffix: str, seed: int, lr_size: tuple[int, int]) -> None:
    excess = EXCESS.get(image_id, 0)
    hr = _image(seed, lr_size[0] * 4 + excess, lr_size[1] * 4 + excess)
    lr = cv2.resize(hr[: lr_size[0] * 4, : lr_size[1] * 4], lr_size[::-1], interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(hr_dir / f"{image_id}_x4{suffix}.png"), hr)
    cv2.imwrite(str(lr_dir / f"{image_id}_x1{suffix}.png"), lr)


def make_drealsr(root: Path) -> Path:
    """Release layout for train; the doubled ``Test_x4/Test_x4`` folder some unpacked copies have for test."""
    train = root / "x4" / "Train_x4"
    test = root / "x4" / "Test_x4" / "Test_x4"
    for folder in (train / "train_HR", train / "train_LR", test / "test_HR", test / "test_LR"):
        folder.mkdir(parents=True)
    seed = 0
    for image_id, patches in TRAIN_IDS.items():
        for k in range(1, patches + 1):
            seed += 1
            _write_pair(train / "train_HR", train / "train_LR", image_id, f"_{k}", seed, (8, 8))
    for image_id in TEST_IDS:
        seed += 1
        _write_pair(test / "test_HR", test / "test_LR", image_id, "", seed, (12, 10))
    return root


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_drealsr(tmp_path_factory.mktemp("clean") / "DRealSR")


@pytest.fixture
def root(clean_root: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(clean_root, tmp_path / "DRealSR"))


def dataset(root: Path | str, split: str = "test", cameras=("olympus",), phase: str | None = None, **opt):
    options = {"name": "t", "type": "DRealSRCameraDataset", "dataroot": str(root), "split": split,
               "cameras": list(cameras) if not isinstance(cameras, str) else cameras, "scale": 4,
               "io_backend": {"type": "disk"}, **opt}
    if phase:
        options["phase"] = phase
    return build_dataset(options)


# ------------------------------------------------------------------------------------------------- names, cameras


@pytest.mark.parametrize("image_id, camera", [
    ("P1180001", "olympus"), ("panasonic_12", "pan"), ("sony_4", "sony"), ("DSC_0005", "dsc"), ("IMG_0006", "img"),
    ("Canon_8", "canon"), ("bicubic_3", "bicubic"),
    ("P118000", None), ("xP1180001", None), ("DSC_00051", None), ("Panasonic_1", None), ("IMG_", None),
])
def test_camera_patterns_are_anchored(image_id: str, camera: str | None) -> None:
    assert camera_of(image_id) == camera


def test_parse_name() -> None:
    assert parse_name("DSC_1454_x4_12.png") == ParsedName("DSC_1454", 4, 12)
    assert parse_name("DSC_1454_x1_12.png").key == parse_name("DSC_1454_x4_12.png").key == "DSC_1454_12"
    assert parse_name("panasonic_3_x1.png").key == "panasonic_3"
    assert parse_name("Canon_8.png").tag is None


def test_resolve_cameras_and_labels() -> None:
    assert resolve_cameras(None) == ("olympus", "pan", "sony", "dsc", "img", "canon")
    assert resolve_cameras("canon_all") == ("img", "canon")
    assert resolve_cameras(["olympus", "pan", "olympus"]) == ("olympus", "pan")
    assert resolve_cameras("targets") == ("pan", "sony", "dsc", "img", "canon")
    assert camera_label("pan") == "Pan" and camera_label("canon_all") == "IMG+Canon"
    with pytest.raises(DatasetError, match="unknown camera 'nikon'"):
        resolve_cameras(["nikon"])


# ------------------------------------------------------------------------------------------------------ discovery


def test_find_split_dirs_release_and_doubled_layout(clean_root: Path) -> None:
    assert find_split_dirs(clean_root, "train") == (clean_root / "x4/Train_x4/train_HR",
                                                     clean_root / "x4/Train_x4/train_LR")
    hr, lr = find_split_dirs(clean_root, "test")
    assert hr == clean_root / "x4/Test_x4/Test_x4/test_HR" and lr.name == "test_LR"
    assert find_split_dirs(clean_root / "x4" / "Test_x4", "test") == (hr, lr)  # dataroot at any level
    with pytest.raises(DatasetError, match="no train split for x2"):
        find_split_dirs(clean_root, "train", scale=2)


def test_find_split_dirs_hr_lr_names(tmp_path: Path) -> None:
    for name in ("Train_x4/HR", "Train_x4/LR", "Test_x4/HR", "Test_x4/LR"):
        (tmp_path / name).mkdir(parents=True)
    assert find_split_dirs(tmp_path, "test") == (tmp_path / "Test_x4/HR", tmp_path / "Test_x4/LR")
    assert find_split_dirs(tmp_path, "train")[0] == tmp_path / "Train_x4/HR"


def test_find_split_dirs_follows_symlinked_folders_once(tmp_path: Path) -> None:
    """A download whose x4 (or Test_x4) is a symlink to another disk was 'no test split for x4 under ROOT: looked
    for Test_x4/test_HR … up to 5 folders deep' (os.walk does not follow folder symlinks); a symlink loop below
    them is not searched twice (which would be 'several test folders')."""
    for name in ("data/x4/Test_x4/test_HR", "data/x4/Test_x4/test_LR", "root/x4"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "root" / "x4" / "Test_x4").symlink_to(tmp_path / "data" / "x4" / "Test_x4")
    (tmp_path / "data" / "x4" / "Test_x4" / "test_HR" / "loop").symlink_to("..")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x4").symlink_to(tmp_path / "data" / "x4")
    assert find_split_dirs(tmp_path / "root", "test") == (tmp_path / "root/x4/Test_x4/test_HR",
                                                          tmp_path / "root/x4/Test_x4/test_LR")
    assert find_split_dirs(tmp_path / "other", "test")[0] == tmp_path / "other/x4/Test_x4/test_HR"
    assert find_split_dirs(tmp_path / "data", "test")[0] == tmp_path / "data/x4/Test_x4/test_HR"


def test_find_split_dirs_errors(clean_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        find_split_dirs(tmp_path / "missing", "test")
    with pytest.raises(DatasetError, match="no test split"):
        find_split_dirs(clean_root / "x4" / "Train_x4", "test")
    with pytest.raises(DatasetError, match="'split' must be one of"):
        find_split_dirs(clean_root, "val")
    for name in ("a/Test_x4/test_HR", "a/Test_x4/test_LR", "b/Test_x4/test_HR", "b/Test_x4/test_LR"):
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(DatasetError, match="several test folders"):
        find_split_dirs(tmp_path, "test")


# -------------------------------------------------------------------------------------------------------- pairing


def test_pairing_is_by_name_not_by_sorted_order() -> None:
    """Sorted-order pairing would pair b_x4 with c_x1 here; name pairing reports b as unpaired instead."""
    result = pair_names(["P1000001_x4.png", "P1000002_x4.png", "P1000003_x4.png"],
                        ["P1000001_x1.png", "P1000003_x1.png", "sony_1_x1.png"], scale=4)
    assert [(p.hr, p.lr) for p in result.pairs] == [("P1000001_x4.png", "P1000001_x1.png"),
                                                    ("P1000003_x4.png", "P1000003_x1.png")]
    assert result.unpaired_hr == ["P1000002_x4.png"] and result.unpaired_lr == ["sony_1_x1.png"]
    assert result.problems(["sony"]) == ["1 LR file(s) without an HR partner: sony_1_x1.png"]


def test_pairing_reports_wrong_tags_and_duplicates() -> None:
    result = pair_names(["P1000001_x2.png", "P1000002_x4.png", "P1000002_x4.jpg"],
                        ["P1000001_x1.png", "P1000002_x1.png"], scale=4)
    reasons = dict(result.misnamed)
    assert "expected _x4" in reasons["P1000001_x2.png"] and "duplicate" in reasons["P1000002_x4.png"]


def test_pair_counts_per_camera(clean_root: Path) -> None:
    test = collect_pairs(dataroot=clean_root, split="test", cameras="all")
    counts = {cam: sum(p.camera == cam for p in test.pairs) for cam in resolve_cameras("all")}
    assert counts == {"olympus": 2, "pan": 1, "sony": 1, "dsc": 1, "img": 2, "canon": 1}
    train = collect_pairs(dataroot=clean_root, split="train", cameras=["olympus"])
    assert len(train.pairs) == 8 and {p.camera for p in train.pairs} == {"olympus"}


# -------------------------------------------------------------------------------------------------------- dataset


def test_dataset_is_registered_and_built_by_type_name(clean_root: Path) -> None:
    from basicsr.data import build_dataset

    from ldt.data.drealsr_dataset import DRealSRCameraDataset

    assert DATASET_REGISTRY.get("DRealSRCameraDataset") is DRealSRCameraDataset
    built = build_dataset({"name": "x", "type": "DRealSRCameraDataset", "dataroot": str(clean_root), "split": "train",
                           "cameras": ["olympus"], "phase": "val", "scale": 4})
    assert isinstance(built, DRealSRCameraDataset) and {p.camera for p in built.pairs} == {"olympus"}


def test_train_items_are_aligned_random_crops(clean_root: Path) -> None:
    data = dataset(clean_root, "train", ["olympus", "pan"], phase="train", gt_size=16, use_hflip=True, use_rot=True)
    assert len(data) == 10 and data.cameras == ("olympus", "pan")
    for index in range(len(data)):
        item = data[index]
        assert item.keys() == {"lq", "gt", "lq_path", "gt_path", "camera"}
        assert item["lq"].shape == (3, 4, 4) and item["gt"].shape == (3, 16, 16)
        assert camera_of(parse_name(Path(item["gt_path"]).name).image_id) == item["camera"]
        gt = item["gt"].permute(1, 2, 0).numpy()
        down = cv2.resize(gt, (4, 4), interpolation=cv2.INTER_AREA)
        assert np.abs(down - item["lq"].permute(1, 2, 0).numpy()).mean() < 0.02  # same place, same flips


def test_default_gt_size_is_lr_48(clean_root: Path) -> None:
    with pytest.raises(DatasetError, match="smaller than the LR patch 48"):
        dataset(clean_root, "train", phase="train")


def test_validation_crops_larger_hr(clean_root: Path) -> None:
    item = dataset(clean_root, "test", ["dsc"], phase="val")[0]
    assert item["lq"].shape == (3, 12, 10) and item["gt"].shape == (3, 48, 40)
    assert Path(item["gt_path"]).name == "DSC_0005_x4.png" and item["camera"] == "dsc"


def test_held_out_is_deterministic_disjoint_and_by_image(clean_root: Path) -> None:
    pairs = collect_pairs(dataroot=clean_root, split="train", cameras="olympus").pairs
    held = held_out_split(pairs, 0.25, seed=3, part="holdout")
    rest = held_out_split(pairs, 0.25, seed=3, part="train")
    assert held == held_out_split(pairs, 0.25, seed=3, part="holdout")
    assert {p.key for p in held}.isdisjoint(p.key for p in rest) and len(held) + len(rest) == len(pairs)
    assert {p.image_id for p in held}.isdisjoint(p.image_id for p in rest)  # patches of a photo stay together
    assert len({p.image_id for p in held}) == 1
    data = dataset(clean_root, "train", held_out={"fraction": 0.25, "seed": 3, "part": "holdout"})
    assert len(data) == 2 and not data.train and data[0]["lq"].shape == (3, 8, 8)  # whole patches, no crop
    with pytest.raises(DatasetError, match="held_out.part"):
        dataset(clean_root, "train", held_out={"fraction": 0.25, "part": "val"})


def test_camera_val_options(clean_root: Path) -> None:
    cameras = ["pan", "sony", "dsc", "img", "canon", "canon_all"]
    options = camera_val_options(clean_root, cameras, name_prefix="DRealSR_")
    assert list(options) == [f"val_{i}" for i in range(1, 7)]
    assert options["val_1"] == {"name": "DRealSR_Pan", "type": "DRealSRCameraDataset", "dataroot": str(clean_root),
                                "split": "test", "cameras": ["pan"], "scale": 4, "io_backend": {"type": "disk"}}
    assert options["val_6"]["cameras"] == ["img", "canon"] and options["val_6"]["name"] == "DRealSR_IMG+Canon"
    sizes = [len(build_dataset({**opt, "phase": "val"})) for opt in options.values()]
    assert sizes == [1, 1, 1, 2, 1, 3]


# ---------------------------------------------------------------------------------------------------- bad input


def test_missing_root_and_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataroot .*missing does not exist"):
        dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="set both dataroot_gt and dataroot_lq"):
        dataset(tmp_path, dataroot_gt=str(tmp_path))


def test_camera_without_pairs(clean_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"no pairs for camera\(s\) sony"):
        dataset(clean_root, "train", ["olympus", "sony"], phase="train", gt_size=16)


def test_unpaired_files_are_listed(root: Path) -> None:
    hr_dir, lr_dir = find_split_dirs(root, "test")
    (lr_dir / "P1180002_x1.png").unlink()
    (hr_dir / "sony_4_x4.png").unlink()
    with pytest.raises(DatasetError, match=r"1 HR file\(s\) without an LR partner: P1180002_x4.png"):
        dataset(root)
    with pytest.raises(DatasetError, match=r"LR file\(s\) without an HR partner: sony_4_x1.png"):
        dataset(root, cameras=["sony"])
    assert len(dataset(root, cameras=["pan"])) == 1  # other cameras' problems do not block
    assert len(dataset(root, strict=False)) == 1  # skipped with a warning


@pytest.mark.parametrize("remove, said", [("test_HR/sony_4_x4.png", "1 LR file(s) without an HR partner: sony_4_x1.png"),
                                          ("*/P*.png", "no pairs for camera(s) olympus")])
def test_a_pairing_problem_of_a_run_s_set_names_its_block(remove, said, root: Path) -> None:
    """'1 LR file(s) without an HR partner' (and 'no pairs for camera(s)') named the folders, not the set, where a
    PairedImageDataset's line names its ``datasets:KEY (NAME)`` block."""
    from ldt.sr.loaders import dataset as run_dataset

    for path in find_split_dirs(root, "test")[0].parent.glob(remove):
        path.unlink()
    block = {"name": "olympus_sony", "type": "DRealSRCameraDataset", "dataroot": str(root), "split": "test",
             "cameras": ["olympus", "sony"], "scale": 4, "phase": "val", "io_backend": {"type": "disk"}}
    with pytest.raises(DatasetError) as err:
        run_dataset({"datasets": {"val_2": block}}, "val_2")
    assert str(err.value).startswith("datasets:val_2 (olympus_sony): "), err.value
    assert said in str(err.value)


def test_mis_scaled_pair(root: Path) -> None:
    hr_dir, lr_dir = find_split_dirs(root, "test")
    hr = cv2.imread(str(hr_dir / "P1180001_x4.png"))
    cv2.imwrite(str(lr_dir / "P1180001_x1.png"), cv2.resize(hr, None, fx=0.5, fy=0.5))
    with pytest.raises(DatasetError, match=r"P1180001_x4.png / .*P1180001_x1.png: HR size \(48, 40\) does not match"):
        dataset(root)
    data = dataset(root, check_sizes=False)  # not checked up front: caught when read
    with pytest.raises(DatasetError, match="P1180001_x4.png"):
        data[0]


def test_corrupt_file_is_named(root: Path) -> None:
    hr_dir, _ = find_split_dirs(root, "test")
    (hr_dir / "P1180002_x4.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="cannot read image .*P1180002_x4.png"):
        dataset(root)
    data = dataset(root, check_sizes=False)
    assert data[0]["gt"].shape == (3, 48, 40)
    with pytest.raises(DatasetError, match="cannot decode image .*P1180002_x4.png"):
        data[1]


def test_gray_alpha_and_16_bit_images_become_8_bit_bgr(root: Path) -> None:
    hr_dir, lr_dir = find_split_dirs(root, "test")
    hr6 = cv2.imread(str(hr_dir / "IMG_0006_x4.png"))
    cv2.imwrite(str(hr_dir / "IMG_0006_x4.png"), hr6.astype(np.uint16) * 257)  # 16-bit
    lr6 = cv2.cvtColor(cv2.imread(str(lr_dir / "IMG_0006_x1.png")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(lr_dir / "IMG_0006_x1.png"), lr6)  # grayscale
    hr7 = cv2.imread(str(hr_dir / "IMG_0007_x4.png"))
    cv2.imwrite(str(hr_dir / "IMG_0007_x4.png"), np.dstack([hr7, np.full(hr7.shape[:2], 77, np.uint8)]))  # alpha
    assert cv2.imread(str(hr_dir / "IMG_0006_x4.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    first, second = dataset(root, cameras=["img"])
    assert np.array_equal(first["gt"].numpy(), hr6[..., ::-1].transpose(2, 0, 1) / np.float32(255))
    assert np.array_equal(first["lq"].numpy(), np.stack([lr6] * 3) / np.float32(255))
    assert np.array_equal(second["gt"].numpy(), hr7[..., ::-1].transpose(2, 0, 1) / np.float32(255))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_images_decode_as_basicsr_reads_them(channels: int) -> None:
    """BasicSR's PairedImageDataset (the official training's reader) decodes with cv2.IMREAD_COLOR, which keeps the
    high byte of a 16-bit sample; every one of the 65536 values, gray, BGR and BGRA, must come out the same here."""
    values = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    image = np.dstack([values, values[::-1], values.T, values[:, ::-1]][:channels])
    ok, encoded = cv2.imencode(".png", image)
    assert ok and cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).dtype == np.uint16
    basicsr = cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(np.float32) / 255.0
    assert np.array_equal(decode_image(encoded.tobytes(), "deep.png"), basicsr)


def test_lmdb_keys_are_basicsrs_own(tmp_path: Path) -> None:
    """The key and scale checks look up each meta_info.txt line under the key BasicSR's PairedImageDataset derives
    from it (basicsr.data.data_util.paired_paths_from_lmdb), a name of several dots and one of none included."""
    from basicsr.data.data_util import paired_paths_from_lmdb

    from ldt.data.cameras import basicsr_lmdb_meta

    lines = "baby.png (64,48,3) 1\nbird.x4.png (64,48,3) 1\nowl (64,48,3) 1\n"
    for name in ("gt.lmdb", "lq.lmdb"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta_info.txt").write_text(lines)
    basicsr = paired_paths_from_lmdb([str(tmp_path / "lq.lmdb"), str(tmp_path / "gt.lmdb")], ["lq", "gt"])
    assert list(basicsr_lmdb_meta(tmp_path / "gt.lmdb")) == [pair["gt_path"] for pair in basicsr] == \
        ["baby", "bird", "owl (64,48,3) 1\n"]


def test_decode_image_errors() -> None:
    with pytest.raises(DatasetError, match="cannot read image x.png: no data"):
        decode_image(None, "x.png")
    with pytest.raises(DatasetError, match="cannot decode image y.png"):
        decode_image(b"garbage", "y.png")


# ---------------------------------------------------------------------------------------------- LMDB, meta info


def test_lmdb_round_trip(clean_root: Path, tmp_path: Path) -> None:
    lmdb_root = tmp_path / "lmdb"
    for split in ("train", "test"):
        pairs = collect_pairs(dataroot=clean_root, split=split, cameras=["olympus", "pan"]).pairs
        written = write_lmdb(pairs, lmdb_root, split, 4)
        assert written["pan"] == lmdb_paths(lmdb_root, split, 4, "pan")
    hr_db, lr_db = lmdb_paths(lmdb_root, "test", 4, "olympus")
    assert hr_db == lmdb_root / "x4/test/olympus_HR.lmdb"
    assert (hr_db / "meta_info.txt").read_text().splitlines() == ["P1180001_x4.png (48,40,3) 0",
                                                                  "P1180002_x4.png (48,40,3) 0"]
    assert read_lmdb_meta(lr_db) == {"P1180001_x1.png": (12, 10, 3), "P1180002_x1.png": (12, 10, 3)}
    client = FileClient("lmdb", db_paths=[str(hr_db)], client_keys=["gt"])  # plain basicsr reads our keys
    assert client.get("P1180001_x4", "gt") == (find_split_dirs(clean_root, "test")[0] / "P1180001_x4.png").read_bytes()
    client.client._client["gt"].close()  # py-lmdb allows one open environment per file and process

    disk = {item["gt_path"].rsplit("/", 1)[-1][:-4]: item for item in dataset(clean_root, cameras=["olympus", "pan"])}
    lmdb = dataset(lmdb_root, cameras=["olympus", "pan"], io_backend={"type": "lmdb"})
    assert len(lmdb) == len(disk) == 3
    for item in lmdb:
        assert np.array_equal(item["gt"].numpy(), disk[item["gt_path"]]["gt"].numpy())
        assert np.array_equal(item["lq"].numpy(), disk[item["gt_path"]]["lq"].numpy())
    train = dataset(lmdb_root, "train", ["pan"], phase="train", gt_size=16, io_backend={"type": "lmdb"})
    assert len(train) == 2 and train[1]["gt"].shape == (3, 16, 16) and train[1]["camera"] == "pan"
    # A second dataset on the same LMDB in this process, then forked DataLoader workers: py-lmdb >= 3 forbids
    # opening an environment twice per process, so the dataset must share and re-open environments correctly.
    held = dataset(lmdb_root, "train", ["pan"], phase="val", io_backend={"type": "lmdb"})
    assert held[0]["gt"].shape == (3, 32, 32)
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=1, multiprocessing_context="fork")
    assert next(iter(loader))["gt"].shape == (2, 3, 16, 16)

    with pytest.raises(DatasetError, match="sony_HR.lmdb does not exist"):
        dataset(lmdb_root, cameras=["sony"], io_backend={"type": "lmdb"})
    with pytest.raises(DatasetError, match="already exists"):
        write_lmdb(pairs, lmdb_root, "test", 4)


@pytest.mark.parametrize("damage, message", [
    ("delete_key", r"olympus_HR.lmdb lacks 1 of the 2 image\(s\) its meta_info.txt lists \(P1180002_x4\): a half-written"),
    ("cut_short", r"olympus_HR.lmdb cannot be opened \(.*MDB_INVALID.*\): a damaged or half-written database"),
])
def test_a_half_written_lmdb_is_refused_when_the_dataset_is_built(clean_root: Path, tmp_path: Path, damage: str,
                                                                  message: str) -> None:
    """A key that meta_info.txt lists but the database lacks (a writer killed between its meta-info line and its
    commit), or a data.mdb cut short, was met only when the pair was read: at the first validation, after training."""
    import lmdb

    write_lmdb(collect_pairs(dataroot=clean_root, split="test", cameras=["olympus"]).pairs, tmp_path, "test", 4)
    hr_db = lmdb_paths(tmp_path, "test", 4, "olympus")[0]
    if damage == "delete_key":
        with lmdb.open(str(hr_db)) as env, env.begin(write=True) as txn:
            txn.delete(b"P1180002_x4")
    else:
        (hr_db / "data.mdb").write_bytes((hr_db / "data.mdb").read_bytes()[:100])
    with pytest.raises(DatasetError, match=message):
        dataset(tmp_path, cameras=["olympus"], io_backend={"type": "lmdb"})


def test_meta_info_files_restrict_pairs(clean_root: Path, tmp_path: Path) -> None:
    pairs = collect_pairs(dataroot=clean_root, split="test", cameras="canon_all").pairs
    paths = write_meta_info(pairs, tmp_path, "test", 4)
    assert [p.name for p in paths] == ["DRealSR_x4_test_canon.txt", "DRealSR_x4_test_img.txt"]
    assert paths[0].read_text() == "Canon_8_x4.png Canon_8_x1.png\n"
    assert len(dataset(clean_root, cameras="canon_all", meta_info_file=str(paths[1]))) == 2


# --------------------------------------------------------------------------------------------------------- script


def run_script(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return exit_info.value.code


def test_index_script(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert run_script(monkeypatch, "--help") == 0
    assert "--lmdb DIR" in capsys.readouterr().out
    hr_dir, lr_dir = find_split_dirs(root, "test")
    (lr_dir / "sony_4_x1.png").unlink()
    (hr_dir / "Canon_8_x4.png").write_bytes(b"corrupt")
    code = run_script(monkeypatch, str(root), "--check-sizes", "--meta-info", str(tmp_path / "meta"),
                      "--lmdb", str(tmp_path / "lmdb"))
    out = capsys.readouterr().out
    assert code == 1
    assert "| olympus | `P\\d{7}` | Olympus | 8 | 2 | 19 |" in out
    assert "| sony | `sony_\\d+` | Sony | 0 | 0 | 17 |" in out
    assert "HR file(s) without an LR partner: sony_4_x4.png" in out and "Canon_8_x4.png" in out
    assert not lmdb_paths(tmp_path / "lmdb", "test", 4, "canon")[0].exists()  # the corrupt pair is left out
    assert read_lmdb_meta(lmdb_paths(tmp_path / "lmdb", "train", 4, "pan")[0]) == {
        "panasonic_7_x4_1.png": (32, 32, 3), "panasonic_7_x4_2.png": (32, 32, 3)}
    assert (tmp_path / "meta" / "DRealSR_x4_test_dsc.txt").read_text() == "DSC_0005_x4.png DSC_0005_x1.png\n"
    # The total row sums the rows shown: with --cameras, the selected cameras only.
    assert run_script(monkeypatch, str(root), "--cameras", "olympus") == 1
    assert "| total | | | 8 | 2 | 19 |" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- image formats


def _exif_jpeg(path: Path, bgr: np.ndarray, orientation: int | None) -> None:
    """``bgr`` as a JPEG whose EXIF says ``orientation`` (the pixels are stored as given, the tag tells viewers
    and cv2.imread how to turn them), as a phone or camera writes it."""
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(path, quality=95, exif=exif.tobytes())


def test_pairs_whose_exif_orientations_differ_are_refused(root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An HR JPEG tagged 'rotate 90' and an LR made from it by a tool that applied the tag (cv2.imread, a viewer's
    export) hold pixels in different orientations: read as stored they are a rotated pair; a square one even passes
    the scale check and trains on misaligned patches. Refused, with both files and tags named, before any work."""
    hr_dir, lr_dir = find_split_dirs(root, "test")
    hr = _image(5, 48, 48)
    for stale in (hr_dir / "P1180001_x4.png", lr_dir / "P1180001_x1.png"):
        stale.unlink()
    _exif_jpeg(hr_dir / "P1180001_x4.jpg", hr, 6)
    upright = cv2.imread(str(hr_dir / "P1180001_x4.jpg"))  # cv2.imread applies the tag, as BasicSR's reader does
    assert upright.shape == (48, 48, 3) and not np.allclose(upright, cv2.imread(str(hr_dir / "P1180001_x4.jpg"),
                                                                                   cv2.IMREAD_UNCHANGED), atol=40)
    cv2.imwrite(str(lr_dir / "P1180001_x1.png"), cv2.resize(upright, (12, 12), interpolation=cv2.INTER_AREA))
    message = r"P1180001_x4.jpg / .*P1180001_x1.png: HR has EXIF orientation 6 \(rotate 90 CW\), LR 1"
    with pytest.raises(DatasetError, match=message):
        dataset(root)
    data = dataset(root, check_sizes=False)  # not checked up front: caught when read
    with pytest.raises(DatasetError, match=message):
        data[0]
    assert run_script(monkeypatch, str(root), "--check-sizes", "--cameras", "olympus") == 1
    assert "HR has EXIF orientation 6" in capsys.readouterr().out
    pairs = collect_pairs(dataroot=root, split="test", cameras=["olympus"], check_sizes=False).pairs
    with pytest.raises(DatasetError, match=message):  # an LMDB would find it only when read, mid-epoch
        write_lmdb(pairs, tmp_path / "lmdb", "test", 4)
    assert not (tmp_path / "lmdb").exists()

    # The same tag on both sides (both straight from one camera): the pixels agree, read as stored.
    _exif_jpeg(lr_dir / "P1180001_x1.jpg", cv2.resize(hr, (12, 12), interpolation=cv2.INTER_AREA), 6)
    (lr_dir / "P1180001_x1.png").unlink()
    item = dataset(root)[0]
    assert item["gt_path"].endswith("P1180001_x4.jpg") and item["lq"].shape == (3, 12, 12)


def test_webp_images_are_read_and_checked(root: Path) -> None:
    """WebP (which cv2 and PIL decode) was not an image extension: a WebP LR folder gave 'HR file(s) without an LR
    partner' for every pair, the WebP files never mentioned. A truncated WebP is caught by the header check."""
    hr_dir, lr_dir = find_split_dirs(root, "test")
    for name in ("P1180001_x1", "P1180002_x1"):
        lr = cv2.imread(str(lr_dir / f"{name}.png"))
        cv2.imwrite(str(lr_dir / f"{name}.webp"), lr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless
        (lr_dir / f"{name}.png").unlink()
    first = dataset(root)[0]
    assert first["lq_path"].endswith("P1180001_x1.webp")
    assert np.array_equal(first["lq"].numpy(), img_rgb(cv2.imread(str(lr_dir / "P1180001_x1.webp"))))
    content = (lr_dir / "P1180002_x1.webp").read_bytes()
    (lr_dir / "P1180002_x1.webp").write_bytes(content[: len(content) - 10])
    with pytest.raises(DatasetError, match=r"cannot read image .*P1180002_x1.webp"):
        dataset(root)


def img_rgb(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., ::-1].transpose(2, 0, 1) / np.float32(255)


def test_index_script_check_content_finds_a_pair_of_two_different_images(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys) -> None:
    """Pairing by name cannot see an HR that is another photo (a rename gone wrong, a file copied over another):
    such a pair trains silently. --check-content decodes every pair and names the ones whose HR, downscaled to the
    LR, does not correlate with it."""
    hr_dir, _ = find_split_dirs(root, "test")
    shutil.copy(hr_dir / "P1180002_x4.png", hr_dir / "P1180001_x4.png")
    assert run_script(monkeypatch, str(root), "--cameras", "olympus", "--check-sizes") == 0  # names and sizes fine
    capsys.readouterr()
    assert run_script(monkeypatch, str(root), "--cameras", "olympus", "--check-content") == 1
    out = capsys.readouterr().out
    assert "P1180001_x4.png / " in out and "P1180001_x1.png: HR and LR look like different images" in out
    assert "P1180002_x4.png / " not in out  # the true pairs (train too) pass


def test_jpegs_with_data_after_the_end_marker_are_read(root: Path) -> None:
    """Phones append data after a JPEG's end marker (a Motion Photo's video, vendor trailers), some writers pad
    with zeros: the file is complete and decodes, but its last 64 bytes hold no end marker, and the truncation check
    refused it as 'truncated'. Only a file that does not decode in full is truncated."""
    hr_dir, lr_dir = find_split_dirs(root, "test")
    hr = cv2.imread(str(hr_dir / "P1180001_x4.png"))
    jpeg = cv2.imencode(".jpg", hr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    (hr_dir / "P1180001_x4.png").unlink()
    (hr_dir / "P1180001_x4.jpg").write_bytes(jpeg + b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 4)
    (hr_dir / "P1180002_x4.jpg").write_bytes(cv2.imencode(".jpg", cv2.imread(str(hr_dir / "P1180002_x4.png")))[1]
                                             .tobytes() + bytes(200))
    (hr_dir / "P1180002_x4.png").unlink()
    first, second = dataset(root)
    assert np.array_equal(first["gt"].numpy(), img_rgb(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)))
    assert second["gt"].shape == (3, 48, 40)
    (hr_dir / "P1180001_x4.jpg").write_bytes(jpeg[: len(jpeg) - 200])  # truncated: still refused
    with pytest.raises(DatasetError, match=r"P1180001_x4.jpg is truncated"):
        dataset(root)
