"""``test.py``: evaluate a saved network on every ``test_*`` / ``val_*`` set of an options file (PSNR/SSIM on Y); an
LR-only set (BasicSR's ``SingleImageDataset``) is super-resolved into ``visualization/<set>/``, not scored."""

from __future__ import annotations

import signal
import sys
from pathlib import Path, PurePosixPath

import cv2
import torch

from ldt.atomic import DiskError, atomic_write_bytes, atomic_write_text, check_writable, make_dirs
from ldt.cli import Stopped, output_dir_problem, stop_on_signal, strict_json
from ldt.compat import patch_basicsr
from ldt.sr.checkpoints import archive, experiment_lock
from ldt.sr.flags import build_parser
from ldt.sr.options import PROJECT_ROOT, load_options

patch_basicsr()
import ldt.archs  # noqa: E402,F401
import ldt.data  # noqa: E402,F401
import ldt.models  # noqa: E402,F401
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from ldt.sr.loaders import validation_loaders  # noqa: E402
from ldt.sr.metrics import MetricTable  # noqa: E402
from ldt.sr.train import check_validation_sizes, resolve_num_gpu, run_reporting_errors  # noqa: E402


def run_test(opt: dict, root: Path = PROJECT_ROOT) -> MetricTable:
    """Evaluate ``path:pretrain_network_g`` on the option file's test sets; write results/<name>/results.{md,json}.

    ``opt``: checked test options (``prepare_options(..., is_train=False)``, which requires the network). The data
    and the weights are checked (the network built) before anything is created: an evaluation that cannot start
    leaves no results folder or lock behind. Then held under the folder's lock: a second evaluation of the name
    would archive this one's folder mid-way and the two would write each other's results (the second is refused in
    one line, as a second training of a name)."""
    out = results_folder(opt, root)
    resolve_num_gpu(opt)
    opt.update(dist=False, rank=0, world_size=1)
    problem = output_dir_problem(out)  # before any work, as training's folders (nothing created yet)
    if not problem and out.is_dir() and any(out.iterdir()):  # _evaluate archives it: a rename in its parent
        problem = output_dir_problem(out.parent)
        problem = problem and f"{problem} (needed to archive the earlier evaluation in {out})"
    if problem:
        raise DiskError(problem)
    opt["path"].update(results_root=str(out), log=str(out), visualization=str(out / "visualization"))
    loaders = validation_loaders(opt)
    check_validation_sizes(opt, loaders)
    model = build_model(opt)
    with experiment_lock(out):
        return _evaluate(opt, out, loaders, model)


def results_folder(opt: dict, root: Path = PROJECT_ROOT) -> Path:
    """Where ``test.py`` writes the evaluation of the options ``opt``: results/<name> under ``root``."""
    return Path(root) / "results" / opt["name"]


def _evaluate(opt: dict, out: Path, loaders: dict, model) -> MetricTable:
    """Score ``model`` on ``loaders`` into ``out`` (under its lock)."""
    if out.is_dir() and any(out.iterdir()):  # an earlier evaluation (perhaps of other weights) is kept, as BasicSR's
        for old, new in archive(out):  # test does
            print(f"{old} held an earlier evaluation: archived as {new}", flush=True)
    check_writable(make_dirs(out))
    table = MetricTable.of(opt["val"]["metrics"])
    suffix = opt["val"]["suffix"] or PurePosixPath(opt["name"]).name  # a name 'a/b' is no part of a file name
    lr_only = {block["name"] for block in opt["datasets"].values() if block["type"] == "SingleImageDataset"}
    for name, loader in loaders.items():
        def save_image(path, sr, values, name=name):
            target = out / "visualization" / name / f"{Path(path).stem}_{suffix}.png"
            atomic_write_bytes(target, cv2.imencode(".png", tensor2img([sr[0].cpu()]))[1].tobytes())

        saves = opt["val"]["save_img"] or name in lr_only  # the SR images are all an LR-only set gives
        table.add(name, model.evaluate(loader, description=name, on_image=save_image if saves else None),
                  unscored="no GT (SingleImageDataset)" if name in lr_only else None)
    atomic_write_text(out / "results.json", strict_json({"name": opt["name"], "network": opt["path"]["pretrain_network_g"],
                                                        **table.to_dict()}, indent=1))
    atomic_write_text(out / "results.md", table.markdown("camera") + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "test")
    args = parser.parse_args(argv)
    if args.opt is None:
        parser.error("-opt is required, e.g. -opt test_MambaIR_SR_x4.yml")
    if args.launcher == "pytorch":  # run_test is one process: under torchrun every rank would evaluate everything
        parser.error("--launcher pytorch: test.py evaluates in one process; run it without torchrun and --launcher")

    def work() -> None:
        opt = load_options(args.opt, is_train=False, overrides=args.force_yml)
        try:  # SIGTERM's default exit says nothing, and Ctrl-C ended in a traceback from wherever it was
            with torch.no_grad(), stop_on_signal():
                table = run_test(opt, root=args.root)
        except Stopped as stopped:
            print(f"stopped by {signal.Signals(stopped.signum).name}: the evaluation did not finish "
                  f"({results_folder(opt, args.root)} has no results.json of it); rerun the same command",
                  file=sys.stderr)
            raise SystemExit(128 + stopped.signum) from None
        print(table.markdown("camera"), flush=True)

    return run_reporting_errors(work)
