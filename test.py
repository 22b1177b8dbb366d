"""Evaluate a trained SR network on the target cameras: ``python test.py -opt test_MambaIR_SR_x4.yml``."""

from ldt.cli import exit_with, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    from ldt.sr.evaluate import main

if __name__ == "__main__":
    exit_with(main)
