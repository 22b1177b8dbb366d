"""A camera-shift benchmark that needs no download: six simulated cameras "photograph" scikit-image's bundled photos.

Why: DRealSR is a large manual download; tests and the CPU demo still need a source camera and five target cameras
whose degradations differ. The output is a DRealSR-style folder (same layout, names and camera id patterns), so
``DRealSRCameraDataset`` reads it unchanged.

Scenes: each photo (``PHOTOS``, area-downscaled to at most 768 px) is split in half along its longer side; the first
half only feeds training patches, the second half only test images (disjoint regions: no test pixel is trained on).
Every camera photographs the same test regions, so differences between camera columns come from the cameras alone.

Per camera (``SYNTHETIC_CAMERAS``): the HR is the scene rendered with the camera's colour look (white-balance error,
saturation matrix, tone curve). The LR is the same scene through optics blur (anisotropic Gaussian + defocus disc),
x``scale`` pixel integration (area downsampling), the sensor's channel response, an RGGB Bayer mosaic,
Poisson-Gaussian noise, demosaicking (OpenCV bilinear or edge-aware), white balance, the same colour look,
sharpening and JPEG. A ``bicubic`` pseudo-camera gives clean MATLAB-style bicubic pairs for pre-training.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ldt.atomic import FileContentError, atomic_write_text, exclusive_lock, lock_beside, read_json_object
from ldt.data.cameras import (
    CAMERA_BY_KEY, CAMERAS, DatasetError, camera_of, decode_image, find_split_dirs, pair_folders,
)

BUILDER_VERSION = 1  # bump when the pipeline code changes, so cached builds are rebuilt
MANIFEST = "synthetic_cameras.json"
DEFAULT_ROOT = Path("datasets/synthetic_cameras")
DEFAULT_BICUBIC_ROOT = Path("datasets/synthetic_bicubic")

# Real photographs bundled with scikit-image (no network). Grayscale ones are replicated to RGB.
PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "motorcycle_left",
    "immunohistochemistry", "camera", "coins", "brick", "gravel",
)
TRAIN_ID_START, TEST_ID_START = 1, 101  # train and test shots get different ids, as in DRealSR


class BuildOptionError(DatasetError):
    """A bad argument of :func:`build_synthetic_cameras` / :func:`build_bicubic_pretrain_set`; ``option`` names it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem


@dataclass(frozen=True)
class Geometry:
    """Sizes of one build: photos used, longest photo side, largest test image side (HR px), default patching."""

    photos: tuple[str, ...]
    max_side: int
    max_test_side: int
    patch_size: int
    patches_per_image: int


FULL = Geometry(PHOTOS, max_side=768, max_test_side=512, patch_size=192, patches_per_image=8)
TINY = Geometry(PHOTOS[:3], max_side=128, max_test_side=64, patch_size=32, patches_per_image=2)


