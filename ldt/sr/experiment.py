"""Option dicts for camera-shift experiments, shared by the demo, ``scripts/reproduce.py`` and the study.

One run = train on the ``source`` cameras of a DRealSR-style root, select the checkpoint on the source camera's test
pairs (training-domain validation), and report every target camera. Only what an experiment sets is written here;
everything else takes the schema's defaults (:mod:`ldt.sr.options`).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ldt.atomic import atomic_write_text, make_dirs, read_json_dict, read_json_object
from ldt.cli import strict_json
from ldt.data.cameras import TARGET_CAMERAS
from ldt.sr.checkpoints import experiment_lock, newest_intact_state, runs_inside_held
from ldt.sr.options import prepare_options, run_identity
from ldt.sr.preemption import Interrupted
from ldt.sr.train import train
from ldt.weights import WeightsError, content_fingerprint

# Small networks for CPU experiments, and the paper's x4 configurations.
ARCHS: dict[str, dict] = {
    "safmn_tiny": {"type": "SAFMN", "dim": 16, "n_blocks": 2, "ffn_scale": 2.0, "upscaling_factor": 4},
    "safmn": {"type": "SAFMN", "dim": 36, "n_blocks": 8, "ffn_scale": 2.0, "upscaling_factor": 4},
    "hat": {
        "type": "HAT", "upscale": 4, "in_chans": 3, "img_size": 64, "window_size": 16, "compress_ratio": 3,
        "squeeze_factor": 30, "conv_scale": 0.01, "overlap_ratio": 0.5, "img_range": 1.0, "depths": [6] * 6,
        "embed_dim": 180, "num_heads": [6] * 6, "mlp_ratio": 2, "upsampler": "pixelshuffle", "resi_connection": "1conv",
    },
    "mambair": {
        "type": "MambaIR", "upscale": 4, "in_chans": 3, "img_size": 64, "img_range": 1.0, "d_state": 16,
        "depths": [6] * 6, "embed_dim": 180, "mlp_ratio": 2, "upsampler": "pixelshuffle", "resi_connection": "1conv",
    },
}


@dataclass(frozen=True)
class RunBudget:
    """The size of one camera-shift run."""

    iters: int
    batch_size: int
    gt_size: int
    val_freq: int


def camera_dataset(name: str, root: str | Path, cameras: Sequence[str], split: str = "test") -> dict:
    return {"name": name, "type": "DRealSRCameraDataset", "dataroot": str(root), "split": split,
            "cameras": list(cameras), "io_backend": {"type": "disk"}}


def camera_run_options(
    name: str,
    data_root: str | Path,
    budget: RunBudget,
    *,
    arch: str | dict,
    method: str,
    seed: int,
    source: Sequence[str] = ("olympus",),
    targets: Sequence[str] = TARGET_CAMERAS,
    pretrained: str | Path | None = None,
    ldt: dict | None = None,
    lr: float | None = None,
    ema_decay: float | None = None,
    num_gpu: int | str = "auto",
    tile: int | None = None,
) -> dict:
    """Options of one camera-shift run (a complete option dict). ``ldt`` holds the ``ldt:`` options the run sets
    besides the method; ``lr`` and ``ema_decay``, when given, set ``train:optim_g:lr`` and ``train:ema_decay``."""
    network = copy.deepcopy(ARCHS[arch] if isinstance(arch, str) else arch)
    datasets = {
        "train": {**camera_dataset(f"{'+'.join(source)}_train", data_root, source, "train"), "gt_size": budget.gt_size,
                  "use_hflip": True, "use_rot": True, "batch_size_per_gpu": budget.batch_size, "num_worker_per_gpu": 0},
        "val_0": camera_dataset("source", data_root, source),
    }
    for index, camera in enumerate(targets, start=1):
        datasets[f"val_{index}"] = camera_dataset(camera, data_root, [camera])
    train_section: dict = {"total_iter": budget.iters, "optim_g": {"type": "Adam", **({"lr": lr} if lr else {})}}
    if ema_decay:
        train_section["ema_decay"] = ema_decay
    return {
        "name": name,
        "model_type": "LDTModel",
        "scale": 4,
        "num_gpu": num_gpu,
        "manual_seed": seed,
        "datasets": datasets,
        "network_g": network,
        "path": {"pretrain_network_g": str(pretrained)} if pretrained else {},
        "train": train_section,
        "val": {"val_freq": budget.val_freq, "selection": "source", "source_set": "source", "pbar": False, "tile": tile},
        # A state at every validation, only the newest kept: an interrupted sweep resumes mid-run (see run_stage).
        "logger": {"print_freq": max(1, budget.iters // 10), "save_checkpoint_freq": budget.val_freq,
                   "keep_last_checkpoints": 1, "use_tb_logger": True},
        "ldt": {"method": method, "seed": seed, **copy.deepcopy(ldt or {})},
    }


def has_intact_state(folder: Path) -> bool:
    """Whether an interrupted stage left a training state that reads back whole (with only broken ones it starts
    afresh: a resume would refuse them all). Memory-mapped: the resume reads the state's tensors once, not twice."""
    try:
        return newest_intact_state(folder, lambda message: print(f"warning: {message}"), mmap=True)[0] is not None
    except WeightsError:
        return False


