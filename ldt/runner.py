"""What the classification and segmentation runners share: their flat method flags as the core's
:class:`ldt.core.MethodConfig`, the train-and-select loop of training-domain validation, and the resumable sweep.

Both runners offer the method options as flat flags (``--unstable-ratio``, ``--probe-batches``, ...);
:func:`method_config` turns them into the core's options, so each is checked by the core's own declaration, and names
the flag in the one-line error; :func:`flag_help` gives the core's own description as the flag's help. Every runner
error names a setting by the flag that sets it (:func:`field_flag`, :func:`option_flag`), never by its field name.
:func:`train_and_select` trains a prepared method and keeps the deployed network that scores best on held-out
*training-domain* data; the caller's ``validate`` must read nothing else. :func:`main` and :func:`sweep` are the
command line after parsing: plan and check everything, run what is not recorded yet, tabulate from the records.
:func:`domain_batches` is both runners' training data stream: every image's order and augmentation are seeded by
(run seed, domain, pass, index), so a run does not depend on the number of loader processes and resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
import zlib
from argparse import ArgumentParser, Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ldt.atomic import DiskError, atomic_torch_save, check_room, check_writable, disk_reason, remove_leftovers
from ldt.cli import (Stopped, device_problem, error_lines, flag, not_a_file, original_error, output_dir_problem,
                     require_output_dir, show_traceback, stop_on_signal, whole_step)
from ldt.core import Method, MethodConfig, Partition, method_class, run_identity
from ldt.core.methods import runs_probe
from ldt.core.config import MAX_SEED, describe_errors
from ldt.core.probe import LossFn, ProbeError
from ldt.sweep import (RESULTS_FILE, PlannedRun, Records, earlier_recipes, earlier_run_hash, identity_path,
                       one_warning_each, run_hash, run_pending, stale_weights, sweep_lock, tables_unwritten)
from ldt.weights import WeightsError, content_fingerprint

# The run field (flat name) of each method option a runner flag sets; the options not here (the runner's own head
# patterns) have no flag.
FLAG_NAMES = {"criterion": "criterion", "unstable_ratio": "unstable_ratio", "seed": "seed",
              "probe:num_batches": "probe_batches", "warmup:steps": "warmup_steps", "warmup:lr": "warmup_lr",
              "exchange:interval": "interval", "exchange:weight": "ema_weight"}
# The run fields a sweep takes several values of: their flags are plural (one run per value).
SWEPT = {"method": "methods", "backbone": "backbones", "seed": "seeds"}
EMA_DECAY_HELP = "decay of a deployed EMA (ft_ema: default weight^(1/interval); other methods: off)"


def field_flag(name: str) -> str:
    """The flag that sets run field ``name`` (``eval_every`` -> ``--eval-every``, ``seed`` -> ``--seeds``): the
    runners declare their flags by this, and their errors name a field by it, so the user reads the flag typed."""
    return flag(SWEPT.get(name, name))


def option_flag(path: str) -> str:
    """The flag that sets method option ``path`` (``warmup:steps`` -> ``--warmup-steps``), or the path itself for
    an option no flag sets."""
    return field_flag(FLAG_NAMES[path]) if path in FLAG_NAMES else path


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
    ``ValueError`` of one line that names the flag; every value is checked as given, whichever the method (a
    negative ``--warmup-steps`` with ``--methods ft`` alone is refused too, not dropped unseen)."""
    try:
        options = MethodConfig.model_validate({
            "method": method, "criterion": criterion, "unstable_ratio": unstable_ratio, "seed": seed,
            "head_patterns": list(head_patterns) if head_patterns is not None else None,
            "probe": {"num_batches": probe_batches}, "warmup": {"steps": warmup_steps, "lr": warmup_lr},
            "exchange": {"interval": interval, "weight": ema_weight},
        })
    except ValidationError as err:
        lines = []
        for line in describe_errors(err, MethodConfig):
            where, sep, message = line.partition(": ")
            lines.append(f"{option_flag(where) if sep else where}{sep}{message}")
        raise ValueError("; ".join(lines)) from None
    if method_class(method).warmup_rule == "never":
        options = options.model_copy(update={"warmup": options.warmup.model_copy(update={"steps": 0})})
    return options


def check_method(config: "RunnerConfig", build: Callable[[], nn.Module],
                 head_patterns: Sequence[str] | None = None) -> None:
    """Every problem the run's method has with its options and network (:meth:`ldt.core.Method.check`: a warm-up it
    needs or cannot take, head patterns that match nothing, a partition with an empty group), on a network that
    ``build()`` makes on the meta device (no weights, no data): one line naming the flag before the sweep's first run,
    not inside the run that has the problem, after the runs before it trained."""
    options = config.method_config()
    with torch.device("meta"):
        model = build()
    problems = method_class(options.method).check(options, model, head_patterns)
    if problems:
        raise ValueError(f"{config.method}: " + "; ".join(f"{option_flag(where)}: {message}"
                                                          for where, message in problems))


