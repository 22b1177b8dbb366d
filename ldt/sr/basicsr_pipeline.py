"""Train with BasicSR's own ``basicsr.train.train_pipeline``, the way HAT's ``hat/train.py`` does::

    python -m ldt.sr.basicsr_pipeline -opt options/train/train_MambaIR_LDT_x4.yml [--auto_resume]

``LDTModel`` is a plain BasicSR model: this pipeline validates it through ``nondist_validation`` (every ``val_*`` set,
BasicSR's best-metric tracking), saves ``net_g_<iter>.pth`` / ``<iter>.state`` and resumes from them. What only
``Train_pip.py``'s loop adds: the best checkpoint selected on the source camera (``net_g_best.pth``), a resume that
continues from the exact sample of the epoch (BasicSR's restarts the epoch), one checked option dict for the whole
run (BasicSR's pipeline reads the raw file itself, so the file must spell out the keys it reads: ``logger``,
``val:val_freq``, ...), and clean exits on preemption and bad input.
"""

from __future__ import annotations

from pathlib import Path

import sys

from ldt.cli import fail, not_a_file
from ldt.compat import patch_basicsr_train
from ldt.sr.options import PROJECT_ROOT


def check_option_file(argv: list[str]) -> None:
    """BasicSR opens ``-opt`` itself: a FIFO would wait for a writer forever and ``/dev/zero`` never ends, so what is
    no regular file is refused first, in one line (everything else is BasicSR's to check)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-opt":
            what = not_a_file(value)
            if what:
                fail(f"-opt {value} is {what}")


def run(root: str | Path = PROJECT_ROOT) -> None:
    """BasicSR's train pipeline with our archs, datasets and LDTModel registered (options from ``sys.argv``)."""
    check_option_file(sys.argv)
    patch_basicsr_train()
    import ldt.archs  # noqa: F401  (registers our archs)
    import ldt.data  # noqa: F401  (registers our datasets)
    import ldt.models  # noqa: F401  (registers LDTModel)
    from basicsr.train import train_pipeline

    train_pipeline(str(root))


if __name__ == "__main__":
    run()
