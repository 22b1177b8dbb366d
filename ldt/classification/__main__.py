"""Domain-generalisation sweeps: ``python -m ldt.classification [options]`` or ``--collect OUT``.

With no arguments it builds the generated toy dataset (datasets/toy_domains), pre-trains the tiny CNN on a larger
generated set (datasets/toy_domains_pretrained, cached) as the paper starts from ImageNet weights, and fine-tunes it
with every method on CPU, leave-one-domain-out, over three seeds. Finished runs (by options hash) are skipped, so an
interrupted sweep resumes where it stopped; the table is rewritten from all records at the end.
"""

from __future__ import annotations

from ldt.cli import OnceList, OneLineParser, check_args, exit_with, path_flag, positive, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    import argparse
    import copy
    from dataclasses import fields
    from pathlib import Path
    from typing import Sequence

    from ldt import runner
    from ldt.classification.data import (DatasetError, ambiguous_group, domain_folders, group_readings,
                                          test_domains_problem)
    from ldt.classification.models import BACKBONES, build_model, head_patterns
    from ldt.classification.pretrain import PretrainConfig, pretrain_summary, pretrain_tiny
    from ldt.classification.records import write_tables
    from ldt.classification.toy import DEFAULT_ROOT, DOMAINS, build_toy_domains
    from ldt.classification.train import METHODS, RunConfig, check_data, run
    from ldt.core import CRITERIA
    from ldt.sweep import SweepError, check_weights, parse_weights

TABLE_ORDER = {"backbone": BACKBONES, "method": METHODS}
# Hyper-parameter flags: RunConfig field -> help. Defaults come from RunConfig (sized for the CPU demo); each field's
# flag is runner.field_flag's, the name its errors give.
HYPER = {
    "steps": "training steps per run (every method, after warm-up/probe)",
    "batch_size": "images per training domain per step",
    "lr": "Adam learning rate of the training stage",
    "weight_decay": "Adam weight decay",
    **{flag: runner.flag_help(flag) for flag in ("warmup_steps", "warmup_lr", "probe_batches", "unstable_ratio",
                                                 "interval", "ema_weight")},
    "ema_decay": runner.EMA_DECAY_HELP,
    "holdout_fraction": "held-out fraction of each training domain, for model selection",
    "eval_every": "steps between model-selection evaluations",
    "image_size": "input size (default: 32 for tiny, 224 otherwise)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m ldt.classification", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--collect", metavar="OUT", type=path_flag, help="only rebuild OUT/table.md and table.csv from OUT/results.jsonl")
    parser.add_argument("--data", type=path_flag, help=f"dataset root, DomainBed layout root/<domain>/<class>/<image> (default: build {DEFAULT_ROOT})")
    parser.add_argument("--out", type=path_flag, help="records and tables (default: results/classification/<dataset name>)")
    # no argparse choices: RunConfig refuses an unknown method with a "did you mean" (argparse lists the choices only)
    parser.add_argument(runner.field_flag("method"), nargs="+", action=OnceList, default=list(METHODS),
                        help=f"of {', '.join(METHODS)} [all]")
    parser.add_argument(runner.field_flag("backbone"), nargs="+", action=OnceList, choices=BACKBONES, default=["tiny"])
    parser.add_argument("--weights", nargs="+", action=OnceList, default=[], metavar="[BACKBONE=]PATH", help="local pre-trained weights (never downloaded)")
    parser.add_argument("--no-pretrain", dest="pretrain", action="store_false",
                        help="without --data: fine-tune tiny from random init, not from the generated pre-training (cached)")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig.steps,
                        help=f"without --data: steps of the tiny backbone's pre-training (--no-pretrain for none) "
                             f"[{PretrainConfig.steps}]")
    parser.add_argument(runner.field_flag("seed"), nargs="+", action=OnceList, type=int, default=[0, 1, 2])
    parser.add_argument("--test-domains", nargs="+", action=OnceList, metavar="DOMAIN[+DOMAIN]", help="left-out domain(s) of each run (default: each domain)")
    parser.add_argument(runner.field_flag("criterion"), choices=CRITERIA, default="var",
                        help=runner.flag_help("criterion"))
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no training augmentation")
    defaults = {f.name: f.default for f in fields(RunConfig)}
    kinds = {f.name: f.type for f in fields(RunConfig)}
    for name, text in HYPER.items():
        kind = float if "float" in str(kinds[name]) else int
        shown = "" if defaults[name] is None else f" [{defaults[name]}]"
        parser.add_argument(runner.field_flag(name), type=kind, default=defaults[name], help=text + shown)
    runner.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    # Flags no run configuration checks, refused as read whatever else is given: 0 pre-training steps would cache
    # a random network as 'pre-trained' (--no-pretrain is random init, said as such).
    check_args(parser, args, pretrain_steps=positive)
    return args


