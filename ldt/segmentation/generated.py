"""A generated multi-domain street-scene segmentation dataset (no downloads), written in the Cityscapes layout.

Why: Cityscapes, BDD100K and Mapillary are large manual downloads; tests and the CPU demo still need a source domain
and target domains that differ by "camera" while sharing one label space. Scenes are drawn procedurally through a
pinhole camera over a flat street: sky, a terrain ground plane, a road trapezoid with lane markings converging to the
vanishing point, curbed sidewalks, building facades with windows (some fronted by walls), fences in the gaps, trees,
poles carrying traffic signs or traffic lights, cars seen from behind and people on the sidewalks, painted far to
near. Per-pixel labels use 13 of the 19 Cityscapes train ids (:data:`SCENE_CLASSES`; no rider, truck, bus, train,
motorcycle or bicycle). Scenes are drawn at twice the size and reduced (area filter for images, nearest for labels).

Domains (:data:`DOMAINS`) photograph the *same* scenes through different cameras, so every domain has identical
labels and differences between domains come from the cameras alone: ``clean`` (the source: unaltered render),
``cast`` (strong warm colour cast), ``fog`` (depth-dependent haze), ``night`` (dark, bluish, sensor noise),
``vivid`` (over-saturated, high contrast, heavy JPEG) and ``blur`` (defocus). The pre-training split ``pretrain``
(this world's stand-in for ImageNet / large-scale pre-training) has its own scenes from a disjoint seed stream, seen
through a ``varied`` camera: mild random colour balance, saturation, contrast, brightness and noise, none of the
target cameras' casts, haze, darkness, JPEG or blur.

Layout: one Cityscapes-style root per domain, the domain name doubling as the city folder::

    <root>/<domain>/leftImg8bit/{train,val}/<domain>/<domain>_<index:06d>_leftImg8bit.png
    <root>/<domain>/gtFine/{train,val}/<domain>/<domain>_<index:06d>_gtFine_labelTrainIds.png
    <root>/generated_streets.json      the settings and their hash (the cache key)

so ``scan_split(<root>/<domain>, "cityscapes", split)`` reads any domain. Every file is seeded by (seed, stream,
split, index[, domain]) and written with deterministic encoders: rebuilding gives byte-identical files, and a second
call with the same settings is a no-op.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ldt.atomic import build_once
from ldt.segmentation.classes import IGNORE_INDEX, TRAIN_ID

DOMAINS: tuple[str, ...] = ("clean", "cast", "fog", "night", "vivid", "blur")
SOURCE_DOMAIN = "clean"
PRETRAIN_DOMAIN = "pretrain"
PRETRAIN_STYLE = "varied"
SCENE_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "car",
)
DEFAULT_ROOT = Path("datasets/generated_streets")
MANIFEST = "generated_streets.json"
FORMAT_VERSION = 1  # bump when the renderer or a camera changes, so cached builds are rebuilt
RENDER_SCALE = 2
SKY_DEPTH = 1e4  # metres; "infinitely" far for the haze
SCENE_STREAM, STYLE_STREAM, PRETRAIN_STREAM = 0, 1, 2  # seed streams: downstream scenes never equal pre-training ones
SPLIT_STREAM = {"train": 0, "val": 1}


@dataclass(frozen=True)
class GeneratedConfig:
    """The dataset's size; every field keys the cache. Images are ``height`` x ``width`` pixels."""

    height: int = 96
    width: int = 192
    train_per_domain: int = 40
    val_per_domain: int = 20
    pretrain_train: int = 200
    pretrain_val: int = 40
    seed: int = 0
    domains: tuple[str, ...] = DOMAINS

    def __post_init__(self) -> None:
        for name in ("height", "width", "train_per_domain", "val_per_domain", "pretrain_train", "pretrain_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"generated data option {name} must be positive, got {getattr(self, name)}")
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"generated data domains must be a non-empty subset of {DOMAINS}, got {self.domains}")

    def settings(self) -> dict:
        return {**asdict(self), "domains": list(self.domains), "format_version": FORMAT_VERSION}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ scene rendering


