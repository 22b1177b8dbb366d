"""The segmentation runner (``ldt.segmentation.train`` / ``records`` / ``pretrain`` / ``__main__``): every method,
selection hygiene, records and tables, the CLI's checks, skip-finished, the demo's cached pre-training.

Everything runs on a tiny generated dataset (32x64 images, 6 train / 2 val per domain) with ResNet-18, a 16-channel
head and a few steps, so the whole file takes seconds on one CPU thread.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision import models

import ldt.segmentation.__main__ as main_module
import ldt.segmentation.data as data_module
import ldt.segmentation.pretrain as pretrain_module
import ldt.segmentation.train as train_module
from ldt.core import method_class, stable_count
from ldt.segmentation.__main__ import main
from ldt.segmentation.classes import CLASS_NAMES
from ldt.segmentation.deeplabv3plus import DeepLabV3Plus, load_backbone_weights
from ldt.segmentation.generated import GeneratedConfig, build_generated, domain_root
from ldt.segmentation.pretrain import PretrainConfig, pretrain_backbone, pretrain_summary
from ldt.segmentation.records import build_table, class_csv, sweep_records, to_csv, to_markdown
from ldt.segmentation.train import METHODS, Domain, RunConfig, holdout_splits, run, scan_domains
from ldt.sweep import RESULTS_FILE, Stat
from tests.conftest import stop_and_resume

TINY = GeneratedConfig(height=32, width=64, train_per_domain=6, val_per_domain=2, pretrain_train=4, pretrain_val=2,
                       domains=("clean", "fog", "night"))
# A few steps of everything: 2 warm-up steps, 2 probe batches, 4 training steps, selection every 2 steps.
FAST = dict(backbone="resnet18", steps=4, batch_size=2, crop_size=(32, 32), warmup_steps=2, probe_batches=2,
            eval_every=2, interval=2, head_channels=16, holdout_fraction=0.34, eval_window=(32, 32),
            eval_stride=(16, 16), eval_max_side=None)


def flag(name: str, value) -> str:
    shown = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return f"--{name.replace('_', '-')}={shown}"


FAST_FLAGS = [flag(name, value) for name, value in FAST.items() if name != "backbone"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_generated(tmp_path_factory.mktemp("data") / "streets", TINY)


def domain(root: Path, name: str) -> Domain:
    return Domain(name, "cityscapes", str(domain_root(root, name)))


def fast_config(root: Path, **changes) -> RunConfig:
    return RunConfig(sources=(domain(root, "clean"),), targets=(domain(root, "fog"), domain(root, "night")),
                     **{**FAST, **changes})


def specs(root: Path) -> list[str]:
    """The tiny data as datasets on disk (the CLI's LAYOUT:NAME=ROOT form)."""
    return ["--source", f"cityscapes:clean={domain_root(root, 'clean')}",
            "--targets", f"cityscapes:fog={domain_root(root, 'fog')}", f"cityscapes:night={domain_root(root, 'night')}"]


def never(*args, **kwargs):
    raise AssertionError("must not run")


# ---- every method --------------------------------------------------------------------------------------------------
# Every method runs in CI; the everyday suite keeps one of each kind (no partition, score partition, one network).
EVERYDAY_METHODS = ("ft", "ldt_dpu", "ldt_s")


@pytest.mark.parametrize("method", [m if m in EVERYDAY_METHODS else pytest.param(m, marks=pytest.mark.slow)
                                    for m in METHODS])
def test_every_method_runs_a_few_steps(tiny, method):
    record = run(fast_config(tiny, method=method, steps=2, eval_every=1))
    assert record["method"] == method and record["targets"] == ["fog", "night"]
    assert [h["step"] for h in record["history"]] == [1, 2]
    best = max(record["history"], key=lambda h: h["score"])  # max() keeps the first of equal scores, as selection
    assert record["selected_step"] == best["step"] and record["holdout_miou"] == best["score"]
    assert record["images"] == {"train": {"clean": 4}, "holdout": {"clean": 2}, "target": {"fog": 2, "night": 2}}
    for name in ("fog", "night"):
        result = record["target_results"][name]
        assert 0.0 <= result["miou"] <= 100.0 and record["target_miou"][name] == result["miou"]
        assert list(result["iou"]) == list(CLASS_NAMES)
    partition = record["partition"]
    source = method_class(method).partition_source
    assert (partition is None) == (source == "none")
    if source == "head":  # DeFT: backbone stable, the whole head unstable
        assert set(partition["stable"]) == {"backbone"} and set(partition["unstable"]) == {"aspp", "decoder", "classifier"}
    if source == "score":  # LDT: 70 % of the tensors unstable, wherever they are
        stable, unstable = sum(partition["stable"].values()), sum(partition["unstable"].values())
        assert stable == stable_count(stable + unstable, 0.7) and partition["unstable"].get("backbone", 0) > 0
    options = record["hparams"]["method_options"]
    assert ("warmup" in options) == (method_class(method).warmup_rule != "never")
    assert ("ema_decay" in options) == (method == "ft_ema") and "seed" not in options


def test_two_sources_train_together_and_select_on_both_held_out_parts(tiny):
    config = replace(fast_config(tiny, method="ft", steps=2, eval_every=1),
                     sources=(domain(tiny, "clean"), domain(tiny, "fog")), targets=(domain(tiny, "night"),))
    batches = train_module.source_stream(
        {d.name: data_module.SegmentationDataset(d.scan("train"), augment=data_module.Augment((32, 32)), seed=0)
         for d in config.sources}, batch_size=2, seed=0, device=torch.device("cpu"))
    images, labels = next(batches)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 32, 32)  # batch_size crops of each source
    record = run(config)
    assert record["images"]["train"] == {"clean": 4, "fog": 4} and set(record["holdout_per_domain"]) == {"clean", "fog"}
    assert record["holdout_miou"] == pytest.approx(sum(record["holdout_per_domain"].values()) / 2)
    assert list(record["target_miou"]) == ["night"]


