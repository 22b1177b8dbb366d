"""Train_pip.py / test.py end to end on CPU: every method, validation, saving, resume, bad options, test.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ldt.sr.options import OptionsError, load_options
from tests.sr_fixtures import simulate_crash, tiny_cameras, tiny_options, write_options


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def run_training(opt: dict, tmp_path, **kwargs) -> dict:
    from ldt.sr.train import train

    loaded = load_options(write_options(opt, tmp_path), is_train=True)
    loaded.update(dist=False, rank=0, world_size=1, **kwargs)
    return train(loaded, root=tmp_path)


def final_params(tmp_path, name: str) -> dict:
    return torch.load(tmp_path / "experiments" / name / "models" / "net_g_latest.pth", weights_only=True)["params"]


@pytest.mark.parametrize("method", ["ft", "lpft", "deft", "ldt", "ldt_s"])
def test_every_method_trains_validates_and_saves(method, data_root, tmp_path):
    extra = {"ldt": {**tiny_options(data_root, "x")["ldt"], "method": method, "warmup": {"steps": 2}}} if method == "lpft" else {}
    opt = tiny_options(data_root, f"run_{method}", method, **extra)
    report = run_training(opt, tmp_path)
    assert report["iterations"] == 6
    rows = report["metrics"]["rows"]
    assert set(rows) == {"source", "pan"} and all(0 < r["psnr"] < 100 and 0 < r["ssim"] <= 1 for r in rows.values())
    exp = tmp_path / "experiments" / f"run_{method}"
    assert (exp / "models" / "net_g_3.pth").is_file() and (exp / "training_states" / "6.state").is_file()
    assert (exp / "models" / "net_g_best.pth").is_file(), "best checkpoint selected on the source set"
    assert json.loads((exp / "results.json").read_text())["best"]["set"] == "source"
    if method in ("deft", "ldt", "ldt_s"):
        assert (exp / "partition.json").is_file()

    # The composite loads into the plain architecture and into basicsr's own SRModel with strict=True.
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY

    plain = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    plain.load_state_dict(final_params(tmp_path, f"run_{method}"), strict=True)


def test_the_pretrained_weights_are_read_once_by_training_and_by_test(data_root, tmp_path, monkeypatch):
    """The start-up check read the whole file and the model read it again: twice the I/O of a large checkpoint."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.sr.evaluate import run_test

    weights = tmp_path / "net.pth"
    torch.manual_seed(123)  # not the run's initialisation (manual_seed 0)
    network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    torch.save({"params": network.state_dict()}, weights)
    reads, load = [], torch.load

    def counting_load(file, *args, **kwargs):
        reads.append(Path(file))
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    opt = tiny_options(data_root, "read_once", "ft", train__total_iter=1)
    opt["path"] = {"pretrain_network_g": str(weights)}
    run_training(opt, tmp_path)
    assert reads.count(weights) == 1
    trained = final_params(tmp_path, "read_once")  # one Adam step (lr 1e-3) from the file's weights
    assert all(torch.allclose(trained[k], v, atol=1e-2) for k, v in network.state_dict().items())
    test_opt = {"name": "read_once_test", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
                "datasets": {"test_1": opt["datasets"]["val_1"]}, "path": {"pretrain_network_g": str(weights)}}
    run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    assert reads.count(weights) == 2


def test_stages_on_one_pretrained_file_fingerprint_it_once(data_root, tmp_path, monkeypatch):
    """Each demo or sweep stage read the whole pre-trained file for its tensor fingerprint, then again in training's
    start-up check: twice the I/O of a large checkpoint per stage. The fingerprint is kept for the process, by the
    file's identity: a file rewritten in place or replaced (``--force``) is read again."""
    import os
    import time

    import ldt.archs  # noqa: F401
    import ldt.weights
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.atomic import atomic_torch_save
    from ldt.sr.experiment import run_stage
    from ldt.weights import content_fingerprint

    weights = tmp_path / "net.pth"
    network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)

    def save_changed(save) -> None:
        """Other weights at the same path, left to settle (a backbone made before the stages)."""
        with torch.no_grad():
            next(network.parameters()).add_(1)
        save({"params": network.state_dict()}, weights)
        time.sleep(ldt.weights.SETTLED_SECONDS + 0.1)

    save_changed(torch.save)
    reads, load = [], torch.load

    def counting_load(file, *args, **kwargs):
        reads.append(Path(file))
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    for name in ("first", "second"):
        opt = tiny_options(data_root, name, "ft", train__total_iter=1)
        opt["path"] = {"pretrain_network_g": str(weights)}
        run_stage(opt, tmp_path)
    assert reads.count(weights) == 3  # one fingerprint, and each stage's start-up check
    fingerprints = {content_fingerprint(weights)}
    inode = os.stat(weights).st_ino
    save_changed(torch.save)  # rewritten in place
    assert os.stat(weights).st_ino == inode
    fingerprints.add(content_fingerprint(weights))
    save_changed(atomic_torch_save)  # replaced, as a --force rebuild does
    fingerprints.add(content_fingerprint(weights))
    assert len(fingerprints) == 3 and reads.count(weights) == 5


def test_composite_is_what_was_validated(data_root, tmp_path):
    """Validation metrics of the final report are those of the saved composite (not of a live branch)."""
    from ldt.sr.evaluate import run_test

    opt = tiny_options(data_root, "composite", "ldt")
    report = run_training(opt, tmp_path)
    test_opt = {k: v for k, v in opt.items() if k not in ("train", "ldt", "logger")}
    test_opt["name"] = "composite_test"
    test_opt["datasets"] = {k: v for k, v in opt["datasets"].items() if k != "train"}
    test_opt["path"] = {"pretrain_network_g": str(tmp_path / "experiments" / "composite" / "models" / "net_g_latest.pth")}
    table = run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    for camera, values in report["metrics"]["rows"].items():
        assert table.rows[camera]["psnr"] == pytest.approx(values["psnr"], abs=1e-9)
        assert table.rows[camera]["ssim"] == pytest.approx(values["ssim"], abs=1e-12)
    assert (tmp_path / "results" / "composite_test" / "results.md").is_file()


