"""Domain-generalisation classification (``ldt.classification``): every method, selection hygiene, records, CLI.

Everything runs on the generated toy dataset (32 px, 10 images per class and domain) with the tiny CNN and a few
steps, so the whole file takes seconds on one CPU thread.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import ldt.classification.__main__ as main_module
import ldt.classification.data as data_module
import ldt.classification.pretrain as pretrain_module
import ldt.classification.train as train_module
from ldt.classification import (
    METHODS,
    DatasetError,
    RunConfig,
    build_model,
    build_table,
    build_toy_domains,
    head_patterns,
    run,
    scan_domains,
    split_holdout,
    write_tables,
)
from ldt.classification.__main__ import main
from ldt.classification.data import ImageList, image_transform, training_stream
from ldt.classification.models import TinyCNN, load_backbone_weights
from ldt.classification.pretrain import PretrainConfig, pretrain_summary, pretrain_tiny
from ldt.classification.records import sweep_records, to_markdown
from ldt.classification.toy import CLASSES, DOMAINS, MANIFEST, PRETRAIN_CLASSES
from ldt.classification.train import make_method
from ldt.core import match_parameters
from ldt.runner import domain_seed
from ldt.sweep import RESULTS_FILE as RESULTS
from ldt.sweep import Stat, run_hash
from tests.conftest import SWEEP_ARGS, stop_and_resume, stop_sweep


def load_records(out) -> list[dict]:
    return sweep_records(out).all()

# A few steps of everything: 2 warm-up steps, 3 probe batches, 4 training steps, selection every 2 steps.
FAST = dict(steps=4, batch_size=4, warmup_steps=2, probe_batches=3, eval_every=2, interval=2)
FAST_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in FAST.items()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return build_toy_domains(tmp_path_factory.mktemp("data") / "toy", images_per_class=10, size=32)


def fast_config(toy: Path, **changes) -> RunConfig:
    options = {"data": str(toy), "test_domains": ("photo",), **FAST, **changes}
    return RunConfig(**options)


def paths(samples) -> set[str]:
    return {path for path, _ in samples}


# ---- the generated dataset -------------------------------------------------------------------------------------------
def test_toy_dataset_layout_determinism_and_reuse(toy, tmp_path):
    dataset = scan_domains(toy)
    assert dataset.domains == sorted(DOMAINS) and dataset.classes == sorted(CLASSES)
    assert all(len(samples) == 10 * len(CLASSES) for samples in dataset.samples.values())
    again = build_toy_domains(tmp_path / "again", images_per_class=10, size=32)
    for domain in DOMAINS:
        for path, _ in dataset.samples[domain]:
            twin = again / Path(path).relative_to(toy)
            assert twin.read_bytes() == Path(path).read_bytes()
    stamp = (toy / MANIFEST).stat().st_mtime_ns
    assert build_toy_domains(toy, images_per_class=10, size=32) == toy  # same settings: nothing is rewritten
    assert (toy / MANIFEST).stat().st_mtime_ns == stamp
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's folder")  # (an empty folder is simply built into)
    with pytest.raises(FileExistsError, match="mine"):
        build_toy_domains(tmp_path / "mine")


# ---- every method ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_a_few_steps(toy, method):
    config = fast_config(toy, method=method)
    record = run(config)
    assert record["method"] == method and record["test_domains"] == ["photo"]
    assert record["train_domains"] == ["cast", "faded", "noisy"]
    assert 0.0 <= record["test_accuracy"]["photo"] <= 1.0
    assert [entry["step"] for entry in record["history"]] == [2, 4]
    best = max(entry["score"] for entry in record["history"])
    assert record["holdout_accuracy"] == best
    assert record["selected_step"] == next(entry["step"] for entry in record["history"] if entry["score"] == best)
    assert record["options_hash"] == run_hash(config.hparams())
    json.dumps(record)  # a record is plain JSON
    if method in ("ft", "ft_ema", "lpft"):
        assert record["partition"] is None
    else:
        assert record["partition"]["stable"] > 0 and record["partition"]["unstable"]
    if method == "deft":
        assert record["partition"]["unstable"] == ["head.weight", "head.bias"]


def test_group_of_test_domains_and_determinism(toy):
    config = fast_config(toy, method="ldt_s", test_domains=("photo", "cast"))
    first, second = run(config), run(config)
    assert sorted(first["test_accuracy"]) == ["cast", "photo"] and first["train_domains"] == ["faded", "noisy"]
    for key in ("test_accuracy", "history", "holdout_per_domain", "partition"):
        assert first[key] == second[key]


def test_options_hash_depends_only_on_options_the_method_uses(toy):
    ft = fast_config(toy, method="ft")
    assert ft.hparams() == fast_config(toy, method="ft", probe_batches=7, warmup_steps=9, ema_weight=0.5).hparams()
    assert fast_config(toy, method="ldt").hparams() != fast_config(toy, method="ldt", probe_batches=7).hparams()
    assert ft.hparams() != fast_config(toy, method="ft", seed=1).hparams()
    assert RunConfig(data=str(toy), test_domains="photo").test_domains == ("photo",)


def test_a_left_out_group_is_one_run_in_any_order_through_the_api(toy):
    """The CLI sorted --test-domains groups, RunConfig did not: run() on ('photo', 'cast') and on ('cast', 'photo')
    were two runs (two options hashes, records and table columns, 'photo+cast' and 'cast+photo') of one experiment."""
    first, second = (RunConfig(data=str(toy), test_domains=group) for group in (("photo", "cast"), ("cast", "photo")))
    assert first.test_domains == second.test_domains == ("cast", "photo")
    assert first.hparams() == second.hparams() and first.describe() == second.describe()


# ---- the training stream ---------------------------------------------------------------------------------------------
def test_an_augmentation_is_a_function_of_the_domain_seed_and_the_position_only(toy):
    """Item ``k`` of a training part is sample ``k % len`` augmented from (seed, k): the same whatever torch's random
    numbers stand at (which it leaves as they were), new on the next pass, other for another domain's seed."""
    samples = scan_domains(toy).samples["cast"]
    part = ImageList(samples, image_transform(32, augment=True), seed=domain_seed(0, "cast"))
    torch.manual_seed(1)
    untouched = torch.rand(3)
    torch.manual_seed(1)
    first = part[3]
    assert torch.equal(torch.rand(3), untouched)  # the caller's random numbers are neither drawn from nor moved
    torch.manual_seed(2)
    assert torch.equal(part[3][0], first[0])  # whatever they stand at
    again = part[3 + len(samples)]  # the same image in the next pass
    assert again[1] == first[1] and not torch.equal(again[0], first[0])
    other = ImageList(samples, image_transform(32, augment=True), seed=domain_seed(0, "faded"))[3]
    assert not torch.equal(other[0], first[0])
    with pytest.raises(IndexError):
        ImageList(samples, image_transform(32, augment=False))[len(samples)]  # evaluation indices stay in range


def test_training_batches_are_the_same_with_loader_processes(toy):
    """A pass and a half over two domains (40 images each, batches of 4), in-process and from 2 loader processes,
    from the start and from position 5 on (a resumed run's stream): bit for bit the same batches."""
    dataset = scan_domains(toy)
    parts = [ImageList(dataset.samples[d], image_transform(32, augment=True), seed=domain_seed(0, d))
             for d in ("cast", "faded")]

    def batches(workers: int, start: int = 0) -> list:
        return list(itertools.islice(training_stream(parts, 4, workers=workers, start=start), 16 - start))

    in_process = batches(0)
    for start in (0, 5):
        for ours, theirs in zip(in_process[start:], batches(2, start), strict=True):
            assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@pytest.mark.slow
def test_a_run_does_not_depend_on_the_number_of_loader_workers(toy):
    """Augmentations were drawn from the random numbers of the loading process: in-process from the training's
    own, in a loader process from that worker's, so --workers 0 and --workers 2 gave other records (test accuracy
    0.275 and 0.25 for one 10-step run)."""
    config = fast_config(toy, method="ldt_dpu")
    in_process, loaders = run(config, workers=0), run(config, workers=2)
    for key in ("test_accuracy", "holdout_accuracy", "holdout_per_domain", "selected_step", "history", "partition"):
        assert in_process[key] == loaders[key], key


# ---- warm-up ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_warmup_trains_only_the_head(toy, backbone):
    dataset = scan_domains(toy)
    parts = [ImageList(dataset.samples[d], image_transform(32, augment=True), seed=domain_seed(0, d))
             for d in ("cast", "faded")]
    torch.manual_seed(0)
    model = build_model(backbone, len(dataset.classes))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads = set(match_parameters(model, head_patterns(backbone)))
    stream = training_stream(parts, 4)
    make_method(model, stream, fast_config(toy, method="lpft", backbone=backbone, image_size=32, warmup_steps=3,
                                           warmup_lr=0.1))
    after = model.state_dict()
    for name, value in after.items():
        if name in heads:
            assert not torch.equal(value, before[name]), f"head tensor {name} did not train"
        else:  # parameters and buffers (BatchNorm statistics) of the frozen backbone
            assert torch.equal(value, before[name]), f"backbone tensor {name} changed during warm-up"
    assert all(p.requires_grad for p in model.parameters())  # flags restored for the training stage


