"""Domain-generalised segmentation sweeps: ``python -m ldt.segmentation [options]`` or ``--collect OUT``.

With no arguments it builds the generated street domains (datasets/generated_streets, cached), pre-trains a
DeepLabV3+ ResNet-18 on their ``pretrain`` domain (datasets/generated_streets_pretrained, cached) as the paper starts
from ImageNet weights, and fine-tunes it with every method on CPU on the ``clean`` domain, testing on the other
five, over three seeds. With ``--source LAYOUT=ROOT --targets LAYOUT=ROOT ...`` it runs datasets on disk (paper
Table 8: ``--source cityscapes=ROOT --targets bdd100k=ROOT mapillary=ROOT``) with the paper's recipe.

A bare domain NAME is a domain of the generated dataset; ``LAYOUT=ROOT`` (or ``LAYOUT:NAME=ROOT``) one on disk, in
the cityscapes, bdd100k or mapillary layout. The demo's CPU sizing and pre-training apply when every domain is a
generated one. Finished runs (by options hash) are skipped, so an interrupted sweep resumes where it stopped; the
tables are rewritten from all records at the end.
"""

from __future__ import annotations

from ldt.cli import OnceList, OneLineParser, check_args, exit_with, path_flag, positive, starting

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
    import argparse
    from dataclasses import fields
    from pathlib import Path

    import torch

    from ldt import runner
    from ldt.core.config import unknown_choice
    from ldt.segmentation.deeplabv3plus import BACKBONES, load_backbone_weights
    from ldt.segmentation.generated import DEFAULT_ROOT, SOURCE_DOMAIN, GeneratedConfig, build_generated, domain_root
    from ldt.segmentation.pretrain import PretrainConfig, pretrain_backbone, pretrain_summary
    from ldt.segmentation.records import write_tables
    from ldt.segmentation.train import (
        DOMAIN_FLAGS, METHODS, Domain, RunConfig, build_model, check_data, parse_domain, parse_size, run, shown_size,
        stride_fits,
    )
    from ldt.sweep import SweepError, check_weights, parse_weights

TABLE_ORDER = {"backbone": BACKBONES, "method": METHODS}
DEMO_DATA = GeneratedConfig()  # the generated domains bare names refer to (96x192 px, 40 train / 20 val per domain)
# The no-argument demo's sizing for a 2-core CPU (minutes, pre-training included; see the README); every option not
# named here is RunConfig's (the paper's recipe). 40 steps is a short fine-tuning, so the exchange runs every step
# (interval 1) as in the classification demo: at the paper's interval of 10, W = 0.99 would leave the composite
# almost at its starting point. The 96x192 generated images are evaluated whole.
DEMO = {"backbone": "resnet18", "steps": 40, "crop_size": (64, 64), "lr": 5e-4, "warmup_steps": 20,
        "probe_batches": 8, "interval": 1, "holdout_fraction": 0.2, "eval_every": 20, "head_channels": 64,
        "eval_window": None, "eval_max_side": None}


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _size_or_whole(text: str) -> tuple[int, int] | None:
    return None if text.lower() in ("whole", "none") else parse_size(text)


def _size(text: str) -> tuple[int, int]:
    return parse_size(text)


_size.__name__ = "size N or HxW"  # argparse names the type in its error message
_size_or_whole.__name__ = "size N, HxW or 'whole'"
_int_or_none.__name__ = "integer or 'none'"

# Hyper-parameter flags: RunConfig field -> (type, help). Defaults: RunConfig's, or DEMO's for generated domains. Each
# field's flag is runner.field_flag's, the name its errors give.
HYPER = {
    "steps": (int, "training steps per run (every method, after warm-up/probe)"),
    "batch_size": (int, "crops per source domain per step"),
    "crop_size": (_size, "training crop, N or HxW"),
    "lr": (float, "Adam learning rate of the training stage"),
    "weight_decay": (float, "Adam weight decay"),
    "warmup_steps": (int, runner.flag_help("warmup_steps")),
    "warmup_lr": (float, runner.flag_help("warmup_lr")),
    "probe_batches": (int, runner.flag_help("probe_batches")),
    "unstable_ratio": (float, runner.flag_help("unstable_ratio")),
    "criterion": (str, runner.flag_help("criterion")),
    "interval": (int, runner.flag_help("interval")),
    "ema_weight": (float, runner.flag_help("ema_weight")),
    "ema_decay": (float, runner.EMA_DECAY_HELP),
    "holdout_fraction": (float, "held-out fraction of each source domain, for model selection"),
    "eval_every": (int, "steps between model-selection evaluations"),
    "head_channels": (int, "ASPP and decoder channels"),
    "output_stride": (int, "backbone output stride, 8 or 16"),
    "eval_window": (_size_or_whole, "sliding window of evaluation, N, HxW or 'none' (whole images)"),
    "eval_stride": (_size, "stride of the sliding window, N or HxW"),
    "eval_max_side": (_int_or_none, "reduce evaluation images larger than this first ('none': native size)"),
}
DEFAULTS = {f.name: f.default for f in fields(RunConfig)}
# The parsed value of a hyper-parameter flag not given: not None, which 'none' gives (--eval-window none is whole
# images, --eval-max-side none the native size; taken for "not given", it became the default 512x512 / 2048).
NOT_GIVEN = object()