class Canvas:
    """Image, label and depth drawn together: every labelled shape goes into all three, details into the image."""

    def __init__(self, height: int, width: int) -> None:
        self.image = Image.new("RGB", (width, height))
        self.label = Image.new("L", (width, height), IGNORE_INDEX)
        self.depth = Image.new("F", (width, height), SKY_DEPTH)
        self._image, self._label, self._depth = (ImageDraw.Draw(x) for x in (self.image, self.label, self.depth))

    def fill(self, polygon: list[tuple[float, float]], colour: tuple[int, int, int], name: str, depth: float | None) -> None:
        """A labelled shape; ``depth`` None leaves the depth map alone (the ground plane's depth is analytic)."""
        self._image.polygon(polygon, fill=colour)
        self._label.polygon(polygon, fill=TRAIN_ID[name])
        if depth is not None:
            self._depth.polygon(polygon, fill=float(depth))

    def ellipse(self, box: tuple[float, float, float, float], colour: tuple[int, int, int], name: str | None,
                depth: float) -> None:
        """An ellipse; ``name`` None draws image detail only."""
        self._image.ellipse(box, fill=colour)
        if name is not None:
            self._label.ellipse(box, fill=TRAIN_ID[name])
            self._depth.ellipse(box, fill=float(depth))

    def ignore_ellipse(self, box: tuple[float, float, float, float], colour: tuple[int, int, int]) -> None:
        """A nearby unlabelled shape (the ego vehicle): ignore label, at the camera."""
        self._image.ellipse(box, fill=colour)
        self._label.ellipse(box, fill=IGNORE_INDEX)
        self._depth.ellipse(box, fill=0.0)

    def detail(self, polygon: list[tuple[float, float]], colour: tuple[int, int, int]) -> None:
        """Image-only detail inside an already labelled shape (windows, markings)."""
        self._image.polygon(polygon, fill=colour)


def _jitter(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)


