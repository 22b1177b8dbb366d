"""Readers accept the Cityscapes / BDD100K / Mapillary layouts and reject broken files by name; the Dataset's
normalisation, augmentation and sampling are exact and seeded; the held-out split is deterministic."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldt.runner import TrainingSampler
from ldt.segmentation.classes import CLASS_NAMES, MAPILLARY_V12_NAMES, MAPILLARY_V12_TO_TRAIN_ID, TRAIN_ID, colorize
from ldt.segmentation.data import (
    IMAGENET_MEAN, IMAGENET_STD, Augment, SegmentationDataError, SegmentationDataset, augment_pair, check_label_values,
    scan_split, split_holdout, training_loader,
)

H, W = 6, 8


def write_pair(image_path: Path, label_path: Path, label: np.ndarray, *, mode: str = "L", image_size=(H, W)) -> None:
    """An image whose red channel is 10 x the label (so alignment is checkable) and its label image."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    red = np.resize((label.astype(np.int32) * 10) % 256, image_size).astype(np.uint8)
    rgb = np.stack([red, np.full_like(red, 100), np.full_like(red, 200)], axis=2)
    Image.fromarray(rgb).save(image_path)
    picture = Image.fromarray(label, mode="L")
    if mode == "P":
        picture = picture.convert("P")  # keeps the index values, as Mapillary's palette labels
        picture.putpalette([v for i in range(256) for v in (i, i, i)])
    picture.save(label_path)


def stripes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 19, (H, W)).astype(np.uint8)