def test_head_patterns_match_exactly_the_replaced_head():
    for backbone, head in [("tiny", "head"), ("resnet18", "fc"), ("resnet50", "fc"), ("vit_b_16", "heads.head")]:
        model = build_model(backbone, 3, image_size=32)
        assert match_parameters(model, head_patterns(backbone)) == [f"{head}.weight", f"{head}.bias"]
        assert model.get_submodule(head).out_features == 3


# ---- model selection never touches the test domain -------------------------------------------------------------------
def test_selection_reads_only_held_out_training_images_and_test_images_once(toy, monkeypatch):
    config = fast_config(toy, method="ldt_dpu", test_domains=("noisy",), seed=3)
    dataset = scan_domains(toy)
    splits = {d: split_holdout(dataset.samples[d], 0.2, 3, d) for d in dataset.train_domains(("noisy",))}
    phase, reads, tests, returned = ["train"], [], [], []
    load_image, accuracy, test_accuracy = data_module.load_image, train_module.accuracy, train_module.test_accuracy

    def spy_load(path):
        reads.append((phase[0], path))
        return load_image(path)

    def spy_accuracy(*args, **kwargs):
        outer, phase[0] = phase[0], "eval" if phase[0] == "train" else phase[0]
        try:
            return accuracy(*args, **kwargs)
        finally:
            phase[0] = outer

    def spy_test(evaluator, *args, **kwargs):
        tests.append({k: v.clone() for k, v in evaluator.state_dict().items()})
        phase[0] = "test"
        try:
            result = test_accuracy(evaluator, *args, **kwargs)
            returned.append(result)
            return result
        finally:
            phase[0] = "after"

    monkeypatch.setattr(data_module, "load_image", spy_load)
    monkeypatch.setattr(train_module, "accuracy", spy_accuracy)
    monkeypatch.setattr(train_module, "test_accuracy", spy_test)
    record = run(config)

    read = {p: {path for ph, path in reads if ph == p} for p in ("train", "eval", "test", "after")}
    assert read["train"] <= set().union(*(paths(train) for train, _ in splits.values()))  # warm-up, probe, training
    held_out = [path for ph, path in reads if ph == "eval"]
    assert sorted(held_out) == sorted(2 * [p for _, held in splits.values() for p in paths(held)])  # steps 2 and 4
    test_reads = [path for ph, path in reads if ph == "test"]
    assert sorted(test_reads) == sorted(paths(dataset.samples["noisy"]))  # every test image, exactly once
    assert not read["after"]
    assert reads[-len(test_reads):] == [("test", p) for p in test_reads]  # the test comes last
    assert len(tests) == 1 and record["test_accuracy"] == returned[0]  # the record holds that one evaluation


def test_the_tested_network_is_the_selected_one(toy, monkeypatch):
    """Make step 2 the clear winner (step 4 scores 0): the test must see step 2's deployed weights."""
    states, scores = {}, iter([0.9, 0.9, 0.9, 0.0, 0.0, 0.0])
    monkeypatch.setattr(train_module, "accuracy", lambda network, loader, device: next(scores))
    original_train_and_select = train_module.train_and_select

    def spy_select(method, *args, **kwargs):
        original = method.deployed_state_dict

        def record_state():
            state = original()
            states[len(states) * 2 + 2] = {k: v.clone() for k, v in state.items()}
            return state

        method.deployed_state_dict = record_state
        return original_train_and_select(method, *args, **kwargs)

    tested = []

    def spy_test(evaluator, *args):
        tested.append(evaluator.state_dict())
        return {"photo": 1.0}

    monkeypatch.setattr(train_module, "train_and_select", spy_select)
    monkeypatch.setattr(train_module, "test_accuracy", spy_test)
    record = run(fast_config(toy, method="ldt"))
    assert record["selected_step"] == 2 and record["holdout_accuracy"] == pytest.approx(0.9)
    assert all(torch.equal(tested[0][k], states[2][k]) for k in states[2])
    assert any(not torch.equal(states[2][k], states[4][k]) for k in states[2])


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["ft", "ldt"])
def test_a_backbone_under_hook_based_weight_norm_trains_and_is_tested(toy, monkeypatch, method):
    """The evaluator (the network validated and tested) is a copy of method.model made after the probe, whose
    forwards left hook-based weight_norm's computed weight on it: a non-leaf tensor that copy.deepcopy refuses."""
    built = train_module.build_model

    def weight_normed(*args, **kwargs):
        model = built(*args, **kwargs)
        torch.nn.utils.weight_norm(model.features[0])
        return model

    monkeypatch.setattr(train_module, "build_model", weight_normed)
    record = run(fast_config(toy, method=method))
    assert [entry["step"] for entry in record["history"]] == [2, 4] and 0.0 <= record["test_accuracy"]["photo"] <= 1.0


# ---- training-domain hold-out split ----------------------------------------------------------------------------------
def test_holdout_split_is_seeded_twenty_percent_and_disjoint(toy):
    samples = scan_domains(toy).samples["cast"]
    train, held = split_holdout(samples, 0.2, seed=0, domain="cast")
    assert len(held) == int(0.2 * len(samples)) == 8
    assert not paths(train) & paths(held) and paths(train) | paths(held) == paths(samples)
    assert split_holdout(samples, 0.2, seed=0, domain="cast") == (train, held)
    assert paths(split_holdout(samples, 0.2, seed=1, domain="cast")[1]) != paths(held)
    assert paths(split_holdout(samples, 0.2, seed=0, domain="other")[1]) != paths(held)  # seeded by name too
    with pytest.raises(DatasetError, match="fraction"):
        split_holdout(samples, 1.0, 0, "cast")
    with pytest.raises(DatasetError, match="'lonely' has 1 image"):
        split_holdout(samples[:1], 0.2, 0, "lonely")


# ---- records and tables ----------------------------------------------------------------------------------------------
def hand_record(method: str, test: str, seed: int, accuracy: float, **hparams) -> dict:
    return {
        "options_hash": f"{method}-{test}-{seed}", "dataset": "VLCS", "backbone": "resnet50", "method": method,
        "seed": seed, "test_domains": [test], "domains": ["C", "L", "S", "V"], "test_accuracy": {test: accuracy},
        "hparams": {"method": method, "seed": seed, "test_domains": [test], **hparams},
    }


def test_table_mean_and_standard_error_from_hand_made_records():
    values = {"C": [0.5, 0.6, 0.7], "L": [0.8, 0.8, 0.9]}
    records = [hand_record("ldt", d, s, v) for d, accs in values.items() for s, v in enumerate(accs)]
    records += [hand_record("ft", "C", 0, 0.1), hand_record("ft", "C", 0, 0.4)]  # a rerun replaces the seed
    rows = build_table(records, {"method": ("ft", "ldt")})
    assert [r["method"] for r in rows] == ["ft", "ldt"]
    ft, ldt = rows
    assert ft["columns"] == ["C", "L"] and ft["C"] == Stat(0.4, None, 1) and ft["L"] is None and ft["Avg"] is None
    cell = ldt["C"]
    assert (cell.mean, cell.n) == (pytest.approx(0.6), 3) and cell.se == pytest.approx(0.1 / math.sqrt(3))
    assert ldt["L"].mean == pytest.approx(5 / 6) and ldt["L"].se == pytest.approx(math.sqrt(1 / 300) / math.sqrt(3))
    per_seed = [(0.5 + 0.8) / 2, (0.6 + 0.8) / 2, (0.7 + 0.9) / 2]  # Avg: per-seed mean over domains, then over seeds
    mean = sum(per_seed) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in per_seed) / 2 / 3)
    assert ldt["Avg"].mean == pytest.approx(mean) and ldt["Avg"].se == pytest.approx(se)
    markdown = to_markdown(rows)
    assert "| resnet50 | ldt | 3 | 60.00 ± 5.77 | 83.33 ± 3.33 | 71.67 ± 4.41 |" in markdown
    assert "| resnet50 | ft | 1 | 40.00 | – | – |" in markdown  # one seed: no standard error
    other = build_table(records + [hand_record("ldt", "C", 0, 0.2, lr=1.0)])  # another configuration: another row
    assert len(other) == 3 and "Config" in to_markdown(other)


def test_records_survive_a_cut_off_line(tmp_path):
    """A line cut short (a sweep killed mid-append) stayed in results.jsonl for good, warned of by every later
    command; the next append moves it to results.jsonl.broken (said once), the records intact, no line lost."""
    sweep_records(tmp_path).append({"options_hash": "a"})
    with open(tmp_path / RESULTS, "a") as handle:
        handle.write('{"options_hash": "b", "cut')  # an interrupted write
    with pytest.warns(UserWarning, match="not a complete record"):
        assert set(sweep_records(tmp_path).by_hash()) == {"a"}
    records = sweep_records(tmp_path)
    with pytest.warns(UserWarning) as caught:
        records.append({"options_hash": "c"})
        records.append({"options_hash": "d"})
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / RESULTS}: moved 1 line(s) that are no complete record (a sweep killed while appending, or "
        f"edited by hand?) to {tmp_path / RESULTS}.broken"]
    assert (tmp_path / f"{RESULTS}.broken").read_text() == '{"options_hash": "b", "cut\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned of no more
        assert [r["options_hash"] for r in sweep_records(tmp_path).all()] == ["a", "c", "d"]
    assert (tmp_path / RESULTS).read_text().count("\n") == 3


