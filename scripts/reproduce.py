#!/usr/bin/env python
"""Reproduce the paper's SR tables with one command (logic and options: ``ldt/sr/reproduce.py``).

Examples:
    python scripts/reproduce.py --table 1 --data datasets/DRealSR --arch mambair --weights MambaIR_x4.pth --seeds 3
    python scripts/reproduce.py --table 6 --data datasets/DRealSR --weights safmn=SAFMN.pth hat=HAT.pth mambair=M.pth
    python scripts/reproduce.py --table 1 2 --data synthetic --arch safmn_tiny --iters 200 --batch-size 8 --gt-size 64 \
        --probe-batches 24 --interval 2
    python scripts/reproduce.py --table 1 2 --data synthetic --arch safmn_tiny --iters 200 --batch-size 8 --gt-size 64 \
        --probe-batches 24 --interval 2 --collect    # only rebuild the tables from experiments/reproduce/results.jsonl
"""

from ldt.cli import exit_with, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    from ldt.sr.reproduce import main

if __name__ == "__main__":
    exit_with(main)
