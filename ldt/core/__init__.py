"""The LDT algorithm in plain PyTorch (no BasicSR): probe, partition, warm-up, dual branch, LDT-S.

Typical use::

    stats = probe_gradients(model, probe_loader, loss_fn, num_batches=300)
    partition = partition_by_score(stats, unstable_ratio=0.4, criterion="var")
    dual = DualBranch(model, partition, ExchangeConfig(interval=10, dpu=True))
    opt_p = torch.optim.Adam(dual.primary_parameters(), lr=1e-4)
    opt_a = torch.optim.Adam(dual.auxiliary_parameters(), lr=1e-4)
    ...  # train both branches, call dual.step() after each step
    deployed = dual.composite()
"""

from ldt.core.dual import DualBranch, check_same_architecture, set_trainable
from ldt.core.exchange import ExchangeConfig, dpu_weights, exchange_weights
from ldt.core.partition import CRITERIA, Partition, PartitionError, partition_by_patterns, partition_by_score, stable_count
from ldt.core.probe import GradientStatistics, ProbeError, layer_groups, probe_gradients
from ldt.core.single import SingleBranchLDT
from ldt.core.warmup import match_parameters, warmup

__all__ = [
    "CRITERIA",
    "DualBranch",
    "ExchangeConfig",
    "GradientStatistics",
    "Partition",
    "PartitionError",
    "ProbeError",
    "SingleBranchLDT",
    "check_same_architecture",
    "dpu_weights",
    "exchange_weights",
    "layer_groups",
    "match_parameters",
    "partition_by_patterns",
    "partition_by_score",
    "probe_gradients",
    "set_trainable",
    "stable_count",
    "warmup",
]
