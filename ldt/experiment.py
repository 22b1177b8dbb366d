"""Option dicts for camera-shift experiments, shared by the demo and ``scripts/reproduce.py``.

One run = train on the ``source`` cameras of a DRealSR-style root, select the checkpoint on the source camera's test
pairs (training-domain validation), and report every target camera.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Sequence

from ldt.data.cameras import TARGET_CAMERAS
from ldt.options import prepare_options
from ldt.train import train

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


def _canonical_path(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def options_hash(opt: dict) -> str:
    """Stable short hash of the options that define a run.

    Left out: names, output paths, logging and ``num_gpu`` (where a run executes, not what it computes). Data roots
    and the pretrained file are hashed as resolved absolute paths, so ``datasets/x`` and ``./datasets/x`` name the
    same run.
    """
    relevant = {k: v for k, v in opt.items() if k not in ("name", "path", "logger", "num_gpu")}
    relevant["datasets"] = {
        phase: {k: (_canonical_path(v) if k.startswith("dataroot") else v) for k, v in dataset.items()}
        for phase, dataset in (opt.get("datasets") or {}).items()
    }
    relevant["pretrain"] = _canonical_path((opt.get("path") or {}).get("pretrain_network_g"))
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]


def camera_dataset(name: str, root: str | Path, cameras: Sequence[str], split: str = "test") -> dict:
    return {"name": name, "type": "DRealSRCameraDataset", "dataroot": str(root), "split": split,
            "cameras": list(cameras), "io_backend": {"type": "disk"}}


def camera_run_options(
    name: str,
    data_root: str | Path,
    *,
    arch: str | dict = "safmn_tiny",
    method: str = "ldt",
    source: Sequence[str] = ("olympus",),
    targets: Sequence[str] = TARGET_CAMERAS,
    total_iter: int = 300,
    batch_size: int = 8,
    gt_size: int = 192,
    lr: float = 1e-4,
    seed: int = 0,
    pretrained: str | Path | None = None,
    criterion: str = "var",
    unstable_ratio: float = 0.4,
    dpu: bool = True,
    interval: int = 10,
    probe_batches: int = 300,
    val_freq: int = 100,
    num_gpu: int | str = "auto",
    warmup_steps: int = 0,
    tile: int | None = None,
) -> dict:
    """Options of one camera-shift run (a complete, validatable option dict)."""
    network = copy.deepcopy(ARCHS[arch] if isinstance(arch, str) else arch)
    datasets = {
        "train": {**camera_dataset(f"{'+'.join(source)}_train", data_root, source, "train"), "gt_size": gt_size,
                  "use_hflip": True, "use_rot": True, "batch_size_per_gpu": batch_size, "num_worker_per_gpu": 0},
        "val_0": camera_dataset("source", data_root, source),
    }
    for index, camera in enumerate(targets, start=1):
        datasets[f"val_{index}"] = camera_dataset(camera, data_root, [camera])
    return {
        "name": name,
        "model_type": "LDTModel",
        "scale": 4,
        "num_gpu": num_gpu,
        "manual_seed": seed,
        "datasets": datasets,
        "network_g": network,
        "path": {"pretrain_network_g": str(pretrained)} if pretrained else {},
        "train": {"total_iter": total_iter, "optim_g": {"type": "Adam", "lr": lr, "weight_decay": 0, "betas": [0.0, 0.99**0.8]}},  # official betas
        "val": {"val_freq": val_freq, "selection": "source", "source_set": "source", "pbar": False, "tile": tile},
        # A state at every validation, only the newest kept: an interrupted sweep resumes mid-run (see run_stage).
        "logger": {"print_freq": max(1, total_iter // 10), "save_checkpoint_freq": val_freq, "keep_last_checkpoints": 1,
                   "use_tb_logger": True},
        "ldt": {
            "method": method, "criterion": criterion, "unstable_ratio": unstable_ratio, "seed": seed,
            "probe": {"num_batches": probe_batches, "batch_size": 4},
            "warmup": {"steps": warmup_steps},
            "exchange": {"interval": interval, "dpu": dpu},
        },
    }


def run_stage(opt: dict, root: Path, force: bool = False, label: str = "demo") -> dict:
    """Train one run under ``root/experiments/<name>`` unless a finished run with the same options hash is there.

    Why: the demo and the table sweeps rerun many identical stages; ``results.json`` is stamped with the options hash
    after training, so only a run that finished with exactly these options counts as cached. A run with the same
    options that was interrupted (its folder holds ``options_hash.txt`` and a training state) is resumed from its
    latest state; anything else in the folder is deleted first. ``label`` prefixes messages.
    """
    exp = root / "experiments" / opt["name"]
    stamp, started = exp / "results.json", exp / "options_hash.txt"
    digest = options_hash(opt)
    if not force and stamp.is_file():
        report = json.loads(stamp.read_text())
        if report.get("options_hash") == digest:
            print(f"[{label}] {opt['name']}: cached ({stamp})")
            return report
    resume = (not force and started.is_file() and started.read_text().strip() == digest
              and any((exp / "training_states").glob("*.state")))
    if resume:
        print(f"[{label}] {opt['name']}: resuming an interrupted run")
    else:
        shutil.rmtree(exp, ignore_errors=True)
        shutil.rmtree(root / "tb_logger" / opt["name"], ignore_errors=True)
        exp.mkdir(parents=True)
        started.write_text(digest + "\n")
    prepared = prepare_options(opt, is_train=True, source=f"{label} stage {opt['name']}")
    prepared.update(dist=False, rank=0, world_size=1, auto_resume=resume)
    report = train(prepared, root=root)
    report["options_hash"] = digest
    report_file = json.loads(stamp.read_text())
    report_file.update(options_hash=digest)
    stamp.write_text(json.dumps(report_file, indent=1))
    return report
