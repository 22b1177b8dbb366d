"""The SR training pipeline behind ``Train_pip.py``: options → data → LDTModel → train/validate/save → tables.

Our own loop on BasicSR's building blocks, because basicsr 1.4.2's ``train_pipeline`` maps resume states to CUDA,
relies on ``torch.load`` defaults that changed in torch 2.6, rejects CPU DDP and restarts the epoch on resume.
Here resume continues from the exact sample position (bit-identical on CPU with ``num_worker_per_gpu: 0``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
from logging.handlers import MemoryHandler
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from ldt.atomic import (
    BusyError, DiskError, FileContentError, atomic_write_text, check_room, disk_reason, read_json_object,
    remove_leftovers,
)
from ldt.cli import error_lines, leave_process, number_back, show_traceback, strict_json
from ldt.compat import patch_basicsr
from ldt.sr.ranks import launcher_of_environment, reporting_rank
from ldt.sr.flags import training_parser
from ldt.sr.options import PROJECT_ROOT, OptionsError, load_options

patch_basicsr()
import ldt.archs  # noqa: E402,F401  (registers archs)
import ldt.data  # noqa: E402,F401  (registers datasets)
import ldt.models  # noqa: E402,F401  (registers LDTModel)
from basicsr.utils import get_root_logger, get_time_str, set_random_seed  # noqa: E402
from ldt.data.cameras import (  # noqa: E402
    DatasetError, basicsr_lmdb_meta, check_lr_patch, image_header, name_stem, read_lmdb_meta, tolerance_px)
from ldt.models.ldt_model import LDTModel, NonFiniteLossError  # noqa: E402
from ldt.sr.checkpoints import (  # noqa: E402
    archive,
    experiment_lock,
    holds_a_run,
    iteration_files,
    newest_intact_state,
    option_changes,
    read_state,
    remove_stale_weights,
    validation_changes,
)
from ldt.sr.loaders import probe_loader, training_loader, validation_loaders  # noqa: E402
from ldt.sr.metrics import MetricTable  # noqa: E402
from ldt.sr.preemption import Interrupted, StopOnSignal, says_the_stop  # noqa: E402
from ldt.weights import WeightsError, read_weights  # noqa: E402
from ldt.core import MethodError, PartitionError, ProbeError  # noqa: E402
from ldt.core.probe import FailedOnAnotherRank, collective_device  # noqa: E402

# What the SR entry points report as ``error:`` lines (exit status 2) instead of a traceback: problems of the user's
# options, data, weights, files, disk, or a run that diverged.
USER_ERRORS = (OptionsError, DatasetError, WeightsError, DiskError, FileContentError, NonFiniteLossError, ProbeError,
               PartitionError, MethodError, BusyError)

# Raised by every rank of a process group at the same step (the ranks all-reduce the loss's finiteness, and hold the
# same weights): said by rank 0 alone, which saved the state its message names (the others said 'no training state
# was saved yet').
AGREED_ERRORS = (NonFiniteLossError,)


class StoppedWithAnotherRank(Exception):
    """Another rank refused the start-up (:func:`ranks_agree`): it says why; this rank stops with its exit status,
    saying nothing (the reason is said once)."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"stopped with another rank (exit status {exit_code})")
        self.exit_code = exit_code


def exit_status(err: BaseException | None) -> int:
    """The exit status :func:`run_reporting_errors` gives ``err`` (0 for None, 1 for a traceback)."""
    if err is None:
        return 0
    if isinstance(err, (Interrupted, StoppedWithAnotherRank)):
        return err.exit_code
    return 2 if isinstance(err, USER_ERRORS) else 1


@contextlib.contextmanager
def ranks_agree(only_after_a_failure: bool = False) -> Iterator[None]:
    """A start-up step after which every rank knows whether any rank failed it: under a process group, a refusal on
    one rank (rank 0's experiment lock or folder, one rank's probe share) left the others in the next collective
    until the group's timeout (gloo: a 'Connection reset by peer' traceback once it exited). The lowest failing rank
    raises its error (said once); the others stop with its exit status (:class:`StoppedWithAnotherRank`), except a
    rank whose own failure is no user error (its traceback is not hidden). Also a barrier.

    ``only_after_a_failure``: a block whose failures every rank knows of already, at the same point (it raises its
    own error or :class:`FailedOnAnotherRank` on every rank: a training step, whose loss all-reduce says it): the
    statuses are gathered only then, so a block that passed costs no collective."""
    failure: Exception | None = None
    agreed = False
    try:
        yield
    except FailedOnAnotherRank:  # agreed on already, inside (the warm-up's, the probe's): that rank fails here too
        agreed = True
    except Exception as err:  # noqa: BLE001 (agreed on first, re-raised below)
        failure = err
    if only_after_a_failure and failure is None and not agreed:
        return
    statuses = [exit_status(failure)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.zeros(1, dtype=torch.int64, device=collective_device()) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, torch.tensor([statuses[0]], device=collective_device()))
        statuses = [int(status.item()) for status in gathered]
    failed = [rank for rank, status in enumerate(statuses) if status]
    rank = dist.get_rank() if dist.is_initialized() else 0
    if failure is not None and (failed[0] == rank or exit_status(failure) == 1):
        raise failure
    if failed:
        raise StoppedWithAnotherRank(statuses[failed[0]])


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what env:// rendezvous reads
LAUNCHER_VARIABLES = {  # each launcher's variables a run reads, and what starts it with them set
    "pytorch": (TORCHRUN_VARIABLES, "torchrun (torchrun --nproc_per_node=N ... --launcher pytorch)"),
    "slurm": (("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST"), "srun"),  # BasicSR's _init_dist_slurm's
}


