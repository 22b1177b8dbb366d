"""Which rank this process is before any process group exists, from the launcher's variables, and the first rank
of each machine reporting alone: light (no torch, no BasicSR), so that ``Train_pip.py``'s route can use it before it
imports either."""

from __future__ import annotations

import contextlib
import io
import os

from ldt.cli import fail


RANK_VARIABLES = {"pytorch": ("RANK", "LOCAL_RANK"), "slurm": ("SLURM_PROCID", "SLURM_LOCALID")}  # (global, on its machine)


def launcher_rank(launcher: str, local: bool = False) -> int:
    """This process's rank before BasicSR's ``init_dist`` has run, from the launcher's variables (``RANK`` under
    ``torch.distributed`` / torchrun, ``SLURM_PROCID`` under slurm, as ``init_dist`` reads them; 0 without a
    launcher); ``local``: its rank on its machine (``LOCAL_RANK`` / ``SLURM_LOCALID``, else the global one). Our
    start-up work comes first: only rank 0 takes the experiment lock, and only a machine's first rank reports."""
    names = RANK_VARIABLES.get(launcher)
    if not names:
        return 0
    return environment_count(names[1] if local and names[1] in os.environ else names[0], 0)


def environment_count(name: str, default: int) -> int:
    """The whole number >= 0 in environment variable ``name`` (``default`` when unset or empty): a launcher's
    variable set by hand to something else is one line naming it, where ``int()`` raised a ValueError traceback."""
    value = os.environ.get(name) or str(default)
    if not value.strip().isdigit():
        fail(f"environment variable {name}={value!r} is not a whole number >= 0 (the launcher sets it; unset it, or "
             "start the run under its launcher)")
    return int(value)


WORLD_VARIABLES = {"pytorch": "WORLD_SIZE", "slurm": "SLURM_NTASKS"}  # as BasicSR's init_dist reads them


def launcher_world(launcher: str) -> int:
    """The number of ranks the launcher starts (``WORLD_SIZE`` under torchrun, ``SLURM_NTASKS`` under slurm; 1
    without a launcher or the variable, which :func:`check_launcher_for_basicsr` then refuses). Our start-up checks
    run before BasicSR's process group exists: without it they saw one rank, and passed a per-rank batch or a probe
    share ``Train_pip.py`` refuses under the same launcher."""
    name = WORLD_VARIABLES.get(launcher)
    return environment_count(name, 1) if name else 1


def reporting_rank(launcher: str) -> contextlib.AbstractContextManager:
    """Our start-up checks run on every rank, before BasicSR's process group exists, and fail alike on each: each
    rank printed the same error line (eight lines on eight GPUs). Around the checks, stderr is kept on the first rank
    of each machine and discarded on the others, which still exit with the status (a rank whose machine lacks the
    data, another node's, still says so once)."""
    return contextlib.nullcontext() if launcher_rank(launcher, local=True) == 0 else \
        contextlib.redirect_stderr(io.StringIO())


def launcher_of_environment() -> str:
    """A launcher under which the environment says this process is not the first rank of its machine (its
    ``LOCAL_RANK`` / ``SLURM_LOCALID`` set and not 0), else ``none``: the arguments are parsed before ``--launcher``
    is known, so :func:`reporting_rank` around the parse goes by this (a bad flag was one line from every rank)."""
    return next((launcher for launcher, (_, local) in RANK_VARIABLES.items()
                 if local in os.environ and launcher_rank(launcher, local=True) != 0), "none")
