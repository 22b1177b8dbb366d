"""What LDT buys on data we can run: the EMA control, three selection protocols and paired statistics, one command.

    python scripts/study.py                 # FT, FT-EMA, LDT (fixed W), LDT+DPU x 3 seeds; DeFT, LDT-S, interval 10
    python scripts/study.py --collect       # only rebuild the tables and the figure from the records

Every run fine-tunes the demo's pre-trained SAFMN (the same cached stage as ``python Train_pip.py``) on the synthetic
Olympus-like camera with the demo's settings, for a longer budget. Nothing is retrained to read other budgets or
other selection rules: with a constant learning rate a shorter run is a prefix of a longer one, and each record holds
the whole validation history, so every (budget, protocol) pair is read from it:

* **source** — training-domain validation: the best source-camera PSNR on its held-out pairs (our default);
* **last** — the network of the last iteration of the budget;
* **oracle** — the best target-mean PSNR: selection on the test cameras, as the official script does. Not a domain
  generalisation result; it shows how much selection alone can move a table.

Statistics (:mod:`ldt.sweep`): mean ± standard error over seeds; the paired difference to FT over the seeds both
have (same seed = same data order and initialisation) with a 95 % Student-t interval, and whether it excludes zero;
the *transfer ratio* (target-mean gain over the pre-trained network) / (source gain over it), per seed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ldt.atomic import make_dirs, read_json_dict
from ldt.cli import OneLineParser, path_flag, strict_json
from ldt.data.cameras import TARGET_CAMERAS
from ldt.sweep import Paired, markdown_table, mean_se, paired_difference, recorded_mean, recorded_number, sweep_lock

PROTOCOLS = {
    "source": "training-domain validation (source camera's held-out pairs)",
    "last": "last iteration",
    "oracle": "oracle: best target mean (selects on the test cameras, as the official script)",
}
CAMERAS = ("source", *TARGET_CAMERAS)
REFERENCE = "FT"  # the setting every other one is compared with, seed by seed
PRETRAINED_FILE = "pretrained.json"
FIGURE = "study_paired_differences.png"
# What the study found when run for the README (its numbers are there); the demo prints it where no study was run.
FINDING = ("no method beat plain fine-tuning on the target cameras by a margin distinguishable from zero: FT-EMA, "
           "LDT with fixed W and DeFT matched FT, LDT+DPU, LDT-S and exchange every 10 steps trailed it by less at "
           "each longer budget, and the three selection protocols picked the same checkpoints")


def target_mean(rows: Mapping[str, Mapping[str, float]], metric: str = "psnr", targets: Sequence[str] = TARGET_CAMERAS) -> float:
    return recorded_mean(rows[camera][metric] for camera in targets)


def select(history: Sequence[dict], protocol: str, *, upto: int | None = None, source: str = "source",
           targets: Sequence[str] = TARGET_CAMERAS, metric: str = "psnr") -> dict:
    """The validation entry ``protocol`` selects among those up to iteration ``upto``; ties keep the earlier one, as
    the training loop does. The metric is read as every table reads one (:func:`ldt.sweep.recorded_number`): a
    hand edit to true / false ranked as 1 / 0 dB, passed over with no word."""
    entries = [entry for entry in history if upto is None or entry["iter"] <= upto]
    if not entries:
        raise ValueError(f"no validation at or before iteration {upto}")
    if protocol == "last":
        return max(entries, key=lambda entry: entry["iter"])
    if protocol == "source":
        return max(entries, key=lambda entry: recorded_number(entry["rows"][source][metric]))
    if protocol == "oracle":
        return max(entries, key=lambda entry: target_mean(entry["rows"], metric, targets))
    raise ValueError(f"unknown selection protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def transfer_ratio(rows: Mapping, pretrained: Mapping, source: str = "source") -> float:
    """(target-mean PSNR gain over the pre-trained network) / (source PSNR gain over it)."""
    gain = recorded_number(rows[source]["psnr"]) - recorded_number(pretrained[source]["psnr"])
    return (target_mean(rows) - target_mean(pretrained)) / gain if gain else float("nan")


def budgets_of(records: Sequence[dict]) -> list[int]:
    """A quarter, a half and all of the training (where every record was validated)."""
    if not records:
        return []
    iters = max(record["iters"] for record in records)
    validated = set.intersection(*({entry["iter"] for entry in record["history"]} for record in records))
    return sorted(b for b in {iters // 4, iters // 2, iters} if b in validated)


def unread_budgets(iters: int, val_freq: int) -> list[int]:
    """The study's budgets (a quarter and a half of ``iters``) that a validation every ``val_freq`` iterations
    misses: :func:`budgets_of` would drop them from the tables without a word. ``iters`` is 4 or more (a quarter of
    fewer is no iteration at all: :func:`check_budgets`)."""
    return [budget for budget in (iters // 4, iters // 2) if budget % val_freq]


def check_budgets(iters: int, val_freq: int) -> None:
    """One line naming the flag unless every budget the study reads is validated (checked before the pre-training):
    a quarter of fewer than 4 iterations is iteration 0, which no run validates."""
    from ldt.sr.reproduce import ReproduceError

    if iters < 4:
        raise ReproduceError(f"--iters {iters}: the study reads a quarter, a half and all of the training, so it needs "
                             "at least 4 iterations (a multiple of 4)")
    missed = unread_budgets(iters, val_freq)
    if missed:
        at = f"iteration {missed[0]}" if len(missed) == 1 else f"iterations {' and '.join(map(str, missed))}"
        raise ReproduceError(f"--val-freq {val_freq} does not validate at a quarter and a half of --iters {iters} "
                             f"(not at {at}): the study reads those budgets; choose --iters divisible by 4 and a "
                             "--val-freq that divides --iters / 4")


# ------------------------------------------------------------------------------------------------------------ tables


def _by_setting(runs, records: Mapping[str, dict]) -> dict[str, dict[int, dict]]:
    """Setting label -> {seed: record} for the planned runs that have a record, in plan order."""
    table: dict[str, dict[int, dict]] = {}
    for run in runs:
        table.setdefault(run.setting.label, {})
        if run.digest in records:
            table[run.setting.label][run.seed] = records[run.digest]
    return table


def _values(per_seed: Mapping[int, dict], protocol: str, budget: int, read) -> dict[int, float]:
    return {seed: read(select(record["history"], protocol, upto=budget)["rows"]) for seed, record in per_seed.items()}


def _delta_text(paired: Paired, seeds: Sequence[int]) -> str:
    """A paired difference as the tables show it, with its n where FT shares fewer of the setting's ``seeds`` (a
    record of FT's missing): the seeds column counts the setting's, the interval is one of the seeds both have."""
    wider = paired.low is not None and paired.n < len(seeds)
    return paired.format(2) + (f", n={paired.n}" if wider else "")


def _fmt_paired(paired: Paired | None, reference: bool, seeds: Sequence[int] = ()) -> tuple[str, str]:
    if reference:
        return "(reference)", ""
    return ("no FT run", "") if paired is None else (_delta_text(paired, seeds), paired.verdict())


def analyse(runs, records: Mapping[str, dict], pretrained: Mapping | None) -> dict:
    """Every number the study's tables show, by setting, protocol and budget (also written as CSV)."""
    settings = _by_setting(runs, records)
    found = [record for per_seed in settings.values() for record in per_seed.values()]
    budgets = budgets_of(found)
    reference = settings.get(REFERENCE, {})
    results: dict = {"budgets": budgets, "rows": {}}
    for label, per_seed in settings.items():
        results["rows"][label] = {}
        for protocol in PROTOCOLS:
            for budget in budgets:
                if not per_seed:
                    continue
                target = _values(per_seed, protocol, budget, target_mean)
                target_ref = _values(reference, protocol, budget, target_mean) if reference else {}
                cell = {
                    "seeds": sorted(per_seed),
                    "source_psnr": mean_se(_values(per_seed, protocol, budget, lambda r: r["source"]["psnr"]).values()),
                    "target_psnr": mean_se(target.values()),
                    "target_ssim": mean_se(_values(per_seed, protocol, budget, lambda r: target_mean(r, "ssim")).values()),
                    "delta": None if label == REFERENCE or not target_ref else paired_difference(target, target_ref),
                    "transfer": mean_se(_values(per_seed, protocol, budget,
                                                lambda r: transfer_ratio(r, pretrained)).values()) if pretrained else None,
                }
                results["rows"][label][(protocol, budget)] = cell
    return results


