"""BasicSR dataset of DRealSR-style LR/HR pairs restricted to chosen cameras (real DRealSR or the synthetic benchmark).

Its options are :class:`ldt.data.options.DRealSRCameraOptions` (every key, type and default is declared there)::

    type: DRealSRCameraDataset
    dataroot: datasets/DRealSR        # searched for the split folders; for LMDB: the --lmdb output folder
    split: train                      # train | test
    cameras: [olympus]                # required: keys, aliases (canon_all, targets, all) or a list
    gt_size: 192                      # HR training crop (LR patch 48 at x4); train phase only

Items are ``{'lq', 'gt', 'lq_path', 'gt_path', 'camera'}`` with RGB float tensors in [0, 1], as basicsr's
``PairedImageDataset``. Outside the train phase the HR is cropped to LR x scale (DRealSR HRs can be a few px larger).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import lmdb
import numpy as np
from pydantic import ValidationError
from torch.utils import data

from ldt.cli import first_names
from ldt.compat import patch_basicsr
from ldt.core.config import describe_errors
from ldt.data.cameras import (
    DatasetError, ImagePair, basicsr_lmdb_meta, check_lr_patch, check_orientation, collect_pairs, crop_gt_to_lq,
    decode_image, no_images, orientation, tolerance_px,
)
from ldt.data.options import DRealSRCameraOptions
from ldt.data.synthetic_cameras import MANIFEST, unfinished_build

patch_basicsr()
from basicsr.data.transforms import augment, paired_random_crop  # noqa: E402
from basicsr.utils import FileClient, img2tensor, scandir  # noqa: E402
from basicsr.utils.registry import DATASET_REGISTRY  # noqa: E402

# One basicsr LMDB client per database file and process: py-lmdb >= 3 refuses to open an environment twice in one
# process, which two datasets on one LMDB (train + held-out validation) would otherwise do.
_LMDB_CLIENTS: dict[str, FileClient] = {}
_REBUILD = "rebuild it with scripts/index_drealsr.py --lmdb"
BASICSR_REBUILD = "rebuild it with basicsr.utils.lmdb_util.make_lmdb_from_imgs"
"""The remedy for a damaged LMDB of BasicSR's ``PairedImageDataset`` (BasicSR's writer, not ours, made it)."""


def _lmdb_client(db: str | Path, remedy: str = _REBUILD) -> FileClient:
    """The shared client of ``db``; a file lmdb cannot open (cut short, zeroed, not an LMDB) is a
    :class:`DatasetError` naming it, not lmdb's traceback, and so is a data.mdb shorter than the pages its header
    records (a copy stopped part-way: lmdb maps the file and opens it, and a read past the cut is a SIGBUS that
    kills the process, 'Bus error', no line)."""
    key = os.path.realpath(db)
    if key not in _LMDB_CLIENTS:
        try:
            client = FileClient("lmdb", db_paths=[key], client_keys=["default"])
        except lmdb.Error as err:
            raise DatasetError(f"LMDB {db} cannot be opened ({err}): a damaged or half-written database? "
                               f"{remedy}") from None
        env = client.client._client["default"]
        data_file = os.path.join(key, "data.mdb") if os.path.isdir(key) else key
        needed, held = (env.info()["last_pgno"] + 1) * env.stat()["psize"], os.path.getsize(data_file)
        if held < needed:
            env.close()
            raise DatasetError(f"LMDB {db} is cut short: its data.mdb holds {held} of the {needed} bytes its header "
                               f"records: a copy that did not finish? {remedy}")
        _LMDB_CLIENTS[key] = client
    return _LMDB_CLIENTS[key]


class SharedLmdbFiles:
    """BasicSR's ``FileClient.get`` over this process's shared environments, for BasicSR's ``PairedImageDataset``
    on LMDBs (its ``file_client``). Its own client opens both LMDBs again for every dataset object, which py-lmdb >= 3
    refuses while another one of the process holds them: a repartition's probe set beside the training set read
    in-process (``num_worker_per_gpu: 0``) failed mid-training with 'already open in this process'."""

    def __init__(self, **databases: str) -> None:
        self.databases = databases  # BasicSR's client key ('gt', 'lq') -> LMDB folder

    def get(self, key: str, client_key: str) -> bytes | None:
        return _lmdb_client(self.databases[client_key], BASICSR_REBUILD).get(key, "default")


def check_lmdb_keys(db: Path, keys: list[str], remedy: str = _REBUILD) -> None:
    """Every key ``db``'s meta_info.txt lists is in the database. A writer killed mid-way (basicsr's
    ``make_lmdb_from_imgs`` writes meta_info.txt line by line and commits in batches) or a copy cut short leaves
    listed keys missing, which a validation set met only at its first validation, after ``val_freq`` iterations.
    A key lookup each (no value is read), before any work; a key BasicSR's ASCII lookup cannot spell is missing."""
    env = _lmdb_client(db, remedy).client._client["default"]
    with env.begin(write=False) as txn, txn.cursor() as cursor:
        missing = [key for key in keys if not key.isascii() or not cursor.set_key(key.encode("ascii"))]
    if missing:
        raise DatasetError(f"LMDB {db} lacks {len(missing)} of the {len(keys)} image(s) its meta_info.txt lists "
                           f"({first_names(missing)}): a half-written database? {remedy}")


