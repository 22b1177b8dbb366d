"""Data loaders of an SR run: the resumable training loader, the seeded warm-up / probe loaders, validation loaders."""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist

from ldt.compat import patch_basicsr

patch_basicsr()
import ldt.data  # noqa: E402,F401  (registers the datasets)
from ldt.data.cameras import DatasetError, PairingError  # noqa: E402
from basicsr.data import build_dataloader, build_dataset, worker_init_fn  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from ldt.data.drealsr_dataset import (  # noqa: E402
    SharedLmdbFiles, check_paired_folders, check_paired_lmdb, check_single_folder, check_single_lmdb)


def world(opt: dict | None = None) -> tuple[int, int]:
    """(world size, rank) of the initialised process group, else ``opt``'s ``world_size`` / ``rank`` (set by
    ``ldt.sr.basicsr_pipeline`` from the launcher's variables: its start-up checks run before BasicSR makes the
    group, and must split the data as the run will), else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    opt = opt or {}
    return opt.get("world_size") or 1, opt.get("rank") or 0


SEED_STRIDE = 1_000_003  # epochs of different run seeds never share a shuffle (for fewer than a million epochs)


class ResumableSampler(EnlargedSampler):
    """BasicSR's epoch-seeded sampler that can start an epoch part-way (to resume at the exact sample).

    BasicSR shuffles by the epoch alone, so every ``manual_seed`` sees the same data order; here the run's seed
    offsets the shuffle, so seeds differ in data order too (seed 0 keeps BasicSR's order).
    """

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip, self.seed = 0, seed

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch + self.seed * SEED_STRIDE)

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def dataset(opt: dict, key: str, phase: str | None = None):
    """The dataset of ``datasets:<key>`` (its block already carries phase and scale from the option schema); a
    ``PairedImageDataset`` is checked first (:func:`check_paired_folders`, :func:`check_paired_lmdb`; an LR-only
    ``SingleImageDataset``: :func:`check_single_folder`, :func:`check_single_lmdb`), and on LMDBs
    reads through the process's shared environments (:class:`SharedLmdbFiles`); on disk its first read pops
    ``type`` from a copy of its ``io_backend``, not from its ``opt``, which the scale checks read at any time. A
    dataset option at fault (no split folder below ``dataroot``, folders that hold no images) is named with its
    block, as the option checks name theirs: ``datasets:val_1:dataroot: no test split ...`` (several sets share one
    root); files of a DRealSRCameraDataset that do not pair (:class:`~ldt.data.cameras.PairingError`) with the set,
    as a PairedImageDataset's are: ``datasets:val_1 (pan): ...``."""
    block = opt["datasets"][key]
    paired, where = block["type"] == "PairedImageDataset", f"datasets:{key} ({block['name']})"
    single = block["type"] == "SingleImageDataset"
    on_lmdb = (paired or single) and block["io_backend"]["type"] == "lmdb"
    try:
        if on_lmdb and paired:
            check_paired_lmdb(where, block["dataroot_gt"], block["dataroot_lq"])
        elif on_lmdb:
            check_single_lmdb(where, block["dataroot_lq"])
        elif paired:
            check_paired_folders(where, block["dataroot_gt"], block["dataroot_lq"], block.get("filename_tmpl", "{}"),
                                 block.get("meta_info_file"))
        elif single:
            check_single_folder(where, block["dataroot_lq"], block.get("meta_info_file"))
        built = {**block, "phase": phase or block["phase"]}
        if single:  # it adds its LMDB's keys to, and pops 'type' from, the io_backend it is given, and opens a
            built["io_backend"] = dict(block["io_backend"])  # meta_info_file whenever the key is there (None too)
            if built.get("meta_info_file") is None:
                built.pop("meta_info_file", None)
        data = build_dataset(built)
    except DatasetError as err:
        if err.option is not None:
            raise DatasetError(f"datasets:{key}:{err.option}: {err}") from None
        if isinstance(err, PairingError):
            raise DatasetError(f"{where}: {err}") from None
        raise
    if on_lmdb:
        data.file_client = SharedLmdbFiles(lq=block["dataroot_lq"], **({"gt": block["dataroot_gt"]} if paired else {}))
    elif paired:
        data.io_backend_opt = dict(data.io_backend_opt)
    return data


def training_loader(opt: dict) -> tuple[torch.utils.data.DataLoader, ResumableSampler]:
    """The training loader: shuffled by epoch, split across ranks, resumable mid-epoch."""
    block = opt["datasets"]["train"]
    train_set = dataset(opt, "train")
    size, rank = world(opt)
    sampler = ResumableSampler(train_set, size, rank, block["dataset_enlarge_ratio"], seed=opt["manual_seed"])
    workers = block["num_worker_per_gpu"]
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=block["batch_size_per_gpu"],
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=block["pin_memory"],
        worker_init_fn=partial(worker_init_fn, num_workers=workers, rank=rank, seed=opt["manual_seed"]),
        # A private generator: creating a loader iterator must not consume the global RNG (stochastic depth uses
        # it), or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(opt["manual_seed"]),
    )
    return loader, sampler


