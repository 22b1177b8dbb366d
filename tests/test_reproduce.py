"""scripts/reproduce.py: a tiny Table 1 sweep on the tiny synthetic cameras, resume, --collect, tables, bad inputs."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import warnings
from dataclasses import replace

import pytest
import torch

import ldt.sr.experiment as experiment_module
import ldt.sweep
import ldt.sr.reproduce as rp
from ldt.core.config import MAX_SEED
from ldt.sweep import Records
from ldt.data.cameras import DREALSR_CAMERAS, TARGET_CAMERAS
from tests.conftest import lock_held_elsewhere

TINY = rp.Budget(iters=4, batch_size=2, gt_size=32, probe_batches=1, val_freq=2)  # the 6 pairs: 1 probe batch of 4
SWEEP = dict(archs=["safmn_tiny"], seeds=2, budget=TINY, progress=False)
pytestmark = pytest.mark.filterwarnings("ignore:no --weights")
RECORD_FIELDS = {"table", "setting", "method", "arch", "source", "targets", "seed", "options_hash", "metrics",
                 "best_iter", "data", "iters"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Table 1 (FT, LDT fixed W, LDT+DPU) x 2 seeds of a tiny SAFMN, 4 iterations each; data built on the fly."""
    root = tmp_path_factory.mktemp("reproduce")
    datasets, out = root / "datasets", root / "out"
    with pytest.warns(UserWarning, match="random initialisation"):
        summary = rp.reproduce(["1"], "synthetic_tiny", datasets_dir=datasets, out=out, **SWEEP)
    return {"summary": summary, "out": out, "datasets": datasets, "data": datasets / "synthetic_cameras_tiny"}


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(experiment_module, "train", fail)


def test_sweep_writes_one_record_per_run_and_the_tables(sweep):
    summary, out = sweep["summary"], sweep["out"]
    assert (summary.trained, summary.skipped, summary.missing) == (6, 0, 0)
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    assert len(records) == 6 and len({r["options_hash"] for r in records}) == 6
    assert sorted((r["setting"], r["seed"]) for r in records) == sorted(
        (setting, seed) for setting in ("FT (baseline)", "LDT (fixed W)", "LDT+DPU") for seed in (0, 1))
    for record in records:
        assert RECORD_FIELDS <= set(record)
        assert record["table"] == "1" and record["arch"] == "safmn_tiny" and record["data"] == "synthetic"
        assert record["source"] == ["olympus"] and record["targets"] == list(TARGET_CAMERAS)
        assert record["iters"] == 4 and record["best_iter"] in (2, 4)
        assert set(record["metrics"]) == {"source", *TARGET_CAMERAS}
        assert all(0 < m["psnr"] < 100 and 0 < m["ssim"] <= 1 for m in record["metrics"].values())
    fixed_w = [r for r in records if r["setting"] == "LDT (fixed W)"]
    assert all(r["method"] == "ldt" and r["dpu"] is False for r in fixed_w)
    assert summary.tables == [out / "table1.md", out / "table1.csv"]
    markdown = (out / "table1.md").read_text()
    assert "not comparable" in markdown and "paper" not in markdown.split("not comparable")[1]
    assert "| LDT+DPU | safmn_tiny | 2/2 |" in markdown


def test_rerun_trains_nothing(sweep, monkeypatch):
    forbid_training(monkeypatch)
    before = (sweep["out"] / "results.jsonl").read_bytes()
    summary = rp.reproduce(["1"], "synthetic_tiny", datasets_dir=sweep["datasets"], out=sweep["out"], **SWEEP)
    assert (summary.trained, summary.skipped) == (0, 6)
    assert (sweep["out"] / "results.jsonl").read_bytes() == before


def collect(sweep, out) -> int:
    """``scripts/reproduce.py ... --collect`` with the sweep fixture's arguments (the data given as a path)."""
    return rp.main(["--table", "1", "--data", str(sweep["data"]), "--arch", "safmn_tiny", "--seeds", "2",
                    "--iters", "4", "--batch-size", "2", "--gt-size", "32", "--probe-batches", "1", "--val-freq", "2",
                    "--out", str(out), "--collect"])


def test_tables_are_regenerated_from_the_records_alone(sweep, monkeypatch):
    forbid_training(monkeypatch)
    out = sweep["out"]
    before = {name: (out / name).read_text() for name in ("table1.md", "table1.csv")}
    for name in before:
        (out / name).unlink()
    # The CLI with --collect and the data given as a path (the same root as 'synthetic_tiny' under the datasets dir).
    code = collect(sweep, out)
    assert code == 0
    assert {name: (out / name).read_text() for name in before} == before
    assert len(lines(out / "results.jsonl")) == 6


