"""Super-resolution with BasicSR: the option schema, the training loop behind ``Train_pip.py``, evaluation behind
``test.py``, camera-shift experiments, the paper's tables (``scripts/reproduce.py``), the demo and figures.

The BasicSR registries (``ldt.archs``, ``ldt.data``, ``ldt.models``) stay at the top of the package, as BasicSR-based
projects lay them out; this subpackage is the glue between an option file and :mod:`ldt.core`.
"""
