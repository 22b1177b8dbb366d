"""Ctrl-C or SIGTERM while a command imports torch and BasicSR (seconds, before any work) ends it with one line and
exit status 128 + the signal (ldt.cli.starting), not a KeyboardInterrupt traceback from inside an import or a silent
exit; afterwards the signal handlers are as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldt.cli import starting
from tests.conftest import sigint_by_default

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = [["Train_pip.py"], ["test.py"], ["scripts/reproduce.py"], ["scripts/study.py"],
                ["scripts/index_drealsr.py"], ["scripts/build_synthetic_cameras.py"], ["-m", "ldt.classification"],
                ["-m", "ldt.segmentation"]]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_inside_the_block_is_one_line_and_the_handlers_come_back(signum, capsys, default_sigint):
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as stopped:
        with starting():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises at the next bytecode
            pytest.fail("the signal did not stop the block")
    assert stopped.value.code == 128 + signum
    assert capsys.readouterr().err == f"stopped by {signal.Signals(signum).name} while starting: nothing was done\n"
    assert {number: signal.getsignal(number) for number in before} == before
    with starting():
        pass
    assert {number: signal.getsignal(number) for number in before} == before


def test_an_ignored_signal_stays_ignored(default_sigint):
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with starting():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: the block goes on
    finally:
        signal.signal(signal.SIGTERM, previous)


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: the SigCgt mask in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (signal.SIGTERM - 1) & 1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when the handler is set")
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda entry: entry[-1])
def test_every_entry_point_stops_in_one_line_while_importing(entry, tmp_path):
    """The signal is sent as soon as the command catches SIGTERM (Python alone does not): inside ``starting``,
    while torch loads. ``--help`` would print usage and exit 0 if the imports had already finished."""
    signum = signal.SIGTERM if len(entry) == 1 else signal.SIGINT
    process = subprocess.Popen([sys.executable, *entry, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               preexec_fn=sigint_by_default)
    deadline = time.monotonic() + 60
    while not catches_sigterm(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, err, out) == \
        (128 + signum, f"stopped by {signal.Signals(signum).name} while starting: nothing was done\n", "")


def test_sr_training_keeps_a_signal_the_caller_ignores_ignored(default_sigint):
    """A training started in the background (``nohup``, ``&``: SIGINT ignored) is not stopped by a stray SIGINT,
    as the runners' sweeps; SIGTERM still asks for a stop, and the handlers come back afterwards."""
    from ldt.sr.preemption import StopOnSignal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested() is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested() == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)