def seeded_loader(opt: dict, key: str, batch_size: int | None, seed: int,
                  data: torch.utils.data.Dataset | None = None) -> torch.utils.data.DataLoader:
    """A shuffled loader over ``datasets:<key>`` in an order fixed by ``seed`` (warm-up and probe batches);
    ``data``: that set already built (its pairs are then not found and checked again)."""
    block = opt["datasets"][key]
    data = data if data is not None else dataset(opt, key, phase="train")
    size, rank = world(opt)
    sampler = EnlargedSampler(data, size, rank, ratio=block["dataset_enlarge_ratio"])
    sampler.set_epoch(seed)
    return torch.utils.data.DataLoader(data, batch_size=batch_size or block["batch_size_per_gpu"], sampler=sampler,
                                       num_workers=block["num_worker_per_gpu"], drop_last=True)


def file_order_batches(length: int, batch_size: int, world: int = 1, rank: int = 0) -> list[list[int]]:
    """This rank's batches of a dataset read in file order: consecutive indices cut into batches of ``batch_size``
    (the last one may be shorter, as a plain unshuffled DataLoader's), batch ``b`` going to rank ``b mod world``.

    The ranks' first ``probe_share`` batches (:func:`ldt.core.methods.probe_share`) are then together exactly the
    first ``num_batches`` batches: N ranks probe the patches one process would."""
    starts = range(rank * batch_size, length, world * batch_size)
    return [list(range(start, min(start + batch_size, length))) for start in starts]


def probe_loader(opt: dict, seed: int, data: torch.utils.data.Dataset | None = None) -> torch.utils.data.DataLoader:
    """The probe's batches of ``datasets:<ldt:probe:dataset>`` (random crops and flips as in training), in the order
    ``ldt:probe:order`` names: ``shuffled`` by ``seed`` (:func:`seeded_loader`), or ``file``: the pairs in the
    dataset's order from the first, no enlargement, the seed unused (the official probe's unshuffled loader).
    ``data``: that set already built."""
    probe = opt["ldt"]["probe"]
    key, batch_size = probe["dataset"], probe["batch_size"]
    if probe["order"] == "shuffled":
        return seeded_loader(opt, key, batch_size, seed, data)
    data = data if data is not None else dataset(opt, key, phase="train")
    size, rank = world(opt)
    return torch.utils.data.DataLoader(data, batch_sampler=file_order_batches(len(data), batch_size, size, rank),
                                       num_workers=opt["datasets"][key]["num_worker_per_gpu"])


def probe_batches_per_pass(opt: dict, pairs: int, world_size: int = 1) -> int:
    """The batches :func:`probe_loader` makes from ``pairs`` pairs of the probe's dataset, in all over
    ``world_size`` ranks: the probe ends there, whatever ``ldt:probe:num_batches`` asks (the model then asks the
    core for no more, :meth:`ldt.models.ldt_model.LDTModel.probe_config`). Each rank's share of that total
    (:func:`ldt.core.methods.probe_share`) is exactly the batches of its own loader."""
    probe = opt["ldt"]["probe"]
    if probe["order"] == "file":
        return len(file_order_batches(pairs, probe["batch_size"]))
    ratio = opt["datasets"][probe["dataset"]]["dataset_enlarge_ratio"]
    per_rank = -(-pairs * ratio // world_size)  # BasicSR's EnlargedSampler: ceil(pairs x ratio / ranks) each
    return world_size * (per_rank // probe["batch_size"])


def validation_loaders(opt: dict) -> dict[str, torch.utils.data.DataLoader]:
    """One batch-1 loader per ``val_*`` / ``test_*`` set, by the set's name."""
    loaders = {}
    for key, block in opt["datasets"].items():
        if block["phase"] in ("val", "test"):
            data = dataset(opt, key, phase="val")
            loaders[block["name"]] = build_dataloader(data, {**block, "phase": "val"}, num_gpu=opt["num_gpu"], dist=False)
    return loaders
