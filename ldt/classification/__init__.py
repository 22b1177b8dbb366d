"""Domain-generalisation image classification with LDT and its baselines (paper Table 7), DomainBed-style.

``python -m ldt.classification`` runs leave-one-domain-out sweeps on any ``root/<domain>/<class>/<image>`` dataset
with training-domain validation; see the README section "Domain-generalisation classification".
"""

from ldt import lazy_exports

# Each name is imported from its module on first use, so that `python -m ldt.classification` starts cheaply.
_EXPORTS = {
    "ldt.classification.data": ("DatasetError", "DomainDataset", "scan_domains", "split_holdout"),
    "ldt.classification.models": ("BACKBONES", "HEAD_PATTERNS", "build_model", "head_patterns"),
    "ldt.classification.pretrain": ("PretrainConfig", "pretrain_tiny"),
    "ldt.classification.records": ("build_table", "sweep_records", "write_tables"),
    "ldt.classification.toy": ("build_toy_domains",),
    "ldt.classification.train": ("CLI_METHODS", "METHODS", "RunConfig", "run"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
