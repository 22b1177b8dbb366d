"""LDT: Layer-Decomposition Training for domain-generalisable networks.

The algorithm lives in :mod:`ldt.core` (pure PyTorch). The BasicSR side (archs, data, models) is imported lazily so
that the core can be used without BasicSR installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

__version__ = "0.1.0"


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports each exported name from its module
    (``{module: names}``) on first use. Why: importing the task packages stays cheap, so ``python -m ldt.<task>``
    sets up its start-up stop handling (:func:`ldt.cli.starting`) before torch loads."""
    home = {name: module for module, names in exports.items() for name in names}

    def attribute(name: str) -> object:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home[name]), name)

    return attribute