def test_a_cut_off_line_stays_closed_when_the_records_cannot_be_rewritten(tmp_path, monkeypatch):
    """An append-only records file (or folder) cannot be rewritten without its broken lines: they stay, closed, and
    the record is appended as before."""
    import ldt.atomic

    def refused(path, data):
        raise ldt.atomic.DiskError(f"cannot write {path}: operation not permitted")

    monkeypatch.setattr(ldt.atomic, "atomic_write_bytes", refused)
    (tmp_path / RESULTS).write_text('{"options_hash": "a"}\n{"options_hash": "b", "cut')
    sweep_records(tmp_path).append({"options_hash": "c"})
    assert (tmp_path / RESULTS).read_text() == '{"options_hash": "a"}\n{"options_hash": "b", "cut\n{"options_hash": "c"}\n'
    assert not (tmp_path / f"{RESULTS}.broken").exists()  # no copy of the line, appended again by each append


def test_a_sweep_that_trains_warns_once_of_a_broken_line(toy, tmp_path):
    """The sweep's records and its tables' records are two objects, each warning once: one broken line of
    results.jsonl was said twice by a sweep that trained (``--collect`` said it once)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULTS).write_text('{"options_hash": "b", "cut\n')  # an interrupted write
    argv = ["--data", str(toy), "--out", str(out), "--methods", "ft", "--seeds", "0", "--test-domains", "photo",
            "--no-progress", *FAST_FLAGS]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's once-per-place filter would hide a repeat from another call site
        assert main(argv) == 0
    warned = [str(w.message) for w in caught if "complete record" in str(w.message)]
    assert warned == [f"{out / RESULTS}:1: not a complete record (an interrupted write, or edited by hand?); "
                      "ignored", f"{out / RESULTS}: moved 1 line(s) that are no complete record (a sweep killed "
                      f"while appending, or edited by hand?) to {out / RESULTS}.broken"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the line was moved when the record was appended: warned of no more
        assert len(load_records(out)) == 1  # the run trained and was recorded


def test_sweep_tables_regenerate_from_records_and_finished_runs_are_skipped(toy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--data", str(toy), "--out", str(out), "--methods", "ft", "ldt_dpu", "--seeds", "0", "1",
            "--test-domains", "photo", "cast+faded", "--no-progress", *FAST_FLAGS]
    assert main(argv) == 0
    records = load_records(out)
    assert len(records) == 8 and len({r["options_hash"] for r in records}) == 8
    table = (out / "table.md").read_text()
    csv_text = (out / "table.csv").read_text()
    assert "| tiny | ft | 2 |" in table and "| cast+faded | photo | Avg |" in table
    (out / "table.md").unlink()
    (out / "table.csv").unlink()
    assert main(["--collect", str(out)]) == 0
    assert (out / "table.md").read_text() == table and (out / "table.csv").read_text() == csv_text
    assert write_tables(out, {"method": METHODS}) == table

    def no_run(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr("ldt.classification.__main__.run", no_run)
    capsys.readouterr()
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "8 runs, 8 already recorded" in shown and "0 run(s) trained by this command" in shown
    assert len(load_records(out)) == 8

    lines = (out / RESULTS).read_text().splitlines(keepends=True)  # lose the last run: only it runs again
    (out / RESULTS).write_text("".join(lines[:-1]))
    monkeypatch.setattr("ldt.classification.__main__.run", run)
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "8 runs, 7 already recorded" in shown and "1 run(s) trained by this command" in shown
    assert [r["options_hash"] for r in load_records(out)] == [json.loads(line)["options_hash"] for line in lines]
    assert (out / "table.md").read_text() == table  # deterministic runs: the same table


# ---- pre-trained weights from a local file ---------------------------------------------------------------------------
def test_local_weights_load_the_backbone_and_replace_the_head(tmp_path):
    torch.manual_seed(1)
    pretrained = build_model("resnet18", 1000)  # an ImageNet-like checkpoint, 1000-class head
    plain = tmp_path / "resnet18.pth"
    torch.save(pretrained.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in pretrained.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        torch.manual_seed(2)
        model = build_model("resnet18", 5, weights=path)
        assert model.fc.out_features == 5
        for name, value in model.state_dict().items():
            if not name.startswith("fc."):
                assert torch.equal(value, pretrained.state_dict()[name]), name


def test_integer_weights_do_not_fit_a_backbone(tmp_path):
    state = build_model("tiny", 4).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    torch.save({**state, key: state[key].round().to(torch.int64)}, tmp_path / "int.pth")
    with pytest.raises(ValueError, match=rf"int\.pth does not fit backbone 'tiny': not floating point .*\({key} "
                                         r"torch\.int64 vs torch\.float32\)"):
        build_model("tiny", 4, weights=tmp_path / "int.pth")


def test_weights_errors_name_the_file(tmp_path):
    tiny = tmp_path / "tiny.pth"
    torch.save(build_model("tiny", 4).state_dict(), tiny)
    with pytest.raises(ValueError, match=r"tiny\.pth does not fit backbone 'resnet18': missing \d+ key\(s\) \(conv1.weight"):
        build_model("resnet18", 4, weights=tiny)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_model("tiny", 4, weights=tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pth is not a PyTorch checkpoint \(not a zip archive or a tensor "
                                         r"pickle\)$"):
        build_model("tiny", 4, weights=junk)
    torch.save({"weights": [1, 2]}, junk)
    with pytest.raises(ValueError, match="junk.pth does not hold a state dict"):
        build_model("tiny", 4, weights=junk)


# ---- the demo's generated pre-training ------------------------------------------------------------------------------
TINY_PRETRAIN = PretrainConfig(images_per_class=4, heldout_per_class=2, steps=3, batch_size=8)


def test_an_unwritable_pretraining_cache_is_found_before_the_pre_training(tmp_path, monkeypatch):
    import errno

    import ldt.atomic
    from ldt.atomic import DiskError

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def never(*args, **kwargs):
        raise AssertionError("pre-trained although its result could not be saved")

    monkeypatch.setattr(ldt.atomic.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(pretrain_module, "train_tiny", never)
    with pytest.raises(DiskError, match=f"cannot write in {tmp_path}: no space left on device"):
        pretrain_tiny(TINY_PRETRAIN, root=tmp_path)


def test_pretraining_is_cached_and_loads_into_tiny_with_a_new_head(tmp_path, monkeypatch):
    path = pretrain_tiny(TINY_PRETRAIN, root=tmp_path)
    assert path == TINY_PRETRAIN.weights_path(tmp_path) and path.parent == tmp_path
    summary = pretrain_summary(path)
    assert summary["steps"] == 3 and summary["classes"] == list(PRETRAIN_CLASSES) and 0.0 <= summary["heldout_accuracy"] <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("cached pre-training was run again")

    monkeypatch.setattr(pretrain_module, "train_tiny", no_training)
    assert pretrain_tiny(TINY_PRETRAIN, root=tmp_path) == path
    assert PretrainConfig(steps=4).weights_path(tmp_path) != path  # other settings, another file: records stay true
    saved = torch.load(path, weights_only=True)
    assert saved["head.weight"].shape[0] == len(PRETRAIN_CLASSES)
    torch.manual_seed(0)
    model = build_model("tiny", len(CLASSES), weights=path)
    assert model.head.out_features == len(CLASSES)
    for name, value in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, saved[name]), name


@pytest.mark.parametrize("content", ["cut off", "not a checkpoint", "another network"])
def test_a_broken_cached_pretraining_is_one_line_saying_to_delete_it(tmp_path, monkeypatch, content):
    """A cut-off, foreign or replaced cache was reused as it was: a multi-sentence torch message or a 'does not fit'
    error at planning, neither saying that it is the cache nor how to make it again."""
    path = TINY_PRETRAIN.weights_path(tmp_path)
    torch.save({"x": torch.zeros(3)} if content == "another network" else TinyCNN(len(PRETRAIN_CLASSES)).state_dict(),
               path)
    if content == "cut off":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "not a checkpoint":
        path.write_text('{"a": 1}')
    monkeypatch.setattr(pretrain_module, "train_tiny", lambda *args, **kwargs: pytest.fail("trained again"))
    with pytest.raises(ValueError, match=rf"^cached pre-trained backbone: [^\n]*; delete {path} to pre-train it again$"):
        pretrain_tiny(TINY_PRETRAIN, root=tmp_path)


def test_demo_fine_tunes_the_cached_pretraining_unless_opted_out(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo's relative datasets/ and results/ folders
    monkeypatch.setattr(main_module, "build_toy_domains", lambda root: toy)
    render = pretrain_module.render_pretrain_images
    monkeypatch.setattr(pretrain_module, "render_pretrain_images", lambda count, **kw: render(min(count, 3), **kw))
    trainings = []
    train_tiny = pretrain_module.train_tiny
    monkeypatch.setattr(pretrain_module, "train_tiny", lambda config, progress: trainings.append(config) or train_tiny(config, progress))
    common = ["--methods", "lpft", "--test-domains", "photo", "--no-progress", "--pretrain-steps", "2", *FAST_FLAGS]
    argv = common + ["--seeds", "0"]
    weights = PretrainConfig(steps=2).weights_path().resolve()
    out = Path("results/classification") / toy.name

    assert main(argv) == 0
    assert [c.steps for c in trainings] == [2] and weights.is_file()
    assert f"tiny backbone: pre-trained weights {PretrainConfig(steps=2).weights_path()} (trained" in capsys.readouterr().out
    assert [r["hparams"]["weights"] for r in load_records(out)] == [str(weights)]

    assert main(argv) == 0  # second call: cached weights, finished run
    shown = capsys.readouterr().out
    assert len(trainings) == 1 and "(cached," in shown and "1 runs, 1 already recorded" in shown

    for opt_out in (["--no-pretrain", "--seeds", "0"], ["--weights", f"tiny={weights}", "--seeds", "1"]):
        assert main(common + opt_out) == 0
        assert len(trainings) == 1 and "tiny backbone: pre-trained" not in capsys.readouterr().out
    assert [r["hparams"]["weights"] for r in load_records(out)] == [str(weights), None, str(weights)]


# ---- bad input -------------------------------------------------------------------------------------------------------
def test_dataset_errors_name_the_path(toy, tmp_path):
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        scan_domains(tmp_path / "nowhere")
    root = tmp_path / "bad"
    (root / "A" / "cat").mkdir(parents=True)
    (root / "A" / "cat" / "1.png").write_bytes((toy / "photo" / "circle" / "0000.png").read_bytes())
    with pytest.raises(DatasetError, match="at least two domain folders"):
        scan_domains(root)
    (root / "B").mkdir()
    with pytest.raises(DatasetError, match="domain 'B' has no class folders"):
        scan_domains(root)
    (root / "B" / "cat").mkdir()
    (root / "B" / "cat" / "notes.txt").write_text("no image")
    with pytest.raises(DatasetError, match="domain 'B' has no images"):
        scan_domains(root)
    dataset = scan_domains(toy)
    with pytest.raises(DatasetError, match=r"'sketch' is not a domain of .*domains: cast, faded, noisy, photo\)"):
        dataset.check_test_domains(["sketch"])
    with pytest.raises(DatasetError, match="leaves no training domain"):
        dataset.check_test_domains(list(DOMAINS))
    with pytest.raises(DatasetError, match="distinct"):
        dataset.check_test_domains(["photo", "photo"])
    with pytest.raises(DatasetError, match="sketch"):
        run(fast_config(toy, test_domains=("sketch",)))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        RunConfig(data="x", test_domains=("a",), backbone="vgg")
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_model("vgg", 3)
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        RunConfig(data="x", test_domains=("a",), method="sgd")
    with pytest.raises(ValueError, match="--steps must be positive"):
        RunConfig(data="x", test_domains=("a",), steps=0)
    with pytest.raises(ValueError, match="--unstable-ratio"):
        RunConfig(data="x", test_domains=("a",), unstable_ratio=1.0)


def test_an_unknown_method_gets_the_did_you_mean_hint(tmp_path, monkeypatch, capsys):
    """A misspelled method (RunConfig, or ``--methods``, which argparse refused with its bare choice list) said only
    'unknown method'; the SR option files and the segmentation runner suggest the method meant. Now so does this."""
    with pytest.raises(ValueError) as info:
        RunConfig(data="x", test_domains=("a",), method="ldt_dpv")
    assert str(info.value) == f"unknown method 'ldt_dpv' (did you mean 'ldt_dpu'?); choose from {', '.join(METHODS)}"
    with pytest.raises(ValueError, match=r"^unknown method 'zzz'; choose from ft, "):
        RunConfig(data="x", test_domains=("a",), method="zzz")

    def no_run(*args, **kwargs):
        raise AssertionError("bad input must fail before the demo builds its data")

    monkeypatch.setattr("ldt.classification.__main__.build_toy_domains", no_run)
    monkeypatch.setattr("ldt.classification.__main__.run", no_run)
    assert main(["--methods", "ft", "lpf", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: unknown method 'lpf' (did you mean 'lpft'?); choose from {', '.join(METHODS)}"]
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_input_before_any_run(toy, tmp_path, monkeypatch, capsys):
    def no_run(*args, **kwargs):
        raise AssertionError("bad input must fail before training")

    monkeypatch.setattr("ldt.classification.__main__.run", no_run)
    def unweighted(*args, weights=None, **kwargs):  # cheap checks (the method's on the meta device) come before weights
        return build_model(*args, **kwargs) if weights is None else no_run()

    monkeypatch.setattr("ldt.classification.__main__.build_model", unweighted)
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    cases = [
        (["--data", str(tmp_path / "missing")], "missing does not exist"),
        (["--data", str(toy), "--test-domains", "photo", "sketch"], "'sketch' is not a domain of"),
        (["--data", str(toy), "--steps", "0"], "--steps must be positive"),
        (["--data", str(toy), "--holdout-fraction", "0"], "--holdout-fraction must be in (0, 1)"),
        (["--data", str(toy), "--weights", "a.pth", "b.pth"], "BACKBONE=FILE"),
        (["--data", str(toy), "--weights", "resnet18=a.pth"], "not swept"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--data", str(toy), "--device", "cuda"], "CUDA is not available"))
    for argv, message in cases:
        assert main(argv + out) == 2
        assert message in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr("ldt.classification.__main__.run", no_run)
    torch.save(build_model("tiny", 4).state_dict(), tmp_path / "tiny.pth")
    for weights, message in [  # named after the flag and the backbone, as the segmentation runner's
        ("missing.pth", "weights file missing.pth does not exist"),
        (str(tmp_path / "tiny.pth"), f"weights file {tmp_path / 'tiny.pth'} does not fit backbone 'resnet18'"),
    ]:
        assert main(["--data", str(toy), "--backbones", "resnet18", "--weights", weights] + out) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --weights resnet18: {message}") and err.count("\n") == 1, err
    for argv, message in ((["--backbones", "vgg"], "invalid choice: 'vgg'"), (["--steps", "abc"], "invalid int value")):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err  # one line, as the segmentation runner's, not the 26-line usage before it
        assert err.count("\n") == 1 and message in err, err
    assert main(["--collect", str(tmp_path / "empty")]) == 2
    assert "no records" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # The demo (no --data) checks its flags before it builds data or pre-trains.
    monkeypatch.setattr("ldt.classification.__main__.build_toy_domains", no_run)
    monkeypatch.setattr("ldt.classification.__main__.pretrain_tiny", no_run)
    for flag, value in [("--probe-batches", "0"), ("--ema-weight", "2"), ("--ema-weight", "1"), ("--steps", "0"),
                        ("--holdout-fraction", "2"), ("--seeds", "3000000000")]:
        assert main([flag, value] + out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {flag}"), err


@pytest.mark.parametrize("argv, message", [
    (["--data", ""], "argument --data: an empty path"),
    (["--pretrain-steps", "0"], "error: --pretrain-steps: must be a positive integer, got 0"),
    (["--pretrain-steps", "-5", "--no-pretrain"], "error: --pretrain-steps: must be a positive integer, got -5"),
])
def test_flags_refused_when_parsed(monkeypatch, capsys, argv, message):
    """An empty --data scanned the current folder, --pretrain-steps 0 was refused after the demo data was built, in a
    line naming no flag ('pre-training steps must be positive'); these are refused as parsed: one line naming the flag, before
    the demo data is built or pre-trained, or any dataset scanned."""
    for name in ("build_toy_domains", "pretrain_tiny", "check_data"):
        monkeypatch.setattr(f"ldt.classification.__main__.{name}", lambda *a, **k: pytest.fail("nothing may start"))
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("entries, message", [
    (["nope"], "--test-domains: 'nope' is not a domain of {root} (domains: cast, faded, noisy, photo)"),
    (["photo+"], "--test-domains: '' is not a domain of {root} (domains: cast, faded, noisy, photo)"),
    (["cast+faded+noisy+photo"], "--test-domains: cast+faded+noisy+photo leaves no training domain in {root}"),
])
@pytest.mark.parametrize("demo", [True, False])
def test_unknown_test_domains_are_refused_at_start_up(toy, tmp_path, monkeypatch, capsys, entries, message, demo):
    """--test-domains nope was refused only after the data was built and the backbone pre-trained (or, with --data,
    after every image's header was read): the domains are the data folder's listing (the demo's are known before it
    is built), so it is now one line naming the flag and the domains before anything else."""
    for name in ("build_toy_domains", "pretrain_tiny", "check_data", "run"):
        monkeypatch.setattr(f"ldt.classification.__main__.{name}", lambda *a, **k: pytest.fail("nothing may start"))
    data = [] if demo else ["--data", str(toy)]
    root = main_module.DEFAULT_ROOT if demo else toy
    assert main([*data, "--test-domains", *entries, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {message.format(root=root)}\n"


def test_a_data_folder_that_is_no_dataset_names_data(tmp_path, monkeypatch, capsys):
    """A missing --data folder, or one with fewer than two domain folders, is one line naming --data, from its listing;
    a file given as --data is said to be one (it read 'does not exist or is not a directory')."""
    monkeypatch.setattr("ldt.classification.__main__.check_data", lambda *a, **k: pytest.fail("listing only"))
    (tmp_path / "one" / "photo").mkdir(parents=True)
    (tmp_path / "options.yml").write_text("a file\n")
    os.mkfifo(tmp_path / "pipe")
    for given, problem in (("missing", "missing does not exist"), ("one", "needs at least two domain"),
                           ("options.yml", "options.yml is a file, not a folder"),
                           ("pipe", "pipe is not a folder")):
        assert main(["--data", str(tmp_path / given), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --data: ") and problem in err and err.count("\n") == 1, err


@pytest.mark.parametrize("given, problem", [
    ("notes.txt", "{given} is a file, not a results folder (the folder holding results.jsonl)"),
    ("sweep/results.jsonl", "{given} is the records file itself: give its folder, {tmp}/sweep"),
    ("missing", "no records: {given} does not exist"),
    ("empty", "no records: {given} holds no results.jsonl (not a results folder?)"),
    ("odd", "{given}/results.jsonl is a folder, not a file"),
    ("garbage", "no records in {given}/results.jsonl: nothing to tabulate"),
])
def test_collect_of_what_is_no_results_folder_is_one_line_naming_the_flag(tmp_path, capsys, given, problem):
    """--collect FILE said 'no records in FILE/results.jsonl' (a path that cannot exist), a results.jsonl that is a
    folder said to 'give another --out', and none named --collect."""
    (tmp_path / "notes.txt").write_text("a note\n")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / RESULTS).write_text(json.dumps(hand_record("ft", "C", 0, 0.5)) + "\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd" / RESULTS).mkdir(parents=True)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / RESULTS).write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    path = tmp_path / given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the garbage's lines are each said as a warning
        assert main(["--collect", str(path)]) == 2
    expected = problem.format(given=path, tmp=tmp_path)
    assert capsys.readouterr().err == f"error: --collect {path}: {expected}\n"


def test_a_method_that_cannot_run_with_the_options_is_one_line_before_any_run(toy, tmp_path, monkeypatch, capsys):
    """lpft without its warm-up failed inside its own run, after the runs before it had trained (and, in the demo,
    after the data build and the pre-training): the method's own check now runs on the plan, on the meta device."""
    def no_run(*args, **kwargs):
        raise AssertionError("a method the options do not fit must fail before any run")

    monkeypatch.setattr("ldt.classification.__main__.run", no_run)
    out = tmp_path / "out"
    argv = ["--methods", "ft", "lpft", "--warmup-steps", "0", "--out", str(out), "--no-progress"]
    assert main(["--data", str(toy), *argv]) == 2
    err = capsys.readouterr().err
    assert err == "error: lpft: --warmup-steps: lpft needs its head warm-up: must be > 0\n", err
    assert not out.exists()
    monkeypatch.setattr("ldt.classification.__main__.build_toy_domains", no_run)
    monkeypatch.setattr("ldt.classification.__main__.pretrain_tiny", no_run)
    assert main(argv) == 2 and "lpft needs its head warm-up" in capsys.readouterr().err


def test_weights_with_nan_values_are_one_line_before_any_run(toy, tmp_path, monkeypatch, capsys):
    """A backbone file saved from a run that diverged trained on NaN from the first step and ended the sweep in a
    FloatingPointError traceback; a NaN in the head that is dropped does no harm."""
    monkeypatch.setattr("ldt.classification.__main__.run", lambda *args, **kwargs: pytest.fail("must not run"))
    state = build_model("tiny", 4).state_dict()
    state["features.0.weight"][0, 0, 0, 0] = math.nan
    torch.save(state, tmp_path / "nan.pth")
    argv = ["--data", str(toy), "--methods", "ft", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--weights", str(tmp_path / "nan.pth")]) == 2
    assert capsys.readouterr().err == (f"error: --weights tiny: weights file {tmp_path / 'nan.pth'}: "
                                       "'features.0.weight' has NaN/inf values (saved from a run that diverged?)\n")
    head = build_model("tiny", 4)
    with torch.no_grad():
        head.head.weight.fill_(math.inf)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    load_backbone_weights(build_model("tiny", 4), "tiny", tmp_path / "head.pth")


# ---- command line ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_help_and_a_tiny_run(toy, tmp_path):
    def cli(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ldt.classification", *argv]
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    shown = cli("--help")
    assert shown.returncode == 0 and "--test-domains" in shown.stdout
    assert "root/<domain>/<class>/<image>" in shown.stdout
    out = tmp_path / "cli"
    methods = ("--methods", "lpft", "ldt_s", "--seeds", "0", "--test-domains", "faded")
    done = cli("--data", str(toy), "--out", str(out), *methods, *FAST_FLAGS)
    assert done.returncode == 0, done.stderr
    assert "| tiny | lpft | 1 |" in done.stdout and (out / "table.md").is_file()
    assert [r["method"] for r in load_records(out)] == ["lpft", "ldt_s"]


# ---- hostile input ---------------------------------------------------------------------------------------------------
def copy_toy(toy: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(toy, to))


def test_truncated_and_non_image_files_are_named_before_training(toy, tmp_path):
    root = copy_toy(toy, tmp_path / "toy")
    image = root / "photo" / "circle" / "0000.png"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(DatasetError, match=rf"{image} is truncated"):
        scan_domains(root)
    image.write_text("not an image")
    with pytest.raises(DatasetError, match=rf"cannot read image {image}"):
        scan_domains(root)
    with pytest.raises(DatasetError, match=rf"cannot decode image {image}"):  # found in a run: named too
        data_module.load_image(str(image))


def test_a_class_missing_from_a_domain_is_named(toy, tmp_path):
    root = copy_toy(toy, tmp_path / "toy")
    (root / "cast" / "zebra").mkdir()
    (root / "cast" / "zebra" / "0.png").write_bytes((root / "cast" / "circle" / "0000.png").read_bytes())
    with pytest.raises(DatasetError, match="domain 'faded' has no images of class 'zebra' \\(domain 'cast' has\\)"):
        scan_domains(root)


def test_test_domain_groups_are_sorted_and_trained_once(capsys):
    domains = list(DOMAINS)
    assert main_module.left_out_groups(["photo", "cast+photo", "photo+cast"], domains) == [("photo",), ("cast", "photo")]
    assert "--test-domains: repeated cast+photo dropped" in capsys.readouterr().out
    assert main_module.left_out_groups(None, domains) == [(d,) for d in domains]  # single domains keep their hashes


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "must be positive"), (["--lr", "nan"], "must be positive"),
    (["--weight-decay", "-1"], "must be non-negative"), (["--ema-decay", "2"], "must be in"),
    (["--device", "foo"], "--device foo"), (["--workers", "-1"], "must be"),
    (["--image-size", "3"], "must be at least 8"), (["--image-size", "0"], "must be at least 8"),
    (["--image-size", "100000"], "must be at most 4096 px"), (["--workers", "100000"], "must be at most"),
    (["--seeds", "-1"], "must be non-negative"), (["--seeds", "3000000000"], "must be <= 2147483647"),
    (["--eval-every", "0"], "must be positive"), (["--holdout-fraction", "1"], "must be in (0, 1)"),
    (["--batch-size", "0"], "must be positive"), (["--probe-batches", "0"], "must be > 0"),
    (["--warmup-steps", "-1"], "must be >= 0"), (["--warmup-steps", "-1", "--methods", "ft"], "must be >= 0"),
    (["--warmup-lr", "0"], "must be > 0"),
    (["--ema-weight", "1"], "must be < 1"), (["--interval", "0"], "must be > 0"),
    (["--unstable-ratio", "1"], "must be < 1"),
])
def test_bad_flags_are_one_line_naming_the_flag(toy, tmp_path, monkeypatch, capsys, argv, message):
    """The error names the flag typed (``--eval-every``), not the setting's field (``eval_every``)."""
    monkeypatch.setattr("ldt.classification.__main__.run", lambda *a, **k: pytest.fail("no run may start"))
    assert main(["--data", str(toy), "--out", str(tmp_path / "out"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {argv[0]}") and message in err, err


def test_repeated_seeds_and_methods_are_trained_once(toy, capsys):
    args = main_module.parse_args(["--data", str(toy), "--seeds", "0", "0", "--methods", "ft", "ft",
                                   "--test-domains", "photo", *FAST_FLAGS])
    _, configs = main_module.prepare(args)
    assert len(configs) == 1 and "--seeds: repeated 0 dropped" in capsys.readouterr().out


def test_tables_skip_foreign_records_with_a_warning(tmp_path):
    lines = [hand_record("ft", "C", 0, 0.5), {"options_hash": "zzz", "foo": 1},
             {"options_hash": "seg", "sources": ["clean"], "target_miou": {"fog": 1.0}}]
    (tmp_path / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match=rf"{tmp_path / RESULTS}:2: a record without 'dataset'"):
        assert "| resnet50 | ft | 1 | 50.00 | 50.00 |" in write_tables(tmp_path)
    assert main(["--collect", str(tmp_path)]) == 0


@pytest.mark.parametrize("field, value, warning", [
    ("seed", "0", "whose 'seed' is of type str, not int"), ("seed", None, "whose 'seed' is of type NoneType, not int"),
    ("seed", True, "whose 'seed' is of type bool, not int"),  # JSON true was seed 1, a bool being an int in Python
    ("dataset", 5, "whose 'dataset' is of type int, not str"),
    ("test_domains", "C", "whose 'test_domains' is of type str, not list"),
    ("test_domains", [], "the table cannot read (StatisticsError: fmean requires at least one data point"),
    # JSON true for an accuracy counted as 1.0 (100.00 in the table); false as 0.0
    ("test_accuracy", {"C": True}, "the table cannot read (TypeError: expected a number, got bool True")])
def test_a_record_edited_to_another_type_is_skipped_with_a_warning(tmp_path, field, value, warning):
    """Each of these fields, edited by hand, tabulated alone but ended every --collect and sweep in a traceback when
    tabulated with the others (seeds or datasets of two types are not sorted), or alone (no test domain); a string
    of test domains was read as a list of letters."""
    lines = [hand_record("ft", "C", 0, 0.5), {**hand_record("ft", "C", 1, 0.7), field: value}]
    (tmp_path / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.warns(UserWarning, match=rf"{tmp_path / RESULTS}:2: a record {re.escape(warning)}.*; ignored"):
        assert "| resnet50 | ft | 1 | 50.00 | 50.00 |" in write_tables(tmp_path)


# ---- a run stopped midway ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, workers", [pytest.param("lpft", 0, marks=pytest.mark.slow), ("ldt_dpu", 0),
                                             pytest.param("ldt_dpu", 2, marks=pytest.mark.slow)])
def test_a_stopped_run_resumes_from_its_state_to_the_same_record(toy, tmp_path, monkeypatch, default_sigint,
                                                                 method, workers):
    """SIGTERM after 3 of 6 training steps (2 warm-up and 3 probe batches drawn before them); the rerun neither warms
    up nor probes again and gives the uninterrupted in-process run's record, also with loader processes (whose
    augmentations restarted from fresh random streams)."""
    config = fast_config(toy, method=method, steps=6)
    straight = run(config)

    def run_with_workers(config, **kwargs):
        return run(config, **{**kwargs, "workers": workers})

    record, printed, drawn = stop_and_resume(tmp_path, config, run_with_workers, monkeypatch,
                                             stop_at=2 + 3 * (method != "lpft") + 3)
    assert f"resuming at step 3 from {tmp_path}" in printed and drawn == 3
    for key in ("test_accuracy", "holdout_accuracy", "holdout_per_domain", "selected_step", "history", "partition"):
        assert record[key] == straight[key], key


def test_a_saved_state_that_no_longer_fits_is_one_line_saying_to_delete_it(toy, tmp_path, monkeypatch, default_sigint,
                                                                          capsys):
    """The run identity names the data by path: a dataset that gained a class since keeps the run's hash, and its
    saved state (a 4-class head) no longer fits the network."""
    import argparse
    import shutil

    from ldt import runner

    data = copy_toy(toy, tmp_path / "data")
    config = fast_config(data, method="ldt_dpu", steps=6)
    state = stop_sweep(tmp_path / "out", config, run, monkeypatch, stop_at=2 + 3 + 1)
    for domain in DOMAINS:
        shutil.copytree(data / domain / CLASSES[0], data / domain / "zzz_new_class")
    args = argparse.Namespace(**SWEEP_ARGS)
    assert runner.main(args, lambda: (tmp_path / "out", [config]), run, lambda folder: "") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: run {config.describe()}: {state}: a saved state that "
                                                    "does not fit this run (")
    assert err.endswith("): delete it to train the run afresh\n") and state.exists()


def test_a_run_stopped_in_its_test_evaluation_saves_its_trained_state_and_only_tests_again(toy, tmp_path, monkeypatch,
                                                                                          default_sigint, capsys):
    """SIGTERM while the selected network is tested (after the last step; the segmentation runner's target evaluation
    can take minutes): the state of the whole training is saved, and the rerun trains nothing again."""
    import argparse
    import signal

    from ldt import runner

    config = fast_config(toy, method="ldt_dpu", steps=4)
    straight = run(config)
    original = train_module.test_accuracy

    def stop_in_test(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    out, args = tmp_path / "out", argparse.Namespace(**SWEEP_ARGS)
    state = out / runner.STATES_FOLDER / f"{run_hash(config.hparams())}.pt"
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "test_accuracy", stop_in_test)
        assert runner.main(args, lambda: (out, [config]), run, lambda folder: "") == 128 + signal.SIGTERM
    assert f"the run in progress saved {state}" in capsys.readouterr().err and state.exists()
    rerun_only_tests(out, config, state, straight, capsys)


def rerun_only_tests(out: Path, config: RunConfig, state: Path, straight: dict, capsys) -> None:
    """The sweep of ``config`` again, from the ``state`` its trained run saved: it draws no batch, and records what
    the uninterrupted run (``straight``) did."""
    import argparse

    from ldt import runner

    drawn = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner.ResumableStream, "__next__", lambda stream: drawn.append(1) or next(iter(())))
        assert runner.main(argparse.Namespace(**SWEEP_ARGS), lambda: (out, [config]), run, lambda folder: "") == 0
    assert f"resuming at step {config.steps} from {state}" in capsys.readouterr().out and not drawn
    assert not state.exists()
    [record] = load_records(out)
    for key in ("test_accuracy", "holdout_accuracy", "holdout_per_domain", "selected_step", "history", "partition"):
        assert record[key] == straight[key], key