def launcher_problem(launcher: str) -> str | None:
    """``--launcher pytorch`` outside torchrun (``slurm`` outside srun, for BasicSR's pipeline), or None: said in one
    line before the options are read, not in the process group's ``ValueError`` traceback after every check has
    run."""
    variables, starter = LAUNCHER_VARIABLES.get(launcher, ((), ""))
    missing = [name for name in variables if name not in os.environ]
    return f"--launcher {launcher}: {', '.join(missing)} not set; start it under {starter}" if missing else None


def check_launcher(parser: argparse.ArgumentParser, launcher: str) -> None:
    """:func:`launcher_problem` as the parser's one-line error."""
    problem = launcher_problem(launcher)
    if problem:
        parser.error(problem)


def init_distributed(opt: dict, launcher: str) -> None:
    """torchrun environment → process group (NCCL on GPUs, gloo on CPU); set rank/world/device options."""
    if launcher == "pytorch" and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and opt["num_gpu"] != 0
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # Rank 0 validates alone while the other ranks wait in the next collective: tiled validation of six camera
        # sets with a large network can outlast the default 10-minute timeout.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    opt["dist"] = dist.is_initialized()
    opt["rank"], opt["world_size"] = (dist.get_rank(), dist.get_world_size()) if opt["dist"] else (0, 1)


def resolve_num_gpu(opt: dict) -> None:
    """``num_gpu: auto`` → 1 with CUDA, else 0 (a count the machine lacks is an options error already)."""
    if opt["num_gpu"] == "auto":
        opt["num_gpu"] = 1 if torch.cuda.is_available() else 0


def experiment_paths(opt: dict, root: Path) -> None:
    exp = root / "experiments" / opt["name"]
    opt["path"].update(
        experiments_root=str(exp), models=str(exp / "models"), training_states=str(exp / "training_states"),
        log=str(exp), visualization=str(exp / "visualization"),
    )


def validate(model, loaders: dict, opt: dict, current_iter: int, tb_logger=None, desc: str = "val") -> MetricTable:
    """Evaluate the deployed network on every validation set; log per set and their mean."""
    table = MetricTable.of(opt["val"]["metrics"])
    for name, loader in loaders.items():
        means = table.add(name, model.evaluate(loader, description=f"{desc} {name}"))
        if tb_logger is not None:
            for metric, value in means.items():
                tb_logger.add_scalar(f"metrics/{name}/{metric}", value, current_iter)
    if tb_logger is not None and len(table.rows) > 1:
        for metric, value in table.mean().items():
            tb_logger.add_scalar(f"metrics/mean/{metric}", value, current_iter)
    return table


def stored_validation(history: list[dict], iteration: int, loaders: dict, opt: dict, made_with: dict,
                      log: Callable[[str], None]) -> tuple[int, MetricTable] | None:
    """The validation of ``iteration`` that ``history`` (a training state's) holds, for these validation sets and
    metrics, or None; which of the two is said in one ``log`` line. A run resumed at its last iteration reuses it
    for its results: validating again took the whole validation time for the numbers the state already had. Only
    when ``made_with`` (the options of the state's run) validated as this run does: a resume may change the tiling
    or the sets' paths (:func:`ldt.sr.checkpoints.validation_changes`), which changes the numbers."""
    if not loaders:
        return None
    last = history[-1] if history else None
    if not isinstance(last, dict) or last.get("iter") != iteration:
        log(f"results: validating iteration {iteration} again: the state's history holds no validation of it")
        return None
    changes = validation_changes(made_with, opt)
    if changes:
        log(f"results: validating iteration {iteration} again: its stored validation was made with other settings "
            f"({'; '.join(changes)})")
        return None
    table = MetricTable.from_dict(last, opt["val"]["metrics"])
    if table is None or table.rows.keys() != loaders.keys():
        log(f"results: validating iteration {iteration} again: its stored validation lacks these sets or metrics")
        return None
    log(f"results: from the stored validation of iteration {iteration} (made with these validation settings)")
    return iteration, table


def selection_set(opt: dict, loaders: dict) -> tuple[str | None, str]:
    """The validation set whose PSNR selects the best checkpoint (None: the last validated one), and the tag of the
    saved file: ``net_g_best.pth`` (source camera), ``net_g_best_oracle.pth``, ``net_g_best_last.pth``."""
    selection = opt["val"]["selection"]
    if selection.startswith("oracle:"):
        return selection.split(":", 1)[1], "_oracle"
    if selection == "last" or not loaders:
        return None, "_last"
    return opt["val"]["source_set"], ""


def selection_metric(opt: dict) -> str:
    """The name of the PSNR metric (the checkpoint is selected on it)."""
    return next(name for name, spec in opt["val"]["metrics"].items() if spec["type"] == "calculate_psnr")


def write_results(opt: dict, table: MetricTable, extra: dict) -> str:
    exp = Path(opt["path"]["experiments_root"])
    report = {"name": opt["name"], "method": opt["ldt"]["method"], "arch": opt["network_g"]["type"], **extra,
              "metrics": table.to_dict()}
    atomic_write_text(exp / "results.json", strict_json(report, indent=1))
    markdown = f"### {opt['name']} ({opt['ldt']['method']}, {opt['network_g']['type']})\n\n" + table.markdown("camera")
    atomic_write_text(exp / "results.md", markdown + "\n")
    return markdown