# --------------------------------------------------------------------------------------------- flags both runners have


def check_device(device: str) -> str:
    """``--device`` as torch will read it (:func:`ldt.cli.device_problem`): one line now rather than a traceback
    when the first run moves its network."""
    problem = device_problem(device)
    if problem:
        raise ValueError(f"--device {device}: {problem}")
    return device


DEFAULT_STATE_MINUTES = 10.0


def add_runtime_flags(parser: ArgumentParser) -> None:
    """The flags of where and how a sweep runs (not part of any run's identity), the same in both runners."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, help="data-loading processes (default: 0 on CPU, 4 on CUDA)")
    parser.add_argument("--state-minutes", type=float, default=DEFAULT_STATE_MINUTES, metavar="M",
                        help="save the run in progress (OUT/states/) at a selection point once M minutes have passed "
                             f"since its last save, and always when stopped; 0: at every selection point, inf: "
                             f"only when stopped [{DEFAULT_STATE_MINUTES:g}]")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def check_state_minutes(minutes: float) -> float:
    """``--state-minutes``: minutes, 0 or more (``inf``: only when stopped)."""
    if math.isnan(minutes) or minutes < 0:
        raise ValueError(f"--state-minutes must be 0 or more minutes (inf: only when stopped), got {minutes}")
    return minutes


# Loader processes per CPU this process may use, at most: more only queue for the same CPUs, and a typo
# (``--workers 100000``) forked until the machine ran out of processes.
WORKERS_PER_CPU = 4


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a batch job's share, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_workers(workers: int | None) -> int | None:
    """``--workers``: None (the device's default) or a count of data-loading processes, 0 = in-process, at most
    :data:`WORKERS_PER_CPU` per usable CPU."""
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be 0 (load in-process) or more, got {workers}")
    cpus = usable_cpus()
    if workers is not None and workers > WORKERS_PER_CPU * cpus:
        raise ValueError(f"--workers must be at most {WORKERS_PER_CPU * cpus} ({WORKERS_PER_CPU} per CPU this process "
                         f"may use, {cpus} here), got {workers}")
    return workers


def check_seeds(seeds: Sequence[int]) -> None:
    """``--seeds``: non-negative integers (numpy's seeded splits refuse negative ones, mid-sweep) up to the core's
    :data:`ldt.core.config.MAX_SEED`, checked with the other flags (each run's options check it only once the demo
    has built its data and pre-trained)."""
    negative = [seed for seed in seeds if seed < 0]
    if negative:
        raise ValueError(f"--seeds must be non-negative integers, got {' '.join(map(str, negative))}")
    huge = [seed for seed in seeds if seed > MAX_SEED]
    if huge:
        raise ValueError(f"--seeds: must be <= {MAX_SEED}, got {' '.join(map(str, huge))}")


def unique(flag: str, values: Sequence) -> list:
    """``values`` without repeats, in their order; a repeat is said in one line (it would train nothing new)."""
    kept = list(dict.fromkeys(values))
    if len(kept) < len(values):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        print(f"{flag}: repeated {' '.join(repeated)} dropped (each run is trained once)", flush=True)
    return kept


# How many passes over the smallest training domain the probe may make before it is said: the defaults make a few
# (the demos' probe of 160 images over 64), which fresh augmentations make legitimate; ten or more is a typed zero.
PROBE_PASSES_SAID = 10
# How many times one batch may hold each image of the smallest training domain: more is typed zeros, not a recipe
# (--batch-size 100000 over 4 images stacked 100000 crops at the first step: the OOM killer, exit 137, no word).
BATCH_PASSES_REFUSED = 10


def warn_of_small_domains(configs: Sequence["RunnerConfig"], counts: Mapping[str, int], noun: str = "images") -> None:
    """One warning line each, before any run, when ``--batch-size`` is more than the smallest training domain holds
    (``counts``: its training images, held-out part excluded), or the probe of a planned method that probes passes
    over it :data:`PROBE_PASSES_SAID` times or more: both are legitimate (the seeded stream passes over a domain
    again, within a batch if need be, with fresh augmentations), but said, not silent (a typed extra zero). A batch
    of more than :data:`BATCH_PASSES_REFUSED` times that domain is refused (ValueError)."""
    if not configs or not counts:
        return
    domain, count = min(counts.items(), key=lambda item: (item[1], item[0]))
    batch, probe = configs[0].batch_size, configs[0].probe_batches
    held = f"the {count} training {noun} of domain '{domain}'"
    if batch > BATCH_PASSES_REFUSED * count:
        raise ValueError(f"{field_flag('batch_size')} {batch} is {batch / count:.1f} times {held}, more than the "
                         f"{BATCH_PASSES_REFUSED} allowed (typed zeros? each step would stack every image that many "
                         "times, out of memory)")
    if batch > count:
        print(f"warning: {field_flag('batch_size')} {batch} is more than {held}: each of its batches holds some of "
              "them twice or more", file=sys.stderr, flush=True)
    if probe * batch >= PROBE_PASSES_SAID * count and any(runs_probe(config.method_config()) for config in configs):
        print(f"warning: {field_flag('probe_batches')} {probe} of {field_flag('batch_size')} {batch} is "
              f"{probe * batch} {noun} of each training domain, {PROBE_PASSES_SAID} times or more {held}: the probe "
              f"passes over them {probe * batch / count:.1f} times", file=sys.stderr, flush=True)


def check_training(config: object) -> None:
    """The training options both runners' run configurations share (``steps``, ``eval_every``,
    ``holdout_fraction``, ``lr``, ``weight_decay``, ``ema_decay``), each a one-line error naming its flag, where
    Adam or the EMA would otherwise fail (or train on NaN) inside the first run, or the held-out split only after the
    demo's pre-training."""
    for name in ("steps", "eval_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{field_flag(name)} must be positive, got {getattr(config, name)}")
    if not 0.0 < config.holdout_fraction < 1.0:
        raise ValueError(f"{field_flag('holdout_fraction')} must be in (0, 1), got {config.holdout_fraction}")
    lr, weight_decay, ema_decay = config.lr, config.weight_decay, config.ema_decay
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{field_flag('lr')} must be positive and finite, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"{field_flag('weight_decay')} must be non-negative and finite, got {weight_decay}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"{field_flag('ema_decay')} must be in [0, 1), got {ema_decay}")


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
        "weights": identity_path(config.weights) if config.weights else None,
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


# ------------------------------------------------------------------------------------ seeded training streams


def domain_seed(seed: int, domain: str) -> int:
    """The sampler / augmentation seed of one training domain: two domains never draw the same order or
    augmentations, and a domain's draws do not depend on where it stands among the others."""
    return int(np.random.SeedSequence([seed, zlib.crc32(domain.encode())]).generate_state(1)[0])


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit torch seed mixing a domain's seed and a (virtual) index: what one sample's augmentation draws from."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TrainingSampler(Sampler[int]):
    """Endless seeded indices for a dataset that augments item ``k`` from :func:`sample_seed` (seed, ``k``): pass
    ``p`` visits every sample once, in a permutation seeded by (seed, p), as virtual index ``p * size + i`` (sample
    ``i``), so each pass gets new augmentations and the stream does not depend on the number of loader workers.
    ``start``: the position to begin at (where a resumed run's stream stood), found without drawing the ones before."""

    def __init__(self, size: int, seed: int, start: int = 0) -> None:
        if size < 1:
            raise ValueError(f"TrainingSampler needs at least one sample, got {size}")
        self.size, self.seed, self.start = size, seed, start

    def __iter__(self) -> Iterator[int]:
        first, offset = divmod(self.start, self.size)
        for epoch in range(first, sys.maxsize):
            for i in np.random.default_rng([self.seed, epoch]).permutation(self.size)[offset:]:
                yield epoch * self.size + int(i)
            offset = 0

    def __len__(self) -> int:
        return sys.maxsize


def seeded_loader(dataset: Dataset, batch_size: int, seed: int, *, workers: int = 0, pin_memory: bool = False,
                  start: int = 0) -> DataLoader:
    """Endless batches of ``dataset`` in the seeded order of :class:`TrainingSampler`, ``start`` batches in."""
    return DataLoader(dataset, batch_size=batch_size, sampler=TrainingSampler(len(dataset), seed, start * batch_size),
                      num_workers=workers, pin_memory=pin_memory, drop_last=True, persistent_workers=workers > 0)


def domain_batches(loaders: Sequence[DataLoader], device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless training batches: one batch of every domain's loader per step, concatenated field by field (images,
    labels), on ``device``."""
    # The loaders' iterators are made now, not at the first batch: making one draws its base seed from the global
    # random numbers, which a resumed run restores after making its stream (so the dropout masks stay in step).
    iterators = [iter(loader) for loader in loaders]

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            fields = zip(*(next(iterator) for iterator in iterators))
            yield tuple(torch.cat(field).to(device, non_blocking=True) for field in fields)

    return batches()


class ResumableStream:
    """Endless batches that count how many were drawn, so that a run state can say where the data stream stood and
    a resumed run can rebuild it there: ``make(start)`` yields the batches from position ``start`` on, the same ones
    an unbroken stream would."""

    def __init__(self, make: Callable[[int], Iterator], start: int = 0) -> None:
        self.drawn = start
        self._batches = make(start)

    def __iter__(self) -> "ResumableStream":
        return self

    def __next__(self):
        batch = next(self._batches)
        self.drawn += 1
        return batch


RUN_STATE_FORMAT = "ldt.runner.state/1"
STATES_FOLDER = "states"


def check_state_path(path: Path) -> None:
    """A :class:`DiskError` when something other than a file stands at a run's state path (a folder): it was read as
    a broken state, with a warning, and the run's first save then failed in a second line, after its warm-up."""
    kind = not_a_file(path)
    if kind:
        raise DiskError(f"{path} is {kind}: move it away (a run saves its training state there)")


class RunState:
    """The training state of a run in progress, ``OUT/states/<run hash>.pt``: written (atomically) after each
    selection point and when SIGTERM / SIGINT stops the run, read when the sweep reruns it (so it continues where it
    stood rather than training again), deleted once the run's record is written. It holds the method's state (both
    branches, the exchange schedule, the partition), the optimizers, the selection so far, the random-number state
    and the position in the data stream. A file that cannot be read, or is not this run's, is ignored with a warning:
    the run starts afresh (and overwrites it); a folder in its place is a :class:`DiskError`
    (:func:`check_state_path`)."""

    def __init__(self, path: str | Path, digest: str, every_s: float = 0.0, earlier: str | None = None) -> None:
        self.path, self.digest, self.every_s = Path(path), digest, every_s
        self._theirs = {digest, earlier or digest}  # a state saved under the run's earlier identity is its own
        self.saved: dict | None = self._read()
        self._last = time.monotonic()
        self._warned = False  # a periodic save found no room (said once a run)
        # Set by train_and_select once its last step is validated: saves that finished training, for a stop that
        # arrives while the run tests the selected network (:meth:`save_trained`).
        self.trained: Callable[[], None] | None = None

    def _read(self) -> dict | None:
        check_state_path(self.path)
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            problem = None if isinstance(saved, dict) and saved.get("format") == RUN_STATE_FORMAT else \
                "not a run state"
            if problem is None and saved.get("run") not in self._theirs:
                problem = f"the state of run {saved.get('run')}, not of {self.digest}"
        except Exception as err:  # truncated, foreign, or written by an incompatible version
            # torch's own message would suggest loading with weights_only=False: a state is never worth that risk
            problem = f"not a readable run state (cut off, or not written by this runner: {type(err).__name__})"
        if problem is None:
            return saved
        warnings.warn(f"{self.path}: {problem}; the run starts afresh", stacklevel=3)
        return None

    @property
    def partition(self) -> Partition | None:
        """The partition the saved run was trained with (None: no state, or a method without one)."""
        saved = (self.saved or {}).get("partition")
        return Partition.from_dict(saved) if saved else None

    @property
    def position(self) -> int:
        """Batches of the data stream the saved run had drawn (warm-up and probe included); 0 without a state."""
        return (self.saved or {}).get("position", 0)

    @property
    def elapsed(self) -> dict[str, float]:
        """Seconds the saved run had spent, by what the run timed (``wall``, ``train``); empty without a state."""
        return dict((self.saved or {}).get("elapsed", {}))

    def due(self) -> bool:
        """Whether ``every_s`` seconds have passed since the last save (or since the run started)."""
        return time.monotonic() - self._last >= self.every_s

    def misfit(self, err: BaseException) -> ValueError:
        """The one-line error for a readable state that does not fit the run (e.g. the data gained a class)."""
        return ValueError(f"{self.path}: a saved state that does not fit this run ({one_line(err)[:300]}): delete "
                          "it to train the run afresh")

    def save(self, state: dict) -> None:
        atomic_torch_save({"format": RUN_STATE_FORMAT, "run": self.digest, **state}, self.path)
        self._last = time.monotonic()

    def save_due(self, save: Callable[[], None]) -> None:
        """``save()`` at a selection point, when :meth:`due`. Such a save only shortens what a kill -9 would cost, so a
        disk with no room for it does not end the run (hours of training, and the sweep after it): the previous state
        stays whole, one warning a run says so, and the next due save tries again. A disk that stays full still ends
        the run in one line when its record is written; any other write error (read-only, no permission) ends it now."""
        if not self.due():
            return
        try:
            save()
        except DiskError as err:
            if not err.no_room:
                raise
            self._last = time.monotonic()  # tried again after every_s, not at once
            if not self._warned:
                self._warned = True
                warnings.warn(f"{err}; the run goes on and tries again at its next save (a stop, or kill -9, resumes "
                              "from the previous state)", stacklevel=2)

    def save_on_stop(self, stopped: "Stopped", save: Callable[[], None]) -> None:
        """``save()`` for a stop, noted on ``stopped`` for its message; a write that fails is one line (the stop's
        own message still follows) saying what the rerun will find."""
        try:
            save()
            stopped.saved = self.path
        except DiskError as err:
            print(f"the run in progress could not save its state ({err}); a rerun continues from its last saved "
                  "state, if any", file=sys.stderr)

    def save_trained(self, stopped: "Stopped") -> None:
        """On a stop after training ended (the run was testing): save the trained state, once, so the rerun only
        tests."""
        if self.trained is None or stopped.saved is not None:
            return
        save, self.trained = self.trained, None
        self.save_on_stop(stopped, save)

    def keep_trained(self) -> str:
        """On bad input found after training ended (a test image that cannot be decoded: the start-up check reads
        headers and end markers only): save the trained state, so that the rerun, the file fixed, only tests, not
        trains again what the last periodic save missed (all of it with --state-minutes inf). Returns what the
        run's error line adds ('' while training: its states are saved as usual)."""
        if self.trained is None:
            return ""
        save, self.trained = self.trained, None
        try:
            save()
        except DiskError as err:
            return f"; its training could not be saved ({err})"
        return f"; its training is saved in {self.path}: once the file is fixed, the same command only tests"


def prepared(state: RunState | None, prepare: Callable[..., Method]) -> Method:
    """``prepare(partition=, resuming=)`` (a call of :func:`ldt.core.prepare_method`): the method as prepared afresh,
    or rebuilt on the saved run's partition with its weights and exchange schedule loaded. A readable state that does
    not fit the run (the data gained a class since: the same run hash, another head) is one line naming it."""
    if state is None or state.saved is None:
        return prepare(partition=None, resuming=False)
    try:
        method = prepare(partition=state.partition, resuming=True)
        method.load_state_dict(state.saved["method"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise state.misfit(err) from err
    return method


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []}


def _set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["cpu"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def train_and_select(method: Method, stream: Iterator, loss_fn: LossFn, *, steps: int, eval_every: int, lr: float,
                     weight_decay: float, validate: Callable[[nn.Module], tuple[float, dict]], evaluator: nn.Module,
                     progress: bool = False, desc: str = "train", state: RunState | None = None,
                     elapsed: Callable[[], dict[str, float]] = dict) -> Selection:
    """Train ``steps`` steps (Adam per branch); every ``eval_every`` steps and at the end, load the deployed network
    into ``evaluator`` and keep it if ``validate`` scores it higher than every earlier one (ties keep the earlier).

    ``validate(network) -> (score, details)`` must read only training-domain data: this loop is what selects.
    With a :class:`RunState` (``stream`` then a :class:`ResumableStream`) the loop saves its state after a
    selection point when :meth:`RunState.due`, and when stopped (a stop that arrives during a step takes effect after
    it), with the seconds ``elapsed()`` reports, and continues a saved state: on the CPU bit for bit (with the
    per-sample seeding of :func:`domain_batches`, with loader processes too).
    """
    optimizers = [torch.optim.Adam(branch.parameters, lr=lr, weight_decay=weight_decay) for branch in method.branches()]
    saved = state.saved if state is not None else None
    best, step, checked = Selection(), 0, 0
    if saved is not None:
        try:
            for optimizer, optimizer_state in zip(optimizers, saved["optimizers"], strict=True):
                optimizer.load_state_dict(optimizer_state)
            best = Selection(**saved["selection"])
            step, checked = saved["step"], saved["checked"]
            _set_rng_state(saved["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise state.misfit(err) from err
    position = getattr(stream, "drawn", 0)
    # The random-number state where the loop last stood between two of its parts (a whole step, a whole selection
    # point): a stop while a batch loads or a network is validated comes after random numbers were drawn there
    # (a DataLoader's seed), which the resumed run draws again.
    rng = _rng_state() if state is not None else None

    def save() -> None:
        state.save({"step": step, "checked": checked, "position": position, "elapsed": elapsed(),
                    "method": method.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                    "partition": method.partition.to_dict() if method.partition is not None else None,
                    "selection": vars(best), "rng": rng})

    bar = tqdm(total=steps, initial=step, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    try:
        while True:
            if step and (step % eval_every == 0 or step == steps) and checked < step:
                deployed = method.deployed_state_dict()
                evaluator.load_state_dict(deployed)
                score, details = validate(evaluator)
                with whole_step():  # the score is kept, and the step marked validated, together
                    best.history.append({"step": step, "score": score, **details})
                    if score > best.score:
                        best.state, best.step, best.score, best.details = deployed, step, score, details
                    checked = step
                    rng = _rng_state() if state is not None else None
                bar.set_postfix(heldout=f"{score:.3f}", best=f"{best.score:.3f}@{best.step}")
                if state is not None:
                    state.save_due(save)
            if step == steps:
                break
            batch = next(stream)
            with whole_step():
                method.train_step(batch, loss_fn, optimizers)
                step, position = step + 1, getattr(stream, "drawn", 0)
                rng = _rng_state() if state is not None else None
            bar.update(1)
    except Stopped as stopped:
        if state is not None:
            state.save_on_stop(stopped, save)
        raise
    finally:
        bar.close()
    if state is not None:
        state.trained = save
    return best


# Errors a run can end in that are about its input (a data file, a weights file, the disk, options under which the
# training diverged), not a bug: the sweep stops on them with one line. PIL's decoding errors are OSErrors; the tasks'
# data and weights errors ValueErrors; a NaN / inf loss the methods' FloatingPointError, or in LDT's probe its
# ProbeError (both were a traceback).
RUN_INPUT_ERRORS = (ValueError, OSError, DiskError, FloatingPointError, ProbeError)


def one_line(err: BaseException) -> str:
    """An error's message on one line. A data-loader worker's error carries the worker's traceback in its message;
    its last line is the original error, kept without the exception's name."""
    return " ".join(original_error(str(err)).split()) or type(err).__name__


class RunFailed(ValueError):
    """A run stopped on bad input found only while it ran; the message names the run and the file."""


def fingerprints(configs: Sequence[RunnerConfig]) -> dict[str, str]:
    """The tensor fingerprint of every weights file the sweep starts from, by path as configured."""
    try:
        return {path: content_fingerprint(path) for path in dict.fromkeys(c.weights for c in configs if c.weights)}
    except WeightsError as err:
        raise ValueError(str(err)) from None


def remove_recorded_state(path: Path, whose: str) -> None:
    """Delete the saved state of a run whose record is written. Why not a bare unlink: the state is garbage by then,
    so one that cannot be deleted (an immutable file, no permission) is one warning naming it, not an error that
    ends the sweep after the record, and every rerun at its start."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"cannot delete {path}, the saved state of {whose}, which is recorded: "
                      f"{disk_reason(err, path.parent)}; delete it by hand (it is not read again)", stacklevel=2)


def planned_records(configs: Sequence[RunnerConfig], out: Path) -> tuple[list[tuple[str, str]], Records]:
    """(run hash, earlier run hash) of each of ``configs``, and ``out``'s records, where those written under a
    run's earlier identity are its own."""
    identities = [(run_hash(config.hparams()), earlier_run_hash(config.hparams())) for config in configs]
    return identities, Records(out / RESULTS_FILE, earlier={old: new for new, old in identities})


@one_warning_each()  # its records and its tables' records: one warning of each broken line
def tables_of_a_recorded_sweep(configs: Sequence[RunnerConfig], out: Path, tabulate: Callable[[Path], str],
                               problem: str) -> bool | None:
    """For ``out``, which cannot be written in (``problem``): when every run of ``configs`` is recorded there (with
    the weights it was trained from), print the tables, written nowhere, and True; otherwise False (the sweep
    refuses the folder, as before). Only the tables would have been rewritten: refusing the folder hid them. None:
    every run is recorded but a weights file the plan names is not there yet (the demo's pre-training makes it), so
    whether they were trained from it is told only once it is made. A run left to train is False before any weights
    file is read."""
    identities, records = planned_records(configs, out)
    done = set(records.by_hash())
    if any(digest not in done for digest, _ in identities):
        return False
    if any(c.weights and not Path(c.weights).is_file() for c in configs):
        return None
    now = fingerprints(configs)
    if stale_weights(records, ((digest, c.weights) for (digest, _), c in zip(identities, configs)), now):
        return False
    print(f"{len(set(identities))} runs, all recorded in {out}; {problem}: the tables are printed, not rewritten "
          "there", flush=True)
    with tables_unwritten():
        print(tabulate(out))
    return True


@one_warning_each()  # its records and its tables' records: one warning of each broken line
def sweep(configs: Sequence[RunnerConfig], out: Path, run: Callable[..., dict], *, device: str, workers: int | None,
          progress: bool, tabulate: Callable[[Path], str], state_minutes: float = DEFAULT_STATE_MINUTES) -> int:
    """Run every configuration that has no record in ``out`` yet (by options hash; so a rerun resumes), then
    recompute and print the tables. ``run(config, device=, workers=, progress=, state=)`` returns a run's record, to
    which the sweep adds the weights' fingerprint; ``state`` is the run's :class:`RunState` (a run stopped midway
    continues from it; it is saved at a selection point once ``state_minutes`` have passed since its last save, and
    when stopped). Data loader workers default to 4 on CUDA and 0 (in-process) on CPU.

    Bad input found only inside a run (a broken data file, a full disk) raises :class:`RunFailed`, one line naming
    the run; the records of the runs before it are kept. Records of the planned runs made by an earlier training
    recipe of the runner (:func:`ldt.sweep.earlier_recipes`) are not reused, and said in one line.
    """
    identities, records = planned_records(configs, out)
    workers = workers if workers is not None else (4 if device.startswith("cuda") else 0)
    now = fingerprints(configs)
    stale = stale_weights(records, ((digest, c.weights) for (digest, _), c in zip(identities, configs)), now)
    if stale:
        raise ValueError(stale)

    states = out / STATES_FOLDER

    def state_file(digest: str) -> Path:
        return states / f"{digest}.pt"

    def execute(config: RunnerConfig, digest: str, earlier: str) -> dict:
        state = RunState(state_file(digest), digest, every_s=60.0 * state_minutes, earlier=earlier)
        if state.saved is not None:
            print(f"run {config.describe()}: resuming at step {state.saved['step']} from {state.path}", flush=True)
        try:
            record = run(config, device=device, workers=workers, progress=progress, state=state)
        except Stopped as stopped:  # in the test of the selected network: its training is kept
            state.save_trained(stopped)
            raise
        except RUN_INPUT_ERRORS as err:  # the cause for LDT_TRACEBACK
            raise RunFailed(f"run {config.describe()}: {one_line(err)}{state.keep_trained()}") from err
        return {**record, **({"weights_fingerprint": now[config.weights]} if config.weights else {})}

    planned = []
    for config, (digest, earlier) in zip(configs, identities):
        planned.append(PlannedRun(digest, config.describe(), lambda c=config, d=digest, e=earlier: execute(c, d, e),
                                  recorded=lambda d=digest, c=config: remove_recorded_state(state_file(d),
                                                                                            f"run {c.describe()}")))
    digests = set(p.digest for p in planned)
    labels = {p.digest: p.label for p in planned}  # a state's run, named in messages (another sweep's: its hash)
    done = set(records.by_hash())
    if states.exists() and not states.is_dir():  # now, not when the first run first saves (or in a bare errno)
        raise DiskError(f"{states} is a file, not a folder: move it away (OUT/{STATES_FOLDER}/ holds the training "
                        "states of the runs in progress)")
    if states.is_dir() and digests - done:
        check_writable(states)  # the first save would fail only after the warm-up, the probe and --state-minutes
        for digest in sorted(digests - done):
            check_state_path(state_file(digest))
    saved = sorted(states.glob("*.pt")) if states.is_dir() else []
    for path in saved:  # a sweep killed between a record and the removal of its state (this sweep's run or not)
        owner = records.earlier.get(path.stem, path.stem)  # saved under the run's earlier identity: its own
        if owner in done:
            remove_recorded_state(path, f"run {labels.get(owner, owner)}")
        elif owner != path.stem and not state_file(owner).exists():
            os.replace(path, state_file(owner))
    saved = sorted(states.glob("*.pt")) if states.is_dir() else []
    remove_leftovers(states)  # a state write cut by kill -9 (the lock keeps other sweeps out)
    others = [path for path in saved if path.stem not in done and path.stem not in digests]
    if others:  # another command's runs in progress, or runs whose options changed since they were stopped
        size = sum(path.stat().st_size for path in others if path.exists()) / 2 ** 20
        print(f"{states}: {len(others)} saved state(s) of runs this sweep does not plan ({size:.0f} MiB): the "
              "command that started them continues them; delete them if they will not be rerun", flush=True)
    older = earlier_recipes(records.all(), [config.hparams() for config in configs])
    if older:  # "0 already recorded" beside a full results file says nothing of why
        counts = ", ".join(f"{count} of recipe {recipe}" for recipe, count in sorted(older.items()))
        print(f"{records.path}: {sum(older.values())} record(s) of these runs were made by an earlier training recipe "
              f"of this runner ({counts}): not reused, those runs train again; the tables keep the old records apart, "
              "in rows of their own (Config column)", flush=True)
    print(f"{len(digests)} runs, {len(digests & done)} already recorded in {out}; running the rest on {device}",
          flush=True)
    started = time.monotonic()
    trained, _ = run_pending(planned, records, progress=progress, desc="sweep")
    with contextlib.suppress(OSError):  # every state deleted with its run's record: no empty folder left
        states.rmdir()
    print(tabulate(out))
    print(f"{trained} run(s) trained by this command ({time.monotonic() - started:.1f} s); records: {records.path}; "
          f"tables in {out}")
    return 0


def main(args: Namespace, prepare: Callable[[], tuple[Path, Sequence[RunnerConfig]]], run: Callable[..., dict],
         tabulate: Callable[[Path], str],
         identify: Callable[[], tuple[Path, Sequence[RunnerConfig]] | None] | None = None) -> int:
    """A runner's command line after parsing: ``--collect OUT`` recomputes the tables from the records alone;
    otherwise ``prepare()`` plans and checks everything (bad data, options or weights: one line naming the culprit,
    exit status 2, before any run), ``--out`` is checked writable and locked, and :func:`sweep` runs what is not
    recorded yet (bad input found during a run: one line, exit status 2). ``identify()``: the folder and runs
    ``prepare`` plans, without its data build, image reads or pre-training (None: not known without them); for an
    ``--out`` holding records that cannot be written in, it tells a run left to train (refused) or tables alone
    (printed) before that work. SIGTERM / SIGINT: one line, exit status 128 + the signal; the runs recorded before it
    are kept, and the same command resumes."""
    try:
        with stop_on_signal():
            return _main(args, prepare, run, tabulate, identify)
    except Stopped as stopped:
        kept = "the runs recorded so far are kept" + (f", the run in progress saved {stopped.saved}" if stopped.saved
                                                       else "")
        print(f"stopped by {signal.Signals(stopped.signum).name}: {kept}; rerun the same command to resume",
              file=sys.stderr, flush=True)
        return 128 + stopped.signum


def collect_problem(folder: Path) -> str | None:
    """Why ``--collect folder`` names no records file to tabulate (a file for the folder, the records file itself,
    nothing there), or None: said as such, not as 'no records in FILE/results.jsonl', a path that cannot exist."""
    records = folder / RESULTS_FILE
    if not folder.exists():
        return f"no records: {folder} does not exist"
    if not folder.is_dir():
        return (f"{folder} is the records file itself: give its folder, {folder.parent}" if folder.name == RESULTS_FILE
                else f"{folder} is a file, not a results folder (the folder holding {RESULTS_FILE})")
    kind = not_a_file(records)
    if kind:
        return f"{records} is {kind}"
    if not records.exists():
        return f"no records: {folder} holds no {RESULTS_FILE} (not a results folder?)"
    return None


def _main(args: Namespace, prepare: Callable[[], tuple[Path, Sequence[RunnerConfig]]], run: Callable[..., dict],
          tabulate: Callable[[Path], str],
         identify: Callable[[], tuple[Path, Sequence[RunnerConfig]] | None] | None = None) -> int:
    if args.collect:
        folder = Path(args.collect)
        problem = collect_problem(folder)
        try:
            if problem:
                raise FileNotFoundError(problem)
            unwritable = output_dir_problem(folder)
            if unwritable:  # the tables can still be read: printed, said once not rewritten
                print(f"{folder}: {unwritable}: the tables are printed, not rewritten there", flush=True)
            with tables_unwritten() if unwritable else contextlib.nullcontext():
                print(tabulate(folder))
        except (FileNotFoundError, DiskError) as err:
            show_traceback(err)
            print(f"error: --collect {folder}: {one_line(err)}", file=sys.stderr)
            return 2
        return 0
    try:
        check_device(args.device)
        check_workers(args.workers)
        minutes = check_state_minutes(getattr(args, "state_minutes", DEFAULT_STATE_MINUTES))
        # --out (None: the runner's default, known once the data is) before prepare builds the demo data and
        # pre-trains its backbone (minutes); one that holds records may need no writing (all its runs recorded)
        given = getattr(args, "out", None)
        if given is None or not (Path(given) / RESULTS_FILE).is_file():
            require_output_dir("--out", given)
        elif identify is not None and output_dir_problem(Path(given)):
            # Records in a folder that cannot be written in: the plan alone tells a run left to train (refused) from
            # tables alone (printed), before prepare reads every image and pre-trains (None: after it, below).
            planned = identify()
            problem = planned and output_dir_problem(planned[0])
            told = tables_of_a_recorded_sweep(planned[1], planned[0], tabulate, problem) if problem else None
            if told:
                return 0
            if told is False:
                require_output_dir("--out", given)
        out, configs = prepare()
        problem = output_dir_problem(out) if (out / RESULTS_FILE).is_file() else None
        if problem and tables_of_a_recorded_sweep(configs, out, tabulate, problem):
            return 0
        require_output_dir("--out", given)  # the check left for later above: runs to train
        with sweep_lock(check_room(out)):  # a DiskError now, not after the first run has trained
            return sweep(configs, out, run, device=args.device, workers=args.workers, progress=args.progress,
                         tabulate=tabulate, state_minutes=minutes)
    except (ValueError, OSError, DiskError) as err:  # data, weights and option errors are ValueErrors; missing
        show_traceback(err)  # files OSErrors; unwritable --out a DiskError
        for line in error_lines(err):  # several problems (every broken split of the data check): a line each
            print(f"error: {line}", file=sys.stderr)
        return 2
