"""One domain-generalisation run: train on the training domains, select by their held-out parts, test once.

Methods (the same number of training ``steps`` and the same seeds for all):

* ``ft``: train the whole network, random head included, from the start;
* ``lpft``: warm-up the head (backbone frozen), then train the whole network;
* ``deft``: warm-up, then a dual branch with backbone = stable and head = unstable, fixed EMA weight;
* ``ldt``: warm-up, probe gradient statistics, partition by score, dual branch with a fixed EMA weight;
* ``ldt_dpu``: as ``ldt`` with DPU coefficients; ``ldt_s``: as ``ldt_dpu`` on one network (:class:`SingleBranchLDT`).

A dual-branch step runs the primary's forward+backward, then the auxiliary's, on the same batch. The deployed
network (the composite for dual/single-branch methods) is evaluated on the training domains' held-out images every
``eval_every`` steps; the best one is kept, and only that one ever sees the test domains.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ldt.classification.data import DomainDataset, ImageList, eval_loader, image_transform, scan_domains, split_holdout, training_stream
from ldt.classification.models import DEFAULT_IMAGE_SIZE, build_model, check_backbone, head_patterns
from ldt.classification.records import options_hash
from ldt.core import (
    CRITERIA,
    DualBranch,
    ExchangeConfig,
    SingleBranchLDT,
    partition_by_patterns,
    partition_by_score,
    probe_gradients,
    warmup,
)

METHODS = ("ft", "lpft", "deft", "ldt", "ldt_dpu", "ldt_s")
RECORD_FORMAT = "ldt.classification/1"
EVAL_BATCH = 128
COMMON_OPTIONS = ("steps", "batch_size", "lr", "weight_decay", "holdout_fraction", "eval_every", "image_size", "augment")
WARMUP = ("warmup_steps", "warmup_lr")
PROBE = ("probe_batches", "unstable_ratio", "criterion")
# The options each method actually uses: only these enter its options hash, so changing e.g. the probe size neither
# re-runs nor splits the FT rows of a sweep.
METHOD_OPTIONS = {
    "ft": (),
    "lpft": WARMUP,
    "deft": WARMUP + ("interval", "ema_weight"),
    "ldt": WARMUP + PROBE + ("interval", "ema_weight"),
    "ldt_dpu": WARMUP + PROBE + ("interval",),
    "ldt_s": WARMUP + PROBE + ("interval",),
}

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (runtime settings such as the device are not part of it)."""

    data: str
    test_domains: tuple[str, ...]
    method: str = "ldt_dpu"
    backbone: str = "tiny"
    weights: str | None = None
    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    warmup_lr: float = 1e-2
    probe_batches: int = 20
    unstable_ratio: float = 0.5
    criterion: str = "var"
    interval: int = 1  # the paper exchanges every 10 steps; with W >= 0.99 that leaves a short run's composite behind
    ema_weight: float = 0.99
    holdout_fraction: float = 0.2
    eval_every: int = 50
    image_size: int | None = None
    augment: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        check_backbone(self.backbone)
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose from {CRITERIA}")
        for name in ("steps", "batch_size", "eval_every", "interval", "probe_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.unstable_ratio < 1.0:
            raise ValueError(f"unstable_ratio must be in (0, 1), got {self.unstable_ratio}")
        domains = (self.test_domains,) if isinstance(self.test_domains, str) else tuple(self.test_domains)
        object.__setattr__(self, "test_domains", domains)
        object.__setattr__(self, "image_size", self.image_size or DEFAULT_IMAGE_SIZE[self.backbone])

    def hparams(self) -> dict:
        """The options that determine this run's result (absolute paths), hashed to recognise finished runs."""
        options = asdict(self)
        kept = {name: options[name] for name in COMMON_OPTIONS + METHOD_OPTIONS[self.method]}
        return {
            "data": str(Path(self.data).resolve()),
            "test_domains": list(self.test_domains),
            "method": self.method,
            "backbone": self.backbone,
            "weights": str(Path(self.weights).resolve()) if self.weights else None,
            "seed": self.seed,
            **kept,
        }

    def describe(self) -> str:
        return f"{self.backbone}/{self.method} test={'+'.join(self.test_domains)} seed={self.seed}"


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def descend(network: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """One optimizer step of ``network`` on ``batch``."""
    optimizer.zero_grad(set_to_none=True)
    loss = cross_entropy(network, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()}")
    loss.backward()
    optimizer.step()


class PlainLearner:
    """FT / LP-FT: one network, every parameter trained."""

    def __init__(self, model: nn.Module, make_optimizer) -> None:
        self.network = model
        model.requires_grad_(True)
        self.optimizer = make_optimizer(list(model.parameters()))

    def train_step(self, batch: Batch) -> None:
        self.network.train()
        descend(self.network, self.optimizer, batch)

    def deployed_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.network.state_dict().items()}


class DualLearner:
    """DeFT / LDT: the primary's step, then the auxiliary's, then the exchange schedule; deploys the composite."""

    def __init__(self, dual: DualBranch, make_optimizer) -> None:
        self.dual, self.network = dual, dual.primary
        self.optimizers = (make_optimizer(dual.primary_parameters()), make_optimizer(dual.auxiliary_parameters()))

    def train_step(self, batch: Batch) -> None:
        for branch, optimizer in zip((self.dual.primary, self.dual.auxiliary), self.optimizers):
            branch.train()
            descend(branch, optimizer, batch)
        self.dual.step()

    def deployed_state(self) -> dict[str, torch.Tensor]:
        return self.dual.composite_state_dict()


class SingleBranchLearner:
    """LDT-S: one network alternating the two branches' turns; deploys the EMA composite."""

    def __init__(self, ldt: SingleBranchLDT, make_optimizer) -> None:
        self.ldt, self.network = ldt, ldt.model
        self.optimizer = make_optimizer(ldt.trainable_parameters())

    def train_step(self, batch: Batch) -> None:
        self.network.train()
        descend(self.network, self.optimizer, batch)
        self.ldt.step()

    def deployed_state(self) -> dict[str, torch.Tensor]:
        return self.ldt.composite_state_dict()


Learner = PlainLearner | DualLearner | SingleBranchLearner


def frozen_backbone_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy in eval mode: a frozen backbone is a fixed feature extractor (linear probing), so its BatchNorm
    statistics stay those it was loaded with and dropout is off; the head is linear, eval mode does not change it."""
    model.eval()
    return cross_entropy(model, batch)


def warm_up_head(model: nn.Module, stream: Iterator[Batch], config: RunConfig, progress: bool = False) -> list[float]:
    """Train only the random head (backbone frozen), so that it does not dominate the probe or disturb the backbone."""
    return warmup(
        model,
        stream,
        frozen_backbone_loss,
        head_patterns(config.backbone),
        config.warmup_steps,
        optimizer_factory=lambda params: torch.optim.Adam(params, lr=config.warmup_lr),
        progress=progress,
    )


def make_learner(model: nn.Module, stream: Iterator[Batch], config: RunConfig, progress: bool = False) -> tuple[Learner, dict | None]:
    """Warm-up, probe and partition as ``config.method`` asks; returns the learner and a summary of its partition."""
    make_optimizer = lambda params: torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)  # noqa: E731
    if config.method != "ft":
        warm_up_head(model, stream, config, progress)
    if config.method in ("ft", "lpft"):
        return PlainLearner(model, make_optimizer), None
    if config.method == "deft":
        partition = partition_by_patterns(model, head_patterns(config.backbone))
    else:
        stats = probe_gradients(
            model, stream, cross_entropy, num_batches=config.probe_batches,
            elementwise=config.criterion == "elementwise_var", progress=progress,
        )
        partition = partition_by_score(stats, config.unstable_ratio, config.criterion, seed=config.seed, model=model)
    exchange = ExchangeConfig(interval=config.interval, dpu=config.method in ("ldt_dpu", "ldt_s"), weight=config.ema_weight)
    # The unstable group is the interesting (and short) list; the stable one is only counted.
    summary = {"stable": len(partition.stable), "unstable": partition.unstable, "excluded": partition.excluded}
    if config.method == "ldt_s":
        return SingleBranchLearner(SingleBranchLDT(model, partition, exchange), make_optimizer), summary
    return DualLearner(DualBranch(model, partition, exchange), make_optimizer), summary


@torch.no_grad()
def accuracy(network: nn.Module, loader, device: torch.device) -> float:
    network.eval()
    correct = total = 0
    for x, y in loader:
        correct += (network(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
        total += len(y)
    return correct / total


@dataclass
class Selection:
    """The deployed network with the best mean held-out accuracy over the training domains."""

    state: dict[str, torch.Tensor] | None = None
    step: int = 0
    score: float = -1.0
    per_domain: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)


def train_and_select(
    learner: Learner, stream: Iterator[Batch], holdout: dict, config: RunConfig, device: torch.device, evaluator: nn.Module, progress: bool = False
) -> Selection:
    """Train ``config.steps`` steps; every ``eval_every`` steps (and at the end) keep the deployed network if it is
    the best so far on the held-out parts of the training domains (ties keep the earlier step)."""
    best = Selection()
    bar = tqdm(range(1, config.steps + 1), desc=config.describe(), leave=False, disable=not progress, dynamic_ncols=True)
    for step in bar:
        learner.train_step(next(stream))
        if step % config.eval_every and step != config.steps:
            continue
        state = learner.deployed_state()
        evaluator.load_state_dict(state)
        per_domain = {domain: accuracy(evaluator, loader, device) for domain, loader in holdout.items()}
        score = sum(per_domain.values()) / len(per_domain)
        best.history.append((step, score))
        if score > best.score:
            best.state, best.step, best.score, best.per_domain = state, step, score, per_domain
        bar.set_postfix(heldout=f"{score:.3f}", best=f"{best.score:.3f}@{best.step}")
    return best


def test_accuracy(evaluator: nn.Module, dataset: DomainDataset, config: RunConfig, device: torch.device, workers: int) -> dict[str, float]:
    """Accuracy of the selected network on every image of each test domain: the only time test images are read."""
    return {
        domain: accuracy(evaluator, eval_loader(dataset.samples[domain], config.image_size, EVAL_BATCH, workers), device)
        for domain in config.test_domains
    }


def on_device(stream: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    for x, y in stream:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def run(config: RunConfig, *, device: str | torch.device = "cpu", workers: int = 0, progress: bool = False) -> dict:
    """Train, select and test one configuration; returns its record (see :mod:`ldt.classification.records`)."""
    start = time.time()
    device = torch.device(device)
    dataset = scan_domains(config.data)
    dataset.check_test_domains(config.test_domains)
    train_domains = dataset.train_domains(config.test_domains)
    splits = {d: split_holdout(dataset.samples[d], config.holdout_fraction, config.seed, d) for d in train_domains}
    torch.manual_seed(config.seed)
    model = build_model(config.backbone, len(dataset.classes), weights=config.weights, image_size=config.image_size).to(device)
    train_parts = [ImageList(train, image_transform(config.image_size, config.augment)) for train, _ in splits.values()]
    stream = on_device(
        training_stream(train_parts, config.batch_size, config.seed, workers=workers, pin_memory=device.type == "cuda"), device
    )
    holdout = {d: eval_loader(held, config.image_size, EVAL_BATCH, workers) for d, (_, held) in splits.items()}
    learner, partition = make_learner(model, stream, config, progress)
    evaluator = copy.deepcopy(learner.network)
    selection = train_and_select(learner, stream, holdout, config, device, evaluator, progress)
    evaluator.load_state_dict(selection.state)
    hparams = config.hparams()
    return {
        "format": RECORD_FORMAT,
        "options_hash": options_hash(hparams),
        "dataset": dataset.name,
        "method": config.method,
        "backbone": config.backbone,
        "seed": config.seed,
        "test_domains": list(config.test_domains),
        "train_domains": train_domains,
        "domains": dataset.domains,
        "test_accuracy": test_accuracy(evaluator, dataset, config, device, workers),
        "holdout_accuracy": selection.score,
        "holdout_per_domain": selection.per_domain,
        "selected_step": selection.step,
        "history": selection.history,
        "partition": partition,
        "hparams": hparams,
        "device": str(device),
        "wall_s": round(time.time() - start, 2),
    }