def test_options_hash_ignores_what_the_method_does_not_read(tiny):
    ft, lpft = fast_config(tiny, method="ft"), fast_config(tiny, method="lpft")
    assert ft.hparams() == fast_config(tiny, method="ft", warmup_steps=7, unstable_ratio=0.3).hparams()
    assert lpft.hparams() != fast_config(tiny, method="lpft", warmup_steps=7).hparams()
    assert fast_config(tiny, method="ldt_dpu").hparams() != fast_config(tiny, method="ldt_dpu", unstable_ratio=0.3).hparams()
    assert ft.hparams()["sources"][0]["root"] == str(domain_root(tiny, "clean").resolve())


def test_head_warmup_trains_the_head_with_the_backbone_in_eval_mode():
    torch.manual_seed(0)
    model = DeepLabV3Plus("resnet18", aspp_channels=16, decoder_channels=16)
    batch = (torch.randn(2, 3, 32, 32), torch.randint(0, 19, (2, 32, 32)))
    statistics = model.backbone.bn1.running_mean.clone()
    head_statistics = model.aspp.branches[0][1].running_mean.clone()
    train_module.frozen_backbone_loss(model, batch).backward()
    assert not model.backbone.training and model.aspp.training and model.decoder.training
    assert torch.equal(model.backbone.bn1.running_mean, statistics)  # the pre-trained statistics stay
    assert not torch.equal(model.aspp.branches[0][1].running_mean, head_statistics)  # the new head's learn


# ---- model selection never reads a target domain -------------------------------------------------------------------
def test_selection_never_reads_a_target_domain(tiny, monkeypatch):
    config = fast_config(tiny, method="ldt_dpu", seed=3)
    splits = holdout_splits(config, scan_domains(config.sources, "train"))
    (train, held), = splits.values()
    targets = scan_domains(config.targets, "val")
    phase, reads, tested = ["train"], [], []
    read_image, evaluate_targets = data_module.read_image, train_module.evaluate_targets

    def spy_read(path):
        reads.append((phase[0], path))
        return read_image(path)

    def spy_targets(network, *args, **kwargs):
        tested.append({k: v.clone() for k, v in network.state_dict().items()})
        phase[0] = "test"
        try:
            return evaluate_targets(network, *args, **kwargs)
        finally:
            phase[0] = "after"

    monkeypatch.setattr(data_module, "read_image", spy_read)
    monkeypatch.setattr(train_module, "evaluate_targets", spy_targets)
    record = run(config)

    before = [path for ph, path in reads if ph == "train"]
    assert set(before) <= {s.image for s in train} | {s.image for s in held}  # warm-up, probe, training, selection
    held_reads = [path for path in before if path in {s.image for s in held}]
    assert sorted(held_reads) == sorted(2 * [s.image for s in held])  # selection at steps 2 and 4, nothing else
    test_reads = [path for ph, path in reads if ph == "test"]
    assert sorted(test_reads) == sorted(s.image for split in targets.values() for s in split.samples)  # each once
    assert reads[-len(test_reads):] == [("test", p) for p in test_reads] and not [p for ph, p in reads if ph == "after"]
    assert len(tested) == 1 and record["target_miou"] == {n: r["miou"] for n, r in record["target_results"].items()}


def test_the_tested_network_is_the_selected_one(tiny, monkeypatch):
    """Make step 2 the clear winner (step 4 scores 0): the targets must see step 2's deployed weights."""
    scores, seen, tested = iter([90.0, 0.0]), [], []

    def scripted(holdout, config, device, workers):
        def validate(network):
            seen.append({k: v.clone() for k, v in network.state_dict().items()})
            return next(scores), {"per_domain": {"clean": 0.0}}
        return validate

    def spy_targets(network, targets, *args):
        tested.append({k: v.clone() for k, v in network.state_dict().items()})
        return {name: {"miou": 1.0, "pixel_accuracy": 1.0, "iou": {}} for name in targets}

    monkeypatch.setattr(train_module, "holdout_validation", scripted)
    monkeypatch.setattr(train_module, "evaluate_targets", spy_targets)
    record = run(fast_config(tiny, method="ldt_dpu"))
    assert record["selected_step"] == 2 and record["holdout_miou"] == 90.0 and len(seen) == 2
    assert all(torch.equal(tested[0][k], seen[0][k]) for k in seen[0])
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])


# ---- records and tables --------------------------------------------------------------------------------------------
def hand_record(method: str, seed: int, miou: dict[str, float], **hparams) -> dict:
    return {
        "options_hash": f"{method}-{seed}-{sorted(hparams.items())}", "sources": ["cityscapes"], "backbone": "resnet50",
        "method": method, "seed": seed, "targets": list(miou), "target_miou": miou,
        "target_results": {t: {"miou": v, "iou": {"road": v + 10, "train": None}} for t, v in miou.items()},
        "hparams": {"method": method, "seed": seed, **hparams},
    }


