#!/usr/bin/env python
"""Build the download-free six-camera benchmark (and optionally the clean bicubic pre-training set).

The output is a DRealSR-style folder that DRealSRCameraDataset reads like the real thing. Builds are cached: a second
run with the same parameters is a no-op; a changed camera table or option rebuilds. Prints the build time and, per
camera, the PSNR of bicubic-upsampled LR against HR (how different the cameras are).

Example:  python scripts/build_synthetic_cameras.py --bicubic
"""

from __future__ import annotations

from ldt.cli import OneLineParser, exit_with, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    import argparse
    import time
    from pathlib import Path

    from ldt.atomic import DiskError, FileContentError
    from ldt.cli import check_output_dir, fail, flag, path_flag, stop_in_one_line
    from ldt.data.cameras import DatasetError
    from ldt.data.synthetic_cameras import (
        DEFAULT_BICUBIC_ROOT, DEFAULT_ROOT, MANIFEST, BuildOptionError, build_bicubic_pretrain_set, build_complete,
        build_synthetic_cameras, camera_bicubic_psnr, format_psnr_table,
    )


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=path_flag, default=DEFAULT_ROOT, help="output folder (default: %(default)s)")
    parser.add_argument("--bicubic", action="store_true", help="also build the clean bicubic pre-training set")
    parser.add_argument("--bicubic-root", type=path_flag, default=DEFAULT_BICUBIC_ROOT,
                        help="output folder of the bicubic set (default: %(default)s)")
    parser.add_argument("--scale", type=int, default=4, help="downsampling factor (default: %(default)s)")
    parser.add_argument("--patch-size", type=int, help="HR training patch size in px (default: 192, tiny: 32)")
    parser.add_argument("--patches-per-image", type=int,
                        help="training patches per photo and camera (default: 8, tiny: 2; bicubic set: twice that)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="3 small photos and 32 px patches: seconds, for tests")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()
    check_output_dir(parser, "--root", args.root)  # the values are checked by the builders, before any work
    if args.bicubic:
        check_output_dir(parser, "--bicubic-root", args.bicubic_root)
        if args.bicubic_root.resolve() == args.root.resolve():  # each build takes the folder's manifest for its own
            parser.error(f"--bicubic-root: {args.bicubic_root} is the folder of --root {args.root}: the bicubic set "
                         "would replace the camera benchmark; give it a folder of its own")

    options = dict(scale=args.scale, patch_size=args.patch_size, patches_per_image=args.patches_per_image,
                   seed=args.seed, tiny=args.tiny, progress=not args.no_progress)
    builds = [("camera benchmark", build_synthetic_cameras, args.root)]
    if args.bicubic:
        builds.append(("bicubic pre-training set", build_bicubic_pretrain_set, args.bicubic_root))
    building: list[Path] = []  # the folder being built, if any, for the line of a stop
    with stop_in_one_line(lambda: stopped_build(building)):
        run_builds(parser, args, builds, options, building)


def stopped_build(building: list[Path]) -> str:
    """What a stop leaves in the folder it came in: an unfinished build is marked so in its manifest, and the next
    build of the folder (the same command) replaces it."""
    if not building:
        return "the builds are complete (the PSNR tables were cut short)"
    root = building[0]
    complete = build_complete(root)
    if complete is None:
        return f"nothing was built in {root}"
    if complete:
        return f"{root} holds a whole build (the stop came before the rebuild replaced anything, or after it)"
    return f"{root} is half-built, marked unfinished in its {MANIFEST}; rerun the same command to rebuild it"


def run_builds(parser: argparse.ArgumentParser, args: argparse.Namespace, builds: list, options: dict,
               building: list[Path]) -> None:
    """Each build of ``builds`` in turn (its folder in ``building`` meanwhile), then its PSNR tables."""
    for title, build, root in builds:
        start = time.perf_counter()
        option = "--root" if build is build_synthetic_cameras else "--bicubic-root"
        building[:] = [root]
        try:
            build(root, **options)
        except BuildOptionError as err:  # a bad value, or e.g. a patch larger than the photos' train halves
            parser.error(f"{flag(err.option)}: {err.problem}")
        except (DiskError, FileContentError, DatasetError, OSError) as err:  # unwritable, or not our folder
            fail(f"{option} {root}: {' '.join(str(err).split())}")
        building.clear()
        print(f"{title}: {root} ready in {time.perf_counter() - start:.1f} s")
        for split in ("train", "test"):
            print(f"\n{split} split, bicubic-upsampled LR vs HR:")
            print(format_psnr_table(camera_bicubic_psnr(root, scale=args.scale, split=split)))
        print()


if __name__ == "__main__":
    exit_with(main)