def camera_gains(settings: Mapping[str, Mapping[int, dict]], pretrained: Mapping, budget: int) -> list[list[str]]:
    """Rows of mean ± s.e. over seeds of each camera's PSNR gain over the pre-trained network."""
    body = []
    for label, per_seed in settings.items():
        if per_seed:
            chosen = [select(record["history"], "source", upto=budget)["rows"] for record in per_seed.values()]
            body.append([label, *(mean_se(recorded_number(rows[camera]["psnr"])
                                          - recorded_number(pretrained[camera]["psnr"]) for rows in chosen).format(2)
                                  for camera in CAMERAS)])
    return body


def pretrained_metrics(out: Path) -> dict | None:
    """The pre-trained network's metrics in ``out`` (written by :func:`record_pretrained`), each value read as the
    tables read a record's (:func:`ldt.sweep.recorded_number`: an older file's 'nan' is NaN), or None without the
    file. A value that is no number (a hand edit to true, a camera missing) is a warning naming the file, and None:
    the tables then leave out the transfer ratio and the per-camera gains, and read every record."""
    path = Path(out) / PRETRAINED_FILE
    metrics = read_json_dict(path).get("metrics")
    if not metrics:
        return None
    try:
        return _read_metrics(metrics)
    except UNREADABLE_METRICS as err:
        warnings.warn(f"{path}: pre-trained metrics the tables cannot read ({type(err).__name__}: {err}; edited by "
                      "hand?); the transfer ratio and the per-camera gains are left out (a study run without "
                      "--collect evaluates the network again)", stacklevel=2)
        return None