def test_table_mean_and_standard_error_from_hand_made_records():
    values = {"bdd100k": [40.0, 42.0, 47.0], "mapillary": [50.0, 50.0, 56.0]}
    records = [hand_record("ldt_dpu", s, {t: v[s] for t, v in values.items()}) for s in range(3)]
    records += [hand_record("ft", 0, {"bdd100k": 10.0, "mapillary": 20.0}),
                hand_record("ft", 0, {"bdd100k": 30.0, "mapillary": 35.0})]  # a rerun of a seed replaces it
    rows = build_table(records, {"method": METHODS})
    assert [r["method"] for r in rows] == ["ft", "ldt_dpu"]
    ft, ldt = rows
    assert ft["columns"] == ["bdd100k", "mapillary"] and ft["bdd100k"] == Stat(30.0, None, 1) and ft["Mean"] == Stat(32.5, None, 1)
    assert (ldt["bdd100k"].mean, ldt["bdd100k"].n) == (43.0, 3)
    assert ldt["bdd100k"].se == pytest.approx(math.sqrt(26 / 2) / math.sqrt(3))  # deviations -3, -1, 4
    assert ldt["mapillary"].mean == 52.0 and ldt["mapillary"].se == pytest.approx(2.0)  # sd sqrt(12), over sqrt(3)
    per_seed = [45.0, 46.0, 51.5]  # Mean: per-seed mean over targets, then over seeds
    assert ldt["Mean"].mean == pytest.approx(47.5)
    assert ldt["Mean"].se == pytest.approx(math.sqrt(sum((v - 47.5) ** 2 for v in per_seed) / 2 / 3))
    markdown = to_markdown(rows)
    assert "| Backbone | Method | Seeds | bdd100k | mapillary | Mean |" in markdown
    assert "| resnet50 | LDT+DPU | 3 | 43.00 ± 2.08 | 52.00 ± 2.00 | 47.50 ± 2.02 |" in markdown
    assert "| resnet50 | FT | 1 | 30.00 | 35.00 | 32.50 |" in markdown  # one seed: no standard error
    assert "### Source cityscapes:" in markdown
    csv_lines = to_csv(rows).splitlines()
    assert csv_lines[0] == "sources,backbone,method,config,target,miou,se,n" and len(csv_lines) == 1 + 2 * 3
    assert any(line.startswith("cityscapes,resnet50,ldt_dpu,") and line.endswith(",mapillary,52.0,2.0,3")
               for line in csv_lines)
    classes = class_csv(records, {"method": METHODS}).splitlines()
    assert classes[0] == "sources,backbone,method,config,target,class,iou,se,n"
    assert any(line.endswith(",bdd100k,road,53.0," + f"{ldt['bdd100k'].se},3") for line in classes)
    assert not any(",train," in line for line in classes)  # absent class: no line
    other = build_table(records + [hand_record("ldt_dpu", 0, {"bdd100k": 1.0, "mapillary": 2.0}, lr=1.0)])
    assert len(other) == 3 and "| Config |" in to_markdown(other)  # another configuration: another row, told apart


