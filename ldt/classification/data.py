"""Multi-domain image data in the DomainBed folder layout ``root/<domain>/<class>/<image>``.

Every training domain is split, seeded, into a training part and a held-out part; the held-out parts are the only
data model selection may see (*training-domain validation*). Test domains are read whole and only once, after
selection. Batches of training steps draw ``batch_size`` images from each training domain, as DomainBed does; every
image's order and augmentation are seeded by (run seed, domain, pass, index) (:mod:`ldt.runner`), so batches are the
same with and without loader processes.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ldt.atomic import in_the_way
from ldt.cli import cannot_decode
from ldt.runner import domain_batches, sample_seed, seeded_loader

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

Sample = tuple[str, int]


class DatasetError(ValueError):
    """The dataset folder cannot be used as asked (missing root, empty domain, unknown test domain, ...)."""


@dataclass
class DomainDataset:
    """The images of every domain, with one class index space shared by all domains (sorted class names)."""

    root: Path
    domains: list[str]
    classes: list[str]
    samples: dict[str, list[Sample]]

    @property
    def name(self) -> str:
        return self.root.name

    def check_test_domains(self, test_domains: Sequence[str]) -> None:
        """Raise unless ``test_domains`` are distinct domains of the dataset and leave one to train on."""
        problem = test_domains_problem(test_domains, self.domains, self.root)
        if problem:
            raise DatasetError(f"test domains: {problem}")

    def train_domains(self, test_domains: Sequence[str]) -> list[str]:
        return [d for d in self.domains if d not in test_domains]


def test_domains_problem(test_domains: Sequence[str], domains: Sequence[str], root: Path) -> str | None:
    """Why ``test_domains`` cannot be left out of ``root``'s ``domains`` (one unknown, repeated, or none left to
    train on), or None; shared by the sweep's start-up check (on the folder listing alone) and every run."""
    unknown = [d for d in test_domains if d not in domains]
    if unknown:
        names = ", ".join(map(repr, unknown))
        return f"{names} {'is not a domain' if len(unknown) == 1 else 'are not domains'} of {root} (domains: " \
               f"{', '.join(sorted(domains))})"
    ambiguous = ambiguous_group("+".join(test_domains), domains, root)  # the group's table column is the joined name
    if ambiguous:
        return ambiguous
    if not test_domains or len(set(test_domains)) != len(test_domains):
        return f"must be a non-empty list of distinct domains, got {'+'.join(test_domains)}"
    if len(test_domains) >= len(domains):
        return f"{'+'.join(test_domains)} leaves no training domain in {root}"
    return None


def group_readings(pieces: list[str], domains: Sequence[str]) -> list[tuple[str, ...]]:
    """Every way of joining consecutive ``+``-separated ``pieces`` back into names of ``domains`` (a domain folder
    may itself be named ``art+paint``)."""
    readings = []
    for end in range(1, len(pieces) + 1):
        name = "+".join(pieces[:end])
        if name in domains:
            readings += [(name, *rest) for rest in (group_readings(pieces[end:], domains) if end < len(pieces) else [()])]
    return readings


def ambiguous_group(entry: str, domains: Sequence[str], root: object) -> str | None:
    """Why ``entry`` (test domains joined by ``+``, as a ``--test-domains`` entry and a table column name them) reads
    in two ways as ``domains`` (the folder ``art+paint`` and the group ``art`` + ``paint``), naming the folder, or
    None: two such runs would share one table column."""
    readings = group_readings(entry.split("+"), domains)
    if len(readings) < 2:
        return None
    folder = next(name for reading in readings for name in reading
                  if "+" in name and any(name not in other for other in readings))
    others = next(reading for reading in readings if folder not in reading)
    return (f"{entry!r} names both the domain folder {folder} of {root} and the group {' + '.join(others)}: rename "
            f"the folder {folder}")


def folder_entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; a broken symlink among them (its target gone, or a loop; hidden ones aside)
    is a :class:`DatasetError` naming it. Why: ``is_dir()`` / ``is_file()`` take one for nothing, so the domain, class
    or image behind it (a dataset of links to a drive not mounted) was left out without a word."""
    entries = sorted(folder.iterdir())
    for entry in entries:
        broken = None if entry.name.startswith(".") or entry.exists() else in_the_way(entry)
        if broken:
            raise DatasetError(f"{broken}: fix or remove it (the data folder's entries must be readable)")
    return entries


def domain_folders(root: Path) -> list[Path]:
    """The domain folders of ``root`` (sorted; hidden ones skipped), at least two: a folder listing, no image read,
    so the left-out domains can be checked before anything else."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.is_file() else "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"dataset root {root} {what}")
    found = [p for p in folder_entries(root) if p.is_dir() and not p.name.startswith(".")]
    for folder in found:
        try:
            folder.name.encode()
        except UnicodeEncodeError:  # a name from another system's encoding: os.listdir keeps its bytes as surrogates
            raise DatasetError(f"domain folder {folder.name!r} of {root} is not named in UTF-8 (a domain's name is "
                               "written into the records and tables): rename it") from None
    if len(found) < 2:
        raise DatasetError(f"{root} needs at least two domain folders (root/<domain>/<class>/<image>), found {len(found)}")
    return found