def resume_point(opt: dict, logger) -> tuple[Path | None, dict | None]:
    """The state to resume from (``path:resume_state``, or with ``--auto_resume`` the newest intact state of this
    experiment), checked against this run's options: what may change is applied and said, anything else refuses the
    resume with the differences named. Without a state the experiment starts afresh."""
    if opt["path"]["resume_state"]:
        path = Path(opt["path"]["resume_state"])
        state = read_state(path)
    elif opt.get("auto_resume"):
        path, state = newest_intact_state(opt["path"]["training_states"], logger.warning)
        if path is None:
            logger.info(f"--auto_resume: no training state in {opt['path']['training_states']}; starting afresh")
            return None, None
    else:
        return None, None
    refused, applied = option_changes(state.get("options") or {}, opt)
    if refused:
        how = "--auto_resume" if not opt["path"]["resume_state"] else "path:resume_state"
        raise OptionsError(
            f"cannot resume {path}: it was trained with other options ({'; '.join(refused)}); restore them, or start "
            f"a new run without {how} (the experiment folder is then archived)")
    if opt["path"]["resume_state"]:
        check_continues_the_folder(opt, path)
    if state["iter"] > opt["train"]["total_iter"]:
        raise OptionsError(f"train:total_iter: {opt['train']['total_iter']} is before the iteration of {path} "
                           f"({state['iter']}): nothing to train; raise it to go on")
    for line in applied:
        logger.info(f"resume: {line} (applied)")
    return path, state


def check_continues_the_folder(opt: dict, state: Path) -> None:
    """``path:resume_state`` writes into this experiment's folder: refuse it when the folder holds a run that the
    state does not continue (another run's state, or an older state of this one), instead of mixing the two runs'
    checkpoints in one folder and deleting the later ones."""
    exp = Path(opt["path"]["experiments_root"])
    if not holds_a_run(exp):
        return
    states = iteration_files(opt["path"]["training_states"], ".state")
    if states and states[-1].resolve() == state.resolve():
        return
    newest = f"its newest state is {states[-1]}" if states else "it has no training state"
    raise OptionsError(f"path:resume_state: {exp} holds a run that {state} does not continue ({newest}); resume it "
                       "under another name, or move that folder away")


def prepare_folder(opt: dict, root: Path, resume: Path | None, logger) -> None:
    """A fresh run archives an experiment folder that holds an earlier run (BasicSR's ``<name>_archived_<time>``);
    a resumed one clears what an interrupted write left (temporary files, weights newer than its state)."""
    exp = Path(opt["path"]["experiments_root"])
    tb = root / "tb_logger" / opt["name"]
    # Before an archive too: nothing resumes from an archive, so its half-written files would never be cleaned.
    removed = remove_leftovers(exp, opt["path"]["models"], opt["path"]["training_states"])
    if resume is None and holds_a_run(exp):
        for old, new in archive(exp, tb):
            print(f"{old} held an earlier run: archived as {new}", flush=True)
    for key in ("experiments_root", "models", "training_states"):
        check_room(opt["path"][key])  # a full disk still takes an empty file: found now, not after the probe
    if resume is not None:
        iteration = int(Path(resume).stem) if Path(resume).stem.isdigit() else None
        if iteration is not None:
            removed += remove_stale_weights(opt["path"]["models"], opt["path"]["training_states"], iteration,
                                            opt["logger"]["keep_last_checkpoints"])
    for path in removed:
        logger.info(f"removed {path}, left by an interrupted run")


def apply_learning_rate(model, opt: dict, state: dict) -> None:
    """A resume with another ``train:optim_g:lr`` scales every branch's learning rate (and the schedule's base)
    by new / saved, so a run that diverged can go on from its last finite state with a lower rate."""
    saved = ((state.get("options") or {}).get("train") or {}).get("optim_g", {}).get("lr")
    new = opt["train"]["optim_g"]["lr"]
    if saved is None or saved == new:
        return
    for optimizer in model.optimizers:
        for group in optimizer.param_groups:
            group["lr"] *= new / saved
            if "initial_lr" in group:
                group["initial_lr"] *= new / saved


class RunLog:
    """BasicSR's ``basicsr`` logger for one run: on rank 0 a log file at INFO in the experiment folder, which also
    gets what was logged before the folder could be touched (held in memory); the console shows warnings and errors
    (the progress bar shows the losses, and the run prints its validation tables itself); other ranks log errors only.

    Why not ``get_root_logger(log_file=...)``: BasicSR sets its logger up once per process, so an earlier call
    without a file left every run without a log file, at WARNING level; and a process that trains several runs (the
    demo, the sweeps) needs one file per run.
    """

    def __init__(self, rank0: bool) -> None:
        self.logger = get_root_logger(logger_name="basicsr")
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO if rank0 else logging.ERROR)
        self.consoles = {h: (h.level, h.stream) for h in self.logger.handlers if type(h) is logging.StreamHandler}
        for console in self.consoles:
            console.setLevel(logging.WARNING)
            # BasicSR's console keeps the sys.stderr of the process's first run: this run's warnings go to the one the
            # caller has now (one redirected since, by contextlib.redirect_stderr or pytest, lost them). Assigned, not
            # setStream: that flushes the old stream, which may be closed.
            console.stream = sys.stderr
        self.file: logging.FileHandler | None = None
        self.buffer = MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1) if rank0 else None
        if self.buffer is not None:
            self.logger.addHandler(self.buffer)

    def to_file(self, path: Path) -> None:
        try:
            self.file = logging.FileHandler(path, mode="a", encoding="utf-8")  # two runs in one second share a name
        except OSError as err:
            raise DiskError(f"cannot write {path}: {disk_reason(err, path.parent)}") from None
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        self.logger.removeHandler(self.buffer)
        self.logger.addHandler(self.file)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.level)
        for console, (level, stream) in self.consoles.items():
            console.setLevel(level)
            console.stream = stream
        for handler in (self.buffer, self.file):
            if handler is not None:
                self.logger.removeHandler(handler)
                # On a full disk the file's last lines cannot be flushed: the error that stopped the run is the one
                # to report, not this one (logging.raiseExceptions = False covers the lines, not the close).
                with contextlib.suppress(OSError):
                    handler.close()