@pytest.mark.parametrize("edit", [lambda r: r.update(metrics=None), lambda r: r["metrics"].pop("sony"),
                                  lambda r: r["metrics"]["sony"].update(psnr="high"),
                                  lambda r: r["metrics"]["sony"].update(psnr=True),  # was counted as 1.00 dB
                                  # fields the lines above the table show: 'Weights: 5 = random init, ...'
                                  lambda r: r.update(arch=5), lambda r: r.update(iters="4"),
                                  lambda r: r.update(weights=["a.pth"]), lambda r: r.update(batch_size=True)])
def test_a_record_edited_by_hand_is_skipped_with_its_line_and_the_rest_tabulates(sweep, tmp_path, monkeypatch, edit):
    forbid_training(monkeypatch)
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out, ignore=shutil.ignore_patterns("experiments", "tb_logger"))
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    edit(records[0])
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code = collect(sweep, out)
    assert code == 0
    with pytest.warns(UserWarning, match=r"results.jsonl:1: a record the table cannot read"):
        rp.collect_results(out, planned(sweep))
    assert "| 1/2 |" in (out / "table1.md").read_text()  # the edited run's row counts one seed of two


def planned(sweep) -> list:
    return rp.plan_runs(["1"], sweep["data"], data_kind="synthetic", archs=["safmn_tiny"], seeds=2, budget=TINY)


def test_records_written_with_absolute_paths_are_still_the_runs_records(sweep, tmp_path, monkeypatch):
    """The fixture's records name its data by absolute path (it lies outside the checkout). With the checkout
    around the data, as for records an ldt whose identities held absolute paths wrote, the runs' identities change
    but their records are still theirs: nothing retrains, the table is whole, no record counts as another run's."""
    forbid_training(monkeypatch)
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out, ignore=shutil.ignore_patterns("experiments", "tb_logger"))
    (out / "table1.md").unlink()
    monkeypatch.setattr(ldt.sweep, "PROJECT_ROOT", sweep["datasets"].parent.resolve())
    recorded = {json.loads(line)["options_hash"] for line in lines(out / "results.jsonl")}
    assert not recorded & {run.digest for run in planned(sweep)}
    summary = rp.reproduce(["1"], "synthetic_tiny", datasets_dir=sweep["datasets"], out=out, **SWEEP)
    assert (summary.trained, summary.skipped, summary.missing, summary.other_records) == (0, 6, 0, 0)
    assert "| LDT+DPU | safmn_tiny | 2/2 |" in (out / "table1.md").read_text()


def test_every_intact_record_is_readable_alone(sweep, recwarn):
    assert len(rp.readable_records(sweep["out"], planned(sweep))) == 6 and not recwarn.list


