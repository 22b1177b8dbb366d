"""Clean stops on SIGTERM / SIGINT: clusters preempt with SIGTERM (SLURM, Kubernetes), users press Ctrl-C.

The first signal asks the training loop to save a training state at the next step boundary and exit; a second one
exits at once (the default action of the signal: nothing half-written survives, writes are atomic). Under DDP the
ranks agree on the stop (a max all-reduce of the flag each step), so they save the same iteration and leave together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import torch
import torch.distributed as dist

from ldt.cli import stop_handler


class Interrupted(Exception):
    """Training stopped on a signal; ``state`` is the training state to resume from (None: start afresh), ``saved``
    whether the stop wrote it (a stop during the warm-up or the probe has nothing new to save)."""

    def __init__(self, signum: int, iteration: int, state: str | None, saved: bool = True,
                 resume: str = "resume with --auto_resume") -> None:
        name = signal.Signals(signum).name
        if state is None:
            where = "before training began, nothing to save (the warm-up and probe run again)"
        else:
            where = f"{'saved' if saved else 'nothing new to save; the newest state is'} {state}; {resume}"
        super().__init__(f"stopped by {name} at iteration {iteration}: {where}")
        self.signum, self.iteration, self.state, self.saved = signum, iteration, state, saved

    def resumed_by(self, how: str) -> "Interrupted":
        """The same stop, telling how a driver that resumes by itself (the demo, the sweeps) is resumed."""
        return Interrupted(self.signum, self.iteration, self.state, self.saved, resume=how)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """Context manager that turns the first SIGTERM/SIGINT into a stop request (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._handlers = contextlib.ExitStack()

    def __enter__(self) -> "StopOnSignal":
        self._handlers.enter_context(stop_handler(self._handle))  # a signal the caller ignores stays ignored
        return self

    def __exit__(self, *exc) -> None:
        self._handlers.close()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: saving a training state at the next step, then exiting "
                  "(send it again to exit at once)", file=sys.stderr, flush=True)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def requested(self) -> int | None:
        """The signal that asked for a stop, on any rank (None: keep going)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            flag = torch.tensor([self.signum or 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item()) or None
        return self.signum