class TensorBoardLog:
    """TensorBoard curves of a run (``add_scalar``) that a disk filling mid-run stops with one warning, not the
    run: the writer's thread failed and the next ``add_scalar`` raised its ``OSError``, with a thread traceback (and
    its constructor, which writes a first record, on a disk that filled after the room check).

    Why training goes on: the curves are a view; the validation history is kept in every training state and in
    results.json, and a full disk stops the run at its next checkpoint anyway, in one line with the previous state
    intact (a disk freed meanwhile loses only the rest of the curves, not hours of training)."""

    def __init__(self, folder: Path, logger: logging.Logger) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.logger = check_room(folder), logger  # a full disk at the start: refused before any work
        self.writer: SummaryWriter | None = None
        self.step = 0  # the iteration of the last curve point
        self._hook = threading.excepthook  # set before the writer is made: its constructor writes, in its thread too
        threading.excepthook = self._quiet_writer_thread
        try:
            self.writer = SummaryWriter(log_dir=str(folder))
        except OSError as err:  # the disk filled since the room check
            self._stopped(err, "at its start")

    def _quiet_writer_thread(self, args: threading.ExceptHookArgs) -> None:
        """The writer thread's failure is said once, by :meth:`add_scalar`; other threads' go to the usual hook."""
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            self._hook(args)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.step = step
            self._write(self.writer.add_scalar, tag, value, step)

    def _write(self, write: Callable[..., None], *args) -> None:
        """``write`` (an ``add_scalar``, the last flush), the writer closed with one warning if its thread failed."""
        try:
            write(*args)
        except OSError as err:
            self._stopped(err, f"at iteration {self.step}")

    def _stopped(self, err: OSError, where: str) -> None:
        self.logger.warning(f"the TensorBoard log stopped {where}: cannot write in {self.folder}: "
                            f"{disk_reason(err, self.folder)}; training goes on (the validation history is kept in "
                            "the training states and results.json)")
        self._close()

    def _close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(OSError):  # its last events cannot be flushed to a full disk
                writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None and self.writer is not None:
            self._write(self.writer.flush)  # the thread's failure on the last points is said too, not lost silently
        self._close()
        threading.excepthook = self._hook


def basicsr_pairs(data) -> tuple[list[tuple[str, str]], Callable[[str], tuple[int, int]]] | None:
    """The (HR, LR) names of every pair of BasicSR's ``PairedImageDataset`` and how to size one as BasicSR's reader
    returns it, else None (other datasets, no pairs): on disk the paths, sized from their headers
    (:func:`displayed_size`); on LMDBs ``<database> (key <key>)``, sized from each database's meta_info.txt (BasicSR's
    writer records there the shape of what it stored)."""
    paths = getattr(data, "paths", None)
    if type(data).__name__ != "PairedImageDataset" or not paths:
        return None
    if data.opt["io_backend"]["type"] == "disk":
        return [(entry["gt_path"], entry["lq_path"]) for entry in paths], displayed_size
    gt, lq = data.opt["dataroot_gt"], data.opt["dataroot_lq"]
    shapes = {f"{db} (key {key})": shape[:2] for db in (gt, lq) for key, shape in basicsr_lmdb_meta(db).items()}
    return [(f"{gt} (key {entry['gt_path']})", f"{lq} (key {entry['lq_path']})") for entry in paths], shapes.__getitem__


def displayed_size(path: str) -> tuple[int, int]:
    """(height, width) of an image as BasicSR's reader (``cv2.IMREAD_COLOR``) returns it: turned by its EXIF
    orientation, from the header."""
    height, width, orientation = image_header(path)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def check_paired_image_scale(where: str, data, scale: int,
                             train: bool) -> tuple[list[tuple[str, str]], dict[str, tuple[int, int]]] | None:
    """BasicSR's ``PairedImageDataset`` checks no size until it reads a pair: an HR that is not LR x ``scale``
    fails a training's random crop mid-epoch (exactly LR x scale needed), an HR smaller than that fails the metrics
    at the first validation (it is cropped to LR x scale there), neither naming the file; an HR more than 4 x scale
    px larger (as ``DRealSRCameraDataset``'s default ``size_tolerance``: a folder of another scale) is cropped to
    its top-left corner and scored silently. Sizes read here (:func:`basicsr_pairs`: on disk the headers, on LMDBs
    meta_info.txt), before any work; an LR smaller than the training patch is named too. Returns the pairs and
    ``{name: (h, w)}`` of their images."""
    found = basicsr_pairs(data)
    if found is None:
        return None
    pairs, size = found
    tolerance = tolerance_px(scale)
    sizes: dict[str, tuple[int, int]] = {}
    for hr, lr in pairs:
        sizes[hr], sizes[lr] = hr_size, lr_size = size(hr), size(lr)
        need = (lr_size[0] * scale, lr_size[1] * scale)
        if train and hr_size != need:
            raise DatasetError(f"{where}: {hr} / {lr}: HR size {hr_size} is not LR size {lr_size} x{scale} "
                               "(a training pair must be exactly that)")
        if not train and (hr_size[0] < need[0] or hr_size[1] < need[1]):
            raise DatasetError(f"{where}: {hr} / {lr}: HR size {hr_size} is smaller than LR size {lr_size} "
                               f"x{scale}")
        if not train and max(hr_size[0] - need[0], hr_size[1] - need[1]) > tolerance:
            raise DatasetError(f"{where}: {hr} / {lr}: HR size {hr_size} exceeds LR size {lr_size} x{scale} by more "
                               f"than {tolerance} px (BasicSR would score the HR's top-left crop: a folder of "
                               "another scale?)")
        if train:
            try:
                check_lr_patch(lr, lr_size, data.opt.get("gt_size") or 0, scale)
            except DatasetError as err:
                raise DatasetError(f"{where}: {err}") from None
    return pairs, sizes


