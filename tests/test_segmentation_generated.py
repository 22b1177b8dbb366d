"""The generated street dataset: byte-identical rebuilds, cached, readable as Cityscapes, domains that differ in
appearance but share their labels, and a pre-training split with its own scenes."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldt.segmentation.classes import TRAIN_ID
from ldt.segmentation.data import SegmentationDataset, scan_split
from ldt.segmentation.generated import (
    DOMAINS, MANIFEST, PRETRAIN_DOMAIN, SCENE_CLASSES, GeneratedConfig, build_generated, domain_root,
)

TINY = GeneratedConfig(height=32, width=64, train_per_domain=4, val_per_domain=2, pretrain_train=3, pretrain_val=1)


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_generated(tmp_path_factory.mktemp("gen") / "streets", TINY)


def test_rebuild_is_byte_identical_and_cached(built, tmp_path):
    hashes = file_hashes(built)
    assert len(hashes) == 1 + 2 * (len(DOMAINS) * 6 + 4)  # manifest + image and label per file
    again = build_generated(tmp_path / "again", TINY)
    assert file_hashes(again) == hashes
    stamp = (again / MANIFEST).stat().st_mtime_ns
    build_generated(again, TINY)  # same settings: nothing is rewritten
    assert (again / MANIFEST).stat().st_mtime_ns == stamp
    other = build_generated(again, dataclasses.replace(TINY, seed=1))  # other settings: rebuilt
    assert file_hashes(other) != hashes


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a generated street dataset"):
        build_generated(tmp_path / "mine", TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_every_domain_loads_with_the_cityscapes_reader(built):
    for domain in DOMAINS + (PRETRAIN_DOMAIN,):
        counts = (TINY.pretrain_train, TINY.pretrain_val) if domain == PRETRAIN_DOMAIN else (4, 2)
        for split, count in zip(("train", "val"), counts):
            loaded = scan_split(domain_root(built, domain), "cityscapes", split, verify=True)
            assert len(loaded.samples) == count and all(s.size == (32, 64) for s in loaded.samples)
        image, label = SegmentationDataset(loaded)[0]
        assert image.shape == (3, 32, 64) and label.shape == (32, 64)


def domain_pixels(root: Path, domain: str) -> np.ndarray:
    split = scan_split(domain_root(root, domain), "cityscapes", "train")
    return np.stack([np.asarray(Image.open(s.image), np.float64) / 255 for s in split.samples])


def test_domains_share_labels_but_look_different(built):
    labels = {d: [p.read_bytes() for p in sorted((domain_root(built, d) / "gtFine").rglob("*.png"))] for d in DOMAINS}
    assert all(labels[d] == labels[DOMAINS[0]] for d in DOMAINS)  # the same scenes in every domain
    features = {}
    for domain in DOMAINS:
        pixels = domain_pixels(built, domain)
        sharpness = np.abs(np.diff(pixels, axis=2)).mean()  # mean horizontal gradient: blur and noise move it
        features[domain] = np.concatenate([pixels.mean(axis=(0, 1, 2)), [pixels.std(), sharpness]])
    for a, b in itertools.combinations(DOMAINS, 2):
        assert np.abs(features[a] - features[b]).max() > 0.015, (a, b, features[a], features[b])
    assert features["blur"][4] < 0.7 * features["clean"][4]  # blur loses edges
    assert features["night"][:3].mean() < 0.5 * features["clean"][:3].mean()  # night is dark
    assert features["cast"][0] - features["cast"][2] > features["clean"][0] - features["clean"][2] + 0.1  # warm


def test_scenes_cover_the_street_classes_and_pretraining_has_its_own(built):
    present = set()
    for split in ("train", "val"):
        for sample in scan_split(domain_root(built, "clean"), "cityscapes", split).samples:
            present |= set(np.unique(np.asarray(Image.open(sample.label))).tolist())
    required = {"road", "sidewalk", "building", "pole", "vegetation", "sky", "car"}
    assert {TRAIN_ID[c] for c in required} <= present <= {TRAIN_ID[c] for c in SCENE_CLASSES} | {255}
    downstream = {p.read_bytes() for p in (domain_root(built, "clean") / "gtFine").rglob("*.png")}
    assert not downstream & {p.read_bytes() for p in (domain_root(built, PRETRAIN_DOMAIN) / "gtFine").rglob("*.png")}


def test_larger_build_draws_every_scene_class(tmp_path):
    """Over 30 default-sized scenes every one of the 13 scene classes appears."""
    config = GeneratedConfig(train_per_domain=30, val_per_domain=1, pretrain_train=1, pretrain_val=1, domains=("clean",))
    root = build_generated(tmp_path / "g", config)
    counts = torch.zeros(256, dtype=torch.long)
    for sample in scan_split(domain_root(root, "clean"), "cityscapes", "train").samples:
        counts += torch.bincount(torch.from_numpy(np.array(Image.open(sample.label))).flatten().long(), minlength=256)
    assert {i for i in range(256) if counts[i] > 0} - {255} == {TRAIN_ID[c] for c in SCENE_CLASSES}
