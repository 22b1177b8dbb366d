"""What the classification and segmentation runners share: their flat method flags as the core's
:class:`ldt.core.MethodConfig`, the train-and-select loop of training-domain validation, and the resumable sweep.

Both runners offer the method options as flat flags (``--unstable-ratio``, ``--probe-batches``, ...);
:func:`method_config` turns them into the core's options, so each is checked by the core's own declaration, and names
the flag in the one-line error; :func:`flag_help` gives the core's own description as the flag's help.
:func:`train_and_select` trains a prepared method and keeps the deployed network that scores best on held-out
*training-domain* data; the caller's ``validate`` must read nothing else. :func:`main` and :func:`sweep` are the
command line after parsing: plan and check everything, run what is not recorded yet, tabulate from the records.
"""

from __future__ import annotations

import math
import sys
from argparse import Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from ldt.core import Method, MethodConfig, method_class, run_identity
from ldt.core.config import describe_errors
from ldt.core.probe import LossFn
from ldt.sweep import RESULTS_FILE, PlannedRun, Records, run_hash, run_pending

# The flat flag of each nested method option (errors name the flag the user typed).
FLAG_NAMES = {"probe:num_batches": "probe_batches", "warmup:steps": "warmup_steps", "warmup:lr": "warmup_lr",
              "exchange:interval": "interval", "exchange:weight": "ema_weight"}
EMA_DECAY_HELP = "decay of a deployed EMA (ft_ema: default weight^(1/interval); other methods: off)"


def flag_help(flag: str) -> str:
    """The help text of a flat method flag: the core's own description of the option it sets."""
    path = {flat: nested for nested, flat in FLAG_NAMES.items()}.get(flag, flag)
    *sections, leaf = path.split(":")
    options = MethodConfig
    for section in sections:
        options = options.model_fields[section].annotation
    return options.model_fields[leaf].description


def method_config(method: str, *, criterion: str, unstable_ratio: float, seed: int, probe_batches: int,
                  warmup_steps: int, warmup_lr: float, interval: int, ema_weight: float,
                  head_patterns: Sequence[str] | None = None) -> MethodConfig:
    """The registry method's options from a runner's flags; a method without a warm-up gets none. A bad value is a
    ``ValueError`` of one line that names the flag."""
    steps = warmup_steps if method_class(method).warmup_rule != "never" else 0
    try:
        return MethodConfig.model_validate({
            "method": method, "criterion": criterion, "unstable_ratio": unstable_ratio, "seed": seed,
            "head_patterns": list(head_patterns) if head_patterns is not None else None,
            "probe": {"num_batches": probe_batches}, "warmup": {"steps": steps, "lr": warmup_lr},
            "exchange": {"interval": interval, "weight": ema_weight},
        })
    except ValidationError as err:
        lines = []
        for line in describe_errors(err, MethodConfig):
            where, sep, message = line.partition(": ")
            lines.append(f"{FLAG_NAMES.get(where, where)}{sep}{message}")
        raise ValueError("; ".join(lines)) from None


class RunnerConfig(Protocol):
    """A runner's run configuration (a frozen dataclass): the fields both runners share, its method options, the
    options that identify it (:func:`run_hparams` with its own data entries) and a one-line name."""

    method: str
    backbone: str
    weights: str | None
    seed: int
    ema_decay: float | None

    def method_config(self) -> MethodConfig: ...

    def hparams(self) -> dict: ...

    def describe(self) -> str: ...


def run_hparams(config: RunnerConfig, data: Mapping[str, object], common: Sequence[str]) -> dict:
    """A runner run's identity (hashed to recognise finished runs): its ``data`` entries, the fields both runners
    share, the task's ``common`` fields, and the method options without the seed (the run's own top-level ``seed``
    is the method's, so a table row gathers the seeds of one setting)."""
    options = asdict(config)
    method = {k: v for k, v in run_identity(config.method_config(), config.ema_decay).items() if k != "seed"}
    return {
        **data,
        "method": config.method,
        "backbone": config.backbone,
        "weights": str(Path(config.weights).resolve()) if config.weights else None,
        "seed": config.seed,
        **{name: options[name] for name in common},
        "method_options": method,
    }


@dataclass
class Selection:
    """The deployed network with the best held-out score so far, and every score seen."""

    state: dict[str, torch.Tensor] | None = None
    step: int = 0
    score: float = -math.inf
    details: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def train_and_select(method: Method, stream: Iterator, loss_fn: LossFn, *, steps: int, eval_every: int, lr: float,
                     weight_decay: float, validate: Callable[[nn.Module], tuple[float, dict]], evaluator: nn.Module,
                     progress: bool = False, desc: str = "train") -> Selection:
    """Train ``steps`` steps (Adam per branch); every ``eval_every`` steps and at the end, load the deployed network
    into ``evaluator`` and keep it if ``validate`` scores it higher than every earlier one (ties keep the earlier).

    ``validate(network) -> (score, details)`` must read only training-domain data: this loop is what selects.
    """
    best = Selection()
    optimizers = [torch.optim.Adam(branch.parameters, lr=lr, weight_decay=weight_decay) for branch in method.branches()]
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for step in bar:
        method.train_step(next(stream), loss_fn, optimizers)
        if step % eval_every and step != steps:
            continue
        state = method.deployed_state_dict()
        evaluator.load_state_dict(state)
        score, details = validate(evaluator)
        best.history.append({"step": step, "score": score, **details})
        if score > best.score:
            best.state, best.step, best.score, best.details = state, step, score, details
        bar.set_postfix(heldout=f"{score:.3f}", best=f"{best.score:.3f}@{best.step}")
    return best


def sweep(configs: Sequence[RunnerConfig], out: Path, run: Callable[..., dict], *, device: str, workers: int | None,
          progress: bool, tabulate: Callable[[Path], str]) -> int:
    """Run every configuration that has no record in ``out`` yet (by options hash; so a rerun resumes), then
    recompute and print the tables. ``run(config, device=, workers=, progress=)`` returns a run's record; data
    loader workers default to 4 on CUDA and 0 (in-process) on CPU."""
    records = Records(out / RESULTS_FILE)
    workers = workers if workers is not None else (4 if device.startswith("cuda") else 0)
    planned = [PlannedRun(run_hash(c.hparams()), c.describe(),
                          lambda c=c: run(c, device=device, workers=workers, progress=progress)) for c in configs]
    done = set(records.by_hash())
    print(f"{len(configs)} runs, {sum(p.digest in done for p in planned)} already recorded in {out}; running the rest "
          f"on {device}", flush=True)
    run_pending(planned, records, progress=progress, desc="sweep")
    print(tabulate(out))
    print(f"records: {records.path}; tables in {out}")
    return 0


def main(args: Namespace, prepare: Callable[[], tuple[Path, Sequence[RunnerConfig]]], run: Callable[..., dict],
         tabulate: Callable[[Path], str]) -> int:
    """A runner's command line after parsing: ``--collect OUT`` recomputes the tables from the records alone;
    otherwise ``prepare()`` plans and checks everything (bad data, options or weights: one line naming the culprit,
    exit status 2, before any run) and :func:`sweep` runs what is not recorded yet."""
    if args.collect:
        try:
            print(tabulate(Path(args.collect)))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        out, configs = prepare()
    except (ValueError, OSError) as err:  # data, weights and option errors are ValueErrors; missing files OSErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    return sweep(configs, out, run, device=args.device, workers=args.workers, progress=args.progress,
                 tabulate=tabulate)
