"""Crash-safe writes: write a temporary file in the target's folder, then rename it over the target.

A process killed mid-write leaves the previous file intact (checkpoints, partitions, best scores, cached weights).
Plain torch and the standard library, so the core and the classification side can use it without BasicSR.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` without ever leaving a half-written file."""
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (e.g. JSON) without ever leaving a half-written file."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