def _shown(value) -> str:
    return shown_size(value) if isinstance(value, tuple) else str(value).lower()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m ldt.segmentation", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", metavar="OUT", type=path_flag, help="only rebuild OUT's tables from OUT/results.jsonl")
    parser.add_argument(DOMAIN_FLAGS["sources"], nargs="+", action=OnceList, metavar="DOMAIN", help=f"source domain(s) [generated {SOURCE_DOMAIN}]")
    parser.add_argument(DOMAIN_FLAGS["targets"], nargs="+", action=OnceList, metavar="DOMAIN", help="target domains [the other generated ones]")
    parser.add_argument("--out", type=path_flag, help="records and tables (default: results/segmentation/<source or generated_streets>)")
    parser.add_argument(runner.field_flag("method"), nargs="+", action=OnceList, default=list(METHODS),
                        help=f"of {', '.join(METHODS)} [all]")
    parser.add_argument(runner.field_flag("backbone"), nargs="+", action=OnceList,
                        help=f"of {', '.join(BACKBONES)} [generated: resnet18; else {DEFAULTS['backbone']}]")
    parser.add_argument("--weights", nargs="+", action=OnceList, default=[], metavar="[BACKBONE=]PATH",
                        help="local torchvision ImageNet state dicts of the backbones (never downloaded)")
    parser.add_argument("--no-pretrain", dest="pretrain", action="store_false",
                        help="generated domains: fine-tune resnet18 from random init, not the generated pre-training")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig.steps,
                        help=f"generated domains: steps of the resnet18 pre-training [{PretrainConfig.steps}]")
    parser.add_argument(runner.field_flag("seed"), nargs="+", action=OnceList, type=int, default=[0, 1, 2],
                        help="one run per seed [0 1 2]")
    for name, (kind, text) in HYPER.items():
        demo = f"; demo {_shown(DEMO[name])}" if name in DEMO else ""
        parser.add_argument(runner.field_flag(name), type=kind, default=NOT_GIVEN,
                            help=f"{text} [{_shown(DEFAULTS[name])}{demo}]")
    runner.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    check_args(parser, args, pretrain_steps=positive)  # as parsed, not once the demo data is built, naming no flag
    return args


def resolve_domain(text: str) -> Domain:
    """A bare name is a generated domain (under DEFAULT_ROOT), anything with '=' a dataset on disk."""
    if "=" in text:
        return parse_domain(text)
    if text not in DEMO_DATA.domains:
        raise ValueError(unknown_choice("generated domain", text, DEMO_DATA.domains)
                         + " (or give LAYOUT=ROOT for a dataset on disk)")
    return Domain(text, "cityscapes", str(domain_root(DEFAULT_ROOT, text)))


def given_domain(flag: str, text: str) -> Domain:
    """:func:`resolve_domain` of a value of ``flag``, whose errors name the flag and the value given."""
    try:
        return resolve_domain(text)
    except ValueError as err:
        raise ValueError(f"{flag} {text}: {err}") from None


def check_window_and_stride(args: argparse.Namespace, hyper: dict) -> None:
    """An ``--eval-window`` and ``--eval-stride`` that do not fit, blaming the flag given, not the default it meets
    (``--eval-window 32`` alone was refused as '--eval-stride 341x341 must be between 1 and --eval-window 32x32');
    both given (or neither): :class:`RunConfig`'s own message."""
    window, stride = hyper["eval_window"], hyper["eval_stride"]
    if stride_fits(window, stride) or (args.eval_window is NOT_GIVEN) == (args.eval_stride is NOT_GIVEN):
        return
    shown_window, shown_stride = _shown(window), _shown(stride)
    window_flag, stride_flag = runner.field_flag("eval_window"), runner.field_flag("eval_stride")
    if args.eval_stride is NOT_GIVEN:
        raise ValueError(f"{window_flag} {shown_window} is smaller than the default {stride_flag} {shown_stride} (a "
                         f"stride is between 1 and the window): give {stride_flag} too, at most {shown_window}")
    raise ValueError(f"{stride_flag} {shown_stride} must be between 1 and the default {window_flag} {shown_window}: "
                     f"give {window_flag} too, at least {shown_stride}")