def weights_by_backbone(entries: list[str], backbones: list[str]) -> dict[str, str]:
    """``BACKBONE=PATH`` entries, or one bare PATH when a single backbone is swept."""
    try:
        return parse_weights(entries, backbones, list(BACKBONES), noun="BACKBONE")
    except SweepError as err:
        raise ValueError(str(err)) from None


def demo_weights_path(args: argparse.Namespace) -> Path | None:
    """The cached pre-training the demo's tiny backbone starts from (made or not yet), or None: --no-pretrain, no
    tiny backbone, or --weights naming its own."""
    if not args.pretrain or "tiny" not in args.backbones or "tiny" in weights_by_backbone(args.weights, args.backbones):
        return None
    return PretrainConfig(steps=args.pretrain_steps).weights_path()


def demo_weights(args: argparse.Namespace) -> None:
    """Give the demo's tiny backbone the cached generated pre-training, unless --no-pretrain or --weights name its own."""
    if demo_weights_path(args) is None:
        return
    config = PretrainConfig(steps=args.pretrain_steps)
    cached = config.weights_path().is_file()
    if not cached:
        print(f"pre-training tiny on the generated set ({config.steps} steps, once; later runs reuse it)", flush=True)
    path = pretrain_tiny(config, progress=args.progress)
    summary = pretrain_summary(path)
    args.weights = [*args.weights, f"tiny={path}"]
    origin = "cached" if cached else f"trained in {summary['wall_s']} s"
    print(f"tiny backbone: pre-trained weights {path} ({origin}, {len(summary['classes'])} generated classes, held-out "
          f"accuracy {100 * summary['heldout_accuracy']:.1f} %; --no-pretrain for random init)")


def read_group(entry: str, domains: Sequence[str], root: object) -> tuple[str, ...]:
    """The domains one ``--test-domains`` entry names: folder names matched exactly (``art+paint`` is the folder of
    that name, also in ``photo+art+paint``); an entry that reads in two ways is refused, naming the folder
    (:func:`ldt.classification.data.ambiguous_group`); one that reads in none is split at every ``+`` (its unknown
    names are refused with the dataset's domains)."""
    problem = ambiguous_group(entry, domains, root)
    if problem:
        raise ValueError(f"--test-domains: {problem}")
    readings = group_readings(entry.split("+"), domains)
    return readings[0] if readings else tuple(entry.split("+"))


def left_out_groups(entries: list[str] | None, domains: list[str],
                    root: object = "the data folder") -> list[tuple[str, ...]]:
    """The left-out groups of ``--test-domains`` (default: each domain alone), each in sorted order: ``a+b`` and
    ``b+a`` are one run (and one table column), trained once."""
    if not entries:
        return [(d,) for d in domains]
    groups = [tuple(sorted(read_group(entry, domains, root))) for entry in entries]
    named = {"+".join(group): group for group in groups}
    return [named[name] for name in runner.unique("--test-domains", ["+".join(group) for group in groups])]


def plan(args: argparse.Namespace, read_images: bool = True) -> tuple[Path, list[RunConfig]]:
    """Check everything that can be checked cheaply, then list the sweep's runs (seed-major, so a partial sweep
    already has complete seeds), and with ``read_images`` check every run's data (every image's header)."""
    domains = [folder.name for folder in domain_folders(Path(args.data))]
    groups = left_out_groups(args.test_domains, domains, args.data)  # checked at start-up (check_domains)
    weights = weights_by_backbone(args.weights, args.backbones)
    hyper = {name: getattr(args, name) for name in HYPER}
    configs = [
        RunConfig(
            data=str(args.data), test_domains=group, method=method, backbone=backbone, weights=weights.get(backbone),
            seed=seed, criterion=args.criterion, augment=args.augment, **hyper,
        )
        for seed in args.seeds
        for backbone in args.backbones
        for group in groups
        for method in args.methods
    ]
    if read_images:
        sizes = {config.backbone: config.image_size for config in configs}  # one per backbone: a flag or its default
        # the class count changes no backbone tensor, and the file's head is never loaded
        check_weights(weights, lambda backbone, path: build_model(backbone, 2, weights=path, image_size=sizes[backbone]))
        check_data(configs)  # every run's, once: the runs do not check again (data_checked)
    return results_folder(args), configs