# What a set of each evaluated phase is called in a line about it.
SET_KINDS = {"val": "validation", "test": "test"}


def check_validation_sizes(opt: dict, loaders: dict) -> None:
    """Every validation LR image is at least the network's smallest input, and every GT image leaves the metrics
    pixels after their crop borders (read from the headers, or an LMDB's meta_info.txt): a smaller LR fails in the
    network's forward at the first validation, a smaller GT gives NaN PSNR/SSIM. BasicSR's ``PairedImageDataset``
    sets are checked for their scale too (:func:`check_paired_image_scale`)."""
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.data.cameras import image_size
    from ldt.sr.metrics import gt_size_need
    from ldt.sr.options import min_input_size

    network = opt["network_g"]["type"]
    lr_side = min_input_size(ARCH_REGISTRY.get(network))
    needs = [(1, lr_side, f"smaller than the {lr_side}x{lr_side} {network} needs; remove it or pad it")]
    gt_need = gt_size_need(opt["val"]["metrics"], opt["scale"])
    if gt_need is not None:
        needs.append((0, *gt_need))
    phases = {block["name"]: block["phase"] for block in opt["datasets"].values() if block["phase"] in SET_KINDS}
    for name, loader in loaders.items():
        where = f"{SET_KINDS[phases[name]]} set {name}"  # test.py's test_* sets are not validated
        checked = check_paired_image_scale(where, loader.dataset, opt["scale"], train=False)
        if checked is not None:
            pairs, size = checked[0], checked[1].__getitem__
        elif type(loader.dataset).__name__ == "SingleImageDataset":  # LR only: the network's input size alone
            if loader.dataset.opt["io_backend"]["type"] == "disk":
                pairs, size = [(None, path) for path in loader.dataset.paths], image_size
            else:  # BasicSR's writer records each image's shape in meta_info.txt
                db = loader.dataset.opt["dataroot_lq"]
                shapes = {f"{db} (key {key})": shape[:2] for key, shape in basicsr_lmdb_meta(db).items()}
                pairs, size = [(None, key) for key in shapes], shapes.__getitem__
        else:
            ours = getattr(loader.dataset, "pairs", None)  # our camera datasets
            if not ours:
                continue
            pairs, size = [(pair.hr, pair.lr) for pair in ours], image_size
            if loader.dataset.databases:  # LMDB pairs are keys, sized from each database's meta_info.txt
                shapes = {f"{name_stem(name)} in {db}": shape[:2] for dbs in loader.dataset.databases.values()
                          for db in dbs for name, shape in read_lmdb_meta(db).items()}
                pairs, size = [tuple(f"{key} in {db}" for key, db in zip((pair.hr, pair.lr),
                                                                         loader.dataset.databases[pair.db]))
                               for pair in ours], shapes.__getitem__
        for side, least, remedy in needs:
            if pairs and pairs[0][side] is None:
                continue
            small = next((pair[side] for pair in pairs if min(size(pair[side])) < least), None)
            if small is not None:
                raise DatasetError(f"{where}: {small} is {'x'.join(map(str, size(small)))} "
                                   f"pixels, {remedy}")


def training_data(opt: dict) -> tuple[torch.utils.data.DataLoader, torch.utils.data.Sampler]:
    """The training loader and its sampler, refused when it holds no batch (a drop-last epoch of fewer samples than
    a batch per rank is empty: BasicSR's loop would run every epoch without a step and end as if done)."""
    loader, sampler = training_loader(opt)
    if len(loader) == 0:
        ranks = opt.get("world_size") or 1
        raise OptionsError(f"datasets:train:batch_size_per_gpu: {loader.batch_size} is more than the "
                           f"{len(loader.dataset)} training sample(s)" + (f" per rank ({ranks} ranks)" if ranks > 1 else "")
                           + ": an epoch would hold no batch")
    return loader, sampler