def test_cells_are_mean_and_standard_error_over_seeds(sweep):
    out = sweep["out"]
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    dpu = [r for r in records if r["setting"] == "LDT+DPU"]

    def mean_std(values):  # mean and standard error (sample std over sqrt(n)), by hand
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))

    psnr = mean_std([r["metrics"]["sony"]["psnr"] for r in dpu])
    ssim = mean_std([r["metrics"]["sony"]["ssim"] for r in dpu])
    target_psnr = mean_std([sum(r["metrics"][c]["psnr"] for c in TARGET_CAMERAS) / 5 for r in dpu])
    row = next(line for line in lines(out / "table1.md") if line.startswith("| LDT+DPU |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3 + TARGET_CAMERAS.index("sony")] == f"{psnr[0]:.2f} ± {psnr[1]:.2f} / {ssim[0]:.4f} ± {ssim[1]:.4f}"
    assert cells[-1].startswith(f"{target_psnr[0]:.2f} ± {target_psnr[1]:.2f} / ")
    with open(out / "table1.csv") as handle:
        rows = {(r["setting"], r["camera"]): r for r in csv.DictReader(handle)}
    assert float(rows["LDT+DPU", "sony"]["psnr_mean"]) == pytest.approx(psnr[0], abs=1e-9)
    assert float(rows["LDT+DPU", "sony"]["ssim_se"]) == pytest.approx(ssim[1], abs=1e-9)
    assert rows["LDT+DPU", "sony"]["seeds"] == "2" and rows["LDT+DPU", "sony"]["paper_psnr"] == ""


def test_an_interrupted_sweep_trains_only_the_missing_run(sweep, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    records = lines(out / "results.jsonl")
    lost = json.loads(records[-1])
    # Killed while training the last run: no record, a half-written line, the run folder without its results stamp.
    (out / "results.jsonl").write_text("\n".join(records[:-1]) + '\n{"table": "1", "opti')
    (out / "experiments" / next(p.name for p in (out / "experiments").iterdir()
                                if p.name.endswith(lost["options_hash"])) / "results.json").unlink()
    calls = []
    real_train = experiment_module.train
    monkeypatch.setattr(experiment_module, "train", lambda opt, root: calls.append(opt["name"]) or real_train(opt, root))
    with pytest.warns(UserWarning, match="interrupted write"):
        summary = rp.reproduce(["1"], "synthetic_tiny", datasets_dir=sweep["datasets"], out=out, **SWEEP)
    assert (summary.trained, summary.skipped, len(calls)) == (1, 5, 1)
    assert calls[0].endswith(lost["options_hash"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the half line went to results.jsonl.broken with the new record's append
        again = Records(out / "results.jsonl").by_hash()
    assert (out / "results.jsonl.broken").read_text().strip() == '{"table": "1", "opti'
    assert len(again) == 6
    assert again[lost["options_hash"]]["metrics"] == lost["metrics"], "seeded CPU runs are deterministic"


def test_a_lost_record_rebuilt_from_its_cached_stage_is_not_counted_as_trained(sweep, tmp_path, monkeypatch):
    """A record lost after its run finished (a line deleted by hand, a results.jsonl restored from a backup) is
    rebuilt from the run's cached results.json without training: the summary said '1 trained' all the same."""
    forbid_training(monkeypatch)
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    records = lines(out / "results.jsonl")
    (out / "results.jsonl").write_text("\n".join(records[:-1]) + "\n")
    summary = rp.reproduce(["1"], "synthetic_tiny", datasets_dir=sweep["datasets"], out=out, **SWEEP)
    assert (summary.trained, summary.rebuilt, summary.skipped) == (0, 1, 5)
    again = Records(out / "results.jsonl").by_hash()
    lost = json.loads(records[-1])
    assert again[lost["options_hash"]]["metrics"] == lost["metrics"]


def test_a_second_sweep_on_the_same_out_is_refused_and_touches_nothing(sweep, tmp_path, monkeypatch):
    """Two sweeps on one --out would clean each other's run folders and record the same runs twice."""
    from ldt.atomic import BusyError

    forbid_training(monkeypatch)
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    (out / "results.jsonl").write_text("\n".join(lines(out / "results.jsonl")[:-1]) + "\n")  # one run to train
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with lock_held_elsewhere(out / ".sweep.lock", 60) as holder:  # a sweep in another process
        with pytest.raises(BusyError, match=rf"^another sweep is running on {out} \(pid {holder.pid}, .*lock "
                                            rf"{out}/.sweep.lock\)"):
            rp.reproduce(["1"], "synthetic_tiny", datasets_dir=sweep["datasets"], out=out, **SWEEP)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".sweep.lock"} \
        == {path: data for path, data in before.items() if path.name != ".sweep.lock"}


def fake_records(runs, data_kind: str) -> list[dict]:
    """A record per unique run with made-up metrics (distinct per seed so that std > 0)."""
    records = {}
    for run in runs:
        metrics = {c: {"psnr": 30.0 + 0.1 * run.seed + i, "ssim": 0.8 + 0.01 * run.seed}
                   for i, c in enumerate(("source",) + DREALSR_CAMERAS)}
        records[run.digest] = {"options_hash": run.digest, "data": data_kind, "data_root": "/data/DRealSR",
                               "arch": run.arch, "weights": None, "iters": 200000, "batch_size": 4, "gt_size": 192,
                               "probe_batches": 300, "metrics": metrics}
    return list(records.values())


def write_fake(tmp_path, tables, archs, data_kind: str):
    runs = rp.plan_runs(tables, "/data/DRealSR", data_kind="drealsr", archs=archs, seeds=2)
    for record in fake_records(runs, data_kind):
        Records(tmp_path / "results.jsonl").append(record)
    return rp.collect_results(tmp_path, runs)


def test_paper_numbers_appear_beside_drealsr_records(tmp_path):
    write_fake(tmp_path, ["1", "5"], ["mambair"], "drealsr")
    table1 = (tmp_path / "table1.md").read_text()
    # Paper Table 1, LDT+DPU on Pan: 31.36 ± 0.0469 / 0.8611 ± 6.03e-4.
    assert "| ↳ paper (LDT+DPU) | MambaIR |  | 31.36 ± 0.05 / 0.8611 ± 0.0006 |" in table1
    assert "| ↳ paper (Baseline) | MambaIR |  | 30.81 / 0.8688 |" in table1
    assert "not comparable" not in table1
    with open(tmp_path / "table1.csv") as handle:
        rows = {(r["setting"], r["camera"]): r for r in csv.DictReader(handle)}
    assert float(rows["LDT+DPU", "pan"]["paper_psnr"]) == 31.36
    assert float(rows["LDT (fixed W)", "canon"]["paper_ssim"]) == 0.9236
    # Table 5: the source camera's column is marked, the paper's cells are per target.
    table5 = lines(tmp_path / "table5.md")
    pan_ft = table5.index(next(line for line in table5 if line.startswith("| Pan + FT |")))
    assert "(source)" in table5[pan_ft]
    assert table5[pan_ft + 1].startswith("| ↳ paper (Pan + FT) | MambaIR |  | 30.65 / ")


def test_no_paper_numbers_for_synthetic_records_or_other_archs(tmp_path):
    write_fake(tmp_path / "synthetic", ["1"], ["mambair"], "synthetic")
    assert "paper (" not in (tmp_path / "synthetic" / "table1.md").read_text()
    write_fake(tmp_path / "tiny", ["1"], ["safmn_tiny"], "drealsr")
    assert "paper (" not in (tmp_path / "tiny" / "table1.md").read_text()


def test_every_paper_row_we_name_exists_and_shared_runs_train_once():
    runs = rp.plan_runs([t for t in rp.TABLES if t != "study"], "/data/DRealSR", data_kind="drealsr", seeds=1)
    for run in runs:
        if run.setting.paper_row is not None:
            cells = rp.paper_cells(rp.TABLES[run.table], run.setting)
            assert set(cells) == set(run.setting.targets), (run.table, run.setting.paper_row)
    # Unique settings: T1 3, T2 +3 criteria, T4 +LP-FT +DeFT, T5 +6, T6 +4 (SAFMN, HAT), T9 +6 ratios.
    assert len({run.digest for run in runs}) == 24


def test_weights_are_checked_before_training(tmp_path):
    from basicsr.utils.registry import ARCH_REGISTRY

    spec = {k: v for k, v in experiment_module.ARCHS["safmn_tiny"].items() if k != "type"}
    good = tmp_path / "good.pth"
    torch.save({"params": ARCH_REGISTRY.get("SAFMN")(**spec).state_dict()}, good)
    weights = rp.resolve_weights([f"safmn_tiny={good}"], ["safmn_tiny"])
    assert weights == {"safmn_tiny": good.resolve()}
    rp.check_weights(weights)
    wrong = tmp_path / "wrong.pth"
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(rp.ReproduceError, match=rf"weights for safmn_tiny \(SAFMN\): {wrong} does not fit SAFMN: "
                                                r"missing 40 key\(s\) \(to_feat\.weight"):
        rp.check_weights(rp.resolve_weights([str(wrong)], ["safmn_tiny"]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tables=["3"]), "unknown table '3'; choose from 1, 2, 4, 5, 6, 9, study or all"),
        (dict(archs=["mambaIR"]), "unknown arch 'mambaIR' (did you mean 'mambair'?); choose from"),
        (dict(data="{tmp}/no_such_root"), "data root {tmp}/no_such_root does not exist"),
        (dict(data="{tmp}/x.pth"), "data root {tmp}/x.pth is a file, not a folder"),
        (dict(data="{tmp}"), "data root {tmp}: no train split"),
        (dict(weights=["{tmp}/missing.pth"]), "weights file for safmn_tiny does not exist: {tmp}/missing.pth"),
        (dict(weights=["{tmp}"]), "weights file for safmn_tiny: {tmp} is a folder, not a file"),
        (dict(weights=["hat={tmp}/x.pth"]), "--weights given for hat, not swept here"),
        (dict(weights=["hta={tmp}/x.pth"]), "unknown arch 'hta'"),
        (dict(archs=["safmn_tiny", "safmn"], weights=["{tmp}/x.pth"]), "write ARCH=FILE for each"),
        (dict(seeds=0), "--seeds must be a positive integer"),
        (dict(budget=rp.Budget(iters=4, gt_size=30)), "--gt-size must be a multiple of the scale 4"),
        (dict(budget=rp.Budget(iters=4, batch_size=1000, gt_size=32)), "--batch-size 1000: more than the "),
        (dict(budget=replace(TINY, probe_batches=100000)),  # it probed 1 batch, and its record said 100000
         "--probe-batches 100000: more than the 1 probe batch(es) of 4 pairs that one pass over the 6 training "
         "pair(s) of olympus in {data} makes (run safmn_tiny_olympus_ldt_dpu-false_seed0_"),
    ],
)
def test_bad_inputs_fail_before_any_run(kwargs, message, sweep, tmp_path, monkeypatch):
    forbid_training(monkeypatch)
    (tmp_path / "x.pth").write_bytes(b"")
    args = {"tables": ["1"], "data": str(sweep["data"]), "archs": ["safmn_tiny"], "seeds": 1, "budget": TINY,
            "out": tmp_path / "out", "progress": False}
    args.update({k: [v.format(tmp=tmp_path) for v in value] if isinstance(value, list) else
                 value.format(tmp=tmp_path) if isinstance(value, str) else value for k, value in kwargs.items()})
    with pytest.raises(rp.ReproduceError) as err:
        rp.reproduce(args.pop("tables"), args.pop("data"), **args)
    assert message.format(tmp=tmp_path, data=sweep["data"]) in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, hint", [("al", "all"), ("ALL", "all"), ("stduy", "study"), ("tablestudyy", "study"),
                                        ("10", None), ("table10", None), ("3", None), ("x", None)])