def check_class_sets(files: dict[str, dict[str, list[str]]]) -> list[str]:
    """The classes (sorted), when every domain has images of every one; otherwise a :class:`DatasetError` naming a
    domain and the class it lacks (a union of class lists would train on labels some domains never show, and test
    a domain on classes it lacks, without a word)."""
    present = {domain: {c for c, paths in per_class.items() if paths} for domain, per_class in files.items()}
    classes = sorted(set().union(*present.values()))
    for domain, found in present.items():
        missing = [c for c in classes if c not in found]
        if missing:
            elsewhere = next(d for d, other in present.items() if missing[0] in other)
            more = f", nor of {len(missing) - 1} other class(es)" if len(missing) > 1 else ""
            raise DatasetError(f"domain '{domain}' has no images of class '{missing[0]}' (domain '{elsewhere}' "
                               f"has){more}: every domain needs every class")
    return classes


def check_image_files(paths: Sequence[str], listed: int = 3) -> None:
    """Read every image's header and end marker (no decoding; :func:`ldt.data.cameras.image_size`), so a truncated
    or non-image file is one error naming it before training, not a traceback in the middle of a run."""
    from ldt.data.cameras import DatasetError as ImageError, image_size  # imported here: it loads the SR side

    broken = []
    for path in paths:
        try:
            image_size(path)
        except ImageError as err:
            broken.append(str(err))
    if broken:
        more = f" (and {len(broken) - listed} more)" if len(broken) > listed else ""
        raise DatasetError(f"{len(broken)} unreadable image file(s): {'; '.join(broken[:listed])}{more}")


def skipped_entries(domain_entries: Sequence[Path], class_entries: Sequence[Sequence[Path]]) -> tuple[list[Path], list[Path]]:
    """(folders, files) among a domain folder's entries and its class folders' that :func:`scan_domains` does not
    read: folders inside a class folder, and files beside the class folders or that are no image (hidden ones, such
    as .DS_Store, are not counted)."""
    folders, files = [], []
    for entry in domain_entries:
        if not entry.name.startswith(".") and not entry.is_dir():
            files.append(entry)
    for entries in class_entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry)
            elif not (entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES):
                files.append(entry)
    return folders, files


def say_skipped(domain: str, root: Path, folders: Sequence[Path], files: Sequence[Path]) -> None:
    """One warning line for a domain of which ``folders`` and ``files`` are not read (counts, one example of each):
    a dataset one level too deep, or with foreign files, has fewer images than its user thinks."""
    parts = []
    if folders:
        parts.append(f"{len(folders)} folder{'s' if len(folders) > 1 else ''} skipped (folders inside a class folder "
                     f"are not read: one level too deep?), e.g. {folders[0]}")
    if files:
        parts.append(f"{len(files)} file{'s' if len(files) > 1 else ''} skipped (not in a class folder, or not an "
                     f"image of {', '.join(sorted(IMAGE_SUFFIXES))}), e.g. {files[0]}")
    if parts:
        warnings.warn(f"domain '{domain}' of {root}: {'; '.join(parts)}", stacklevel=3)


