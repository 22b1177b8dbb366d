"""Custom operators (pure PyTorch, no BasicSR dependency); see :mod:`ldt.ops.selective_scan`."""

from ldt.ops.selective_scan import *  # noqa: F401,F403  (the public names are listed once, in that module)
from ldt.ops.selective_scan import __all__  # noqa: F401