def test_a_test_image_that_cannot_be_decoded_keeps_the_training_and_the_rerun_only_tests(toy, tmp_path, capsys):
    """A test-domain image whose pixel data is corrupt passes the start-up check (headers and end markers) and fails
    only in the test, after the whole training (the segmentation runner reads no target pixel before): its one line
    says the training is saved, where it was lost (a state is saved every --state-minutes only, or with inf never)."""
    import argparse

    from ldt import runner

    data = copy_toy(toy, tmp_path / "data")
    config = fast_config(data, method="ldt_dpu", steps=4)
    straight = run(config)
    image = next((data / config.test_domains[0]).glob("*/*.png"))
    whole = image.read_bytes()
    image.write_bytes(whole[:60] + bytes(b ^ 0x5A for b in whole[60:-20]) + whole[-20:])  # header and end kept
    out, args = tmp_path / "out", argparse.Namespace(**SWEEP_ARGS)
    state = out / runner.STATES_FOLDER / f"{run_hash(config.hparams())}.pt"
    assert runner.main(args, lambda: (out, [config]), run, lambda folder: "") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: run {config.describe()}: cannot decode image {image}: ")
    assert err.endswith(f"; its training is saved in {state}: once the file is fixed, the same command only "
                        "tests\n") and state.exists()
    image.write_bytes(whole)
    rerun_only_tests(out, config, state, straight, capsys)


