"""DRealSR cameras: the camera table, folder discovery, pairing by name, validation, LMDB/meta-info reading.

Needs only numpy/cv2 (no torch code), so indexing and option building never touch a model or a tensor. (Importing it
through the ``ldt.data`` package still runs that package's dataset registration, which imports basicsr.)

Why pair by name: the official LDT code pairs ``sorted(HR)`` with ``sorted(LR)``, which silently shifts every pair
after a missing file. Here an HR ``<id>_x4[_<k>].png`` pairs only with the LR ``<id>_x1[_<k>].png`` of the same id and
patch index, and every file that has no partner is reported by name.

Camera of a file = the camera whose anchored pattern matches the image id (the basename without ``_x<s>[_<k>]`` and
extension). The table below is the single source of truth for keys, patterns and names.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ldt.cli import EMPTY_FILE, listing

logger = logging.getLogger("basicsr")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # in any case (.PNG too)
SPLITS = ("train", "test")
DATASET_TYPE = "DRealSRCameraDataset"
# How deep below `dataroot` the split folders are searched (covers `x4/Test_x4/Test_x4/test_HR`).
_MAX_SEARCH_DEPTH = 5
_LISTED = 20  # files named in one error message; the rest are counted


class DatasetError(ValueError):
    """A dataset folder, file or option is unusable; the message names the offending path or option.

    ``option``: the dataset option at fault when it is one (``dataroot``: no split folder below it), so that a runner
    names it with its block, as the option checks do (``datasets:val_1:dataroot: ...``)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class PairingError(DatasetError):
    """A set's files that do not pair (a file without its partner, a camera with no pair): the set's problem, not
    one option's, so that a runner names it with the set's block, as it names a PairedImageDataset's
    (``datasets:val_1 (pan): ...``)."""


@dataclass(frozen=True)
class Camera:
    """One row of the camera table.

    key: short name used in options and results; pattern: anchored regex on the image id; display: camera maker/model
    for humans; column: the column name in the LDT paper's DRealSR tables (None if the paper has no such column);
    role: ``source`` (paper's training camera), ``target`` (evaluated) or ``pretrain`` (synthetic clean set only).
    """

    key: str
    pattern: str
    display: str
    column: str | None
    role: str

    def matches(self, image_id: str) -> bool:
        return re.fullmatch(self.pattern, image_id) is not None


CAMERAS: tuple[Camera, ...] = (
    Camera("olympus", r"P\d{7}", "Olympus", "Olympus", "source"),
    Camera("pan", r"panasonic_\d+", "Panasonic", "Pan", "target"),
    Camera("sony", r"sony_\d+", "Sony", "Sony", "target"),
    Camera("dsc", r"DSC_\d{4}", "Nikon", "DSC", "target"),
    Camera("img", r"IMG_\d+", "Canon (IMG_ files)", "IMG", "target"),
    Camera("canon", r"Canon_\d+", "Canon (Canon_ files)", "Canon", "target"),
    Camera("bicubic", r"bicubic_\d+", "clean bicubic (synthetic pre-training set)", None, "pretrain"),
)
CAMERA_BY_KEY: dict[str, Camera] = {camera.key: camera for camera in CAMERAS}
DREALSR_CAMERAS: tuple[str, ...] = tuple(c.key for c in CAMERAS if c.role != "pretrain")
TARGET_CAMERAS: tuple[str, ...] = tuple(c.key for c in CAMERAS if c.role == "target")
# Pairs per camera in the released DRealSR x4 test split (93 in all), to check a download against.
RELEASE_X4_TEST_PAIRS: dict[str, int] = {"olympus": 19, "pan": 20, "sony": 17, "dsc": 20, "img": 12, "canon": 5}
# Aliases merge cameras into one set, e.g. one validation set for both Canon naming schemes.
CAMERA_ALIASES: dict[str, tuple[str, ...]] = {
    "canon_all": ("img", "canon"),
    "targets": TARGET_CAMERAS,
    "all": DREALSR_CAMERAS,
}


def camera_of(image_id: str) -> str | None:
    """Camera key whose pattern matches ``image_id`` exactly, or None."""
    for camera in CAMERAS:
        if camera.matches(image_id):
            return camera.key
    return None


@functools.lru_cache(maxsize=None)
def _camera_cached(image_id: str) -> str | None:
    """camera_of for the many patches of one photo (a DRealSR train split has ~30k of them)."""
    return camera_of(image_id)