def test_a_rerun_of_test_py_archives_the_earlier_evaluation(data_root, tmp_path, capsys):
    """A second evaluation under the same name (e.g. of other weights) keeps the first one's results."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.sr.evaluate import run_test

    opt = tiny_options(data_root, "rerun")
    test_opt = {"name": "rerun_test", "num_gpu": 0, "network_g": opt["network_g"],
                "datasets": {"test_1": opt["datasets"]["val_2"]}, "val": {"pbar": False}}
    tables = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
        torch.save({"params": network.state_dict()}, tmp_path / f"net_{seed}.pth")
        test_opt["path"] = {"pretrain_network_g": str(tmp_path / f"net_{seed}.pth")}
        tables.append(run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path))
    archived = list((tmp_path / "results").glob("rerun_test_archived_*"))
    assert len(archived) == 1 and f"held an earlier evaluation: archived as {archived[0]}" in capsys.readouterr().out
    first = json.loads((archived[0] / "results.json").read_text())
    assert first["network"] == str(tmp_path / "net_0.pth") and first["rows"]["pan"] == tables[0].rows["pan"]
    second = json.loads((tmp_path / "results" / "rerun_test" / "results.json").read_text())
    assert second["network"] == str(tmp_path / "net_1.pth")


def test_plain_basicsr_srmodel_loads_the_checkpoint(data_root, tmp_path):
    opt = tiny_options(data_root, "plain", "ldt")
    run_training(opt, tmp_path)
    from basicsr.models.sr_model import SRModel

    sr_opt = {"num_gpu": 0, "is_train": False, "dist": False, "network_g": opt["network_g"],
              "path": {"pretrain_network_g": str(tmp_path / "experiments" / "plain" / "models" / "net_g_latest.pth"),
                       "strict_load_g": True}}
    model = SRModel(sr_opt)
    expected = final_params(tmp_path, "plain")
    for key, value in model.net_g.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("method", ["ft", "lpft", "deft", "ldt", "ldt_s"])
def test_resume_continues_bit_identically(method, data_root, tmp_path, monkeypatch):
    """LP-FT's warm-up and LDT's probe run once: a resumed run takes their results from the state."""
    warm = {"ldt": {**tiny_options(data_root, "x")["ldt"], "method": method, "warmup": {"steps": 2}}}
    extra = warm if method == "lpft" else {}
    straight = tiny_options(data_root, f"straight_{method}", method, **extra)
    run_training(straight, tmp_path)
    # Same run, stopped after 3 iterations (mid-epoch, mid exchange interval), then resumed from its state.
    first = tiny_options(data_root, f"resumed_{method}", method, train={**straight["train"], "total_iter": 3}, **extra)
    run_training(first, tmp_path)
    second = tiny_options(data_root, f"resumed_{method}", method, **extra)

    def not_on_resume(*args, **kwargs):
        raise AssertionError("a resumed run takes the warm-up's and the probe's results from its state")

    monkeypatch.setattr("ldt.core.methods.warmup", not_on_resume)
    monkeypatch.setattr("ldt.core.methods.probe_gradients", not_on_resume)
    run_training(second, tmp_path, auto_resume=True)
    a, b = final_params(tmp_path, f"straight_{method}"), final_params(tmp_path, f"resumed_{method}")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_auto_resume_after_a_crash(data_root, tmp_path, monkeypatch):
    straight = tiny_options(data_root, "nocrash", "ldt")
    run_training(straight, tmp_path)

    simulate_crash(monkeypatch, at=5)
    crashed = tiny_options(data_root, "crash", "ldt")
    with pytest.raises(KeyboardInterrupt):
        run_training(crashed, tmp_path)
    states = sorted(p.name for p in (tmp_path / "experiments" / "crash" / "training_states").iterdir())
    assert states == ["3.state"]

    def not_on_resume(*args, **kwargs):
        raise AssertionError("resuming must take the partition from the training state, not probe again")

    monkeypatch.setattr("ldt.core.methods.probe_gradients", not_on_resume)
    run_training(crashed, tmp_path, auto_resume=True)
    a, b = final_params(tmp_path, "nocrash"), final_params(tmp_path, "crash")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_keep_last_checkpoints_prunes_old_iterations(data_root, tmp_path):
    opt = tiny_options(data_root, "pruned", "ldt", logger__save_checkpoint_freq=2, logger__keep_last_checkpoints=1)
    opt["logger"]["print_freq"] = 2
    run_training(opt, tmp_path)
    exp = tmp_path / "experiments" / "pruned"
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["6.state"]
    assert sorted(p.name for p in (exp / "models").iterdir()) == ["net_g_6.pth", "net_g_best.pth", "net_g_latest.pth"]
    with pytest.raises(OptionsError, match="keep_last_checkpoints: must be >= 0"):
        run_training(tiny_options(data_root, "bad", "ldt", logger__keep_last_checkpoints=-1), tmp_path)


def test_run_stage_resumes_an_interrupted_run_and_its_curves(data_root, tmp_path, monkeypatch):
    """The sweeps' stage runner continues a crashed run from its newest state instead of starting over."""
    from ldt.sr.experiment import run_stage

    def options(name: str) -> dict:
        return tiny_options(data_root, name, "ldt", logger__save_checkpoint_freq=2, logger__keep_last_checkpoints=1,
                            val__val_freq=2)

    straight = run_stage(options("straight"), tmp_path)
    steps = simulate_crash(monkeypatch, at=5)
    with pytest.raises(KeyboardInterrupt):
        run_stage(options("stage"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "experiments" / "stage" / "training_states").iterdir()) == ["4.state"]
    steps.clear()
    resumed = run_stage(options("stage"), tmp_path)
    assert steps == [5, 6]
    assert [h["iter"] for h in resumed["history"]] == [h["iter"] for h in straight["history"]] == [2, 4, 6]
    assert resumed["best"] == straight["best"]
    a, b = final_params(tmp_path, "straight"), final_params(tmp_path, "stage")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_stage_starts_afresh_when_every_state_of_the_stage_is_broken(data_root, tmp_path, monkeypatch, capsys):
    from ldt.sr.experiment import run_stage

    opt = tiny_options(data_root, "broken_stage", "ldt", logger__save_checkpoint_freq=2, val__val_freq=2)
    steps = simulate_crash(monkeypatch, at=3)
    with pytest.raises(KeyboardInterrupt):
        run_stage(opt, tmp_path)
    state = tmp_path / "experiments" / "broken_stage" / "training_states" / "2.state"
    state.write_bytes(state.read_bytes()[:500])
    steps.clear()
    report = run_stage(opt, tmp_path)
    assert steps[0] == 1 and report["iterations"] == opt["train"]["total_iter"]
    assert f"warning: skipping training state {state}: truncated" in capsys.readouterr().out


def test_a_stage_that_another_process_is_training_is_left_alone(data_root, tmp_path, monkeypatch):
    """A second demo or sweep would otherwise delete the folder of a stage the first is still training (it has
    options_hash.txt but no state yet); it is refused before it looks, and the training inside a stage re-enters
    the stage's own lock."""
    from ldt.atomic import BusyError, exclusive_lock, lock_beside
    from ldt.sr.experiment import run_stage
    from tests.conftest import lock_held_elsewhere

    opt = tiny_options(data_root, "shared_stage", "ldt", logger__save_checkpoint_freq=2, val__val_freq=2)
    simulate_crash(monkeypatch, at=1)  # stopped before its first state: a folder a rerun would start afresh
    with pytest.raises(KeyboardInterrupt):
        run_stage(opt, tmp_path)
    exp = tmp_path / "experiments" / "shared_stage"
    before = sorted(p.relative_to(exp) for p in exp.rglob("*"))
    assert Path("options_hash.txt") in before
    with lock_held_elsewhere(lock_beside(exp), 60) as holder:
        with pytest.raises(BusyError, match=f"^{exp} is in use by another run \\(pid {holder.pid}, since "):
            run_stage(opt, tmp_path)
        assert sorted(p.relative_to(exp) for p in exp.rglob("*")) == before
    with exclusive_lock(lock_beside(exp)):  # held by this process: the stage and its training re-enter it
        report = run_stage(opt, tmp_path)
    assert report["iterations"] == opt["train"]["total_iter"]