def lmdb_keys(where: str, db: str) -> list[str]:
    """The keys of ``db`` as BasicSR reads them (:func:`ldt.data.cameras.basicsr_lmdb_meta`); a meta_info.txt line
    that is not BasicSR's writer's is named with the set (``where``), as every other error of its checks is."""
    try:
        return list(basicsr_lmdb_meta(db))
    except DatasetError as err:
        raise DatasetError(f"{where}: {err}") from None


def check_paired_lmdb(where: str, gt_db: str, lq_db: str) -> None:
    """BasicSR's ``PairedImageDataset`` on LMDBs takes each one's keys from its meta_info.txt (a line up to its
    first dot) and fails, without naming a key, on two key sets that differ ('Keys in lq_folder and gt_folder are
    different.') and, mid-epoch, on a listed key its database lacks (a NoneType traceback). Both are one line here,
    naming the database and the key, before the dataset is built (a folder that is no LMDB at all, not named
    ``*.lmdb`` or without meta_info.txt, is the option check's: ``ldt.sr.options``); a key lookup each. Two
    meta_info.txt that list nothing are one line too (:func:`no_images`), as is a line that is not BasicSR's
    writer's (:func:`ldt.data.cameras.basicsr_lmdb_meta`, whose shapes the scale check reads)."""
    keys = {db: lmdb_keys(where, db) for db in (gt_db, lq_db)}
    if not keys[gt_db] and not keys[lq_db]:
        raise no_images(f"LMDB {gt_db} (its meta_info.txt)", lq_db, "dataroot_gt")
    try:
        for one, other in ((gt_db, lq_db), (lq_db, gt_db)):
            unpaired = sorted(set(keys[one]) - set(keys[other]))
            if unpaired:
                raise DatasetError(f"{len(unpaired)} key(s) of {one}/meta_info.txt are not in {other}/meta_info.txt "
                                   f"({first_names(unpaired)}): BasicSR pairs the GT and LQ LMDBs by key")
        for db in (gt_db, lq_db):
            check_lmdb_keys(Path(db), keys[db], BASICSR_REBUILD)
    except DatasetError as err:
        raise DatasetError(f"{where}: {err}") from None


def check_single_lmdb(where: str, lq_db: str) -> None:
    """BasicSR's ``SingleImageDataset`` on an LMDB takes its keys from meta_info.txt (a line up to its first dot) and
    failed only at the read of a listed key its database lacks (a meta_info.txt of another database included), after
    the SR images before it were written; a database lmdb cannot open was lmdb's traceback. Each is one line here,
    naming the database and the key, before the dataset is built (a key lookup each), as is a meta_info.txt that
    lists nothing."""
    keys = lmdb_keys(where, lq_db)
    if not keys:
        raise DatasetError(f"LMDB {lq_db}: its meta_info.txt lists no images", "dataroot_lq")
    try:
        check_lmdb_keys(Path(lq_db), keys, BASICSR_REBUILD)
    except DatasetError as err:
        raise DatasetError(f"{where}: {err}") from None


