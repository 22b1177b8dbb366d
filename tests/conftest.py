"""Shared fixtures: tiny seeded models and batches so every core test runs in milliseconds on a CPU."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    """Conv body + BatchNorm (a buffer) + linear head; one parameter that never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4, 3)
        self.unused = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


def make_batches(count: int, seed: int = 0, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 6, 6, generator=g), torch.randint(0, 3, (batch,), generator=g)) for _ in range(count)]


def ce_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batches() -> list:
    return make_batches(6)


def load_file_module(path: Path, name: str) -> ModuleType:
    """Import a script or example that is not part of the package (``scripts/``, ``examples/``) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A process holding a folder lock, as a second run or build of the same folder would.
HOLD = """
import sys, time
from ldt.atomic import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_in_another_process(path: Path, seconds: float) -> subprocess.Popen:
    """A process that holds ``ldt.atomic.exclusive_lock(path)`` for ``seconds`` (returned once it holds it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    assert process.stdout.readline().strip() == "held"
    return process


@contextlib.contextmanager
def lock_held_elsewhere(path: Path, seconds: float = 60) -> Iterator[subprocess.Popen]:
    """:func:`hold_in_another_process` for the block: the holder is killed (which frees the lock) and reaped however
    the block ends, so a failing assertion inside leaves no process holding a lock behind."""
    holder = hold_in_another_process(path, seconds)
    try:
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(autouse=True)
def no_stop_signal_left_blocked():
    """A test that blocks SIGTERM / SIGCHLD must unblock them however it ends: the kernel then gives a later test's own
    SIGTERM to a leftover loader thread, and CPython runs the stop late or never (a resume test's stop landed steps
    late, or not at all). Unblocked here either way, so one such test fails alone."""
    import signal

    yield
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, stops) & stops
    assert not blocked, f"the test left {sorted(s.name for s in blocked)} blocked"


def sigint_by_default() -> None:
    """``preexec_fn`` for a child process a test sends SIGINT: a pytest started in the background (``&``, nohup, a
    CI runner) hands its children SIGINT ignored, which our commands rightly leave ignored, so the child would never
    see the test's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def default_sigint():
    """A pytest started in the background inherits SIGINT ignored, which the runner leaves ignored."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


SWEEP_ARGS = dict(collect=None, device="cpu", workers=None, progress=False)


def stop_sweep(out: Path, config, run, monkeypatch, stop_at: int) -> Path:
    """Sweep the one ``config`` into ``out``, stopped by SIGTERM when its data stream has drawn ``stop_at`` batches
    (while a batch is fetched, between two steps); returns the run's saved state (its message is checked here)."""
    import contextlib
    import io
    import os
    import signal
    from argparse import Namespace

    from ldt import runner
    from ldt.sweep import RESULTS_FILE, Records, run_hash

    original = runner.ResumableStream.__next__

    def stop_midway(stream):
        if stream.drawn == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(stream)

    stopped = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stderr(stopped):
        patch.setattr(runner.ResumableStream, "__next__", stop_midway)
        assert runner.main(Namespace(**SWEEP_ARGS), lambda: (out, [config]), run, lambda folder: "") == \
            128 + signal.SIGTERM
    state = out / runner.STATES_FOLDER / f"{run_hash(config.hparams())}.pt"
    assert state.exists() and not Records(out / RESULTS_FILE).all()
    assert stopped.getvalue() == (f"stopped by SIGTERM: the runs recorded so far are kept, the run in progress "
                                  f"saved {state}; rerun the same command to resume\n")
    return state


def stop_and_resume(out: Path, config, run, monkeypatch, stop_at: int) -> tuple[dict, str, int]:
    """:func:`stop_sweep`, then the same sweep again: returns the record, what the rerun printed and how many
    batches it drew (the state must be gone once the record is written)."""
    import contextlib
    import io
    from argparse import Namespace

    from ldt import runner
    from ldt.sweep import RESULTS_FILE, Records

    state = stop_sweep(out, config, run, monkeypatch, stop_at)
    original = runner.ResumableStream.__next__
    printed, drawn = io.StringIO(), []

    def count(stream):
        drawn.append(stream.drawn)
        return original(stream)

    with contextlib.redirect_stdout(printed), monkeypatch.context() as patch:
        patch.setattr(runner.ResumableStream, "__next__", count)
        assert runner.main(Namespace(**SWEEP_ARGS), lambda: (out, [config]), run, lambda folder: "") == 0
    assert not state.exists() and not state.parent.exists()  # deleted once the record is written, and its folder
    [record] = Records(out / RESULTS_FILE).all()
    return record, printed.getvalue(), len(drawn)


@pytest.fixture
def disk(tmp_path):
    """A small tmpfs of its own (8 MiB), to fill or make read-only."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte (a file can still be created there, not written); returns the filler file."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, bytes(1 << 16))
    except OSError:
        try:
            while True:
                os.write(descriptor, b"\0")
        except OSError:
            pass
    finally:
        os.close(descriptor)
    return filler