def test_resume_keeps_a_best_checkpoint_saved_after_the_state(data_root, tmp_path, monkeypatch):
    """Validation runs more often than states are saved: a best found after the last state must survive a resume."""
    opt = tiny_options(data_root, "best", "ldt", val__val_freq=1, logger__save_checkpoint_freq=3)
    opt["val"]["pbar"] = False
    simulate_crash(monkeypatch, at=5)
    with pytest.raises(KeyboardInterrupt):
        run_training(opt, tmp_path)
    best_file = tmp_path / "experiments" / "best" / "best.json"
    # Pretend the network of iteration 4 (saved after 3.state) scored far better than anything after the resume.
    record = json.loads(best_file.read_text())
    record.update(value=record["value"] + 100.0, iter=4)
    best_file.write_text(json.dumps(record))
    report = run_training(opt, tmp_path, auto_resume=True)
    assert report["best"] == record


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(data_root, tmp_path, monkeypatch):
    from ldt.models.ldt_model import LDTModel, NonFiniteLossError

    original = LDTModel.feed_data

    def poison_at_5(self, data):
        original(self, data)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 5:
            self.gt = self.gt * float("nan")

    monkeypatch.setattr(LDTModel, "feed_data", poison_at_5)
    opt = tiny_options(data_root, "nan_stop", "ldt")
    with pytest.raises(NonFiniteLossError, match="iteration 5"):
        run_training(opt, tmp_path)
    saved = tmp_path / "experiments" / "nan_stop" / "models" / "net_g_3.pth"
    params = torch.load(saved, weights_only=True)["params"]
    assert all(torch.isfinite(v).all() for v in params.values())

    skip = tiny_options(data_root, "nan_skip", "ldt", train={**opt["train"], "nan_policy": "skip"})
    report = run_training(skip, tmp_path)
    assert report["nan_skips"] == 2  # both branches skipped iteration 5
    assert all(torch.isfinite(v).all() for v in final_params(tmp_path, "nan_skip").values())


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda o: o["ldt"].update(methd="ldt"), "ldt:methd: unknown option (did you mean 'method'?)"),
        (lambda o: o["ldt"].update(unstable_ratio=1.5), "ldt:unstable_ratio: must be < 1, got 1.5"),
        (lambda o: o["ldt"].update(method="ldtx"), "ldt:method: unknown method 'ldtx' (did you mean 'ldt'?)"),
        (lambda o: o["train"].update(total_iter="many"), "train:total_iter: expected an integer, got str 'many'"),
        (lambda o: o["network_g"].update(n_block=2), "network_g:n_block: unknown option (did you mean 'n_blocks'?)"),
        (lambda o: o["network_g"].update(type="SAFNM"), "unknown architecture 'SAFNM' (did you mean 'SAFMN'?)"),
        (lambda o: o["datasets"]["train"].update(dataroot="/nonexistent/DRealSR"), "datasets:train:dataroot: path does not exist"),
        (lambda o: o["path"].update(pretrain_network_g="/nonexistent/net.pth"), "path:pretrain_network_g: file does not exist"),
        (lambda o: o.update(nmae="x"), "nmae: unknown option (did you mean 'name'?)"),
        (lambda o: o["val"].update(selection="target"), "val:selection: must be 'source', 'last' or 'oracle:"),
    ],
)
def test_bad_options_are_rejected_before_compute(mutate, message, data_root, tmp_path):
    opt = tiny_options(data_root, "bad", "ldt")
    mutate(opt)
    with pytest.raises(OptionsError) as err:
        load_options(write_options(opt, tmp_path), is_train=True)
    assert message in str(err.value)
    assert "bad.yml" in str(err.value)
    assert not (tmp_path / "experiments").exists()


def test_force_yml_and_bare_names(data_root, tmp_path):
    opt = tiny_options(data_root, "force", "ldt")
    path = write_options(opt, tmp_path)
    loaded = load_options(path, is_train=True, overrides=["ldt:method=ft", "train:optim_g:lr=2e-4", "ldt:exchange:dpu=false"])
    assert loaded["ldt"]["method"] == "ft" and loaded["train"]["optim_g"]["lr"] == 2e-4
    assert loaded["ldt"]["exchange"]["dpu"] is False
    with pytest.raises(OptionsError, match="is not an option section"):
        load_options(path, is_train=True, overrides=["trian:total_iter=3"])
    with pytest.raises(OptionsError, match="not found"):
        load_options("no_such_options.yml", is_train=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "test"])
def test_shipped_option_files_are_valid_up_to_missing_data(kind):
    """The paper's option files have no unknown keys or bad types; only DRealSR / weights may be missing here."""
    from ldt.sr.options import OPTION_DIRS

    files = sorted(OPTION_DIRS[kind].rglob("*.yml"))
    assert len(files) >= (3 if kind == "test" else 27)
    for file in files:
        try:
            load_options(file, is_train=kind == "train")
        except OptionsError as err:
            problems = str(err).splitlines()[1:]
            assert problems and all("does not exist" in line for line in problems), str(err)


def test_sr_entry_points_report_one_line_and_the_traceback_on_request(capsys, monkeypatch):
    from ldt.sr.train import run_reporting_errors

    def work():
        raise OptionsError("options.yml: train:total_iter: must be a positive integer")

    assert run_reporting_errors(work) == 2
    assert capsys.readouterr().err == "error: options.yml: train:total_iter: must be a positive integer\n"
    monkeypatch.setenv("LDT_TRACEBACK", "1")
    assert run_reporting_errors(work) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in work" in err
    assert err.endswith("error: options.yml: train:total_iter: must be a positive integer\n")


def test_validate_start_lets_the_network_before_fine_tuning_win_the_best_checkpoint(data_root, tmp_path, monkeypatch):
    """val:validate_start (the official script's initial best): iteration 0 is validated and competes. Validation
    scores that fall with the iteration make it the best, so net_g_best holds the weights training started from."""
    import ldt.sr.train as train_module
    from ldt.models.ldt_model import LDTModel

    real_validate, started = train_module.validate, {}

    def falling(model, loaders, opt, current_iter, *args, **kwargs):
        table = real_validate(model, loaders, opt, current_iter, *args, **kwargs)
        for values in table.rows.values():
            values["psnr"] = 100.0 - current_iter
        return table

    original_save_best = LDTModel.save_best

    def remember(self, tag):  # the deployed network when iteration 0 is saved as the best
        started.setdefault("params", {k: v.clone() for k, v in self.method.checkpoint()["params"].items()})
        original_save_best(self, tag)

    monkeypatch.setattr(train_module, "validate", falling)
    monkeypatch.setattr(LDTModel, "save_best", remember)
    opt = tiny_options(data_root, "start", "ldt", val__val_freq=2, val__validate_start=True)
    report = run_training(opt, tmp_path)
    assert [entry["iter"] for entry in report["history"]] == [0, 2, 4, 6]
    assert report["best"]["iter"] == 0 and report["best"]["value"] == 100.0
    best = torch.load(tmp_path / "experiments" / "start" / "models" / "net_g_best.pth", weights_only=True)["params"]
    assert all(torch.equal(best[k], started["params"][k]) for k in best)
    assert not all(torch.equal(best[k], v) for k, v in final_params(tmp_path, "start").items())  # it did train

    plain = run_training(tiny_options(data_root, "plain", "ldt", val__val_freq=2), tmp_path)  # the default: off
    assert [entry["iter"] for entry in plain["history"]] == [2, 4, 6]


def _paired_folders(root: Path, short: str | None = None, hr_size: tuple[int, int] = (64, 48)) -> tuple[Path, Path]:
    """A Set5-style pair of folders for BasicSR's PairedImageDataset (LR = HR name): three ``hr_size`` (h, w) HR /
    16x12 LR images; ``short``: the HR of that name is one row short of ``hr_size`` (a crop off by one pixel)."""
    import cv2
    import numpy as np

    hr_dir, lr_dir = root / "HR", root / "LR"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir()
    for index, name in enumerate(("baby", "bird", "butterfly")):
        hr = cv2.resize(np.random.default_rng(index).integers(0, 256, (12, 16, 3), dtype=np.uint8), hr_size[::-1])
        cv2.imwrite(str(lr_dir / f"{name}.png"), cv2.resize(hr, (12, 16), interpolation=cv2.INTER_AREA))
        cv2.imwrite(str(hr_dir / f"{name}.png"), hr[:-1] if name == short else hr)
    return hr_dir, lr_dir


def _paired_set(name: str, hr_dir: Path, lr_dir: Path, **extra) -> dict:
    return {"name": name, "type": "PairedImageDataset", "dataroot_gt": str(hr_dir), "dataroot_lq": str(lr_dir),
            "io_backend": {"type": "disk"}, **extra}


