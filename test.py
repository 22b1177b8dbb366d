"""Evaluate a trained SR network on the target cameras: ``python test.py -opt test_MambaIR_SR_x4.yml``."""

import sys

from ldt.sr.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
