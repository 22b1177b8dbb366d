#!/usr/bin/env python
"""Index a DRealSR download: per-camera pair counts per split, every problem found, optional exports.

Finds the split folders (x4/Train_x4/{train_HR,train_LR}, x4/Test_x4/{test_HR,test_LR}, doubled folders such as
Test_x4/Test_x4, or HR/LR names), pairs files by name, assigns cameras from the file names, and reports unpaired,
misnamed and unknown files. --check-sizes also reads every image header (catches corrupt files and wrong scales);
--check-content decodes every pair and names those whose HR is another photo than the LR (it correlates with the LR,
once downscaled to it, below --min-correlation).

Exports (pairs of the selected cameras only; files with problems are left out):
  --meta-info DIR   one DRealSR_x<s>_<split>_<camera>.txt per camera and split ('<HR name> <LR name>' lines),
                    usable as the dataset's meta_info_file option; a rerun removes the list of a selected camera
                    left with no pair in an indexed split
  --lmdb DIR        DIR/x<s>/<split>/<camera>_{HR,LR}.lmdb with basicsr-style meta_info.txt; use it with
                    dataroot: DIR and io_backend: {type: lmdb}

Exit status 1 if any problem was found. Example:
  python scripts/index_drealsr.py datasets/DRealSR --check-sizes --lmdb datasets/DRealSR_lmdb
"""

from __future__ import annotations

from ldt.cli import OnceList, OneLineParser, exit_with, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    import argparse
    import contextlib
    import sys
    from pathlib import Path

    from ldt.atomic import BusyError, DiskError, exclusive_lock, lock_beside
    from ldt.data.cameras import (
        CAMERA_BY_KEY, RELEASE_X4_TEST_PAIRS, SPLITS, DatasetError, PairingResult, check_orientation, check_scale,
        decode_image, find_split_dirs, image_header, lmdb_paths, pair_correlation, pair_folders, resolve_cameras,
    )
    from ldt.cli import (
        between, check_args, check_output_dir, fail, listing, non_negative, path_flag, positive, stop_in_one_line,
    )
    from ldt.data.indexing import meta_info_path, write_lmdb, write_meta_info


def size_problems(result: PairingResult, cameras: tuple[str, ...], scale: int, tolerance: int) -> dict[str, str]:
    """Header-read every pair of ``cameras``; ``{HR path: problem}`` for each unreadable, mis-scaled or
    differently turned (EXIF orientation) pair."""
    problems = {}
    for pair in result.pairs:
        if pair.camera in cameras:
            try:
                (*hr_size, hr_turn), (*lr_size, lr_turn) = image_header(pair.hr), image_header(pair.lr)
                check_orientation(hr_turn, lr_turn, f"{pair.hr} / {pair.lr}")
                check_scale(hr_size, lr_size, scale, tolerance, f"{pair.hr} / {pair.lr}")
            except DatasetError as error:
                problems[pair.hr] = str(error)
    return problems



