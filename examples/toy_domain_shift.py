"""LDT in a plain PyTorch loop: a tiny multi-domain classification problem generated in code (no downloads).

Each domain draws the same 4 classes from Gaussian prototypes seen through a domain-specific linear "sensor"
(mixing matrix + offset). We pre-train a backbone on the source domains, replace its head by a random one, and
compare fine-tuning (FT) with LDT (warm-up of the random head -> probe -> partition -> dual branch -> composite)
on a held-out target domain.

    python examples/toy_domain_shift.py --steps 300
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ldt.core import DualBranch, ExchangeConfig, partition_by_score, probe_gradients, warmup

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


def main(steps: int = 300, seed: int = 0, verbose: bool = True) -> dict[str, float]:
    source_x, source_y = make_domain(2, 256, 3)  # fine-tuning source: a new camera
    target_x, target_y = make_domain(3, 1024, 4)  # unseen target domain
    results = {}

    # --- FT: warm-up nothing, train everything --------------------------------------------------------------------
    ft = pretrained_with_random_head(seed)
    optimizer = torch.optim.Adam(ft.parameters(), lr=1e-3)
    stream = batches(source_x, source_y, 32, seed)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(ft, next(stream)).backward()
        optimizer.step()
    results["FT"] = accuracy(ft, target_x, target_y)

    # --- LDT: warm-up head -> probe -> partition -> dual branch -> composite ----------------------------------------
    model = pretrained_with_random_head(seed)
    stream = batches(source_x, source_y, 32, seed)
    warmup(model, stream, loss_fn, trainable=[r"^1\."], steps=50, optimizer_factory=lambda p: torch.optim.Adam(p, lr=1e-2))
    stats = probe_gradients(model, stream, loss_fn, num_batches=30)
    partition = partition_by_score(stats, unstable_ratio=0.4, criterion="var")
    dual = DualBranch(model, partition, ExchangeConfig(interval=10, dpu=True))
    opt_primary = torch.optim.Adam(dual.primary_parameters(), lr=1e-3)
    opt_auxiliary = torch.optim.Adam(dual.auxiliary_parameters(), lr=1e-3)
    for _ in range(steps):
        batch = next(stream)
        for network, optimizer in ((dual.primary, opt_primary), (dual.auxiliary, opt_auxiliary)):
            optimizer.zero_grad()
            loss_fn(network, batch).backward()  # one branch's forward+backward, then the other's
            optimizer.step()
        dual.step()
    results["LDT"] = accuracy(dual.composite(), target_x, target_y)
    results["unstable_layers"] = len(partition.unstable)

    if verbose:
        print(f"unstable layers: {partition.unstable}")
        print(f"target-domain accuracy  FT: {results['FT']:.4f}  LDT (composite): {results['LDT']:.4f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps for each method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
