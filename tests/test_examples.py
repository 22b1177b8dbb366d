"""The plain-PyTorch example runs end to end (few steps) and trains something."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_file_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_domain_shift.py"


def load_example():
    return load_file_module(EXAMPLE, "toy_domain_shift")


def test_toy_example_runs_ft_and_ldt():
    example = load_example()
    results = example.main(steps=20, verbose=False)
    assert 0.0 <= results["FT"] <= 1.0 and 0.0 <= results["LDT"] <= 1.0
    assert results["unstable_layers"] >= 1
    chance = 1.0 / example.NUM_CLASSES
    assert max(results["FT"], results["LDT"]) > chance  # fine-tuning learned something beyond chance