def plan(args: argparse.Namespace) -> tuple[Path, list[RunConfig], bool, Path | None]:
    """Check everything that needs no data, then list the sweep's runs (seed-major, so a partial sweep already has
    complete seeds). Returns (out, configs, whether generated domains are used, the demo's pre-trained weights file
    to make, if any)."""
    runner.check_seeds(args.seeds)
    seeds, methods = runner.unique("--seeds", args.seeds), runner.unique("--methods", args.methods)
    specs = (args.source or [SOURCE_DOMAIN]) + (args.targets or [])
    sources = [given_domain(DOMAIN_FLAGS["sources"], s) for s in args.source or [SOURCE_DOMAIN]]
    if args.targets:
        targets = [given_domain(DOMAIN_FLAGS["targets"], t) for t in args.targets]
    elif all("=" not in s for s in specs):
        targets = [resolve_domain(d) for d in DEMO_DATA.domains if d not in {s.name for s in sources}]
    else:
        raise ValueError(f"{DOMAIN_FLAGS['targets']}: name the target domains (LAYOUT=ROOT ...) of a source on disk")
    generated = [s for s in specs if "=" not in s]
    demo = len(generated) == len(specs)
    defaults = {**DEFAULTS, **DEMO} if demo else DEFAULTS
    backbones = runner.unique("--backbones", args.backbones or [defaults["backbone"]])
    for backbone in backbones:
        if backbone not in BACKBONES:
            raise ValueError(unknown_choice("backbone", backbone, BACKBONES))
    try:
        given = parse_weights(args.weights, backbones, list(BACKBONES), noun="BACKBONE")
    except SweepError as err:
        raise ValueError(str(err)) from None
    weights, pretrained = dict(given), None
    if demo and args.pretrain and "resnet18" in backbones and "resnet18" not in given:
        pretrained = PretrainConfig(steps=args.pretrain_steps).weights_path(DEMO_DATA.digest())
        weights["resnet18"] = str(pretrained)
    hyper = {name: defaults[name] if getattr(args, name) is NOT_GIVEN else getattr(args, name) for name in HYPER}
    check_window_and_stride(args, hyper)
    configs = [
        RunConfig(sources=tuple(sources), targets=tuple(targets), method=method, backbone=backbone,
                  weights=weights.get(backbone), seed=seed, **hyper)
        for seed in seeds
        for backbone in backbones
        for method in methods
    ]
    for config in configs[: len(backbones) * len(methods)]:  # one seed: the method checks do not read seeds
        runner.check_method(config, lambda: build_model(config, weights=False))

    def fit(backbone: str, path: str) -> None:
        with torch.device("meta"):
            model = build_model(next(c for c in configs if c.backbone == backbone), weights=False)
        load_backbone_weights(model.to_empty(device="cpu"), path)

    check_weights(given, fit)
    name = "generated_streets" if demo else "+".join(s.name for s in sources)
    return Path(args.out or Path("results/segmentation") / name), configs, bool(generated), pretrained


def demo_weights(args: argparse.Namespace, path: Path) -> None:
    """Pre-train the demo's resnet18 on the generated ``pretrain`` domain, once (later sweeps reuse the file)."""
    cached = path.is_file()
    if not cached:
        print(f"pre-training resnet18 on the generated 'pretrain' domain ({args.pretrain_steps} steps, once; later "
              "runs reuse it)", flush=True)
    made = pretrain_backbone(DEFAULT_ROOT, PretrainConfig(steps=args.pretrain_steps), progress=args.progress)
    assert made == path, (made, path)  # the planned records name this file
    summary = pretrain_summary(path)
    origin = "cached" if cached else f"trained in {summary['wall_s']} s"
    print(f"resnet18 backbone: pre-trained weights {path} ({origin}; 'pretrain' val mIoU {summary['val_miou']:.1f} %; "
          "--no-pretrain for random init)", flush=True)


def prepare(args: argparse.Namespace) -> tuple[Path, list[RunConfig]]:
    """Everything before the first run: the plan, the generated data and the checks of every domain on disk, and
    the demo's pre-trained backbone (once)."""
    out, configs, generated, pretrained = plan(args)
    if generated:
        build_generated(DEFAULT_ROOT, DEMO_DATA)
    check_data(configs)
    if pretrained is not None:
        demo_weights(args, pretrained)
    return out, configs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # prepare checked every run's data (check_data): the runs do not again
    return runner.main(args, lambda: prepare(args), lambda config, **kwargs: run(config, data_checked=True, **kwargs),
                       lambda folder: write_tables(folder, TABLE_ORDER), lambda: plan(args)[:2])


if __name__ == "__main__":
    exit_with(main)
