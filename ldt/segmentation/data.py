"""Readers for the Cityscapes, BDD100K and Mapillary Vistas layouts, and the torch Dataset that feeds DeepLabV3+.

Why pair by name and check every file up front: a missing label, a corrupt file or a label of the wrong size would
otherwise surface as a crash hours into training (or, with sorted-list pairing, as silently shifted pairs). Every
split is indexed once; all unpaired files, unreadable headers, non-single-channel labels, images deeper than
8 bits and image/label size mismatches are collected and raised together in one :class:`SegmentationDataError`
that names them. Sizes come from the file headers (PIL opens lazily) and a PNG / JPEG's end marker from its last
bytes (a truncated file), so checking costs no decoding; ``verify=True`` also runs PIL's ``verify()`` (PNG chunk
checksums), which catches a file corrupted inside at the price of reading every byte.

Layouts (``split`` is ``train`` or ``val``):

- ``cityscapes``: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (train ids; other gtFine files are ignored);
- ``bdd100k``: ``images/10k/<split>/<name>.jpg`` with ``labels/sem_seg/masks/<split>/<name>.png`` (train ids);
- ``mapillary``: ``training|validation/images/<name>.jpg`` with ``training|validation/v1.2/labels/<name>.png``
  (Mapillary v1.2 ids, mapped to the 19 by :data:`ldt.segmentation.classes.MAPILLARY_V12_TO_TRAIN_ID`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ldt.cli import cannot_decode, listing
from ldt.runner import sample_seed, seeded_loader
from ldt.segmentation.classes import IGNORE_INDEX, MAPILLARY_V12_TO_TRAIN_ID, lookup_table, map_labels

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "val")
LABEL_MODES = ("L", "P")  # single-channel 8-bit id images (Mapillary's are palette images)
# Images PIL converts to 8-bit RGB faithfully; its conversion of a 16-bit (I;16), 32-bit (I) or float (F) grey image
# clips at 255, so such an image read as an almost white one.
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_LISTED = 10  # files named per problem kind in one error; the rest are counted


class SegmentationDataError(ValueError):
    """A dataset folder or file cannot be used; the message names every offending path."""


@dataclass(frozen=True)
class Layout:
    """Where one dataset keeps a split's images and labels. Folders are relative to the root, ``{split}`` is the
    split's folder name; a sample's name is its path below the image folder without ``image_suffix``."""

    name: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_dirs: tuple[str, str]  # folder names of (train, val)
    mapping: dict[int, int] | None  # raw label value -> train id; None: the files hold train ids
    nested: bool  # images sit one folder (Cityscapes' city) below the split folder
    label_help: str


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png", "_gtFine_labelTrainIds.png",
               ("train", "val"), None, True,
               "train ids 0..18 or 255; make *_labelTrainIds.png with cityscapesScripts' createTrainIdLabelImgs"),
        Layout("bdd100k", "images/10k/{split}", "labels/sem_seg/masks/{split}", ".jpg", ".png",
               ("train", "val"), None, False, "train ids 0..18 or 255 (BDD100K sem_seg masks)"),
        Layout("mapillary", "{split}/images", "{split}/v1.2/labels", ".jpg", ".png",
               ("training", "validation"), MAPILLARY_V12_TO_TRAIN_ID, False, "Mapillary Vistas v1.2 class ids 0..65"),
    )
}


@dataclass(frozen=True)
class Sample:
    """One image/label pair; ``size`` is (height, width) read from the headers."""

    name: str
    image: Path
    label: Path
    size: tuple[int, int]


@dataclass(frozen=True)
class SegmentationSplit:
    """The checked pairs of one split of one dataset, sorted by name."""

    layout: Layout
    root: Path
    split: str
    samples: tuple[Sample, ...]

    @property
    def table(self) -> np.ndarray:
        """Raw label value -> train id (see :func:`ldt.segmentation.classes.lookup_table`)."""
        return lookup_table(self.layout.mapping)


def _index(folder: Path, suffix: str, nested: bool) -> dict[str, Path]:
    """Files ending in ``suffix`` directly in ``folder`` (or one folder below, if ``nested``), by name."""
    pattern = f"*/*{suffix}" if nested else f"*{suffix}"
    return {
        path.relative_to(folder).as_posix()[: -len(suffix)]: path
        for path in sorted(folder.glob(pattern))
        if path.is_file()
    }


def _header(path: Path, verify: bool) -> tuple[tuple[int, int], str]:
    """((height, width), PIL mode) from the header, and for PNG / JPEG the end marker in the last bytes
    (:func:`ldt.data.cameras.image_size`): a truncated target image passed the header read and failed only in the
    test, after the whole training. ``verify`` also checks the whole file's structure."""
    from ldt.data.cameras import check_not_empty, image_size  # imported here: it loads the SR side

    check_not_empty(path)  # said as such, not as PIL's 'cannot identify image file'
    with Image.open(path) as image:
        width, height = image.size
        mode = image.mode
        if verify:
            image.verify()
    image_size(path)
    return (height, width), mode


