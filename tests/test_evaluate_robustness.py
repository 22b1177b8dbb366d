"""test.py against hostile input and interruptions: signals mid-evaluation, paths built from option values."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import sigint_by_default
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
    stopped = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                             preexec_fn=sigint_by_default)
    out = tmp_path / "results" / "hostile"
    assert (stopped.returncode, stopped.stderr.strip().splitlines()[-1]) == (
        128 + signum, f"stopped by {signal.Signals(signum).name}: the evaluation did not finish ({out} has no "
                      "results.json of it); rerun the same command")
    assert "Traceback" not in stopped.stderr and not (out / "results.json").exists()
    assert len(list((out / "visualization").rglob("*.png"))) == 1


@pytest.mark.parametrize("field, value, message", [
    ("val:suffix", "../../../../../escaped", r"val:suffix: must be part of a file name, without '/' or '\\', got "),
    ("val:suffix", "a/b", r"val:suffix: must be part of a file name"),
    ("datasets:test_1:name", "../../../../escaped", r"datasets:test_1:name: must be a plain folder name"),
    ("datasets:test_1:name", "", r"datasets:test_1:name: must be a plain folder name, not empty"),
])
def test_option_values_that_name_output_files_cannot_leave_the_results_folder(field, value, message, data_root,
                                                                               tmp_path):
    """test.py saved ``<image>_<val:suffix>.png`` in ``visualization/<set name>/``: a suffix or set name with '../'
    wrote every image to one file outside results/ (each overwriting the last), 'a/b' made a folder per image."""
    from ldt.sr.options import OptionsError, load_options

    opt = hostile_options(data_root, tmp_path, save_img=True)
    *sections, leaf = field.split(":")
    node = opt
    for section in sections:
        node = node[section]
    node[leaf] = value
    with pytest.raises(OptionsError, match=message):
        load_options(write_options(opt, tmp_path), is_train=False)


def test_the_images_of_a_nested_name_are_named_by_its_last_part(data_root, tmp_path):
    """The default suffix is the run's name, as BasicSR's: 'group/run' saved ``<image>_group/run.png``, a folder per
    image; now ``<image>_run.png``."""
    from ldt.sr.evaluate import run_test
    from ldt.sr.options import load_options

    opt = hostile_options(data_root, tmp_path, name="group/run", save_img=True)
    options = tmp_path / "nested.yml"
    options.write_text(yaml.safe_dump(opt))
    run_test(load_options(options, is_train=False), root=tmp_path)
    saved = sorted(path.relative_to(tmp_path / "results" / "group" / "run" / "visualization").as_posix()
                   for path in (tmp_path / "results").rglob("*.png"))
    assert saved == [f"{camera}/{stem}_run.png" for camera, stem in
                     [("pan", f"panasonic_10{i}_x1") for i in (1, 2, 3)] + [("sony", f"sony_10{i}_x1") for i in (1, 2, 3)]]


@pytest.mark.parametrize("metrics", [{}, []])
def test_an_evaluation_without_metrics_is_refused(metrics, data_root, tmp_path):
    """``val:metrics: {}`` evaluated every image and wrote results.md with an empty column, exit 0: no numbers."""
    from ldt.sr.options import OptionsError, load_options

    options = write_options(hostile_options(data_root, tmp_path, metrics=metrics), tmp_path)
    with pytest.raises(OptionsError, match=r"val:metrics: empty: test.py would score nothing; name at least one"):
        load_options(options, is_train=False)


@pytest.mark.parametrize("override, problem", [
    ("path:pretrain_network_g=5", "path:pretrain_network_g: expected a string, got int 5"),
    ("path=5", "path: expected a mapping, got int 5"),
])
def test_weights_of_the_wrong_type_are_one_problem_not_also_missing(override, problem, data_root, tmp_path):
    """The value that failed its type was dropped before the test-needs-weights check, which then reported it
    'missing' too: two lines for one mistake."""
    from ldt.sr.options import OptionsError, load_options

    options = write_options(hostile_options(data_root, tmp_path), tmp_path)
    with pytest.raises(OptionsError) as err:
        load_options(options, is_train=False, overrides=[override])
    assert str(err.value) == f"--force_yml '{override}': {problem}"


def test_reruns_within_one_second_are_each_archived(tmp_path, monkeypatch):
    """Two reruns of a name in the same second (test.py's run_test in a loop over checkpoints of a small set) failed
    'cannot archive …: Directory not empty', the first archive's name being taken; each gets its own now."""
    import basicsr.utils
    from ldt.sr.checkpoints import archive

    monkeypatch.setattr(basicsr.utils, "get_time_str", lambda: "20260101_000000")
    folder = tmp_path / "results" / "hostile"
    for rerun in range(3):
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(str(rerun))
        archive(folder)
    assert {path.name: (path / "results.json").read_text() for path in folder.parent.iterdir()} == {
        "hostile_archived_20260101_000000": "0", "hostile_archived_20260101_000000_2": "1",
        "hostile_archived_20260101_000000_3": "2"}


def test_a_partial_non_strict_load_is_logged_with_what_it_left_out(data_root, tmp_path, caplog):
    """``path:strict_load_g: false`` with a file holding part of the network evaluated a partly random network
    without a word (BasicSR's own loader logs the keys that differ); now a warning counts and names them."""
    from ldt.sr.evaluate import run_test
    from ldt.sr.options import load_options

    opt = hostile_options(data_root, tmp_path)
    state = torch.load(tmp_path / "net.pth")["params"]
    dropped = sorted(state)[-2:]
    partial = {k: v for k, v in state.items() if k not in dropped}
    torch.save({"params": {**partial, "extra.weight": torch.zeros(1)}}, tmp_path / "part.pth")
    opt["path"].update(pretrain_network_g=str(tmp_path / "part.pth"), strict_load_g=False)
    logger = logging.getLogger("basicsr")  # BasicSR's root logger does not propagate: listen to it directly
    logger.addHandler(caplog.handler)
    try:
        run_test(load_options(write_options(opt, tmp_path), is_train=False), root=tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
    kept = [k for k in state if k in dropped]  # in the network's order
    assert (f"path:strict_load_g: false: {tmp_path / 'part.pth'} set {len(state) - 2} of the network's {len(state)} "
            f"tensors; 2 keep their initialisation ({', '.join(kept)}), 1 of the file's were not used") in caplog.text


@pytest.mark.parametrize("side, border, metrics, message", [
    (1, 0, {"ssim": {"type": "calculate_ssim"}}, "GT is 1x1 pixels, val:metrics:ssim needs at least 11x11 (a crop "
                                                 "border of 0 px at each side and an 11x11 window) or it is NaN"),
    (12, 4, {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}}, "GT is 12x12 pixels, "
     "val:metrics:ssim needs at least 19x19 (a crop border of 4 px at each side and an 11x11 window) or it is NaN"),
    (12, 4, {"psnr": {"type": "calculate_psnr", "crop_border": 6}}, "GT is 12x12 pixels, val:metrics:psnr needs at "
                                                                    "least 13x13 (a crop border of 6 px at each side)"),
])
def test_metrics_of_an_image_their_borders_and_window_eat_are_refused_not_nan(side, border, metrics, message):
    """image_metrics returned NaN (with numpy's 'Mean of empty slice' warning) for a GT the crop borders or SSIM's
    window leave nothing of: a set whose sizes are not read up front (a camera LMDB) was scored NaN in test.py."""
    from ldt.sr.metrics import image_metrics

    generator = torch.Generator().manual_seed(0)
    sr, gt = (torch.rand(3, side, side, generator=generator) for _ in range(2))
    with pytest.raises(ValueError) as err:
        image_metrics(sr, gt, border, metrics)
    assert str(err.value).startswith(message)


def test_an_unchecked_set_with_a_gt_too_small_for_the_metrics_names_its_pair():
    """evaluate_loader, on a set whose sizes were not checked up front, scored a 12x12 GT NaN for SSIM at x4."""
    from ldt.data.cameras import DatasetError
    from ldt.sr.metrics import evaluate_loader

    generator = torch.Generator().manual_seed(0)
    pair = {"lq": torch.rand(1, 3, 3, 3, generator=generator), "gt": torch.rand(1, 3, 12, 12, generator=generator),
            "lq_path": ["lr/a.png"], "gt_path": ["hr/a.png"]}
    with pytest.raises(DatasetError, match=r"^hr/a.png / lr/a.png: GT is 12x12 pixels, val:metrics:ssim needs at "
                                           r"least 19x19 .* or it is NaN; remove it, or lower "
                                           r"val:metrics:ssim:crop_border$"):
        evaluate_loader(torch.nn.Upsample(scale_factor=4), [pair], torch.device("cpu"), 4)


def test_results_md_shows_each_metric_to_the_decimals_of_its_type_whatever_its_name(data_root, tmp_path):
    """The tables chose the decimals by the metric's name: an SSIM named 'ssim_y' showed 0.04 (two decimals, a PSNR's),
    and a PSNR named 'ssim' four."""
    import json

    from ldt.sr.evaluate import run_test
    from ldt.sr.options import load_options

    metrics = {"ssim_y": {"type": "calculate_ssim"}, "ssim": {"type": "calculate_psnr"}}
    options = write_options(hostile_options(data_root, tmp_path, metrics=metrics), tmp_path)
    run_test(load_options(options, is_train=False), root=tmp_path)
    out = tmp_path / "results" / "hostile"
    rows = json.loads((out / "results.json").read_text())["rows"]
    table = (out / "results.md").read_text().splitlines()
    assert table[2:4] == [f"| {camera} | 3 | {rows[camera]['ssim_y']:.4f} | {rows[camera]['ssim']:.2f} |"
                          for camera in ("pan", "sony")]


def test_an_infinite_psnr_is_written_to_results_json_as_strict_json(data_root, tmp_path, monkeypatch):
    """An SR output identical to its HR has a PSNR of inf: results.json held the bare token Infinity, which jq,
    JavaScript and strict parsers refuse; now the number 1e999, which every JSON reader takes as infinity."""
    import json
    import math

    import ldt.sr.metrics as metrics
    from ldt.atomic import read_json_object
    from ldt.sr.evaluate import run_test
    from ldt.sr.options import load_options

    monkeypatch.setitem(metrics.METRICS, "calculate_psnr", lambda *args, **kwargs: float("inf"))
    options = write_options(hostile_options(data_root, tmp_path), tmp_path)
    run_test(load_options(options, is_train=False), root=tmp_path)
    text = (tmp_path / "results" / "hostile" / "results.json").read_text()

    def bare(name):
        raise AssertionError(f"results.json is not strict JSON: bare {name}")

    assert json.loads(text, parse_constant=bare)["rows"]["pan"]["psnr"] == math.inf
    assert read_json_object(tmp_path / "results" / "hostile" / "results.json")["rows"]["pan"]["psnr"] == math.inf


# test.py whose network must not be built: the folder check comes first
NO_NETWORK = """
import sys
import ldt.sr.evaluate as evaluate
def built(opt):
    raise SystemExit("the network was built before the results folder was checked")
evaluate.build_model = built
sys.exit(evaluate.main(sys.argv[1:]))
"""


def test_an_earlier_evaluation_that_cannot_be_archived_is_refused_before_the_network_is_built(data_root, tmp_path):
    """results/<name> held an earlier evaluation and was writable, results/ itself read-only: the network was built
    and the data read before the archive's rename failed; now one line up front, the earlier evaluation untouched."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the permission override")
    options = write_options(hostile_options(data_root, tmp_path), tmp_path)
    earlier = tmp_path / "root" / "results" / "hostile"
    earlier.mkdir(parents=True)
    (earlier / "results.md").write_text("earlier\n")
    earlier.parent.chmod(0o555)
    drop = "-dac_override,-dac_read_search"
    result = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-c",
                             NO_NETWORK, "-opt", str(options), "--root", str(tmp_path / "root")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    earlier.parent.chmod(0o755)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: cannot write in {earlier.parent}: permission denied (needed to archive the earlier evaluation in "
        f"{earlier})"], result.stderr[-2000:]
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["hostile"]
    assert (earlier / "results.md").read_text() == "earlier\n"