def scan_domains(root: str | Path, check_files: bool = True) -> DomainDataset:
    """Index ``root/<domain>/<class>/<image>``; errors name the missing root, the domain without images or a class,
    and (``check_files``) every unreadable image file, and a warning line per domain names what it skips (folders
    one level too deep, files that are no image). ``check_files`` False (a caller that checked already) says no
    warning again."""
    root = Path(root)
    files: dict[str, dict[str, list[str]]] = {}
    for domain_dir in domain_folders(root):
        domain_entries = folder_entries(domain_dir)
        class_entries = {class_dir.name: folder_entries(class_dir) for class_dir in domain_entries
                         if class_dir.is_dir() and not class_dir.name.startswith(".")}
        per_class = {name: [str(f) for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
                     for name, entries in class_entries.items()}
        if not per_class:
            raise DatasetError(f"domain '{domain_dir.name}' has no class folders: expected {domain_dir}/<class>/<image>")
        skipped_folders, skipped_files = skipped_entries(domain_entries, list(class_entries.values()))
        if not any(per_class.values()):
            if skipped_folders:
                raise DatasetError(f"domain '{domain_dir.name}' has no images: its images are one folder level too "
                                   f"deep (e.g. {skipped_folders[0]}); expected {domain_dir}/<class>/<image>")
            raise DatasetError(
                f"domain '{domain_dir.name}' has no images: expected {domain_dir}/<class>/<image> with one of "
                f"{sorted(IMAGE_SUFFIXES)}"
            )
        if check_files:
            say_skipped(domain_dir.name, root, skipped_folders, skipped_files)
        files[domain_dir.name] = per_class
    classes = check_class_sets(files)
    if len(classes) < 2:  # a zero loss and 100 % accuracy from the first step: a table that says nothing
        raise DatasetError(f"{root}: every domain holds images of one class only ({classes[0]!r}): classification "
                           "needs at least two class folders")
    if check_files:
        check_image_files([path for per_class in files.values() for paths in per_class.values() for path in paths])
    index = {c: i for i, c in enumerate(classes)}
    samples = {
        domain: [(path, index[c]) for c, paths in per_class.items() for path in paths] for domain, per_class in files.items()
    }
    return DomainDataset(root=root, domains=list(files), classes=classes, samples=samples)


def split_holdout(samples: list[Sample], fraction: float, seed: int, domain: str) -> tuple[list[Sample], list[Sample]]:
    """Seeded (train, held-out) split of one domain; the seed mixes in the domain name, not its position."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"holdout fraction must be in (0, 1), got {fraction}")
    count = len(samples)
    held = max(1, int(count * fraction))
    if held >= count:
        raise DatasetError(f"domain '{domain}' has {count} image(s): too few to hold out {fraction:.0%} for selection")
    order = np.random.default_rng([seed, zlib.crc32(domain.encode())]).permutation(count)
    return [samples[i] for i in order[held:]], [samples[i] for i in order[:held]]


def load_image(path: str) -> Image.Image:
    """The RGB image in ``path``; a file that cannot be decoded is a :class:`DatasetError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
        raise DatasetError(cannot_decode("image", path, err)) from None


class ImageList(Dataset):
    """(image, label) pairs read from disk on demand.

    With a ``seed`` (training) index ``k`` may run past ``len``: it is sample ``k % len``, transformed while torch's
    random numbers are seeded by (``seed``, ``k``) (:func:`ldt.runner.sample_seed`) and then put back as they were,
    so each pass of :class:`ldt.runner.TrainingSampler` draws fresh augmentations that depend on neither the process
    that loads the image nor the random numbers training draws. Without one (evaluation) indices stay in range.
    """

    def __init__(self, samples: Sequence[tuple], transform, seed: int | None = None) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, item) -> Image.Image:
        """The image a sample names."""
        return load_image(item)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.seed is None:
            item, label = self.samples[index]
            return self.transform(self.load(item)), label
        item, label = self.samples[index % len(self.samples)]
        image = self.load(item)
        # torchvision's random transforms draw from the default CPU generator: seeded here, restored after (CUDA's
        # generators are neither read nor touched: torch.manual_seed would reseed them).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, index))
            return self.transform(image), label


def image_transform(size: int, augment: bool) -> transforms.Compose:
    """DomainBed-style augmentation for training (crop, flip, colour jitter, grayscale); a plain resize otherwise."""
    if augment:
        steps = [
            transforms.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
        ]
    else:
        steps = [transforms.Resize((size, size), antialias=True)]
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def training_stream(parts: Sequence[ImageList], batch_size: int, *, device: torch.device = torch.device("cpu"),
                    workers: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches on ``device``: ``batch_size`` images of every training domain (each part seeded by its
    domain, :func:`ldt.runner.domain_seed`), concatenated; ``start`` batches in (a resumed run's stream: the same
    images and augmentations, whatever the number of workers)."""
    return domain_batches([seeded_loader(part, batch_size, part.seed, workers=workers, pin_memory=device.type == "cuda",
                                         start=start) for part in parts], device)


def eval_loader(samples: list[Sample], size: int, batch_size: int, workers: int = 0) -> DataLoader:
    """Ordered batches of un-augmented images."""
    dataset = ImageList(samples, image_transform(size, augment=False))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