def content_problems(result: PairingResult, cameras: tuple[str, ...], scale: int, least: float,
                     skip: dict[str, str]) -> dict[str, str]:
    """Decode every pair of ``cameras`` (except those in ``skip``); ``{HR path: problem}`` for each pair whose HR,
    downscaled to the LR, correlates with it below ``least`` (another photo), or that does not decode."""
    problems = {}
    for pair in result.pairs:
        if pair.camera in cameras and pair.hr not in skip:
            try:
                hr, lr = (decode_image(Path(path).read_bytes(), path) for path in (pair.hr, pair.lr))
            except (DatasetError, OSError) as error:
                problems[pair.hr] = str(error)
                continue
            if min(hr.shape[0] // lr.shape[0], hr.shape[1] // lr.shape[1]) < scale:
                continue  # a wrong scale: --check-sizes names it
            value = pair_correlation(hr, lr, scale)
            if value < least:
                problems[pair.hr] = (f"{pair.hr} / {pair.lr}: HR and LR look like different images (correlation "
                                     f"{value:.2f} of the HR downscaled to the LR, below --min-correlation {least:g})")
    return problems


def exported(root: Path, splits: list[str], scale: int, cameras: tuple[str, ...]) -> list[tuple[str, str]]:
    """(split, camera) of each export the run may write: a selected camera with pairs in a split found (pairing by
    name only, no image read; a split that cannot be found or listed is left to the run to report)."""
    found = []
    for split in splits:
        try:
            result = pair_folders(*find_split_dirs(root, split, scale), scale)
        except DatasetError:
            continue
        found += [(split, camera) for camera in cameras if any(pair.camera == camera for pair in result.pairs)]
    return found


def main() -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=path_flag, default=Path("datasets/DRealSR"),
                        help="DRealSR folder (default: %(default)s)")
    parser.add_argument("--scale", type=int, default=4, help="scale factor (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), action=OnceList,
                        help="splits to index")
    parser.add_argument("--cameras", nargs="+", default=["all"], action=OnceList,
                        help="camera keys or aliases to check and export (default: all six)")
    parser.add_argument("--check-sizes", action="store_true", help="read every header: unreadable / wrong scale")
    parser.add_argument("--check-content", action="store_true",
                        help="decode every pair: an HR that is another photo than its LR (slow: reads every pixel)")
    parser.add_argument("--min-correlation", type=float, default=0.5,
                        help="--check-content: least HR/LR correlation of a true pair (default: %(default)s)")
    parser.add_argument("--size-tolerance", type=int, help="px HR may exceed LR x scale (default: 4 x scale)")
    parser.add_argument("--meta-info", type=path_flag, metavar="DIR", help="write per-camera meta-info files here")
    parser.add_argument("--lmdb", type=path_flag, metavar="DIR", help="write per-camera LMDBs here")
    args = parser.parse_args()
    args.splits = list(dict.fromkeys(args.splits))  # a split named twice is indexed (and exported) once
    written: list[Path] = []  # the exports this run finished, for the line of a stop
    with stop_in_one_line(lambda: stopped_exports(written)), contextlib.ExitStack() as locks:
        return index(parser, args, written, locks)


def lock_exports(parser: argparse.ArgumentParser, args: argparse.Namespace, locks: contextlib.ExitStack) -> None:
    """Hold each export folder's lock for the rest of the run (``locks``): a second run into one folder would
    delete the LMDB the first is writing (its ``<db>.partial``) and rewrite or remove its lists."""
    for option, folder in (("--meta-info", args.meta_info), ("--lmdb", args.lmdb)):
        if folder is None:
            continue
        busy = (f"{option}: another scripts/index_drealsr.py is writing into {folder} ({{holder}}, lock {{lock}}); "
                "wait for it, or give another folder")
        try:
            locks.enter_context(exclusive_lock(lock_beside(folder), busy=busy))
        except (BusyError, DiskError) as error:
            parser.error(str(error))


def stopped_exports(written: list[Path]) -> str:
    """What a stop leaves: whole exports only (each is written under a temporary name, then renamed)."""
    if not written:
        return "no export was written"
    lmdbs = [path for path in written if path.suffix == ".lmdb"]
    rerun = f"; remove the LMDBs it wrote ({listing(lmdbs, 2)}) before rerunning with --lmdb" if lmdbs else \
        "; rerun the same command"
    return f"no export is half-written; {len(written)} written before the stop ({listing(written, 2)}){rerun}"


def remove_stale_lists(folder: Path, split: str, scale: int, cameras: tuple[str, ...], kept: list[Path]) -> None:
    """Remove the meta-info list an earlier run wrote of each camera of ``cameras`` that has no pair to export in
    ``split`` now (a camera gone, or every pair refused), which a training would still read; one line each. A split
    not found keeps its lists (a mistyped ROOT finds none: its problem line says so, exit status 1).
    Only this script's own names (``DRealSR_x<scale>_<split>_<camera>.txt``) of the selected cameras are looked at."""
    for camera in cameras:
        path = meta_info_path(folder, split, scale, camera)
        if path.is_file() and path not in kept:
            path.unlink()
            print(f"  removed {path}: a list of an earlier run, for a camera with no pair to export in {split} now")


