"""What an SR run writes and reads back: weights files, training states, the RNG state, pruning of old checkpoints.

Weights files are plain BasicSR checkpoints (``{'params': ...}``, plus ``'params_ema'`` when an EMA is deployed), so
BasicSR's ``SRModel`` and ``test.py`` load them. A training state holds everything a resume needs (the method's own
state, optimizers, schedulers, scalers, RNG, data position, validation history); both are written atomically.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ldt.atomic import DiskError, atomic_torch_save, disk_reason, exclusive_lock, lock_beside
from ldt.core import Partition
from ldt.core.methods import once_per_tensor
from ldt.weights import WeightsError, read_checkpoint

STATE_FORMAT = "ldt.sr_training_state/2"


def rng_state() -> dict:
    """Every RNG a training step touches, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(path: str | Path, entries: dict) -> Path:
    """A BasicSR weights file (each entry's tensors moved to the CPU; the aliases of a tied parameter stay one
    tensor, saved once)."""
    return atomic_torch_save({key: once_per_tensor(state, lambda name, tensor: tensor.cpu())
                              for key, state in entries.items()}, path)


def save_state(path: str | Path, state: dict) -> Path:
    return atomic_torch_save({"format": STATE_FORMAT, **state}, path)


def iteration_files(folder: str | Path, suffix: str) -> list[Path]:
    """``<iter><suffix>`` files of ``folder`` in iteration order (other names are ignored)."""
    folder = Path(folder)
    files = [p for p in folder.glob(f"*{suffix}") if p.name[: -len(suffix)].isdigit()] if folder.is_dir() else []
    return sorted(files, key=lambda p: int(p.name[: -len(suffix)]))