def cityscapes_tree(root: Path, split: str = "train", names=(("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019"))) -> None:
    for i, (city, name) in enumerate(names):
        write_pair(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                   root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", stripes(i))
        # the other gtFine files of a real download must be ignored
        Image.fromarray(np.full((H, W), 26, np.uint8)).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
        Image.new("RGB", (W, H)).save(root / "gtFine" / split / city / f"{name}_gtFine_color.png")


def test_cityscapes_layout_pairs_by_name_and_reads_train_ids(tmp_path):
    cityscapes_tree(tmp_path)
    split = scan_split(tmp_path, "cityscapes", "train")
    assert [s.name for s in split.samples] == ["aachen/aachen_000000_000019", "bonn/bonn_000001_000019"]
    assert all(s.size == (H, W) for s in split.samples)
    image, label = SegmentationDataset(split)[1]
    assert label.dtype == torch.long and torch.equal(label, torch.from_numpy(stripes(1)).long())
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    raw = torch.from_numpy(np.array(Image.open(split.samples[1].image))).permute(2, 0, 1).float() / 255
    assert torch.allclose(image, (raw - mean) / std)


def test_bdd100k_layout(tmp_path):
    for i, name in enumerate(["b1c66a42-6f7d68ca", "b1c81faa-3df17267"]):
        write_pair(tmp_path / "images/10k/val" / f"{name}.jpg", tmp_path / "labels/sem_seg/masks/val" / f"{name}.png", stripes(i))
    split = scan_split(tmp_path, "bdd100k", "val")
    assert [s.name for s in split.samples] == ["b1c66a42-6f7d68ca", "b1c81faa-3df17267"]
    assert torch.equal(SegmentationDataset(split)[0][1], torch.from_numpy(stripes(0)).long())


def test_mapillary_layout_maps_v12_ids_to_the_19(tmp_path):
    ids = {name: i for i, name in enumerate(MAPILLARY_V12_NAMES)}
    raw = np.array([[ids["construction--flat--road"], ids["construction--flat--sidewalk"], ids["object--vehicle--car"],
                     ids["marking--general"]],
                    [ids["construction--barrier--curb"], ids["nature--sky"], ids["human--rider--bicyclist"],
                     ids["object--support--utility-pole"]],
                    [ids["animal--bird"], ids["void--unlabeled"], ids["construction--flat--bike-lane"],
                     ids["object--traffic-sign--back"]]], np.uint8)
    expected = np.array([[TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["car"], TRAIN_ID["road"]],
                         [TRAIN_ID["sidewalk"], TRAIN_ID["sky"], TRAIN_ID["rider"], TRAIN_ID["pole"]],
                         [255, 255, 255, 255]])
    write_pair(tmp_path / "validation/images/abc.jpg", tmp_path / "validation/v1.2/labels/abc.png", raw, mode="P",
               image_size=raw.shape)
    split = scan_split(tmp_path, "mapillary", "val")
    assert [s.name for s in split.samples] == ["abc"]
    assert torch.equal(SegmentationDataset(split)[0][1], torch.from_numpy(expected).long())


def test_mapillary_table_is_complete_and_in_v12_order():
    assert len(MAPILLARY_V12_NAMES) == 66 and MAPILLARY_V12_NAMES[13] == "construction--flat--road"
    assert MAPILLARY_V12_NAMES[55] == "object--vehicle--car" and MAPILLARY_V12_NAMES[65] == "void--unlabeled"
    assert sorted(MAPILLARY_V12_TO_TRAIN_ID) == list(range(66))
    assert {v for v in MAPILLARY_V12_TO_TRAIN_ID.values() if v != 255} == set(range(19))  # every class reachable


def test_unpaired_corrupt_and_wrong_sized_files_are_all_named(tmp_path):
    cityscapes_tree(tmp_path, names=[("c", f"c_{i}") for i in range(5)])
    images, labels = tmp_path / "leftImg8bit/train/c", tmp_path / "gtFine/train/c"
    (labels / "c_0_gtFine_labelTrainIds.png").unlink()  # image without label
    write_pair(tmp_path / "tmp/x.png", labels / "c_9_gtFine_labelTrainIds.png", stripes(0))  # label without image
    (images / "c_1_leftImg8bit.png").write_bytes(b"not a png at all")  # corrupt image
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(labels / "c_2_gtFine_labelTrainIds.png")  # wrong size
    Image.new("RGB", (W, H)).save(labels / "c_3_gtFine_labelTrainIds.png")  # colour image as label
    with pytest.raises(SegmentationDataError) as info:
        scan_split(tmp_path, "cityscapes", "train")
    message = str(info.value)
    for expected in ["1 images without a label: " + str(images / "c_0_leftImg8bit.png"),
                     "1 labels without an image: " + str(labels / "c_9_gtFine_labelTrainIds.png"),
                     "1 unreadable files: " + str(images / "c_1_leftImg8bit.png"),
                     str(images / "c_2_leftImg8bit.png") + f" is {H}x{W} but " + str(labels / "c_2_gtFine_labelTrainIds.png")
                     + f" is {H + 1}x{W}",
                     str(labels / "c_3_gtFine_labelTrainIds.png") + " (mode RGB)"]:
        assert expected in message
    assert "c_4" not in message  # the one good pair is not blamed


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_an_image_deeper_than_8_bits_is_named_by_the_scan(tmp_path, mode):
    """A 16-bit grey (or 32-bit / float) image passed the scan and was read through PIL's RGB conversion, which
    clips at 255: a 16-bit image trained and tested as an almost white one, silently."""
    cityscapes_tree(tmp_path, names=[("c", f"c_{i}") for i in range(2)])
    image = tmp_path / "leftImg8bit/train/c/c_0_leftImg8bit.png"
    deep = Image.fromarray(np.full((H, W), 40000, np.uint16))  # a 16-bit PNG opens as I;16
    if mode != "I;16":  # PNG holds no 32-bit or float pixels: a TIFF under the .png name (PIL reads the content)
        deep.convert(mode).save(image, format="TIFF")
    else:
        deep.save(image)
    assert Image.open(image).mode == mode
    with pytest.raises(SegmentationDataError) as info:
        scan_split(tmp_path, "cityscapes", "train")
    assert f"1 images that are not 8-bit colour or grey images: {image} (mode {mode})" in str(info.value)
    assert "c_1" not in str(info.value)


def test_truncated_file_is_caught_by_the_scan_and_at_load(tmp_path):
    """A header read alone did not see a cut-off file: a truncated target image failed only in the test, after the
    whole training; its missing end marker now fails the scan, before any training."""
    cityscapes_tree(tmp_path)
    split = scan_split(tmp_path, "cityscapes", "train")
    label = tmp_path / "gtFine/train/bonn/bonn_000001_000019_gtFine_labelTrainIds.png"
    image = tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    for path in (label, image):
        path.write_bytes(path.read_bytes()[:-30])  # header intact, data cut off
    with pytest.raises(SegmentationDataError, match=rf"2 unreadable files: {re.escape(str(image))} \(image "
                                                    rf"{re.escape(str(image))} is truncated .*{re.escape(str(label))}"):
        scan_split(tmp_path, "cityscapes", "train")
    with pytest.raises(SegmentationDataError, match=rf"2 unreadable files: {re.escape(str(image))} \(Truncated"):
        scan_split(tmp_path, "cityscapes", "train", verify=True)
    with pytest.raises(SegmentationDataError, match="cannot decode label " + re.escape(str(label))):
        SegmentationDataset(split)[1]


def test_missing_folders_and_wrong_label_values_are_named(tmp_path):
    with pytest.raises(SegmentationDataError, match=f"folder {re.escape(str(tmp_path / 'leftImg8bit/val'))} does not exist"):
        scan_split(tmp_path, "cityscapes", "val")
    cityscapes_tree(tmp_path)
    label = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.full((H, W), 26, np.uint8)).save(label)  # a labelIds file under the labelTrainIds name
    with pytest.raises(SegmentationDataError, match=rf"label {re.escape(str(label))}: label values \[26\].*createTrainIdLabelImgs"):
        SegmentationDataset(scan_split(tmp_path, "cityscapes", "train"))[0]
    with pytest.raises(SegmentationDataError, match=rf"cityscapes train at .*: 1 labels with values the layout does "
                                                    rf"not allow: {re.escape(str(label))} \(values \[26\]\) \(expected"):
        check_label_values(scan_split(tmp_path, "cityscapes", "train"))  # before any training, all files at once
    Image.fromarray(stripes(0)).save(label)
    check_label_values(scan_split(tmp_path, "cityscapes", "train"))
    split = scan_split(tmp_path, "cityscapes", "train")  # a bounded check decodes an even spread, the first included
    Image.fromarray(np.full((H, W), 26, np.uint8)).save(split.samples[0].label)
    with pytest.raises(SegmentationDataError, match=r"cityscapes train at .*: 1 labels \(of 1 checked of 2\) with "):
        check_label_values(split, limit=1)
    with pytest.raises(SegmentationDataError, match="unknown layout"):
        scan_split(tmp_path, "kitti", "train")