def results_folder(args: argparse.Namespace) -> Path:
    """``--out``, or its default ``results/classification/<dataset folder name>``."""
    return Path(args.out or Path("results/classification") / Path(args.data).name)


def check_out_outside_data(args: argparse.Namespace) -> None:
    """Refuse a results folder inside ``--data`` (a hidden folder aside, which the scan skips): the first sweep
    worked, the next read it as a domain or class folder ("domain 'results' has no class folders")."""
    out, root = results_folder(args).resolve(), Path(args.data).resolve()
    if out.is_relative_to(root) and not any(part.startswith(".") for part in out.relative_to(root).parts):
        raise ValueError(f"--out: {results_folder(args)} is inside --data {args.data}: the next sweep would read "
                         "it as part of the dataset; write the results outside the data folder")


def check_domains(args: argparse.Namespace) -> None:
    """``--data``'s domain folders (a listing, no image read) and ``--test-domains`` against them, or against the
    demo's domains before it is built, and ``--out`` outside ``--data``. Repeated test domains are dropped here, once."""
    if args.data is None:
        root, domains = DEFAULT_ROOT, list(DOMAINS)
    else:
        root = args.data
        try:
            domains = [folder.name for folder in domain_folders(root)]
        except DatasetError as err:
            raise ValueError(f"--data: {err}") from None
        check_out_outside_data(args)
    if not args.test_domains:
        return
    groups = left_out_groups(args.test_domains, domains, root)
    for group in groups:
        problem = test_domains_problem(group, domains, root)
        if problem:
            raise ValueError(f"--test-domains: {problem}")
    args.test_domains = ["+".join(group) for group in groups]


def check_options(args: argparse.Namespace) -> None:
    """Every method and hyper-parameter flag, checked as the runs will be built (no data read), and every method
    against its options and network (:func:`ldt.runner.check_method`), and the left-out domains
    (:func:`check_domains`): before the demo builds its data or pre-trains, a bad flag is already one line."""
    runner.check_seeds(args.seeds)
    check_domains(args)
    for flag in ("seeds", "methods", "backbones"):
        setattr(args, flag, runner.unique(f"--{flag}", getattr(args, flag)))
    hyper = {name: getattr(args, name) for name in HYPER}
    for method in args.methods:
        for backbone in args.backbones:
            config = RunConfig(data="", test_domains=(), method=method, backbone=backbone, criterion=args.criterion,
                               augment=args.augment, **hyper)
            # The dataset's class count is not known yet; it changes no parameter's name, which is what is checked.
            runner.check_method(config, lambda: build_model(backbone, 2, image_size=config.image_size),
                                head_patterns(backbone))


def prepare(args: argparse.Namespace) -> tuple[Path, list[RunConfig]]:
    """Everything before the first run: the flags, the generated demo data and its pre-trained backbone (once), and
    the plan."""
    check_options(args)
    if args.data is None:
        args.data = build_toy_domains(DEFAULT_ROOT)
        demo_weights(args)
    return plan(args)


def identify(args: argparse.Namespace) -> tuple[Path, list[RunConfig]] | None:
    """The folder and runs :func:`prepare` plans, without building the demo's data, pre-training its backbone or
    reading an image (on a copy of the flags); None for the demo before its data is built."""
    args = copy.deepcopy(args)
    check_options(args)
    if args.data is None:
        if not DEFAULT_ROOT.is_dir():
            return None
        args.data, pretrained = DEFAULT_ROOT, demo_weights_path(args)  # where prepare builds and pre-trains them
        args.weights = [*args.weights, f"tiny={pretrained}"] if pretrained else args.weights
    return plan(args, read_images=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # prepare checked every run's data (check_data): the runs do not again
    return runner.main(args, lambda: prepare(args), lambda config, **kwargs: run(config, data_checked=True, **kwargs),
                       lambda folder: write_tables(folder, TABLE_ORDER), lambda: identify(args))


if __name__ == "__main__":
    exit_with(main)