@dataclass(frozen=True)
class SyntheticCamera:
    """One simulated camera. Blur sizes are in LR (sensor) pixels; noise is in linear [0, 1] raw units.

    key/id_format: camera key of ``ldt.data.cameras`` and file id format (``id_format.format(n)`` must match that
    camera's pattern). blur_sigma/blur_angle: anisotropic Gaussian PSF (std major, minor; degrees). defocus_radius:
    disc PSF radius (0 = in focus). raw_response: sensor RGB sensitivity (divided out again by white balance, so it
    only shapes the noise). shot_noise/read_noise: variance ``shot * x + read**2``. wb_error: residual white-balance
    gains. saturation: colour matrix strength (1 = identity). gamma/contrast: tone curve ``x**(1/gamma)`` blended
    with a smoothstep S-curve. demosaic: ``bilinear`` or ``edge_aware``. sharpen: unsharp-mask amount.
    jpeg_quality: in-camera JPEG quality.
    """

    key: str
    id_format: str
    blur_sigma: tuple[float, float]
    blur_angle: float
    defocus_radius: float
    raw_response: tuple[float, float, float]
    shot_noise: float
    read_noise: float
    wb_error: tuple[float, float, float]
    saturation: float
    gamma: float
    contrast: float
    demosaic: str
    sharpen: float
    jpeg_quality: int

    def image_id(self, number: int) -> str:
        return self.id_format.format(number)

    def render(self, linear: np.ndarray) -> np.ndarray:
        """The camera's colour look on linear RGB: white-balance error, saturation, tone curve (float sRGB-like)."""
        rgb = linear * np.asarray(self.wb_error, np.float32)
        luma = rgb @ np.asarray([0.2126, 0.7152, 0.0722], np.float32)
        rgb = luma[..., None] + self.saturation * (rgb - luma[..., None])
        tone = np.clip(rgb, 0, 1) ** (1 / self.gamma)
        return (1 - self.contrast) * tone + self.contrast * tone * tone * (3 - 2 * tone)

    def hr(self, srgb: np.ndarray, rng: np.random.Generator, scale: int) -> np.ndarray:
        return _to_uint8(self.render(_srgb_to_linear(srgb)))

    def lr(self, srgb: np.ndarray, rng: np.random.Generator, scale: int) -> np.ndarray:
        linear = cv2.filter2D(_srgb_to_linear(srgb), -1, self.psf(scale), borderType=cv2.BORDER_REFLECT)
        height, width = srgb.shape[0] // scale, srgb.shape[1] // scale
        response = np.asarray(self.raw_response, np.float32)
        raw = _mosaic(cv2.resize(linear, (width, height), interpolation=cv2.INTER_AREA) * response)
        raw = raw + np.sqrt(self.shot_noise * np.clip(raw, 0, None) + self.read_noise**2) * rng.standard_normal(
            raw.shape, dtype=np.float32)
        code = cv2.COLOR_BayerBG2RGB_EA if self.demosaic == "edge_aware" else cv2.COLOR_BayerBG2RGB
        rgb = cv2.cvtColor(np.round(np.clip(raw, 0, 1) * 65535).astype(np.uint16), code).astype(np.float32) / 65535
        image = self.render(rgb / response)
        image = image + self.sharpen * (image - cv2.GaussianBlur(image, (0, 0), 0.8))
        ok, jpeg = cv2.imencode(".jpg", _to_uint8(image), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        return cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)

    def psf(self, scale: int) -> np.ndarray:
        """Optics PSF at HR resolution: rotated anisotropic Gaussian, convolved with a defocus disc if any."""
        major, minor = (s * scale for s in self.blur_sigma)
        radius = math.ceil(3 * major + self.defocus_radius * scale)
        y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float32)
        angle = math.radians(self.blur_angle)
        u, v = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
        kernel = np.exp(-0.5 * ((u / major) ** 2 + (v / minor) ** 2))
        if self.defocus_radius > 0:
            disc = (x**2 + y**2 <= (self.defocus_radius * scale) ** 2).astype(np.float32)
            kernel = cv2.filter2D(kernel, -1, disc / disc.sum(), borderType=cv2.BORDER_CONSTANT)
        return (kernel / kernel.sum()).astype(np.float32)


@dataclass(frozen=True)
class BicubicCamera:
    """Clean pairs for pre-training: HR = the photo, LR = MATLAB-style antialiased bicubic downsampling."""

    key: str = "bicubic"
    id_format: str = "bicubic_{}"

    def image_id(self, number: int) -> str:
        return self.id_format.format(number)

    def hr(self, srgb: np.ndarray, rng: np.random.Generator, scale: int) -> np.ndarray:
        return _to_uint8(srgb)

    def lr(self, srgb: np.ndarray, rng: np.random.Generator, scale: int) -> np.ndarray:
        return _to_uint8(bicubic_downsample(srgb, scale))