def listed_names(where: str, meta_info_file: str, trim: Callable[[str], str]) -> list[str]:
    """The image names a BasicSR ``meta_info_file`` lists (each line's first word, the line cut by ``trim`` as the
    dataset reading it does: PairedImageDataset strips, SingleImageDataset right-strips); an unreadable or empty
    file is one line naming it."""
    try:
        with open(meta_info_file) as lines:
            names = [trim(line).split(" ")[0] for line in lines]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{where}: meta_info_file {meta_info_file} cannot be read: {err}") from None
    if not names:
        raise DatasetError(f"{meta_info_file} lists no images", "meta_info_file")
    return names


def check_listed(where: str, meta_info_file: str, folder: str, names: list[str], why: str = "") -> None:
    """Refuse, in one line, the ``names`` (listed by ``meta_info_file``) that are not files in ``folder``."""
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise DatasetError(f"{where}: {len(missing)} of the {len(names)} image(s) meta_info_file "
                           f"{meta_info_file} lists are not in {folder} ({first_names(missing)}){why}")


def check_paired_folders(where: str, gt: str, lq: str, filename_tmpl: str = "{}",
                         meta_info_file: str | None = None) -> None:
    """BasicSR's ``PairedImageDataset`` on disk pairs each HR name with the LR name ``filename_tmpl`` makes of it
    (same extension): from the HR folder's files it refuses, in tracebacks naming no folder, an LR folder of another
    count ('lq and gt datasets have different number of images: 5, 6') and an HR name whose LR is not there ('x.png
    is not in lq_paths'); from a ``meta_info_file`` it takes the listed names unchecked and fails mid-epoch on one
    missing from either folder. Each is one line here, naming the folders and the first unpaired names, before the
    dataset is built (names as BasicSR derives them; a listed stat each), as are two empty folders (:func:`no_images`)
    and an empty ``meta_info_file`` (an empty set failed only at its first validation)."""

    def lq_name(gt_name: str) -> str:
        stem, ext = os.path.splitext(os.path.basename(gt_name))
        return f"{filename_tmpl.format(stem)}{ext}"

    rule = f"(BasicSR takes the LR of each HR <name>.<ext> to be {lq_name('<name>.<ext>')})"
    if meta_info_file is not None:
        gt_names = listed_names(where, meta_info_file, str.strip)
        check_listed(where, meta_info_file, gt, gt_names)
        check_listed(where, meta_info_file, lq, [lq_name(name) for name in gt_names], f" {rule}")
        return
    try:
        gt_names, lq_names = sorted(scandir(gt)), sorted(scandir(lq))
    except OSError as err:
        raise DatasetError(f"{where}: {err}") from None
    if not gt_names and not lq_names:
        raise no_images(gt, lq, "dataroot_gt")
    wanted, have = [lq_name(name) for name in gt_names], set(lq_names)
    missing = [name for name in wanted if name not in have]
    if missing or len(gt_names) != len(lq_names):
        unpaired = [f"{len(names)} LR image(s) {kind} ({first_names(names)})" for kind, names in
                    (("missing", missing), ("without an HR", sorted(have - set(wanted)))) if names]
        raise DatasetError(f"{where}: HR folder {gt} ({len(gt_names)} images) and LR folder {lq} ({len(lq_names)}) "
                           f"do not pair: {'; '.join(unpaired) or 'another count'} {rule}")


def check_single_folder(where: str, lq: str, meta_info_file: str | None = None) -> None:
    """BasicSR's ``SingleImageDataset`` on disk reads every file of its LR folder, or the names a ``meta_info_file``
    lists: an empty folder or list made a set of no images, which test.py only found after loading the network
    ('validation set is empty'), and a listed name that is not there failed at its read. Each is one line here."""
    if meta_info_file is not None:
        check_listed(where, meta_info_file, lq, listed_names(where, meta_info_file, str.rstrip))
        return
    try:
        found = list(scandir(lq))
    except OSError as err:
        raise DatasetError(f"{where}: {err}") from None
    if not found:
        raise DatasetError(f"{lq} holds no images", "dataroot_lq")


def _close_inherited_lmdb() -> None:
    """In a forked DataLoader worker: close the parent's environments (unusable after fork) so they can be reopened."""
    for client in _LMDB_CLIENTS.values():
        for env in client.client._client.values():
            env.close()
    _LMDB_CLIENTS.clear()


os.register_at_fork(after_in_child=_close_inherited_lmdb)


