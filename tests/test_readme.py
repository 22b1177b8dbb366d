"""The README's generated parts match the code, and its commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

from ldt.sr.options import embed_references

ROOT = Path(__file__).resolve().parents[1]


def test_the_option_reference_and_methods_table_are_generated_from_the_code():
    readme = (ROOT / "README.md").read_text()
    assert embed_references(readme) == readme, "run: python -m ldt.sr.options --readme README.md"
    for key in ("`ldt:unstable_ratio`", "`train:optim_g:lr` (Adam)", "`cameras`", "`ldt_dpu`"):
        assert key in readme


def test_ci_runs_the_readme_test_commands():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    everyday = 'python -m pytest tests -q -m "not slow"'
    assert everyday in readme and everyday.replace('"', "'") in ci.replace('"', "'")
    assert "bash scripts/install.sh" in readme and "bash scripts/install.sh" in ci


def test_no_placeholder_is_left_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert "@@" not in readme, [line for line in readme.splitlines() if "@@" in line]
