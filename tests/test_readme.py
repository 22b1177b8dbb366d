"""The README's generated parts match the code, and its commands are the ones CI runs."""

from __future__ import annotations

import argparse
import contextlib
import re
import runpy
import sys
import warnings
from pathlib import Path
from unittest import mock

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


# ---- the README's commands, flags, option paths and option files exist --------------------------------------------

# Each entry point a README command runs, with the argv that reaches its parser (Train_pip.py has two: the demo's
# without arguments, the training's with -opt).
ENTRY_POINTS = {
    "Train_pip.py": ([], ["-opt", "x.yml"]), "test.py": ([],), "examples/toy_domain_shift.py": ([],),
    **{f"scripts/{path.name}": ([],) for path in (ROOT / "scripts").glob("*.py")},
    **{module: ([],) for module in ("ldt.classification", "ldt.segmentation", "ldt.sr.basicsr_pipeline", "ldt.sr.demo",
                                    "ldt.sr.options")},
}
OTHER_TOOLS = {"pytest"}  # python -m pytest: not ours
OTHER_FLAGS = {"--no-build-isolation", "--no-deps", "--no-index", "--target", "--nproc_per_node"}  # pip, torchrun
MISSPELT_ON_PURPOSE = {"--stesp", "--bud", "--f", "--auto", "--pretrain-st", "--t"}  # the README shows what a misspelled or abbreviated flag gets
COMMAND = re.compile(r"\b(?:python|torchrun)\b(?:\s+--?[\w=]+)*\s+(-m\s+[\w.]+|[\w./]+\.py)\b(.*)")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


class _Parsed(Exception):
    """Raised in place of parsing: the entry point has built its parser."""


def entry_point_flags(target: str) -> set[str]:
    """Every option string of the parsers ``target`` builds, found by running it up to its parse_args."""
    flags: set[str] = set()

    def capture(parser: argparse.ArgumentParser, *args, **kwargs):
        flags.update(option for action in parser._actions for option in action.option_strings)
        raise _Parsed

    for argv in ENTRY_POINTS[target]:
        with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture), \
                mock.patch.object(sys, "argv", [target, *argv]):
            with contextlib.suppress(_Parsed), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: ldt.sr.options is imported already
                if target.endswith(".py"):
                    runpy.run_path(str(ROOT / target), run_name="__main__")
                else:
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
    assert flags, f"{target} built no parser"
    return flags


def readme_code() -> tuple[list[str], str]:
    """The README's shell lines (code blocks: continuations joined, VAR="..." substituted) and inline code spans,
    and its prose without the code blocks."""
    readme = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", readme, re.S):
        block = block.replace("\\\n", " ")
        for name, value in re.findall(r'^(\w+)="([^"]*)"', block, re.M):
            block = block.replace(f"${name}", value)
        lines += block.splitlines()
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return lines + spans, prose


def test_every_flag_of_a_readme_command_is_one_its_entry_point_takes():
    lines, prose = readme_code()
    known: dict[str, set[str]] = {}
    wrong = []
    for line in lines:
        for match in COMMAND.finditer(line):
            target = match.group(1).replace("-m", "").strip()
            if target in OTHER_TOOLS:
                continue
            assert target in ENTRY_POINTS, f"the README runs {target}: add it to ENTRY_POINTS"
            if target not in known:
                known[target] = entry_point_flags(target)
            command = re.split(r"\s#|&&", match.group(2))[0]
            wrong += [f"{target} {flag}" for flag in FLAG.findall(command)
                      if flag not in known[target] | MISSPELT_ON_PURPOSE]
    assert not wrong, f"flags the README gives that their entry point does not take: {wrong}"
    every = set().union(*(entry_point_flags(t) if t not in known else known[t] for t in ENTRY_POINTS))
    named = {flag for flag in FLAG.findall(prose) if flag.startswith("--")}
    unknown = named - every - OTHER_FLAGS - MISSPELT_ON_PURPOSE
    assert not unknown, f"flags the README names that no entry point takes: {unknown}"


def test_every_option_path_in_the_readme_prose_is_in_the_generated_reference():
    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("<!-- options:begin -->"):readme.index("<!-- options:end -->")]
    cells = [re.split(r"(?<!\\)\|", line)[1:3] for line in reference.splitlines() if line.startswith("| `")]
    rows = {re.match(r" `([^`]+)`", path).group(1): kind.strip() for path, kind in cells}
    _, prose = readme_code()
    prose = prose.replace(reference, "")
    paths = {match.group(1) for span in re.findall(r"`([^`]+)`", prose)
             for match in re.finditer(r"(?<![\w./:<-])((?:train|val|path|logger|speed|ldt|dist_params|datasets|probe"
                                      r"|warmup|exchange):[a-z_0-9]+(?::[a-z_0-9]+)*)(?![\w<])", span)}

    def known(path: str) -> bool:
        head, *rest = path.split(":")
        if head in ("probe", "warmup", "exchange"):  # the core's MethodConfig paths: ldt:<path> in SR files
            return known("ldt:" + path)
        if head == "datasets":  # datasets:<key>[:<option of its block>]
            return bool(re.fullmatch(r"train|(val|test)(_\w+)?", rest[0])) and (len(rest) == 1 or rest[1] in rows)
        parent = path.rpartition(":")[0]
        return path in rows or (parent in rows and (rows[parent].startswith("mapping")
                                                    or rows[parent].startswith("one of type")))

    assert not [p for p in paths if not known(p)], sorted(p for p in paths if not known(p))


def test_every_option_file_the_readme_names_is_shipped():
    lines, _ = readme_code()
    official = {"train_MambaIR_SR_x4.yml"}  # the official repository's file, which loads unchanged
    missing = []
    for line in lines:
        for name in re.findall(r"[\w./{},+-]+\.yml", line):
            if "..." in name or name in official or name.split("/")[-1] in ("FILE.yml", "mine.yml", "x.yml"):
                continue
            braces = re.search(r"\{([^}]*)\}", name)
            names = [name.replace(braces.group(0), part) for part in braces.group(1).split(",")] if braces else [name]
            for one in names:
                if not any((folder / one).is_file() for folder in (ROOT, ROOT / "options/train", ROOT / "options/test")):
                    missing.append(one)
    assert not missing, missing


def test_no_placeholder_is_left_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert "@@" not in readme, [line for line in readme.splitlines() if "@@" in line]


def test_the_python_api_blocks_run():
    """The README's ```python blocks (the Methods loop and the loop of one's own) run as written, on a tiny model:
    only the names they leave to the reader (model, loader, chunks, total_steps, accumulate) are given."""
    import itertools

    import torch

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 2, "a new ```python block: give it what it needs here"

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.mid, self.fc = torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.mid(torch.relu(self.body(x)))))

    def chunks(iterable, size):
        iterator = iter(iterable)
        while group := list(itertools.islice(iterator, size)):
            yield group

    torch.manual_seed(0)
    loader = [(torch.randn(4, 4), torch.randint(0, 3, (4,))) for _ in range(6)]
    names = {"model": Net(), "loader": loader, "chunks": chunks, "total_steps": 3, "accumulate": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA autocast / GradScaler on a CPU, the deployed network before an exchange
        exec(blocks[0].replace('"num_batches": 300', '"num_batches": 3'), names)
        assert isinstance(names["deployed"], Net)
        exec(blocks[1], names)
    assert len(names["optimizers"]) == 2 and names["method"].deployed_state_dict().keys() == Net().state_dict().keys()