def check_before_start(opt: dict, resuming: bool, train_set: torch.utils.data.Dataset,
                       val_loaders: dict, weights: bool = True) -> Mapping[str, torch.Tensor] | None:
    """What would otherwise fail only in the model's set-up, after the experiment folder was archived, or at the
    first validation, after hours: the pre-trained weights (readable, of this network, finite; returned, for the
    model to load without reading the file again; None without them or with ``weights`` False, for a caller whose
    model reads them itself: BasicSR's pipeline builds it), a validation image
    smaller than the network's smallest input, a mis-scaled pair of BasicSR's ``PairedImageDataset`` (training,
    validation or probe set), and, for a run that probes, an empty probe loader (over
    ``train_set``, the training loader's set, when the probe reads the training data)."""
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.core import method_class
    from ldt.core.methods import probe_share_problem
    from ldt.sr.options import build_meta_network

    arch = ARCH_REGISTRY.get(opt["network_g"]["type"])
    pretrained = None
    if weights and opt["path"]["pretrain_network_g"]:
        network = {k: v for k, v in opt["network_g"].items() if k != "type"}
        pretrained = read_weights(opt["path"]["pretrain_network_g"], opt["path"]["param_key_g"],
                                  build_meta_network(arch, network), strict=opt["path"]["strict_load_g"],
                                  log=get_root_logger().info)
    check_validation_sizes(opt, val_loaders)
    check_paired_image_scale(f"datasets:train ({opt['datasets']['train']['name']})", train_set, opt["scale"],
                             train=True)
    if not resuming and method_class(opt["ldt"]["method"]).partition_source == "score" \
            and not opt["ldt"].get("partition_file"):
        probe = opt["ldt"]["probe"]
        shared = probe_share_problem(probe["num_batches"], opt.get("world_size") or 1)
        if shared and opt["ldt"]["criterion"] != "random":
            raise OptionsError(f"ldt:probe:num_batches: {shared}")
        loader = probe_loader(opt, seed=0, data=train_set if probe["dataset"] == "train" else None)
        if loader.dataset is not train_set:
            check_paired_image_scale(f"datasets:{probe['dataset']} (the probe's)", loader.dataset, opt["scale"],
                                     train=True)
        if len(loader) == 0 and probe["order"] == "file":
            raise OptionsError(f"ldt:probe:batch_size: {probe['batch_size']}: the {len(loader.dataset)} pairs of "
                               f"datasets:{probe['dataset']} make fewer probe batches than there are ranks "
                               f"({opt.get('world_size') or 1}): this rank's probe would get no batch")
        if len(loader) == 0:
            raise OptionsError(f"ldt:probe:batch_size: {loader.batch_size} is more than the {len(loader.sampler)} "
                               f"pairs of datasets:{probe['dataset']} per rank: the probe would get no batch")
    return pretrained


def train(opt: dict, root: Path = PROJECT_ROOT) -> dict:
    """Run one training described by a validated option dict; return the final metrics report."""
    with StopOnSignal() as stop, RunLog(opt["rank"] == 0) as log, contextlib.ExitStack() as held:
        return _train(opt, root, stop, log, held)