@pytest.mark.parametrize("where", ["photo/circle/gone.png", "photo/hexagon", "sketch"])
@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_symlink_in_the_data_folder_is_named(toy, tmp_path, where, kind):
    """A symlink whose target is gone (a dataset of links to a drive not mounted) or a symlink loop was skipped
    without a word, as an image, a class folder or a domain folder: the sweep trained on less data than the folder
    shows. It is one line naming it, before anything is read."""
    root = copy_toy(toy, tmp_path / "toy")
    link = root / where
    link.symlink_to(tmp_path / "unmounted" / "x" if kind == "dangling" else link.name)
    expected = (f"{link} is a symlink to {tmp_path / 'unmounted' / 'x'}, which does not exist" if kind == "dangling"
                else f"{link} is a symlink loop")
    with pytest.raises(DatasetError) as info:
        scan_domains(root, check_files=False)
    assert str(info.value) == f"{expected}: fix or remove it (the data folder's entries must be readable)"


def test_a_cell_of_fewer_seeds_than_its_row_says_how_many():
    """A table of a partial sweep (stopped in its last seed) titled its cells 'n = Seeds' though some had fewer:
    the row said 3 seeds, a column and Avg were over 2, and nothing in the markdown told them apart."""
    records = [hand_record("ldt", "C", seed, 0.5 + seed / 10) for seed in range(3)]
    records += [hand_record("ldt", "L", seed, 0.8 + seed / 10) for seed in range(2)]
    markdown = to_markdown(build_table(records))
    assert "| resnet50 | ldt | 3 | 60.00 ± 5.77 | 85.00 ± 5.00 (n = 2) | 70.00 ± 5.00 (n = 2) |" in markdown
    assert "n = Seeds unless a cell says otherwise" in markdown