def test_paired_image_sets_with_a_mis_scaled_pair_are_refused_before_any_work(data_root, tmp_path):
    """BasicSR's PairedImageDataset checks no sizes: an HR one pixel short of LR x scale failed test.py (and a
    training's first validation, after val_freq iterations) in the metrics, 'SR output (64, 48, 3) and GT (63, 48,
    3) differ in size', no file named; in a training set, BasicSR's random crop failed mid-epoch ('Scale
    mismatches'), no file named either. Now each is one line naming the pair, before the network is built."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.data.cameras import DatasetError
    from ldt.sr.evaluate import run_test

    hr_dir, lr_dir = _paired_folders(tmp_path / "set5", short="bird")
    opt = tiny_options(data_root, "paired")
    network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    torch.save({"params": network.state_dict()}, tmp_path / "net.pth")
    test_opt = {"name": "paired_test", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
                "datasets": {"test_1": _paired_set("Set5", hr_dir, lr_dir)},
                "path": {"pretrain_network_g": str(tmp_path / "net.pth")}}
    message = r"test set Set5: .*HR/bird.png / .*LR/bird.png: HR size \(63, 48\) is smaller than LR size"
    with pytest.raises(DatasetError, match=message):
        run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)

    train_opt = tiny_options(data_root, "paired_train", "ft")
    train_opt["datasets"]["train"] = _paired_set("DF2K", hr_dir, lr_dir, gt_size=32, batch_size_per_gpu=2,
                                                 num_worker_per_gpu=0)
    with pytest.raises(DatasetError, match=r"datasets:train \(DF2K\): .*bird.png: HR size \(63, 48\) is not LR size"):
        run_training(train_opt, tmp_path)
    assert not (tmp_path / "experiments" / "paired_train").exists()

    # An HR folder of another scale (the x8 set's HRs for a x4 network): BasicSR crops each HR to LR x 4, its
    # top-left quarter, and scores it against the whole LR: wrong numbers, silently.
    x8_hr, x8_lr = _paired_folders(tmp_path / "x8", hr_size=(128, 96))
    test_opt["datasets"]["test_1"] = _paired_set("Set5", x8_hr, x8_lr)
    with pytest.raises(DatasetError, match=r"baby.png: HR size \(128, 96\) exceeds LR size \(16, 12\) x4 by more "
                                           r"than 16 px"):
        run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)

    # A correct set evaluates, through basicsr's own reader (its HR crop to LR x scale included).
    good_hr, good_lr = _paired_folders(tmp_path / "good")
    test_opt["datasets"]["test_1"] = _paired_set("Set5", good_hr, good_lr)
    table = run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    assert table.counts["Set5"] == 3


def _paired_lmdbs(root: Path, **folders) -> tuple[Path, Path]:
    """The Set5-style folders of :func:`_paired_folders` (``folders``: its options) as BasicSR's LMDBs, written by
    BasicSR's own writer (keys: the names without extension)."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    databases = []
    for folder in _paired_folders(root, **folders):
        names = sorted(path.name for path in folder.iterdir())
        make_lmdb_from_imgs(str(folder), f"{folder}.lmdb", names, [name[:-4] for name in names], map_size=1 << 24)
        databases.append(Path(f"{folder}.lmdb"))
    return databases[0], databases[1]


def _lmdb_set(gt: Path, lq: Path, phase: str = "train") -> dict:
    """Options whose ``datasets:train`` is BasicSR's PairedImageDataset on the LMDBs ``gt`` / ``lq``."""
    return {"datasets": {"train": _paired_set("DF2K", gt, lq, io_backend={"type": "lmdb"}, gt_size=32, phase=phase,
                                              scale=4, use_hflip=True, use_rot=True)}}


def test_two_paired_image_sets_on_one_lmdb_read_in_one_process(tmp_path):
    """BasicSR's PairedImageDataset opens its LMDBs itself, once per dataset object, and py-lmdb >= 3 refuses a
    second open in a process: a repartition's probe set beside the training set read in-process
    (num_worker_per_gpu: 0) failed mid-training, 'The environment ... is already open in this process'. Both read
    now, as do forked workers, the same images as from the folders."""
    from ldt.sr.loaders import dataset

    gt, lq = _paired_lmdbs(tmp_path)
    opt = _lmdb_set(gt, lq)
    first, second = dataset(opt, "train"), dataset(opt, "train")
    assert first[0]["gt"].shape == second[0]["gt"].shape == (3, 32, 32)
    loader = torch.utils.data.DataLoader(first, batch_size=2, num_workers=1, multiprocessing_context="fork")
    assert next(iter(loader))["gt"].shape == (2, 3, 32, 32)
    whole = dataset(_lmdb_set(gt, lq, phase="val"), "train")[1]
    disk = dataset({"datasets": {"train": _paired_set("DF2K", tmp_path / "HR", tmp_path / "LR", phase="val",
                                                      scale=4)}}, "train")[1]
    assert whole["gt_path"] == "bird" and torch.equal(whole["gt"], disk["gt"]) and torch.equal(whole["lq"], disk["lq"])


def _drop_line(meta: Path, key: str) -> None:
    meta.write_text("".join(line for line in meta.read_text().splitlines(True) if not line.startswith(key)))


@pytest.mark.parametrize("damage, message", [
    ("delete_key", r"datasets:train \(DF2K\): LMDB .*HR.lmdb lacks 1 of the 3 image\(s\) its meta_info.txt lists "
                   r"\(bird\): a half-written database\? rebuild it with basicsr"),
    ("unpaired", r"datasets:train \(DF2K\): 1 key\(s\) of .*HR.lmdb/meta_info.txt are not in .*LR.lmdb/meta_info.txt "
                 r"\(butterfly\): BasicSR pairs"),
    ("no_meta", r"datasets:train:dataroot_lq: .*LR.lmdb is not an LMDB \(io_backend: lmdb reads a folder whose "
                r"name ends in .lmdb, holding a meta_info.txt"),
    ("the_folder", r"datasets:train:dataroot_lq: .*/set/LR is not an LMDB"),
    ("cut_short", r"datasets:train \(DF2K\): LMDB .*HR.lmdb is cut short: its data.mdb holds 13516 of the 45056 bytes "
                  r"its header records: a copy that did not finish\? rebuild it with basicsr"),
    ("malformed", r"^datasets:train \(DF2K\): .*LR.lmdb/meta_info.txt:1: expected 'name.png \(h,w,c\) level', got "
                  r"'a.png'$"),
])
def test_a_paired_image_set_on_lmdbs_whose_keys_do_not_pair_or_are_missing_is_refused_before_any_work(
        data_root, tmp_path, damage, message):
    """BasicSR's PairedImageDataset on LMDBs failed, without naming a key, on GT and LQ meta_info.txt files whose
    keys differ ('Keys in lq_folder and gt_folder are different.', a traceback) and, mid-epoch, on a key its
    database lacks ('a bytes-like object is required, not NoneType'). Each is one line naming the database and the
    key, before the experiment folder is touched (and so, by the option check, are BasicSR's refusals of a folder not
    named *.lmdb and of an LMDB without meta_info.txt, tracebacks too)."""
    import lmdb

    from ldt.data.cameras import DatasetError

    gt, lq = _paired_lmdbs(tmp_path / "set")
    if damage == "delete_key":
        with lmdb.open(str(gt)) as env, env.begin(write=True) as txn:
            txn.delete(b"bird")
    elif damage == "unpaired":
        _drop_line(lq / "meta_info.txt", "butterfly")
    elif damage == "no_meta":
        (lq / "meta_info.txt").unlink()
    elif damage == "malformed":  # the prefix every other error of the set carries was missing
        (lq / "meta_info.txt").write_text("a.png\n" + (lq / "meta_info.txt").read_text())
    elif damage == "cut_short":  # a copy stopped part-way: its pages past the cut were a SIGBUS ('Bus error', no line)
        (gt / "data.mdb").write_bytes((gt / "data.mdb").read_bytes()[:13516])
    else:
        lq = tmp_path / "set" / "LR"  # the images, not their LMDB
    opt = tiny_options(data_root, "paired_lmdb", "ft")
    opt["datasets"]["train"] = {**_lmdb_set(gt, lq)["datasets"]["train"], "batch_size_per_gpu": 2}
    with pytest.raises((DatasetError, OptionsError), match=message):
        run_training(opt, tmp_path)
    assert not (tmp_path / "experiments" / "paired_lmdb").exists()


