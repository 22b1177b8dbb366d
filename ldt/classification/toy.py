"""A small multi-domain image dataset generated in code (no downloads), written in the DomainBed layout.

Four classes of rendered shapes (circle, square, triangle, cross) on textured backgrounds, with random colour, size,
position and rotation. Four domains see the same kind of scenes through different "cameras": ``photo`` (clean),
``cast`` (warm colour cast and blur), ``noisy`` (sensor noise, desaturated) and ``faded`` (low contrast and heavy
JPEG). Every image is seeded by (seed, domain, class, index), so the dataset is identical on every machine; a
manifest makes a second call with the same settings a no-op.

The same renderer also draws the demo's pre-training set (:func:`render_pretrain_images`), this toy world's
"ImageNet": more classes (the four above and four more shapes) seen through a ``varied`` camera with mild random
colour balance, contrast and noise, none of the four domains' settings.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ldt.atomic import build_once

CLASSES = ("circle", "square", "triangle", "cross")
DOMAINS = ("photo", "cast", "noisy", "faded")
PRETRAIN_CLASSES = CLASSES + ("star", "ring", "half_disc", "ell")
PRETRAIN_STYLE = "varied"
PRETRAIN_STREAM = 1000  # seeds (seed, 1000, class, index): never a downstream image's (seed, domain, class, index)
DEFAULT_ROOT = Path("datasets/toy_domains")
FORMAT_VERSION = 1
MANIFEST = "toy_domains.json"
RENDER_SCALE = 4  # draw large, then downsample: anti-aliased edges at small sizes


def unit_polygon(kind: str) -> tuple[list[tuple[float, float]], float]:
    """Vertices of a polygon class around the origin, and the factor that scales them to the shape's radius."""
    t = 1 / 3
    if kind == "square":
        return [(1, 1), (-1, 1), (-1, -1), (1, -1)], 1 / math.sqrt(2)
    if kind == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)], 1.0
    if kind == "cross":  # a plus sign with arms one third of its width
        return [(t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t), (-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t)], 1.0
    if kind == "star":  # five points, inner radius 0.45
        angles, radii = [math.pi / 2 + k * math.pi / 5 for k in range(10)], [1.0, 0.45] * 5
        return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)], 1.0
    if kind == "ell":  # an L with arms two thirds of its width
        return [(-1, 1), (-1, -1), (1, -1), (1, -t), (-t, -t), (-t, 1)], 1.0
    raise ValueError(f"no polygon for shape {kind!r}")


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of polygon class ``kind`` centred at (cx, cy), rotated by ``angle``."""
    points, factor = unit_polygon(kind)
    scale = radius * factor
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in points]


def render_scene(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One clean float RGB image in [0, 1]: a gradient-and-noise background with one shape of class ``kind``."""
    big = size * RENDER_SCALE
    ramp = np.linspace(0.0, 1.0, big)[None, :, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    start, end = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    background = start + (end - start) * ramp
    texture = rng.normal(0.0, 0.05, (big // 8 + 1, big // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:big, :big]
    background = np.clip(background + texture, 0.0, 1.0)
    mean = background.mean(axis=(0, 1))
    colour = rng.uniform(0.0, 1.0, 3)
    while np.abs(colour - mean).mean() < 0.3:  # keep the shape visible against its background
        colour = rng.uniform(0.0, 1.0, 3)
    image = Image.fromarray((background * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.36) * big
    cx, cy = rng.uniform(radius, big - radius, 2)
    fill = tuple(int(v * 255) for v in colour)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round(0.35 * radius)))
    elif kind == "half_disc":
        start = rng.uniform(0, 360)
        draw.pieslice(box, start, start + 180, fill=fill)
    else:
        draw.polygon(shape_polygon(kind, cx, cy, radius, rng.uniform(0, 2 * math.pi)), fill=fill)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float64) / 255.0


def apply_style(domain: str, image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The domain's 'camera': a deterministic-in-kind, randomly-strong style shift."""
    if domain == PRETRAIN_STYLE:  # everyday variation in every direction, no fixed cast, blur, fading or JPEG
        grey = image.mean(axis=2, keepdims=True)
        image = grey + rng.uniform(0.6, 1.2) * (image * rng.uniform(0.85, 1.15, 3) - grey)  # colour balance, saturation
        image = 0.5 + rng.uniform(0.75, 1.1) * (image - 0.5) + rng.uniform(-0.08, 0.08)  # contrast, brightness
        image = image + rng.normal(0.0, rng.uniform(0.0, 0.08), image.shape)  # sensor noise
    elif domain == "cast":
        image = image * np.array([1.25, 0.95, 0.6]) + rng.uniform(0.0, 0.08)
    elif domain == "noisy":
        grey = image.mean(axis=2, keepdims=True)
        image = 0.4 * image + 0.6 * grey + rng.normal(0.0, rng.uniform(0.05, 0.12), image.shape)
    elif domain == "faded":
        image = 0.55 + rng.uniform(0.4, 0.6) * (image - 0.5)
    picture = Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8))
    if domain == "cast":
        picture = picture.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.6, 1.2) * picture.width / 32))
    elif domain == "faded":
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(rng.integers(20, 40)))
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return picture


def build_toy_domains(root: str | Path = DEFAULT_ROOT, *, images_per_class: int = 20, size: int = 32, seed: int = 0) -> Path:
    """Write (or reuse) ``root/<domain>/<class>/<index>.png``: 4 domains x 4 classes x ``images_per_class``.

    Built once (:func:`ldt.atomic.build_once`: locked, staged, renamed into place); a manifest with the settings
    lets later calls skip the work, and other settings rebuild.
    """
    settings = {"format_version": FORMAT_VERSION, "images_per_class": images_per_class, "size": size, "seed": seed}

    def write(folder: Path) -> None:
        for d, domain in enumerate(DOMAINS):
            for c, kind in enumerate(CLASSES):
                (folder / domain / kind).mkdir(parents=True)
                for i in range(images_per_class):
                    rng = np.random.default_rng([seed, d, c, i])
                    image = apply_style(domain, render_scene(kind, size, rng), rng)
                    image.save(folder / domain / kind / f"{i:04d}.png")

    return build_once(root, "toy dataset", MANIFEST, settings, write)


def render_pretrain_images(count: int, *, size: int = 32, seed: int = 0, start: int = 0) -> list[tuple[Image.Image, int]]:
    """Images ``start .. start + count - 1`` of every pre-training class through the ``varied`` camera, as
    (image, class index in :data:`PRETRAIN_CLASSES`); kept in memory, since only the weights trained on them are cached."""
    images = []
    for c, kind in enumerate(PRETRAIN_CLASSES):
        for i in range(start, start + count):
            rng = np.random.default_rng([seed, PRETRAIN_STREAM, c, i])
            images.append((apply_style(PRETRAIN_STYLE, render_scene(kind, size, rng), rng), c))
    return images