def run_stage(opt: dict, root: Path, force: bool = False, label: str = "demo") -> dict:
    """Train one run under ``root/experiments/<name>`` unless a finished run with the same identity is there.

    Why: the demo and the table sweeps rerun many identical stages; ``results.json`` is stamped with the run identity
    (:func:`ldt.sr.options.run_identity`) and the pre-trained weights' tensor fingerprint after training, so only a run
    that finished with exactly these options and these weights counts as cached (a ``--force``-rebuilt pre-training
    invalidates the stages built on it). A run with the same options and weights that was interrupted (its folder
    holds ``options_hash.txt`` and a training state) is resumed from its latest state; anything else in the folder
    (an unreadable ``results.json`` included) is deleted first.

    Returns the run's report, with ``cached``: True when it is the finished run's, read back and not trained (a sweep
    that rebuilds a lost record from it says so, rather than counting the run as trained).
    """
    exp = root / "experiments" / opt["name"]
    stamp, started = exp / "results.json", exp / "options_hash.txt"
    digest = run_identity(opt)
    identities = (digest, run_identity(opt, earlier=True))  # a stage stamped when identities held absolute paths
    weights = opt["path"].get("pretrain_network_g")
    fingerprint = content_fingerprint(weights) if weights else None
    stage_ids = [d if fingerprint is None else f"{d} weights {fingerprint}" for d in identities]
    with experiment_lock(exp):  # from the cache check on: a second process must not delete this run
        cached = {} if force else read_json_dict(stamp)
        if cached.get("options_hash") in identities and cached.get("weights_fingerprint") == fingerprint:
            print(f"[{label}] {opt['name']}: cached ({stamp})")
            return {**cached, "cached": True}
        resume = (not force and started.is_file() and started.read_text(errors="replace").strip() in stage_ids
                  and has_intact_state(exp / "training_states"))
        if resume:
            print(f"[{label}] {opt['name']}: resuming an interrupted run")
        else:
            with runs_inside_held(exp, root / "tb_logger" / opt["name"]):
                shutil.rmtree(exp, ignore_errors=True)
                shutil.rmtree(root / "tb_logger" / opt["name"], ignore_errors=True)
            make_dirs(exp)
            atomic_write_text(started, stage_ids[0] + "\n")
        prepared = prepare_options(opt, is_train=True, source=f"{label} stage {opt['name']}")
        prepared.update(dist=False, rank=0, world_size=1, auto_resume=resume)
        stopped = None
        try:
            report = train(prepared, root=root)
        except Interrupted as err:
            stopped, report = err.resumed_by("rerun the same command to resume it"), {}
            if err.finished is None:
                raise stopped from None
        # stamped also when a signal came after the last step: the stage finished, and a rerun takes it as cached
        report.update(options_hash=digest, weights_fingerprint=fingerprint, cached=False)
        report_file = read_json_object(stamp)
        report_file.update(options_hash=digest, weights_fingerprint=fingerprint)
        atomic_write_text(stamp, strict_json(report_file, indent=1))
        if stopped is not None:
            raise stopped from None
    return report
