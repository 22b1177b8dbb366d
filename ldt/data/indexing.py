"""Writers for ``scripts/index_drealsr.py``: per-camera LMDBs and meta-info files of a checked DRealSR download.

Only the indexer writes these; the dataset reads them through :mod:`ldt.data.cameras`.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ldt.atomic import DiskError, atomic_write_text, disk_reason
from ldt.data.cameras import (
    DatasetError, ImagePair, check_orientation, check_split, image_header, lmdb_paths, name_stem,
)


def _tell_no_one(path: Path) -> None:
    """The writers' default ``done``: no one to tell."""


def write_lmdb(
    pairs: Sequence[ImagePair], lmdb_root: str | Path, split: str, scale: int,
    done: Callable[[Path], None] = _tell_no_one,
) -> dict[str, tuple[Path, Path]]:
    """Write one HR and one LR LMDB per camera of ``pairs`` (disk pairs from :func:`collect_pairs`).

    Values are the original file bytes (no re-encoding); keys are basenames without extension and ``meta_info.txt``
    has basicsr's ``name.png (h,w,c) level`` lines, so basicsr's ``LmdbBackend`` reads them. Every image is decoded
    once here, so a corrupt file fails now, with its name, and so does a pair whose HR and LR carry different EXIF
    orientations (before anything is written). Refuses to overwrite an existing LMDB. Each database is
    written under ``<name>.partial`` and renamed when complete, so a failure or a kill never leaves a half-written
    LMDB that a rerun would take for a finished one. ``done(path)`` is called as each database is complete, so a stop
    can say which are.
    """
    import lmdb

    for pair in pairs:  # the meta-info cannot carry the EXIF orientation: read from an LMDB it is found mid-epoch
        check_orientation(image_header(pair.hr)[2], image_header(pair.lr)[2], f"{pair.hr} / {pair.lr}")
    by_camera: dict[str, list[ImagePair]] = defaultdict(list)
    for pair in pairs:
        by_camera[str(pair.camera)].append(pair)
    written = {}
    for camera, camera_pairs in sorted(by_camera.items()):
        dbs = lmdb_paths(lmdb_root, split, scale, camera)
        for db, paths in zip(dbs, ([p.hr for p in camera_pairs], [p.lr for p in camera_pairs])):
            if db.exists():
                raise DatasetError(f"LMDB {db} already exists; remove it or choose another output folder")
            partial = db.with_name(db.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # what an interrupted earlier attempt left
            partial.parent.mkdir(parents=True, exist_ok=True)
            map_size = sum(os.path.getsize(path) for path in paths) * 2 + (64 << 20)
            meta_lines = []
            env = None
            try:
                env = lmdb.open(str(partial), map_size=map_size)
                with env.begin(write=True) as txn:
                    for path in paths:
                        content = Path(path).read_bytes()
                        image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
                        if image is None:
                            raise DatasetError(f"cannot decode image {path}: corrupt or not an image")
                        height, width = image.shape[:2]
                        channels = 1 if image.ndim == 2 else image.shape[2]
                        name = Path(path).name
                        txn.put(name_stem(name).encode("ascii"), content)
                        meta_lines.append(f"{name} ({height},{width},{channels}) 0\n")
            except BaseException as err:
                # lmdb's own errors (a full disk is lmdb.DiskError) are not OSErrors: named here, in one line.
                reason = disk_reason(err, partial.parent) if isinstance(err, lmdb.Error) else None
                if env is not None:
                    env.close()
                shutil.rmtree(partial, ignore_errors=True)
                if reason is not None:
                    raise DiskError(f"cannot write {db}: {reason}") from None
                raise
            env.close()
            (partial / "meta_info.txt").write_text("".join(meta_lines))
            partial.rename(db)
            done(db)
        written[camera] = dbs
    return written


def meta_info_path(folder: str | Path, split: str, scale: int, camera: str) -> Path:
    return Path(folder) / f"DRealSR_x{scale}_{check_split(split)}_{camera}.txt"


def write_meta_info(pairs: Sequence[ImagePair], folder: str | Path, split: str, scale: int,
                    done: Callable[[Path], None] = _tell_no_one) -> list[Path]:
    """One text file per camera, one ``<HR name> <LR name>`` line per pair (first token = HR, as in basicsr);
    ``done(path)`` as each is written (as :func:`write_lmdb`)."""
    by_camera: dict[str, list[ImagePair]] = defaultdict(list)
    for pair in pairs:
        by_camera[str(pair.camera)].append(pair)
    written = []
    for camera, camera_pairs in sorted(by_camera.items()):
        path = meta_info_path(folder, split, scale, camera)  # atomic: a full disk never leaves a shortened list
        atomic_write_text(path, "".join(f"{Path(p.hr).name} {Path(p.lr).name}\n" for p in camera_pairs))
        done(path)
        written.append(path)
    return written