@pytest.mark.parametrize("damage, message", [
    ("one_lr_fewer", r"HR folder .*/set/HR \(3 images\) and LR folder .*/set/LR \(2\) do not pair: 1 LR image\(s\) "
                     r"missing \(bird.png\) \(BasicSR takes the LR of each HR <name>.<ext> to be <name>.<ext>\)"),
    ("renamed", r"\(3 images\) and LR folder .*/set/LR \(3\) do not pair: 1 LR image\(s\) missing \(bird.png\); 1 LR "
                r"image\(s\) without an HR \(birdy.png\)"),
    ("template", r"do not pair: 3 LR image\(s\) missing \(babyx4.png, birdx4.png, butterflyx4.png\); 3 LR image\(s\) "
                 r"without an HR \(baby.png, bird.png, butterfly.png\) \(.* to be <name>x4.<ext>\)"),
    ("meta_hr", r"1 of the 3 image\(s\) meta_info_file .*/meta.txt lists are not in .*/set/HR \(owl.png\)$"),
    ("meta_lr", r"1 of the 3 image\(s\) meta_info_file .*/meta.txt lists are not in .*/set/LR \(bird.png\) \(BasicSR"),
])
def test_a_paired_image_set_on_disk_whose_folders_do_not_pair_is_refused_before_any_work(
        data_root, tmp_path, damage, message):
    """BasicSR's PairedImageDataset on disk refused folders that do not pair with an AssertionError traceback naming
    no folder ('lq and gt datasets have different number of images: 2, 3.', 'bird.png is not in lq_paths.'), and
    took a meta_info_file's names unchecked (an image missing failed mid-epoch). Each is one line naming the folders
    and the unpaired names, before the experiment folder is touched."""
    from ldt.data.cameras import DatasetError

    hr, lr = _paired_folders(tmp_path / "set")
    extra = {}
    if damage == "one_lr_fewer":
        (lr / "bird.png").unlink()
    elif damage == "renamed":
        (lr / "bird.png").rename(lr / "birdy.png")
    elif damage == "template":
        extra["filename_tmpl"] = "{}x4"
    else:
        (tmp_path / "meta.txt").write_text("baby.png (64,48,3)\nbird.png (64,48,3)\nowl.png (64,48,3)\n"
                                           if damage == "meta_hr" else "baby.png\nbird.png\nbutterfly.png\n")
        if damage == "meta_lr":
            (lr / "bird.png").unlink()
        extra["meta_info_file"] = str(tmp_path / "meta.txt")
    opt = tiny_options(data_root, "paired_disk", "ft")
    opt["datasets"]["train"] = _paired_set("DF2K", hr, lr, gt_size=32, batch_size_per_gpu=2, **extra)
    with pytest.raises(DatasetError, match=r"^datasets:train \(DF2K\): .*" + message):
        run_training(opt, tmp_path)
    assert not (tmp_path / "experiments" / "paired_disk").exists()


def test_a_filename_template_basicsr_cannot_fill_is_an_option_error(data_root, tmp_path):
    """BasicSR fills filename_tmpl with each HR name's stem: '{0}{1}' was an IndexError traceback."""
    opt = tiny_options(data_root, "paired_tmpl", "ft")
    hr, lr = _paired_folders(tmp_path / "set")
    opt["datasets"]["train"] = _paired_set("DF2K", hr, lr, gt_size=32, batch_size_per_gpu=2, filename_tmpl="{0}{1}")
    with pytest.raises(OptionsError, match=r"datasets:train:filename_tmpl: .*'\{0\}\{1\}' is not a template of one"):
        load_options(write_options(opt, tmp_path), is_train=True)


@pytest.mark.parametrize("key, folders, message", [
    ("train", {"short": "bird"}, r"datasets:train \(DF2K\): .*/HR.lmdb \(key bird\) / .*/LR.lmdb \(key bird\): HR size "
                                 r"\(63, 48\) is not LR size \(16, 12\) x4 \(a training pair must be exactly that\)"),
    ("val_2", {"short": "bird"}, r"validation set DF2K: .*/HR.lmdb \(key bird\) / .*/LR.lmdb \(key bird\): HR size "
                                 r"\(63, 48\) is smaller than LR size \(16, 12\) x4"),
    ("val_2", {"hr_size": (128, 96)}, r"validation set DF2K: .*/HR.lmdb \(key baby\) / .*/LR.lmdb \(key baby\): HR size "
                                      r"\(128, 96\) exceeds LR size \(16, 12\) x4 by more than 16 px"),
])
def test_a_paired_image_set_on_lmdbs_of_another_scale_is_refused_before_any_work(
        data_root, tmp_path, key, folders, message):
    """BasicSR's PairedImageDataset on LMDBs had no scale check: a training pair off by one pixel failed BasicSR's
    random crop mid-epoch, a validation HR smaller than LR x scale failed the metrics at the first validation, an HR
    of another scale was scored by its top-left crop. The shapes BasicSR's writer records in meta_info.txt are held
    to the rules of the sets on disk, one line naming the databases and the key, before the folder is touched."""
    from ldt.data.cameras import DatasetError

    gt, lq = _paired_lmdbs(tmp_path / "set", **folders)
    opt = tiny_options(data_root, "lmdb_scale", "ft")
    opt["datasets"][key] = {**_lmdb_set(gt, lq)["datasets"]["train"], "batch_size_per_gpu": 2}
    with pytest.raises(DatasetError, match="^" + message):
        run_training(opt, tmp_path)
    assert not (tmp_path / "experiments" / "lmdb_scale").exists()


def test_a_paired_image_set_on_lmdbs_is_sized_from_meta_info(tmp_path):
    """Correct LMDBs pass both scale rules, sized as BasicSR's writer recorded the images."""
    from ldt.sr.loaders import dataset
    from ldt.sr.train import check_paired_image_scale

    gt, lq = _paired_lmdbs(tmp_path)
    for phase in ("train", "val"):
        pairs, sizes = check_paired_image_scale("x", dataset(_lmdb_set(gt, lq, phase), "train"), 4, phase == "train")
        assert pairs[1] == (f"{gt} (key bird)", f"{lq} (key bird)")
        assert sizes == {**{f"{gt} (key {k})": (64, 48) for k in ("baby", "bird", "butterfly")},
                         **{f"{lq} (key {k})": (16, 12) for k in ("baby", "bird", "butterfly")}}


def test_the_paired_image_checks_still_work_after_an_image_was_read(tmp_path):
    """BasicSR's PairedImageDataset pops 'type' from the io_backend of the options it was given when it reads its
    first image: the scale check read it there and failed with a KeyError: 'type' on a set already read from."""
    from ldt.sr.loaders import dataset
    from ldt.sr.train import check_paired_image_scale

    hr_dir, lr_dir = _paired_folders(tmp_path)
    data = dataset({"datasets": {"train": _paired_set("Set5", hr_dir, lr_dir, phase="val", scale=4)}}, "train")
    before = check_paired_image_scale("x", data, 4, train=False)
    assert data[0]["gt"].shape == (3, 64, 48)
    assert check_paired_image_scale("x", data, 4, train=False) == before and data.opt["io_backend"] == {"type": "disk"}