def _pick(rng: np.random.Generator, colours: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    return colours[int(rng.integers(len(colours)))]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera ``height`` metres above a flat street and ``offset`` metres right of the road's centre line;
    X right, Y up, Z forward (metres); ``centre`` and ``horizon`` locate the vanishing point (pixels)."""

    focal: float
    horizon: float
    centre: float
    height: float
    offset: float

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.centre + self.focal * (x - self.offset) / z, self.horizon + self.focal * (self.height - y) / z

    def quad(self, x0: float, x1: float, y0: float, y1: float, z: float) -> list[tuple[float, float]]:
        """A camera-facing rectangle at depth ``z``."""
        return [self.project(x0, y0, z), self.project(x1, y0, z), self.project(x1, y1, z), self.project(x0, y1, z)]

    def ground(self, x0: float, x1: float, z0: float, z1: float) -> list[tuple[float, float]]:
        """A strip of the ground plane."""
        return [self.project(x0, 0, z0), self.project(x1, 0, z0), self.project(x1, 0, z1), self.project(x0, 0, z1)]

    def facade(self, x: float, z0: float, z1: float, y1: float, y0: float = 0.0) -> list[tuple[float, float]]:
        """A vertical wall in the plane X = ``x`` from depth z0 to z1, height y0..y1."""
        return [self.project(x, y0, z0), self.project(x, y0, z1), self.project(x, y1, z1), self.project(x, y1, z0)]

    def pixels(self, metres: float, z: float) -> float:
        return self.focal * metres / z


NEAR, FAR = 0.6, 400.0  # the ground is drawn between these depths (metres)
MIN_OBJECT_DEPTH = 2.5  # nearer objects would fill the frame


def _draw_sky_and_ground(canvas: Canvas, cam: Camera, rng: np.random.Generator) -> None:
    height, width = canvas.label.height, canvas.label.width
    horizon = int(math.ceil(cam.horizon))
    zenith, haze = _jitter(rng, (70, 120, 200), 25), _jitter(rng, (190, 210, 230), 15)
    rows = np.linspace(0.0, 1.0, max(horizon, 1))[:, None, None]
    sky = (np.array(zenith) * (1 - rows) + np.array(haze) * rows).repeat(width, 1)
    canvas.image.paste(Image.fromarray(sky.astype(np.uint8)), (0, 0))
    canvas.label.paste(TRAIN_ID["sky"], (0, 0, width, horizon))
    for _ in range(int(rng.integers(0, 4))):  # clouds: sky detail
        cx, cy = rng.uniform(0, width), rng.uniform(0, 0.7 * horizon)
        rx, ry = rng.uniform(0.05, 0.15) * width, rng.uniform(0.02, 0.06) * height
        canvas.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), _jitter(rng, (235, 238, 242), 10), None, SKY_DEPTH)
    ground = [(0, cam.horizon), (width, cam.horizon), (width, height), (0, height)]
    canvas.fill(ground, _jitter(rng, (110, 140, 70), 20), "terrain", None)
    rows = np.arange(height, dtype=np.float64)[:, None] + 0.5 - cam.horizon
    depth = np.where(rows > 0, cam.focal * cam.height / np.maximum(rows, 1e-6), SKY_DEPTH).clip(max=SKY_DEPTH)
    canvas.depth.paste(Image.fromarray(np.repeat(depth, width, 1).astype(np.float32), mode="F"), (0, 0))


def _draw_street(canvas: Canvas, cam: Camera, rng: np.random.Generator, road: float, walk: float) -> None:
    canvas.fill(cam.ground(-road, road, NEAR, FAR), _jitter(rng, (80, 80, 84), 12), "road", None)
    marking, dash = _jitter(rng, (225, 225, 215), 10), rng.uniform(2.0, 4.0)
    z = NEAR + rng.uniform(0, 2 * dash)
    while z < 80:  # dashed centre line and solid edge lines: part of "road", as in Cityscapes
        canvas.detail(cam.ground(-0.08, 0.08, z, z + dash), marking)
        z += 2 * dash
    for side in (-1, 1):
        canvas.detail(cam.ground(side * (road - 0.25), side * (road - 0.1), NEAR, FAR), marking)
        inner, outer = side * road, side * (road + walk)
        canvas.fill(cam.ground(min(inner, outer), max(inner, outer), NEAR, FAR), _jitter(rng, (170, 160, 150), 15),
                    "sidewalk", None)
        curb = side * (road + 0.2)  # the curb, darker, is sidewalk as in Cityscapes
        canvas.detail(cam.ground(min(inner, curb), max(inner, curb), NEAR, FAR), _jitter(rng, (130, 125, 120), 10))


def _draw_buildings(canvas: Canvas, cam: Camera, rng: np.random.Generator, side: int, x_front: float) -> list[float]:
    """Facades along one side, far to near; returns the depth ranges of gaps (for fences and trees)."""
    blocks, gaps, z = [], [], rng.uniform(1.0, 6.0)
    while z < 120:
        length = rng.uniform(8.0, 25.0)
        if rng.random() < 0.2:
            gaps.append((z, z + length))
        else:
            blocks.append((z, z + length, rng.uniform(6.0, 25.0), x_front + side * rng.uniform(0.0, 2.0)))
        z += length
    step = 2.0  # facades are drawn in 2 m slices so the depth map (haze) varies along them
    for z0, z1, top, x in reversed(blocks):
        wall_colour = _jitter(rng, _pick(rng, [(180, 160, 140), (150, 90, 70), (200, 200, 190), (120, 120, 130)]), 15)
        for a in np.arange(z1, z0, -step):
            canvas.fill(cam.facade(x, max(a - step, z0), a, top), wall_colour, "building", (2 * a - step) / 2)
        glass = _jitter(rng, (60, 75, 95), 15)
        for floor in np.arange(1.0, top - 1.5, 3.0):
            for a in np.arange(z0 + 0.8, z1 - 1.2, 2.5):
                if cam.pixels(1.2, a) >= 1.0:
                    canvas.detail(cam.facade(x, a, a + 1.2, floor + 1.5, floor), glass)
        if rng.random() < 0.3:  # a low wall in front of the building
            wall_x = x - side * 0.3
            canvas.fill(cam.facade(wall_x, z0, z1, rng.uniform(0.8, 1.6)), _jitter(rng, (140, 135, 125), 15), "wall", z0)
    return gaps


def _draw_fence(canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z0: float, z1: float) -> None:
    top = rng.uniform(1.0, 1.8)
    canvas.fill(cam.facade(x, z0, z1, top), _jitter(rng, (150, 140, 120), 15), "fence", z0)
    bars = _jitter(rng, (90, 80, 70), 10)
    for a in np.arange(z0, z1, 0.5):  # darker posts: fence texture
        if cam.pixels(0.1, a) >= 0.5:
            canvas.detail(cam.facade(x, a, a + 0.1, top), bars)


def _draw_tree(canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    trunk = cam.quad(x - 0.15, x + 0.15, 0.0, 2.5, z)
    canvas.fill(trunk, _jitter(rng, (90, 70, 50), 10), "vegetation", z)
    cx, cy = cam.project(x, 3.5 + rng.uniform(0, 1.5), z)
    r = cam.pixels(rng.uniform(1.5, 3.0), z)
    leaves = _jitter(rng, (60, 110, 45), 20)
    canvas.ellipse((cx - r, cy - 1.2 * r, cx + r, cy + r), leaves, "vegetation", z)
    for _ in range(4):  # lighter clumps: foliage texture
        dx, dy, rr = rng.uniform(-0.6, 0.6) * r, rng.uniform(-0.8, 0.5) * r, rng.uniform(0.25, 0.45) * r
        canvas.ellipse((cx + dx - rr, cy + dy - rr, cx + dx + rr, cy + dy + rr), _jitter(rng, leaves, 25), None, z)


def _draw_pole(canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    top = rng.uniform(3.5, 6.0)
    canvas.fill(cam.quad(x - 0.08, x + 0.08, 0.0, top, z), _jitter(rng, (110, 110, 115), 10), "pole", z)
    if rng.random() < 0.5:  # a sign on the pole
        size, y = rng.uniform(0.5, 0.8), top - 0.9
        colour = _pick(rng, [(30, 80, 200), (200, 40, 40), (235, 235, 235), (240, 200, 30)])
        canvas.fill(cam.quad(x - size / 2, x + size / 2, y, y + size, z), colour, "traffic sign", z)
        inner = 0.25 * size
        canvas.detail(cam.quad(x - inner, x + inner, y + inner, y + size - inner, z), _jitter(rng, (250, 250, 250), 5))
    else:  # a traffic light
        y = top - 1.0
        canvas.fill(cam.quad(x - 0.18, x + 0.18, y, y + 0.9, z), _jitter(rng, (35, 35, 35), 8), "traffic light", z)
        lit = int(rng.integers(0, 3))
        for k, colour in enumerate(((220, 40, 30), (230, 180, 20), (40, 200, 80))):
            cx, cy = cam.project(x, y + 0.75 - 0.3 * k, z)
            r = cam.pixels(0.1, z)
            canvas.ellipse((cx - r, cy - r, cx + r, cy + r), colour if k == lit else tuple(c // 4 for c in colour), None, z)


def _draw_car(canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    body = _jitter(rng, _pick(rng, [(180, 20, 30), (20, 40, 140), (200, 200, 200), (30, 30, 30), (90, 90, 100)]), 20)
    half = rng.uniform(0.85, 1.0)
    for side in (-1, 1):
        outer, inner = x + side * half, x + side * (half - 0.3)
        canvas.fill(cam.quad(min(outer, inner), max(outer, inner), 0.0, 0.45, z), (25, 25, 25), "car", z)
    canvas.fill(cam.quad(x - half, x + half, 0.3, 1.1, z), body, "car", z)
    canvas.fill(cam.quad(x - 0.75 * half, x + 0.75 * half, 1.1, rng.uniform(1.5, 1.7), z), body, "car", z)
    canvas.detail(cam.quad(x - 0.65 * half, x + 0.65 * half, 1.15, 1.45, z), _jitter(rng, (50, 60, 75), 10))
    for lamp in (-1, 1):
        canvas.detail(cam.quad(x + lamp * half * 0.7 - 0.12, x + lamp * half * 0.7 + 0.12, 0.8, 0.95, z), (200, 30, 30))


def _draw_person(canvas: Canvas, cam: Camera, rng: np.random.Generator, x: float, z: float) -> None:
    tall = rng.uniform(1.55, 1.9)
    legs, shirt = _jitter(rng, (50, 50, 70), 25), _jitter(rng, tuple(int(v) for v in rng.integers(40, 220, 3)), 10)
    for leg in (-1, 1):
        canvas.fill(cam.quad(x + leg * 0.12 - 0.07, x + leg * 0.12 + 0.07, 0.0, 0.5 * tall, z), legs, "person", z)
    canvas.fill(cam.quad(x - 0.22, x + 0.22, 0.48 * tall, 0.86 * tall, z), shirt, "person", z)
    cx, cy = cam.project(x, 0.93 * tall, z)
    r = cam.pixels(0.11, z)
    canvas.ellipse((cx - r, cy - r, cx + r, cy + r), _jitter(rng, (200, 160, 130), 30), "person", z)


def render_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clean street scene: (float RGB image in [0, 1], uint8 train-id label, float depth in metres), H x W."""
    big_h, big_w = height * RENDER_SCALE, width * RENDER_SCALE
    cam = Camera(focal=big_w * rng.uniform(0.55, 0.75), horizon=big_h * rng.uniform(0.36, 0.48),
                 centre=big_w * rng.uniform(0.4, 0.6), height=rng.uniform(1.3, 1.8), offset=rng.uniform(-1.5, 1.5))
    canvas = Canvas(big_h, big_w)
    _draw_sky_and_ground(canvas, cam, rng)
    road, walk = rng.uniform(3.0, 6.0), rng.uniform(1.8, 4.0)
    _draw_street(canvas, cam, rng, road, walk)
    objects: list[tuple[float, str, float]] = []  # (depth, kind, x): drawn far to near after the facades
    for side in (-1, 1):
        front = side * (road + walk + rng.uniform(0.0, 1.0))
        for z0, z1 in _draw_buildings(canvas, cam, rng, side, front):
            if rng.random() < 0.5:
                _draw_fence(canvas, cam, rng, side * (road + walk), z0, z1)
            objects += [(z, "tree", side * (road + walk * rng.uniform(0.5, 0.9))) for z in np.arange(z0 + 2, z1, 6.0)]
        objects += [(z, "pole", side * (road + 0.5)) for z in np.cumsum(rng.uniform(8, 25, 6)) + rng.uniform(2, 6)]
        objects += [(rng.uniform(3, 35), "person", side * (road + rng.uniform(0.6, walk - 0.3)))
                    for _ in range(int(rng.integers(0, 4)))]
    for _ in range(int(rng.integers(1, 5))):
        lane = rng.choice([-0.5, 0.5]) * road + rng.uniform(-0.3, 0.3)
        objects.append((rng.uniform(5, 50), "car", lane))
    draw = {"tree": _draw_tree, "pole": _draw_pole, "person": _draw_person, "car": _draw_car}
    for z, kind, x in sorted(objects, key=lambda item: -item[0]):
        if z > MIN_OBJECT_DEPTH:
            draw[kind](canvas, cam, rng, x, z)
    if rng.random() < 0.5:  # the ego vehicle's bonnet at the bottom, labelled ignore as in Cityscapes
        top = big_h * rng.uniform(0.9, 0.96)
        canvas.ignore_ellipse((-0.2 * big_w, top, 1.2 * big_w, top + 0.5 * big_h), _jitter(rng, (40, 40, 45), 10))
    image = canvas.image.resize((width, height), Image.Resampling.BOX)
    label = canvas.label.resize((width, height), Image.Resampling.NEAREST)
    depth = canvas.depth.resize((width, height), Image.Resampling.NEAREST)
    texture = rng.normal(0.0, 0.02, (height, width, 1))  # fine grain, so flat regions are not perfectly flat
    pixels = np.clip(np.asarray(image, np.float64) / 255.0 + texture, 0.0, 1.0)
    return pixels, np.asarray(label, np.uint8), np.asarray(depth, np.float64)


# ------------------------------------------------------------------ cameras


def _saturate(image: np.ndarray, amount: float) -> np.ndarray:
    grey = image @ np.array([0.299, 0.587, 0.114])
    return grey[..., None] + amount * (image - grey[..., None])


def _to_picture(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8))


