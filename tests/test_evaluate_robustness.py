"""test.py against hostile input and interruptions: signals mid-evaluation, paths built from option values."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.sr_fixtures import tiny_cameras, tiny_options, write_options

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def hostile_options(data_root: Path, folder: Path, name: str = "hostile", **val) -> dict:
    """A test.py option dict of two target cameras and a tiny SAFMN whose (random, seeded) weights are in ``folder``."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY

    opt = tiny_options(data_root, name)
    torch.manual_seed(0)
    torch.save({"params": ARCH_REGISTRY.get("SAFMN")(**{k: v for k, v in opt["network_g"].items() if k != "type"})
                .state_dict()}, folder / "net.pth")
    return {"name": name, "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False, **val},
            "datasets": {"test_1": opt["datasets"]["val_2"],
                         "test_2": {**opt["datasets"]["val_2"], "name": "sony", "cameras": ["sony"]}},
            "path": {"pretrain_network_g": str(folder / "net.pth")}}


# Sends the signal to itself as the first output image is saved, as a user or a scheduler would mid-evaluation.
SIGNAL_AT_FIRST_IMAGE = """
import os, sys
import ldt.sr.evaluate as evaluate
save = evaluate.atomic_write_bytes
def save_then_stop(path, data):
    save(path, data)
    os.kill(os.getpid(), {signum})
evaluate.atomic_write_bytes = save_then_stop
sys.exit(evaluate.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_evaluation_is_one_line_naming_the_unfinished_folder(signum, data_root, tmp_path):
    """SIGTERM mid-evaluation exited silently (its default action) and Ctrl-C ended in a KeyboardInterrupt
    traceback from inside the model; now both are one line naming the unfinished folder, exit 128 + the signal."""
    options = write_options(hostile_options(data_root, tmp_path, save_img=True), tmp_path)
    command = [sys.executable, "-c", SIGNAL_AT_FIRST_IMAGE.format(signum=int(signum)), "-opt", str(options),
               "--root", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stopped = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = tmp_path / "results" / "hostile"
    assert (stopped.returncode, stopped.stderr.strip().splitlines()[-1]) == (
        128 + signum, f"stopped by {signal.Signals(signum).name}: the evaluation did not finish ({out} has no "
                      "results.json of it); rerun the same command")
    assert "Traceback" not in stopped.stderr and not (out / "results.json").exists()
    assert len(list((out / "visualization").rglob("*.png"))) == 1