# The camera table. olympus is the source (paper: train on Olympus); the other five are the targets.
SYNTHETIC_CAMERAS: tuple[SyntheticCamera, ...] = (
    SyntheticCamera("olympus", "P1{:06d}", (0.45, 0.35), 30, 0.0, (0.55, 1.0, 0.75), 0.001, 0.0015,
                    (1.0, 1.0, 1.0), 1.0, 2.2, 0.10, "bilinear", 0.3, 92),
    SyntheticCamera("pan", "panasonic_{}", (0.8, 0.3), 70, 0.0, (0.5, 1.0, 0.65), 0.0006, 0.001,
                    (1.06, 1.0, 0.92), 1.15, 2.4, 0.20, "edge_aware", 0.6, 85),
    SyntheticCamera("sony", "sony_{}", (0.35, 0.3), 0, 0.0, (0.6, 1.0, 0.8), 0.003, 0.003,
                    (0.95, 1.0, 1.07), 0.95, 2.1, 0.05, "edge_aware", 0.0, 95),
    SyntheticCamera("dsc", "DSC_{:04d}", (0.35, 0.35), 0, 0.7, (0.52, 1.0, 0.7), 0.0008, 0.001,
                    (1.0, 1.02, 0.98), 1.05, 2.2, 0.25, "bilinear", 0.4, 90),
    SyntheticCamera("img", "IMG_{}", (0.6, 0.45), 120, 0.0, (0.5, 1.0, 0.6), 0.004, 0.004,
                    (1.08, 1.0, 0.95), 1.2, 2.3, 0.15, "bilinear", 0.2, 75),
    SyntheticCamera("canon", "Canon_{}", (0.55, 0.3), 150, 0.4, (0.58, 1.0, 0.72), 0.0015, 0.002,
                    (1.03, 0.97, 1.03), 1.1, 2.2, 0.12, "edge_aware", 0.5, 80),
)


# ------------------------------------------------------------------------------------------------ image helpers