def _empty_set(kind: str, root: Path, split: str = "test") -> tuple[dict, str, str]:
    """A dataset block of ``kind`` whose folders (or list of names) hold no images below ``root``; the option the
    error names and the start of its message."""
    hr, lr = root / "HR", root / "LR"
    if kind == "camera split":  # a DRealSR-style root whose split folders are empty
        hr, lr = (root / "x4" / f"{split.title()}_x4" / f"{split}_{side}" for side in ("HR", "LR"))
    for folder in (hr, lr):
        folder.mkdir(parents=True)
    if kind.startswith("camera"):
        where = {"dataroot": str(root)} if kind == "camera split" else {"dataroot_gt": str(hr), "dataroot_lq": str(lr)}
        block = {"name": "empty", "type": "DRealSRCameraDataset", "split": split, "cameras": ["pan"], **where}
        return block, next(iter(where)), f"{hr} holds no images, nor does {lr}"
    if kind == "paired folders":
        return _paired_set("empty", hr, lr), "dataroot_gt", f"{hr} holds no images, nor does {lr}"
    if kind == "paired meta_info_file":
        hr, lr = _paired_folders(root / "set")
        (root / "meta.txt").write_text("")
        return ({**_paired_set("empty", hr, lr), "meta_info_file": str(root / "meta.txt")}, "meta_info_file",
                f"{root / 'meta.txt'} lists no images")
    gt, lq = _paired_lmdbs(root / "set")  # paired lmdb: BasicSR's LMDBs whose meta_info.txt lists nothing
    for db in (gt, lq):
        (db / "meta_info.txt").write_text("")
    return ({**_paired_set("empty", gt, lq), "io_backend": {"type": "lmdb"}}, "dataroot_gt",
            f"LMDB {gt} (its meta_info.txt) holds no images, nor does {lq}")


EMPTY_SETS = ["camera folders", "camera split", "paired folders", "paired meta_info_file", "paired lmdb"]