def apply_camera(style: str, image: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The domain's camera on a clean render: one fixed kind of shift per style, its strength drawn per image."""
    scale = image.shape[1] / 192  # blur radii are defined for 192 px wide images
    if style == "cast":
        image = image * np.array([1.2, 1.0, 0.6]) * rng.uniform(0.95, 1.1) + np.array([0.08, 0.04, 0.0])
    elif style == "fog":
        transmission = np.exp(-depth / rng.uniform(20.0, 40.0))[..., None]
        image = image * transmission + rng.uniform(0.75, 0.88) * (1 - transmission)
    elif style == "night":
        image = rng.uniform(0.22, 0.32) * image ** 1.5 * np.array([0.75, 0.85, 1.25])
        image = image + rng.normal(0.0, rng.uniform(0.03, 0.05), image.shape)
    elif style == "vivid":
        image = 0.5 + rng.uniform(1.25, 1.45) * (_saturate(image, rng.uniform(1.9, 2.4)) - 0.5)
    elif style == PRETRAIN_STYLE:  # everyday variation in every direction
        image = _saturate(image * rng.uniform(0.88, 1.12, 3), rng.uniform(0.6, 1.3))
        image = 0.5 + rng.uniform(0.75, 1.15) * (image - 0.5) + rng.uniform(-0.08, 0.08)
        image = image + rng.normal(0.0, rng.uniform(0.0, 0.04), image.shape)
    elif style not in ("clean", "blur"):
        raise ValueError(f"unknown camera style {style!r}")
    picture = _to_picture(image)
    if style == "night":
        picture = picture.filter(ImageFilter.GaussianBlur(0.5 * scale))
    elif style == "blur":
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(1.6, 2.4) * scale))
    elif style == "vivid":
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(rng.integers(8, 16)))
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return picture


