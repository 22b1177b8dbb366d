"""The study's instruments: FT-EMA (and BasicSR's train:ema_decay), the selection protocols, paired statistics and the
transfer ratio, each against numbers computed by hand."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch

import ldt.atomic
from ldt.data.cameras import TARGET_CAMERAS
from ldt.core import MethodConfig, effective_ema_decay, prepare_method
from ldt.sr.study import FINDING, camera_gains, headline, select, target_mean, transfer_ratio
from ldt.sweep import TABLES_LOCK_FILE, mean_se, paired_difference
from tests.conftest import TinyNet, ce_loss, make_batches


def test_ft_ema_deploys_the_hand_computed_ema_of_the_trained_weights():
    torch.manual_seed(0)
    model, twin = TinyNet(), None
    twin = copy.deepcopy(model)
    method = prepare_method(model, MethodConfig(method="ft_ema"), ema_decay=0.9)
    optimizers = [torch.optim.SGD(b.parameters, lr=0.1) for b in method.branches()]
    hand_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    ema = {k: v.clone() for k, v in twin.state_dict().items()}
    params = {name for name, _ in twin.named_parameters()}
    for batch in make_batches(4):
        method.train_step(batch, ce_loss, optimizers)
        twin.train()
        hand_optimizer.zero_grad()
        ce_loss(twin, batch).backward()
        hand_optimizer.step()
        for name, value in twin.state_dict().items():  # parameters averaged, buffers (BatchNorm) copied
            ema[name] = ema[name] * 0.9 + value * (1 - 0.9) if name in params else value.clone()
    deployed = method.deployed_state_dict()
    assert deployed.keys() == ema.keys()
    for name in ema:
        assert torch.allclose(deployed[name], ema[name], rtol=1e-6, atol=1e-7), name
    assert any(not torch.equal(deployed[n], twin.state_dict()[n]) for n in params)  # it is not the trained network
    saved = method.checkpoint()
    assert set(saved) == {"params", "params_ema"} and method.deployed_key == "params_ema"
    assert all(torch.equal(saved["params"][k], v) for k, v in twin.state_dict().items() if k in params)


def test_ft_ema_default_decay_matches_the_fixed_w_exchange():
    config = MethodConfig(method="ft_ema", exchange={"weight": 0.99, "interval": 4})
    assert effective_ema_decay(config) == pytest.approx(0.99 ** 0.25)
    assert effective_ema_decay(config, 0.95) == 0.95  # an explicit train:ema_decay wins
    assert effective_ema_decay(MethodConfig(method="ft")) is None  # FT deploys its trained network
    assert effective_ema_decay(MethodConfig(method="ldt"), 0.999) == 0.999  # any method can deploy an EMA


def test_sr_ema_decay_saves_params_ema_and_validates_it(tmp_path):
    from tests.sr_fixtures import tiny_cameras, tiny_options
    from tests.test_sr_pipeline import run_training

    opt = tiny_options(tiny_cameras(tmp_path / "cams"), "ema", "ft")
    opt["train"]["ema_decay"] = 0.5
    run_training(opt, tmp_path)
    models = tmp_path / "experiments" / "ema" / "models"
    saved = torch.load(models / "net_g_6.pth", weights_only=True)
    assert set(saved) == {"params", "params_ema"}
    assert any(not torch.equal(saved["params"][k], saved["params_ema"][k]) for k in saved["params"])
    state = torch.load(tmp_path / "experiments" / "ema" / "training_states" / "6.state", weights_only=True)
    assert state["method"]["ema_decay"] == 0.5 and "params_ema" in torch.load(models / "net_g_best.pth",
                                                                               weights_only=True)


HISTORY = [  # iteration: source PSNR, and target PSNRs (mean 21, 25, 23, 22)
    {"iter": it, "rows": {"source": {"psnr": s, "ssim": 0.5},
                          **{c: {"psnr": t, "ssim": 0.5} for c in ("pan", "sony", "dsc", "img", "canon")}}}
    for it, s, t in ((1000, 30.0, 21.0), (2000, 31.0, 25.0), (3000, 32.0, 23.0), (4000, 32.0, 22.0))
]


def test_selection_protocols_pick_their_iteration_from_a_known_history():
    assert select(HISTORY, "source")["iter"] == 3000  # best source PSNR; the tie at 4000 keeps the earlier
    assert select(HISTORY, "last")["iter"] == 4000
    assert select(HISTORY, "oracle")["iter"] == 2000  # best target mean
    assert select(HISTORY, "source", upto=2000)["iter"] == 2000  # a shorter budget reads a prefix
    assert select(HISTORY, "last", upto=3500)["iter"] == 3000
    assert target_mean(select(HISTORY, "oracle")["rows"]) == 25.0
    with pytest.raises(ValueError, match="unknown selection protocol 'best'"):
        select(HISTORY, "best")
    with pytest.raises(ValueError, match="no validation at or before iteration 500"):
        select(HISTORY, "last", upto=500)


def test_paired_difference_and_its_interval_by_hand():
    ldt = {0: 26.30, 1: 26.10, 2: 26.50}
    ft = {0: 26.20, 1: 26.15, 2: 26.25, 3: 30.0}  # seed 3 has no partner: not used
    paired = paired_difference(ldt, ft)
    diffs = [0.10, -0.05, 0.25]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # Student t, 2 degrees of freedom, 97.5 %
    assert paired.n == 3 and paired.mean == pytest.approx(mean)
    assert (paired.low, paired.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert paired.distinguishable is False and paired.verdict() == "no"
    assert paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 1.1, 2: 1.9}).verdict() == "yes"
    assert paired_difference({0: 1.0}, {0: 0.5}).verdict() == "n < 2"
    assert paired_difference({0: 1.0}, {1: 0.5}) is None
    stat = mean_se([26.3, 26.1, 26.5])
    assert stat.se == pytest.approx(0.2 / math.sqrt(3)) and stat.format(2) == "26.30 ± 0.12"


def test_transfer_ratio_by_hand():
    pretrained = {"source": {"psnr": 25.0}, **{c: {"psnr": 24.0} for c in ("pan", "sony", "dsc", "img", "canon")}}
    tuned = {"source": {"psnr": 27.0}, **{c: {"psnr": 25.5} for c in ("pan", "sony", "dsc", "img", "canon")}}
    assert transfer_ratio(tuned, pretrained) == pytest.approx(1.5 / 2.0)


def test_camera_gains_by_hand():
    pretrained = {c: {"psnr": 24.0} for c in ("source", "pan", "sony", "dsc", "img", "canon")}

    def record(source: float, target: float) -> dict:
        rows = {"source": {"psnr": source}, **{c: {"psnr": target} for c in ("pan", "sony", "dsc", "img", "canon")}}
        late = {"source": {"psnr": source - 1.0}, **{c: {"psnr": 99.0} for c in ("pan", "sony", "dsc", "img", "canon")}}
        return {"history": [{"iter": 1000, "rows": rows}, {"iter": 2000, "rows": late}]}  # 1000 wins on the source

    (row,) = camera_gains({"FT": {0: record(26.0, 25.0), 1: record(27.0, 25.5)}, "LDT": {}}, pretrained, 2000)
    assert row[0] == "FT" and row[1] == "2.50 ± 0.50" and row[2:] == ["1.25 ± 0.25"] * 5  # a setting without runs: no row


def test_demo_headline_reads_the_study_table_or_says_what_it_found(tmp_path):
    assert "@@" not in FINDING and FINDING
    assert headline(tmp_path) == f"Multi-seed study (python scripts/study.py; README 'What LDT buys here'): {FINDING}."
    header = "setting,protocol,budget,seeds,source_psnr,target_psnr,target_psnr_se,target_ssim,delta_vs_ft," \
             "delta_low95,delta_high95,distinguishable,transfer_ratio\n"
    (tmp_path / "tablestudy.csv").write_text(
        header
        + "FT,source,8000,3,27.4,26.4,0.01,0.709,,,,,0.75\n"
        + "LDT+DPU,source,4000,3,27.3,26.3,0.01,0.708,-0.20,-0.30,-0.10,yes,0.74\n"
        + "LDT+DPU,source,8000,3,27.4,26.3,0.01,0.708,-0.051,-0.104,0.002,no,0.74\n"
        + "LDT+DPU,oracle,8000,3,27.4,26.5,0.01,0.708,0.10,0.0,0.2,no,0.74\n"
        + "DeFT,source,8000,1,27.4,26.3,,0.708,0.03,,,n < 2,0.74\n")
    line = headline(tmp_path)
    assert line.endswith("at 8000 iterations, paired, 95 % CI: LDT+DPU -0.05 [-0.10, +0.00] (n=3); DeFT +0.03 (n=1)")


def test_the_pretrained_reference_point_refuses_weights_changed_in_place(tmp_path, monkeypatch):
    """The study's transfer ratio reads pretrained.json; weights rebuilt at the same path must not pass as the same."""
    import ldt.sr.demo as demo
    from ldt.sr.study import CAMERAS, PRETRAINED_FILE, record_pretrained

    calls = []
    rows = {camera: {"psnr": 20.0, "ssim": 0.5} for camera in CAMERAS}
    monkeypatch.setattr(demo, "evaluate_weights", lambda *args: calls.append(args) or rows)
    weights = tmp_path / "net.pth"
    torch.save({"params": {"w": torch.ones(3)}}, weights)
    record_pretrained(weights, tmp_path / "data", tmp_path)
    record_pretrained(weights, tmp_path / "data", tmp_path)
    assert len(calls) == 1 and json.loads((tmp_path / PRETRAINED_FILE).read_text())["weights_fingerprint"]
    torch.save({"params": {"w": torch.zeros(3)}}, weights)
    with pytest.raises(ValueError, match=rf"{weights} changed since {tmp_path / PRETRAINED_FILE} and the study's "
                                         r"records were made from it \(tensor fingerprint"):
        record_pretrained(weights, tmp_path / "data", tmp_path)
    assert len(calls) == 1