# what reading hand-edited metrics raises: a value no number, a camera or metric missing, a list or word for a mapping
UNREADABLE_METRICS = (TypeError, KeyError, AttributeError)


def _read_metrics(metrics: Any) -> dict:
    """Each camera's PSNR and SSIM of a pretrained.json's ``metrics``, read as the tables read them."""
    return {camera: {metric: recorded_number(metrics[camera][metric]) for metric in ("psnr", "ssim")}
            for camera in CAMERAS}


def render_study(runs, records: Mapping[str, dict], out: Path):
    """The study's Markdown (three tables) and its long-format CSV, from the records and the pre-trained metrics."""
    from ldt.sr.reproduce import RenderedTable, describe_records

    pretrained = pretrained_metrics(out)
    results = analyse(runs, records, pretrained)
    budgets, rows = results["budgets"], results["rows"]
    found = [records[run.digest] for run in runs if run.digest in records]
    missing = len({run.digest for run in runs}) - len({run.digest for run in runs if run.digest in records})
    lines = ["## What LDT buys: controls, selection protocols, paired differences to FT", ""]
    lines += describe_records(found)
    if pretrained:
        lines.append(f"Pre-trained network: source {pretrained['source']['psnr']:.2f} dB, target mean "
                     f"{target_mean(pretrained):.2f} dB / {target_mean(pretrained, 'ssim'):.4f}.")
    lines.append("Cells: mean ± standard error over the seeds (n in the seeds column). Δ: the paired difference of "
                 "the target-mean PSNR to FT over the same seeds, with its 95 % t interval; 'distinguishable': the "
                 "interval excludes 0. Transfer ratio: target-mean gain over the pre-trained network / source gain.")
    csv_rows = []
    if budgets:
        full = budgets[-1]
        header = ["setting", "seeds", "source PSNR", "target-mean PSNR", "target-mean SSIM", "Δ target PSNR vs FT",
                  "distinguishable", "transfer ratio"]
        body = []
        for label, cells in rows.items():
            cell = cells.get(("source", full))
            if cell is None:
                body.append([label, "0", "not run", "", "", "", "", ""])
                continue
            delta, verdict = _fmt_paired(cell["delta"], label == REFERENCE, cell["seeds"])
            body.append([label, str(len(cell["seeds"])), cell["source_psnr"].format(2), cell["target_psnr"].format(2),
                         cell["target_ssim"].format(4), delta, verdict,
                         cell["transfer"].format(3) if cell["transfer"] else ""])
        lines += ["", f"**{full} iterations, checkpoint by {PROTOCOLS['source']}**", "", markdown_table(header, body)]

        header = ["setting"] + [f"{protocol}: target PSNR (Δ vs FT)" for protocol in PROTOCOLS]
        body = []
        for label, cells in rows.items():
            row = [label]
            for protocol in PROTOCOLS:
                cell = cells.get((protocol, full))
                delta = ("" if cell is None or cell["delta"] is None
                         else f" ({_delta_text(cell['delta'], cell['seeds'])})")
                row.append("not run" if cell is None else cell["target_psnr"].format(2) + delta)
            body.append(row)
        lines += ["", f"**Selection protocols at {full} iterations** (oracle reads the test cameras: not DG)", "",
                  markdown_table(header, body)]

        header = ["setting"] + [f"Δ vs FT at {budget}" for budget in budgets]
        body = []
        for label, cells in rows.items():
            if label == REFERENCE:
                continue
            row = [label]
            for budget in budgets:
                cell = cells.get(("source", budget))
                delta = None if cell is None else cell["delta"]
                row.append("not run" if cell is None else _fmt_paired(None, False)[0] if delta is None
                           else _delta_text(delta, cell["seeds"]) + ("" if delta.low is None
                                                                     else f" {delta.verdict()}"))
            body.append(row)
        lines += ["", "**Budgets** (training-domain validation; shorter budgets read from the same runs' history)", "",
                  markdown_table(header, body)]
        if pretrained:
            lines += ["", f"**PSNR gain over the pre-trained network per camera** at {full} iterations (dB, "
                      "training-domain validation): how much of the source gain each target camera keeps", "",
                      markdown_table(["setting", *CAMERAS], camera_gains(_by_setting(runs, records), pretrained, full))]
        for label, cells in rows.items():
            for (protocol, budget), cell in cells.items():
                delta = cell["delta"]
                csv_rows.append([label, protocol, budget, len(cell["seeds"]), cell["source_psnr"].mean,
                                 cell["target_psnr"].mean, cell["target_psnr"].se or "", cell["target_ssim"].mean,
                                 *(("", "", "", "") if delta is None else
                                   (delta.mean, delta.low if delta.low is not None else "",
                                    delta.high if delta.high is not None else "", delta.verdict())),
                                 cell["transfer"].mean if cell["transfer"] else "", "" if delta is None else delta.n])
    if missing:
        lines += ["", f"{missing} planned runs have no record yet: run the study (without --collect)."]
    header = ["setting", "protocol", "budget", "seeds", "source_psnr", "target_psnr", "target_psnr_se", "target_ssim",
              "delta_vs_ft", "delta_low95", "delta_high95", "distinguishable", "transfer_ratio", "delta_seeds"]
    return RenderedTable("\n".join(lines) + "\n", header, csv_rows, missing)