def test_a_misspelled_table_name_gets_a_hint(name, hint):
    """--table al said only 'unknown table 'al'; choose from ...'; a word now gets the did-you-mean of 'all' and
    'study', a number never (10 is no misspelling of 1)."""
    with pytest.raises(rp.ReproduceError) as err:
        rp.resolve_tables([name])
    message = str(err.value)
    assert message.startswith(f"unknown table {name!r}" + (f" (did you mean '{hint}'?)" if hint else "") + "; "), message
    assert "choose from 1, 2, 4, 5, 6, 9, study or all" in message


def test_bad_weights_are_refused_before_the_synthetic_data_is_built(tmp_path, monkeypatch):
    """``--data synthetic --weights missing.pth`` built the synthetic benchmark (minutes, on a fresh checkout)
    before refusing the weights file; a missing, non-file or unreadable file is now refused first, and the
    warning about archs without weights waits for the data (no warning above a data error)."""
    built = []
    monkeypatch.setattr(rp, "build_synthetic_cameras", lambda root, tiny: built.append(root))
    datasets, folder = tmp_path / "datasets", tmp_path / "folder"
    folder.mkdir()
    for weights, message in ([str(tmp_path / "missing.pth")], "does not exist"), ([str(folder)], "is a folder"):
        with pytest.raises(rp.ReproduceError, match=message):
            rp.reproduce(["1"], "synthetic_tiny", archs=["safmn_tiny"], weights=weights, datasets_dir=datasets,
                         out=tmp_path / "out", **{k: v for k, v in SWEEP.items() if k != "archs"})
    assert built == [] and not datasets.exists() and not (tmp_path / "out").exists()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning before the data's error would raise here instead
        with pytest.raises(rp.ReproduceError, match="does not exist"):
            rp.reproduce(["1"], str(tmp_path / "no_data"), archs=["safmn_tiny"], out=tmp_path / "out", seeds=1,
                         budget=TINY, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_weights_file_is_refused_before_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "build_synthetic_cameras", lambda root, tiny: pytest.fail("the data was built"))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    weights.chmod(0)
    with pytest.raises(rp.ReproduceError, match=f"weights file for safmn_tiny: {weights} cannot be read"):
        rp.reproduce(["1"], "synthetic_tiny", archs=["safmn_tiny"], weights=[str(weights)],
                     datasets_dir=tmp_path / "datasets", out=tmp_path / "out", seeds=1, budget=TINY, progress=False)


