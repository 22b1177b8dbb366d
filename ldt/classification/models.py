"""Backbones with a fresh classification head: torchvision ResNet-18/50 and ViT-B/16, and a tiny CNN for tests.

Pre-trained weights are read only from a local file (``weights=path``): nothing is downloaded. The file's own head
(e.g. ImageNet's 1000-class ``fc``) is dropped and a randomly initialised head for ``num_classes`` takes its place,
which is why warm-up (head only, backbone frozen) precedes the probe.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from ldt.weights import check_finite, check_fit, read_checkpoint, state_dict_in

# Regexes for the classification head of each backbone: warm-up trains them, DeFT makes them its unstable group.
HEAD_PATTERNS: dict[str, list[str]] = {
    "tiny": [r"^head\."],
    "resnet18": [r"^fc\."],
    "resnet50": [r"^fc\."],
    "vit_b_16": [r"^heads\.head\."],
}
BACKBONES = tuple(HEAD_PATTERNS)
DEFAULT_IMAGE_SIZE = {"tiny": 32, "resnet18": 224, "resnet50": 224, "vit_b_16": 224}


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages and a linear head: seconds per run on a CPU, with BatchNorm like the ResNets."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        stages, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            stages += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def check_backbone(name: str) -> None:
    if name not in HEAD_PATTERNS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


# The smallest input each backbone turns into features (the tiny CNN halves it three times, the ResNets five); ViT's
# must also be a multiple of its 16 px patch.
MIN_IMAGE_SIZE = {"tiny": 8, "resnet18": 32, "resnet50": 32, "vit_b_16": 16}
# The largest input any backbone takes here: beyond it one batch outgrows memory (a typo, ``--image-size 100000``,
# hung the run in its first resize); DG benchmarks use 224.
MAX_IMAGE_SIZE = 4096


def image_size_problem(name: str, size: int) -> str | None:
    """Why backbone ``name`` cannot take inputs of ``size`` px (``must be ...``; the caller names the setting), or
    None: refused before a run fails inside its first forward pass."""
    check_backbone(name)
    if size < MIN_IMAGE_SIZE[name] or (name == "vit_b_16" and size % 16):
        multiple = " and a multiple of 16" if name == "vit_b_16" else ""
        return f"must be at least {MIN_IMAGE_SIZE[name]}{multiple} for backbone {name!r}, got {size}"
    if size > MAX_IMAGE_SIZE:
        return f"must be at most {MAX_IMAGE_SIZE} px, got {size}"
    return None


def head_patterns(name: str) -> list[str]:
    """Regexes matching the classification head's parameters of backbone ``name``."""
    check_backbone(name)
    return list(HEAD_PATTERNS[name])


def build_model(name: str, num_classes: int, *, weights: str | Path | None = None, image_size: int | None = None) -> nn.Module:
    """Backbone ``name`` with a random ``num_classes`` head; backbone weights from the local file ``weights``, if any.

    Seed the global torch RNG first for a reproducible head (and backbone, without weights).
    """
    check_backbone(name)
    if name == "tiny":
        model = TinyCNN(num_classes)
    elif name == "vit_b_16":
        model = models.vit_b_16(weights=None, image_size=image_size or DEFAULT_IMAGE_SIZE[name])
        model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    else:
        model = getattr(models, name)(weights=None)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    if weights is not None:
        load_backbone_weights(model, name, weights)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local checkpoint: a plain state dict or one under 'state_dict'/'model' (DDP prefix
    removed), read by the project's one reader (:mod:`ldt.weights`: one-line errors, ``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return dict(state_dict_in(read_checkpoint(path), path, containers=("state_dict", "model")))


def load_backbone_weights(model: nn.Module, name: str, path: str | Path) -> None:
    """Load every non-head tensor of ``path`` into ``model``; the file must cover the whole backbone, nothing else,
    with finite values (its head is dropped, NaN or not)."""
    heads = [re.compile(p) for p in HEAD_PATTERNS[name]]
    is_head = lambda key: any(p.search(key) for p in heads)  # noqa: E731
    state = {k: v for k, v in read_state_dict(path).items() if not is_head(k)}
    check_fit(state, model, f"weights file {path}", ignore=is_head, label=f"backbone {name!r}")
    check_finite(state, path)
    model.load_state_dict(state, strict=False)
