"""One domain-generalised segmentation run: train on the source domain(s), select on their held-out part, test once.

Methods come from the shared registry (:mod:`ldt.core.methods`) by their registry names (:data:`METHODS`), and the
runner never branches on a name: what a method needs (a head warm-up, a partition, an EMA) comes from its class.
Every method trains the same ``steps`` on the same seeded crops with pixel cross-entropy (ignore index 255).

Selection is training-domain validation: every ``eval_every`` steps and at the end the deployed network (the
composite for dual / single-branch methods, the EMA for FT-EMA) is scored by its mean mIoU over the held-out parts
of the source domains, and the best one is kept (ties keep the earlier step). Only that network ever sees a target
domain, once, after training: target files are indexed before training (names and header sizes, so a broken target
fails before hours of training), but no target pixel is read until the test. No oracle (target-selected) result is
reported: it would need the targets evaluated at every selection step; the record keeps the held-out history.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldt.core import CRITERIA, Method, MethodConfig, prepare_method
from ldt.core.config import unknown_choice
from ldt.core.dual import copy_network
from ldt.runner import (ResumableStream, RunState, check_training, domain_batches, domain_seed, field_flag,
                        method_config, prepared, run_hparams, train_and_select, warn_of_small_domains)
from ldt.segmentation.classes import IGNORE_INDEX, NUM_CLASSES
from ldt.segmentation.data import (
    LAYOUTS, Augment, SegmentationDataError, SegmentationDataset, SegmentationSplit, check_splits, eval_loader,
    first_labelled, scan_split, split_holdout, training_loader,
)
from ldt.segmentation.deeplabv3plus import BACKBONES, HEAD_PATTERNS, DeepLabV3Plus
from ldt.segmentation.inference import predict_sliding, predict_whole
from ldt.segmentation.metrics import ConfusionMatrix
from ldt.sweep import identity_path, run_hash

# The registry's methods this runner offers ('ldt' is left out: its exchange rule is an option, so the table would
# not say which LDT a row is; ldt_fixed and ldt_dpu say it). Table rows use each class's label.
METHODS = ("ft", "ft_ema", "lpft", "deft", "ldt_fixed", "ldt_dpu", "ldt_s")
RECORD_FORMAT = "ldt.segmentation/1"
SOURCE_SPLIT, TARGET_SPLIT = "train", "val"
# The runner's flags naming RunConfig.sources / targets: a data error of a domain starts with its flag and name.
DOMAIN_FLAGS = {"sources": "--source", "targets": "--targets"}
COMMON_OPTIONS = ("steps", "batch_size", "crop_size", "lr", "weight_decay", "holdout_fraction", "eval_every",
                  "head_channels", "output_stride", "eval_window", "eval_stride", "eval_max_side")

Batch = tuple[torch.Tensor, torch.Tensor]
Size = tuple[int, int]


@dataclass(frozen=True)
class Domain:
    """One dataset the runner reads: its name (record key, table column), layout (:data:`LAYOUTS`) and root."""

    name: str
    layout: str
    root: str

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"domain {self.name!r}: " + unknown_choice("layout", self.layout, list(LAYOUTS)))
        if not self.name or "+" in self.name:
            raise ValueError(f"domain name {self.name!r} must be non-empty and without '+'")

    def identity(self) -> dict:
        return {"name": self.name, "layout": self.layout, "root": identity_path(self.root)}

    def scan(self, split: str) -> SegmentationSplit:
        return scan_split(self.root, self.layout, split)


def parse_domain(text: str) -> Domain:
    """``LAYOUT=ROOT`` (the domain is named after its layout) or ``LAYOUT:NAME=ROOT``."""
    spec, sep, root = text.partition("=")
    layout, _, name = spec.partition(":")
    if not sep or not root or not layout:
        raise ValueError(f"domain {text!r}: write LAYOUT=ROOT or LAYOUT:NAME=ROOT (layouts: {', '.join(LAYOUTS)})")
    return Domain(name or layout, layout, root)


def parse_size(text: str) -> Size:
    """``N`` (square) or ``HxW``, positive integers."""
    parts = text.lower().split("x")
    try:
        sides = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: write N or HxW with positive integers") from None
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise ValueError(f"size {text!r}: write N or HxW with positive integers")
    return (sides[0], sides[-1])


def shown_size(size: Size) -> str:
    """A size as its flag takes it: ``HxW``."""
    return "x".join(map(str, size))


def stride_fits(window: Size | None, stride: Size) -> bool:
    """Whether evaluation windows of ``window`` (None: whole images, no stride) can slide by ``stride``: between 1
    and the window on each side."""
    return window is None or all(1 <= s <= w for s, w in zip(stride, window))


# This task's defaults, declared once. Stated for Table 8: ResNet-50 + DeepLabV3+, 512x512 crops; unstable ratio 0.7
# for segmentation (issue 14 and the paper's summary; the paper's own ratio ablation, Table 9, is on SR). The core's
# paper defaults stay (exchange every 10 steps, W 0.99, DPU bases, a 300-batch probe). Not stated by the paper, so
# our choices, in the range DG segmentation fine-tuning uses: 40k steps of batch 8, Adam at 1e-4, output stride 16, a
# 1000-step head warm-up at 1e-3, 10 % of the source held out, sliding 512 windows at stride 341 (2/3 overlap) for
# evaluation, and images wider or taller than 2048 px (Mapillary) reduced to 2048 first, as Cityscapes frames are.
@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (runtime settings such as the device are not part of it)."""

    sources: tuple[Domain, ...]
    targets: tuple[Domain, ...]
    method: str = "ldt_dpu"
    backbone: str = "resnet50"
    weights: str | None = None
    seed: int = 0
    steps: int = 40000
    batch_size: int = 8  # crops per source domain per step
    crop_size: Size = (512, 512)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    warmup_lr: float = 1e-3
    probe_batches: int = MethodConfig().probe.num_batches
    unstable_ratio: float = 0.7
    criterion: str = "var"
    interval: int = MethodConfig().exchange.interval
    ema_weight: float = MethodConfig().exchange.weight
    ema_decay: float | None = None  # a deployed EMA's decay; None = the method's default (FT-EMA's is matched to W)
    holdout_fraction: float = 0.1
    eval_every: int = 4000
    head_channels: int = 256  # ASPP and decoder width
    output_stride: int = 16
    eval_window: Size | None = (512, 512)  # None: whole images
    eval_stride: Size = (341, 341)
    eval_max_side: int | None = 2048  # None: native size

    def __post_init__(self) -> None:
        for name in ("sources", "targets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"no {name} domain given")
        names = [d.name for d in self.sources + self.targets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"domain name(s) {repeated} given twice (a source is never a target; name domains "
                             "apart with LAYOUT:NAME=ROOT)")
        if self.method not in METHODS:
            raise ValueError(unknown_choice("method", self.method, METHODS))
        if self.backbone not in BACKBONES:
            raise ValueError(unknown_choice("backbone", self.backbone, BACKBONES))
        if self.criterion not in CRITERIA:
            raise ValueError(unknown_choice("criterion", self.criterion, CRITERIA))
        if self.output_stride not in (8, 16):
            raise ValueError(f"{field_flag('output_stride')} must be 8 or 16, got {self.output_stride}")
        if self.head_channels < 1:
            raise ValueError(f"{field_flag('head_channels')} must be positive, got {self.head_channels}")
        if self.warmup_steps < 0:
            raise ValueError(f"{field_flag('warmup_steps')} must be >= 0, got {self.warmup_steps}")
        check_training(self)
        if self.batch_size < 2:  # DeepLabV3+'s image-pooling BatchNorm needs two images in train mode
            raise ValueError(f"{field_flag('batch_size')} must be at least 2, got {self.batch_size}")
        if self.eval_max_side is not None and self.eval_max_side < 1:
            raise ValueError(f"{field_flag('eval_max_side')} must be positive, got {self.eval_max_side}")
        Augment(self.crop_size)
        if not stride_fits(self.eval_window, self.eval_stride):
            raise ValueError(f"{field_flag('eval_stride')} {shown_size(self.eval_stride)} must be between 1 and "
                             f"{field_flag('eval_window')} {shown_size(self.eval_window)}")
        self.method_config()  # every method option is checked by the core's own declaration

    def method_config(self) -> MethodConfig:
        """The registry method's options (a bad one is a one-line error naming its flag)."""
        return method_config(self.method, criterion=self.criterion, unstable_ratio=self.unstable_ratio,
                             seed=self.seed, probe_batches=self.probe_batches, warmup_steps=self.warmup_steps,
                             warmup_lr=self.warmup_lr, interval=self.interval, ema_weight=self.ema_weight,
                             head_patterns=HEAD_PATTERNS)

    def hparams(self) -> dict:
        """The options that determine this run's result (absolute paths), hashed to recognise finished runs."""
        data = {"sources": [d.identity() for d in self.sources], "targets": [d.identity() for d in self.targets]}
        return run_hparams(self, data, COMMON_OPTIONS)

    def describe(self) -> str:
        sources = "+".join(d.name for d in self.sources)
        return f"{self.backbone}/{self.method} {sources}->{'+'.join(d.name for d in self.targets)} seed={self.seed}"


# ------------------------------------------------------------------------------------------------ network and loss


def build_model(config: RunConfig, *, weights: bool = True) -> DeepLabV3Plus:
    """The run's DeepLabV3+ (seed the torch RNG first), with the backbone weights file when ``weights``."""
    return DeepLabV3Plus(config.backbone, NUM_CLASSES, output_stride=config.output_stride,
                         aspp_channels=config.head_channels, decoder_channels=config.head_channels,
                         backbone_weights=config.weights if weights else None)


def pixel_cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels. A batch with none (unlabelled images, crops inside an
    ignored region) is a zero loss: PyTorch's mean over no pixel is 0/0 = NaN, which stopped the run."""
    images, labels = batch
    total = F.cross_entropy(model(images), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def frozen_backbone_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Pixel cross-entropy with the frozen backbone in eval mode (linear probing: its BatchNorm statistics stay the
    pre-trained ones) and the head in train mode (ASPP and decoder have BatchNorms of their own, freshly made, whose
    statistics must learn the features they will see)."""
    model.train()
    model.backbone.eval()
    return pixel_cross_entropy(model, batch)


def make_method(model: nn.Module, stream: Iterator[Batch], config: RunConfig, progress: bool = False,
                state: RunState | None = None) -> tuple[Method, dict | None]:
    """The method ``config.method``, prepared on the training stream (head warm-up, probe, partition) or continuing
    the saved ``state``; returns it with a summary of its partition (tensors per group and part of the network:
    backbone / aspp / decoder / ...)."""
    method = prepared(state, lambda **resume: prepare_method(
        model, config.method_config(), batches=stream, loss_fn=pixel_cross_entropy,
        warmup_loss_fn=frozen_backbone_loss, ema_decay=config.ema_decay, progress=progress, log=lambda _: None,
        **resume,
    ))
    partition = method.partition
    if partition is None:
        return method, None
    def parts(names: list[str]) -> dict[str, int]:
        return dict(Counter(name.split(".")[0] for name in names))
    return method, {"stable": parts(partition.stable), "unstable": parts(partition.unstable),
                    "excluded": partition.excluded}


# ------------------------------------------------------------------------------------------------------ data


def source_stream(parts: dict[str, SegmentationDataset], batch_size: int, seed: int, device: torch.device,
                  workers: int = 0, start: int = 0) -> Iterator[Batch]:
    """Endless batches: ``batch_size`` augmented crops of every source domain per step, concatenated, on ``device``;
    ``start`` batches in (a resumed run's stream: the same crops, whatever the number of workers)."""
    return domain_batches([training_loader(part, batch_size, domain_seed(seed, name), workers=workers,
                                           pin_memory=device.type == "cuda", start=start)
                           for name, part in parts.items()], device)


# ------------------------------------------------------------------------------------------------ evaluation


def limited_size(size: Size, max_side: int | None) -> Size:
    """(height, width) of an image of ``size`` once evaluation reduces it to at most ``max_side`` (None: as is)."""
    if max_side is None or max(size) <= max_side:
        return tuple(size)
    scale = max_side / max(size)
    return tuple(max(1, round(side * scale)) for side in size)


def _limit_side(images: torch.Tensor, max_side: int | None) -> torch.Tensor:
    size = limited_size(tuple(images.shape[-2:]), max_side)
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def evaluate(network: nn.Module, dataset: SegmentationDataset, *, device: torch.device, window: Size | None = None,
             stride: Size | None = None, max_side: int | None = None, workers: int = 0) -> dict:
    """mIoU, pixel accuracy and per-class IoU (%, :meth:`ConfusionMatrix.summary`) over every image of ``dataset``.

    Images larger than ``max_side`` are reduced first (the image only: logits are resized back to the label);
    ``window`` None is whole-image inference, else sliding windows every ``stride`` (default: the window).
    """
    network.eval()
    matrix = ConfusionMatrix(device=device)
    for image, label in eval_loader(dataset, workers=workers):
        image = _limit_side(image.to(device), max_side)
        size = tuple(label.shape[-2:])
        logits = (predict_whole(network, image, output_size=size) if window is None
                  else predict_sliding(network, image, window, stride or window, output_size=size))
        matrix.update(logits.argmax(1), label.to(device))
    return matrix.summary()


def evaluation_options(config: RunConfig) -> dict:
    return {"window": config.eval_window, "stride": config.eval_stride, "max_side": config.eval_max_side}


def holdout_validation(holdout: dict[str, SegmentationDataset], config: RunConfig, device: torch.device,
                       workers: int) -> Callable[[nn.Module], tuple[float, dict]]:
    """Training-domain validation: the mean over source domains of the held-out mIoU."""
    def validate(network: nn.Module) -> tuple[float, dict]:
        per_domain = {name: evaluate(network, part, device=device, workers=workers,
                                     **evaluation_options(config))["miou"] for name, part in holdout.items()}
        return sum(per_domain.values()) / len(per_domain), {"per_domain": per_domain}
    return validate


def evaluate_targets(network: nn.Module, targets: dict[str, SegmentationSplit], config: RunConfig,
                     device: torch.device, workers: int) -> dict[str, dict]:
    """The selected network on every image of each target domain: the only time target pixels are read."""
    return {name: evaluate(network, SegmentationDataset(split), device=device, workers=workers,
                           **evaluation_options(config))
            for name, split in targets.items()}


def holdout_splits(config: RunConfig, sources: dict[str, SegmentationSplit]) -> dict[str, tuple[list, list]]:
    """(train, held-out) samples of every source domain, seeded by the run's seed and the domain's name."""
    return {name: split_holdout(split.samples, config.holdout_fraction, config.seed, name)
            for name, split in sources.items()}


def scan_domains(domains: Sequence[Domain], split: str) -> dict[str, SegmentationSplit]:
    return {d.name: d.scan(split) for d in domains}


# Evenly spread labels per source decoded by the data check: about 4 s at 2048x1024.
SOURCE_LABELS_CHECKED = 200


def _largest(sizes: list[tuple[int, int]], factor: float) -> tuple[int, int]:
    return tuple(int(max(size[axis] for size in sizes) * factor) for axis in (0, 1))


def check_sizes(config: RunConfig, sources: dict[str, SegmentationSplit],
                targets: dict[str, SegmentationSplit]) -> None:
    """A training crop must fit the largest source image after the largest training rescale, and an evaluation
    window twice the largest image it slides over: beyond, the crop is padding only and the window more than 3/4
    padding for every image, and ``--crop-size 100000`` asked for 10^10 px per crop (an out-of-memory traceback at
    the first step; ``--eval-window 100000`` at the first evaluation, after training)."""
    high = Augment(config.crop_size).scale_range[1]
    fits = _largest([sample.size for split in sources.values() for sample in split.samples], high)
    if config.crop_size[0] > fits[0] or config.crop_size[1] > fits[1]:
        raise ValueError(f"{field_flag('crop_size')} {shown_size(config.crop_size)}: larger than every source "
                         f"image after the training rescale (up to x{high:g}), so it would crop padding only: use at "
                         f"most {shown_size(fits)}")
    window = config.eval_window
    if window is None:
        return
    evaluated = [limited_size(sample.size, config.eval_max_side)
                 for split in (*sources.values(), *targets.values()) for sample in split.samples]
    fits = _largest(evaluated, 2)
    if window[0] > fits[0] or window[1] > fits[1]:
        raise ValueError(f"{field_flag('eval_window')} {shown_size(window)}: more than twice every evaluation "
                         f"image (the largest is {shown_size(_largest(evaluated, 1))} after "
                         f"{field_flag('eval_max_side')}), so each window would be mostly padding: use at most "
                         f"{shown_size(fits)}, or 'none' for whole images")


def check_data(configs: Sequence[RunConfig]) -> tuple[dict[str, SegmentationSplit], dict[str, SegmentationSplit]]:
    """Index every domain (headers only: no target image pixel is read) and every seed's held-out split, before
    training; every target label is decoded once for its values (a bad one failed only in the test, after training;
    the check decides nothing else), and up to :data:`SOURCE_LABELS_CHECKED` of each source's (one failed at the
    first batch, after the model was built; all of a large source would cost minutes). A target, or a seed's held-out
    part of a source, whose labels hold only ignore has no mIoU (a '–' column; a traceback at the first selection);
    a seed's training part of a source whose labels do trained on a zero loss, without a word. Returns the source
    and target splits (of the first configuration's domains)."""
    first = configs[0]
    splits = check_splits([(f"{DOMAIN_FLAGS['sources']} {d.name}", d.root, d.layout, SOURCE_SPLIT,
                            SOURCE_LABELS_CHECKED) for d in first.sources]
                          + [(f"{DOMAIN_FLAGS['targets']} {d.name}", d.root, d.layout, TARGET_SPLIT, None)
                             for d in first.targets])
    sources = {d.name: split for d, split in zip(first.sources, splits)}
    targets = {d.name: split for d, split in zip(first.targets, splits[len(first.sources):])}
    check_sizes(first, sources, targets)
    checked, counts = set(), {}
    for config in configs:
        for name, (train, held) in holdout_splits(config, sources).items():
            counts[name] = len(train)  # the same for every seed
            names = (name, tuple(sample.name for sample in held))
            if names in checked:  # the held-out part depends on the seed only: one check per seed
                continue
            checked.add(names)
            if first_labelled(sources[name], held) is None:
                raise SegmentationDataError(
                    f"{name}: none of the {len(held)} held-out labels of seed {config.seed} holds a labelled pixel "
                    f"(only ignore {IGNORE_INDEX}), so selection has no score: raise "
                    f"{field_flag('holdout_fraction')} (now {config.holdout_fraction})")
            if first_labelled(sources[name], train) is None:  # usually one label decoded: the first one is labelled
                split = sources[name]
                raise SegmentationDataError(
                    f"{name} ({split.layout.name} {split.split} at {split.root}): none of the {len(train)} training "
                    f"labels of seed {config.seed} holds a labelled pixel (only ignore {IGNORE_INDEX}), so every "
                    "training step's loss is zero: label them, or train on another source")
    warn_of_small_domains(configs, counts)
    return sources, targets


def run(config: RunConfig, *, device: str | torch.device = "cpu", workers: int = 0, progress: bool = False,
        state: RunState | None = None, data_checked: bool = False) -> dict:
    """Train, select and test one configuration; returns its record (see :mod:`ldt.segmentation.records`). With a
    :class:`ldt.runner.RunState`, the run saves its progress there and continues a saved one. Its data is checked
    first (:func:`check_data`), unless ``data_checked`` says the caller did (the CLI checks every run's before the
    first)."""
    earlier = state.elapsed if state else {}
    start = time.time() - earlier.get("wall", 0.0)
    device = torch.device(device)
    if data_checked:
        sources, targets = scan_domains(config.sources, SOURCE_SPLIT), scan_domains(config.targets, TARGET_SPLIT)
    else:
        sources, targets = check_data([config])
    splits = holdout_splits(config, sources)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    augment = Augment(config.crop_size)
    parts = {name: SegmentationDataset(sources[name], train, augment=augment, seed=domain_seed(config.seed, name))
             for name, (train, _) in splits.items()}
    stream = ResumableStream(lambda start_at: source_stream(parts, config.batch_size, config.seed, device, workers,
                                                            start_at), state.position if state else 0)
    method, partition = make_method(model, stream, config, progress, state)
    holdout = {name: SegmentationDataset(sources[name], held) for name, (_, held) in splits.items()}
    evaluator = copy_network(method.model)
    trained = time.time() - earlier.get("train", 0.0)
    selection = train_and_select(
        method, stream, pixel_cross_entropy, steps=config.steps, eval_every=config.eval_every, lr=config.lr,
        weight_decay=config.weight_decay, validate=holdout_validation(holdout, config, device, workers),
        evaluator=evaluator, progress=progress, desc=config.describe(), state=state,
        elapsed=lambda: {"wall": time.time() - start, "train": time.time() - trained},
    )
    train_s = time.time() - trained
    evaluator.load_state_dict(selection.state)
    results = evaluate_targets(evaluator, targets, config, device, workers)
    hparams = config.hparams()
    return {
        "format": RECORD_FORMAT,
        "options_hash": run_hash(hparams),
        "sources": [d.name for d in config.sources],
        "targets": [d.name for d in config.targets],
        "method": config.method,
        "backbone": config.backbone,
        "seed": config.seed,
        "target_miou": {name: result["miou"] for name, result in results.items()},
        "target_results": results,
        "holdout_miou": selection.score,
        "holdout_per_domain": selection.details["per_domain"],
        "selected_step": selection.step,
        "history": selection.history,
        "partition": partition,
        "images": {"train": {n: len(t) for n, (t, _) in splits.items()}, "holdout": {n: len(h) for n, (_, h) in splits.items()},
                   "target": {n: len(s.samples) for n, s in targets.items()}},
        "hparams": hparams,
        "device": str(device),
        "train_s": round(train_s, 2),
        "wall_s": round(time.time() - start, 2),
    }