@pytest.mark.parametrize("kind", EMPTY_SETS)
def test_a_validation_set_without_images_is_one_line_before_training_and_testing(kind, data_root, tmp_path):
    """A val_* set whose folders exist but hold no image: BasicSR's PairedImageDataset built an empty set, and the
    run trained until its first validation, then stopped in a traceback ('validation set ... is empty'); the
    camera dataset said 'no pairs for camera(s) pan ...; pairs found per camera: {}', naming no option. Now the
    option is named, before the experiment or results folder is made."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.data.cameras import DatasetError
    from ldt.sr.evaluate import run_test

    block, option, message = _empty_set(kind, tmp_path / "data")
    opt = tiny_options(data_root, "empty_val", "ft")
    opt["datasets"]["val_2"] = block
    with pytest.raises(DatasetError) as raised:
        run_training(opt, tmp_path)
    assert str(raised.value) == f"datasets:val_2:{option}: {message}"
    network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    torch.save({"params": network.state_dict()}, tmp_path / "net.pth")
    test_opt = {"name": "empty_test", "num_gpu": 0, "network_g": opt["network_g"], "datasets": {"test_1": block},
                "path": {"pretrain_network_g": str(tmp_path / "net.pth")}}
    with pytest.raises(DatasetError) as raised:
        run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    assert str(raised.value) == f"datasets:test_1:{option}: {message}"
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("kind", ["camera split", "paired folders"])
def test_a_training_set_without_images_names_its_option(kind, data_root, tmp_path):
    """An empty training set said 'datasets:train has 0 samples, fewer than one batch per rank' (BasicSR's
    PairedImageDataset) or 'no pairs for camera(s) ...' (the camera dataset): the folders are named now."""
    from ldt.data.cameras import DatasetError

    block, option, message = _empty_set(kind, tmp_path / "data", split="train")
    opt = tiny_options(data_root, "empty_train", "ft")
    opt["datasets"]["train"] = {**block, "cameras": ["olympus"], "gt_size": 32, "batch_size_per_gpu": 2}
    if kind == "paired folders":
        del opt["datasets"]["train"]["cameras"]
    with pytest.raises(DatasetError) as raised:
        run_training(opt, tmp_path)
    assert str(raised.value) == f"datasets:train:{option}: {message}"
    assert not (tmp_path / "experiments").exists()


def test_a_batch_larger_than_the_training_set_names_its_option(data_root, tmp_path):
    """'datasets:train has 6 samples, fewer than one batch per rank' named no option to change."""
    from ldt.sr.options import OptionsError

    opt = tiny_options(data_root, "big_batch", "ft")
    opt["datasets"]["train"]["batch_size_per_gpu"] = 100
    with pytest.raises(OptionsError, match=r"^datasets:train:batch_size_per_gpu: 100 is more than the \d+ training "
                                           r"sample\(s\): an epoch would hold no batch$"):
        run_training(opt, tmp_path)
    assert not (tmp_path / "experiments").exists()


def test_an_unchecked_pair_whose_sizes_differ_is_named_at_evaluation():
    """A set whose sizes nobody checked up front (BasicSR's PairedImageDataset on an LMDB): the metrics' size error
    names the pair."""
    from ldt.data.cameras import DatasetError
    from ldt.sr.metrics import evaluate_loader

    batch = {"lq": torch.rand(1, 3, 4, 4), "gt": torch.rand(1, 3, 15, 16), "lq_path": ["lr/a.png"],
             "gt_path": ["hr/a.png"]}
    with pytest.raises(DatasetError, match=r"hr/a.png / lr/a.png: SR output \(16, 16, 3\) and GT \(15, 16, 3\)"):
        evaluate_loader(torch.nn.Upsample(scale_factor=4), [batch], torch.device("cpu"), 4)


def _corrupted(png: bytes) -> bytes:
    """PNG bytes with 16 bytes in the middle of the IDAT chunk zeroed, its length kept: the header and the end
    marker, all the start-up check reads, stay intact, and the pixel data no longer decodes."""
    import struct

    data = bytearray(png)
    chunk = data.index(b"IDAT")
    middle = chunk + 4 + struct.unpack(">I", data[chunk - 4:chunk])[0] // 2
    data[middle:middle + 16] = bytes(16)
    return bytes(data)


def _corrupt_pixel_data(png: Path) -> Path:
    png.write_bytes(_corrupted(png.read_bytes()))
    return png


def _check_undecodable(image: Path) -> None:
    """``image`` is what the test needs: BasicSR's decode of it fails and the start-up check passes it."""
    import cv2
    import numpy as np

    from ldt.data.cameras import image_header

    assert cv2.imdecode(np.frombuffer(image.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is None
    image_header(image)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_paired_test_image_whose_pixels_do_not_decode_is_one_line_naming_it(workers, data_root, tmp_path):
    """A PNG whose header and end marker are intact but whose pixel data is corrupt passes the start-up check
    (headers only), and BasicSR's PairedImageDataset read stopped test.py in "AttributeError: 'NoneType' object has
    no attribute 'astype'", naming no file, in-process and from a DataLoader worker alike. Now it is one line naming
    the image; the earlier evaluation is archived whole."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.cli import error_lines
    from ldt.data.cameras import DatasetError
    from ldt.sr.evaluate import run_test

    hr_dir, lr_dir = _paired_folders(tmp_path / "set5")
    opt = tiny_options(data_root, "paired")
    network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    torch.save({"params": network.state_dict()}, tmp_path / "net.pth")
    test_opt = {"name": "paired_test", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
                "datasets": {"test_1": _paired_set("Set5", hr_dir, lr_dir, num_worker_per_gpu=workers)},
                "path": {"pretrain_network_g": str(tmp_path / "net.pth")}}
    run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)

    victim = _corrupt_pixel_data(hr_dir / "bird.png")
    _check_undecodable(victim)
    with pytest.raises(DatasetError) as caught:
        run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    assert error_lines(caught.value) == [f"cannot decode image {victim}: corrupt or not an image"]
    archived = list((tmp_path / "results").glob("paired_test_archived_*"))
    assert len(archived) == 1 and json.loads((archived[0] / "results.json").read_text())


@pytest.mark.parametrize("block", ["train", "val_1"])
def test_a_paired_training_or_validation_image_whose_pixels_do_not_decode_is_one_line_naming_it(block, data_root,
                                                                                                 tmp_path):
    """The same corrupt image in a PairedImageDataset training set (read by the probe, from a worker here) or
    validation set (read at the first validation) stopped the run in the AttributeError naming no file."""
    from ldt.cli import error_lines
    from ldt.data.cameras import DatasetError

    hr_dir, lr_dir = _paired_folders(tmp_path / "set5")
    victim = _corrupt_pixel_data(lr_dir / "butterfly.png")
    _check_undecodable(victim)
    opt = tiny_options(data_root, f"paired_{block}", "ft")
    extra = {"gt_size": 32, "batch_size_per_gpu": 1, "num_worker_per_gpu": 1} if block == "train" else {}
    opt["datasets"][block] = _paired_set(opt["datasets"][block]["name"], hr_dir, lr_dir, **extra)
    with pytest.raises(DatasetError) as caught:
        run_training(opt, tmp_path)
    assert error_lines(caught.value) == [f"cannot decode image {victim}: corrupt or not an image"]


def test_a_paired_lmdb_image_whose_pixels_do_not_decode_is_named_by_database_and_key(tmp_path):
    """On LMDBs the paths are keys: the image that does not decode is named by its database and key."""
    import cv2
    import lmdb
    import numpy as np

    from ldt.data.cameras import DatasetError
    from ldt.sr.loaders import dataset

    gt, lq = _paired_lmdbs(tmp_path)
    with lmdb.open(str(lq), map_size=1 << 24) as env, env.begin(write=True) as txn:
        broken = _corrupted(txn.get(b"bird"))
        txn.put(b"bird", broken)
    assert cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_COLOR) is None
    data = dataset(_lmdb_set(gt, lq, phase="val"), "train")
    assert data[0]["lq_path"] == "baby"  # the others read
    with pytest.raises(DatasetError, match=rf"^cannot decode image LMDB {re.escape(str(lq))} \(key bird\): corrupt"):
        data[1]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("kind", ["PairedImageDataset", "SingleImageDataset"])
def test_an_image_that_does_not_decode_is_named_under_spawned_workers_too(kind, workers, tmp_path):
    """The patch naming an undecodable image reached DataLoader workers only through fork: a spawned worker (the
    start method on macOS and Windows) unpickled BasicSR's PairedImageDataset unpatched, and the corrupt image was
    "AttributeError: 'NoneType' object has no attribute 'astype'" again, naming no file; BasicSR's
    SingleImageDataset had that traceback in-process too. Both name the image now, in-process and spawned."""
    import ldt.data  # noqa: F401  (registers and patches, as every entry point does)
    from basicsr.utils.registry import DATASET_REGISTRY
    from ldt.cli import error_lines
    from ldt.data.cameras import DatasetError

    hr_dir, lr_dir = _paired_folders(tmp_path / "set5")
    victim = _corrupt_pixel_data(lr_dir / "bird.png")
    _check_undecodable(victim)
    block = {"phase": "val", "scale": 4, "dataroot_lq": str(lr_dir), "io_backend": {"type": "disk"}}
    if kind == "PairedImageDataset":
        block["dataroot_gt"] = str(hr_dir)
    data = DATASET_REGISTRY.get(kind)(block)
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=workers,
                                         multiprocessing_context="spawn" if workers else None)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    assert error_lines(caught.value) == [f"cannot decode image {victim}: corrupt or not an image"]


def _lr_only_test(data_root, tmp_path, lr_dir, **block) -> dict:
    """Test options of one LR-only set (BasicSR's SingleImageDataset) and one scored camera, over a random SAFMN."""
    import ldt.archs  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY

    opt = tiny_options(data_root, "lr_only")
    torch.manual_seed(0)
    network = ARCH_REGISTRY.get("SAFMN")(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    torch.save({"params": network.state_dict()}, tmp_path / "net.pth")
    return {"name": "lr_only_test", "num_gpu": 0, "network_g": opt["network_g"], "val": {"pbar": False},
            "datasets": {"test_1": {"name": "photos", "type": "SingleImageDataset", "dataroot_lq": str(lr_dir),
                                    "io_backend": {"type": "disk"}, **block},
                         "test_2": opt["datasets"]["val_2"]},
            "path": {"pretrain_network_g": str(tmp_path / "net.pth")}}


def test_lr_only_photos_are_super_resolved_by_test_py_without_metrics(data_root, tmp_path):
    """BasicSR's SingleImageDataset (LR photos, no GT) was refused by the option check ('no option schema for
    dataset type'): a user with LR photos only could not run test.py. Its SR images are written (save_img or not),
    the table and results.json say the set has no GT instead of a number, and the scored sets keep their metrics."""
    from ldt.sr.evaluate import run_test

    lr_dir = tmp_path / "photos"
    lr_dir.mkdir()
    sources = sorted((Path(data_root) / "x4" / "Test_x4" / "test_LR").glob("*.png"))[:2]
    for source in sources:
        (lr_dir / source.name).write_bytes(source.read_bytes())
    test_opt = _lr_only_test(data_root, tmp_path, lr_dir)
    table = run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    out = tmp_path / "results" / "lr_only_test"
    written = sorted(p.name for p in (out / "visualization" / "photos").iterdir())
    assert written == [f"{s.stem}_lr_only_test.png" for s in sources]
    import cv2

    lr, sr = cv2.imread(str(sources[0])), cv2.imread(str(out / "visualization" / "photos" / written[0]))
    assert sr.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3)
    results = json.loads((out / "results.json").read_text())
    assert results["counts"] == {"photos": 2, "pan": table.counts["pan"]}
    assert results["rows"]["photos"] == {} and results["unscored"] == {"photos": "no GT (SingleImageDataset)"}
    assert set(results["rows"]["pan"]) == {"psnr", "ssim"} and results["mean"] == results["rows"]["pan"]
    markdown = (out / "results.md").read_text()
    assert "| photos | 2 | no GT | no GT |" in markdown and "nan" not in markdown.lower()
    assert not (out / "visualization" / "pan").exists()  # save_img false: the scored set writes no image


@pytest.mark.parametrize("problem", ["missing", "empty", "train", "small"])
def test_an_lr_only_set_that_cannot_be_read_is_one_line_naming_it(problem, data_root, tmp_path):
    """A SingleImageDataset folder that is not there, or holds no image, is named before anything is written; as a
    training or validation set of Train_pip.py (no GT to train or select on) it is refused."""
    from ldt.data.cameras import DatasetError
    from ldt.sr.evaluate import run_test

    lr_dir = tmp_path / "photos"
    if problem != "missing":
        lr_dir.mkdir()
    if problem == "small":
        import cv2
        import numpy as np

        cv2.imwrite(str(lr_dir / "tiny.png"), np.zeros((2, 2, 3), np.uint8))
    test_opt = _lr_only_test(data_root, tmp_path, lr_dir)
    if problem == "train":
        opt = tiny_options(data_root, "lr_train")
        opt["datasets"]["val_3"] = test_opt["datasets"]["test_1"]
        with pytest.raises(OptionsError, match=r"datasets:val_3:type: SingleImageDataset has no GT"):
            load_options(write_options(opt, tmp_path), is_train=True)
        return
    with pytest.raises((OptionsError, DatasetError)) as caught:
        run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    expected = {"missing": f"datasets:test_1:dataroot_lq: path does not exist: {lr_dir}",
                "empty": f"datasets:test_1:dataroot_lq: {lr_dir} holds no images",
                "small": f"test set photos: {lr_dir / 'tiny.png'} is 2x2 pixels, smaller than"}[problem]
    assert expected in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "results").exists()


def _lr_only_lmdb(root: Path, small: bool = False) -> Path:
    """Two 12x16 LR photos (``small``: the second 2x2) as BasicSR's LMDB, written by BasicSR's own writer."""
    import cv2
    import numpy as np
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    folder = root / "photos"
    folder.mkdir(parents=True)
    for index, name in enumerate(("a", "b")):
        shape = (2, 2, 3) if small and name == "b" else (12, 16, 3)
        cv2.imwrite(str(folder / f"{name}.png"), np.random.default_rng(index).integers(0, 256, shape, dtype=np.uint8))
    names = sorted(path.name for path in folder.iterdir())
    make_lmdb_from_imgs(str(folder), f"{folder}.lmdb", names, [name[:-4] for name in names], map_size=1 << 24)
    return Path(f"{folder}.lmdb")


@pytest.mark.parametrize("problem", ["none", "small", "delete_key", "foreign_meta", "cut_short", "malformed",
                                     "not_utf8"])
def test_an_lr_only_set_on_an_lmdb_is_super_resolved_or_refused_before_anything_is_written(problem, data_root,
                                                                                         tmp_path):
    """test.py on BasicSR's SingleImageDataset with io_backend: lmdb checked only that the folder was an LMDB: an LR
    smaller than the network's input, a key its meta_info.txt lists but the database lacks (a meta_info.txt of
    another database) failed mid-run after the first SR images were written, and a database cut short was lmdb's
    traceback (or a SIGBUS). Each is one line naming the database (and key) before results/ is touched."""
    import lmdb

    from ldt.data.cameras import DatasetError
    from ldt.sr.evaluate import run_test

    db = _lr_only_lmdb(tmp_path, small=problem == "small")
    if problem == "delete_key":
        with lmdb.open(str(db)) as env, env.begin(write=True) as txn:
            txn.delete(b"b")
    elif problem == "foreign_meta":
        (db / "meta_info.txt").write_text("x.png (12,16,3) 1\ny.png (12,16,3) 1\n")
    elif problem == "cut_short":
        (db / "data.mdb").write_bytes((db / "data.mdb").read_bytes()[:4096])
    elif problem == "malformed":
        (db / "meta_info.txt").write_text("a.png\n")
    elif problem == "not_utf8":  # was a bare UnicodeDecodeError naming no file
        (db / "meta_info.txt").write_bytes(b"a.png (12,16,3) 1\n\xff\xfeb.png (12,16,3) 1\n")
    test_opt = _lr_only_test(data_root, tmp_path, db, io_backend={"type": "lmdb"})
    options = load_options(write_options(test_opt, tmp_path), is_train=False)
    if problem == "none":
        table = run_test(options, root=tmp_path)
        written = sorted(p.name for p in (tmp_path / "results" / "lr_only_test" / "visualization" / "photos").iterdir())
        assert table.counts["photos"] == 2 and written == ["a_lr_only_test.png", "b_lr_only_test.png"]
        return
    with pytest.raises(DatasetError) as caught:
        run_test(options, root=tmp_path)
    expected = {"small": f"test set photos: {db} (key b) is 2x2 pixels, smaller than the 8x8 SAFMN needs",
                "delete_key": f"datasets:test_1 (photos): LMDB {db} lacks 1 of the 2 image(s) its meta_info.txt "
                              f"lists (b): a half-written database? rebuild it with basicsr",
                "foreign_meta": f"datasets:test_1 (photos): LMDB {db} lacks 2 of the 2 image(s) its meta_info.txt "
                                f"lists (x, y)",
                "cut_short": f"datasets:test_1 (photos): LMDB {db} cannot be opened",
                "malformed": f"datasets:test_1 (photos): {db}/meta_info.txt:1: expected 'name.png (h,w,c) level', "
                             "got 'a.png'",
                "not_utf8": f"datasets:test_1 (photos): {db}/meta_info.txt:2: not UTF-8 text (byte 0xff at column 1): "
                            "a binary or re-encoded file? rebuild the LMDB's meta_info.txt"}[problem]
    assert expected in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "results" / "lr_only_test").exists()


@pytest.mark.parametrize("kind", ["DRealSRCameraDataset", "PairedImageDataset"])
def test_a_training_on_lmdbs_reads_them_in_two_forked_workers(kind, data_root, tmp_path):
    """A few LDT iterations whose training set (a camera LMDB of scripts/index_drealsr.py --lmdb, or BasicSR's
    PairedImageDataset on make_lmdb_from_imgs' LMDBs) is read by two forked DataLoader workers, after the start-up
    checks opened the same environments in this process (py-lmdb >= 3 refuses a second open in one process); the
    probe, the training and the validation on the camera LMDBs all read. No test covered LMDB data with workers."""
    from ldt.data.cameras import collect_pairs
    from ldt.data.indexing import write_lmdb

    opt = tiny_options(data_root, f"lmdb_{kind}")
    root = tmp_path / "lmdb"
    for split in ("train", "test"):
        write_lmdb(collect_pairs(dataroot=data_root, split=split, cameras=["olympus", "pan"]).pairs, root, split, 4)
    for key in ("train", "val_1", "val_2"):
        opt["datasets"][key].update(dataroot=str(root), io_backend={"type": "lmdb"})
    if kind == "PairedImageDataset":
        gt, lq = _paired_lmdbs(tmp_path / "set")
        opt["datasets"]["train"] = {**_lmdb_set(gt, lq)["datasets"]["train"], "batch_size_per_gpu": 2}
    opt["datasets"]["train"]["num_worker_per_gpu"] = 2
    report = run_training(opt, tmp_path)
    assert report["iterations"] == 6 and set(report["metrics"]["rows"]) == {"source", "pan"}
    assert all(0 < row["psnr"] < 100 for row in report["metrics"]["rows"].values())


@pytest.mark.parametrize("backend", ["disk", "lmdb"])
def test_a_camera_set_with_an_lr_smaller_than_the_network_needs_is_refused_on_lmdbs_too(backend, data_root,
                                                                                         tmp_path):
    """test.py's LR-size check skipped DRealSRCameraDataset sets on LMDBs (scripts/index_drealsr.py --lmdb): a 2x2
    LR failed in the network's forward mid-run ('SAFMN needs inputs of at least 8x8 pixels'), after the sets
    before it were scored. It is one line naming the key and its LMDB (meta_info.txt records the shape), as on
    disk, before results/ is touched."""
    import cv2
    import numpy as np

    from ldt.data.cameras import DatasetError, collect_pairs
    from ldt.data.indexing import write_lmdb
    from ldt.sr.evaluate import run_test

    root = tmp_path / "DRealSR"
    for folder, name, side in (("test_HR", "P1180001_x4.png", 8), ("test_LR", "P1180001_x1.png", 2)):
        (root / "x4" / "Test_x4" / folder).mkdir(parents=True)
        cv2.imwrite(str(root / "x4" / "Test_x4" / folder / name), np.full((side, side, 3), 128, np.uint8))
    block = {"name": "tiny", "type": "DRealSRCameraDataset", "dataroot": str(root), "split": "test",
             "cameras": ["olympus"]}
    small = root / "x4" / "Test_x4" / "test_LR" / "P1180001_x1.png"
    if backend == "lmdb":
        write_lmdb(collect_pairs(dataroot=root, split="test", cameras=["olympus"]).pairs, tmp_path / "lmdb", "test", 4)
        block.update(dataroot=str(tmp_path / "lmdb"), io_backend={"type": "lmdb"})
        small = f"P1180001_x1 in {tmp_path / 'lmdb' / 'x4' / 'test' / 'olympus_LR.lmdb'}"
    test_opt = _lr_only_test(data_root, tmp_path, tmp_path)
    test_opt["datasets"] = {"test_1": test_opt["datasets"]["test_2"], "test_2": block}
    with pytest.raises(DatasetError) as caught:
        run_test(load_options(write_options(test_opt, tmp_path), is_train=False), root=tmp_path)
    assert str(caught.value).startswith(f"test set tiny: {small} is 2x2 pixels, smaller than the 8x8 SAFMN")
    assert not (tmp_path / "results" / "lr_only_test").exists()