def aligned_pair(height: int = 10, width: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.arange(height * width).reshape(height, width) % 19
    return label.float()[None].repeat(3, 1, 1), label


def test_augmentation_keeps_image_and_label_aligned_and_pads_with_ignore():
    image, label = aligned_pair()
    seen_flip = False
    for seed in range(12):
        out_image, out_label = augment_pair(image, label, Augment((8, 8), (1.0, 1.0)), torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 8, 8) and out_label.shape == (8, 8)
        assert torch.equal(out_image[0].long(), out_label)  # same crop and flip for both
        seen_flip |= bool((out_label[:, 1:] < out_label[:, :-1]).any())
    assert seen_flip  # some crops were flipped (values decrease left to right)
    out_image, out_label = augment_pair(image, label, Augment((16, 16), (0.5, 0.5), flip=False), torch.Generator().manual_seed(0))
    assert out_label.shape == (16, 16)
    assert (out_label[5:] == 255).all() and (out_label[:, 6:] == 255).all()  # 10x12 * 0.5 = 5x6, padded
    assert (out_image[:, 5:] == 0).all() and (out_label[:5, :6] != 255).all()


def test_dataset_augmentation_is_seeded_by_seed_and_index(tmp_path):
    cityscapes_tree(tmp_path)
    split = scan_split(tmp_path, "cityscapes", "train")
    make = lambda seed: SegmentationDataset(split, augment=Augment((4, 4), (0.6, 1.4)), seed=seed)  # noqa: E731
    first, again, other = make(0), make(0), make(1)
    for index in (0, 1, 2, 3):
        assert torch.equal(first[index][0], again[index][0]) and torch.equal(first[index][1], again[index][1])
    assert any(not torch.equal(first[i][0], other[i][0]) for i in range(4))  # another seed, other crops
    assert any(not torch.equal(first[i][0], first[i + 2][0]) for i in range(2))  # same image, next pass: new crop
    with pytest.raises(IndexError):
        SegmentationDataset(split)[2]  # evaluation indices stay in range


def test_training_sampler_and_loader(tmp_path):
    first = list(itertools.islice(TrainingSampler(5, seed=3), 15))
    assert first == list(itertools.islice(TrainingSampler(5, seed=3), 15))
    for p in range(3):  # each pass is a permutation of the samples, with its own virtual indices
        assert sorted(first[5 * p:5 * p + 5]) == list(range(5 * p, 5 * p + 5))
    assert first[:5] != [i - 5 for i in first[5:10]]  # passes are shuffled differently
    cityscapes_tree(tmp_path)
    dataset = SegmentationDataset(scan_split(tmp_path, "cityscapes", "train"), augment=Augment((4, 6)), seed=0)
    batches = iter(training_loader(dataset, batch_size=2, seed=0))
    images, labels = next(batches)
    assert images.shape == (2, 3, 4, 6) and labels.shape == (2, 4, 6) and labels.dtype == torch.long
    assert torch.equal(next(iter(training_loader(dataset, batch_size=2, seed=0)))[0], images)


def test_holdout_split_is_deterministic_disjoint_and_order_free(tmp_path):
    cityscapes_tree(tmp_path, names=[("c", f"c_{i:02d}") for i in range(10)])
    samples = list(scan_split(tmp_path, "cityscapes", "train").samples)
    train, held = split_holdout(samples, 0.3, seed=0, tag="clean")
    assert len(held) == 3 and len(train) == 7
    assert {s.name for s in train} | {s.name for s in held} == {s.name for s in samples}
    assert not {s.name for s in train} & {s.name for s in held}
    assert split_holdout(samples[::-1], 0.3, seed=0, tag="clean") == (train, held)
    others = [split_holdout(samples, 0.3, seed=s, tag=t)[1] for s, t in ((1, "clean"), (0, "fog"), (2, "clean"))]
    assert any(o != held for o in others)
    with pytest.raises(SegmentationDataError, match="holdout fraction"):
        split_holdout(samples, 1.0, seed=0)


def test_palette_colours_train_ids_and_blanks_ignore():
    label = np.array([[TRAIN_ID["road"], TRAIN_ID["car"], 255]], np.uint8)
    assert colorize(label).tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0]]]
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[TRAIN_ID["bicycle"]] == "bicycle" == CLASS_NAMES[18]


def test_an_empty_image_is_said_to_be_empty(tmp_path):
    """A zero-byte image or label said PIL's 'cannot identify image file', where a weights file is said empty."""
    cityscapes_tree(tmp_path)
    image = tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    image.write_bytes(b"")
    for verify in (False, True):
        with pytest.raises(SegmentationDataError, match=rf"1 unreadable files: {re.escape(str(image))} \(image "
                                                        rf"{re.escape(str(image))} is empty \(0 bytes\): an "
                                                        r"interrupted write or download\?\)"):
            scan_split(tmp_path, "cityscapes", "train", verify=verify)


def test_an_image_or_label_emptied_after_the_start_up_check_is_said_to_be_empty(tmp_path):
    """An image or label emptied after the data check (read in training or the test) said PIL's 'cannot identify
    image file', where the start-up check says the file is empty (ldt.cli.EMPTY_FILE)."""
    from ldt.segmentation.data import _label_ids, read_image

    path = tmp_path / "a.png"
    path.write_bytes(b"")
    for read, what in ((read_image, "image"), (_label_ids, "label")):
        with pytest.raises(SegmentationDataError) as info:
            read(path)
        assert str(info.value) == f"{what} {path} is empty (0 bytes): an interrupted write or download?"
