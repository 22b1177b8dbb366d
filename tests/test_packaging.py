"""The package's metadata, as pip builds it: setuptools must neither warn about nor refuse pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD_METADATA = """
import pathlib, sys, tempfile, warnings
warnings.simplefilter("always")
import setuptools.build_meta as backend
out = tempfile.mkdtemp()
name = backend.prepare_metadata_for_build_wheel(out)
sys.stdout.write(pathlib.Path(out, name, "METADATA").read_text())
"""


def test_metadata_builds_without_deprecations_and_ships_the_license(tmp_path):
    """`license = {text = ...}` is deprecated by setuptools (unsupported after 2027-02-18): the SPDX string instead,
    with the LICENSE file it names in the distribution."""
    done = subprocess.run([sys.executable, "-c", BUILD_METADATA], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Deprecat" not in done.stderr, done.stderr[-2000:]
    assert "License-Expression: MIT" in done.stdout.splitlines()
    assert "License-File: LICENSE" in done.stdout.splitlines()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
