"""The plain-PyTorch example: every registered method through the same few-line loop."""

from __future__ import annotations

from pathlib import Path

from ldt.core import METHODS
from tests.conftest import load_file_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_domain_shift.py"


def load_example():
    return load_file_module(EXAMPLE, "toy_domain_shift")


def test_toy_example_runs_every_method_through_one_loop():
    example = load_example()
    results = example.main(steps=20, methods=tuple(METHODS), verbose=False)
    assert all(0.0 <= results[name] <= 1.0 for name in METHODS)
    for name in ("deft", "ldt", "ldt_fixed", "ldt_dpu", "ldt_s"):  # methods with a partition report its size
        assert results[f"{name}_unstable_layers"] >= 1
    assert "ft_unstable_layers" not in results
    chance = 1.0 / example.NUM_CLASSES
    assert max(results[name] for name in METHODS) > chance  # fine-tuning learned something beyond chance