def test_a_capped_probe_records_the_batches_it_read_not_those_asked(sweep, tmp_path, monkeypatch):
    """The study's fixed probe (100 batches; its 96 pairs make 24) is read to the end of a pass, not refused: its
    records said 100 batches were probed, and so did the table."""
    rows = {camera: {"psnr": 20.0, "ssim": 0.5} for camera in ("source", *TARGET_CAMERAS)}
    report = {"best": {"iter": 4}, "history": [{"iter": 4, "rows": rows}], "iterations": 4,
              "metrics": {"rows": rows}, "train_seconds": 0.0, "cached": False}
    monkeypatch.setattr(rp, "run_stage", lambda opt, out, label: report)
    out = tmp_path / "out"
    rp.reproduce(["1"], str(sweep["data"]), archs=["safmn_tiny"], seeds=1, budget=replace(TINY, probe_batches=100000),
                 out=out, progress=False, cap_probe=True)
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    assert len(records) == 3 and {record["probe_batches"] for record in records} == {1}
    assert "probe 1 batches" in (out / "table1.md").read_text()


def test_records_made_before_the_batches_read_were_recorded_say_their_probe_count_is_the_one_asked(
        sweep, tmp_path, monkeypatch):
    """Records written before ldt recorded the probe batches read hold those asked (the study's: 100, where its 96
    pairs make 24): the table must not present that number as the batches probed."""
    rows = {camera: {"psnr": 20.0, "ssim": 0.5} for camera in ("source", *TARGET_CAMERAS)}
    report = {"best": {"iter": 4}, "history": [{"iter": 4, "rows": rows}], "iterations": 4,
              "metrics": {"rows": rows}, "train_seconds": 0.0, "cached": False}
    monkeypatch.setattr(rp, "run_stage", lambda opt, out, label: report)
    out, budget = tmp_path / "out", replace(TINY, probe_batches=100)
    args = dict(archs=["safmn_tiny"], seeds=1, budget=budget, out=out, progress=False)
    rp.reproduce(["1"], str(sweep["data"]), cap_probe=True, **args)
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    assert {(record["probe_batches"], record["probe_batches_asked"]) for record in records} == {(1, 100)}
    assert "probe 1 batches," in (out / "table1.md").read_text()
    old = [{**{k: v for k, v in record.items() if k != "probe_batches_asked"}, "probe_batches": 100} for record in records]
    (out / "results.jsonl").write_text("".join(json.dumps(record) + "\n" for record in old))
    rp.reproduce(["1"], str(sweep["data"]), collect_only=True, **args)
    assert ("probe 100 batches asked (records written before the batches read were recorded hold those asked: one "
            "pass over the source pairs may have ended the probe sooner)") in (out / "table1.md").read_text()


