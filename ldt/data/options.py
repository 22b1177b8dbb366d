"""Option schemas of the dataset blocks (``datasets:<phase>:``), one per dataset type; unknown keys are errors.

The loader keys BasicSR reads (batch size, workers, enlarge ratio, prefetching) are shared by every type
(:class:`DatasetOptions`); each dataset adds its own. The datasets read their options through these classes, so
every default is written here and nowhere else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ldt.core.config import NonNegativeInt, Options, PathText, PositiveInt, Real, runtime

LR_PATCH = 48
"""The official LR training patch: a DRealSRCameraDataset without ``gt_size`` crops ``LR_PATCH`` x scale HR pixels."""
# Upper bounds far above any real run, checked with the options so that a typo (1e30) is one line naming the option
# instead of an overflow, a hang or a message about the data.
MAX_BATCH = 2**16
"""Pairs per batch per GPU: far more than any set of real photo pairs holds, let alone a GPU."""
MAX_WORKERS = 256
"""DataLoader worker processes per GPU process: each is started at once, so 1e30 forked until the machine froze."""
MAX_ENLARGE = 10_000
"""dataset_enlarge_ratio: BasicSR's sampler draws len(set) x ratio indices at once every epoch."""
MAX_CROP = 2**14
"""HR training crop side: wider than any camera's photo (the largest are under 10,000 pixels)."""


def one_folder(dataset: str, value):
    """BasicSR's ``dataset`` reads one folder per role; official files write it as a one-element list."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"{dataset} reads one folder, got {len(value)}: {value}")
        return value[0]
    return value


class IOBackend(Options):
    type: Literal["disk", "lmdb"] = Field("disk", description="read images from files or from LMDBs")


class DatasetOptions(Options):
    """What every dataset block has: its name and type, and BasicSR's loader settings."""

    name: str = Field(description="name of the set (validation sets: the camera / column name in logs and tables)")
    type: str = Field(description="registered dataset class")
    phase: Literal["train", "val", "test"] | None = runtime("set by the pipeline from the block's key")
    scale: PositiveInt | None = runtime("set by the pipeline from the top-level scale")
    batch_size_per_gpu: PositiveInt | None = Field(None, le=MAX_BATCH,
                                                   description="training batch per process (train set: required)")
    num_worker_per_gpu: NonNegativeInt = Field(0, le=MAX_WORKERS, description="DataLoader workers per process")
    dataset_enlarge_ratio: PositiveInt = Field(1, le=MAX_ENLARGE, description="repeat the set this many times per epoch")
    prefetch_mode: Literal["cpu", "cuda"] | None = Field(None, description="BasicSR's prefetcher (train set)")
    pin_memory: bool = Field(False, description="DataLoader pin_memory")
    persistent_workers: bool = Field(False, description="DataLoader persistent_workers")
    use_shuffle: bool = Field(True, description="shuffle the training set (BasicSR's key; the sampler shuffles)")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str) -> str:
        """test.py saves a set's images in ``results/<run>/visualization/<set name>/``: a name such as '../..' wrote
        them outside the results folder."""
        if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError(f"must be a plain folder name, not empty and without '/' or '\\' (test.py saves the "
                             f"set's images in a folder of that name), got {value!r}")
        return value


class HeldOutOptions(Options):
    fraction: Real = Field(gt=0, lt=1, description="fraction of each camera's photos held out")
    seed: NonNegativeInt = Field(0, description="which photos are held out (numpy takes non-negative seeds)")
    part: Literal["train", "holdout"] = Field("train", description="which side of the split this set reads")