@pytest.mark.parametrize("inside, refused", [("results", True), ("photo/circle/out", True), (".results", False)])
def test_a_results_folder_inside_the_data_folder_is_refused(toy, tmp_path, monkeypatch, capsys, inside, refused):
    """--out inside --data worked once, then the next sweep read the results folder as a domain ("domain 'results'
    has no class folders"): it is one line naming both flags before anything is read (a hidden folder, which the scan
    skips, is fine)."""
    root = copy_toy(toy, tmp_path / "toy")
    monkeypatch.setattr("ldt.classification.__main__.plan", lambda args: pytest.fail("refused before the plan")
                        if refused else sys.exit(0))
    argv = ["--data", str(root), "--out", str(root / inside), "--no-progress"]
    if not refused:
        with pytest.raises(SystemExit):
            main(argv)
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --out: {root / inside} is inside --data {root}: the next sweep would read it as part of "
                   "the dataset; write the results outside the data folder\n"), err


def test_a_domain_folder_not_named_in_utf8_is_named(toy, tmp_path):
    """A domain folder named in another encoding (Latin-1 'café' from an old archive) reached the held-out split's
    domain.encode() and stopped the sweep with "'utf-8' codec can't encode character '\\udce9'", naming no folder."""
    root = copy_toy(toy, tmp_path / "toy")
    os.rename(root / "photo", os.fsencode(root) + b"/caf\xe9")
    with pytest.raises(DatasetError) as info:
        scan_domains(root, check_files=False)
    assert str(info.value) == (f"domain folder 'caf\\udce9' of {root} is not named in UTF-8 (a domain's name is "
                               "written into the records and tables): rename it")


