"""Run identities name data and weights inside the checkout relative to it (ldt.sweep.identity_path): a moved or
copied checkout keeps its records, and records, run states and cached SR stages written when identities held
absolute paths are still found. The checkout is a temporary folder (``ldt.sweep.PROJECT_ROOT`` patched)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from ldt import runner, sweep
from ldt.classification.__main__ import main
from ldt.classification.models import build_model
from ldt.classification.toy import build_toy_domains
from ldt.classification.train import RunConfig, run
from ldt.runner import STATES_FOLDER
from ldt.sweep import RESULTS_FILE, Records, earlier_run_hash, identity_path, project_relative, run_hash
from tests.conftest import SWEEP_ARGS, stop_sweep

FLAGS = ["--methods", "ldt", "--backbones", "tiny", "--seeds", "0", "--test-domains", "photo", "--steps", "4",
         "--batch-size", "4", "--warmup-steps", "2", "--probe-batches", "3", "--eval-every", "2", "--interval", "2",
         "--image-size", "32", "--no-progress"]


def checkout(root: Path) -> Path:
    """A checkout with its toy data and tiny-CNN weights inside, as the demo lays them out."""
    build_toy_domains(root / "datasets" / "toy", images_per_class=6, size=32)
    torch.manual_seed(0)
    torch.save(build_model("tiny", 4).state_dict(), root / "datasets" / "tiny.pth")
    return root


def sweep_in(root: Path, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sweep, "PROJECT_ROOT", root)
    monkeypatch.chdir(root)
    assert main(["--data", "datasets/toy", "--weights", "tiny=datasets/tiny.pth", "--out", "results", *FLAGS]) == 0
    return capsys.readouterr().out


def test_identity_path_is_relative_inside_the_checkout_only(tmp_path, monkeypatch):
    root = (tmp_path / "ldt").resolve()
    (root / "datasets" / "x").mkdir(parents=True)
    (tmp_path / "ldt2").mkdir()
    (tmp_path / "link").symlink_to(root)
    monkeypatch.setattr(sweep, "PROJECT_ROOT", root)
    assert identity_path(root / "datasets" / "x") == "<project>/datasets/x"
    assert identity_path(tmp_path / "link" / "datasets" / "x" / "..") == "<project>/datasets"
    assert identity_path(root) == "<project>"
    assert identity_path(tmp_path / "ldt2") == str((tmp_path / "ldt2").resolve())  # a sibling that shares a prefix
    monkeypatch.chdir(root / "datasets")
    assert identity_path("x") == "<project>/datasets/x"
    assert project_relative({"a": [str(root / "w.pth"), "other", 3]}) == {"a": ["<project>/w.pth", "other", 3]}
    # The earlier identity is the one the same options had with absolute paths
    options = {"data": identity_path(root / "datasets" / "x"), "seed": 1}
    assert earlier_run_hash(options) == run_hash({"data": str(root / "datasets" / "x"), "seed": 1})
    assert earlier_run_hash({"seed": 1}) == run_hash({"seed": 1})


def test_a_copied_checkout_keeps_its_records(tmp_path, monkeypatch, capsys):
    first = sweep_in(checkout(tmp_path / "a"), monkeypatch, capsys)
    assert "1 runs, 0 already recorded" in first
    [record] = Records(tmp_path / "a" / "results" / RESULTS_FILE).all()
    assert record["hparams"]["data"] == "<project>/datasets/toy"
    assert record["hparams"]["weights"] == "<project>/datasets/tiny.pth"
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    shutil.rmtree(tmp_path / "a")  # moved, not only copied
    monkeypatch.setattr("ldt.classification.__main__.run", lambda *a, **k: pytest.fail("the copy must not retrain"))
    again = sweep_in(tmp_path / "b", monkeypatch, capsys)
    assert "1 runs, 1 already recorded" in again


def as_written_before(record: dict) -> dict:
    """``record`` as an ldt with absolute paths in identities wrote it."""
    hparams = sweep._absolute(record["hparams"])
    return {**record, "hparams": hparams, "options_hash": run_hash(hparams)}


def test_records_written_with_absolute_paths_still_count(tmp_path, monkeypatch, capsys):
    root = checkout(tmp_path / "a")
    sweep_in(root, monkeypatch, capsys)
    results = root / "results" / RESULTS_FILE
    [record] = Records(results).all()
    old = as_written_before(record)
    assert old["options_hash"] != record["options_hash"] and old["hparams"]["data"] == str(root / "datasets" / "toy")
    results.write_text(json.dumps(old) + "\n")
    monkeypatch.setattr("ldt.classification.__main__.run", lambda *a, **k: pytest.fail("a recorded run must not rerun"))
    assert "1 runs, 1 already recorded" in sweep_in(root, monkeypatch, capsys)
    # A second seed recorded now joins the same table row as the record written before
    results.write_text(json.dumps(old) + "\n" + json.dumps({**record, "seed": 1, "options_hash": "f" * 16,
                                                             "hparams": {**record["hparams"], "seed": 1}}) + "\n")
    assert main(["--collect", str(root / "results")]) == 0
    rows = [line for line in (root / "results" / "table.md").read_text().splitlines() if "| ldt |" in line]
    assert len(rows) == 1 and rows[0].startswith("| tiny | ldt | 2 |"), rows


@pytest.mark.parametrize("paths", ["relative", "absolute"])
def test_records_of_an_earlier_recipe_are_not_counted_as_this_recipes_runs(tmp_path, monkeypatch, capsys, paths):
    """Records made before every image's augmentation was seeded by its position (recipe 1: no 'recipe' among their
    options) were taken for finished runs of the new recipe, and so were those written with absolute paths, through
    the earlier identity. Now those runs train again, the sweep says why, and the table keeps the two apart."""
    root = checkout(tmp_path / "a")
    sweep_in(root, monkeypatch, capsys)
    results = root / "results" / RESULTS_FILE
    [record] = Records(results).all()
    options = {k: v for k, v in record["hparams"].items() if k != "recipe"}
    old = {**record, "hparams": options, "options_hash": run_hash(options), "test_accuracy": {"photo": 0.123}}
    results.write_text(json.dumps(old if paths == "relative" else as_written_before(old)) + "\n")
    printed = sweep_in(root, monkeypatch, capsys)
    assert (f"{Path('results') / RESULTS_FILE}: 1 record(s) of these runs were made by an earlier training recipe of this runner (1 of "
            "recipe 1): not reused, those runs train again;") in printed and "1 runs, 0 already recorded" in printed
    [_, new] = Records(results).all()
    assert new["hparams"] == record["hparams"] and new["test_accuracy"] == record["test_accuracy"]
    rows = [line for line in (root / "results" / "table.md").read_text().splitlines() if "| ldt |" in line]
    assert sorted(row.rsplit(" | ", 1)[1] for row in rows) == sorted(["12.30 |", f"{100 * new['test_accuracy']['photo']:.2f} |"])
    assert "1 runs, 1 already recorded" in sweep_in(root, monkeypatch, capsys)  # the new record is this run's


def test_a_state_saved_under_the_earlier_identity_resumes(tmp_path, monkeypatch):
    root = checkout(tmp_path / "a")
    monkeypatch.setattr(sweep, "PROJECT_ROOT", root)
    config = RunConfig(data=str(root / "datasets" / "toy"), test_domains=("photo",), method="ldt", steps=4,
                       batch_size=4, warmup_steps=2, probe_batches=3, eval_every=2, interval=2, image_size=32,
                       weights=str(root / "datasets" / "tiny.pth"))
    out = root / "results"
    state = stop_sweep(out, config, run, monkeypatch, stop_at=8)
    earlier = earlier_run_hash(config.hparams())
    saved = torch.load(state, weights_only=True)
    assert saved["run"] == state.stem != earlier
    torch.save({**saved, "run": earlier}, out / STATES_FOLDER / f"{earlier}.pt")
    os.remove(state)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert runner.main(Namespace(**SWEEP_ARGS), lambda: (out, [config]), run, lambda folder: "") == 0
    assert "resuming at step" in printed.getvalue() and "does not plan" not in printed.getvalue()
    assert not (out / STATES_FOLDER).exists()
    assert [r["options_hash"] for r in Records(out / RESULTS_FILE).all()] == [state.stem]


def test_an_sr_stage_stamped_under_the_earlier_identity_is_cached(tmp_path, monkeypatch, capsys):
    from ldt.sr import experiment
    from ldt.sr.options import run_identity
    from tests.sr_fixtures import tiny_cameras, tiny_options

    root = tmp_path.resolve()
    opt = tiny_options(tiny_cameras(root / "datasets"), "stage", "ldt")
    monkeypatch.setattr(sweep, "PROJECT_ROOT", root)
    earlier = run_identity(opt, earlier=True)
    assert earlier != run_identity(opt)
    stamp = root / "experiments" / "stage" / "results.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text(json.dumps({"options_hash": earlier, "weights_fingerprint": None, "best": {}}))
    monkeypatch.setattr(experiment, "train", lambda *a, **k: pytest.fail("a cached stage must not retrain"))
    assert experiment.run_stage(opt, root)["options_hash"] == earlier
    assert "stage: cached" in capsys.readouterr().out