@pytest.mark.parametrize("collect_only", [False, True])
def test_a_records_path_that_is_a_folder_is_refused_before_any_run(collect_only, sweep, tmp_path, monkeypatch):
    """Read as 'no records', a results.jsonl folder let a sweep train its first run, then fail to record it; --collect
    wrote tables of nothing beside it."""
    from ldt.atomic import DiskError

    forbid_training(monkeypatch)
    out = tmp_path / "out"
    (out / "results.jsonl").mkdir(parents=True)
    with pytest.raises(DiskError, match=rf"cannot read the records {out / 'results.jsonl'}: it is a folder, not a "
                                        "file; move it away, or give another --out"):
        rp.reproduce(["1"], str(sweep["data"]), archs=["safmn_tiny"], seeds=1, budget=TINY, out=out, progress=False,
                     collect_only=collect_only)
    assert [path.name for path in out.iterdir()] == ["results.jsonl"]


@pytest.mark.parametrize("folder, found", [("missing", "the file does not exist"), ("foreign", "it holds no records"),
                                           ("other_arguments", "it holds 6 record(s) of other arguments")])
def test_collect_without_a_record_of_the_planned_runs_writes_nothing(folder, found, sweep, tmp_path):
    """--collect on a mistyped --out, a foreign folder, or with arguments other than the sweep's made the folder if
    need be and wrote tables of 'not run' there, over its own table1.md."""
    out = tmp_path / folder
    if folder != "missing":
        shutil.copytree(sweep["out"], out, ignore=shutil.ignore_patterns("experiments", "tb_logger"))
    if folder == "foreign":
        (out / "results.jsonl").write_text('{"loss": 1}\n')
    before = {path.name: path.read_bytes() for path in out.iterdir()} if out.exists() else None
    with pytest.warns() if folder == "foreign" else contextlib.nullcontext():
        with pytest.raises(rp.ReproduceError, match=rf"--collect: none of the 6 run\(s\) these arguments plan has a "
                                                    rf"record in {out / 'results.jsonl'} \({re.escape(found)}"):
            rp.reproduce(["1"], str(sweep["data"]), archs=["safmn_tiny"], seeds=2, progress=False, out=out,
                         budget=TINY if folder != "other_arguments" else replace(TINY, iters=5), collect_only=True)
    assert ({path.name: path.read_bytes() for path in out.iterdir()} if out.exists() else None) == before


def test_collect_waits_for_a_sweep_writing_the_tables(sweep, tmp_path, capsys):
    """--collect took no lock: one that read the records before a sweep appended its last wrote its older tables
    over the sweep's. Reading the records and writing the tables is one step under OUT's tables lock, which the
    sweep holds for it too: a collect meanwhile waits, said on stderr, then writes."""
    import threading

    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out)
    for table in out.glob("table*"):
        table.unlink()
    collect = threading.Thread(target=rp.reproduce, args=(["1"], str(sweep["data"])), daemon=True,
                               kwargs={**SWEEP, "out": out, "collect_only": True})
    with lock_held_elsewhere(out / ldt.sweep.TABLES_LOCK_FILE) as holder:  # the sweep, writing its tables
        collect.start()
        said = ""
        while collect.is_alive() and "waiting for" not in said:
            collect.join(0.05)
            said += capsys.readouterr().err
        assert f"waiting for pid {holder.pid}" in said and not list(out.glob("table*")), said
    collect.join(60)
    assert not collect.is_alive() and (out / "table1.md").is_file() and (out / "table1.csv").is_file()


@pytest.mark.parametrize("below", ["", "sub"])
def test_collect_on_an_out_that_is_a_file_says_so(below, sweep, tmp_path):
    """--collect with --out a file (or a folder below one) said '(the file does not exist)' of OUT/results.jsonl, as
    for a folder not made yet; the sweep itself says '--out: OUT exists and is not a folder'."""
    (tmp_path / "notes").write_text("notes")
    out = tmp_path / "notes" / below if below else tmp_path / "notes"
    with pytest.raises(rp.ReproduceError) as err:
        rp.reproduce(["1"], str(sweep["data"]), archs=["safmn_tiny"], seeds=2, progress=False, out=out, budget=TINY,
                     collect_only=True)
    assert str(err.value) == (f"--collect: none of the 6 run(s) these arguments plan has a record in "
                              f"{out / 'results.jsonl'} (--out: {tmp_path / 'notes'} is a file, not a folder); "
                              "nothing written")
    assert (tmp_path / "notes").read_text() == "notes"