def resolve_cameras(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Expand a camera option (a key, an alias, or a list of them; None = the six DRealSR cameras) to unique keys."""
    if spec is None:
        return DREALSR_CAMERAS
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names:
        raise DatasetError("option 'cameras' is empty; give camera keys such as [olympus]")
    keys: list[str] = []
    for name in names:
        expanded = CAMERA_ALIASES.get(name, (name,))
        for key in expanded:
            if key not in CAMERA_BY_KEY:
                raise DatasetError(
                    f"unknown camera {name!r} in option 'cameras'; known cameras: {sorted(CAMERA_BY_KEY)}, "
                    f"aliases: {sorted(CAMERA_ALIASES)}"
                )
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def camera_label(spec: str | Sequence[str]) -> str:
    """Human/metric name of a camera set: the paper column ('Pan'), or members joined ('IMG+Canon') for merges."""
    if isinstance(spec, str) and spec in CAMERA_BY_KEY:
        camera = CAMERA_BY_KEY[spec]
        return camera.column or camera.key
    return "+".join(camera_label(key) for key in resolve_cameras(spec))


# ---------------------------------------------------------------------------------------------------------- names

_NAME = re.compile(r"(?P<id>.+?)_x(?P<tag>\d+)(?:_(?P<patch>\d+))?")


@dataclass(frozen=True)
class ParsedName:
    """``DSC_1454_x4_12.png`` -> image_id ``DSC_1454``, tag 4, patch 12; untagged names keep their stem as id."""

    image_id: str
    tag: int | None
    patch: int | None

    @property
    def key(self) -> str:
        """What an HR and its LR share: the image id plus the patch index."""
        return self.image_id if self.patch is None else f"{self.image_id}_{self.patch}"


def parse_name(name: str) -> ParsedName:
    """Split a DRealSR basename (or LMDB key) into image id, scale tag and patch index."""
    stem, extension = os.path.splitext(os.path.basename(name))
    stem = stem if extension.lower() in IMAGE_EXTENSIONS else stem + extension
    match = _NAME.fullmatch(stem)
    if match is None:
        return ParsedName(stem, None, None)
    patch = match.group("patch")
    return ParsedName(match.group("id"), int(match.group("tag")), None if patch is None else int(patch))


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# -------------------------------------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class ImagePair:
    """One LR/HR pair. ``hr``/``lr`` are file paths (disk) or LMDB keys; ``db`` labels the LMDB pair ('' on disk)."""

    key: str
    image_id: str
    camera: str | None
    hr: str
    lr: str
    db: str = ""


@dataclass
class PairingResult:
    """Pairs found in one HR/LR listing, and every file that could not be paired (by name, with camera)."""

    pairs: list[ImagePair] = field(default_factory=list)
    unpaired_hr: list[str] = field(default_factory=list)
    unpaired_lr: list[str] = field(default_factory=list)
    misnamed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def counts(self) -> Counter:
        """Number of pairs per camera key (None for names no camera pattern matches)."""
        return Counter(pair.camera for pair in self.pairs)

    def problems(self, cameras: Iterable[str | None] | None = None) -> list[str]:
        """One line per problem, restricted to files of ``cameras`` (all files if None)."""
        wanted = None if cameras is None else set(cameras)

        def keep(name: str) -> bool:
            return wanted is None or _camera_cached(parse_name(name).image_id) in wanted

        lines = []
        hr_only = [name for name in self.unpaired_hr if keep(name)]
        lr_only = [name for name in self.unpaired_lr if keep(name)]
        bad = [f"{name} ({reason})" for name, reason in self.misnamed if keep(name)]
        if hr_only:
            lines.append(f"{len(hr_only)} HR file(s) without an LR partner: {listing(hr_only, _LISTED)}")
        if lr_only:
            lines.append(f"{len(lr_only)} LR file(s) without an HR partner: {listing(lr_only, _LISTED)}")
        if bad:
            lines.append(f"{len(bad)} misnamed file(s): {listing(bad, _LISTED)}")
        if wanted is None:
            unknown = sorted({pair.image_id for pair in self.pairs if pair.camera is None}, key=_natural_key)
            if unknown:
                lines.append(f"{len(unknown)} image id(s) match no camera pattern: {listing(unknown, _LISTED)}")
        return lines


def pair_names(hr_names: Iterable[str], lr_names: Iterable[str], scale: int) -> PairingResult:
    """Pair HR and LR names by (image id, patch index); the scale tags must be ``_x<scale>`` (HR) and ``_x1`` (LR)."""
    result = PairingResult()
    sides: list[dict[str, tuple[str, ParsedName]]] = []
    for names, expected_tag, side in ((hr_names, scale, "HR"), (lr_names, 1, "LR")):
        by_key: dict[str, tuple[str, ParsedName]] = {}
        for name in sorted(names):
            parsed = parse_name(name)
            if parsed.tag is not None and parsed.tag != expected_tag:
                result.misnamed.append((name, f"{side} name has tag _x{parsed.tag}, expected _x{expected_tag}"))
            elif parsed.key in by_key:
                result.misnamed.append((name, f"duplicate of {side} {by_key[parsed.key][0]}"))
            else:
                by_key[parsed.key] = (name, parsed)
        sides.append(by_key)
    hr_by_key, lr_by_key = sides
    for key in sorted(hr_by_key.keys() | lr_by_key.keys()):
        if key not in lr_by_key:
            result.unpaired_hr.append(hr_by_key[key][0])
        elif key not in hr_by_key:
            result.unpaired_lr.append(lr_by_key[key][0])
        else:
            (hr, parsed), (lr, _) = hr_by_key[key], lr_by_key[key]
            result.pairs.append(ImagePair(key, parsed.image_id, _camera_cached(parsed.image_id), hr, lr))
    return result


def _is_file(entry: os.DirEntry) -> bool:
    """``entry.is_file()`` that names a broken entry (a symlink loop or one whose target is gone, no permission)
    instead of an errno traceback or a pair silently left out."""
    try:
        if entry.is_file():
            return True
    except OSError as err:
        raise DatasetError(f"cannot read {entry.path}: {err.strerror}"
                           + (" (a symlink loop)" if err.errno == 40 else "")) from None
    if entry.is_symlink():
        raise DatasetError(f"cannot read {entry.path}: a broken symlink (its target {os.readlink(entry.path)} "
                           "does not exist)")
    return False


def list_images(folder: str | Path) -> list[str]:
    """Basenames of the image files directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist" + (" (a symlink loop)" if folder.is_symlink() else ""))
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        raise DatasetError(f"cannot list {folder}: {err.strerror}") from None
    return sorted(entry.name for entry in entries
                  if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and _is_file(entry))


def no_images(hr_dir: str | Path, lr_dir: str | Path, option: str) -> DatasetError:
    """The error for an HR and an LR folder that both hold no image (``option``: the dataset option naming the HR
    one): a validation set of no pairs only failed at its first validation, after training had started."""
    return DatasetError(f"{hr_dir} holds no images, nor does {lr_dir}", option)


def pair_folders(hr_dir: str | Path, lr_dir: str | Path, scale: int) -> PairingResult:
    """Pair the images of two folders by name; the pairs carry full paths."""
    result = pair_names(list_images(hr_dir), list_images(lr_dir), scale)
    result.pairs = [replace(p, hr=os.path.join(hr_dir, p.hr), lr=os.path.join(lr_dir, p.lr)) for p in result.pairs]
    return result


# ------------------------------------------------------------------------------------------------------ discovery


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"option 'split' must be one of {SPLITS}, got {split!r}")
    return split