def _train(opt: dict, root: Path, stop: StopOnSignal, log: RunLog, held: contextlib.ExitStack) -> dict:
    resolve_num_gpu(opt)
    experiment_paths(opt, root)
    rank0 = opt["rank"] == 0
    logger = log.logger
    with ranks_agree():  # a check that fails on one rank only (its probe share) stops every rank
        state_path, state = resume_point(opt, logger)
        # The data is checked (every pair found, every header read), and the weights, before the folder is touched:
        # a run that cannot start must not archive the one before it.
        loader, sampler = training_data(opt)
        val_loaders = validation_loaders(opt) if rank0 else {}
        pretrained = check_before_start(opt, resuming=state is not None, train_set=loader.dataset,
                                        val_loaders=val_loaders)

    def stop_before_training() -> None:
        """A stop asked for before the first step: nothing new to save (the state resumed from is the newest)."""
        signum = stop.requested(before_training=True)
        if signum:
            raise Interrupted(signum, state["iter"] if state else 0, str(state_path) if state_path else None,
                              saved=False)

    stop_before_training()  # during the checks: before the folder is archived and the warm-up and probe run
    # the folder is ready (archived, cleaned) before any rank reads or writes in it; refused, every rank stops (its
    # log file or TensorBoard folder on a full disk too: the other ranks went on into the model's broadcast)
    tb_logger = None
    with ranks_agree():
        if rank0:
            # Two runs of one name at once would archive, clean and write each other's folder. Taken once the checks
            # passed, so a run that cannot start creates nothing; held to the end of this training.
            held.enter_context(experiment_lock(Path(opt["path"]["experiments_root"])))
            prepare_folder(opt, root, state_path, logger)
            log.to_file(Path(opt["path"]["log"]) / f"train_{opt['name'].replace('/', '_')}_{get_time_str()}.log")
            if opt["logger"]["use_tb_logger"]:
                tb_logger = held.enter_context(TensorBoardLog(root / "tb_logger" / opt["name"], logger))
    set_random_seed(opt["manual_seed"] + opt["rank"])

    select_name, best_tag = selection_set(opt, val_loaders) if rank0 else (None, "")
    psnr = selection_metric(opt)

    if state_path is not None:
        # The state was read once, on the CPU (the model copies every tensor onto its device). The model skips its
        # warm-up and probe when resuming: it reads their result (the partition) from the same file.
        opt["path"]["resume_state"] = str(state_path)
    with ranks_agree():  # a batch of the warm-up or the probe that one rank cannot read stops every rank
        model = LDTModel(opt, weights=pretrained)  # the options say LDTModel (the only model_type)
    logger.info(f"Model [{type(model).__name__}] is created.")  # BasicSR's build_model line, which logs grep for
    del pretrained  # the model holds its own copy: not the checked tensors too, for the whole training
    total_iter = int(opt["train"]["total_iter"])
    if state is not None and state["iter"] >= total_iter:
        stop.finish()  # resumed at the end: no step left to save a state at (set before the stop check)
        if rank0:
            print(f"resume: {state_path} is the last iteration ({total_iter}) of this run: nothing to train; "
                  "its final weights and results are written again", flush=True)
    stop.start()  # a signal from now on is told a state is saved at the first step (set before the stop check)
    stop_before_training()  # during the warm-up or the probe
    current_iter, epoch, position, best = 0, 0, 0, {"value": -math.inf, "iter": -1}
    history: list[dict] = []  # validation tables so far; kept in training states so curves survive a resume
    earlier_seconds = 0.0  # training time of the sessions before a resume
    # The best score is also kept beside net_g_best: validation runs more often than states are saved, and a best
    # found after the last state must not be overwritten by a worse network after a resume.
    best_file = Path(opt["path"]["experiments_root"]) / f"best{best_tag}.json"
    last_state = str(state_path) if state_path else None  # the newest saved state (for NaN and preemption messages)
    made_with: dict = {}  # the options of the resumed state's run (its stored validation was made with them)
    if state is not None:
        model.resume_training(state)
        apply_learning_rate(model, opt, state)
        current_iter, epoch, position = state["iter"], state["epoch"], state["data_position"]
        best = state["extra"].get("best", best)
        with ranks_agree():  # rank 0 alone selects the best: every rank read the file and each said its error
            if rank0 and best_file.is_file():
                remedy = (f"delete it to resume (net_g_best{best_tag}.pth may then be replaced by a later, worse "
                          "network)")
                recorded = read_json_object(best_file, ("value", "iter"), remedy=remedy)
                value = number_back(recorded["value"])  # an older file's 'nan': NaN, which is no best
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise FileContentError(f"{best_file}: 'value' is {recorded['value']!r}, not a number; {remedy}")
                if value > best["value"]:
                    best = {**recorded, "value": value}
        history = state["extra"].get("history", [])
        made_with = state.get("options") or {}
        earlier_seconds = state["extra"].get("train_seconds", 0.0)
        logger.info(f"Resumed from {state_path}: iteration {current_iter}, epoch {epoch}, batch {position}")
        state = None  # the model holds its own copies now; do not keep the file's tensors through training

    def validate_and_select(iteration: int, best: dict) -> tuple[dict, tuple[int, MetricTable]]:
        """Validate the deployed network, record it in the history, and save it if it is the best so far."""
        table = validate(model, val_loaders, opt, iteration, tb_logger)
        history.append({"iter": iteration, **table.to_dict()})
        logger.info(f"validation at iter {iteration}\n{table.markdown('camera')}")
        score = table.rows[select_name][psnr] if select_name is not None else iteration
        if score > best["value"]:
            best = {"value": score, "iter": iteration, "set": select_name or "last"}
            model.save_best(best_tag)
            atomic_write_text(best_file, strict_json(best))
        return best, (iteration, table)

    last_validated: tuple[int, MetricTable] | None = None
    # Rank 0 alone validates and writes (weights, states, results): its failure there (a full disk) stopped it alone,
    # the other ranks waiting in the next collective (gloo: a traceback once it exited; NCCL: the group's timeout).
    # Each such section is a ranks_agree (one small collective per validation or save, none per plain step), its
    # condition the same on every rank.
    if opt["val"]["validate_start"] and current_iter == 0:
        with ranks_agree():
            if rank0 and val_loaders:
                # The network before fine-tuning competes too (the official script's initial best): a fine-tuned one
                # is then kept only if it validates better.
                best, last_validated = validate_and_select(0, best)
    start = time.time()
    bar = None
    if rank0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_iter, initial=current_iter, desc=f"train {opt['ldt']['method']}", unit="it", dynamic_ncols=True)
    val_freq, save_freq, print_freq = opt["val"]["val_freq"], opt["logger"]["save_checkpoint_freq"], opt["logger"]["print_freq"]
    fed = False  # a batch was fed to the model (see LDTModel.fail_step)
    try:
        while current_iter < total_iter:
            sampler.set_epoch(epoch)
            sampler.skip = position * loader.batch_size
            for batch, failure in batches_or_failure(loader):
                current_iter += 1
                position += 1
                try:  # a batch that this rank alone cannot read: the step's loss all-reduce stops every rank
                    if failure is None:
                        model.update_learning_rate(current_iter, warmup_iter=opt["train"]["warmup_iter"])
                        model.feed_data(batch)
                except Exception as err:  # noqa: BLE001 (raised by the step, once every rank knows of it)
                    failure = err
                if not fed:  # the first step: the others would wait in DDP's forward, no earlier batch stands in
                    with ranks_agree():
                        if failure is not None:
                            raise failure
                    fed = True
                try:
                    with ranks_agree(only_after_a_failure=True):
                        if failure is not None:
                            model.fail_step(failure)
                        model.optimize_parameters(current_iter)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(f"{err}; {recovery_hint(last_state)}") from None
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in model.get_current_log().items()})
                if rank0 and current_iter % print_freq == 0:
                    logs = model.get_current_log()
                    logger.info(f"iter {current_iter:,d} lr {model.get_current_learning_rate()[0]:.2e} "
                                + " ".join(f"{k}: {v:.4e}" for k, v in logs.items()))
                    if tb_logger is not None:
                        for key, value in logs.items():
                            tb_logger.add_scalar(f"losses/{key}", value, current_iter)
                # The last iteration is always validated, so it competes for the best checkpoint too.
                if current_iter % val_freq == 0 or current_iter == total_iter:
                    with ranks_agree():
                        if rank0 and val_loaders:
                            best, last_validated = validate_and_select(current_iter, best)
                if current_iter >= total_iter:
                    stop.finish()  # before the last stop check: a signal from now on lets the final save finish
                signum = stop.requested()
                # The last step always leaves a state: a rerun with --auto_resume (or a stage whose results could
                # not be written) then finds the run finished instead of training again from an earlier state.
                if current_iter % save_freq == 0 or signum or current_iter >= total_iter:
                    try:
                        with ranks_agree():  # every rank checks the weights; rank 0 writes them
                            last_state = model.save(epoch, current_iter, position, extra={
                                "best": best, "history": history,
                                "train_seconds": earlier_seconds + time.time() - start}) or last_state
                    except NonFiniteLossError as err:
                        raise NonFiniteLossError(f"{err}; {recovery_hint(last_state)}") from None
                if signum:
                    raise Interrupted(signum, current_iter, last_state)
                if current_iter >= total_iter:
                    break
            else:
                epoch, position = epoch + 1, 0
    finally:
        if bar is not None:
            bar.close()  # before any error message: the bar's line ends first
    seconds = earlier_seconds + time.time() - start
    report: dict = {}
    # The final weights (every rank checks them, rank 0 writes them) and rank 0's results; also the ranks leaving
    # together: a peer tearing down while rank 0 still writes can abort it (gloo).
    with ranks_agree():
        try:
            model.save(epoch, -1)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; {recovery_hint(last_state)}") from None
        if rank0:
            # resumed at the end: its state's history holds the last iteration's validation
            if last_validated is None:
                last_validated = stored_validation(history, current_iter, val_loaders, opt, made_with, logger.info)
            if last_validated is not None and last_validated[0] == current_iter:
                table = last_validated[1]
            else:  # no validation sets, or a history without the last iteration
                table = validate(model, val_loaders, opt, current_iter, tb_logger, desc="final") if val_loaders \
                    else MetricTable()
            report = {"iterations": current_iter, "train_seconds": seconds, "best": best, "history": history,
                      "nan_skips": model.nan_skips}
            markdown = write_results(opt, table, report)
            report["metrics"] = table.to_dict()
            logger.info(f"Training done in {seconds:.1f} s\n{markdown}")
            print(markdown, flush=True)
    signum = stop.requested(after_the_last_step=True)
    if signum:  # it came after the last step, so the run finished; it still stops the caller (a sweep goes no further)
        raise Interrupted(signum, current_iter, last_state,
                          finished=str(Path(opt["path"]["experiments_root"]) / "results.json"))
    return report