def check_whole_build(options: DRealSRCameraOptions) -> None:
    """A :class:`DatasetError` naming the folder option when it points into a generated benchmark whose build did not
    finish (:func:`~ldt.data.synthetic_cameras.unfinished_build`): a build stopped midway is otherwise read as it is."""
    if options.io_backend.type != "disk":
        return
    for option in ("dataroot", "dataroot_gt", "dataroot_lq"):
        given = getattr(options, option)
        root = unfinished_build(given) if given else None
        if root is not None:
            place = f"{root} is" if Path(given) == root else f"{given} is in {root},"
            raise DatasetError(f"{place} a generated benchmark whose build did not finish (stopped "
                               f"midway, or still running: see its {MANIFEST}); build it again "
                               "(scripts/build_synthetic_cameras.py with the options it was built with; the demo and "
                               "scripts/reproduce.py rebuild theirs when run)", option)


@DATASET_REGISTRY.register()
class DRealSRCameraDataset(data.Dataset):
    """Pairs of the requested cameras from one DRealSR-style root; see the module docstring for the options."""

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__()
        try:
            options = DRealSRCameraOptions.model_validate(opt)
        except ValidationError as err:
            where = f"dataset '{opt.get('name')}'" if isinstance(opt, dict) else "dataset"
            raise DatasetError(f"{where}: " + "; ".join(describe_errors(err, DRealSRCameraOptions))) from None
        self.opt, self.options = opt, options
        self.scale = options.scale or 4
        self.split = options.split
        training_part = self.split == "train" and (options.held_out is None or options.held_out.part == "train")
        self.train = (options.phase or ("train" if training_part else "val")) == "train"  # BasicSR sets 'phase'
        self.gt_size = options.crop_size(self.scale)
        if self.train and self.gt_size % self.scale:
            raise DatasetError(f"gt_size {self.gt_size} is not a multiple of scale {self.scale}")
        self.size_tolerance = tolerance_px(self.scale, options.size_tolerance)
        check_whole_build(options)
        pair_set = collect_pairs(
            split=self.split,
            cameras=options.cameras,
            scale=self.scale,
            dataroot=options.dataroot,
            dataroot_gt=options.dataroot_gt,
            dataroot_lq=options.dataroot_lq,
            backend=options.io_backend.type,
            strict=options.strict,
            check_sizes=options.check_sizes,
            size_tolerance=self.size_tolerance,
            gt_size=self.gt_size if self.train else 0,
            held_out=options.held_out.to_dict() if options.held_out else None,
            meta_info_file=options.meta_info_file,
        )
        self.pairs = pair_set.pairs
        self.cameras = tuple(sorted({pair.camera for pair in self.pairs}))
        self.databases = pair_set.databases
        for label, dbs in self.databases.items():
            for db, side in zip(dbs, ("hr", "lr")):
                check_lmdb_keys(db, [getattr(pair, side) for pair in self.pairs if pair.db == label])
        self.file_client = None  # opened lazily: each DataLoader worker gets its own handles

    def _read(self, pair: ImagePair, side: int) -> tuple[np.ndarray, int]:
        """(HR (side 0) or LR (side 1) of ``pair`` as float32 BGR, its EXIF orientation); errors name the file
        (and its LMDB)."""
        location = (pair.hr, pair.lr)[side]
        if not pair.db:
            if self.file_client is None:
                self.file_client = FileClient("disk")
            content, name = self.file_client.get(location), location
        else:
            db = self.databases[pair.db][side]
            content, name = _lmdb_client(db).get(location, "default"), f"{location} in {db}"
        image = decode_image(content, name)
        return image, orientation(content)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        (img_gt, hr_turn), (img_lq, lr_turn) = self._read(pair, 0), self._read(pair, 1)
        where = f"{pair.hr} / {pair.lr}" + (f" in {self.databases[pair.db][0]}" if pair.db else "")
        check_orientation(hr_turn, lr_turn, where)
        img_gt = crop_gt_to_lq(img_gt, img_lq, self.scale, self.size_tolerance, where)
        if self.train:
            check_lr_patch(pair.lr, img_lq.shape, self.gt_size, self.scale)
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.gt_size, self.scale, pair.hr)
            img_gt, img_lq = augment([img_gt, img_lq], self.options.use_hflip, self.options.use_rot)
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        return {"lq": img_lq, "gt": img_gt, "lq_path": pair.lr, "gt_path": pair.hr, "camera": pair.camera}

    def __len__(self) -> int:
        return len(self.pairs)
