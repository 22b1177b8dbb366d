"""LDT: Layer-Decomposition Training for domain-generalisable networks.

The algorithm lives in :mod:`ldt.core` (pure PyTorch). The BasicSR side (archs, data, models) is imported lazily so
that the core can be used without BasicSR installed.
"""

__version__ = "0.1.0"
