#!/usr/bin/env python
"""How long the full pre-training data check takes: pairing by name plus every image header and end marker.

Writes a DRealSR-shaped fixture of ``--pairs`` HR/LR PNG pairs (Olympus names, HR ``--hr`` px, LR a quarter of it,
at least :data:`MIN_LR` px)
into a temporary folder, then times ``collect_pairs`` without and with the size check (``check_sizes``, on by
default in every dataset), best of ``--repeat``. The check reads each file's header and its last bytes (PNG IEND,
JPEG EOI), never the pixels, so it stays cheap enough to run before every training.

    python scripts/benchmark_data_check.py --pairs 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ldt.cli import OneLineParser, at_least, check_args, exit_with, fail, positive, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback; warnings: one line each
    import cv2
    import numpy as np

    from ldt.atomic import disk_reason
    from ldt.data.cameras import collect_pairs

SCALE = 4  # DRealSR x4: LR = HR // SCALE
MIN_LR = 8  # px: the smallest input SAFMN takes, so the smallest LR any network here trains on
MIN_HR = SCALE * MIN_LR


def hr_problem(value: int) -> str | None:
    """What is wrong with an ``--hr`` too small for x4 pairs (a 5 px HR made a 1 px LR), or None."""
    problem = at_least(MIN_HR)(value)
    return problem and f"{problem} (LR = HR // {SCALE} must be at least {MIN_LR} px)"


def write_fixture(root: Path, pairs: int, hr: int) -> None:
    hr_dir, lr_dir = root / "x4" / "Train_x4" / "train_HR", root / "x4" / "Train_x4" / "train_LR"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hr_image = rng.integers(0, 255, (hr, hr, 3), dtype=np.uint8)
    hr_bytes = cv2.imencode(".png", hr_image)[1].tobytes()
    lr_side = hr // SCALE
    lr_bytes = cv2.imencode(".png", cv2.resize(hr_image, (lr_side, lr_side), interpolation=cv2.INTER_AREA))[1].tobytes()
    for index in range(pairs):
        (hr_dir / f"P{1000000 + index // 40:07d}_x4_{index % 40}.png").write_bytes(hr_bytes)
        (lr_dir / f"P{1000000 + index // 40:07d}_x1_{index % 40}.png").write_bytes(lr_bytes)


def timed(root: Path, check: bool, repeat: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = len(collect_pairs(split="train", cameras=["olympus"], dataroot=root, check_sizes=check).pairs)
        best = min(best, time.perf_counter() - start)
    return best, count


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--hr", type=int, default=192,
                        help=f"HR side in px, at least {MIN_HR} (default: %(default)s, a training patch)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    check_args(parser, args, pairs=positive, hr=hr_problem, repeat=positive)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        try:
            write_fixture(root, args.pairs, args.hr)
        except MemoryError as err:  # numpy's message says how much the HR image needs
            parser.error(f"--hr: {args.hr} px images do not fit in memory: {err}")
        except OSError as err:  # a full or read-only temporary folder: say where, and how to move it
            fail(f"cannot write the fixture in {folder}: {disk_reason(err, root)}; set TMPDIR to a folder with room")
        pairing, count = timed(root, False, args.repeat)
        checked, _ = timed(root, True, args.repeat)
    print(f"{count} pairs ({2 * count} PNG files, HR {args.hr} px): pairing by name {pairing:.2f} s; with every "
          f"header and end marker read {checked:.2f} s ({1e3 * (checked - pairing) / (2 * count):.3f} ms per file)")


if __name__ == "__main__":
    exit_with(main)