def test_an_out_that_cannot_hold_the_sweep_fails_before_the_data_is_built(tmp_path, monkeypatch):
    """An --out that is a file was found at the sweep's first write, after --data synthetic was built (minutes)."""
    def fail(*args, **kwargs):
        raise AssertionError("the data was built before --out was checked")

    monkeypatch.setattr(rp, "build_synthetic_cameras", fail)
    (tmp_path / "out").write_text("notes")
    with pytest.raises(rp.ReproduceError, match=rf"--out: {tmp_path / 'out'} exists and is not a folder"):
        rp.reproduce(["1"], "synthetic", archs=["safmn_tiny"], seeds=1, out=tmp_path / "out", datasets_dir=tmp_path)
    assert (tmp_path / "out").read_text() == "notes"


def test_cli_reports_errors_without_a_traceback(capsys, tmp_path):
    assert rp.main(["--table", "7", "--data", "synthetic", "--out", str(tmp_path)]) == 2
    assert "error: unknown table '7'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rp.main(["--table", "1"])


def test_run_identity_names_what_a_run_computes(tmp_path, monkeypatch):
    """Path spelling and the GPU count do not change a run's identity; a hyper-parameter does, and an option the
    method does not read does not."""
    from ldt.sr.experiment import RunBudget, camera_run_options
    from ldt.sr.options import run_identity

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    budget = RunBudget(iters=10, batch_size=2, gt_size=32, val_freq=5)

    def identity(root="data", method="ldt", **kwargs):
        return run_identity(camera_run_options("a", root, budget, arch="safmn_tiny", method=method, seed=0, **kwargs))

    base = identity()
    assert base == identity(tmp_path / "data", num_gpu=0) == identity("./data/")
    assert base != identity(lr=2e-4) and base != identity("other") and base != identity(ldt={"unstable_ratio": 0.5})
    assert base == identity(ldt={"unstable_ratio": 0.4})  # the default, spelled out
    assert identity(method="ft") == identity(method="ft", ldt={"unstable_ratio": 0.5, "probe": {"num_batches": 3}})
    assert identity(method="ft") != identity(method="ft_ema")


def test_records_and_cached_stages_are_tied_to_the_weights_content(sweep, tmp_path, monkeypatch):
    """The run identity names pre-trained weights by path: a file rebuilt in place (``--force``) must not let the
    old records or cached stages pass as runs of the new weights."""
    from basicsr.utils.registry import ARCH_REGISTRY

    spec = {k: v for k, v in experiment_module.ARCHS["safmn_tiny"].items() if k != "type"}
    torch.manual_seed(0)
    state = ARCH_REGISTRY.get("SAFMN")(**spec).state_dict()
    weights, out = tmp_path / "pretrained.pth", tmp_path / "out"
    torch.save({"params": state}, weights)
    args = dict(archs=["safmn_tiny"], weights=[str(weights)], seeds=1, budget=TINY, out=out, progress=False)
    first = rp.reproduce(["1"], str(sweep["data"]), **args)
    records = [json.loads(line) for line in lines(out / "results.jsonl")]
    fingerprint = records[0]["weights_fingerprint"]
    assert first.trained == 3 and {r["weights_fingerprint"] for r in records} == {fingerprint}
    torch.save({"params": {k: v.clone() for k, v in state.items()}}, weights)  # same tensors, saved again: still valid
    forbid_training(monkeypatch)
    assert rp.reproduce(["1"], str(sweep["data"]), **args).skipped == 3
    torch.save({"params": {k: v + 1 for k, v in state.items()}}, weights)  # other weights at the same path
    before = (out / "results.jsonl").read_bytes()
    with pytest.raises(rp.ReproduceError, match=rf"weights {weights} changed since 3 run\(s\) in {out}/results.jsonl "
                                                rf"were trained from them \(tensor fingerprint {fingerprint} then"):
        rp.reproduce(["1"], str(sweep["data"]), **args)
    assert (out / "results.jsonl").read_bytes() == before
    run = next(r for r in rp.plan_runs(["1"], sweep["data"], data_kind="synthetic", archs=["safmn_tiny"],
                                       weights={"safmn_tiny": weights.resolve()}, seeds=1, budget=TINY))
    with pytest.raises(AssertionError, match="trained again"):  # its stage folder is no cache for the new weights
        experiment_module.run_stage(run.opt, out, label="reproduce")


