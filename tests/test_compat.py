"""basicsr 1.4.2 imports on torchvision >= 0.17 through our shim, and only through it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh interpreters

CHECK = """
import importlib, sys
{prelude}
import basicsr
from basicsr.data.degradations import rgb_to_grayscale
import torch
print(tuple(rgb_to_grayscale(torch.rand(3, 4, 4)).shape))
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_basicsr_imports_with_the_shim():
    result = run_python(CHECK.format(prelude="from ldt.compat import patch_basicsr; patch_basicsr(); patch_basicsr()"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("(1, 4, 4)")


def test_basicsr_fails_without_the_shim():
    """Guards the reason the shim exists: if this starts passing, torchvision/basicsr changed and the shim can go."""
    result = run_python(CHECK.format(prelude=""))
    if result.returncode == 0:
        pytest.skip("this torchvision still ships functional_tensor; the shim is a no-op here")
    assert "functional_tensor" in result.stderr


def test_shim_alias_is_torchvision_function():
    from ldt.compat import patch_basicsr

    patch_basicsr()
    from torchvision.transforms import functional

    assert sys.modules["torchvision.transforms.functional_tensor"].rgb_to_grayscale is functional.rgb_to_grayscale
