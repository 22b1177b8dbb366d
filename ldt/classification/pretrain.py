"""The demo's pre-trained ``tiny`` backbone: LDT fine-tunes a pre-trained network, so the demo needs one too.

The paper fine-tunes ImageNet weights; the demo's stand-in is a tiny CNN trained on a larger generated set of this
toy world (:func:`ldt.classification.toy.render_pretrain_images`: eight shape classes, a mild ``varied`` camera,
seeds disjoint from the downstream images). The weights are cached as ``<root>/tiny-<hash>.pth``, with the hash of
every setting in the name: a run's record names its weights file, so other pre-training settings must give another
file, never silently different weights under a recorded path. The 8-class head is dropped at load, as ImageNet's is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ldt.atomic import atomic_torch_save, atomic_write_text, check_room, read_json_object
from ldt.classification.data import ImageList, image_transform, training_stream
from ldt.classification.models import TinyCNN
from ldt.classification.toy import FORMAT_VERSION, PRETRAIN_CLASSES, PRETRAIN_STYLE, render_pretrain_images
from ldt.cli import number_back, strict_json
from ldt.classification.train import EVAL_BATCH, accuracy, cross_entropy
from ldt.core.methods import FineTune
from ldt.runner import domain_seed
from ldt.sweep import run_hash
from ldt.weights import check_cached_weights

DEFAULT_PRETRAIN_ROOT = Path("datasets/toy_domains_pretrained")
# Bump when the recipe below changes in a way the settings do not show. 2: each image's augmentation is seeded by
# (seed, pass, index) (ldt.runner.sample_seed), no longer drawn from the training's random numbers.
PRETRAIN_VERSION = 2


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe; every field (with the renderer's and this recipe's versions) keys the cache."""

    images_per_class: int = 400
    heldout_per_class: int = 25
    size: int = 32
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images_per_class", "heldout_per_class", "size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pre-training {name} must be positive, got {getattr(self, name)}")

    def settings(self) -> dict:
        return {**asdict(self), "classes": list(PRETRAIN_CLASSES), "style": PRETRAIN_STYLE,
                "toy_format_version": FORMAT_VERSION, "pretrain_version": PRETRAIN_VERSION}

    def weights_path(self, root: str | Path = DEFAULT_PRETRAIN_ROOT) -> Path:
        return Path(root) / f"tiny-{run_hash(self.settings())}.pth"


class InMemoryImages(ImageList):
    """(image, label) pairs held as PIL images, transformed on access as :class:`ldt.classification.data.ImageList`'s."""

    def load(self, item: Image.Image) -> Image.Image:
        return item


def train_tiny(config: PretrainConfig, progress: bool = False) -> tuple[TinyCNN, float]:
    """Train the tiny CNN on the generated pre-training set, with fine-tuning's augmentation and normalisation (so
    its BatchNorm statistics fit the inputs it will see); returns it with its accuracy on held-out generated images."""
    torch.manual_seed(config.seed)
    train = render_pretrain_images(config.images_per_class, size=config.size, seed=config.seed)
    held = render_pretrain_images(config.heldout_per_class, size=config.size, seed=config.seed, start=config.images_per_class)
    model = TinyCNN(len(PRETRAIN_CLASSES))
    plain = FineTune(model)
    optimizers = [torch.optim.Adam(branch.parameters, lr=config.lr) for branch in plain.branches()]
    augmented = InMemoryImages(train, image_transform(config.size, augment=True), seed=domain_seed(config.seed, PRETRAIN_STYLE))
    stream = training_stream([augmented], config.batch_size)
    for _ in tqdm(range(config.steps), desc="pre-train tiny", leave=False, disable=not progress, dynamic_ncols=True):
        plain.train_step(next(stream), cross_entropy, optimizers)
    held_loader = DataLoader(InMemoryImages(held, image_transform(config.size, augment=False)), batch_size=EVAL_BATCH)
    return model, accuracy(model, held_loader, torch.device("cpu"))


def pretrain_tiny(config: PretrainConfig = PretrainConfig(), root: str | Path = DEFAULT_PRETRAIN_ROOT, progress: bool = False) -> Path:
    """The cached weights file for ``config``, trained (and written atomically, with a JSON summary beside it) only
    when it is not there yet."""
    path = config.weights_path(root)
    if path.is_file():
        check_cached_weights(path, TinyCNN(len(PRETRAIN_CLASSES)))
        return path
    check_room(path.parent)  # before the training, not after it
    start = time.time()
    model, heldout = train_tiny(config, progress)
    summary = {**config.settings(), "heldout_accuracy": heldout, "wall_s": round(time.time() - start, 1)}
    atomic_write_text(path.with_suffix(".json"), strict_json(summary, indent=1) + "\n")  # first: weights imply it
    atomic_torch_save(model.state_dict(), path)
    return path


def pretrain_summary(path: Path) -> dict:
    """The JSON summary written beside a weights file by :func:`pretrain_tiny`."""
    summary = read_json_object(path.with_suffix(".json"), ("classes", "heldout_accuracy", "wall_s"),
                               remedy=f"delete it and {path} to pre-train again")
    # a NaN as an earlier version wrote it (the string 'nan') is the float again
    return {**summary, **{key: number_back(summary[key]) for key in ("heldout_accuracy", "wall_s")}}