def test_a_broken_line_is_warned_once_by_collect(sweep, tmp_path, monkeypatch):
    """by_hash, all() and having each warned of a line cut short (the runs done, the tables, the runs recorded),
    from different call sites, so Python's once-per-place filter let the same warning through up to three times."""
    import warnings

    forbid_training(monkeypatch)
    out = tmp_path / "out"
    shutil.copytree(sweep["out"], out, ignore=shutil.ignore_patterns("experiments", "tb_logger"))
    intact = lines(out / "results.jsonl")
    (out / "results.jsonl").write_text("".join(line + "\n" for line in intact) + intact[0][:20] + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert collect(sweep, out) == 0
    warned = [str(w.message) for w in caught if "not a complete record" in str(w.message)]
    assert warned == [f"{out / 'results.jsonl'}:{len(intact) + 1}: not a complete record (an interrupted write, or "
                      "edited by hand?); ignored"]


@pytest.mark.parametrize("flag", ["--out", "--data", "--weights"])
def test_a_home_folder_of_no_user_is_one_line_naming_the_flag(flag, tmp_path, monkeypatch, capsys):
    """``--out ~nosuchuser/x`` (a ``~user`` naming no account, or ``~`` without a home) ended in pathlib's
    'RuntimeError: Could not determine home directory.' traceback, after the sweep had started."""
    forbid_training(monkeypatch)
    value = "~ldt_no_such_user_0/x"
    argv = {"--table": "1", "--data": str(tmp_path), "--arch": "safmn_tiny", "--out": str(tmp_path / "out"),
            flag: value}
    try:
        code = rp.main([word for pair in argv.items() for word in pair])
    except SystemExit as exited:  # --out: the parser's error
        code = exited.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.splitlines()[-1].endswith(f"{value}: cannot expand '~ldt_no_such_user_0': no such user's home folder")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    if flag == "--out":  # the API, and study.py's --out
        with pytest.raises(rp.ReproduceError, match="^--out ~ldt_no_such_user_0/x: cannot expand"):
            rp.reproduce(["1"], str(tmp_path), archs=["safmn_tiny"], seeds=1, budget=TINY, out=value)
        from ldt.sr.study import main as study_main
        with pytest.raises(SystemExit) as exited:
            study_main(["--out", value])
        assert exited.value.code == 2
        assert capsys.readouterr().err.strip().endswith(f"argument --out: {value}: cannot expand "
                                                        "'~ldt_no_such_user_0': no such user's home folder")


@pytest.mark.parametrize("archs, message", [
    (["safmn_tny"], "unknown arch 'safmn_tny' (did you mean 'safmn_tiny'?); choose from safmn_tiny, safmn, hat, mambair"),
    (["MambaIR"], "unknown arch 'MambaIR' (did you mean 'mambair'?); choose from"),
    (["zzz"], "unknown arch 'zzz'; choose from safmn_tiny, safmn, hat, mambair"),
    (["hta", "zzz"], "unknown arch 'hta', 'zzz'; choose from"),
])
def test_a_misspelled_arch_gets_the_did_you_mean_of_every_unknown_name(archs, message):
    """``--arch safmn_tny`` listed the archs with no hint, where a misspelled table key, method or option has one."""
    with pytest.raises(rp.ReproduceError) as err:
        rp.check_archs(archs)
    assert str(err.value).startswith(message), err.value


@pytest.mark.parametrize("spec, hint", [("synthetic_tny", " (did you mean 'synthetic_tiny'?)"),
                                        ("Synthetic", " (did you mean 'synthetic'?)"), ("no_such_root", "")])
def test_a_misspelled_synthetic_data_name_gets_the_did_you_mean(spec, hint, tmp_path, monkeypatch):
    """``--data synthetic_tny`` said '... does not exist (give a DRealSR root, or 'synthetic')': no hint, and not
    naming synthetic_tiny."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(rp.ReproduceError) as err:
        rp.resolve_data(spec, tmp_path / "datasets")
    assert str(err.value) == (f"data root {tmp_path / spec} does not exist{hint} (give a DRealSR root, or "
                              "'synthetic' / 'synthetic_tiny')")
    assert not (tmp_path / "datasets").exists()


@pytest.mark.parametrize("script", ["reproduce", "study"])
@pytest.mark.parametrize("flag", ["--seeds", "--extra-seeds"])
@pytest.mark.parametrize("count, said", [
    (MAX_SEED + 2, "the seeds 0 to {top} go past the largest seed " + str(MAX_SEED)),
    (rp.MAX_SEED_COUNT + 1, "more than {most} runs of one setting; give at most {most}"),
])
def test_a_seed_count_past_the_seed_range_or_absurd_is_refused_before_any_planning(script, flag, count, said, tmp_path,
                                                                                   monkeypatch, capsys):
    """``--seeds 1000000000`` spent minutes building run identities, memory growing, with no word; seeds past
    MAX_SEED are also past BasicSR's manual_seed."""
    import ldt.sr.demo as demo
    from ldt.sr.study import main as study_main

    def fail(*args, **kwargs):
        raise AssertionError("work started before the seed counts were checked")

    monkeypatch.setattr(rp, "plan_runs", fail)
    monkeypatch.setattr(demo, "pretrain_stage", fail)
    argv = [flag, str(count), "--out", str(tmp_path / "out")]
    main = study_main if script == "study" else rp.main
    assert main(argv if script == "study" else ["--table", "1", "--data", str(tmp_path), *argv]) == 2
    message = said.format(top=count - 1, most=rp.MAX_SEED_COUNT)
    assert capsys.readouterr().err.strip() == f"error: {flag} {count}: {message}"
    assert not (tmp_path / "out").exists()
