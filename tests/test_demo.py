"""The embedded demo (``python Train_pip.py``) in its CI-sized ``quick`` budget: table, figures, caching."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from ldt.sr import demo, experiment
from ldt.data.cameras import TARGET_CAMERAS


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, demo.run_demo(root=root, budget="quick")


def test_table_has_every_camera_and_method(first_run):
    root, summary = first_run
    assert set(summary["columns"]) == {"pretrained", "FT", "FT-EMA", "LDT+DPU"}
    for rows in summary["columns"].values():
        assert set(rows) >= {"source", *TARGET_CAMERAS}
        for metrics in rows.values():
            assert np.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    table = (root / "experiments" / "demo_quick" / "demo_results.md").read_text()
    for camera in ("source", *TARGET_CAMERAS, "target mean"):
        assert f"| {camera} |" in table or f"| **{camera}** |" in table
    saved = json.loads((root / "experiments" / "demo_quick" / "demo_results.json").read_text())
    assert saved["columns"] == summary["columns"]
    # fine-tuning moved the weights: FT and LDT differ from the pretrained network on the source camera
    assert summary["columns"]["FT"]["source"] != summary["columns"]["pretrained"]["source"]
    assert summary["columns"]["LDT+DPU"]["source"] != summary["columns"]["pretrained"]["source"]
    assert summary["columns"]["FT-EMA"]["source"] != summary["columns"]["FT"]["source"]  # the EMA is deployed


def test_figures_exist_and_are_not_blank(first_run):
    _, summary = first_run
    assert len(summary["figures"]) == 3
    for figure in summary["figures"]:
        image = mpimg.imread(figure)
        assert image.shape[0] > 200 and image.shape[1] > 200, figure
        # a blank canvas has one colour; a drawn figure has many
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50, figure


def test_second_run_reuses_every_cached_stage(first_run, monkeypatch):
    root, summary = first_run

    def no_training(*args, **kwargs):
        raise AssertionError("a cached stage was retrained")

    monkeypatch.setattr(experiment, "train", no_training)  # run_stage (ldt.sr.experiment) trains through it
    again = demo.run_demo(root=root, budget="quick")
    assert again["columns"] == summary["columns"]


def test_a_stopped_demo_exits_with_the_signal_and_says_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    import functools
    import signal

    from ldt.sr.preemption import Interrupted

    def stopped(opt, root):
        raise Interrupted(signal.SIGTERM, 5, f"{opt['path']['experiments_root']}/training_states/5.state")

    monkeypatch.setattr(experiment, "train", stopped)
    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, root=tmp_path))
    assert demo.main(["--budget", "quick"]) == 128 + signal.SIGTERM
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the data build's progress bar
    assert line.startswith("stopped by SIGTERM at iteration 5: saved ") and line.endswith(
        "5.state; rerun the same command to resume it"), line
