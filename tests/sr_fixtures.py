"""Tiny SR experiments for pipeline tests: a tiny synthetic camera set and option files for a tiny SAFMN."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

from ldt.data.synthetic_cameras import build_synthetic_cameras


def tiny_cameras(root: Path) -> Path:
    return build_synthetic_cameras(root, tiny=True, progress=False)


def tiny_options(data_root: Path, name: str, method: str = "ldt", **overrides) -> dict:
    """Options for a few CPU iterations of a 1-block SAFMN on the tiny synthetic cameras."""
    opt = {
        "name": name,
        "model_type": "LDTModel",
        "scale": 4,
        "num_gpu": 0,
        "manual_seed": 0,
        "datasets": {
            "train": {
                "name": "olympus_train", "type": "DRealSRCameraDataset", "dataroot": str(data_root), "split": "train",
                "cameras": ["olympus"], "gt_size": 32, "use_hflip": True, "use_rot": True,
                "batch_size_per_gpu": 2, "num_worker_per_gpu": 0,
            },
            "val_1": {"name": "source", "type": "DRealSRCameraDataset", "dataroot": str(data_root), "split": "test",
                      "cameras": ["olympus"]},
            "val_2": {"name": "pan", "type": "DRealSRCameraDataset", "dataroot": str(data_root), "split": "test",
                      "cameras": ["pan"]},
        },
        "network_g": {"type": "SAFMN", "dim": 8, "n_blocks": 1, "ffn_scale": 2.0, "upscaling_factor": 4},
        "path": {},
        "train": {"total_iter": 6, "optim_g": {"type": "Adam", "lr": 1e-3, "betas": [0.0, 0.99]}},
        "val": {"val_freq": 3, "pbar": False},
        "logger": {"print_freq": 2, "save_checkpoint_freq": 3, "use_tb_logger": False},
        "ldt": {"method": method, "unstable_ratio": 0.5, "probe": {"num_batches": 3, "batch_size": 2},
                "exchange": {"interval": 2}},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            opt.setdefault(section, {})[leaf] = value
        else:
            opt[section] = value
    return copy.deepcopy(opt)


def write_options(opt: dict, folder: Path) -> Path:
    path = folder / f"{opt['name']}.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def simulate_crash(monkeypatch, at: int) -> list[int]:
    """Make ``LDTModel.optimize_parameters`` raise ``KeyboardInterrupt`` once, when called for iteration ``at``.

    Every other call runs normally and its iteration is appended to the returned list, so a test can see where a
    resumed run started.
    """
    from ldt.models.ldt_model import LDTModel

    original = LDTModel.optimize_parameters
    pending = [at]
    stepped: list[int] = []

    def step(self, current_iter: int) -> None:
        if pending and current_iter == pending[0]:
            pending.clear()
            raise KeyboardInterrupt("simulated crash")
        stepped.append(current_iter)
        original(self, current_iter)

    monkeypatch.setattr(LDTModel, "optimize_parameters", step)
    return stepped


class SpareNet(torch.nn.Module):
    """A researcher's own x4 network holding a parameter its forward never uses (a branch left in for later)."""

    def __init__(self, num_feat: int = 4, upscale: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, num_feat, 3, padding=1)
        self.tail = torch.nn.Conv2d(num_feat, 3 * upscale * upscale, 3, padding=1)
        self.upscale = upscale
        self.spare = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_shuffle(self.tail(torch.relu(self.body(x))), self.upscale)


def register_spare_net() -> None:
    """Register :class:`SpareNet` in this process, as the user's ``*_arch.py`` would (once: the registry refuses a
    name twice)."""
    from ldt.sr.options import arch_registry

    if "SpareNet" not in arch_registry():
        arch_registry().register(SpareNet)
