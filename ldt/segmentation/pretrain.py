"""The demo's pre-trained ResNet-18 backbone: LDT fine-tunes a pre-trained network, so the demo needs one too.

The paper starts from ImageNet weights (Cityscapes-trained DeepLabV3+ work usually does); the demo's stand-in is a
DeepLabV3+ ResNet-18 trained from scratch with plain FT on the generated ``pretrain`` domain (its own scenes, a mild
``varied`` camera, none of the target cameras' shifts; :mod:`ldt.segmentation.generated`). Only the backbone is
kept, under torchvision's names, so it loads like an ImageNet file (``backbone_weights=``) and every fine-tuning run
starts from a fresh random head, as LP-FT, DeFT and LDT expect. The file is cached as
``<root>/resnet18-<hash>.pth``, the hash covering every setting and the generated dataset's own hash: a run's record
names its weights file, so other settings must give another file, never silently different weights under a
recorded path.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ldt.atomic import atomic_torch_save, atomic_write_text, check_room, read_json_object
from ldt.cli import number_back, strict_json
from ldt.core.dual import copy_network
from ldt.core.methods import FineTune
from ldt.segmentation.classes import NUM_CLASSES
from ldt.segmentation.data import Augment, SegmentationDataset, scan_split
from ldt.segmentation.deeplabv3plus import DeepLabV3Plus, ResNetBackbone
from ldt.segmentation.generated import MANIFEST, PRETRAIN_DOMAIN, domain_root
from ldt.segmentation.train import Size, evaluate, pixel_cross_entropy, source_stream, train_and_select
from ldt.sweep import run_hash
from ldt.weights import check_cached_weights

DEFAULT_PRETRAIN_ROOT = Path("datasets/generated_streets_pretrained")
PRETRAIN_VERSION = 1  # bump when the recipe below changes in a way the settings do not show
BACKBONE = "resnet18"


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe; every field, the data's hash and this recipe's version key the cache."""

    steps: int = 300
    batch_size: int = 8
    crop_size: Size = (64, 64)  # the demo's fine-tuning crop
    lr: float = 2e-3
    head_channels: int = 64  # the head is thrown away; a narrow one trains the backbone at half the cost
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"pre-training {name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"pre-training batch_size must be at least 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"pre-training lr must be positive, got {self.lr}")
        Augment(self.crop_size)

    def settings(self, data_digest: str) -> dict:
        return {**asdict(self), "backbone": BACKBONE, "data": data_digest, "pretrain_version": PRETRAIN_VERSION}

    def weights_path(self, data_digest: str, root: str | Path = DEFAULT_PRETRAIN_ROOT) -> Path:
        """The cache file for this recipe on the generated dataset whose hash is ``data_digest``."""
        return Path(root) / f"{BACKBONE}-{run_hash(self.settings(data_digest))}.pth"


def data_digest(data_root: str | Path) -> str:
    """The hash a generated dataset was built with (from its manifest)."""
    manifest = Path(data_root) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{data_root} is not a generated dataset (no {MANIFEST})")
    return str(read_json_object(manifest, ("hash",), remedy=f"delete {data_root} to generate it again")["hash"])


def train_backbone(data_root: str | Path, config: PretrainConfig, progress: bool = False) -> tuple[dict, float]:
    """Plain FT of DeepLabV3+ ResNet-18 from random init on the ``pretrain`` domain, with fine-tuning's augmentation
    and normalisation (so its BatchNorm statistics fit what fine-tuning feeds it); returns the backbone's state dict
    (torchvision names) and the mIoU (%) on the domain's ``val`` images."""
    root = domain_root(data_root, PRETRAIN_DOMAIN)
    train, val = scan_split(root, "cityscapes", "train"), scan_split(root, "cityscapes", "val")
    torch.manual_seed(config.seed)
    model = DeepLabV3Plus(BACKBONE, NUM_CLASSES, aspp_channels=config.head_channels, decoder_channels=config.head_channels)
    parts = {PRETRAIN_DOMAIN: SegmentationDataset(train, augment=Augment(config.crop_size), seed=config.seed)}
    device = torch.device("cpu")
    held = SegmentationDataset(val)
    selection = train_and_select(
        FineTune(model), source_stream(parts, config.batch_size, config.seed, device), pixel_cross_entropy,
        steps=config.steps, eval_every=config.steps, lr=config.lr, weight_decay=0.0,
        validate=lambda network: (evaluate(network, held, device=device)["miou"], {}),
        evaluator=copy_network(model), progress=progress, desc=f"pre-train {BACKBONE}",
    )
    backbone = {k.removeprefix("backbone."): v for k, v in selection.state.items() if k.startswith("backbone.")}
    return backbone, selection.score


def pretrain_backbone(data_root: str | Path, config: PretrainConfig = PretrainConfig(),
                      root: str | Path = DEFAULT_PRETRAIN_ROOT, progress: bool = False) -> Path:
    """The cached backbone file for ``config`` on the generated dataset at ``data_root``, trained (and written
    atomically, its JSON summary first) only when it is not there yet."""
    digest = data_digest(data_root)
    path = config.weights_path(digest, root)
    if path.is_file():
        with torch.device("meta"):  # the shapes to check against; no weights are made
            check_cached_weights(path, ResNetBackbone(BACKBONE, output_stride=16))
        return path
    check_room(path.parent)  # before the training, not after it
    start = time.time()
    backbone, val_miou = train_backbone(data_root, config, progress)
    summary = {**config.settings(digest), "val_miou": val_miou, "wall_s": round(time.time() - start, 1)}
    atomic_write_text(path.with_suffix(".json"), strict_json(summary, indent=1) + "\n")
    atomic_torch_save(backbone, path)
    return path


def pretrain_summary(path: str | Path) -> dict:
    """The JSON summary written beside a weights file by :func:`pretrain_backbone`."""
    summary = read_json_object(Path(path).with_suffix(".json"), ("val_miou", "wall_s"),
                               remedy=f"delete it and {path} to pre-train again")
    # a NaN as an earlier version wrote it (the string 'nan') is the float again
    return {**summary, **{key: number_back(summary[key]) for key in ("val_miou", "wall_s")}}
