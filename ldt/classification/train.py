"""One domain-generalisation run: train on the training domains, select by their held-out parts, test once.

Methods come from the shared registry (:mod:`ldt.core.methods`), under this runner's historical names
(:data:`CLI_METHODS`): ``ft`` (everything, random head included, from the start), ``ft_ema`` (the same, deploying an
EMA), ``lpft`` (head warm-up, then everything), ``deft`` (warm-up, then a dual branch with backbone = stable and head =
unstable, fixed W), ``ldt`` (warm-up, probe, partition, dual branch, fixed W), ``ldt_dpu`` (the same with DPU) and
``ldt_s`` (LDT-S on one network, DPU). The same number of training ``steps`` and the same seeds for all.

A dual-branch step runs the primary's forward+backward, then the auxiliary's, on the same batch. The deployed
network (the composite for dual/single-branch methods) is evaluated on the training domains' held-out images every
``eval_every`` steps; the best one is kept, and only that one ever sees the test domains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldt.classification.data import (DatasetError, DomainDataset, ImageList, eval_loader, image_transform, scan_domains,
                                     split_holdout, training_stream)
from ldt.classification.models import (DEFAULT_IMAGE_SIZE, build_model, check_backbone, head_patterns,
                                       image_size_problem)
from ldt.core import CRITERIA, Method, MethodConfig, prepare_method
from ldt.core.config import unknown_choice
from ldt.core.dual import copy_network
from ldt.runner import (RunState, ResumableStream, check_training, domain_seed, field_flag, method_config, prepared,
                        run_hparams, train_and_select, warn_of_small_domains)
from ldt.sweep import RECIPE_KEY, identity_path, run_hash

# This runner's method names (its CLI choices, kept from earlier versions) -> the registry's methods. Its 'ldt' is
# LDT with the fixed W; 'ldt_dpu' and 'ldt_s' use DPU.
CLI_METHODS = {"ft": "ft", "ft_ema": "ft_ema", "lpft": "lpft", "deft": "deft", "ldt": "ldt_fixed",
               "ldt_dpu": "ldt_dpu", "ldt_s": "ldt_s"}
METHODS = tuple(CLI_METHODS)
RECORD_FORMAT = "ldt.classification/2"
# This runner's training recipe, part of every run identity (:data:`ldt.sweep.RECIPE_KEY`): bump it when a change
# alters results in a way the options do not show, so that records of the earlier recipe are never counted as runs
# of this one (those runs train again; their old records stay, in table rows of their own). Records without one are
# recipe 1. 2: every training image's augmentation is seeded by (seed, domain, pass, index); it was drawn from the
# random numbers of the process that loaded it, so results depended on --workers.
RECIPE = 2
EVAL_BATCH = 128
COMMON_OPTIONS = ("steps", "batch_size", "lr", "weight_decay", "holdout_fraction", "eval_every", "image_size", "augment")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (runtime settings such as the device are not part of it).

    The method options default to this task's short-fine-tuning values (a 200-step run on 32 px images: a head
    warm-up of 50 steps at lr 1e-2, a 20-batch probe, unstable ratio 0.5, exchange every step); all others are the
    core's defaults (:class:`ldt.core.MethodConfig`).
    """

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
    ema_weight: float = MethodConfig().exchange.weight
    ema_decay: float | None = None  # ft_ema (or any method): the deployed EMA's decay; None = the method's default
    holdout_fraction: float = 0.2
    eval_every: int = 50
    image_size: int | None = None
    augment: bool = True

    def __post_init__(self) -> None:
        if self.method not in CLI_METHODS:
            raise ValueError(unknown_choice("method", self.method, METHODS))
        check_backbone(self.backbone)
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose from {CRITERIA}")
        if self.batch_size < 1:
            raise ValueError(f"{field_flag('batch_size')} must be positive, got {self.batch_size}")
        check_training(self)
        self.method_config()  # every method option is checked by the core's own declaration
        domains = (self.test_domains,) if isinstance(self.test_domains, str) else tuple(self.test_domains)
        object.__setattr__(self, "test_domains", tuple(sorted(domains)))  # ('b', 'a') is the run ('a', 'b') is
        if self.image_size is None:  # only None means the default: an explicit 0 is refused, not replaced
            object.__setattr__(self, "image_size", DEFAULT_IMAGE_SIZE[self.backbone])
        problem = image_size_problem(self.backbone, self.image_size)
        if problem:
            raise ValueError(f"{field_flag('image_size')} {problem}")

    def method_config(self) -> MethodConfig:
        """The registry method's options (a bad one is a one-line error naming its flag)."""
        return method_config(CLI_METHODS[self.method], criterion=self.criterion, unstable_ratio=self.unstable_ratio,
                             seed=self.seed, probe_batches=self.probe_batches, warmup_steps=self.warmup_steps,
                             warmup_lr=self.warmup_lr, interval=self.interval, ema_weight=self.ema_weight)

    def hparams(self) -> dict:
        """The options that determine this run's result (paths as :func:`ldt.sweep.identity_path` names them) and
        the runner's :data:`RECIPE`, hashed to recognise finished runs."""
        data = {"data": identity_path(self.data), "test_domains": list(self.test_domains)}
        return {**run_hparams(self, data, COMMON_OPTIONS), RECIPE_KEY: RECIPE}

    def describe(self) -> str:
        return f"{self.backbone}/{self.method} test={'+'.join(self.test_domains)} seed={self.seed}"


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def frozen_backbone_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy in eval mode: a frozen backbone is a fixed feature extractor (linear probing), so its BatchNorm
    statistics stay those it was loaded with and dropout is off; the head is linear, eval mode does not change it."""
    model.eval()
    return cross_entropy(model, batch)


def make_method(model: nn.Module, stream: Iterator[Batch], config: RunConfig, progress: bool = False,
                state: RunState | None = None) -> tuple[Method, dict | None]:
    """The method ``config.method``, prepared (warm-up of the random head, probe, partition) on the training stream,
    or continuing the saved ``state``; returns it with a summary of its partition."""
    method = prepared(state, lambda **resume: prepare_method(
        model, config.method_config(), batches=stream, loss_fn=cross_entropy, warmup_loss_fn=frozen_backbone_loss,
        head_patterns=head_patterns(config.backbone), ema_decay=config.ema_decay, progress=progress, log=lambda _: None,
        **resume,
    ))
    partition = method.partition
    # The unstable group is the interesting (and short) list; the stable one is only counted.
    summary = None if partition is None else {"stable": len(partition.stable), "unstable": partition.unstable,
                                              "excluded": partition.excluded}
    return method, summary


@torch.no_grad()
def accuracy(network: nn.Module, loader, device: torch.device) -> float:
    network.eval()
    correct = total = 0
    for x, y in loader:
        correct += (network(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
        total += len(y)
    return correct / total


def holdout_validation(holdout: dict, device: torch.device):
    """Training-domain validation: the mean over training domains of the held-out accuracy."""
    def validate(network: nn.Module) -> tuple[float, dict]:
        per_domain = {domain: accuracy(network, loader, device) for domain, loader in holdout.items()}
        return sum(per_domain.values()) / len(per_domain), {"per_domain": per_domain}
    return validate


def test_accuracy(evaluator: nn.Module, dataset: DomainDataset, config: RunConfig, device: torch.device, workers: int) -> dict[str, float]:
    """Accuracy of the selected network on every image of each test domain: the only time test images are read."""
    return {
        domain: accuracy(evaluator, eval_loader(dataset.samples[domain], config.image_size, EVAL_BATCH, workers), device)
        for domain in config.test_domains
    }


def check_data(configs: Sequence[RunConfig]) -> DomainDataset:
    """The data check of every run before the first (of the first configuration's ``data``, which a sweep shares):
    every image's header and end marker (:func:`ldt.classification.data.scan_domains`), each run's left-out domains
    and seeded held-out split, and a warning when a batch or probe is more than the smallest training domain holds;
    a bad one fails now, not hours into a sweep; a scan's error starts with the flag and folder (``--data ROOT: …``).
    Returns the dataset."""
    try:
        dataset = scan_domains(configs[0].data)
    except DatasetError as err:
        raise DatasetError(f"{field_flag('data')} {configs[0].data}: {err}") from None
    counts = {}
    for config in configs:
        dataset.check_test_domains(config.test_domains)
        for domain in dataset.train_domains(config.test_domains):
            train, _ = split_holdout(dataset.samples[domain], config.holdout_fraction, config.seed, domain)
            counts[domain] = len(train)  # the same for every seed
    warn_of_small_domains(configs, counts)
    return dataset


def run(config: RunConfig, *, device: str | torch.device = "cpu", workers: int = 0, progress: bool = False,
        state: RunState | None = None, data_checked: bool = False) -> dict:
    """Train, select and test one configuration; returns its record (see :mod:`ldt.classification.records`). With a
    :class:`ldt.runner.RunState`, the run saves its progress there and continues a saved one. Its data is checked
    first (:func:`check_data`), unless ``data_checked`` says the caller did (the CLI checks every run's before the
    first)."""
    start = time.time() - (state.elapsed.get("wall", 0.0) if state else 0.0)
    device = torch.device(device)
    if data_checked:
        dataset = scan_domains(config.data, check_files=False)
        dataset.check_test_domains(config.test_domains)
    else:  # the model built below, before any training, is the weights' check
        dataset = check_data([config])
    train_domains = dataset.train_domains(config.test_domains)
    splits = {d: split_holdout(dataset.samples[d], config.holdout_fraction, config.seed, d) for d in train_domains}
    torch.manual_seed(config.seed)
    model = build_model(config.backbone, len(dataset.classes), weights=config.weights, image_size=config.image_size).to(device)
    train_parts = [ImageList(train, image_transform(config.image_size, config.augment), seed=domain_seed(config.seed, d))
                   for d, (train, _) in splits.items()]
    stream = ResumableStream(lambda start_at: training_stream(
        train_parts, config.batch_size, device=device, workers=workers, start=start_at,
    ), state.position if state else 0)
    holdout = {d: eval_loader(held, config.image_size, EVAL_BATCH, workers) for d, (_, held) in splits.items()}
    method, partition = make_method(model, stream, config, progress, state)
    evaluator = copy_network(method.model)
    selection = train_and_select(
        method, stream, cross_entropy, steps=config.steps, eval_every=config.eval_every, lr=config.lr,
        weight_decay=config.weight_decay, validate=holdout_validation(holdout, device), evaluator=evaluator,
        progress=progress, desc=config.describe(), state=state, elapsed=lambda: {"wall": time.time() - start},
    )
    evaluator.load_state_dict(selection.state)
    hparams = config.hparams()
    return {
        "format": RECORD_FORMAT,
        "options_hash": run_hash(hparams),
        "dataset": dataset.name,
        "method": config.method,
        "backbone": config.backbone,
        "seed": config.seed,
        "test_domains": list(config.test_domains),
        "train_domains": train_domains,
        "domains": dataset.domains,
        "test_accuracy": test_accuracy(evaluator, dataset, config, device, workers),
        "holdout_accuracy": selection.score,
        "holdout_per_domain": selection.details["per_domain"],
        "selected_step": selection.step,
        "history": selection.history,
        "partition": partition,
        "hparams": hparams,
        "device": str(device),
        "wall_s": round(time.time() - start, 2),
    }