def index(parser: argparse.ArgumentParser, args: argparse.Namespace, written: list[Path],
          locks: contextlib.ExitStack) -> int:
    """The run after parsing: checks, the export folders' locks (held in ``locks``), pairing, exports (each appended
    to ``written`` once whole), the table."""
    if not args.root.is_dir():
        parser.error(f"{args.root} {'is not a folder' if args.root.exists() else 'does not exist'}")
    check_args(parser, args, scale=positive, size_tolerance=non_negative,
               min_correlation=between(-1, 1, inclusive=True))
    try:
        cameras = resolve_cameras(args.cameras)
    except DatasetError as error:
        parser.error(f"--cameras: {error}")
    check_output_dir(parser, "--meta-info", args.meta_info)
    check_output_dir(parser, "--lmdb", args.lmdb)
    lock_exports(parser, args, locks)
    if args.lmdb:  # write_lmdb refuses an existing LMDB: all of them looked for now, not after the splits before
        existing = [db for split, camera in exported(args.root, args.splits, args.scale, cameras)
                    for db in lmdb_paths(args.lmdb, split, args.scale, camera) if db.exists()]
        if existing:
            parser.error(f"--lmdb: {listing(existing, 4)} already exist; remove them or choose another output folder")
    tolerance = 4 * args.scale if args.size_tolerance is None else args.size_tolerance

    counts: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for split in args.splits:
        try:
            hr_dir, lr_dir = find_split_dirs(args.root, split, args.scale)
        except DatasetError as error:
            problems.append(f"{split}: {error}")  # its lists stay: a mistyped ROOT must not delete them
            continue
        print(f"{split}: HR {hr_dir}\n{' ' * len(split)}  LR {lr_dir}")
        try:
            result = pair_folders(hr_dir, lr_dir, args.scale)
            counts[split] = {str(key): value for key, value in result.counts().items()}
            bad = size_problems(result, cameras, args.scale, tolerance) if args.check_sizes else {}
            if args.check_content:
                bad |= content_problems(result, cameras, args.scale, args.min_correlation, bad)
            problems += [f"{split}: {line}" for line in [*result.problems(), *bad.values()]]
            pairs = [pair for pair in result.pairs if pair.camera in cameras and pair.hr not in bad]
            option = "--meta-info"
            try:
                if args.meta_info:
                    lists = write_meta_info(pairs, args.meta_info, split, args.scale, written.append)
                    for path in lists:
                        print(f"  wrote {path}")
                    remove_stale_lists(args.meta_info, split, args.scale, cameras, lists)
                option = "--lmdb"
                if args.lmdb:
                    for camera, dbs in write_lmdb(pairs, args.lmdb, split, args.scale, written.append).items():
                        print(f"  wrote {camera}: {dbs[0]} + {dbs[1]}")
            except OSError as error:  # the folders were checked writable at the start: a full disk, or changed since
                fail(f"{option}: cannot write {error.filename or 'there'}: {error.strerror or error}")
            except DiskError as error:  # the same, named by the writer
                fail(f"{option}: {error}")
        except DatasetError as error:  # an unreadable folder, or a corrupt image met while writing an LMDB
            print(f"error: {error}", file=sys.stderr)
            return 2

    if counts:
        print_table(counts, cameras)
    print("\nproblems:" if problems else "\nno problems found")
    for line in problems:
        print(f"  {line}")
    return 1 if problems else 0


def print_table(counts: dict[str, dict[str, int]], cameras: tuple[str, ...]) -> None:
    """Markdown table: one row per camera, one pair-count column per split, and the x4 release's test counts."""
    print(f"\n| camera | pattern | paper column | {' | '.join(f'{s} pairs' for s in counts)} | release x4 test |")
    print(f"|---|---|---|{'---|' * len(counts)}---|")
    for key in cameras:
        camera = CAMERA_BY_KEY[key]
        cells = " | ".join(str(counts[split].get(key, 0)) for split in counts)
        release = RELEASE_X4_TEST_PAIRS.get(key, "-")
        print(f"| {key} | `{camera.pattern}` | {camera.column or '-'} | {cells} | {release} |")
    totals = " | ".join(str(sum(c.get(key, 0) for key in cameras)) for c in counts.values())  # the rows above
    print(f"| total | | | {totals} | {sum(RELEASE_X4_TEST_PAIRS.get(key, 0) for key in cameras)} |")


if __name__ == "__main__":
    exit_with(main)