def prune(models: str | Path, states: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` iteration checkpoints (``<iter>.state`` with its ``net_g_<iter>.pth``)."""
    if keep <= 0:
        return
    for old in iteration_files(states, ".state")[:-keep]:
        old.unlink()
        (Path(models) / f"net_g_{old.stem}.pth").unlink(missing_ok=True)


def state_partition(path: str | Path) -> Partition | None:
    """The partition a training state was trained with, read without loading its tensors (memory-mapped)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    saved = state.get("partition")
    return Partition.from_dict(saved) if saved else None


# ------------------------------------------------------------------------------------------------ the run folder
def experiment_lock(exp: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a run (or a demo / sweep stage) works in ``exp``: two at once would archive, clean and write each
    other's folder. A second one is refused in one line naming the holder."""
    return exclusive_lock(lock_beside(exp), busy=f"{exp} is in use by another run ({{holder}}; lock {{lock}}): wait "
                                                 "for it to finish, or choose another name")


@contextlib.contextmanager
def runs_inside_held(*folders: str | Path) -> Iterator[None]:
    """Hold the lock of every run named inside ``folders`` while they are moved or deleted. Why: a run of ``a/b``
    works in ``experiments/a/b`` under the lock ``experiments/a/.b.lock``, both inside ``experiments/a``: archiving
    (or a stage's rebuild of) ``a`` would move a live run's folder and lock away under it, and let a second ``a/b``
    start beside it. One that is in use is refused in one line naming it and its lock; while they are held, a run of
    such a name that starts is refused as a second run of its name is. A run of ``a/b`` may work while ``a`` does:
    neither writes the other's files. A ``.b.lock`` that is no file (a folder of that name) is skipped: no run of
    ``a/b`` can hold it (its lock is refused), and it is archived with the rest."""
    with contextlib.ExitStack() as held:
        for folder in map(Path, folders):
            for lock in sorted(p for p in folder.rglob(".*.lock") if p.is_file()) if folder.is_dir() else []:
                inner = lock.with_name(lock.name[1:-len(".lock")])
                held.enter_context(exclusive_lock(lock, busy=f"{folder} holds {inner}, which is in use by another run "
                                                             "({holder}; lock {lock}): wait for it to finish, or "
                                                             "choose another name"))
        yield



def holds_a_run(experiment: str | Path) -> bool:
    """Whether an experiment folder holds an earlier run's results (weights, states, partition or results)."""
    experiment = Path(experiment)
    return any((experiment / sub).is_dir() and any((experiment / sub).iterdir()) for sub in ("models", "training_states")) \
        or any((experiment / name).is_file() for name in ("partition.json", "results.json"))


def archive(*folders: str | Path) -> list[tuple[Path, Path]]:
    """BasicSR's convention for a rerun of an experiment name: rename each existing folder to
    ``<folder>_archived_<time>`` (``_2``, ``_3``, ... for more in the same second; nothing is deleted); returns the
    (old, new) names. Refused, nothing moved, while a run of a name inside one of them is in use
    (:func:`runs_inside_held`)."""
    from basicsr.utils import get_time_str

    stamp, moved = get_time_str(), []
    with runs_inside_held(*folders):
        for folder in map(Path, folders):
            if folder.exists():
                target, count = folder.with_name(f"{folder.name}_archived_{stamp}"), 1
                while target.exists() or target.is_symlink():  # archived in this second already: the rename failed
                    count += 1
                    target = folder.with_name(f"{folder.name}_archived_{stamp}_{count}")
                try:
                    folder.rename(target)
                except OSError as err:
                    raise DiskError(f"cannot archive {folder} to {target.name}: "
                                    f"{disk_reason(err, folder.parent)}") from None
                moved.append((folder, target))
    return moved


def read_state(path: str | Path, *, mmap: bool = False) -> dict:
    """A training state, or a :class:`ldt.weights.WeightsError` naming the file and what is wrong with it
    (``mmap``: tensors mapped from the file, not read: a cheap check that it is whole)."""
    state = read_checkpoint(path, what="training state", mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"training state {path} is not an LDT training state (format {found!r}, expected "
                           f"{STATE_FORMAT!r})")
    return state


def _reason(message: str, subject: str) -> str:
    """What ``message`` (``'<subject> is truncated …'``, ``'<subject>: cannot be read …'``) says of its subject,
    for a line that names the subject itself: 'truncated …', 'cannot be read …'."""
    if not message.startswith(subject):
        return message
    reason = message[len(subject):].removeprefix(":").strip()
    return reason.removeprefix("is ")


def newest_intact_state(folder: str | Path, warn, *, mmap: bool = False) -> tuple[Path | None, dict | None]:
    """The newest ``<iter>.state`` of ``folder`` that reads back whole; each newer broken one is ``warn``-ed about
    (a kill during a write leaves the previous state intact: this falls back to it). ``mmap``: see
    :func:`read_state`."""
    broken = []
    for path in reversed(iteration_files(folder, ".state")):
        try:
            state = read_state(path, mmap=mmap)
        except WeightsError as err:
            broken.append(str(err))
            warn(f"skipping training state {path}: {_reason(str(err), f'training state {path}')}")
            continue
        return path, state
    if broken:
        raise WeightsError(f"no intact training state in {folder}: " + "; ".join(broken))
    return None, None


def remove_stale_weights(models: str | Path, states: str | Path, resumed_iter: int, keep: int) -> list[Path]:
    """``net_g_<iter>.pth`` files an interrupted run left behind: newer than the state it resumes from (they are
    written again), or, when old checkpoints are pruned (``keep`` > 0), without a state of their own."""
    with_state = {int(p.stem) for p in iteration_files(states, ".state")}
    stale = []
    for path in Path(models).glob("net_g_*.pth") if Path(models).is_dir() else []:
        label = path.stem[len("net_g_"):]
        if label.isdigit() and (int(label) > resumed_iter or (keep > 0 and int(label) not in with_state)):
            stale.append(path)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}:"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(old: dict, new: dict) -> dict[str, tuple]:
    old, new = _flatten(old), _flatten(new)
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}


def option_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changes a resume cannot make, changes it applies) between a state's options and this run's, as
    ``'option: old -> new'`` lines. A resume may change what :func:`ldt.sr.options.identity_sections` leaves out with
    ``resumable=True`` (learning rate, length, validation, data paths) and the logging; nothing else."""
    from ldt.sr.options import identity_sections

    fixed = _differences(*(identity_sections(o, resumable=True) for o in (saved, current)))
    every = _differences(*({**identity_sections(o), "logger": o.get("logger") or {}} for o in (saved, current)))
    if "ldt:method" in fixed:  # the options only one of the two methods reads are no differences of their own
        saved_keys, current_keys = (set(_flatten(identity_sections(o))) for o in (saved, current))
        one_sided = {key for key in saved_keys ^ current_keys if key.startswith("ldt:")}
        fixed = {key: change for key, change in fixed.items() if key not in one_sided}
        every = {key: change for key, change in every.items() if key not in one_sided}
    lines = {key: f"{key}: {old!r} -> {new!r}" for key, (old, new) in every.items()}
    lines.update({key: f"{key}: {old!r} -> {new!r}" for key, (old, new) in fixed.items()})
    return [lines[key] for key in fixed], [line for key, line in lines.items() if key not in fixed]


def validation_changes(saved: dict, current: dict) -> list[str]:
    """What changes a validation's numbers between a state's options and this run's, as ``'option: old -> new'``
    lines: the tiling (its overlap only where a tile is set), the metrics with their options, and the validation
    sets' blocks (a resume may change the tiling and the data paths). A stored validation is reused only without
    any (an empty ``saved``: a state that records no options, reused never)."""
    from ldt.sr.options import identity_sections

    def settings(opt: dict) -> dict:
        sections = identity_sections(opt)
        val = sections["val"]
        tiling = {"tile": val["tile"], **({"tile_overlap": val["tile_overlap"]} if val["tile"] is not None else {})}
        sets = {key: block for key, block in sections["datasets"].items() if key.startswith(("val", "test"))}
        return {"val": {**tiling, "metrics": val["metrics"]}, "datasets": sets}

    if not saved:
        return ["the training state records no options"]
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in _differences(settings(saved), settings(current)).items()]
