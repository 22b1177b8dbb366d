"""Domain-generalisation image classification with LDT and its baselines (paper Table 7), DomainBed-style.

``python -m ldt.classification`` runs leave-one-domain-out sweeps on any ``root/<domain>/<class>/<image>`` dataset
with training-domain validation; see the README section "Domain-generalisation classification".
"""

from ldt.classification.data import DatasetError, DomainDataset, scan_domains, split_holdout
from ldt.classification.models import BACKBONES, HEAD_PATTERNS, build_model, head_patterns
from ldt.classification.pretrain import PretrainConfig, pretrain_tiny
from ldt.classification.records import build_table, sweep_records, write_tables
from ldt.classification.toy import build_toy_domains
from ldt.classification.train import CLI_METHODS, METHODS, RunConfig, run

__all__ = [
    "BACKBONES",
    "CLI_METHODS",
    "DatasetError",
    "DomainDataset",
    "HEAD_PATTERNS",
    "METHODS",
    "PretrainConfig",
    "RunConfig",
    "build_model",
    "build_table",
    "build_toy_domains",
    "head_patterns",
    "pretrain_tiny",
    "run",
    "scan_domains",
    "split_holdout",
    "sweep_records",
    "write_tables",
]