def _srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _mosaic(rgb: np.ndarray) -> np.ndarray:
    """RGGB Bayer sampling (OpenCV calls this layout ``BayerBG``)."""
    raw = rgb[..., 1].copy()
    raw[0::2, 0::2] = rgb[0::2, 0::2, 0]
    raw[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return raw


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    near = (1.5 * ax - 2.5) * ax * ax + 1
    far = ((-0.5 * ax + 2.5) * ax - 4) * ax + 2
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


def _bicubic_weights(size: int, scale: int) -> np.ndarray:
    """(size // scale, size) matrix of the Keys cubic kernel stretched by ``scale`` (antialiasing), rows sum to 1."""
    centres = (np.arange(size // scale) + 0.5) * scale - 0.5
    weights = _cubic((np.arange(size)[None, :] - centres[:, None]) / scale)
    return weights / weights.sum(axis=1, keepdims=True)


def bicubic_downsample(image: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(x, 1/scale)``-style antialiased bicubic (borders renormalised instead of mirrored)."""
    rows, cols = _bicubic_weights(image.shape[0], scale), _bicubic_weights(image.shape[1], scale)
    return np.einsum("ih,hwc,jw->ijc", rows, image.astype(np.float64), cols, optimize=True).astype(np.float32)


def _load_photo(name: str, max_side: int) -> np.ndarray:
    """A bundled scikit-image photo as float RGB in [0, 1], area-downscaled so its longest side is <= max_side."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
    image = np.atleast_3d(image)[..., :3]
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    image = image.astype(np.float32) / 255
    factor = max_side / max(image.shape[:2])
    if factor < 1:
        size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def _split_photo(image: np.ndarray, scale: int, max_test_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(train half, test half) along the longer side; test centre-cropped to max_test_side; both multiples of scale."""
    axis = 0 if image.shape[0] > image.shape[1] else 1
    half = image.shape[axis] // 2
    train, test = np.split(image, [half], axis=axis)

    def crop(region: np.ndarray, limit: int) -> np.ndarray:
        h, w = (min(n, limit) // scale * scale for n in region.shape[:2])
        top, left = (region.shape[0] - h) // 2, (region.shape[1] - w) // 2
        return region[top:top + h, left:left + w]

    return crop(train, max(train.shape)), crop(test, max_test_side)


# ----------------------------------------------------------------------------------------------------- building


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def _rng(seed: int, key: str, *stream: int) -> np.random.Generator:
    """Independent stream per (camera, photo, purpose), stable if the camera table is reordered."""
    return np.random.default_rng([seed, zlib.crc32(key.encode()), *stream])


def _build(
    root: Path,
    cameras: Sequence[SyntheticCamera | BicubicCamera],
    geometry: Geometry,
    *,
    scale: int,
    patch_size: int,
    patches_per_image: int,
    seed: int,
    progress: bool,
) -> Path:
    """Render every (camera, photo) into a DRealSR-style folder, unless the manifest says it is already there."""
    import skimage
    from tqdm import tqdm

    _check_options(scale=scale, patch_size=patch_size, patches_per_image=patches_per_image, seed=seed)
    config = {
        "version": BUILDER_VERSION, "skimage": skimage.__version__, "scale": scale, "patch_size": patch_size,
        "patches_per_image": patches_per_image, "seed": seed, "geometry": asdict(geometry),
        "cameras": [asdict(c) | {"type": type(c).__name__} for c in cameras],
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    # Two builds at once would clear and write each other's files: the second waits, then finds the first's.
    with exclusive_lock(lock_beside(root)):
        manifest_path = root / MANIFEST
        old = _read_manifest(manifest_path) if manifest_path.is_file() else None
        if old and old["hash"] == digest and _complete(root, old):
            return root
        for camera in cameras:
            probe = camera.image_id(TRAIN_ID_START)
            if camera_of(probe) != camera.key:
                raise DatasetError(f"camera {camera.key}: id_format gives {probe!r}, which does not match its pattern")
        photos = {name: _split_photo(_load_photo(name, geometry.max_side), scale, geometry.max_test_side)
                  for name in geometry.photos}
        _check_fits(photos, scale, patch_size)  # before _clear: a bad option leaves an earlier build as it was
        _clear(root, old, scale)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest_path, json.dumps({"hash": digest, "config": config, "files": [], "complete": False}))

        split_dirs = {split: (root / f"x{scale}" / f"{split.capitalize()}_x{scale}" / f"{split}_HR",
                              root / f"x{scale}" / f"{split.capitalize()}_x{scale}" / f"{split}_LR")
                      for split in ("train", "test")}
        for folder in (folder for pair in split_dirs.values() for folder in pair):
            folder.mkdir(parents=True, exist_ok=True)
        files: list[str] = []
        tasks = [(c, p) for c in cameras for p in enumerate(geometry.photos)]
        for camera, (index, name) in tqdm(tasks, desc=f"building {root.name}", disable=not progress, unit="photo"):
            train, test = photos[name]
            splits = (("train", train, TRAIN_ID_START + index), ("test", test, TEST_ID_START + index))
            for split, region, number in splits:
                hr = camera.hr(region, _rng(seed, camera.key, index, 0), scale)
                lr = camera.lr(region, _rng(seed, camera.key, index, 1), scale)
                image_id = camera.image_id(number)
                if split == "test":
                    crops = [("", 0, 0, lr.shape[0], lr.shape[1])]
                else:
                    lq_patch = patch_size // scale
                    positions = _rng(seed, camera.key, index, 2)
                    crops = [(f"_{k}", positions.integers(0, lr.shape[0] - lq_patch + 1),
                              positions.integers(0, lr.shape[1] - lq_patch + 1), lq_patch, lq_patch)
                             for k in range(1, patches_per_image + 1)]
                hr_dir, lr_dir = split_dirs[split]
                for suffix, top, left, height, width in crops:
                    hr_path = hr_dir / f"{image_id}_x{scale}{suffix}.png"
                    lr_path = lr_dir / f"{image_id}_x1{suffix}.png"
                    _write_png(hr_path, hr[top * scale:(top + height) * scale, left * scale:(left + width) * scale])
                    _write_png(lr_path, lr[top:top + height, left:left + width])
                    files += [hr_path.relative_to(root).as_posix(), lr_path.relative_to(root).as_posix()]
        manifest = {"hash": digest, "config": config, "files": sorted(files), "complete": True}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return root


def _check_options(*, scale: int, patch_size: int, patches_per_image: int, seed: int) -> None:
    """:class:`BuildOptionError` for an option no build can use (before anything is read or written)."""
    for option, value, minimum in (("scale", scale, 1), ("patch_size", patch_size, 1),
                                   ("patches_per_image", patches_per_image, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise BuildOptionError(option, f"must be an integer, got {value!r}")
        if value < minimum:
            raise BuildOptionError(option, f"must be {'positive' if minimum else 'non-negative'}, got {value}")
    if patch_size % scale:
        raise BuildOptionError("patch_size", f"{patch_size} is not a multiple of scale {scale}")
    from ldt.sr.metrics import DEFAULT_METRICS, smallest_gt_side

    least = smallest_gt_side(DEFAULT_METRICS, scale)[0]
    if patch_size < least:  # the training patches are the source camera's held-out validation pairs
        raise BuildOptionError("patch_size", f"{patch_size} px at scale {scale} is too small to validate on: PSNR/SSIM "
                                             f"crop {scale} px at each border (SSIM then needs 11 px), so they would "
                                             f"be NaN; use at least {-(-least // scale) * scale}")


def _check_fits(photos: dict[str, tuple[np.ndarray, np.ndarray]], scale: int, patch_size: int) -> None:
    """:class:`BuildOptionError` when a training patch does not fit in a photo's train half, or ``scale`` leaves a
    test image without LR pixels."""
    train_side = min(min(train.shape[:2]) for train, _ in photos.values())
    if patch_size > train_side:
        raise BuildOptionError("patch_size", f"{patch_size} px is larger than the smallest photo's train region "
                                             f"({train_side} px at scale {scale}); use at most "
                                             f"{train_side // scale * scale}")
    test_side = min(min(test.shape[:2]) for _, test in photos.values())
    if test_side < scale:
        raise BuildOptionError("scale", f"{scale} leaves a test image without LR pixels")


def _read_manifest(path: Path) -> dict:
    """A previous build's manifest. One that is unreadable is refused rather than taken as absent: it is what says
    which ``x<scale>`` folder a rebuild may delete."""
    remedy = f"delete {path.parent} to rebuild the benchmark"
    manifest = read_json_object(path, ("hash", "config", "files", "complete"), remedy=remedy)
    if not isinstance(manifest["config"], dict) or not isinstance(manifest["config"].get("scale"), int) \
            or not isinstance(manifest["files"], list):
        raise FileContentError(f"{path}: not a synthetic-camera manifest (config.scale / files); {remedy}")
    return manifest


def _complete(root: Path, manifest: dict) -> bool:
    """Whether the build ``manifest`` describes finished and every file it lists is still in ``root``."""
    return bool(manifest["complete"]) and all((root / name).is_file() for name in manifest["files"])


def build_complete(root: str | Path) -> bool | None:
    """Whether ``root`` holds a complete build (of whatever options), None where it holds none: what a stop leaves is
    said from this. An unreadable manifest counts as unfinished (the next build refuses it in its line)."""
    manifest_path = Path(root) / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        return _complete(Path(root), _read_manifest(manifest_path))
    except FileContentError:
        return False


def unfinished_build(path: str | Path) -> Path | None:
    """The generated build that ``path`` is (or lies in, up to three folders down: a ``dataroot_gt`` is
    ``ROOT/x4/Train_x4/train_HR``) where its manifest says it did not finish (a build stopped midway, or one in
    progress; an unreadable manifest counts so), else None: a dataset would read the part there, training and
    validating on it without a word. Files damaged or removed since are left to the dataset's own checks, which
    name each file."""
    folder = Path(path)
    for candidate in [folder, *list(folder.parents)[:3]]:
        manifest = candidate / MANIFEST
        if manifest.is_file():
            try:
                return None if _read_manifest(manifest)["complete"] is True else candidate
            except FileContentError:
                return candidate
    return None


def _clear(root: Path, old_manifest: dict | None, scale: int) -> None:
    """Remove a previous (possibly interrupted) build; refuse to write over a folder without our manifest. The
    manifest vouches only for its own ``x<scale>`` folder: an ``x<scale>`` of another scale beside it is not ours
    (a DRealSR download's x4 beside an x2 built there), and was written into, then deleted by the next rebuild."""
    ours = f"x{old_manifest['config']['scale']}" if old_manifest is not None else None
    if (root / f"x{scale}").exists() and f"x{scale}" != ours:
        whose = f"is not the build its {MANIFEST} describes ({root / ours})" if ours else f"has no {MANIFEST}"
        raise DatasetError(f"{root / f'x{scale}'} exists but {whose}; refusing to overwrite it")
    if ours is not None:
        shutil.rmtree(root / ours, ignore_errors=True)


def build_synthetic_cameras(
    root: str | Path = DEFAULT_ROOT,
    *,
    scale: int = 4,
    patch_size: int | None = None,
    patches_per_image: int | None = None,
    seed: int = 0,
    tiny: bool = False,
    progress: bool = True,
    cameras: Sequence[SyntheticCamera] = SYNTHETIC_CAMERAS,
) -> Path:
    """Build (or reuse, if cached with the same parameters) the six-camera DRealSR-style benchmark under ``root``.

    Defaults: 12 photos, HR patches 192 px (LR 48) x 8 per photo and camera, test images up to 512 px HR (LR <= 128).
    ``tiny`` uses 3 small photos, 32 px patches x 2: a few seconds, for tests. Returns ``root``.
    """
    geometry = TINY if tiny else FULL
    return _build(Path(root), cameras, geometry, scale=scale, patch_size=_default(patch_size, geometry.patch_size),
                  patches_per_image=_default(patches_per_image, geometry.patches_per_image), seed=seed,
                  progress=progress)


def build_bicubic_pretrain_set(
    root: str | Path = DEFAULT_BICUBIC_ROOT,
    *,
    scale: int = 4,
    patch_size: int | None = None,
    patches_per_image: int | None = None,
    seed: int = 0,
    tiny: bool = False,
    progress: bool = True,
) -> Path:
    """Clean bicubic pairs from the same train/test photo halves, camera key ``bicubic`` (ids ``bicubic_<n>``).

    For pre-training a network on clean bicubic SR before fine-tuning it on the source camera. Default patches per
    photo are twice the camera benchmark's. Cached like :func:`build_synthetic_cameras`.
    """
    geometry = TINY if tiny else FULL
    return _build(Path(root), (BicubicCamera(),), geometry, scale=scale,
                  patch_size=_default(patch_size, geometry.patch_size),
                  patches_per_image=_default(patches_per_image, 2 * geometry.patches_per_image), seed=seed,
                  progress=progress)


def _default(value: int | None, default: int) -> int:
    """``value`` unless it is None (0 is a value, refused by the checks, not a request for the default)."""
    return default if value is None else value


# ------------------------------------------------------------------------------------------------------ metrics


def camera_bicubic_psnr(root: str | Path, *, scale: int = 4, split: str = "test") -> dict[str, float]:
    """Mean PSNR (dB, 8-bit RGB, ``scale`` border pixels ignored) of bicubic-upsampled LR vs HR, per camera.

    A measure of how hard each camera's degradation is: if all cameras scored alike there would be no camera shift.
    """
    hr_dir, lr_dir = find_split_dirs(root, split, scale)
    scores: dict[str, list[float]] = defaultdict(list)
    for pair in pair_folders(hr_dir, lr_dir, scale).pairs:
        if pair.camera is None:
            continue
        lr = decode_image(Path(pair.lr).read_bytes(), pair.lr)
        hr = decode_image(Path(pair.hr).read_bytes(), pair.hr)[: lr.shape[0] * scale, : lr.shape[1] * scale]
        up = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_CUBIC)
        diff = (np.round(np.clip(up, 0, 1) * 255) - np.round(hr * 255))[scale:-scale, scale:-scale]
        scores[pair.camera].append(10 * math.log10(255.0**2 / max(float(np.mean(diff**2)), 1e-10)))
    order = [camera.key for camera in CAMERAS]
    return {key: float(np.mean(scores[key])) for key in sorted(scores, key=order.index)}


def format_psnr_table(psnrs: dict[str, float]) -> str:
    """Markdown table of :func:`camera_bicubic_psnr` results with the paper's column names."""
    lines = ["| camera | paper column | bicubic PSNR (dB) |", "|---|---|---|"]
    lines += [f"| {key} | {CAMERA_BY_KEY[key].column or '-'} | {value:.2f} |" for key, value in psnrs.items()]
    return "\n".join(lines)