def batches_or_failure(loader) -> Iterator[tuple[dict | None, Exception | None]]:
    """``(batch, None)`` for each batch of ``loader``, then ``(None, error)`` if one cannot be read (the last): the
    training step tells the other ranks of it, which would otherwise wait in the step's collectives."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 (raised by the step)
            yield None, err
            return
        yield batch, None


def recovery_hint(state: str | None) -> str:
    if state is None:
        return "no training state was saved yet"
    return (f"the last finite checkpoint is {state}: resume it with --auto_resume, e.g. with a lower "
            "train:optim_g:lr (a resume applies it)")


def print_error(err: Exception) -> int:
    """One ``error:`` line per problem on stderr (an options error lists every problem of the file); exit code 2.

    An error raised in a DataLoader worker arrives with the worker's traceback in its message: only its last line,
    the error itself, is shown. ``LDT_TRACEBACK=1`` prints the whole traceback first.
    """
    show_traceback(err)
    for line in error_lines(err):
        print(f"error: {line}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None, leave_at_once: bool = False) -> int:
    """``Train_pip.py -opt FILE ...``: the exit status. ``leave_at_once`` (the command's own process): after a run
    that had a process group, the process ends here (:func:`leave_process`), not in the interpreter's teardown."""
    parser = training_parser(__doc__)
    # Every rank parses the same arguments: a bad flag was said once per rank (--launcher is not known yet: the
    # environment says which rank this is)
    with reporting_rank(launcher_of_environment()):
        args = parser.parse_args(argv)
        if args.opt is None:
            parser.error("-opt is required (Train_pip.py without arguments runs the demo)")
        check_launcher(parser, args.launcher)
    logging.raiseExceptions = False  # a full disk must not turn every log line into a traceback

    loaded: list[dict] = []

    def read() -> None:
        loaded.append(load_options(args.opt, is_train=True, overrides=args.force_yml))

    def work() -> None:
        opt = loaded[0]
        opt["auto_resume"] = args.auto_resume
        init_distributed(opt, args.launcher)
        train(opt, root=args.root)

    try:
        # Every rank reads the same file before the process group exists: its errors were said once per rank.
        with reporting_rank(args.launcher):
            code = run_reporting_errors(read)
        code = code or run_reporting_errors(work)
    finally:
        grouped = dist.is_initialized()
        if grouped:
            dist.destroy_process_group()
    if grouped and leave_at_once:
        leave_process(code)
    return code


def run_reporting_errors(work: Callable[[], object], errors: tuple[type[Exception], ...] = ()) -> int:
    """Run an SR entry point's work and return its exit status: 0; or for a stop by a signal its one line and
    128 + the signal; or for a user error (:data:`USER_ERRORS` and ``errors``) its ``error:`` lines and 2."""
    try:
        work()
    except Interrupted as stopped:
        if says_the_stop():  # once under DDP: rank 0's, the rank that saved the state
            print(f"{stopped}", file=sys.stderr)
        return stopped.exit_code
    except StoppedWithAnotherRank as stopped:  # another rank said why
        return stopped.exit_code
    except FailedOnAnotherRank:  # outside a ranks_agree (a probe of ldt:repartition_every): the other rank says why
        return 1
    except (*USER_ERRORS, *errors) as err:
        if isinstance(err, AGREED_ERRORS) and not says_the_stop():
            return 2  # every rank raised it at the same step: rank 0, which saved the states it names, says it
        return print_error(err)
    return 0