# ---- command line --------------------------------------------------------------------------------------------------
def test_cli_rejects_bad_input_in_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(main_module, "run", never)
    monkeypatch.setattr(main_module, "pretrain_backbone", never)
    monkeypatch.setattr(main_module, "DEFAULT_ROOT", tiny)  # bare names: the generated domains of the tiny data
    monkeypatch.setattr(main_module, "DEMO_DATA", TINY)
    monkeypatch.setattr(main_module, "build_generated", lambda root, config: root)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    resnet50 = tmp_path / "resnet50.pth"
    torch.save(models.resnet50(weights=None).state_dict(), resnet50)
    diverged = models.resnet18(weights=None).state_dict()
    diverged["layer1.0.bn1.running_var"][0] = math.nan
    torch.save(diverged, tmp_path / "diverged.pth")
    out = ["--out", str(tmp_path / "out"), "--no-progress", "--no-pretrain"]
    cases = [
        (["--source", "cityscapes=" + str(tmp_path / "nowhere"),
          "--targets", f"cityscapes:fog={domain_root(tiny, 'fog')}"],
         f"folder {tmp_path / 'nowhere'}/leftImg8bit/train does not exist"),
        (["--source", f"kitti={tiny}", "--targets", f"bdd100k={tiny}"], "unknown layout 'kitti'"),
        (["--source", f"cityscapes={tiny}"], "--targets: name the target domains"),
        (["--source", "clean", "--targets", "rain"], "unknown generated domain 'rain'"),
        (["--targets", "clean"], "['clean'] given twice"),
        (["--methods", "ft", "sdg"], "unknown method 'sdg'"),
        (["--methods", "ldt"], "unknown method 'ldt' (did you mean 'ldt_s'?)"),
        (["--backbones", "vgg"], "unknown backbone 'vgg'"),
        (["--weights", str(tmp_path / "none.pth")], "none.pth does not exist"),
        (["--weights", str(text)], f"{text} is not a PyTorch checkpoint"),
        (["--weights", f"resnet18={resnet50}"], f"--weights resnet18: {resnet50} does not fit ResNetBackbone"),
        (["--weights", "a.pth", "b.pth"], "write BACKBONE=FILE for each"),
        (["--weights", str(tmp_path / "diverged.pth")], "'layer1.0.bn1.running_var' has NaN/inf values"),  # a traceback
        (["--steps", "0"], "error: --steps must be positive"),
        (["--batch-size", "1"], "error: --batch-size must be at least 2"),
        (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
        (["--crop-size", "64y64"], "argument --crop-size: invalid size N or HxW value: '64y64'"),
        (["--crop-size", "100000"], "--crop-size 100000x100000: larger than every source image after the training "
                                    "rescale (up to x2), so it would crop padding only: use at most "),
        (["--eval-window", "100000"], "--eval-window 100000x100000: more than twice every evaluation image (the "
                                      "largest is "),
        (["--unstable-ratio", "1.5"], "error: --unstable-ratio: must be < 1"),
        (["--probe-batches", "0"], "error: --probe-batches: must be > 0"),
        (["--ema-weight", "1"], "error: --ema-weight: must be < 1"),
        (["--seeds", "3000000000"], "error: --seeds: must be <= 2147483647"),
        (["--holdout-fraction", "0"], "error: --holdout-fraction must be in (0, 1)"),
        (["--eval-every", "0"], "error: --eval-every must be positive"),
        (["--warmup-steps", "-1"], "error: --warmup-steps must be >= 0"),
        (["--output-stride", "4"], "error: --output-stride must be 8 or 16"),
        (["--head-channels", "0"], "error: --head-channels must be positive"),
        (["--eval-max-side", "0"], "error: --eval-max-side must be positive"),
        (["--eval-window", "32", "--eval-stride", "64"],
         "error: --eval-stride 64x64 must be between 1 and --eval-window 32x32"),
        (["--methods", "lpft", "--warmup-steps", "0"],
         "error: lpft: --warmup-steps: lpft needs its head warm-up: must be > 0"),
        (["--lr", "-1"], "error: --lr must be positive"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for argv, message in cases:
        try:
            code = main(argv + out)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
    assert main(["--collect", str(tmp_path / "empty")]) == 2 and "no records" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_target_label_with_invalid_values_is_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    """A target label holding a value its layout does not allow (a labelIds file under a labelTrainIds name) passed
    the header scan and failed only in the test, after the whole training of the first run. Every target label is
    decoded before training now, and each such file is named (values too), exit 2, --out untouched."""
    import shutil

    import numpy as np
    from PIL import Image

    monkeypatch.setattr(main_module, "run", never)
    fog = shutil.copytree(domain_root(tiny, "fog"), tmp_path / "fog")
    labels = sorted(fog.glob("gtFine/val/*/*_labelTrainIds.png"))
    for path, value in zip(labels, (26, 200)):
        ids = np.asarray(Image.open(path)).copy()
        ids[0, :2] = value
        Image.fromarray(ids).save(path)
    argv = ["--source", f"cityscapes:clean={domain_root(tiny, 'clean')}", "--targets", f"cityscapes:fog={fog}",
            "--out", str(tmp_path / "out"), "--no-progress", *FAST_FLAGS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert (f"cityscapes val at {fog}: 2 labels with values the layout does not allow: {labels[0]} (values [26]), "
            f"{labels[1]} (values [200]) (expected train ids 0..18 or 255") in err
    assert not (tmp_path / "out").exists()


def test_a_source_label_with_invalid_values_is_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    """A source label holding a value outside the label space passed the start-up check and failed at the first
    batch, after the model was built; up to SOURCE_LABELS_CHECKED labels of each source are decoded first now."""
    import shutil

    import numpy as np
    from PIL import Image

    monkeypatch.setattr(main_module, "run", never)
    clean = shutil.copytree(domain_root(tiny, "clean"), tmp_path / "clean")
    label = sorted(clean.glob("gtFine/train/*/*_labelTrainIds.png"))[-1]
    ids = np.asarray(Image.open(label)).copy()
    ids[0, :2] = 26
    Image.fromarray(ids).save(label)
    argv = ["--source", f"cityscapes:clean={clean}", "--targets", f"cityscapes:fog={domain_root(tiny, 'fog')}",
            "--out", str(tmp_path / "out"), "--no-progress", *FAST_FLAGS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: --source clean: cityscapes train at {clean}: 1 labels with values the layout does not allow: "
        f"{label} (values [26]) "
        "(expected train ids 0..18 or 255; make *_labelTrainIds.png with cityscapesScripts' createTrainIdLabelImgs)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_tables_come_from_records(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = [*specs(tiny), "--out", str(out), "--backbones", "resnet18", "--methods", "ft", "deft", "--seeds", "0",
            "--no-progress", *FAST_FLAGS]
    assert main(argv) == 0
    records = sweep_records(out).all()
    assert [r["method"] for r in records] == ["ft", "deft"] and all(r["hparams"]["weights"] is None for r in records)
    table = (out / "table.md").read_text()
    assert "| resnet18 | FT | 1 |" in table and "| resnet18 | DeFT | 1 |" in table
    assert "| Backbone | Method | Seeds | fog | night | Mean |" in table
    saved = {name: (out / name).read_text() for name in ("table.md", "table.csv", "classes.csv")}
    for name in saved:
        (out / name).unlink()
    assert main(["--collect", str(out)]) == 0
    assert {name: (out / name).read_text() for name in saved} == saved

    monkeypatch.setattr(main_module, "run", never)
    capsys.readouterr()
    assert main(argv) == 0
    assert "2 runs, 2 already recorded" in capsys.readouterr().out and len(sweep_records(out).all()) == 2

    lines = (out / RESULTS_FILE).read_text().splitlines(keepends=True)  # lose the last run: only it runs again
    (out / RESULTS_FILE).write_text("".join(lines[:-1]))
    monkeypatch.setattr(main_module, "run", run)
    assert main(argv) == 0
    assert "2 runs, 1 already recorded" in capsys.readouterr().out
    assert [r["options_hash"] for r in sweep_records(out).all()] == [json.loads(line)["options_hash"] for line in lines]
    assert (out / "table.md").read_text() == table  # deterministic runs: the same table


# ---- the demo's generated pre-training -----------------------------------------------------------------------------
TINY_PRETRAIN = PretrainConfig(steps=2, batch_size=2, crop_size=(32, 32), head_channels=16)


def test_pretraining_is_cached_and_loads_as_a_backbone(tiny, tmp_path, monkeypatch):
    path = pretrain_backbone(tiny, TINY_PRETRAIN, root=tmp_path)
    assert path == TINY_PRETRAIN.weights_path(TINY.digest(), tmp_path)
    summary = pretrain_summary(path)
    assert summary["steps"] == 2 and summary["data"] == TINY.digest() and 0.0 <= summary["val_miou"] <= 100.0
    monkeypatch.setattr(pretrain_module, "train_backbone", never)
    assert pretrain_backbone(tiny, TINY_PRETRAIN, root=tmp_path) == path  # cached
    assert PretrainConfig(steps=3).weights_path(TINY.digest(), tmp_path) != path  # other settings, another file
    assert TINY_PRETRAIN.weights_path("other data", tmp_path) != path  # other data, another file
    saved = torch.load(path, weights_only=True)
    assert "conv1.weight" in saved and not any(k.startswith(("aspp.", "fc.")) for k in saved)  # torchvision names
    torch.manual_seed(0)
    model = DeepLabV3Plus("resnet18", aspp_channels=32, decoder_channels=32)  # any head width: the head is new
    load_backbone_weights(model, path)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.slow
def test_demo_pretrains_once_and_fine_tunes_the_cached_backbone(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo's relative datasets/ and results/ folders
    monkeypatch.setattr(main_module, "DEMO_DATA", TINY)
    trainings = []
    train_backbone = pretrain_module.train_backbone
    monkeypatch.setattr(pretrain_module, "train_backbone",
                        lambda root, config, progress: trainings.append(config) or train_backbone(root, config, progress))
    argv = ["--methods", "lpft", "--seeds", "0", "--targets", "fog", "--no-progress", "--pretrain-steps", "2",
            *FAST_FLAGS]
    weights = PretrainConfig(steps=2).weights_path(TINY.digest())
    out = Path("results/segmentation/generated_streets")

    assert main(argv) == 0
    assert [c.steps for c in trainings] == [2] and weights.is_file()
    assert f"resnet18 backbone: pre-trained weights {weights} (trained" in capsys.readouterr().out
    assert [r["hparams"]["weights"] for r in sweep_records(out).all()] == [str(weights.resolve())]

    assert main(argv) == 0  # second call: cached weights, finished run
    shown = capsys.readouterr().out
    assert len(trainings) == 1 and "(cached;" in shown and "1 runs, 1 already recorded" in shown

    assert main(argv + ["--no-pretrain"]) == 0
    assert len(trainings) == 1 and "pre-trained weights" not in capsys.readouterr().out
    assert [r["hparams"]["weights"] for r in sweep_records(out).all()] == [str(weights.resolve()), None]


# ---- hostile input (shared runner checks, cached backbone, foreign records) ----------------------------------------
def test_a_truncated_cached_backbone_is_one_line_saying_to_delete_it(tiny, tmp_path, monkeypatch):
    path = TINY_PRETRAIN.weights_path(TINY.digest(), tmp_path)
    torch.save(models.resnet18(weights=None).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(pretrain_module, "train_backbone", never)
    with pytest.raises(ValueError, match=rf"cached pre-trained backbone: .*; delete {path} to pre-train it again"):
        pretrain_backbone(tiny, TINY_PRETRAIN, root=tmp_path)



@pytest.mark.parametrize("foreign", ["resnet50", "a tensor"])
def test_a_foreign_cached_backbone_is_one_line_saying_to_delete_it(tiny, tmp_path, monkeypatch, foreign):
    """A cache replaced by another network's weights used to pass as readable and fail inside the first run."""
    path = TINY_PRETRAIN.weights_path(TINY.digest(), tmp_path)
    torch.save(models.resnet50(weights=None).state_dict() if foreign == "resnet50" else {"x": torch.zeros(3)}, path)
    monkeypatch.setattr(pretrain_module, "train_backbone", never)
    with pytest.raises(ValueError, match=rf"cached pre-trained backbone: .*does not fit.*; delete {path} to "
                                         "pre-train it again"):
        pretrain_backbone(tiny, TINY_PRETRAIN, root=tmp_path)


def test_cli_checks_device_workers_seeds_and_drops_repeats(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(main_module, "run", never)
    out = ["--out", str(tmp_path / "out"), "--no-progress", *specs(tiny)]
    for argv, message in [(["--device", "foo"], "--device foo: not a torch device"),
                          (["--workers", "-1"], "--workers must be 0"), (["--seeds", "-1"], "--seeds must be")]:
        assert main(argv + out) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    args = main_module.parse_args([*out, "--backbones", "resnet18", "--methods", "ft", "ft", "--seeds", "0", "0",
                                   *FAST_FLAGS])
    _, configs, _, _ = main_module.plan(args)
    assert len(configs) == 1
    shown = capsys.readouterr().out
    assert "--seeds: repeated 0 dropped" in shown and "--methods: repeated ft dropped" in shown


def test_tables_skip_a_classification_record_with_a_warning(tmp_path):
    from ldt.segmentation.records import write_tables

    lines = [hand_record("ft", 0, {"fog": 10.0}), {"options_hash": "c", "dataset": "toy", "test_accuracy": {}}]
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match=rf"{tmp_path / RESULTS_FILE}:2: a record without 'sources'"):
        assert "| resnet50 | FT | 1 | 10.00 | 10.00 |" in write_tables(tmp_path)


@pytest.mark.parametrize("field, value, warning", [
    ("seed", "1", "'seed' is of type str, not int"), ("sources", "clean", "'sources' is of type str, not list"),
    ("seed", True, "'seed' is of type bool, not int"),  # JSON true was seed 1, a bool being an int in Python
    ("backbone", None, "'backbone' is of type NoneType, not str"),
    # JSON true for an mIoU was counted as 1.0 (a number beside the others), false as 0.0
    ("target_miou", {"fog": True}, "the table cannot read (TypeError: expected a number, got bool True")])
def test_a_record_edited_to_another_type_is_skipped_with_a_warning(tmp_path, field, value, warning):
    """A hand-edited field that tabulated alone but not with the other records (two types of seed are not sorted)
    ended every --collect and sweep in a traceback."""
    from ldt.segmentation.records import write_tables

    lines = [hand_record("ft", 0, {"fog": 10.0}), {**hand_record("ft", 1, {"fog": 20.0}), field: value}]
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match=rf"{tmp_path / RESULTS_FILE}:2: a record (whose )?{re.escape(warning)}"):
        assert "| resnet50 | FT | 1 | 10.00 | 10.00 |" in write_tables(tmp_path)


# ---- a run stopped midway ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, workers", [("ldt_dpu", 0), pytest.param("ft_ema", 2, marks=pytest.mark.slow)])
def test_a_stopped_run_resumes_from_its_state_to_the_same_record(tiny, tmp_path, monkeypatch, default_sigint,
                                                                 method, workers):
    """SIGTERM after 3 of 6 training steps; the rerun continues the saved state and gives the uninterrupted run's
    record (the crops are seeded by position: the same with loader processes too)."""
    config = fast_config(tiny, method=method, steps=6)
    straight = run(config, workers=workers)

    def run_with_workers(config, **kwargs):
        return run(config, **{**kwargs, "workers": workers})

    before = 2 + 2 if method == "ldt_dpu" else 0  # warm-up and probe batches
    record, printed, drawn = stop_and_resume(tmp_path, config, run_with_workers, monkeypatch, stop_at=before + 3)
    assert f"resuming at step 3 from {tmp_path}" in printed and drawn == 3
    for key in ("target_results", "holdout_miou", "holdout_per_domain", "selected_step", "history", "partition"):
        assert record[key] == straight[key], key


def test_the_data_check_names_the_problems_of_every_split_at_once(tiny, tmp_path, monkeypatch, capsys):
    """The start-up data check stopped at the first split with a problem: a user with a bad source label, a
    missing target folder and a bad target label learnt of one per attempt. Every split is checked now and the one
    error has a line per split, each naming the split and its files; --out stays untouched."""
    import shutil

    import numpy as np
    from PIL import Image

    monkeypatch.setattr(main_module, "run", never)

    def with_bad_label(name: str, split: str) -> tuple[Path, Path]:
        copy = shutil.copytree(domain_root(tiny, name), tmp_path / name)
        label = sorted(copy.glob(f"gtFine/{split}/*/*_labelTrainIds.png"))[-1]
        ids = np.asarray(Image.open(label)).copy()
        ids[0, :2] = 26
        Image.fromarray(ids).save(label)
        return copy, label

    clean, clean_label = with_bad_label("clean", "train")
    fog, fog_label = with_bad_label("fog", "val")
    gone = tmp_path / "gone"
    argv = ["--source", f"cityscapes:clean={clean}", "--targets", f"cityscapes:fog={fog}", f"cityscapes:gone={gone}",
            "--out", str(tmp_path / "out"), "--no-progress", *FAST_FLAGS]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines
    # each named after the flag and the domain it was given as
    assert lines[0].startswith(f"error: --source clean: cityscapes train at {clean}: 1 labels with values the layout "
                               f"does not allow: {clean_label} (values [26])"), lines
    assert lines[1].startswith(f"error: --targets fog: cityscapes val at {fog}: 1 labels with values the layout does "
                               f"not allow: {fog_label} (values [26])"), lines
    assert lines[2] == (f"error: --targets gone: cityscapes val: folder {gone / 'leftImg8bit/val'} does not exist "
                        f"(root {gone})"), lines
    assert not (tmp_path / "out").exists()


def test_label_check_names_every_undecodable_label_with_the_bad_values(tiny, tmp_path):
    """check_label_values stopped at the first label it could not decode: the others, and the labels with values
    the layout does not allow, went unnamed until the next attempt."""
    import shutil

    import numpy as np
    from PIL import Image

    from ldt.segmentation.data import SegmentationDataError, check_label_values, scan_split

    fog = shutil.copytree(domain_root(tiny, "fog"), tmp_path / "fog")
    split = scan_split(fog, "cityscapes", "val")
    first, second = (sample.label for sample in split.samples)
    data = bytearray(first.read_bytes())  # the header and end marker read (the scan passes), the pixels do not
    middle = len(data) // 2
    data[middle - 8: middle + 8] = bytes(16)
    first.write_bytes(bytes(data))
    ids = np.asarray(Image.open(second)).copy()
    ids[0, :2] = 26
    Image.fromarray(ids).save(second)
    with pytest.raises(SegmentationDataError) as info:
        check_label_values(split)
    message = str(info.value)
    assert f"1 labels that cannot be decoded: {first} (" in message, message
    assert f"1 labels with values the layout does not allow: {second} (values [26])" in message, message
    assert message.startswith(f"cityscapes val at {fog}: "), message


def ignore_labels(samples) -> None:
    """Rewrite the labels of ``samples`` as all-ignore (255) images of the same size."""
    import numpy as np
    from PIL import Image

    for sample in samples:
        with Image.open(sample.label) as label:
            Image.fromarray(np.full((label.height, label.width), 255, np.uint8)).save(sample.label)


def test_a_batch_with_no_labelled_pixel_is_a_zero_loss_not_nan():
    """A batch of crops holding only ignored pixels (an unlabelled image, a crop inside an ignored region) made the
    mean cross-entropy 0/0 = NaN, and the run stopped in a FloatingPointError traceback."""
    torch.manual_seed(0)
    model = DeepLabV3Plus("resnet18", aspp_channels=16, decoder_channels=16)
    ignored = (torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), 255))
    for loss_fn in (train_module.pixel_cross_entropy, train_module.frozen_backbone_loss):
        model.zero_grad()
        loss = loss_fn(model, ignored)
        loss.backward()
        assert loss.item() == 0.0
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_run_checks_its_data_as_the_cli_does_and_the_cli_only_once(tiny, tmp_path, monkeypatch):
    """run() called directly (the Python API) skipped the CLI's data check: a source whose training images hold only
    ignore trained on a zero loss to a record, a crop larger than every image ran out of memory at the first step.
    run() checks its data now, before building the model; the CLI, which checked every run already, not again."""
    import shutil

    root = tmp_path / "streets"
    for name in ("clean", "fog", "night"):
        shutil.copytree(domain_root(tiny, name), domain_root(root, name))
    monkeypatch.setattr(train_module, "build_model", never)
    with pytest.raises(ValueError, match=r"--crop-size 100000x100000: larger than every source image"):
        run(fast_config(root, method="ft", crop_size=(100000, 100000)))
    config = fast_config(root, method="ft")
    train, _ = holdout_splits(config, scan_domains(config.sources, "train"))["clean"]
    ignore_labels(train)
    with pytest.raises(data_module.SegmentationDataError, match=r"^clean \(cityscapes train at .*\): none of the "
                       rf"{len(train)} training labels of seed 0 holds a labelled pixel"):
        run(config)
    monkeypatch.undo()
    shutil.rmtree(domain_root(root, "clean"))
    shutil.copytree(domain_root(tiny, "clean"), domain_root(root, "clean"))
    calls = []
    real = train_module.check_data
    for module in (train_module, main_module):
        monkeypatch.setattr(module, "check_data", lambda configs: calls.append(len(configs)) or real(configs))
    argv = ["--source", f"cityscapes:clean={domain_root(root, 'clean')}",
            "--targets", f"cityscapes:fog={domain_root(root, 'fog')}", "--methods", "ft", "--seeds", "0", "1",
            "--out", str(tmp_path / "out"), "--no-progress", *FAST_FLAGS, "--steps", "1", "--eval-every", "1"]
    assert main(argv) == 0 and calls == [2]  # the plan's check of both runs, none in the runs


def test_a_target_with_no_labelled_pixel_is_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    """A target whose labels hold only ignore (255) has no mIoU: the sweep trained, then tabled its column as '–'
    with no word of why. Its labels are decoded before training anyway; such a split is named now, exit 2."""
    import shutil

    from ldt.segmentation.data import scan_split

    monkeypatch.setattr(main_module, "run", never)
    fog = shutil.copytree(domain_root(tiny, "fog"), tmp_path / "fog")
    ignore_labels(scan_split(fog, "cityscapes", "val").samples)
    argv = ["--source", f"cityscapes:clean={domain_root(tiny, 'clean')}", "--targets", f"cityscapes:fog={fog}",
            "--out", str(tmp_path / "out"), "--no-progress", *FAST_FLAGS]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --targets fog: cityscapes val at {fog}: none of its 2 labels holds a labelled pixel (only ignore "
        "255), so it has no mIoU"]
    assert not (tmp_path / "out").exists()


def test_a_held_out_part_with_no_labelled_pixel_is_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    """A source whose held-out images (of one seed) hold only ignore gave the selection no score: a TypeError
    traceback at the first selection point, after the warm-up and the first steps."""
    import shutil

    monkeypatch.setattr(main_module, "run", never)
    clean = shutil.copytree(domain_root(tiny, "clean"), tmp_path / "clean")
    config = replace(fast_config(tiny), sources=(Domain("clean", "cityscapes", str(clean)),), seed=1)
    _, held = holdout_splits(config, scan_domains(config.sources, "train"))["clean"]
    ignore_labels(held)
    argv = ["--source", f"cityscapes:clean={clean}", "--targets", f"cityscapes:fog={domain_root(tiny, 'fog')}",
            "--out", str(tmp_path / "out"), "--no-progress", "--seeds", "0", "1", *FAST_FLAGS]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: clean: none of the {len(held)} held-out labels of seed 1 holds a labelled pixel (only ignore 255), "
        f"so selection has no score: raise --holdout-fraction (now {FAST['holdout_fraction']})"]
    assert not (tmp_path / "out").exists()


def test_a_misspelled_layout_domain_backbone_or_criterion_gets_a_did_you_mean(tiny, tmp_path, monkeypatch, capsys):
    """Methods got the registry's hint (unknown_choice); layouts, generated domains, backbones and criteria were
    listed without it, so 'cityscape' or 'resnet5' left the user to spot the difference."""
    monkeypatch.setattr(main_module, "run", never)
    monkeypatch.setattr(main_module, "DEFAULT_ROOT", tiny)
    monkeypatch.setattr(main_module, "DEMO_DATA", TINY)
    monkeypatch.setattr(main_module, "build_generated", never)
    on_disk = f"cityscapes:clean={domain_root(tiny, 'clean')}"
    cases = [
        (["--source", f"cityscape={tiny}", "--targets", f"bdd100k={tiny}"], f"error: --source cityscape={tiny}: domain "
         "'cityscape': unknown layout 'cityscape' (did you mean 'cityscapes'?); choose from cityscapes, bdd100k, "
         "mapillary"),
        (["--source", "clean", "--targets", "fgo"], "error: --targets fgo: unknown generated domain 'fgo' (did you "
         "mean 'fog'?); choose from clean, fog, night (or give LAYOUT=ROOT for a dataset on disk)"),
        (["--source", on_disk, "--targets", f"cityscapes:fog={domain_root(tiny, 'fog')}", "--backbones", "resnet5"],
         "error: unknown backbone 'resnet5' (did you mean 'resnet50'?); choose from resnet18, resnet50"),
        (["--source", on_disk, "--targets", f"cityscapes:fog={domain_root(tiny, 'fog')}", "--criterion", "vr"],
         "error: unknown criterion 'vr' (did you mean 'var'?); choose from "),
    ]
    for argv, message in cases:
        assert main(argv + ["--out", str(tmp_path / "out"), "--no-progress", "--no-pretrain"]) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith(message), (argv, err)


def test_a_diverged_run_is_one_line_naming_the_run(tiny, tmp_path, monkeypatch, capsys):
    """A run whose loss became NaN or inf (a diverged training: too high an --lr) stopped the sweep in a
    FloatingPointError traceback that did not name the run."""
    monkeypatch.setattr(train_module, "pixel_cross_entropy", lambda model, batch: model(batch[0]).sum() * math.nan)
    argv = [*specs(tiny), "--out", str(tmp_path / "out"), "--no-progress", "--methods", "ft", "--seeds", "0",
            "--backbones", "resnet18", *FAST_FLAGS]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: run resnet18/ft clean->fog+night seed=0: ft: the loss of the net branch is nan"]
    assert not (tmp_path / "out" / RESULTS_FILE).exists()


def test_a_probe_of_non_finite_losses_is_one_line_naming_the_run(tiny, tmp_path, monkeypatch, capsys):
    """LDT's probe refusing a non-finite loss (ldt.core's ProbeError, a RuntimeError) stopped the sweep in a
    traceback that did not name the run, where a diverged training was one line."""
    monkeypatch.setattr(train_module, "pixel_cross_entropy", lambda model, batch: model(batch[0]).sum() * math.nan)
    argv = [*specs(tiny), "--out", str(tmp_path / "out"), "--no-progress", "--methods", "ldt_dpu", "--seeds", "0",
            "--backbones", "resnet18", *FAST_FLAGS, "--warmup-steps", "0"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: run resnet18/ldt_dpu clean->fog+night seed=0: probe batch 0: the loss is nan (not finite)"]
    assert not (tmp_path / "out" / RESULTS_FILE).exists()


def test_a_batch_or_probe_larger_than_a_source_is_said_before_training(tiny, capsys):
    """--batch-size 5 on a source of 4 training images, or --probe-batches 20 of batch 2, ran without a word (the
    seeded stream passes over a source again within a batch, the probe over every image ten times): one warning
    line each, naming the flag and the counts, before any run; none when the source holds them, nor for a probe of
    a few passes (the defaults' 1.5 here)."""
    def planned(*flags: str) -> str:
        main_module.prepare(main_module.parse_args([*specs(tiny), "--seeds", "0", *FAST_FLAGS, *flags]))
        return capsys.readouterr().err

    assert planned("--methods", "ldt_dpu") == ""
    assert planned("--methods", "ft", "--batch-size", "5") == (
        "warning: --batch-size 5 is more than the 4 training images of domain 'clean': each of its batches holds "
        "some of them twice or more\n")
    assert planned("--methods", "ldt_dpu", "--probe-batches", "3") == ""
    assert planned("--methods", "ldt_dpu", "--probe-batches", "20") == (
        "warning: --probe-batches 20 of --batch-size 2 is 40 images of each training domain, 10 times or more the 4 "
        "training images of domain 'clean': the probe passes over them 10.0 times\n")


@pytest.mark.parametrize("argv", [["--pretrain-steps", "0"], ["--pretrain-steps", "-5", "--source", "cityscapes:a=x"]])
def test_pretrain_steps_are_refused_as_parsed(monkeypatch, capsys, argv):
    """--pretrain-steps 0 was refused only once the demo's data was built, in a line naming no flag ('pre-training
    steps must be positive, got 0'), and not at all with data on disk: refused as parsed now, as classification's."""
    for name in ("build_generated", "pretrain_backbone", "run"):
        monkeypatch.setattr(main_module, name, never)
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--no-progress"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: --pretrain-steps: must be a positive integer, got {argv[1]}\n")


@pytest.mark.parametrize("argv, message", [
    (["--eval-window", "32"], "--eval-window 32x32 is smaller than the default --eval-stride 341x341 (a stride is "
                              "between 1 and the window): give --eval-stride too, at most 32x32"),
    (["--eval-stride", "600"], "--eval-stride 600x600 must be between 1 and the default --eval-window 512x512: give "
                               "--eval-window too, at least 600x600"),
    (["--eval-window", "32", "--eval-stride", "64"], "--eval-stride 64x64 must be between 1 and --eval-window 32x32"),
])
def test_an_eval_window_or_stride_given_alone_is_blamed_not_the_default(tiny, tmp_path, monkeypatch, capsys, argv,
                                                                       message):
    """--eval-window 32 alone was refused as '--eval-stride 341x341 must be between 1 and --eval-window 32x32',
    blaming a flag the user never gave: the message names the flag given and the default it conflicts with."""
    monkeypatch.setattr(main_module, "run", never)
    assert main([*specs(tiny), *argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_source_whose_training_part_is_unlabelled_is_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    """A source whose training images (of one seed; the held-out ones labelled) hold only ignore (255) trained every
    step on a zero loss, without a word, to a record of the starting network: named now, exit 2, before training."""
    import shutil

    monkeypatch.setattr(main_module, "run", never)
    clean = shutil.copytree(domain_root(tiny, "clean"), tmp_path / "clean")
    config = replace(fast_config(tiny), sources=(Domain("clean", "cityscapes", str(clean)),))
    train, _ = holdout_splits(config, scan_domains(config.sources, "train"))["clean"]
    ignore_labels(train)
    argv = ["--source", f"cityscapes:clean={clean}", "--targets", f"cityscapes:fog={domain_root(tiny, 'fog')}",
            "--out", str(tmp_path / "out"), "--no-progress", "--seeds", "0", *FAST_FLAGS]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: clean (cityscapes train at {clean}): none of the {len(train)} training labels of seed 0 holds a "
        "labelled pixel (only ignore 255), so every training step's loss is zero: label them, or train on another "
        "source"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given, message", [
    (["--source", "cityscapes:a+b={root}", "--targets", "cityscapes:fog={fog}"],
     "--source cityscapes:a+b={root}: domain name 'a+b' must be non-empty and without '+'"),
    (["--source", "cityscapes:clean={root}", "--targets", "cityscapes:x+y={fog}"],
     "--targets cityscapes:x+y={fog}: domain name 'x+y' must be non-empty and without '+'"),
])
def test_a_domain_name_with_a_plus_names_the_flag(tiny, tmp_path, monkeypatch, capsys, given, message):
    """'error: domain name 'a+b' must be non-empty and without '+'' named neither the flag nor the value given."""
    monkeypatch.setattr(main_module, "run", never)
    paths = {"root": domain_root(tiny, "clean"), "fog": domain_root(tiny, "fog")}
    assert main([arg.format(**paths) for arg in given] + ["--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {message.format(**paths)}\n"


def test_a_run_left_to_train_in_an_immutable_out_is_refused_before_the_demo_data_or_pre_training(tmp_path,
                                                                                                monkeypatch, capsys):
    """A sweep on an immutable --out holding records planned everything first (the demo's streets generated, every
    domain checked on disk, its resnet18 pre-trained) to tell whether only its tables were left, and refused the
    folder only then; a run left to train is now refused from the plan alone, before any of that."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    for name in ("build_generated", "check_data", "pretrain_backbone"):
        monkeypatch.setattr(main_module, name, never)
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULTS_FILE).write_text("")  # records of no planned run
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root on a file system that has it")
    try:
        assert main(["--out", str(out), "--methods", "ft", "--seeds", "0", "--no-progress", *FAST_FLAGS]) == 2
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert capsys.readouterr().err == (f"error: --out: cannot write in {out}: operation not permitted (an immutable "
                                       "file? see lsattr)\n")


@pytest.mark.parametrize("name, given", [("eval_window", "none"), ("eval_window", "whole"), ("eval_max_side", "none")])
def test_none_given_for_a_flag_with_a_default_is_kept_not_replaced_by_the_default(tiny, name, given):
    """'none' (whole images, native size) read as None, which was also 'flag not given': a dataset on disk, whose
    defaults are sizes, then evaluated with the default window (512x512) or reduced to the default 2048 px, silently."""
    assert main_module.DEFAULTS[name] is not None
    args = main_module.parse_args([*specs(tiny), f"--{name.replace('_', '-')}={given}"])
    _, configs, _, _ = main_module.plan(args)
    assert [getattr(config, name) for config in configs] == [None] * len(configs)


def test_a_batch_of_each_image_many_times_over_is_one_line_before_training(tiny, tmp_path, monkeypatch, capsys):
    """--batch-size 100000 (a few typed zeros) over a source of 4 training images was a warning, then the first step
    stacked 100000 crops and the kernel's OOM killer ended the sweep (exit 137, no word; 23 GB here)."""
    from ldt.runner import BATCH_PASSES_REFUSED

    monkeypatch.setattr(main_module, "run", never)
    assert main([*specs(tiny), *FAST_FLAGS, "--batch-size", "100000", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --batch-size 100000 is ")
    assert f"training images of domain 'clean', more than the {BATCH_PASSES_REFUSED} allowed (typed zeros?" in err