class DRealSRCameraOptions(DatasetOptions):
    """``DRealSRCameraDataset``: DRealSR-style LR/HR pairs (real DRealSR or the synthetic cameras) of chosen cameras."""

    type: Literal["DRealSRCameraDataset"] = Field(description="this dataset")
    dataroot: PathText | None = Field(None, description="searched for the split folders (LMDB: the --lmdb output "
                                                        "folder)")
    dataroot_gt: PathText | None = Field(None, description="explicit HR folder or LMDB (with dataroot_lq)")
    dataroot_lq: PathText | None = Field(None, description="explicit LR folder or LMDB (with dataroot_gt)")
    split: Literal["train", "test"] = Field("train", description="DRealSR split")
    cameras: list[str] = Field(description="camera keys or aliases, e.g. [olympus]; required, so a typo can never "
                                           "mean 'every camera'")
    gt_size: PositiveInt | None = Field(None, le=MAX_CROP, description=f"HR training crop (null: {LR_PATCH} x scale, "
                                                                       f"LR patch {LR_PATCH})")
    use_hflip: bool = Field(True, description="random horizontal flips (train phase)")
    use_rot: bool = Field(True, description="random 90-degree rotations and vertical flips (train phase)")
    io_backend: IOBackend = Field(default_factory=IOBackend)
    held_out: HeldOutOptions | None = Field(None, description="carve whole photos out per camera (validation)")
    strict: bool = Field(True, description="unpaired or misnamed files of the selected cameras are errors")
    check_sizes: bool = Field(True, description="read every image header before training (corrupt files, wrong "
                                                "scales); false skips it")
    size_tolerance: NonNegativeInt | None = Field(None, description="HR may exceed LR x scale by this many px "
                                                                    "(null: 4 x scale); cropped at read time")
    meta_info_file: PathText | list[PathText] | None = Field(None, description="restrict to the HR names listed")

    def crop_size(self, scale: int) -> int:
        """The HR training crop at ``scale``."""
        return self.gt_size or LR_PATCH * scale

    @field_validator("cameras", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("meta_info_file", mode="before")
    @classmethod
    def _some_files(cls, value):
        """``[]`` read as 'no list', so it restricted nothing, then failed on the pairs found."""
        if value == []:
            raise ValueError("an empty list names no file: give at least one, or leave meta_info_file out")
        return value

    @field_validator("cameras")
    @classmethod
    def _known_cameras(cls, value: list[str]) -> list[str]:
        from ldt.data.cameras import resolve_cameras

        resolve_cameras(value)  # raises DatasetError (a ValueError) naming the unknown camera
        return value

    @model_validator(mode="after")
    def _roots(self) -> "DRealSRCameraOptions":
        if (self.dataroot_gt is None) != (self.dataroot_lq is None):
            raise ValueError("set both dataroot_gt and dataroot_lq, or neither (then dataroot is searched)")
        if self.dataroot is None and self.dataroot_gt is None:
            raise ValueError("dataroot (or dataroot_gt and dataroot_lq) is required")
        return self


class PairedImageOptions(DatasetOptions):
    """BasicSR's ``PairedImageDataset`` (the official MambaIR / HAT training files use it)."""

    type: Literal["PairedImageDataset"] = Field(description="this dataset")
    dataroot_gt: PathText = Field(description="HR folder (or LMDB); a one-element list, as official files write it, "
                                              "too")
    dataroot_lq: PathText = Field(description="LR folder (or LMDB); a one-element list too")
    meta_info_file: PathText | None = Field(None, description="pairs listed in a meta-info file")
    filename_tmpl: str = Field("{}", description="LR name from the HR name, e.g. '{}x4'")
    io_backend: IOBackend = Field(default_factory=IOBackend)
    gt_size: PositiveInt | None = Field(None, le=MAX_CROP, description="HR training crop (train phase: required)")
    use_hflip: bool = Field(True, description="random horizontal flips")
    use_rot: bool = Field(True, description="random rotations")
    task: str | None = Field(None, description="accepted from the official MambaIR files; unused")
    mean: list[Real] | None = Field(None, description="normalisation mean")
    std: list[Real] | None = Field(None, description="normalisation std")

    def crop_size(self, scale: int) -> int | None:
        """The HR training crop (required for a training set: None is reported on its own)."""
        return self.gt_size

    @field_validator("dataroot_gt", "dataroot_lq", mode="before")
    @classmethod
    def _one_folder(cls, value):
        return one_folder("PairedImageDataset", value)

    @field_validator("filename_tmpl")
    @classmethod
    def _one_field(cls, value: str) -> str:
        """BasicSR fills the template with the HR name's stem for each pair: one it cannot fill was a traceback."""
        try:
            value.format("name")
        except (IndexError, KeyError, ValueError, AttributeError, TypeError) as err:
            raise ValueError(f"{value!r} is not a template of one '{{}}' field for the HR name's stem "
                             f"({err})") from None
        return value


class SingleImageOptions(DatasetOptions):
    """BasicSR's ``SingleImageDataset``: LR images only (no GT), for ``test.py`` sets that are super-resolved and
    saved, not scored."""

    type: Literal["SingleImageDataset"] = Field(description="this dataset")
    dataroot_lq: PathText = Field(description="LR folder (or LMDB); a one-element list too")
    meta_info_file: PathText | None = Field(None, description="images listed in a meta-info file")
    io_backend: IOBackend = Field(default_factory=IOBackend)
    mean: list[Real] | None = Field(None, description="normalisation mean")
    std: list[Real] | None = Field(None, description="normalisation std")

    @field_validator("dataroot_lq", mode="before")
    @classmethod
    def _one_folder(cls, value):
        return one_folder("SingleImageDataset", value)
