"""Clean stops on SIGTERM / SIGINT: clusters preempt with SIGTERM (SLURM, Kubernetes), users press Ctrl-C.

The first signal asks the training loop to save a training state at the next step boundary and exit (before the
first step there is nothing new to save: the run stops at its next check before training; after the last step there
is no step: the run finishes its final save, then exits all the same, so a sweep goes no further); a second
one exits at once (the default action of the signal: nothing half-written survives, writes are atomic). Under DDP the
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
from ldt.core.probe import collective_device


class Interrupted(Exception):
    """Training stopped on a signal; ``state`` is the training state to resume from (None: start afresh), ``saved``
    whether the stop wrote it (a stop during the warm-up or the probe has nothing new to save), ``finished`` the
    results file of a run whose signal came after its last step (it finished first: nothing to resume)."""

    def __init__(self, signum: int, iteration: int, state: str | None, saved: bool = True,
                 resume: str | None = None, finished: str | None = None) -> None:
        name = signal.Signals(signum).name
        if finished is not None:
            where = f"after the last iteration ({iteration}): the run finished ({finished}); " \
                    f"{resume or 'nothing to resume'}"
        elif state is None:
            where = f"at iteration {iteration}: before training began, nothing to save (the warm-up and probe run " \
                    "again)"
        else:
            where = f"at iteration {iteration}: {'saved' if saved else 'nothing new to save; the newest state is'} " \
                    f"{state}; {resume or 'resume with --auto_resume'}"
        super().__init__(f"stopped by {name} {where}")
        self.signum, self.iteration, self.state, self.saved, self.finished = signum, iteration, state, saved, finished

    def resumed_by(self, how: str) -> "Interrupted":
        """The same stop, telling how a driver that resumes by itself (the demo, the sweeps) is resumed."""
        return Interrupted(self.signum, self.iteration, self.state, self.saved, resume=how, finished=self.finished)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """Context manager that turns the first SIGTERM/SIGINT into a stop request (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.training = False
        self.finishing = False
        self._at_start: int | None = None  # the signal if it came before start(): told nothing new is saved
        self._at_step: int | None = None  # the signal if it came before finish(): told a state is saved at a step
        self._handlers = contextlib.ExitStack()

    def __enter__(self) -> "StopOnSignal":
        self._handlers.enter_context(stop_handler(self._handle))  # a signal the caller ignores stays ignored
        return self

    def __exit__(self, *exc) -> None:
        self._handlers.close()

    def start(self) -> None:
        """Called before the last stop check before the first step: a signal from now on is told that a state is saved
        at the next step, and the check leaves it to the first step's (see :meth:`finish` for why before the check)."""
        self.training = True

    def finish(self) -> None:
        """Called before the last stop check: a signal from now on is told that the run finishes its final save
        first, and :meth:`requested` leaves it to the check after that save. Why before the check, and why the
        message follows this flag: a signal between the check and this call was told a state is saved at a next
        step that never came."""
        self.finishing = True

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum, self._at_step = signum, None if self.finishing else signum
            self._at_start = None if self.training or self.finishing else signum
            what = "the last iteration is done; finishing the final save" if self.finishing else \
                "saving a training state at the next step" if self.training else \
                "stopping before training begins (nothing new to save)"
            if says_the_stop():
                print(f"\n{signal.Signals(signum).name}: {what}, then exiting (send it again to exit at once)",
                      file=sys.stderr, flush=True)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def requested(self, *, before_training: bool = False, after_the_last_step: bool = False) -> int | None:
        """The signal that asked for a stop at this step boundary, on any rank (None: keep going); with
        ``before_training``, at a check before the first step, one that came before :meth:`start`; with
        ``after_the_last_step``, once the final save is done, any signal (it still stops the caller)."""
        signum = self.signum if after_the_last_step else self._at_start if before_training else self._at_step
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([signum or 0], device=collective_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item()) or None
        return signum


def says_the_stop() -> bool:
    """Whether this process reports a stop: rank 0 of a process group (the ranks agree on the stop, at the same
    step, and only rank 0 saves: rank 1 said it stopped 'before training began, nothing to save' beside rank 0's
    'saved …'), or a process without one."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
