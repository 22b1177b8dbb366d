"""LDT in a plain PyTorch loop: a tiny multi-domain classification problem generated in code (no downloads).

Each domain draws the same 4 classes from Gaussian prototypes seen through a domain-specific linear "sensor"
(mixing matrix + offset). We pre-train a backbone on the source domains, replace its head by a random one, and
fine-tune it on one source domain with several registered methods through the same loop (``prepare_method`` does
the warm-up of the random head, the probe and the partition; ``train_step`` runs each branch and the exchange),
then compare the deployed networks on a held-out target domain.

    python examples/toy_domain_shift.py --steps 300
    python examples/toy_domain_shift.py --methods ft ft_ema ldt_dpu
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ldt.cli import OneLineParser
from ldt.core import METHODS, Method, MethodConfig, method_class, prepare_method

NUM_CLASSES, DIM = 4, 16


def make_domain(domain: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of one domain: class prototypes (shared) passed through this domain's sensor."""
    prototypes = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(1234))
    sensor = torch.Generator().manual_seed(100 + domain)
    mixing = torch.eye(DIM) + 0.35 * torch.randn(DIM, DIM, generator=sensor)
    offset = 0.5 * torch.randn(DIM, generator=sensor)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=g)
    clean = prototypes[labels] + 0.8 * torch.randn(count, DIM, generator=g)
    return clean @ mixing.T + offset, labels


def make_model() -> nn.Sequential:
    backbone = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
    return nn.Sequential(backbone, nn.Linear(32, NUM_CLASSES))


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int):
    """An endless seeded stream of minibatches."""
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        yield x[idx], y[idx]


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def pretrained_with_random_head(seed: int) -> nn.Sequential:
    """A backbone pre-trained on domains 0-1 (a different task seed), with a fresh random head."""
    torch.manual_seed(seed)
    model = make_model()
    x, y = (torch.cat(t) for t in zip(make_domain(0, 512, 1), make_domain(1, 512, 2)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    stream = batches(x, y, 64, seed)
    for _ in range(200):
        optimizer.zero_grad()
        loss_fn(model, next(stream)).backward()
        optimizer.step()
    model[1].reset_parameters()
    return model


def fine_tune(method_name: str, steps: int, seed: int, source, target) -> tuple[float, Method]:
    """One method, DomainBed-style: prepare (warm-up, probe, partition), train, deploy, test."""
    model = pretrained_with_random_head(seed)
    stream = batches(*source, 32, seed)
    config = MethodConfig(method=method_name, unstable_ratio=0.4, probe={"num_batches": 30},
                          warmup={"steps": 50 if method_class(method_name).warmup_rule != "never" else 0, "lr": 1e-2},
                          exchange={"interval": 10})
    method = prepare_method(model, config, batches=stream, loss_fn=loss_fn, head_patterns=[r"^1\."])
    optimizers = [torch.optim.Adam(branch.parameters, lr=1e-3) for branch in method.branches()]
    for _ in range(steps):
        method.train_step(next(stream), loss_fn, optimizers)  # each branch's step in turn, then the exchange
    return accuracy(method.deployed(), *target), method


def main(steps: int = 300, seed: int = 0, methods: tuple[str, ...] = ("ft", "ldt_dpu"), verbose: bool = True) -> dict:
    source = make_domain(2, 256, 3)  # fine-tuning source: a new camera
    target = make_domain(3, 1024, 4)  # unseen target domain
    results: dict = {}
    for name in methods:
        results[name], method = fine_tune(name, steps, seed, source, target)
        if method.partition is not None:
            results[f"{name}_unstable_layers"] = len(method.partition.unstable)
    if verbose:
        print("target-domain accuracy of the deployed network: "
              + ", ".join(f"{method_class(name).label} {results[name]:.4f}" for name in methods))
    return results


if __name__ == "__main__":
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps for each method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["ft", "ldt_dpu"], choices=list(METHODS))
    args = parser.parse_args()
    main(args.steps, args.seed, tuple(args.methods))
