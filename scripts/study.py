#!/usr/bin/env python
"""What LDT buys on the synthetic cameras: FT, FT-EMA, LDT (fixed W), LDT+DPU, DeFT, LDT-S and the paper's exchange
interval, three selection protocols, paired differences to FT (logic and options: ``ldt/sr/study.py``).

    python scripts/study.py                  # the README's study (about two hours on 2 CPU cores)
    python scripts/study.py --collect        # only rebuild experiments/study/tablestudy.{md,csv} and the figure
"""

from ldt.cli import exit_with, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    from ldt.sr.study import main

if __name__ == "__main__":
    exit_with(main)