@pytest.mark.parametrize("edit", ["true", "missing_camera", "string", "not_json"])
def test_pretrained_metrics_that_cannot_be_read_are_evaluated_again(edit, tmp_path, monkeypatch):
    """A pretrained.json whose metrics were not empty was reused whatever they held: a value edited by hand (true, a
    camera removed, a word) stayed, the tables leaving out the transfer ratio and the gains with a warning at every
    run until someone deleted the file. The network is evaluated again (the same weights, by fingerprint; a test of
    a few images next to the study's trainings) and the file replaced; weights changed in place are still refused."""
    import ldt.sr.demo as demo
    from ldt.sr.study import CAMERAS, PRETRAINED_FILE, pretrained_metrics, record_pretrained

    calls = []
    rows = {camera: {"psnr": 20.0, "ssim": 0.5} for camera in CAMERAS}
    monkeypatch.setattr(demo, "evaluate_weights", lambda *args: calls.append(args) or rows)
    weights, target = tmp_path / "net.pth", tmp_path / PRETRAINED_FILE
    torch.save({"params": {"w": torch.ones(3)}}, weights)
    record_pretrained(weights, tmp_path / "data", tmp_path)
    recorded = json.loads(target.read_text())
    if edit == "true":
        recorded["metrics"]["pan"]["psnr"] = True
    elif edit == "missing_camera":
        del recorded["metrics"]["sony"]
    elif edit == "string":
        recorded["metrics"] = "20 dB"
    target.write_text(json.dumps(recorded) if edit != "not_json" else json.dumps(recorded)[:40])
    with pytest.warns(UserWarning) if edit != "not_json" else contextlib.nullcontext():
        assert pretrained_metrics(tmp_path) is None
    record_pretrained(weights, tmp_path / "data", tmp_path)
    assert len(calls) == 2 and json.loads(target.read_text())["metrics"] == rows
    assert pretrained_metrics(tmp_path)["pan"] == {"psnr": 20.0, "ssim": 0.5}
    record_pretrained(weights, tmp_path / "data", tmp_path)
    assert len(calls) == 2
    recorded = json.loads(target.read_text())
    recorded["metrics"]["pan"]["psnr"] = True
    target.write_text(json.dumps(recorded))
    torch.save({"params": {"w": torch.zeros(3)}}, weights)
    with pytest.raises(ValueError, match="changed since"):
        record_pretrained(weights, tmp_path / "data", tmp_path)
    assert len(calls) == 2


