"""``Train_pip.py`` in a subprocess that reports its progress, for the interruption tests.

    python -m tests.interrupt_driver PROGRESS_FILE [PAUSE_IN_STATE_WRITE_AT] -- <Train_pip.py arguments>

Each finished iteration is appended to PROGRESS_FILE (so the test can kill at a chosen point). With
PAUSE_IN_STATE_WRITE_AT = K, the write of ``K.state`` stops half-way through its temporary file, reports ``pause K``
and waits forever: the test kills the process inside a checkpoint write. With the environment variable
HOLD_AT_ITER = N, the process waits forever once iteration N is reported, so a kill lands at N however loaded the
machine is (a kill sent on seeing the line came iterations late). Nothing here changes what training computes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    split = argv.index("--")
    progress, pause = Path(argv[0]), (int(argv[1]) if split > 1 else None)

    def report(line: str) -> None:
        with open(progress, "a") as handle:
            handle.write(line + "\n")
            handle.flush()

    import ldt.atomic
    from ldt.models.ldt_model import LDTModel

    step = LDTModel.optimize_parameters
    hold = int(os.environ.get("HOLD_AT_ITER", "0")) or None

    def reporting_step(self, current_iter: int) -> None:
        step(self, current_iter)
        report(f"iter {current_iter}")
        while current_iter == hold:
            time.sleep(1)

    LDTModel.optimize_parameters = reporting_step
    if pause is not None:
        real_save = ldt.atomic.torch.save

        def slow_save(obj, file, *args, **kwargs):
            real_save(obj, file, *args, **kwargs)
            if hasattr(file, "flush"):  # a file object (ldt.atomic writes through one): its bytes on disk first
                file.flush()
            path = getattr(file, "name", file)
            if Path(path).name.startswith(f".{pause}.state."):
                size = Path(path).stat().st_size
                with open(path, "r+b") as handle:
                    handle.truncate(size // 2)  # the state is half-written when the kill comes
                report(f"pause {pause}")
                while True:
                    time.sleep(1)

        ldt.atomic.torch.save = slow_save
    from ldt.sr.train import main as train_main

    return train_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
