"""Train with BasicSR's own ``basicsr.train.train_pipeline``, the way HAT's ``hat/train.py`` does::

    python -m ldt.sr.basicsr_pipeline -opt options/train/train_MambaIR_LDT_x4.yml [--auto_resume]

``LDTModel`` is a plain BasicSR model: this pipeline validates it through ``nondist_validation`` (every ``val_*`` set,
BasicSR's best-metric tracking), saves ``net_g_<iter>.pth`` / ``<iter>.state`` and resumes from them. What only
``Train_pip.py``'s loop adds: the best checkpoint selected on the source camera (``net_g_best.pth``), a resume that
continues from the exact sample of the epoch (BasicSR's restarts the epoch), one checked option dict for the whole
run (BasicSR's pipeline reads the raw file itself, so the file, with its ``base:`` files, must spell out the keys it
reads: ``logger``, ``val:val_freq``, ...), and clean exits on preemption. Bad input is refused before BasicSR starts
by ``Train_pip.py``'s own start-up checks (:func:`check_before_pipeline`), in the same lines; ``-opt`` is found and
``base:`` merged as ``Train_pip.py`` does (:func:`file_for_basicsr`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from ldt.cli import OneLineParser, fail, not_a_file
from ldt.compat import basicsr_resume_path, patch_basicsr_train
from ldt.sr.options import PROJECT_ROOT, apply_overrides, read_option_file
from ldt.sr.ranks import launcher_of_environment, launcher_rank, launcher_world, reporting_rank


def basicsr_arguments(argv: list[str]) -> argparse.Namespace:
    """``argv`` read as basicsr 1.4.2's ``parse_options`` reads it: the same flags, parsed by argparse as there, so our
    checks see every spelling BasicSR accepts (``-opt=FILE``, ...), where a scan for ``-opt FILE`` missed them; an
    abbreviated flag (``--auto``, ``-o FILE``), which BasicSR's parser took, is refused, as by every command.
    Additions: as in ``Train_pip.py``, ``--opt`` (BasicSR refused it) and ``--force_yml`` flags that add up (BasicSR
    kept the last, dropping the others silently); ``--local-rank``, the spelling ``torch.distributed.launch`` passes
    on torch >= 2.0 (BasicSR's parser knows ``--local_rank`` only and refused it).
    BasicSR is handed the canonical arguments (:func:`argv_for_basicsr`). A bad or missing flag is one line."""
    parser = OneLineParser(prog="python -m ldt.sr.basicsr_pipeline")
    parser.add_argument("-opt", "--opt", required=True, help="options YAML: a path, or a bare name under options/train")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher")
    parser.add_argument("--auto_resume", action="store_true", help="resume from the newest state of the experiment")
    parser.add_argument("--debug", action="store_true", help="BasicSR's debug mode (experiments/debug_<name>)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, dest="local_rank",
                        help="passed on to BasicSR as --local_rank (torch.distributed.launch of torch >= 2.0 passes "
                             "--local-rank, which BasicSR's parser refused)")
    parser.add_argument("--force_yml", nargs="+", action="extend", default=None, metavar="KEY:SUB=VALUE",
                        help="override options (values read as YAML), applied before BasicSR reads the file")
    return parser.parse_args(argv)


def argv_for_basicsr(args: argparse.Namespace, option_file: str) -> list[str]:
    """BasicSR's arguments for ``args``, in its own spelling, with ``-opt`` ``option_file`` (which holds the
    ``--force_yml`` entries already: :func:`file_for_basicsr`)."""
    return ["-opt", option_file, "--launcher", args.launcher, "--local_rank", str(args.local_rank),
            *(["--auto_resume"] if args.auto_resume else []), *(["--debug"] if args.debug else [])]


def basicsr_name(name: str, debug: bool) -> str:
    """The experiment BasicSR runs for ``name``: basicsr 1.4.2's ``--debug`` runs ``debug_<name>`` (a name that
    starts with ``debug`` is kept), so our checks of the experiment folder and its states must look there too."""
    return f"debug_{name}" if debug and not name.startswith("debug") else name


def check_option_file(option_file: str) -> None:
    """BasicSR opens ``-opt`` itself: a FIFO would wait for a writer forever and ``/dev/zero`` never ends, so what is
    no regular file is refused first, in one line (everything else is BasicSR's to check)."""
    what = not_a_file(option_file)
    if what:
        fail(f"-opt {option_file} is {what}")


def numbers_as_checked(raw: Any, checked: Any) -> tuple[Any, bool]:
    """``raw`` with each number written as text (PyYAML reads ``1e3`` or ``1e-3`` without ``!!float`` as strings,
    which our checks accept as numbers) replaced by the number the checks made of it, and whether any was: BasicSR's
    loop uses the raw values it reads itself, so ``save_checkpoint_freq: 1e3`` was a TypeError traceback at the first
    iteration and ``batch_size_per_gpu: '2'`` the data loader's, after the checks had passed."""
    if isinstance(raw, dict) and isinstance(checked, dict):
        pairs = {key: numbers_as_checked(value, checked[key]) if key in checked else (value, False)
                 for key, value in raw.items()}
        return {key: value for key, (value, _) in pairs.items()}, any(changed for _, changed in pairs.values())
    if isinstance(raw, list) and isinstance(checked, (list, tuple)) and len(raw) == len(checked):
        pairs = [numbers_as_checked(value, number) for value, number in zip(raw, checked)]
        return [value for value, _ in pairs], any(changed for _, changed in pairs)
    if isinstance(raw, str) and isinstance(checked, (int, float)) and not isinstance(checked, bool):
        return checked, True
    return raw, False


def file_for_basicsr(file: Path, scratch: Path, checked: dict, overrides: list[str] | None = None) -> Path:
    """The option file to hand BasicSR, which opens ``-opt`` with its own YAML loader and knows no ``base:``: ``file``
    itself, or for a file that inherits, ``overrides`` (``--force_yml`` entries, which our checks applied) or holds a
    number written as text, it merged with its base files, the entries applied as our checks applied them and each
    such number as the checks read it (:func:`numbers_as_checked`), written under its own name in
    ``scratch`` (BasicSR copies ``-opt`` into the experiment folder by its name, so that copy is the whole option set
    that ran). BasicSR is then not given ``--force_yml``: its exec-based parser would apply the entries a second time,
    its own way (a KeyError for a section the file leaves to its defaults, a ValueError for a value holding '=')."""
    inherits = "base" in yaml.safe_load(file.read_text())  # read_option_file has checked it is a mapping
    opt = read_option_file(file)
    apply_overrides(opt, overrides)
    opt, numbers = numbers_as_checked(opt, checked)
    if not inherits and not overrides and not numbers:
        return file
    done = [what for what, given in (("its base: files merged in", inherits),
                                      (f"--force_yml {' '.join(' '.join(overrides or []).split())} applied", overrides),
                                      ("numbers written as text made numbers", numbers))
            if given]  # (one comment line, whatever the entries hold)
    merged = scratch / file.name
    merged.write_text(f"# {file} with {' and '.join(done)}, for BasicSR (ldt.sr.basicsr_pipeline)\n"
                      + yaml.safe_dump(opt, sort_keys=False))
    return merged


def check_before_pipeline(args: argparse.Namespace, root: Path,
                          scratch: Path) -> tuple[list[str], Path, list[Path]]:
    """``Train_pip.py``'s start-up checks, by its own functions, on what BasicSR is about to read: the options
    (schema, ``--force_yml``), the training data (at least one batch), validation image sizes, BasicSR
    ``PairedImageDataset`` scales and the probe's batches. Without them a bad option was a traceback from the
    model's set-up after BasicSR had made the experiment folder, and a mis-scaled pair one mid-epoch, naming no file.
    The weights are left to the model, which reads them once (its error is the same line, after the folder).
    The experiment is the one BasicSR runs (``root``'s, ``debug_<name>`` with ``--debug``: :func:`basicsr_name`):
    ``--auto_resume`` is checked against the state it will resume.

    Returns BasicSR's arguments (:func:`argv_for_basicsr`) with ``-opt`` the file these checks read (a bare name is
    looked up under ``options/train``, a ``base:`` merged and ``--force_yml`` applied in :func:`file_for_basicsr`),
    where BasicSR's own read failed with a traceback after the checks had passed; the experiment folder BasicSR
    will write (whose lock :func:`run` holds while it runs); and the folders BasicSR's ``mkdir_and_rename`` will
    archive (the experiment's and its ``tb_logger``'s; none for a resume)."""
    from ldt.sr.options import load_options
    from ldt.sr.train import check_before_start, experiment_paths, training_data, validation_loaders

    opt = load_options(args.opt, is_train=True, overrides=args.force_yml)
    opt["auto_resume"] = args.auto_resume
    opt["name"] = basicsr_name(opt["name"], args.debug)
    # the ranks the run will have, as Train_pip.py's init_distributed sets them: the data is split as BasicSR will
    opt["rank"], opt["world_size"] = launcher_rank(args.launcher), launcher_world(args.launcher)
    experiment_paths(opt, root)
    loader, _ = training_data(opt)
    resuming = basicsr_resume_path(opt) is not None
    check_before_start(opt, resuming=resuming, train_set=loader.dataset, val_loaders=validation_loaders(opt),
                       weights=False)
    exp = Path(opt["path"]["experiments_root"])
    return (argv_for_basicsr(args, str(file_for_basicsr(Path(opt["option_file"]), scratch, opt, args.force_yml))),
            exp, [] if resuming else [exp, root / "tb_logger" / opt["name"]])


def check_launcher_for_basicsr(launcher: str) -> None:
    """What BasicSR's ``init_dist`` needs, said in one line before it runs: torchrun's variables (a ``KeyError:
    'RANK'`` traceback without them), slurm's, and a CUDA GPU (it sets the device to ``rank % device_count()``, a
    ``ZeroDivisionError`` on a machine without one, and starts NCCL). ``Train_pip.py`` also runs on CPUs (gloo)."""
    from ldt.sr.train import launcher_problem

    problem = launcher_problem(launcher)
    if problem is None and launcher != "none":
        import torch

        if not torch.cuda.is_available():
            problem = (f"--launcher {launcher}: BasicSR's pipeline runs its processes on CUDA GPUs (NCCL) and none is "
                       "available; train on CPUs with Train_pip.py --launcher pytorch (gloo), or without --launcher")
    if problem:
        fail(problem)


@contextlib.contextmanager
def experiment_held(exp: Path, launcher: str, archived: list[Path]) -> Iterator[None]:
    """``Train_pip.py``'s experiment lock on ``exp``, taken by rank 0 (the other ranks share its run): BasicSR's
    pipeline took none, so a second run of the name, through either entry point, archived and overwrote the folder
    of one still training. Then, as ``Train_pip.py`` before its archive, no run of a name inside the folders BasicSR
    will archive (``archived``) may be live (:func:`ldt.sr.checkpoints.runs_inside_held`): BasicSR's
    ``mkdir_and_rename`` moved the folder and lock of a live ``outer/inner`` away with ``outer``'s. Either is refused
    in ``Train_pip.py``'s one line, before BasicSR touches anything."""
    from ldt.sr.checkpoints import experiment_lock, runs_inside_held

    if launcher_rank(launcher) != 0:
        yield
        return
    with experiment_lock(exp):
        with runs_inside_held(*archived):
            pass
        yield


def run(root: str | Path = PROJECT_ROOT) -> None:
    """BasicSR's train pipeline with our archs, datasets and LDTModel registered (options from ``sys.argv``); a
    user error, in the checks or in the pipeline, is ``Train_pip.py``'s ``error:`` lines and exit 2."""
    with reporting_rank(launcher_of_environment()):
        args = basicsr_arguments(sys.argv[1:])
    with reporting_rank(args.launcher):
        check_option_file(args.opt)
    patch_basicsr_train()
    import ldt.archs  # noqa: F401  (registers our archs)
    import ldt.data  # noqa: F401  (registers our datasets)
    import ldt.models  # noqa: F401  (registers LDTModel)
    from basicsr.train import train_pipeline
    from ldt.sr.train import run_reporting_errors

    with tempfile.TemporaryDirectory(prefix="ldt_basicsr_options_") as scratch:  # the merged file, while BasicSR runs
        checked: list = []  # the experiment folder and the folders BasicSR archives, once the checks passed

        def checks() -> None:
            sys.argv[1:], exp, archived = check_before_pipeline(args, Path(root), Path(scratch))
            check_launcher_for_basicsr(args.launcher)  # after the checks: a bad option is said first, on any machine
            checked[:] = [exp, archived]

        def pipeline() -> None:
            # from after the checks to the end, as Train_pip.py
            with experiment_held(checked[0], args.launcher, checked[1]):
                train_pipeline(str(root))

        with reporting_rank(args.launcher):
            code = run_reporting_errors(checks)
        if not code:
            code = run_reporting_errors(pipeline)
        if code:
            sys.exit(code)


if __name__ == "__main__":
    run()