@pytest.mark.parametrize("argv,message", [(["--iters", "0"], "--iters must be a positive integer, got 0"),
                                          (["--extra-seeds", "0"], "--extra-seeds must be a positive integer, got 0"),
                                          (["--iters", "100", "--val-freq", "30"],
                                           "--val-freq 30 does not validate at a quarter and a half of --iters 100 "
                                           "(not at iterations 25 and 50): the study reads those budgets; choose "
                                           "--iters divisible by 4 and a --val-freq that divides --iters / 4"),
                                          (["--iters", "8", "--val-freq", "4"],
                                           "--val-freq 4 does not validate at a quarter and a half of --iters 8 "
                                           "(not at iteration 2): the study reads those budgets; choose --iters "
                                           "divisible by 4 and a --val-freq that divides --iters / 4"),
                                          (["--iters", "3", "--val-freq", "1"],  # a quarter is iteration 0: '(0 missed)'
                                           "--iters 3: the study reads a quarter, a half and all of the training, so "
                                           "it needs at least 4 iterations (a multiple of 4)")])
def test_bad_study_arguments_fail_before_the_pre_training(argv, message, tmp_path, monkeypatch, capsys):
    """A fresh checkout would pre-train for minutes before the sweep checked its budget."""
    import ldt.sr.demo as demo
    from ldt.sr.study import main

    def fail(*args, **kwargs):
        raise AssertionError("pre-training started before the arguments were checked")

    monkeypatch.setattr(demo, "pretrain_stage", fail)
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_an_out_that_cannot_hold_the_study_fails_before_the_data_is_built(tmp_path, monkeypatch, capsys):
    """A file (or a read-only folder) as --out was found at the study's first write, after the benchmark was built
    and the network pre-trained (minutes on a fresh checkout)."""
    import ldt.sr.reproduce as reproduce
    from ldt.sr.study import main

    def fail(*args, **kwargs):
        raise AssertionError("the data was built before --out was checked")

    monkeypatch.setattr(reproduce, "build_synthetic_cameras", fail)
    (tmp_path / "out").write_text("notes")
    assert main(["--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: {tmp_path / 'out'} exists and is not a folder"
    assert (tmp_path / "out").read_text() == "notes"


def test_a_second_study_on_the_same_out_is_refused_before_it_evaluates_the_pretrained_network(tmp_path, monkeypatch,
                                                                                              capsys):
    import ldt.sr.demo as demo
    import ldt.sr.reproduce as reproduce
    from ldt.sr.study import main
    from ldt.sweep import LOCK_FILE
    from tests.conftest import lock_held_elsewhere

    def never(*args, **kwargs):
        raise AssertionError("the pre-trained network was evaluated while another study held the folder")

    monkeypatch.setattr(reproduce, "resolve_data", lambda *args, **kwargs: (tmp_path / "data", None))
    monkeypatch.setattr(demo, "pretrain_stage", lambda *args, **kwargs: tmp_path / "net.pth")
    monkeypatch.setattr(demo, "evaluate_weights", never)
    out = tmp_path / "out"
    out.mkdir(parents=True)
    with lock_held_elsewhere(out / LOCK_FILE, 30):
        assert main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: another sweep is running on {out} (") and "\n" not in err


def test_collect_builds_and_trains_nothing(tmp_path, monkeypatch, capsys):
    """``--collect`` built the bicubic pre-training set (datasets/synthetic_bicubic, minutes on a fresh checkout)
    before it failed for lack of records: pretrain_stage built its data before it looked at train_if_missing."""
    import ldt.sr.demo as demo
    from ldt.sr.study import main

    def never(*args, **kwargs):
        raise AssertionError("--collect built data or trained")

    monkeypatch.setattr(demo, "build_bicubic_pretrain_set", never)
    monkeypatch.setattr(demo, "run_stage", never)
    assert main(["--collect", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --collect: none of the ") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edited", [True, False])
def test_a_source_psnr_edited_to_true_or_false_in_the_history_is_no_number_to_select_by(edited):
    """The source protocol picked the best source PSNR of the history with the raw values: a hand edit to JSON
    true / false ranked as 1 / 0 dB, so that entry was passed over and the record kept, with no warning, where
    every other metric a study table reads is refused (ldt.sweep.recorded_number: the record is left out)."""
    history = copy.deepcopy(HISTORY)
    history[1]["rows"]["source"]["psnr"] = edited
    with pytest.raises(TypeError, match=rf"expected a number, got bool {edited}"):
        select(history, "source")
    assert select(history, "last")["iter"] == 4000  # the last entry needs no metric


def study_collect(tmp_path, monkeypatch, edit=None) -> dict:
    """``scripts/study.py --collect --iters 4 --val-freq 1`` on records made for every run it plans (histories in
    the shape of HISTORY, one value a setting and seed), with ``edit(lines)`` applied to the results.jsonl lines
    first; returns the command's exit code, the figure's series, the warnings it gave, its folder, the number of
    lines written and how many times that command planned the runs."""
    import warnings

    import ldt.sr.demo as demo
    import ldt.sr.figures as figures
    import ldt.sr.reproduce as rp
    from ldt.sr.study import main

    out, weights = tmp_path / "out", tmp_path / "net.pth"
    monkeypatch.setattr(demo, "pretrain_stage", lambda *args, **kwargs: weights)
    planned, plotted = [], []
    real_plan = rp.plan_runs
    monkeypatch.setattr(rp, "plan_runs", lambda *args, **kwargs: planned.append(real_plan(*args, **kwargs)) or planned[-1])
    held = []  # per figure drawn: was the tables lock held (a collect racing a sweep's last record draws in turn)

    def plot(series, path, **kwargs):
        held.append(Path(os.path.realpath(out / TABLES_LOCK_FILE)) in ldt.atomic._HELD)
        plotted.append(series)
        return path

    monkeypatch.setattr(figures, "plot_intervals", plot)
    argv = ["--collect", "--iters", "4", "--val-freq", "1", "--seeds", "3", "--extra-seeds", "2", "--out", str(out)]
    assert main(argv) == 2  # no records yet: it plans, and says so
    lines = []
    for index, run in enumerate({run.digest: run for run in planned[-1]}.values()):
        history = [{"iter": it, "rows": {"source": {"psnr": 30.0 + it + 0.1 * index, "ssim": 0.5},
                                         **{c: {"psnr": 20.0 + it + 0.37 * ((index * 7 + run.seed * 3) % 5), "ssim": 0.5}
                                            for c in TARGET_CAMERAS}}} for it in range(1, 5)]
        report = {"best": {"iter": 4}, "history": history, "iterations": 4, "metrics": {"rows": history[-1]["rows"]},
                  "train_seconds": 0.0}
        lines.append(json.dumps(rp.make_record(run, report, "synthetic", out, 1)))
    out.mkdir(parents=True)
    lines = edit(lines) if edit else lines
    (out / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    planned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    return {"code": code, "series": plotted[-1] if plotted else None, "warnings": [str(w.message) for w in caught],
            "out": out, "lines": len(lines), "plans": len(planned), "held": held}


def edit_first_source_psnr(lines: list[str]) -> list[str]:
    record = json.loads(lines[0])
    record["history"][1]["rows"]["source"]["psnr"] = True
    return [json.dumps(record), *lines[1:]]


def test_the_figure_reads_the_records_the_tables_read(tmp_path, monkeypatch):
    """The figure was drawn from every record by run hash, past the tables' checks: a record the tables skipped
    (a source PSNR edited to true) ended --collect in a TypeError traceback after the tables were written. It now
    draws the records the tables read: the same figure as with that record's line deleted."""
    edited = study_collect(tmp_path / "edited", monkeypatch, edit_first_source_psnr)
    assert edited["code"] == 0, edited
    assert any("results.jsonl:1: a record the table cannot read" in message for message in edited["warnings"])
    without = study_collect(tmp_path / "without", monkeypatch, lambda lines: lines[1:])
    assert without["code"] == 0 and edited["series"] == without["series"] and edited["series"]


def test_the_figure_is_drawn_under_the_tables_lock(tmp_path, monkeypatch):
    """The study's figure was drawn after reproduce() had written the tables and let go of the records: a --collect
    that read them before a sweep's last record could draw its older figure over the sweep's. It is drawn within
    the tables' step, under OUT's tables lock, from the records the tables were written from."""
    done = study_collect(tmp_path, monkeypatch)
    assert done["code"] == 0 and done["held"] == [True], done


def test_a_broken_line_is_warned_once_by_study_collect(tmp_path, monkeypatch):
    """The study read its records four times (the runs done, the tables, the runs recorded, the figure), each read
    warning again of a line cut short: one broken line, the same warning up to three times in one command."""
    done = study_collect(tmp_path, monkeypatch, lambda lines: [*lines, lines[0][: len(lines[0]) // 2]])
    assert done["code"] == 0, done
    warned = [message for message in done["warnings"] if "not a complete record" in message]
    assert warned == [f"{done['out'] / 'results.jsonl'}:{done['lines']}: not a complete record (an interrupted "
                      "write, or edited by hand?); ignored"], done["warnings"]


def test_study_collect_plans_its_runs_once(tmp_path, monkeypatch):
    """The study planned its runs twice, with the same arguments: once in reproduce() for the tables, again for the
    figure (duplicated work, and two plans that could drift). The figure now draws the runs reproduce() planned (its draw)."""
    done = study_collect(tmp_path, monkeypatch)
    assert done["code"] == 0 and done["series"], done
    assert done["plans"] == 1, done


def pretrained_and_records_edited(pretrained_value, record_value=None):
    """An edit for study_collect: the pre-trained metrics written beside the records with pan's PSNR
    ``pretrained_value`` (and with ``record_value``, the first record's pan PSNR in every validation)."""
    from ldt.sr.study import CAMERAS, PRETRAINED_FILE

    def edit(lines: list[str], out) -> list[str]:
        rows = {camera: {"psnr": 20.0, "ssim": 0.5} for camera in CAMERAS}
        rows["pan"]["psnr"] = pretrained_value
        (out / PRETRAINED_FILE).write_text(json.dumps({"weights": "net.pth", "metrics": rows}))
        if record_value is None:
            return lines
        record = json.loads(lines[0])
        for entry in record["history"]:
            entry["rows"]["pan"]["psnr"] = record_value
        return [json.dumps(record), *lines[1:]]
    return edit


@pytest.mark.parametrize("pretrained_value, record_value", [("nan", None), (20.0, "nan")])
def test_an_older_files_nan_string_in_the_pretrained_metrics_or_a_record_reads_as_nan(pretrained_value, record_value,
                                                                                      tmp_path, monkeypatch):
    """The per-camera gains and the transfer ratio subtracted the raw values: the string 'nan' (a NaN as the
    previous version wrote it) in pretrained.json made every record 'a record the table cannot read' (TypeError:
    float - str), and in a record left that record out; both now read it as NaN, as every other table does."""
    out = tmp_path / "out"
    done = study_collect(tmp_path, monkeypatch, lambda lines: pretrained_and_records_edited(
        pretrained_value, record_value)(lines, out))
    assert done["code"] == 0 and not [message for message in done["warnings"] if "cannot read" in message], done
    assert "**PSNR gain over the pre-trained network per camera**" in (out / "tablestudy.md").read_text()
    assert "nan" in (out / "tablestudy.md").read_text().split("per camera")[1]


def test_a_pretrained_metric_edited_to_true_is_warned_of_naming_the_file(tmp_path, monkeypatch):
    """A pre-trained PSNR edited by hand to true was subtracted as 1 dB, with no word; it is now a warning naming
    pretrained.json, and the tables show no transfer ratio and per-camera gains (the records are all read)."""
    from ldt.sr.study import PRETRAINED_FILE

    out = tmp_path / "out"
    done = study_collect(tmp_path, monkeypatch, lambda lines: pretrained_and_records_edited(True)(lines, out))
    assert done["code"] == 0 and not [message for message in done["warnings"] if "cannot read" in message
                                      and "results.jsonl" in message], done
    assert any(message.startswith(f"{out / PRETRAINED_FILE}: ") and "got bool True" in message
               for message in done["warnings"]), done["warnings"]
    table = (out / "tablestudy.md").read_text()
    assert "per camera" not in table and "Pre-trained network" not in table and "no record yet" not in table


def test_mean_se_and_paired_difference_of_a_nan_are_nan():
    """statistics.stdev of a NaN raised AttributeError ('float' object has no attribute 'numerator'): a NaN metric
    (an older file's 'nan') made its record one the table cannot read; the spread is now NaN."""
    stat = mean_se([26.0, "nan", 27.0])
    assert math.isnan(stat.mean) and math.isnan(stat.se) and stat.n == 3
    paired = paired_difference({0: 1.0, 1: math.nan}, {0: 0.0, 1: 0.5})
    assert math.isnan(paired.mean) and math.isnan(paired.low) and paired.verdict() == "no"


def test_a_setting_run_without_its_ft_reference_is_not_said_not_run_in_the_budgets_table(tmp_path, monkeypatch):
    """--collect on records without FT's (FT's runs killed or not run yet): the first table said 'no FT run' for
    the settings that have records, the budgets table 'not run' for the very same settings."""
    done = study_collect(tmp_path, monkeypatch, lambda lines: [line for line in lines
                                                               if json.loads(line)["setting"] != "FT"])
    assert done["code"] == 0, done
    budgets = (done["out"] / "tablestudy.md").read_text().split("**Budgets**")[1]
    assert "| FT-EMA | no FT run | no FT run | no FT run |" in budgets
    assert "not run" not in budgets.split("planned runs")[0]


def test_a_paired_difference_over_fewer_seeds_than_the_setting_has_says_its_n(tmp_path, monkeypatch):
    """--collect with one FT seed's record missing (a run killed, a line lost): FT-EMA's Δ was the paired difference
    over the 2 seeds both have, its interval a 2-seed one, shown beside 'seeds 3' with no word, and the CSV and the
    demo's headline said n=3 for it."""
    done = study_collect(tmp_path, monkeypatch, lambda lines: [
        line for line in lines if (json.loads(line)["setting"], json.loads(line)["seed"]) != ("FT", 2)])
    assert done["code"] == 0, done
    table = (done["out"] / "tablestudy.md").read_text()
    first, budgets = table.split("**Selection protocols")[0], table.split("**Budgets**")[1]
    (row,) = [line for line in first.splitlines() if line.startswith("| FT-EMA |")]
    assert "| 3 |" in row and "], n=2 |" in row, row
    (row,) = [line for line in budgets.splitlines() if line.startswith("| FT-EMA |")]
    assert row.count("], n=2 ") == 3, row
    (row,) = [line for line in first.splitlines() if line.startswith("| DeFT |")]  # 2 seeds, both FT's: as before
    assert "n=" not in row, row
    assert "FT-EMA +0.37 [+0.37, +0.37] (n=2)" in headline(done["out"])


def test_collect_on_records_of_other_arguments_names_the_studys_own_flags(tmp_path, monkeypatch, capsys):
    """study.py --collect on a folder of other records (another --iters, a reproduce.py sweep's --out) said they
    were of other '--table, --iters, --data, --weights, ...': three flags the study does not have."""
    import ldt.sr.demo as demo
    from ldt.sr.study import main

    monkeypatch.setattr(demo, "pretrain_stage", lambda *args, **kwargs: tmp_path / "net.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"options_hash": "0123abcd", "setting": "FT"}) + "\n")
    assert main(["--collect", "--iters", "4", "--val-freq", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("(it holds 1 record(s) of other arguments: --iters, --val-freq must be those of the study); "
                        "nothing written"), err
