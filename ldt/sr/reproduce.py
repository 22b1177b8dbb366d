"""Reproduce the paper's SR tables (1, 2, 4, 5, 6, 9) with one command: plan the runs, train the missing ones, collect.

Built on the shared sweep engine (:mod:`ldt.sweep`): every finished run appends one self-describing JSON line to
``<out>/results.jsonl``, keyed by its run identity (:func:`ldt.sr.options.run_identity`). So an interrupted sweep
resumes by skipping every run that has a record, a run shared by several tables (FT on Olympus is the baseline of
Tables 1, 2 and 5) is trained once, and the tables are rebuilt from the records alone (``--collect``).

A cell is the mean ± standard error over seeds (n in the seeds column) of the PSNR / SSIM (Y channel) of the
checkpoint selected on the source camera's test pairs (training-domain validation). On DRealSR the paper's numbers
(``ldt/paper_tables.json``) are printed under our rows; synthetic cameras are not comparable, so not there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from ldt.atomic import atomic_write_text, existing_parent, make_dirs
from ldt.cli import OnceList, OneLineParser, did_you_mean, expand_home, not_a_file, path_flag, require_output_dir
from ldt.core import method_class
from ldt.core.config import MAX_SEED, unknown_choice
from ldt.core.methods import runs_probe
from ldt.data.cameras import DREALSR_CAMERAS, DatasetError, camera_label, collect_pairs
from ldt.data.synthetic_cameras import MANIFEST, build_synthetic_cameras
from ldt.sr.experiment import ARCHS, RunBudget, camera_run_options, run_stage
from ldt.sr.loaders import probe_batches_per_pass
from ldt.sr.options import (OPTION_DIRS, OptionsError, PROJECT_ROOT, method_options, prepare_options, read_option_file,
                            run_identity)
from ldt.sr.tables import PAPER_ARCHS, TABLES, PaperCell, Setting, TableSpec, paper_cells
from ldt.sr.train import run_reporting_errors
from ldt.sweep import (
    PlannedRun,
    Records,
    SweepError,
    csv_stat,
    csv_text,
    markdown_table,
    mean_se,
    parse_weights,
    recorded_mean,
    recorded_number,
    run_pending,
    stale_weights,
    sweep_lock,
    tables_lock,
    wrong_type,
)
from ldt.weights import WeightsError, content_fingerprint, read_weights

DEFAULT_OUT = PROJECT_ROOT / "experiments" / "reproduce"
DEFAULT_DATASETS = PROJECT_ROOT / "datasets"
# The budget of the paper's runs is the shipped main option file's (one place for it).
PAPER_OPTIONS = OPTION_DIRS["train"] / "train_MambaIR_LDT_x4.yml"
# --data names that build (once, cached) the download-free benchmark: folder under the datasets dir, tiny geometry.
SYNTHETIC_DATA: dict[str, tuple[str, bool]] = {
    "synthetic": ("synthetic_cameras", False),
    "synthetic_tiny": ("synthetic_cameras_tiny", True),
}
DREALSR_TILE = 256  # LR tile for validating on DRealSR's large test images (as the shipped option files)
TARGET_MEAN = "target_mean"


class ReproduceError(ValueError):
    """Bad input to a reproduction (table, arch, data, weights, budget); raised before any training starts."""


# --------------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Budget:
    """Training budget of every run. ``None``: the paper's (``iters``, ``batch_size``, ``gt_size``,
    ``probe_batches``, ``interval`` of the shipped ``options/train/train_MambaIR_LDT_x4.yml``) or automatic:
    ``val_freq`` a tenth of the iterations (at most 500), ``lpft_warmup`` a tenth of the iterations (LP-FT's
    linear-probe stage), ``tile`` 256 px LR tiles on DRealSR's large test images and none on synthetic ones (0: never).
    """

    iters: int | None = None
    batch_size: int | None = None
    gt_size: int | None = None
    probe_batches: int | None = None
    val_freq: int | None = None
    interval: int | None = None
    lpft_warmup: int | None = None
    tile: int | None = None

    @staticmethod
    def paper() -> "Budget":
        opt = read_option_file(PAPER_OPTIONS)
        train = opt["datasets"]["train"]
        return Budget(iters=int(opt["train"]["total_iter"]), batch_size=train["batch_size_per_gpu"],
                      gt_size=train["gt_size"], probe_batches=opt["ldt"]["probe"]["num_batches"],
                      interval=opt["ldt"]["exchange"]["interval"])

    def check(self) -> None:
        """Reject values that would only fail inside a run."""
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "tile" and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ReproduceError(f"--{item.name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.gt_size is not None and self.gt_size % 4:
            raise ReproduceError(f"--gt-size must be a multiple of the scale 4, got {self.gt_size}")
        if self.tile is not None and self.tile < 0:
            raise ReproduceError(f"--tile must be >= 0, got {self.tile}")

    def resolved(self, data_kind: str) -> "Budget":
        """Every automatic value made explicit (so it enters the run identity as used)."""
        paper = Budget.paper()
        given = {item.name: getattr(self, item.name) for item in fields(self)}
        budget = replace(paper, **{k: v for k, v in given.items() if v is not None})
        tenth = max(1, budget.iters // 10)
        tile = budget.tile if budget.tile is not None else (DREALSR_TILE if data_kind == "drealsr" else 0)
        return replace(budget, val_freq=budget.val_freq or min(500, tenth), lpft_warmup=budget.lpft_warmup or tenth,
                       tile=tile)


@dataclass
class TableRun:
    """One training of one table row: its (validatable) options and their identity, which keys its record."""

    table: str
    setting: Setting
    arch: str
    seed: int
    opt: dict = field(repr=False)
    digest: str
    earlier: str = ""  # its identity when identities held absolute paths (records written then carry it)


def run_options(setting: Setting, arch: str, seed: int, data_root: str | Path, budget: Budget,
                weights: Mapping[str, str | Path]) -> dict:
    """The options of ``setting`` for one arch and seed under a resolved budget."""
    ldt = {**setting.ldt_options(), "probe": {"num_batches": budget.probe_batches}}
    ldt["exchange"] = {"interval": budget.interval, **ldt.get("exchange", {})}
    if method_class(setting.method).warmup_rule == "required":
        ldt["warmup"] = {"steps": budget.lpft_warmup}
    return camera_run_options(
        "", data_root, RunBudget(budget.iters, budget.batch_size, budget.gt_size, budget.val_freq), arch=arch,
        method=setting.method, seed=seed, source=setting.source, targets=setting.targets,
        pretrained=weights.get(arch), ldt=ldt, tile=budget.tile or None,
    )


def plan_runs(
    tables: Sequence[str],
    data_root: str | Path,
    *,
    data_kind: str,
    archs: Sequence[str] | None = None,
    weights: Mapping[str, str | Path] | None = None,
    seeds: int = 3,
    extra_seeds: int | None = None,
    budget: Budget = Budget(),
) -> list[TableRun]:
    """Every run of every table, in table / arch / row / seed order (a run shared by tables appears once per table).

    ``data_kind`` ('drealsr' or 'synthetic') fixes the automatic budget values. Settings marked ``extra`` get
    ``extra_seeds`` seeds (default: ``seeds``). Pure: no file is read but the shipped option file, so ``--collect``
    can plan without the data.
    """
    budget = budget.resolved(data_kind)
    runs = []
    for table in tables:
        spec = TABLES[table]
        for arch in archs or spec.default_archs:
            for setting in spec.settings(arch):
                for seed in range(extra_seeds if setting.extra and extra_seeds is not None else seeds):
                    opt = run_options(setting, arch, seed, data_root, budget, weights or {})
                    digest = run_identity(opt)
                    opt["name"] = f"{arch}_{setting.slug}_seed{seed}_{digest}"
                    runs.append(TableRun(table, setting, arch, seed, opt, digest, run_identity(opt, earlier=True)))
    return runs


# ------------------------------------------------------------------------------------------------ checking inputs


def resolve_tables(names: Sequence[str]) -> list[str]:
    """Table numbers in the given order ('all' = every table we can run); unknown names are an error."""
    if not names:
        raise ReproduceError(f"no table given; choose from {', '.join(TABLES)} or all")
    tables: list[str] = []
    for name in names:
        expanded = list(TABLES) if name == "all" else [str(name).removeprefix("table")]
        for table in expanded:
            if table not in TABLES:
                words = [*(known for known in TABLES if not known.isdigit()), "all"]  # a number misspells no number
                hint = "" if table.isdigit() else did_you_mean(table, words)
                raise ReproduceError(
                    f"unknown table {name!r}{hint}; choose from {', '.join(TABLES)} or all (Tables 3, 7 and 8 are "
                    "efficiency, classification and segmentation: not camera-shift SR runs)")
            if table not in tables:
                tables.append(table)
    return tables


# The most seeds of one setting: a typo past it (--seeds 1000000000) spent minutes building run identities, memory
# growing, before any word; a thousand trainings of each setting is already far past what a table needs.
MAX_SEED_COUNT = 1000


def check_plan(budget: Budget, seeds: int | None, extra_seeds: int | None) -> None:
    """The budget and seed counts (a setting's seeds are 0 to count - 1), checked before anything is planned, built
    or trained."""
    for flag, value in (("--seeds", seeds), ("--extra-seeds", extra_seeds)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReproduceError(f"{flag} must be a positive integer, got {value!r}")
        if value - 1 > MAX_SEED:
            raise ReproduceError(f"{flag} {value}: the seeds 0 to {value - 1} go past the largest seed {MAX_SEED}")
        if value > MAX_SEED_COUNT:
            raise ReproduceError(f"{flag} {value}: more than {MAX_SEED_COUNT} runs of one setting; give at most "
                                 f"{MAX_SEED_COUNT}")
    budget.check()


def check_out(out: Path) -> None:
    """``--out`` can hold the sweep: checked before the data is built or anything is pre-trained (minutes), which
    came before the folder was first written."""
    require_output_dir("--out", out, ReproduceError)


def check_archs(archs: Sequence[str] | None) -> list[str] | None:
    """Reject architecture keys that :data:`ldt.sr.experiment.ARCHS` does not define."""
    if archs is None:
        return None
    unknown = [arch for arch in archs if arch not in ARCHS]
    if len(unknown) == 1:
        raise ReproduceError(unknown_choice("arch", unknown[0], list(ARCHS)))
    if unknown:
        raise ReproduceError(f"unknown arch {', '.join(map(repr, unknown))}; choose from {', '.join(ARCHS)}")
    return list(dict.fromkeys(archs))


def resolve_weights(entries: Sequence[str] | Mapping[str, str | Path] | None, archs: Sequence[str], *,
                    check: bool = True) -> dict[str, Path]:
    """``--weights FILE`` (one arch in the sweep) or ``--weights ARCH=FILE ...`` → {arch: absolute path}.

    With ``check``, every file must exist and be readable (before the data is built: a typo in a path must not wait
    for minutes of work); :func:`warn_random_init` warns of the archs without weights. Without it (``--collect``)
    the paths are only resolved: they enter the run identity.
    """
    try:
        given = dict(entries) if isinstance(entries, Mapping) else parse_weights(entries, archs, list(ARCHS), noun="ARCH")
    except SweepError as err:
        raise ReproduceError(str(err)) from None
    weights = {arch: resolved(path, "--weights") for arch, path in given.items()}
    if not check:
        return weights
    for arch, file in weights.items():
        if arch not in archs:
            raise ReproduceError(f"--weights {arch}={file}: arch {arch} is not in this sweep ({', '.join(archs)})")
        kind = not_a_file(file)
        if kind:
            raise ReproduceError(f"weights file for {arch}: {file} is {kind}")
        if not file.is_file():
            raise ReproduceError(f"weights file for {arch} does not exist: {file}")
        if not os.access(file, os.R_OK):
            raise ReproduceError(f"weights file for {arch}: {file} cannot be read (permission denied)")
    return weights


def warn_random_init(weights: Mapping[str, Path], archs: Sequence[str]) -> None:
    """A warning for each arch of the sweep without ``--weights``: it trains from random initialisation."""
    for arch in archs:
        if arch not in weights:
            warnings.warn(f"no --weights for {arch}: it trains from random initialisation (the paper fine-tunes "
                          "pretrained networks)", stacklevel=2)


def check_weights(weights: Mapping[str, Path]) -> None:
    """Load every weights file into its architecture now, so a mismatch is not found after hours of other runs."""
    import ldt.archs  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.sr.options import build_meta_network

    for arch, path in weights.items():
        network = {k: v for k, v in ARCHS[arch].items() if k != "type"}
        try:
            read_weights(path, model=build_meta_network(ARCH_REGISTRY.get(ARCHS[arch]["type"]), network))
        except WeightsError as err:
            raise ReproduceError(f"weights for {arch} ({ARCHS[arch]['type']}): {err}") from None


def resolved(path: str | Path, flag: str) -> Path:
    """``path`` absolute, ``~`` expanded; a ``~user`` naming no home is a ReproduceError naming ``flag``."""
    try:
        return expand_home(path).resolve()
    except ValueError as err:
        raise ReproduceError(f"{flag} {err}") from None


def resolve_data(spec: str | Path, datasets_dir: Path = DEFAULT_DATASETS, *, build: bool = True) -> tuple[Path, str]:
    """``--data`` → (root, 'synthetic' | 'drealsr'); 'synthetic' / 'synthetic_tiny' are built (cached) if ``build``.

    A path is synthetic when it holds the synthetic builder's manifest, else it is taken for DRealSR.
    """
    if str(spec) in SYNTHETIC_DATA:
        folder, tiny = SYNTHETIC_DATA[str(spec)]
        root = (datasets_dir / folder).resolve()
        if build:
            build_synthetic_cameras(root, tiny=tiny)
        return root, "synthetic"
    root = resolved(spec, "--data")
    if build and not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        hint = did_you_mean(spec, list(SYNTHETIC_DATA)) if len(Path(spec).parts) == 1 and not root.exists() else ""
        raise ReproduceError(f"data root {root} {what}{hint} (give a DRealSR root, or "
                             f"{' / '.join(map(repr, SYNTHETIC_DATA))})")
    return root, "synthetic" if (root / MANIFEST).is_file() else "drealsr"


def check_data(root: Path, runs: Sequence[TableRun], checked: Mapping[str, dict], *,
               cap_probe: bool = False) -> dict[str, int]:
    """Find the train/test splits and at least one pair of every camera the runs need (names only, no pixels), a
    batch in every run's training set (``checked``: each run's checked options, by digest) and, for a run that
    probes, the probe batches it asks in one pass over that set; returns the probe batches each run reads, by
    digest (its record says so). A larger ``--batch-size`` failed inside the first run, naming no flag; a larger
    ``--probe-batches`` probed only the batches there were, with a warning, while the record said it probed them
    all. ``cap_probe``: such a probe reads the whole pass instead of being refused (the study's fixed budget)."""
    sources = {camera for run in runs for camera in run.setting.source}
    targets = {camera for run in runs for camera in run.setting.targets}
    found = {}
    for split, cameras in (("train", sources), ("test", sources | targets)):
        ordered = [camera for camera in DREALSR_CAMERAS if camera in cameras]
        try:
            found[split] = collect_pairs(split=split, cameras=ordered, dataroot=root, check_sizes=False).pairs
        except DatasetError as err:
            raise ReproduceError(f"data root {root}: {err}") from None
    probed = {}
    for run in runs:
        opt = checked[run.digest]
        train = opt["datasets"]["train"]
        pairs = sum(pair.camera in run.setting.source for pair in found["train"])
        samples = pairs * train["dataset_enlarge_ratio"]
        where = f"{'+'.join(run.setting.source)} in {root}"
        if samples < train["batch_size_per_gpu"]:
            raise ReproduceError(f"--batch-size {train['batch_size_per_gpu']}: more than the {samples} training "
                                 f"pair(s) of {where} (run {run.opt['name']})")
        asked, per_pass = opt["ldt"]["probe"]["num_batches"], probe_batches_per_pass(opt, pairs)
        size = opt["ldt"]["probe"]["batch_size"]
        if runs_probe(method_options(opt)) and ((asked > per_pass and not cap_probe) or not per_pass):
            fix = f"give at most {per_pass}" if per_pass else f"the probe needs {size} training pairs or more"
            raise ReproduceError(f"--probe-batches {asked}: more than the {per_pass} probe batch(es) of {size} pairs "
                                 f"that one pass over the {samples} training pair(s) of {where} makes (run "
                                 f"{run.opt['name']}); {fix}")
        probed[run.digest] = min(asked, per_pass)
    return probed


# ------------------------------------------------------------------------------------------------------- records


def check_recorded_weights(records: Records, runs: Sequence[TableRun], weights: Mapping[str, Path]) -> None:
    """Refuse to reuse records made with other weights at the same path (a pre-training rebuilt with ``--force``, a
    file replaced by hand): the run identity names the weights by path, the record holds their tensor fingerprint."""
    try:
        now = {str(path): content_fingerprint(path) for path in weights.values()}
    except WeightsError as err:
        raise ReproduceError(str(err)) from None
    paths = {arch: str(path) for arch, path in weights.items()}
    stale = stale_weights(records, ((run.digest, paths.get(run.arch)) for run in runs), now)
    if stale:
        raise ReproduceError(stale)


def make_record(run: TableRun, report: dict, data_kind: str, out: Path, probed: int) -> dict:
    """The record of a finished run: its setting, budget (``probed``: the probe batches its data allowed, see
    :func:`check_data`, beside those asked), the metrics of the checkpoint selected on the source camera, the final metrics and the
    whole validation history (other selection protocols read it)."""
    best_iter = report["best"]["iter"]
    selected = next((entry["rows"] for entry in report["history"] if entry["iter"] == best_iter), None)
    if selected is None:  # no validation during training: the final network is the only candidate
        best_iter, selected = report["iterations"], report["metrics"]["rows"]
    opt, train_set = run.opt, run.opt["datasets"]["train"]
    config = run.setting.resolved()
    return {
        "table": run.table, "setting": run.setting.label, "method": run.setting.method, "dpu": config.exchange.dpu,
        "criterion": config.criterion, "unstable_ratio": config.unstable_ratio, "arch": run.arch,
        "source": list(run.setting.source), "targets": list(run.setting.targets), "seed": run.seed,
        "options_hash": run.digest, "data": data_kind, "data_root": train_set["dataroot"],
        "weights": opt["path"].get("pretrain_network_g"), "weights_fingerprint": report.get("weights_fingerprint"),
        "iters": opt["train"]["total_iter"],
        "batch_size": train_set["batch_size_per_gpu"], "gt_size": train_set["gt_size"],
        "probe_batches": probed, "probe_batches_asked": opt["ldt"]["probe"]["num_batches"],
        "interval": opt["ldt"]["exchange"]["interval"],
        "best_iter": best_iter, "metrics": selected, "final_metrics": report["metrics"]["rows"],
        "history": report["history"], "train_seconds": report["train_seconds"],
        "run_dir": str(out / "experiments" / opt["name"]), "finished_at": datetime.now(timezone.utc).isoformat(),
    }


# ---------------------------------------------------------------------------------------------------- the tables


def seed_values(records: Sequence[dict], setting: Setting, camera: str, metric: str,
                rows: Callable[[dict], dict] = lambda record: record["metrics"]) -> list[float]:
    """One value per seed: the camera's metric, or for TARGET_MEAN the mean over the row's target cameras."""
    if camera == TARGET_MEAN:
        return [recorded_mean(rows(record)[c][metric] for c in setting.targets) for record in records]
    return [recorded_number(rows(record)[camera][metric]) for record in records]


def _cell(psnr: Sequence[float], ssim: Sequence[float]) -> str:
    return f"{mean_se(psnr).format(2)} / {mean_se(ssim).format(4)}"


def _paper_cell(cell: PaperCell) -> str:
    psnr = f"{cell.psnr:.2f}" + (f" ± {cell.psnr_std:.2f}" if cell.psnr_std is not None else "")
    ssim = f"{cell.ssim:.4f}" + (f" ± {cell.ssim_std:.4f}" if cell.ssim_std is not None else "")
    return f"{psnr} / {ssim}"


def _paper_value(paper: Mapping[str, PaperCell], setting: Setting, camera: str) -> PaperCell | None:
    if camera != TARGET_MEAN:
        return paper.get(camera)
    if not paper or any(c not in paper for c in setting.targets):
        return None
    return PaperCell(statistics.fmean(paper[c].psnr for c in setting.targets),
                     statistics.fmean(paper[c].ssim for c in setting.targets))


@dataclass
class RenderedTable:
    markdown: str
    csv_header: list[str]
    csv_rows: list[list]
    missing: int


CSV_HEADER = ["table", "setting", "arch", "source", "camera", "seeds", "psnr_mean", "psnr_se", "ssim_mean", "ssim_se",
              "paper_psnr", "paper_ssim"]


def grouped(runs: Sequence[TableRun]) -> dict[tuple[str, Setting], list[TableRun]]:
    """The runs of each (arch, setting) row, in plan order."""
    rows: dict[tuple[str, Setting], list[TableRun]] = {}
    for run in runs:
        rows.setdefault((run.arch, run.setting), []).append(run)
    return rows


def render_table(spec: TableSpec, runs: Sequence[TableRun], records: Mapping[str, dict]) -> RenderedTable:
    """Markdown and CSV rows of one table from the records of its runs (missing runs show as 'not run')."""
    rows = grouped(runs)
    found = [records[run.digest] for run in runs if run.digest in records]
    cameras = [c for c in DREALSR_CAMERAS if any(c in setting.targets for _, setting in rows)]
    data_kinds = {record["data"] for record in found}
    show_paper = data_kinds == {"drealsr"}

    lines = [f"## Table {spec.number}: {spec.title}", ""]
    lines += describe_records(found)
    lines.append("Cells: PSNR (dB) / SSIM on Y, mean ± standard error over the seeds (n = seeds column; one seed: no "
                 "± ), checkpoint selected on the source camera's test pairs (training-domain validation).")
    if show_paper:
        lines.append("'paper' lines: the paper's DRealSR numbers (its own, longer training) for the same row.")
    elif "synthetic" in data_kinds:
        lines.append("Synthetic cameras: the paper's DRealSR numbers are not comparable and are omitted.")
    header = ["setting", "arch", "seeds"] + [camera_label(c) for c in cameras] + ["target mean"]
    body, csv_rows, missing = [], [], 0
    for (arch, setting), row_runs in rows.items():
        row_records = [records[run.digest] for run in row_runs if run.digest in records]
        missing += len(row_runs) - len(row_records)
        paper = paper_cells(spec, setting) if show_paper else {}
        ours, theirs = [], []
        for camera in cameras + [TARGET_MEAN]:
            if camera in setting.source:
                ours.append("(source)")
                theirs.append("")
                continue
            psnr, ssim = (seed_values(row_records, setting, camera, metric) for metric in ("psnr", "ssim"))
            reference = _paper_value(paper, setting, camera)
            ours.append(_cell(psnr, ssim) if row_records else "not run")
            theirs.append(_paper_cell(reference) if reference else "")
            csv_rows.append([spec.number, setting.label, arch, "+".join(setting.source), camera, len(psnr),
                             *csv_stat(mean_se(psnr) if psnr else None)[:2],
                             *csv_stat(mean_se(ssim) if ssim else None)[:2],
                             *((reference.psnr, reference.ssim) if reference else ("", ""))])
        body.append([setting.label, arch, f"{len(row_records)}/{len(row_runs)}", *ours])
        if paper:
            body.append([f"↳ paper ({setting.paper_row})", PAPER_ARCHS[arch], "", *theirs])
    lines += ["", markdown_table(header, body)]
    if missing:
        lines += ["", f"{missing} of {len(runs)} runs have no record yet: run the sweep (without --collect)."]
    return RenderedTable("\n".join(lines) + "\n", CSV_HEADER, csv_rows, missing)


def describe_records(found: Sequence[dict]) -> list[str]:
    """The data, budget and weights lines above a table."""
    if not found:
        return []
    first = found[0]
    kinds = sorted({record["data"] for record in found})
    weights = {record["arch"]: record["weights"] or "random init" for record in found}
    probe = f"probe {first['probe_batches']} batches"
    if any("probe_batches_asked" not in record for record in found):  # their probe_batches is the options' count
        probe += (" asked (records written before the batches read were recorded hold those asked: one pass over the "
                  "source pairs may have ended the probe sooner)")
    return [f"Data: {', '.join(kinds)} ({first['data_root']}); {first['iters']} iterations, batch "
            f"{first['batch_size']}, GT patch {first['gt_size']}, {probe}, exchange "
            f"every {first.get('interval', '?')} steps.",
            "Weights: " + ", ".join(f"{arch} = {path}" for arch, path in weights.items()) + "."]


def _render(spec: TableSpec, runs: Sequence[TableRun], records: Mapping[str, dict], out: Path) -> RenderedTable:
    return spec.render(runs, records, out) if spec.render else render_table(spec, runs, records)


# The types of the fields a table shows or computes with, where a record holds them: a value of another type often
# renders without an error ('Weights: 5 = random init', '4 iterations' from the text "4"), so it is checked.
RECORD_TYPES = {"arch": str, "data": str, "data_root": str, "weights": (str, type(None)), "iters": int,
                "batch_size": int, "gt_size": int, "probe_batches": int, "probe_batches_asked": int, "interval": int,
                "metrics": dict, "history": list}


def readable_records(out: Path, runs: Sequence[TableRun], records: Records | None = None) -> dict[str, dict]:
    """The records of ``out`` by run hash, less those whose table cannot read them alone (a field edited by hand to
    a value of another type, :data:`RECORD_TYPES`): each is skipped with a warning naming its line, so one line never
    breaks a table. ``records``: the command's :func:`run_records`, which has warned of a broken line already."""
    planned = {run.digest: run for run in runs}
    records = records if records is not None else run_records(out, runs)

    def readable(record: dict) -> None:
        run = planned.get(records.digest(record))
        if run is not None:
            wrong = wrong_type(record, RECORD_TYPES)
            if wrong:
                raise TypeError(wrong)
            _render(TABLES[run.table], [run], {run.digest: record}, out)

    return {records.digest(record): record for record in records.having(("options_hash",), readable=readable)}


def run_records(out: Path, runs: Sequence[TableRun]) -> Records:
    """``<out>/results.jsonl``, where the records of ``runs`` written under their earlier identity are theirs."""
    return Records(out / "results.jsonl", earlier={run.earlier: run.digest for run in runs if run.earlier})


def collect_results(out: Path, runs: Sequence[TableRun]) -> list[Path]:
    """Write ``table<N>.md`` and ``table<N>.csv`` for every table of ``runs`` from ``<out>/results.jsonl`` alone."""
    return write_tables(out, runs, readable_records(out, runs))


def write_tables(out: Path, runs: Sequence[TableRun], records: Mapping[str, dict]) -> list[Path]:
    """Write ``table<N>.md`` and ``table<N>.csv`` for every table of ``runs`` from ``records`` (by run hash, as
    :func:`readable_records` gives them)."""
    written = []
    for table in dict.fromkeys(run.table for run in runs):
        spec = TABLES[table]
        rendered = _render(spec, [run for run in runs if run.table == table], records, out)
        markdown, table_csv = out / f"table{table}.md", out / f"table{table}.csv"
        atomic_write_text(markdown, rendered.markdown)  # a kill or a full disk leaves the previous table whole
        atomic_write_text(table_csv, csv_text(rendered.csv_header, rendered.csv_rows))
        written += [markdown, table_csv]
    return written


SWEEP_FLAGS = "--table, --iters, --data, --weights, ... must be those of the sweep"


def check_something_to_collect(records: Records, recorded: int, planned: int, flags: str = SWEEP_FLAGS) -> None:
    """``--collect`` when no planned run has a record: an error, not tables of 'not run' over the folder's tables (a
    mistyped --out, or arguments other than the sweep's, wrote them, in a folder made for them if need be).
    ``flags``: the command's flags that make other runs (the study has no --table, --data or --weights)."""
    blocked = existing_parent(records.path.parent)  # --out, or a folder above it, that is a file
    found = (f"it holds {recorded} record(s) of other arguments: {flags}" if recorded else f"--out: {blocked} is a file, not a folder" if not blocked.is_dir()
             else "the file does not exist" if not records.path.exists() else "it holds no records")
    raise ReproduceError(f"--collect: none of the {planned} run(s) these arguments plan has a record in "
                         f"{records.path} ({found}); nothing written")


# ------------------------------------------------------------------------------------------------------ the sweep


@dataclass
class Summary:
    """What a reproduction did and wrote."""

    trained: int
    skipped: int
    records: Path
    tables: list[Path]
    seconds: float
    missing: int = 0  # planned runs without a record (after --collect, or a sweep that failed part-way)
    other_records: int = 0  # records of runs these arguments do not plan (other tables, budgets, data or weights)
    rebuilt: int = 0  # records rebuilt from a finished run's cached stage (the record was lost): nothing trained
    drawn: Path | None = None  # what ``draw`` wrote beside the tables (the study's figure)

    def counts(self) -> str:
        """'2 trained, 1 rebuilt from cache, 5 already recorded' (the rebuilt part only when there are some)."""
        rebuilt = f", {self.rebuilt} rebuilt from cache" if self.rebuilt else ""
        return f"{self.trained} trained{rebuilt}, {self.skipped} already recorded"


def reproduce(
    tables: Sequence[str],
    data: str | Path,
    *,
    archs: Sequence[str] | None = None,
    weights: Sequence[str] | Mapping[str, str | Path] | None = None,
    seeds: int = 3,
    extra_seeds: int | None = None,
    budget: Budget = Budget(),
    out: str | Path = DEFAULT_OUT,
    datasets_dir: Path = DEFAULT_DATASETS,
    collect_only: bool = False,
    progress: bool = True,
    cap_probe: bool = False,
    flags: str = SWEEP_FLAGS,
    draw: Callable[[list[TableRun], dict[str, dict]], Path] | None = None,
) -> Summary:
    """Check every input, train each planned run that has no record, then write the tables from the records.

    With ``collect_only`` nothing is built, checked or trained: the tables are regenerated from the records of the
    runs these arguments plan (the same arguments as the sweep give the same run identities). ``cap_probe``: see
    :func:`check_data`. ``flags``: what ``--collect`` names when every record is another run's. ``draw(runs,
    records)``: a figure beside the tables (the study's), from the planned runs (in plan order) and the records the
    tables were written from (by run hash; a record they skipped cannot feed it), under the same lock as the tables.
    """
    start = time.time()
    tables = resolve_tables(tables)
    archs = check_archs(archs)
    check_plan(budget, seeds, extra_seeds)
    sweep_archs = list(dict.fromkeys(archs or [a for t in tables for a in TABLES[t].default_archs]))
    out = resolved(out, "--out")
    if not collect_only:
        check_out(out)
    weight_files = resolve_weights(weights, sweep_archs, check=not collect_only)  # before the data is built
    data_root, data_kind = resolve_data(data, datasets_dir, build=not collect_only)
    if not collect_only:
        warn_random_init(weight_files, sweep_archs)
    runs = plan_runs(tables, data_root, data_kind=data_kind, archs=archs, weights=weight_files, seeds=seeds,
                     extra_seeds=extra_seeds, budget=budget)
    records = run_records(out, runs)
    unique = list({run.digest: run for run in runs}.values())
    if not collect_only:
        check_recorded_weights(records, unique, weight_files)
    done = set(records.by_hash())
    pending = [run for run in unique if run.digest not in done]
    if collect_only and len(pending) == len(unique):
        check_something_to_collect(records, len(done), len(unique), flags)
    trained, rebuilt = 0, []
    if not collect_only and pending:
        check_weights(weight_files)
        checked = {}
        for run in pending:
            try:
                checked[run.digest] = prepare_options(run.opt, is_train=True, source=f"run {run.opt['name']}")
            except OptionsError as err:
                raise ReproduceError(str(err)) from None
        probed = check_data(data_root, pending, checked, cap_probe=cap_probe)

        def record_of(run: TableRun) -> dict:
            report = run_stage(run.opt, out, label="reproduce")
            if report["cached"]:
                rebuilt.append(run.digest)
            return make_record(run, report, data_kind, out, probed[run.digest])

        planned = [PlannedRun(run.digest, run.opt["name"], lambda run=run: record_of(run)) for run in pending]
        # A second sweep on this out would clean the folders of the runs this one trains, and record them again;
        # run_pending reads the records again under the lock.
        with sweep_lock(make_dirs(out)):
            executed, _ = run_pending(planned, records, progress=progress, desc="reproduce")
        trained = executed - len(rebuilt)
    with tables_lock(out):  # a --collect racing this sweep's last record reads and writes in turn, not over it
        tabulated = readable_records(out, runs, records)  # one Records a command: each problem is warned once
        written = write_tables(out, runs, tabulated)
        drawn = draw(runs, tabulated) if draw else None
    recorded = set(records.by_hash())
    planned_digests = {run.digest for run in unique}
    return Summary(trained=trained, skipped=len(unique) - len(pending), records=records.path, tables=written,
                   seconds=time.time() - start, missing=len(planned_digests - recorded),
                   other_records=len(recorded - planned_digests), rebuilt=len(rebuilt), drawn=drawn)


# --------------------------------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="scripts/reproduce.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", action=OnceList, required=True, metavar="N",
                        help=f"paper table(s) to reproduce: {', '.join(TABLES)} or all")
    parser.add_argument("--data", required=True,
                        help="a DRealSR root, or 'synthetic' (built under datasets/ if missing; 'synthetic_tiny' for "
                             "a smoke run)")
    parser.add_argument("--arch", nargs="+", action=OnceList, default=None, metavar="ARCH",
                        help=f"architecture(s): {', '.join(ARCHS)} (default: mambair; Table 6: safmn hat mambair)")
    parser.add_argument("--weights", nargs="+", action=OnceList, default=None, metavar="FILE|ARCH=FILE",
                        help="pretrained weights: one file for a single arch, or ARCH=FILE per arch (default: "
                             "random initialisation, with a warning)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per setting, seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--extra-seeds", type=int, default=None,
                        help="runs of the costly side settings of a table (the study's DeFT, LDT-S, interval 10; "
                             "default: --seeds)")
    paper = Budget.paper()
    parser.add_argument("--iters", type=int, help=f"iterations per run (default: the paper's {paper.iters})")
    parser.add_argument("--batch-size", type=int, help=f"default: the paper's {paper.batch_size}")
    parser.add_argument("--gt-size", type=int, help=f"HR patch size (default: the paper's {paper.gt_size})")
    parser.add_argument("--probe-batches", type=int, help=f"LDT probe batches (default: {paper.probe_batches})")
    parser.add_argument("--val-freq", type=int, help="validate every N iterations (default: iters/10, at most 500)")
    parser.add_argument("--interval", type=int, help=f"LDT exchange interval (default: {paper.interval})")
    parser.add_argument("--lpft-warmup", type=int, help="LP-FT head warm-up steps (default: iters/10)")
    parser.add_argument("--tile", type=int, help=f"LR tile for validation (default: {DREALSR_TILE} on DRealSR, none "
                                                 "on synthetic; 0: none)")
    parser.add_argument("--out", type=path_flag, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--collect", action="store_true",
                        help="only rebuild the tables from <out>/results.jsonl (same arguments as the sweep)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    budget = Budget(iters=args.iters, batch_size=args.batch_size, gt_size=args.gt_size,
                    probe_batches=args.probe_batches, val_freq=args.val_freq, interval=args.interval,
                    lpft_warmup=args.lpft_warmup, tile=args.tile)
    return run_reporting_errors(lambda: report(reproduce(
        args.table, args.data, archs=args.arch, weights=args.weights, seeds=args.seeds, extra_seeds=args.extra_seeds,
        budget=budget, out=args.out, collect_only=args.collect)), errors=(ReproduceError,))


def report(summary: Summary) -> None:
    """Print a sweep's tables and what it ran."""
    for path in summary.tables:
        if path.suffix == ".md":
            print("\n" + path.read_text())
    print(f"runs: {summary.counts()}"
          + (f", {summary.missing} still without a record" if summary.missing else "")
          + f" ({summary.seconds:.1f} s)")
    print(f"records: {summary.records}"
          + (f" ({summary.other_records} more belong to other tables or arguments: --iters, --data, --weights, ... "
             "must be those of the sweep)" if summary.other_records else ""))
    print("tables: " + ", ".join(str(path) for path in summary.tables))