def scan_split(root: str | Path, layout: str, split: str, *, verify: bool = False) -> SegmentationSplit:
    """Index and check one split of a dataset in ``layout``; one error lists every problem found."""
    if layout not in LAYOUTS:
        raise SegmentationDataError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if split not in SPLITS:
        raise SegmentationDataError(f"split must be one of {SPLITS}, got {split!r}")
    spec, root = LAYOUTS[layout], Path(root)
    folder_name = spec.split_dirs[SPLITS.index(split)]
    image_dir, label_dir = (root / pattern.format(split=folder_name) for pattern in (spec.image_dir, spec.label_dir))
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise SegmentationDataError(f"{layout} {split}: folder {folder} does not exist (root {root})")
    images = _index(image_dir, spec.image_suffix, spec.nested)
    labels = _index(label_dir, spec.label_suffix, spec.nested)
    where = "<city>/" if spec.nested else ""
    if not images:
        raise SegmentationDataError(f"{layout} {split}: no images {image_dir}/{where}*{spec.image_suffix}")
    if not labels:
        raise SegmentationDataError(
            f"{layout} {split}: no labels {label_dir}/{where}*{spec.label_suffix} (expected {spec.label_help})"
        )
    problems: dict[str, list[str]] = {
        "images without a label": [str(images[n]) for n in images if n not in labels],
        "labels without an image": [str(labels[n]) for n in labels if n not in images],
        "unreadable files": [],
        "labels that are not single-channel id images": [],
        "images that are not 8-bit colour or grey images": [],
        "image/label size mismatches": [],
    }
    samples = []
    for name in sorted(images.keys() & labels.keys()):
        headers = []
        for path in (images[name], labels[name]):
            try:
                headers.append(_header(path, verify))
            except Exception as err:  # PIL reports broken files as OSError, SyntaxError, struct.error, ...
                problems["unreadable files"].append(f"{path} ({err})")
        if len(headers) < 2:
            continue
        (image_size, image_mode), (label_size, label_mode) = headers
        if label_mode not in LABEL_MODES:
            problems["labels that are not single-channel id images"].append(f"{labels[name]} (mode {label_mode})")
        elif image_mode not in IMAGE_MODES:
            problems["images that are not 8-bit colour or grey images"].append(f"{images[name]} (mode {image_mode})")
        elif image_size != label_size:
            problems["image/label size mismatches"].append(
                f"{images[name]} is {image_size[0]}x{image_size[1]} but {labels[name]} is {label_size[0]}x{label_size[1]}"
            )
        else:
            samples.append(Sample(name, images[name], labels[name], image_size))
    found = [f"{len(paths)} {kind}: {listing(paths, _LISTED)}" for kind, paths in problems.items() if paths]
    if found:
        raise SegmentationDataError(f"{layout} {split} at {root}: " + "; ".join(found))
    return SegmentationSplit(spec, root, split, tuple(samples))


