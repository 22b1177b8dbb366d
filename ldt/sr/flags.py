"""The flags of ``Train_pip.py``'s two commands, declared once: the demo's (:mod:`ldt.sr.demo`) and training's
(:mod:`ldt.sr.train`, whose options part :mod:`ldt.sr.evaluate` shares).

Light on purpose (no torch, no BasicSR): ``Train_pip.py`` reads the flag names from these parsers to route its
arguments before either command's heavy imports start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ldt.cli import OneLineParser, path_flag
from ldt.sweep import PROJECT_ROOT


@dataclass(frozen=True)
class DemoBudget:
    """Iterations of each stage; ``full`` fits the 10-minute CPU budget, ``quick`` is for tests/CI.

    The pre-training has its own validation step: the study fine-tunes the demo's pre-trained network, so the
    fine-tuning budget can change without changing (and retraining) the weights the study's records were made from.
    """

    pretrain_iters: int
    pretrain_val_freq: int
    finetune_iters: int
    finetune_val_freq: int
    probe_batches: int
    exchange_interval: int
    batch_size: int
    gt_size: int
    tiny_data: bool


BUDGETS = {
    "full": DemoBudget(pretrain_iters=4000, pretrain_val_freq=250, finetune_iters=1000, finetune_val_freq=200,
                       probe_batches=100, exchange_interval=1, batch_size=8, gt_size=128, tiny_data=False),
    "quick": DemoBudget(pretrain_iters=20, pretrain_val_freq=4, finetune_iters=8, finetune_val_freq=4, probe_batches=4,
                        exchange_interval=2, batch_size=2, gt_size=32, tiny_data=True),
}


def demo_parser(prog: str = "Train_pip.py", description: str | None = None) -> argparse.ArgumentParser:
    """The demo's command line: ``python Train_pip.py [demo] [flags]``, or ``python -m ldt.sr.demo`` (``prog``)."""
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="'quick' is a smoke run of a minute or two (tiny data, a few steps)")
    parser.add_argument("--force", action="store_true", help="retrain every stage even if cached")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def build_parser(description: str | None, option_kind: str) -> argparse.ArgumentParser:
    """The options-file flags of training (``option_kind`` 'train') and evaluation ('test')."""
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-opt", "--opt", default=None,
        help=f"options YAML: a path, or a bare file name inside options/{option_kind}/",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none", help="'pytorch' under torchrun (DDP)")
    parser.add_argument("--force_yml", nargs="+", action="extend", default=None, metavar="KEY:SUB=VALUE",
                        help="override options, e.g. ldt:method=ft train:total_iter=1000 (values read as YAML)")
    parser.add_argument("--root", type=path_flag, default=PROJECT_ROOT,
                        help="where experiments/, tb_logger/ and results/ go (default: the project folder)")
    return parser


def training_parser(description: str | None = None) -> argparse.ArgumentParser:
    """``python Train_pip.py -opt FILE ...``: :func:`build_parser`'s flags and ``--auto_resume``."""
    parser = build_parser(description, "train")
    parser.epilog = "Without arguments, Train_pip.py runs the demo: `python Train_pip.py demo --help` lists its options."
    parser.add_argument("--auto_resume", action="store_true",
                        help="resume from the newest intact training state of this experiment (same options; the "
                             "learning rate, length, validation and logging may change)")
    return parser


def flag_names(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """Every option string of ``parser`` but help's, in the order they were declared."""
    return tuple(name for action in parser._actions if not isinstance(action, argparse._HelpAction)
                 for name in action.option_strings)