def _nearest(parts: Sequence[str], pattern: str) -> re.Match | None:
    """The match of ``pattern`` in the deepest folder name that has one (folders closer to the images win)."""
    for part in reversed(parts):
        match = re.search(pattern, part.lower())
        if match:
            return match
    return None


def find_split_dirs(dataroot: str | Path, split: str, scale: int = 4) -> tuple[Path, Path]:
    """Locate the (HR, LR) folders of ``split`` below a DRealSR download.

    Accepts the release layout ``x4/Train_x4/{train_HR,train_LR}`` and ``x4/Test_x4/{test_HR,test_LR}``, copies with a
    doubled folder (``Test_x4/Test_x4/test_HR``), plain ``HR``/``LR`` names, and ``dataroot`` pointing at any level of
    it. The nearest ``train``/``test`` and ``x<s>`` folder names must agree with ``split`` and ``scale``.
    """
    check_split(split)
    root = Path(dataroot)
    if not root.is_dir():
        loop = " (a symlink loop)" if root.is_symlink() else ""
        raise DatasetError(f"dataroot {root} does not exist{loop} (set 'dataroot', or 'dataroot_gt' and 'dataroot_lq')",
                           "dataroot")
    found: list[tuple[Path, Path]] = []

    def walk_error(err: OSError) -> None:
        raise DatasetError(f"cannot search {err.filename}: {err.strerror}", "dataroot")

    seen: set[tuple[int, int]] = set()

    def first_visit(folder: Path) -> bool:
        """Whether ``folder`` (its device and inode: a symlink's target) was not searched yet."""
        try:
            status = folder.stat()
        except OSError:
            return False
        key = (status.st_dev, status.st_ino)
        return key not in seen and not seen.add(key)

    first_visit(root)
    # folder symlinks followed (an x4 or Test_x4 on another disk), each folder searched once (a loop below them)
    for dirpath, dirnames, _ in os.walk(root, onerror=walk_error, followlinks=True):
        here = Path(dirpath)
        relative = here.relative_to(root).parts
        dirnames[:] = [] if len(relative) >= _MAX_SEARCH_DEPTH else sorted(
            name for name in dirnames if not name.startswith((".", "__")) and first_visit(here / name))
        lower = {name.lower(): name for name in dirnames}
        for hr_name, lr_name in ((f"{split}_hr", f"{split}_lr"), ("hr", "lr")):
            if hr_name not in lower or lr_name not in lower:
                continue
            parts = (root.resolve().name, *relative, hr_name)
            split_match = _nearest(parts, r"train|test")
            scale_match = _nearest(parts, r"(?:^|[_-])x(\d+)$")
            if split_match and split_match.group(0) != split:
                continue
            if scale_match and int(scale_match.group(1)) != scale:
                continue
            found.append((here / lower[hr_name], here / lower[lr_name]))
    if not found:
        raise DatasetError(
            f"no {split} split for x{scale} under {root}: looked for {split.capitalize()}_x{scale}/{split}_HR and "
            f"{split}_LR (or HR/LR) up to {_MAX_SEARCH_DEPTH} folders deep; set 'dataroot_gt'/'dataroot_lq' explicitly",
            "dataroot")
    if len(found) > 1:
        raise DatasetError(
            f"several {split} folders for x{scale} under {root}: {listing((hr for hr, _ in found), _LISTED)}; "
            "point 'dataroot' at one of them or set 'dataroot_gt'/'dataroot_lq'", "dataroot")
    return found[0]