def split_holdout(samples: Sequence[Sample], fraction: float, seed: int, tag: str = "") -> tuple[list[Sample], list[Sample]]:
    """Seeded (train, held-out) split of a training domain, for training-domain validation.

    Depends only on the sample names, ``seed`` and ``tag`` (e.g. the domain's name, so two domains split
    differently under one seed), not on the order the samples come in.
    """
    if not 0.0 < fraction < 1.0:
        raise SegmentationDataError(f"holdout fraction must be in (0, 1), got {fraction}")
    ordered = sorted(samples, key=lambda s: s.name)
    held = max(1, int(len(ordered) * fraction))
    if held >= len(ordered):
        raise SegmentationDataError(
            f"{tag or 'split'} has {len(ordered)} image(s): too few to hold out {fraction:.0%} for selection"
        )
    order = np.random.default_rng([seed, zlib.crc32(tag.encode())]).permutation(len(ordered))
    return [ordered[i] for i in sorted(order[held:])], [ordered[i] for i in sorted(order[:held])]


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random rescale by a factor in ``scale_range`` (of the image's own size), random crop
    of ``crop_size`` (height, width) with zero image / ignore label padding where the rescaled image is smaller,
    horizontal flip with probability 0.5 if ``flip``."""

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) with positive sides, got {self.crop_size}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")


def augment_pair(image: torch.Tensor, label: torch.Tensor, augment: Augment,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale, pad, crop and flip a normalised (3, H, W) image and its (H, W) label alike; a function of the
    inputs and ``generator`` only, so an augmentation replays exactly from the generator's seed."""
    low, high = augment.scale_range
    scale = low + (high - low) * torch.rand((), generator=generator).item()
    height, width = (max(1, round(side * scale)) for side in image.shape[-2:])
    if (height, width) != tuple(image.shape[-2:]):
        image = F.interpolate(image[None], (height, width), mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        label = F.interpolate(label[None, None].float(), (height, width), mode="nearest-exact")[0, 0].long()
    crop_h, crop_w = augment.crop_size
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:  # zero is the ImageNet mean colour after normalisation
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    top = int(torch.randint(0, image.shape[-2] - crop_h + 1, (), generator=generator))
    left = int(torch.randint(0, image.shape[-1] - crop_w + 1, (), generator=generator))
    image, label = image[:, top:top + crop_h, left:left + crop_w], label[top:top + crop_h, left:left + crop_w]
    if augment.flip and torch.rand((), generator=generator).item() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


def read_image(path: Path) -> torch.Tensor:
    """A (3, H, W) float image normalised with the ImageNet mean and std; errors name the file."""
    try:
        with Image.open(path) as file:
            array = np.asarray(file.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise SegmentationDataError(cannot_decode("image", path, err)) from None
    image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (image - mean) / std


def _decoded_ids(path: Path) -> np.ndarray:
    """The (H, W) uint8 raw ids of a label image; a file that does not decode raises PIL's OSError."""
    with Image.open(path) as file:
        if file.mode not in LABEL_MODES:
            raise SegmentationDataError(f"label {path} has mode {file.mode}; expected a single-channel id image")
        return np.asarray(file)


def _label_ids(path: Path) -> np.ndarray:
    """The (H, W) uint8 raw ids of a label image; errors name the file."""
    try:
        return _decoded_ids(path)
    except OSError as err:  # UnidentifiedImageError is one
        raise SegmentationDataError(cannot_decode("label", path, err)) from None


def _labels_a_class(present: np.ndarray, table: np.ndarray) -> bool:
    """Whether raw label values ``present`` include one that maps to a class (not ignore, not invalid)."""
    mapped = table[present]
    return bool(((mapped >= 0) & (mapped != IGNORE_INDEX)).any())


def _present_values(path: Path) -> np.ndarray:
    """The distinct raw values of a label image; a file that does not decode raises PIL's OSError."""
    return np.flatnonzero(np.bincount(_decoded_ids(path).ravel(), minlength=256))


def first_labelled(split: SegmentationSplit, samples: Sequence[Sample]) -> Sample | None:
    """The first of ``samples`` (of ``split``) whose label holds a pixel of a class, or None: a set of images that
    holds only ignore has no mIoU. Decodes labels until one is found, so usually one; errors name the file."""
    for sample in samples:
        try:
            if _labels_a_class(_present_values(sample.label), split.table):
                return sample
        except OSError as err:
            raise SegmentationDataError(cannot_decode("label", sample.label, err)) from None
    return None


def check_label_values(split: SegmentationSplit, limit: int | None = None) -> None:
    """Decode every label of ``split`` (or ``limit`` of them, evenly spread over the sorted names) and name, in one
    error, those holding a value the layout does not allow (a Cityscapes ``labelIds`` file under a ``labelTrainIds``
    name). No header shows the values: a target domain's bad label failed only in the test, after the whole
    training, a source's at its first batch. Cheap beside a training: a label decodes in about 0.2 ms at 96x192 px
    (the generated domains) and 20 ms at Cityscapes' 2048x1024; ``limit`` bounds it for a large source, whose
    labels training reads anyway (a wrong kind of label file is wrong in every file, so a sample finds it)."""
    samples, bad, undecodable, labelled = split.samples, [], [], False
    if limit is not None and len(samples) > limit:
        samples = tuple(samples[index * len(samples) // limit] for index in range(limit))
    for sample in samples:
        try:  # one broken file does not hide the others: every label is read, each problem named once
            present = _present_values(sample.label)
        except OSError as err:
            undecodable.append(f"{sample.label} ({err})")
            continue
        wrong = present[split.table[present] < 0]
        if wrong.size:
            bad.append(f"{sample.label} (values {wrong[:10].tolist()})")
        labelled = labelled or _labels_a_class(present, split.table)
    checked = "" if samples is split.samples else f" (of {len(samples)} checked of {len(split.samples)})"
    found = [f"{len(undecodable)} labels{checked} that cannot be decoded: {listing(undecodable, _LISTED)}"] \
        if undecodable else []
    if bad:
        found.append(f"{len(bad)} labels{checked} with values the layout does not allow: {listing(bad, _LISTED)} "
                     f"(expected {split.layout.label_help})")
    elif not undecodable and not labelled:  # a target's column (or a source's every score) would be undefined
        found.append(f"none of its {len(samples)} labels{checked} holds a labelled pixel (only ignore {IGNORE_INDEX}), "
                     "so it has no mIoU")
    if found:
        raise SegmentationDataError(f"{split.layout.name} {split.split} at {split.root}: " + "; ".join(found))


def check_splits(requests: Sequence[tuple[str, str | Path, str, str, int | None]]) -> list[SegmentationSplit]:
    """:func:`scan_split` and :func:`check_label_values` (up to ``limit`` labels; None: all) of every
    ``(where, root, layout, split, limit)``, in order. The problems of all of them come in one error, a line per
    split, each starting with its ``where`` (the flag and domain that gave it) and naming its split and files:
    stopping at the first left a user with several broken domains to learn of one per attempt."""
    splits, problems = [], []
    for where, root, layout, split, limit in requests:
        try:
            found = scan_split(root, layout, split)
            check_label_values(found, limit)
        except SegmentationDataError as err:
            problems.append(f"{where}: {err}")
        else:
            splits.append(found)
    if problems:
        raise SegmentationDataError("\n".join(problems))
    return splits


def read_label(path: Path, table: np.ndarray, help_text: str = "") -> torch.Tensor:
    """An (H, W) long tensor of train ids (255 = ignore) through ``table``; errors name the file."""
    raw = _label_ids(path)
    try:
        mapped = map_labels(raw, table)
    except ValueError as err:
        raise SegmentationDataError(f"label {path}: {err}" + (f" (expected {help_text})" if help_text else "")) from None
    return torch.from_numpy(mapped).long()


class SegmentationDataset(Dataset):
    """(image, label) pairs: a normalised float (3, H, W) image and an (H, W) long label of train ids.

    With ``augment`` (training) every item is augmented by a generator seeded from (``seed``, index). Indices may
    run past ``len``: index ``k`` is sample ``k % len`` and pass ``k // len`` gets fresh augmentations, which is
    what :class:`ldt.runner.TrainingSampler` relies on. A sampler that only repeats indices below ``len`` (a plain
    shuffle) replays every image's augmentation each epoch. Without ``augment`` (evaluation) items are whole images; use
    batch size 1 when image sizes differ.
    """

    def __init__(self, split: SegmentationSplit, samples: Sequence[Sample] | None = None, *,
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.samples = list(split.samples if samples is None else samples)
        if not self.samples:
            raise SegmentationDataError(f"{split.layout.name} {split.split} at {split.root}: no samples to load")
        self.table, self.help_text = split.table, split.layout.label_help
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is None and not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} evaluation images")
        sample = self.samples[index % len(self.samples)]
        image, label = read_image(sample.image), read_label(sample.label, self.table, self.help_text)
        if image.shape[-2:] != label.shape:
            raise SegmentationDataError(
                f"{sample.image} is {tuple(image.shape[-2:])} but {sample.label} is {tuple(label.shape)}")
        if self.augment is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, index))
            image, label = augment_pair(image, label, self.augment, generator)
        return image, label


def training_loader(dataset: SegmentationDataset, batch_size: int, seed: int, *, workers: int = 0,
                    pin_memory: bool = False, start: int = 0) -> DataLoader:
    """Endless batches of augmented crops in the seeded order of :class:`ldt.runner.TrainingSampler`, ``start``
    batches in."""
    if dataset.augment is None:
        raise ValueError("training_loader needs a dataset with augment=Augment(...) (equal-sized crops)")
    return seeded_loader(dataset, batch_size, seed, workers=workers, pin_memory=pin_memory, start=start)


def eval_loader(dataset: SegmentationDataset, *, workers: int = 0) -> DataLoader:
    """Whole images one at a time, in name order."""
    if dataset.augment is not None:
        raise ValueError("eval_loader needs a dataset without augment (whole images)")
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers)