# ------------------------------------------------------------------ building the folders


def domain_root(root: str | Path, domain: str) -> Path:
    """The Cityscapes-layout root of one generated domain (or of ``pretrain``)."""
    return Path(root) / domain


def _write(folder: Path, domain: str, split: str, index: int, picture: Image.Image, label: np.ndarray) -> None:
    name = f"{domain}_{index:06d}"
    image_dir = folder / domain / "leftImg8bit" / split / domain
    label_dir = folder / domain / "gtFine" / split / domain
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    picture.save(image_dir / f"{name}_leftImg8bit.png", optimize=False, compress_level=6)
    Image.fromarray(label, mode="L").save(label_dir / f"{name}_gtFine_labelTrainIds.png", optimize=False, compress_level=6)


def _scene_rng(config: GeneratedConfig, stream: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, SPLIT_STREAM[split], index])


def build_generated(root: str | Path = DEFAULT_ROOT, config: GeneratedConfig = GeneratedConfig()) -> Path:
    """Write (or reuse) the generated dataset under ``root``: every domain of ``config`` plus ``pretrain``.

    Built once (:func:`ldt.atomic.build_once`: locked, staged, renamed into place); the manifest (settings and
    their hash) makes a later call with the same settings a no-op, and other settings rebuild. A non-empty folder
    without the manifest is never overwritten.
    """
    def write(folder: Path) -> None:
        counts = {"train": config.train_per_domain, "val": config.val_per_domain}
        for split, count in counts.items():
            for index in range(count):
                scene_rng = _scene_rng(config, SCENE_STREAM, split, index)
                image, label, depth = render_scene(config.height, config.width, scene_rng)
                for d, domain in enumerate(DOMAINS):
                    if domain in config.domains:
                        rng = np.random.default_rng([config.seed, STYLE_STREAM, SPLIT_STREAM[split], index, d])
                        _write(folder, domain, split, index, apply_camera(domain, image, depth, rng), label)
        for split, count in {"train": config.pretrain_train, "val": config.pretrain_val}.items():
            for index in range(count):
                rng = _scene_rng(config, PRETRAIN_STREAM, split, index)
                image, label, depth = render_scene(config.height, config.width, rng)
                _write(folder, PRETRAIN_DOMAIN, split, index, apply_camera(PRETRAIN_STYLE, image, depth, rng), label)

    return build_once(root, "street dataset", MANIFEST, {"settings": config.settings(), "hash": config.digest()},
                      write)