# ----------------------------------------------------------------------------------------------- images and sizes


def imdecode(content: bytes | None, name: str, flag: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """``cv2.imdecode`` of image bytes with ``flag``, or a DatasetError naming ``name``: cv2 returns None for a file
    whose pixel data is corrupt behind an intact header and end marker (all the start-up check reads)."""
    if not content:
        raise DatasetError(f"cannot read image {name}: no data (missing file or LMDB key)")
    image = cv2.imdecode(np.frombuffer(content, np.uint8), flag)
    if image is None:
        raise DatasetError(f"cannot decode image {name}: corrupt or not an image")
    return image


def decode_image(content: bytes | None, name: str) -> np.ndarray:
    """Decode image bytes to float32 BGR in [0, 1], HxWx3, like basicsr's ``imfrombytes(float32=True)``.

    Grayscale is replicated to three channels, alpha is dropped, and 16-bit images keep their high byte (``v >> 8``),
    as cv2's ``IMREAD_COLOR`` in BasicSR's ``PairedImageDataset`` does: the same file trains the same whichever of the
    two reads it (metrics stay 8-bit comparable). Errors name ``name``.
    """
    image = imdecode(content, name)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"image {name} has unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] in (1, 2):  # gray, gray+alpha
        image = np.repeat(image[:, :, :1], 3, axis=2)
    return image[:, :, :3].astype(np.float32) / 255.0


# How a complete file of each format ends (a truncated download or an interrupted copy does not).
_END_MARKERS = {".png": (b"IEND", 12), ".jpg": (b"\xff\xd9", 64), ".jpeg": (b"\xff\xd9", 64)}


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, and for PNG / JPEG the end marker: cheap enough (no decoding) to check
    every pair before training, and it catches truncated files, which a header read alone does not (PIL's WebP
    reader refuses a truncated file itself). A file without the marker in its last bytes is decoded once: complete
    files with data appended (phones' trailers) pass."""
    return image_header(path)[:2]


def image_header(path: str | Path) -> tuple[int, int, int]:
    """(height, width, EXIF orientation) of an image file as stored (see :func:`image_size`, :func:`orientation`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        check_not_empty(path)
        with Image.open(path) as image:
            width, height = image.size
            turn = _orientation(image)
        marker = _END_MARKERS.get(os.path.splitext(str(path))[1].lower())
        if marker is not None:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(path) - marker[1]))
                tail = handle.read()
            if marker[0] not in tail and not _decodes(path):  # data after the marker (a phone's trailer) is fine
                raise DatasetError(f"image {path} is truncated (its end marker is missing)")
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from None
    return height, width, turn


def check_not_empty(path: str | Path) -> None:
    """A :class:`DatasetError` for an image file of 0 bytes, said as such: PIL's 'cannot identify image file' named
    no cause (an OSError reading its size is left to the reader)."""
    if os.path.getsize(path) == 0:
        raise DatasetError(f"image {path} {EMPTY_FILE}")


def _decodes(path: str | Path) -> bool:
    """Whether PIL decodes every pixel of ``path`` (a JPEG / PNG without an end marker in its last bytes: complete,
    with data appended after it, a Motion Photo's video or a vendor trailer or zero padding, or truncated)."""
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by some library: it would fill a truncated file's missing rows
        return False
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


# EXIF orientation values: how a viewer (and cv2.imread, BasicSR's reader) turns the stored pixels for display.
ORIENTATIONS = {1: "as stored", 2: "mirrored", 3: "rotate 180", 4: "flipped", 5: "transposed", 6: "rotate 90 CW",
                7: "transversed", 8: "rotate 90 CCW"}


def _orientation(image) -> int:
    """The EXIF orientation of an opened PIL image, 1 if none (or not a valid value). A PNG's eXIf chunk is looked
    for only before the pixel data, where PIL finds it without decoding the image."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block: viewers show such a file as stored
        return 1
    return value if value in ORIENTATIONS else 1


def orientation(content: bytes) -> int:
    """The EXIF orientation of image bytes (1 if none); the pixels are always read as stored, never turned."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as image:
            return _orientation(image)
    except Exception:  # not an image PIL knows: decode_image names the file if cv2 cannot read it either
        return 1


def check_orientation(hr: int, lr: int, name: str) -> None:
    """Raise unless HR and LR carry the same EXIF orientation. Pixels are read as stored (as basicsr's
    ``imfrombytes(flag='unchanged')``), so a pair whose tags differ (an LR made by a tool that applied the HR's tag,
    or an HR re-saved with one) is a turned or mirrored pair, which a square one would train on silently."""
    if hr != lr:
        raise DatasetError(
            f"{name}: HR has EXIF orientation {hr} ({ORIENTATIONS[hr]}), LR {lr} ({ORIENTATIONS[lr]}): their pixels "
            "are stored turned differently; save both upright (e.g. PIL.ImageOps.exif_transpose) or remove the tag "
            "from the one whose pixels are upright already")


def tolerance_px(scale: int, option: int | None = None) -> int:
    """Pixels per side an HR may exceed LR x ``scale`` by (cropped at read time): the ``size_tolerance`` option, or
    by default 4 x scale (DRealSR's HR crops are a few pixels larger than their LR x scale)."""
    return 4 * scale if option is None else int(option)


def check_lr_patch(lr: str, lr_size: Sequence[int], gt_size: int, scale: int) -> None:
    """Raise unless the training crop fits the LR image; the error names the option asking for it (``gt_size``, a
    runner's ``datasets:train:gt_size``), as a file alone did not say what the patch was."""
    patch = gt_size // scale
    if min(lr_size[:2]) < patch:
        raise DatasetError(f"{lr}: LR size {tuple(lr_size[:2])} is smaller than the LR patch {patch} (gt_size "
                           f"{gt_size} / scale {scale})", option="gt_size")


def check_scale(hr_size: Sequence[int], lr_size: Sequence[int], scale: int, tolerance: int, name: str) -> None:
    """Raise unless HR is LR x scale, or larger by at most ``tolerance`` pixels per side (cropped at read time)."""
    for hr, lr in zip(hr_size[:2], lr_size[:2]):
        if not lr * scale <= hr <= lr * scale + tolerance:
            raise DatasetError(
                f"{name}: HR size {tuple(hr_size[:2])} does not match LR size {tuple(lr_size[:2])} x{scale} "
                f"(HR may exceed LR x scale by at most {tolerance} px per side, option 'size_tolerance')"
            )


def crop_gt_to_lq(img_gt: np.ndarray, img_lq: np.ndarray, scale: int, tolerance: int, name: str) -> np.ndarray:
    """Crop HR to exactly LR x scale from the top-left corner, as BasicSR's paired dataset does at validation."""
    check_scale(img_gt.shape, img_lq.shape, scale, tolerance, name)
    return img_gt[: img_lq.shape[0] * scale, : img_lq.shape[1] * scale]


def pair_correlation(hr: np.ndarray, lr: np.ndarray, scale: int) -> float:
    """Pearson correlation of the HR (cropped to LR x ``scale``, area-downscaled to the LR) with the LR, in gray:
    near 1 for a true pair, whatever the camera's blur, noise or colour; near 0 for two different photos. 1.0 when
    either is flat (nothing to compare)."""
    hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
    small = cv2.resize(hr, (lr.shape[1], lr.shape[0]), interpolation=cv2.INTER_AREA)
    a, b = (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).ravel().astype(np.float64) for image in (small, lr))
    if a.std() < 1e-3 or b.std() < 1e-3:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------------------------------------- LMDB


def lmdb_paths(lmdb_root: str | Path, split: str, scale: int, camera: str) -> tuple[Path, Path]:
    """Where the per-camera LMDBs live: ``<root>/x<scale>/<split>/<camera>_{HR,LR}.lmdb`` (writer and reader agree)."""
    folder = Path(lmdb_root) / f"x{scale}" / check_split(split)
    return folder / f"{camera}_HR.lmdb", folder / f"{camera}_LR.lmdb"


def _lmdb_meta_lines(db: str | Path) -> Iterator[tuple[str, str, tuple[int, int, int]]]:
    """(the line as read, line end included; its name; its (h, w, c)) of each line of a basicsr-style
    ``meta_info.txt`` (``name.png (h,w,c) level``); any other line is one error naming the file and line."""
    meta = Path(db) / "meta_info.txt"
    if not meta.is_file():
        raise DatasetError(f"LMDB {db} has no meta_info.txt (build it with scripts/index_drealsr.py --lmdb)")
    raw = meta.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:  # was a bare UnicodeDecodeError naming no file
        start, number = raw.rfind(b"\n", 0, err.start) + 1, raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(f"{meta}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} "
                           f"at column {err.start - start + 1}): a binary or re-encoded file? rebuild the LMDB's "
                           f"meta_info.txt") from None
    with io.StringIO(text, newline=None) as lines:  # line ends as a text-mode open reads them (BasicSR's)
        for number, line in enumerate(lines, 1):
            match = re.fullmatch(r"(\S+) \((\d+),(\d+),(\d+)\)(?: \S+)?", line.strip())
            if match is None:
                shown = line.rstrip("\n")
                raise DatasetError(f"{meta}:{number}: expected 'name.png (h,w,c) level', got {shown!r}")
            yield line, match.group(1), (int(match.group(2)), int(match.group(3)), int(match.group(4)))


def read_lmdb_meta(db: str | Path) -> dict[str, tuple[int, int, int]]:
    """``{name with extension: (h, w, c)}`` from a basicsr-style ``meta_info.txt`` (``name.png (h,w,c) level``)."""
    return {name: shape for _, name, shape in _lmdb_meta_lines(db)}


def basicsr_lmdb_meta(db: str | Path) -> dict[str, tuple[int, int, int]]:
    """:func:`read_lmdb_meta` keyed as BasicSR's ``PairedImageDataset`` keys its LMDB images: each line up to its
    first dot (in a line without one, the whole line, line end and all: a key no database holds, which BasicSR finds
    only mid-epoch and the key check names before)."""
    return {line.split(".")[0]: shape for line, _, shape in _lmdb_meta_lines(db)}


def name_stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


# ------------------------------------------------------------------------------------------------------ meta info


def read_meta_info(paths: str | Path | Sequence[str | Path]) -> set[str]:
    """HR basenames listed in one or several meta-info files (first token of each non-empty line)."""
    names: set[str] = set()
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        if not Path(path).is_file():
            raise DatasetError(f"meta_info_file {path} does not exist")
        names.update(line.split()[0] for line in Path(path).read_text().splitlines() if line.strip())
    return names


# ------------------------------------------------------------------------------------------------ dataset content


@dataclass
class PairSet:
    """What a dataset reads: the selected pairs and, for LMDB, ``{db label: (HR db, LR db)}``."""

    pairs: list[ImagePair]
    databases: dict[str, tuple[Path, Path]] = field(default_factory=dict)


def select_pairs(result: PairingResult, cameras: Sequence[str], where: str, strict: bool = True) -> list[ImagePair]:
    """Keep the pairs of ``cameras``; unpaired/misnamed files of those cameras are errors (warnings if not strict)."""
    problems = result.problems(cameras)
    if problems:
        message = f"{where}: " + "; ".join(problems)
        if strict:
            raise PairingError(message + " (fix the files, or set 'strict: false' to skip them)")
        logger.warning("%s (skipped, strict: false)", message)
    counts = result.counts()
    empty = [key for key in cameras if counts[key] == 0]
    if empty:
        found = {str(key): count for key, count in sorted(counts.items(), key=str)}
        patterns = ", ".join(f"{key} ({CAMERA_BY_KEY[key].pattern})" for key in empty)
        raise PairingError(f"{where}: no pairs for camera(s) {patterns}; pairs found per camera: {found}")
    return [pair for pair in result.pairs if pair.camera in cameras]


def held_out_split(pairs: Sequence[ImagePair], fraction: float, seed: int = 0, part: str = "train") -> list[ImagePair]:
    """Deterministically carve whole image ids (all patches of a photo together) out of each camera's pairs.

    ``part='holdout'`` returns the carved pairs (training-domain validation), ``'train'`` the rest; the two are
    disjoint and cover ``pairs``. Per camera, ``round(fraction * ids)`` ids (at least one) are held out.
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"held_out.fraction must be in (0, 1), got {fraction!r}")
    if part not in ("train", "holdout"):
        raise DatasetError(f"held_out.part must be 'train' or 'holdout', got {part!r}")
    ids_by_camera: dict[str | None, set[str]] = defaultdict(set)
    for pair in pairs:
        ids_by_camera[pair.camera].add(pair.image_id)
    held: set[tuple[str | None, str]] = set()
    for camera, id_set in ids_by_camera.items():
        if len(id_set) < 2:
            raise DatasetError(f"held_out: camera {camera} has {len(id_set)} image id(s); need 2 or more")
        ids = sorted(id_set, key=_natural_key)
        count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        chosen = np.random.default_rng(seed).permutation(len(ids))[:count]
        held.update((camera, ids[i]) for i in chosen)
    return [pair for pair in pairs if ((pair.camera, pair.image_id) in held) == (part == "holdout")]


def collect_pairs(
    *,
    split: str,
    cameras: str | Sequence[str] | None,
    scale: int = 4,
    dataroot: str | Path | None = None,
    dataroot_gt: str | Path | None = None,
    dataroot_lq: str | Path | None = None,
    backend: str = "disk",
    strict: bool = True,
    check_sizes: bool = True,
    size_tolerance: int | None = None,
    gt_size: int = 0,
    held_out: Mapping[str, Any] | None = None,
    meta_info_file: str | Path | Sequence[str | Path] | None = None,
) -> PairSet:
    """Everything a dataset needs to know before reading pixels: discovery, pairing, camera filter, cheap checks.

    ``check_sizes`` reads every image header (disk) to catch unreadable files and wrong scales now, before training;
    LMDB sizes come from ``meta_info.txt`` and are always checked.
    """
    check_split(split)
    keys = resolve_cameras(cameras)
    tolerance = tolerance_px(scale, size_tolerance)
    if backend not in ("disk", "lmdb"):
        raise DatasetError(f"io_backend type must be 'disk' or 'lmdb', got {backend!r}")
    if (dataroot_gt is None) != (dataroot_lq is None):
        raise DatasetError("set both 'dataroot_gt' and 'dataroot_lq', or neither (then 'dataroot' is searched)")
    explicit = dataroot_gt is not None
    if not explicit and dataroot is None:
        raise DatasetError("option 'dataroot' (or 'dataroot_gt' and 'dataroot_lq') is required")

    databases: dict[str, tuple[Path, Path]] = {}
    shapes: dict[str, tuple[int, int]] = {}  # location -> (h, w), when known without reading pixels
    if backend == "disk":
        hr_dir, lr_dir = (Path(dataroot_gt), Path(dataroot_lq)) if explicit else find_split_dirs(dataroot, split, scale)
        result = pair_folders(hr_dir, lr_dir, scale)
        if not (result.pairs or result.unpaired_hr or result.unpaired_lr or result.misnamed):
            raise no_images(hr_dir, lr_dir, "dataroot_gt" if explicit else "dataroot")
        pairs = select_pairs(result, keys, f"{hr_dir} + {lr_dir}", strict)
    else:
        sources = {"data": (Path(dataroot_gt), Path(dataroot_lq))} if explicit else {
            key: lmdb_paths(dataroot, split, scale, key) for key in keys}
        pairs = []
        for label, (hr_db, lr_db) in sources.items():
            for db, option in zip((hr_db, lr_db), ("dataroot_gt", "dataroot_lq") if explicit else ("dataroot",) * 2):
                if not db.is_dir():
                    raise DatasetError(f"LMDB {db} does not exist (build it with scripts/index_drealsr.py --lmdb)",
                                       option)
            hr_meta, lr_meta = read_lmdb_meta(hr_db), read_lmdb_meta(lr_db)
            result = pair_names(hr_meta, lr_meta, scale)
            wanted = keys if explicit else (label,)
            for pair in select_pairs(result, wanted, f"{hr_db} + {lr_db}", strict):
                hr_key, lr_key = name_stem(pair.hr), name_stem(pair.lr)
                shapes[hr_key], shapes[lr_key] = hr_meta[pair.hr][:2], lr_meta[pair.lr][:2]
                pairs.append(replace(pair, hr=hr_key, lr=lr_key, db=label))
            databases[label] = (hr_db, lr_db)

    if meta_info_file is not None:
        listed = {name_stem(name) for name in read_meta_info(meta_info_file)}
        pairs = [pair for pair in pairs if name_stem(Path(pair.hr).name) in listed]
        if not pairs:
            raise DatasetError(f"meta_info_file {meta_info_file} lists none of the pairs found")
    if held_out:
        unknown = set(held_out) - {"fraction", "seed", "part"}
        if unknown:
            raise DatasetError(f"unknown held_out key(s) {sorted(unknown)}; expected fraction, seed, part")
        pairs = held_out_split(pairs, float(held_out["fraction"]), int(held_out.get("seed", 0)),
                               str(held_out.get("part", "train")))

    if backend == "disk" and check_sizes:
        for pair in pairs:
            (*shapes[pair.hr], hr_turn), (*shapes[pair.lr], lr_turn) = image_header(pair.hr), image_header(pair.lr)
            check_orientation(hr_turn, lr_turn, f"{pair.hr} / {pair.lr}")
    for pair in pairs:
        if pair.hr in shapes:
            check_scale(shapes[pair.hr], shapes[pair.lr], scale, tolerance, f"{pair.hr} / {pair.lr}")
            check_lr_patch(pair.lr, shapes[pair.lr], gt_size, scale)
    return PairSet(pairs, databases)


def camera_val_options(
    dataroot: str | Path,
    cameras: Sequence[str | Sequence[str]],
    *,
    scale: int = 4,
    split: str = "test",
    io_backend: Mapping[str, Any] | None = None,
    name_prefix: str = "",
    **extra: Any,
) -> dict[str, dict[str, Any]]:
    """One BasicSR dataset option dict per target camera, keyed ``val_1``, ``val_2``, ... in the given order.

    Each entry of ``cameras`` becomes one validation set, so metrics are logged per camera; an alias or a list entry
    (``'canon_all'`` or ``['img', 'canon']``) becomes one merged set. ``extra`` keys are copied into every dict.
    """
    options = {}
    for index, spec in enumerate(cameras, 1):
        options[f"val_{index}"] = {
            "name": f"{name_prefix}{camera_label(spec)}",
            "type": DATASET_TYPE,
            "dataroot": str(dataroot),
            "split": check_split(split),
            "cameras": list(resolve_cameras(spec)),
            "scale": scale,
            "io_backend": dict(io_backend or {"type": "disk"}),
            **extra,
        }
    return options