def test_a_domain_folder_named_with_a_plus_is_a_domain_of_its_own(toy, tmp_path, monkeypatch, capsys):
    """--test-domains art+paint, with a domain folder named art+paint, was split into 'art' and 'paint' and refused
    ("'art', 'paint' are not domains of ... (domains: art+paint, ...)"): an entry is matched against the folder names
    exactly first, in a group too; one that reads both as a folder and as a group of folders is one line naming both."""
    root = copy_toy(toy, tmp_path / "toy")
    (root / "faded").rename(root / "art+paint")
    domains = sorted(folder.name for folder in data_module.domain_folders(root))
    assert main_module.left_out_groups(["art+paint", "photo+art+paint"], domains) == [
        ("art+paint",), ("art+paint", "photo")]
    args = main_module.parse_args(["--data", str(root), "--test-domains", "art+paint", "photo+art+paint",
                                   "--methods", "ft", "--seeds", "0", "--out", str(tmp_path / "out"), *FAST_FLAGS])
    _, configs = main_module.prepare(args)
    assert [config.test_domains for config in configs] == [("art+paint",), ("art+paint", "photo")]
    for name in ("art", "paint"):
        (root / name).mkdir()
    monkeypatch.setattr("ldt.classification.__main__.run", lambda *a, **k: pytest.fail("no run may start"))
    assert main(["--data", str(root), "--test-domains", "art+paint", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --test-domains: 'art+paint' names both the domain folder art+paint of {root} and the "
                   "group art + paint: rename the folder art+paint\n"), err


def test_a_batch_or_probe_larger_than_a_domain_is_said_before_training(toy, capsys):
    """--batch-size 40 on domains of 32 training images, or --probe-batches 100, ran without a word (the seeded
    stream passes over a domain again within a batch, the probe over every image many times): one warning line
    each, naming the flag and the counts, before any run; none when the data holds them, nor a probe line when no
    planned method probes."""
    def planned(*flags: str) -> str:
        args = main_module.parse_args(["--data", str(toy), "--test-domains", "photo", "--seeds", "0", *FAST_FLAGS,
                                       *flags])
        main_module.prepare(args)
        return capsys.readouterr().err

    assert planned("--methods", "ldt") == ""
    assert planned("--methods", "ft", "--batch-size", "40") == (
        "warning: --batch-size 40 is more than the 32 training images of domain 'cast': each of its batches holds "
        "some of them twice or more\n")
    assert planned("--methods", "ft", "--probe-batches", "100") == ""  # ft does not probe
    assert planned("--methods", "ldt", "--probe-batches", "70") == ""  # 8.8 passes: the probe may repeat a few
    assert planned("--methods", "ft", "ldt", "--probe-batches", "100") == (
        "warning: --probe-batches 100 of --batch-size 4 is 400 images of each training domain, 10 times or more the 32 "
        "training images of domain 'cast': the probe passes over them 12.5 times\n")


def test_a_batch_of_each_image_many_times_over_is_one_line_before_any_run(toy, tmp_path, monkeypatch, capsys):
    """--batch-size 100000 (typed zeros) was a warning, then a step of 100000 images per domain (out of memory for a
    real backbone: the segmentation runner's was ended by the OOM killer)."""
    from ldt.runner import BATCH_PASSES_REFUSED

    monkeypatch.setattr(main_module, "run", lambda *args, **kwargs: pytest.fail("a run started"))
    assert main(["--data", str(toy), *FAST_FLAGS, "--batch-size", "100000", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --batch-size 100000 is ")
    assert f"training images of domain 'cast', more than the {BATCH_PASSES_REFUSED} allowed (typed zeros?" in err


def test_run_checks_its_data_as_the_cli_does_and_the_cli_only_once(toy, tmp_path, monkeypatch, capsys):
    """run() called directly (the Python API) skipped the CLI's data check (scan_domains(check_files=False)): a
    truncated image trained until a batch drew it, a batch larger than a domain went unsaid. run() checks its data
    now, before building the model; a weights file that does not fit is one line before training; the CLI, which
    checked every run already, checks once."""
    def never(*args, **kwargs):
        raise AssertionError("must fail before this")

    root = copy_toy(toy, tmp_path / "toy")
    image = root / "faded" / "circle" / "0003.png"
    image.write_bytes(image.read_bytes()[:100])
    monkeypatch.setattr(train_module, "build_model", never)
    with pytest.raises(DatasetError, match=rf"^--data {root}: 1 unreadable image file\(s\): image {image} is truncated"):
        run(fast_config(root, method="ft"))
    image.unlink()
    with pytest.raises(AssertionError, match="must fail before this"):
        run(fast_config(root, method="ft", batch_size=40))
    assert capsys.readouterr().err == ("warning: --batch-size 40 is more than the 32 training images of domain "
                                       "'cast': each of its batches holds some of them twice or more\n")
    monkeypatch.undo()
    torch.save(build_model("resnet18", 4).state_dict(), tmp_path / "resnet18.pth")
    monkeypatch.setattr(train_module, "make_method", never)
    with pytest.raises(ValueError, match=r"resnet18\.pth does not fit backbone 'tiny': missing \d+ key"):
        run(fast_config(root, method="ft", weights=str(tmp_path / "resnet18.pth")))
    monkeypatch.undo()
    calls = []
    real = data_module.check_image_files
    monkeypatch.setattr(data_module, "check_image_files", lambda paths: calls.append(len(paths)) or real(paths))
    argv = ["--data", str(root), "--test-domains", "photo", "--methods", "ft", "--seeds", "0", "1",
            "--out", str(tmp_path / "out"), "--no-progress", *FAST_FLAGS]
    images = sum(map(len, scan_domains(root, check_files=False).samples.values()))
    assert main(argv) == 0 and calls == [images]  # the plan's check of both runs, none in the runs


def test_a_group_and_a_folder_of_the_same_joined_name_are_refused_in_run(toy, tmp_path, monkeypatch):
    """Through the Python API, a run on the group ('faded', 'noisy') and one on a domain folder named 'faded+noisy'
    recorded one table column ('faded+noisy', the test domains joined by '+'), their seeds averaged together. run()
    refuses either, as the CLI refuses the entry, in one line naming the folder, before the model is built."""
    def never(*args, **kwargs):
        raise AssertionError("must fail before this")

    root = copy_toy(toy, tmp_path / "toy")
    copy_toy(root / "faded", root / "faded+noisy")
    monkeypatch.setattr(train_module, "build_model", never)
    message = (rf"^test domains: 'faded\+noisy' names both the domain folder faded\+noisy of {root} and the group "
               r"faded \+ noisy: rename the folder faded\+noisy$")
    for group in (("faded", "noisy"), ("faded+noisy",)):
        with pytest.raises(DatasetError, match=message):
            run(fast_config(root, method="ft", test_domains=group))
    with pytest.raises(DatasetError, match=r"^test domains: 'faded\+noisy\+photo' names both the domain folder "
                       r"faded\+noisy of .* and the group faded \+ noisy \+ photo: rename the folder faded\+noisy$"):
        run(fast_config(root, method="ft", test_domains=("faded+noisy", "photo")))
    with pytest.raises(AssertionError, match="must fail before this"):  # no other reading: no ambiguity
        run(fast_config(root, method="ft", test_domains=("cast", "photo")))


def test_a_dataset_of_one_class_is_refused(toy, tmp_path):
    """A dataset whose domains hold one class folder each (the same one) trained to 100 % test accuracy: with one
    class the loss is zero and every prediction right, so the table said nothing. It is one line naming the class."""
    import shutil

    root = copy_toy(toy, tmp_path / "toy")
    for domain in DOMAINS:
        for name in CLASSES[1:]:
            shutil.rmtree(root / domain / name)
    with pytest.raises(DatasetError, match=rf"^{root}: every domain holds images of one class only \('{CLASSES[0]}'\)"
                                           r": classification needs at least two class folders$"):
        scan_domains(root, check_files=False)


def test_nested_folders_and_foreign_files_are_said_when_skipped(toy, tmp_path):
    """A class folder inside a class folder (a dataset one level too deep), or a file that is no image, was skipped
    without a word: fewer images and classes than the user has. One warning line per domain gives the counts and one
    example path (hidden files such as .DS_Store aside); a domain whose images are all one level too deep is one
    error naming the folder."""
    root = copy_toy(toy, tmp_path / "toy")
    (root / "photo" / "circle" / "notes.txt").write_text("not an image")
    (root / "photo" / "circle" / ".DS_Store").write_bytes(b"\0")
    nested = root / "photo" / "circle" / "more"
    nested.mkdir()
    (nested / "0.png").write_bytes((root / "photo" / "circle" / "0000.png").read_bytes())
    (root / "cast" / "readme.md").write_text("a file beside the class folders")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = scan_domains(root)
    said = sorted(str(w.message) for w in caught if str(w.message).startswith("domain '"))
    assert said == [
        f"domain 'cast' of {root}: 1 file skipped (not in a class folder, or not an image of "
        f"{', '.join(sorted(data_module.IMAGE_SUFFIXES))}), e.g. {root / 'cast' / 'readme.md'}",
        f"domain 'photo' of {root}: 1 folder skipped (folders inside a class folder are not read: one level too "
        f"deep?), e.g. {nested}; 1 file skipped (not in a class folder, or not an image of "
        f"{', '.join(sorted(data_module.IMAGE_SUFFIXES))}), e.g. {root / 'photo' / 'circle' / 'notes.txt'}",
    ], said
    assert len(dataset.samples["photo"]) == 10 * len(CLASSES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan_domains(toy)
    assert not [w for w in caught if str(w.message).startswith("domain '")]  # a clean dataset: no word
    deep = copy_toy(toy, tmp_path / "deep")
    (deep / "faded").rename(tmp_path / "faded")
    (deep / "faded").mkdir()
    (tmp_path / "faded").rename(deep / "faded" / "faded")  # faded/faded/<class>/<image>: one level too many
    with pytest.raises(DatasetError, match=rf"^domain 'faded' has no images: its images are one folder level too "
                       rf"deep \(e\.g\. {deep / 'faded' / 'faded' / CLASSES[0]}\); expected "
                       rf"{deep / 'faded'}/<class>/<image>$"):
        scan_domains(deep)



@pytest.mark.parametrize("broken", ["no images", "truncated"])
def test_a_data_error_found_scanning_data_names_the_flag(toy, tmp_path, monkeypatch, capsys, broken):
    """A segmentation dataset's folder given as --data (its images one level too deep) said 'error: domain 'clean' has
    no images: …' without the flag, where a root that is no folder said '--data: …'."""
    monkeypatch.setattr("ldt.classification.__main__.run", lambda *args, **kwargs: pytest.fail("must not run"))
    root = copy_toy(toy, tmp_path / "toy")
    if broken == "no images":
        for image in (root / "faded").glob("*/*.png"):
            image.unlink()
        expected = f"domain 'faded' has no images: expected {root / 'faded'}/<class>/<image>"
    else:
        (root / "faded" / "circle" / "0003.png").write_bytes(b"")
        expected = f"1 unreadable image file(s): image {root / 'faded' / 'circle' / '0003.png'} is empty"
    argv = ["--data", str(root), "--methods", "ft", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data {root}: {expected}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_group_and_a_folder_of_the_same_joined_name_keep_their_own_columns(tmp_path):
    """Records of the left-out group ('a', 'b') (a sweep of --test-domains a+b) and of a domain folder named 'a+b'
    (the dataset's a and b merged into one folder later) shared one table column 'a+b', their seeds averaged
    together. They are two columns now: the folder keeps its name, the group is written 'a + b'; a group alone (no
    folder of its joined name) keeps 'a+b', as before."""
    def record(test: list[str], domains: list[str], seed: int, accuracy: float) -> dict:
        return {"options_hash": f"{'|'.join(test)}-{seed}", "dataset": "D", "backbone": "tiny", "method": "ft",
                "seed": seed, "test_domains": test, "domains": domains,
                "test_accuracy": {name: accuracy for name in test}, "hparams": {"test_domains": test, "seed": seed}}

    group = [record(["a", "b"], ["a", "b", "c"], seed, 0.2) for seed in (0, 1)]
    folder = [record(["a+b"], ["a+b", "c"], seed, 0.8) for seed in (0, 1)]
    [alone] = build_table(group)
    assert alone["columns"] == ["a+b"] and alone["a+b"].mean == pytest.approx(0.2)
    [row] = build_table(group + folder)
    assert row["columns"] == ["a + b", "a+b"], row["columns"]
    assert (row["a + b"].mean, row["a + b"].n) == (pytest.approx(0.2), 2)
    assert (row["a+b"].mean, row["a+b"].n) == (pytest.approx(0.8), 2)
    (tmp_path / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in group + folder))
    markdown = write_tables(tmp_path)
    assert "| Seeds | a + b | a+b | Avg |" in markdown, markdown
    assert "D,tiny,ft," in (tmp_path / "table.csv").read_text() and ",a + b,0.2" in (tmp_path / "table.csv").read_text()


def test_an_immutable_out_whose_runs_are_all_recorded_prints_the_tables(toy, tmp_path, capsys, monkeypatch):
    """A sweep on an immutable (or read-only) --out was refused at start ('cannot write in …') even when every run
    was recorded there and only the tables would have been rewritten; they are printed now, said not rewritten
    (--collect too). A run left to train still refuses the folder, before any work."""
    out = tmp_path / "out"
    argv = ["--data", str(toy), "--out", str(out), "--methods", "ft", "--seeds", "0", "--test-domains", "photo",
            "--no-progress", *FAST_FLAGS]
    assert main(argv) == 0
    table = (out / "table.md").read_text()
    capsys.readouterr()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root on a file system that has it")
    monkeypatch.setattr(main_module, "check_data", never_read)  # the tables read the records alone
    try:
        said = (f"cannot write in {out}: operation not permitted (an immutable file? see lsattr): the tables are "
                "printed, not rewritten there")
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert f"1 runs, all recorded in {out}; {said}" in printed and table.strip() in printed, printed
        assert main(["--collect", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"{out}: {said}" in printed and table.strip() in printed, printed
        assert main([*argv[:7], "0", "1", *argv[8:]]) == 2  # seed 1 is not recorded: refused, as before
        assert capsys.readouterr().err == (f"error: --out: cannot write in {out}: operation not permitted (an "
                                           "immutable file? see lsattr)\n")
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


def test_an_empty_image_is_said_to_be_empty(toy, tmp_path):
    """A zero-byte image said PIL's 'cannot identify image file', where a weights file of 0 bytes is said empty."""
    root = copy_toy(toy, tmp_path / "toy")
    image = root / "faded" / "circle" / "0003.png"
    image.write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        scan_domains(root)
    assert str(info.value) == (f"1 unreadable image file(s): image {image} is empty (0 bytes): an interrupted write "
                               "or download?")


def test_an_image_emptied_after_the_start_up_check_is_said_to_be_empty(tmp_path):
    """An image emptied after the data check (read by load_image in training) said PIL's 'cannot identify image
    file', where the start-up check says the file is empty (ldt.cli.EMPTY_FILE)."""
    image = tmp_path / "0003.png"
    image.write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        data_module.load_image(str(image))
    assert str(info.value) == f"image {image} is empty (0 bytes): an interrupted write or download?"
    image.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=rf"^cannot decode image {re.escape(str(image))}: cannot identify image"):
        data_module.load_image(str(image))


def never_read(*args, **kwargs):
    raise AssertionError("read the data or pre-trained before refusing the folder")


def immutable(folder: Path):
    """``folder`` made immutable (chattr +i) for the ``with`` block; skips the test where that cannot be done."""
    import contextlib

    @contextlib.contextmanager
    def held():
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i needs root on a file system that has it")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    return held()


@pytest.mark.parametrize("demo", [False, True])
def test_a_run_left_to_train_in_an_immutable_out_is_refused_before_the_data_is_read(demo, toy, tmp_path, monkeypatch,
                                                                                    capsys):
    """A sweep on an immutable --out holding records planned everything first (every image's header read, the
    demo's data built and its tiny backbone pre-trained) to tell whether only its tables were left, and refused
    the folder only then; a run left to train is now refused from the plan alone, before any of that."""
    if demo:  # the demo's data in place (built before), its pre-training not made yet
        monkeypatch.chdir(tmp_path)
        copy_toy(toy, tmp_path / main_module.DEFAULT_ROOT)
    for name in ("check_data", "build_toy_domains", "pretrain_tiny"):
        monkeypatch.setattr(main_module, name, never_read)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text("")  # records of no planned run
    argv = [*([] if demo else ["--data", str(toy)]), "--out", str(out), "--methods", "ft", "--seeds", "0",
            "--test-domains", "photo", "--no-progress", *FAST_FLAGS]
    with immutable(out):
        assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: --out: cannot write in {out}: operation not permitted (an immutable "
                                       "file? see lsattr)\n")
