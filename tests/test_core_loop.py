"""ldt.core driven by a training loop of the user's own (README "Methods"): mixed precision, gradient accumulation,
clipping, schedulers, resume, export; and the arguments such a loop gets wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldt.core import MethodConfig, MethodError, Partition, prepare_method


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def data(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)) for _ in range(count)]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4))


def config(name: str) -> MethodConfig:
    warm = {"warmup": {"steps": 2}} if name == "lpft" else {}
    return MethodConfig(method=name, unstable_ratio=0.5, probe={"num_batches": 3}, exchange={"interval": 2}, **warm)


def prepared(name: str, model: nn.Module, **kwargs):
    return prepare_method(model, config(name), batches=data(4, 0), loss_fn=mse, head_patterns=[r"^5\."],
                          log=lambda _: None, **kwargs)


def test_arguments_of_the_wrong_type_are_named():
    """An AttributeError deep inside was all a dict where a Partition or MethodConfig goes got."""
    saved = prepared("ldt", mlp()).partition.to_dict()
    with pytest.raises(MethodError, match=r"^partition: must be a Partition \(Partition\.from_dict\(saved\) reads a "
                                          r"saved to_dict\(\)\), got dict$"):
        prepare_method(mlp(), config("ldt"), partition=saved, resuming=True)
    with pytest.raises(MethodError, match=r"^config: must be a MethodConfig \(MethodConfig\(\*\*options\)\), got dict$"):
        prepare_method(mlp(), {"method": "ldt"}, batches=data(4, 0), loss_fn=mse)
    with pytest.raises(MethodError, match=r"^model: must be a torch\.nn\.Module, got str; batches: must be an "
                                          r"iterable of batches or batches\(purpose, seed\), got int$"):
        prepare_method("net", config("ldt"), batches=4, loss_fn=mse)
    assert prepare_method(mlp(), config("ldt"), partition=Partition.from_dict(saved), resuming=True).partition