def plot_paired_differences(runs, records: Mapping[str, dict], path: Path) -> Path:
    """The paired difference to FT (target-mean PSNR, training-domain validation) per budget, with 95 % intervals."""
    from ldt.sr.figures import plot_intervals

    results = analyse(runs, records, None)
    series = {}
    for label, cells in results["rows"].items():
        points = [(budget, cells[("source", budget)]["delta"]) for budget in results["budgets"]
                  if ("source", budget) in cells and cells[("source", budget)]["delta"] is not None]
        if points:
            series[label] = [(budget, d.mean, d.low, d.high) for budget, d in points]
    return plot_intervals(series, path, xlabel="fine-tuning iterations (budget)",
                          ylabel="Δ target-mean PSNR vs FT (dB), paired, 95 % CI",
                          title="training-domain validation; one point per budget, same runs")


def headline(out: Path) -> str:
    """The demo's one line on the study: its paired differences to FT (full budget, training-domain validation)
    when the study's table is in ``out``, else what it found when run for the README and how to rerun it."""
    table = Path(out) / "tablestudy.csv"
    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    chosen = [row for row in rows if row["protocol"] == "source" and row["delta_vs_ft"]]
    if not chosen:
        return f"Multi-seed study (python scripts/study.py; README 'What LDT buys here'): {FINDING}."
    full = max(int(row["budget"]) for row in chosen)
    parts = []
    for row in chosen:
        if int(row["budget"]) == full:
            interval = f" [{float(row['delta_low95']):+.2f}, {float(row['delta_high95']):+.2f}]" if row["delta_low95"] else ""
            seeds = row.get("delta_seeds") or row["seeds"]  # the paired n (a table written before: the seeds)
            parts.append(f"{row['setting']} {float(row['delta_vs_ft']):+.2f}{interval} (n={seeds})")
    return f"Study ({table}), target-mean PSNR vs FT at {full} iterations, paired, 95 % CI: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------------------- the CLI


