"""The LDT algorithm in plain PyTorch (no BasicSR): probe, partition, warm-up, dual branch, LDT-S, and the methods.

Typical use, any registered method (ft, ft_ema, lpft, deft, ldt, ldt_fixed, ldt_dpu, ldt_s)::

    method = prepare_method(model, MethodConfig(method="ldt"), batches=loader, loss_fn=loss_fn)
    optimizers = [torch.optim.Adam(branch.parameters, lr=1e-4) for branch in method.branches()]
    for batch in loader:
        method.train_step(batch, loss_fn, optimizers)   # each branch in turn, then the exchange
    deployed = method.deployed()

The building blocks (probe_gradients, partition_by_score, DualBranch, SingleBranchLDT, warmup) are public too.
"""

from ldt.core.config import Options, ProbeConfig, WarmupConfig
from ldt.core.dual import DualBranch, check_same_architecture, set_trainable
from ldt.core.exchange import ExchangeConfig, dpu_weights, exchange_weights
from ldt.core.methods import (
    METHODS,
    Branch,
    DeployedEMA,
    Method,
    MethodConfig,
    MethodError,
    effective_ema_decay,
    method_class,
    prepare_method,
    register_method,
    run_identity,
)
from ldt.core.partition import (
    CRITERIA,
    Partition,
    PartitionError,
    match_names,
    partition_by_patterns,
    partition_by_score,
    stable_count,
)
from ldt.core.probe import GradientStatistics, ProbeError, layer_groups, probe_gradients
from ldt.core.single import SingleBranchLDT
from ldt.core.warmup import match_parameters, warmup

__all__ = [
    "CRITERIA",
    "METHODS",
    "Branch",
    "DeployedEMA",
    "DualBranch",
    "ExchangeConfig",
    "GradientStatistics",
    "Method",
    "MethodConfig",
    "MethodError",
    "Options",
    "Partition",
    "PartitionError",
    "ProbeConfig",
    "ProbeError",
    "SingleBranchLDT",
    "WarmupConfig",
    "check_same_architecture",
    "dpu_weights",
    "effective_ema_decay",
    "exchange_weights",
    "layer_groups",
    "match_names",
    "match_parameters",
    "method_class",
    "partition_by_patterns",
    "partition_by_score",
    "prepare_method",
    "probe_gradients",
    "register_method",
    "run_identity",
    "set_trainable",
    "stable_count",
    "warmup",
]
