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
import sys
import tempfile
from pathlib import Path

import yaml

from ldt.cli import fail, not_a_file
from ldt.compat import basicsr_resume_path, patch_basicsr_train
from ldt.sr.options import PROJECT_ROOT, apply_overrides, read_option_file


def check_option_file(argv: list[str]) -> None:
    """BasicSR opens ``-opt`` itself: a FIFO would wait for a writer forever and ``/dev/zero`` never ends, so what is
    no regular file is refused first, in one line (everything else is BasicSR's to check)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-opt":
            what = not_a_file(value)
            if what:
                fail(f"-opt {value} is {what}")


def file_for_basicsr(file: Path, scratch: Path, overrides: list[str] | None = None) -> Path:
    """The option file to hand BasicSR, which opens ``-opt`` with its own YAML loader and knows no ``base:``: ``file``
    itself, or for a file that inherits or ``overrides`` (``--force_yml`` entries, which our checks applied), it merged
    with its base files and the entries applied as our checks applied them, written under its own name in
    ``scratch`` (BasicSR copies ``-opt`` into the experiment folder by its name, so that copy is the whole option set
    that ran). BasicSR is then not given ``--force_yml``: its exec-based parser would apply the entries a second time,
    its own way (a KeyError for a section the file leaves to its defaults, a ValueError for a value holding '=')."""
    inherits = "base" in yaml.safe_load(file.read_text())  # read_option_file has checked it is a mapping
    if not inherits and not overrides:
        return file
    opt = read_option_file(file)
    apply_overrides(opt, overrides)
    done = [what for what, given in (("its base: files merged in", inherits),
                                      (f"--force_yml {' '.join(' '.join(overrides or []).split())} applied", overrides))
            if given]  # (one comment line, whatever the entries hold)
    merged = scratch / file.name
    merged.write_text(f"# {file} with {' and '.join(done)}, for BasicSR (ldt.sr.basicsr_pipeline)\n"
                      + yaml.safe_dump(opt, sort_keys=False))
    return merged


def check_before_pipeline(argv: list[str], root: Path, scratch: Path) -> list[str]:
    """``Train_pip.py``'s start-up checks, by its own functions, on what BasicSR is about to read: the options
    (schema, ``--force_yml``), the training data (at least one batch), validation image sizes, BasicSR
    ``PairedImageDataset`` scales and the probe's batches. Without them a bad option was a traceback from the
    model's set-up after BasicSR had made the experiment folder, and a mis-scaled pair one mid-epoch, naming no file.
    The weights are left to the model, which reads them once (its error is the same line, after the folder).
    The experiment is ``root``'s, as for BasicSR: ``--auto_resume`` is checked against the state it will resume.

    Returns BasicSR's arguments: ``argv`` with ``-opt`` the file these checks read (a bare name is looked up under
    ``options/train``, a ``base:`` merged in :func:`file_for_basicsr`), where BasicSR's own read failed with a
    traceback after the checks had passed."""
    from ldt.sr.options import load_options
    from ldt.sr.train import check_before_start, experiment_paths, training_data, validation_loaders

    parser = argparse.ArgumentParser(add_help=False)  # BasicSR's own flags, read as its parse_options reads them
    parser.add_argument("-opt")
    parser.add_argument("--auto_resume", action="store_true")
    parser.add_argument("--force_yml", nargs="+", default=None)
    args, rest = parser.parse_known_args(argv)
    if args.opt is None:
        return argv  # BasicSR's parser names the missing flag
    opt = load_options(args.opt, is_train=True, overrides=args.force_yml)
    opt["auto_resume"] = args.auto_resume
    experiment_paths(opt, root)
    loader, _ = training_data(opt)
    check_before_start(opt, resuming=basicsr_resume_path(opt) is not None, train_set=loader.dataset,
                       val_loaders=validation_loaders(opt), weights=False)
    handed = str(file_for_basicsr(Path(opt["option_file"]), scratch, args.force_yml))
    if handed == args.opt:
        return argv
    return ["-opt", handed, *rest, *(["--auto_resume"] if args.auto_resume else [])]


def run(root: str | Path = PROJECT_ROOT) -> None:
    """BasicSR's train pipeline with our archs, datasets and LDTModel registered (options from ``sys.argv``); a
    user error, in the checks or in the pipeline, is ``Train_pip.py``'s ``error:`` lines and exit 2."""
    check_option_file(sys.argv)
    patch_basicsr_train()
    import ldt.archs  # noqa: F401  (registers our archs)
    import ldt.data  # noqa: F401  (registers our datasets)
    import ldt.models  # noqa: F401  (registers LDTModel)
    from basicsr.train import train_pipeline
    from ldt.sr.train import run_reporting_errors

    with tempfile.TemporaryDirectory(prefix="ldt_basicsr_options_") as scratch:  # the merged file, while BasicSR runs
        def checks() -> None:
            sys.argv[1:] = check_before_pipeline(sys.argv[1:], Path(root), Path(scratch))

        for work in (checks, lambda: train_pipeline(str(root))):
            code = run_reporting_errors(work)
            if code:
                sys.exit(code)


if __name__ == "__main__":
    run()