def main(argv: list[str] | None = None) -> int:
    from ldt.sr.demo import BUDGETS, pretrain_stage
    from ldt.sr.options import PROJECT_ROOT
    from ldt.sr.reproduce import Budget, ReproduceError, check_out, check_plan, reproduce, resolve_data
    from ldt.sr.train import run_reporting_errors

    parser = OneLineParser(prog="scripts/study.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of FT, FT-EMA, LDT, LDT+DPU (default: %(default)s)")
    parser.add_argument("--extra-seeds", type=int, default=1, help="seeds of DeFT, LDT-S, interval 10 (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=8000, help="fine-tuning iterations (default: %(default)s)")
    parser.add_argument("--val-freq", type=int, default=2000,
                        help="validation step; the budgets read are a quarter, half and all of --iters (default: "
                             "%(default)s)")
    parser.add_argument("--out", type=path_flag, default=PROJECT_ROOT / "experiments" / "study")
    parser.add_argument("--collect", action="store_true", help="only rebuild the tables and figure from the records")
    args = parser.parse_args(argv)
    demo = BUDGETS["full"]
    budget = Budget(iters=args.iters, batch_size=demo.batch_size, gt_size=demo.gt_size, probe_batches=demo.probe_batches,
                    val_freq=args.val_freq, interval=demo.exchange_interval)

    def work() -> None:
        check_plan(budget, args.seeds, args.extra_seeds)  # before the pre-training below, which may train
        check_budgets(args.iters, args.val_freq)
        out = args.out.expanduser().resolve()
        if not args.collect:
            check_out(out)
        data_root, _ = resolve_data("synthetic", PROJECT_ROOT / "datasets", build=not args.collect)
        weights = pretrain_stage(PROJECT_ROOT, "full", seed=0, train_if_missing=not args.collect)
        # The whole study holds OUT's sweep lock (reproduce takes it again): a second study is refused before it
        # evaluates the pre-trained network, and the reference point and figure are written by one study at a time.
        with contextlib.nullcontext() if args.collect else sweep_lock(make_dirs(out)):
            if not args.collect:
                record_pretrained(weights, data_root, out)
            summary = reproduce(["study"], "synthetic", archs=["safmn_tiny"], weights={"safmn_tiny": weights},
                                seeds=args.seeds, extra_seeds=args.extra_seeds, budget=budget, out=out,
                                collect_only=args.collect, cap_probe=True,
                                flags="--iters, --val-freq must be those of the study",
                                draw=lambda runs, records: plot_paired_differences(runs, records, out / FIGURE))
            figure = summary.drawn
        print((out / "tablestudy.md").read_text())
        print(f"runs: {summary.counts()} ({summary.seconds:.1f} s); "
              f"figure: {figure}; tables: {', '.join(map(str, summary.tables))}")

    return run_reporting_errors(work, errors=(ReproduceError,))


def record_pretrained(weights: Path, data_root: Path, out: Path) -> None:
    """The pre-trained network's metrics on the study's validation sets, once per weights file (the transfer ratio's
    reference point)."""
    from ldt.atomic import atomic_write_text
    from ldt.sr.demo import ARCH, evaluate_weights
    from ldt.sr.experiment import ARCHS
    from ldt.sr.reproduce import ReproduceError
    from ldt.weights import content_fingerprint

    target = out / PRETRAINED_FILE
    fingerprint = content_fingerprint(weights)
    recorded = read_json_dict(target)
    if recorded.get("weights") == str(weights) and recorded.get("metrics"):
        if recorded.get("weights_fingerprint", fingerprint) != fingerprint:
            raise ReproduceError(f"{weights} changed since {target} and the study's records were made from it "
                                 f"(tensor fingerprint {recorded['weights_fingerprint']} then, {fingerprint} now): "
                                 "restore it, or run the study elsewhere with --out")
        try:
            _read_metrics(recorded["metrics"])
            return
        except UNREADABLE_METRICS:
            pass  # edited by hand: evaluated again (the same weights, a test of a few images), the file replaced
    rows = evaluate_weights(weights, data_root, ARCHS[ARCH], out, "study_pretrained_eval")
    atomic_write_text(target, strict_json({"weights": str(weights), "weights_fingerprint": fingerprint,
                                          "data_root": str(data_root), "metrics": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
