"""Reproduce the paper's SR tables (1, 2, 4, 5, 6, 9) with one command: plan the runs, train the missing ones, collect.

Why it is split like DomainBed's sweep / ``collect_results``: every finished run appends one self-describing JSON line
to ``<out>/results.jsonl``, keyed by its options hash (:func:`ldt.experiment.options_hash`). So

- an interrupted sweep resumes by skipping every run whose hash already has a record;
- a run shared by several tables (FT on Olympus is the baseline of Tables 1, 2 and 5) is trained once;
- the tables are rebuilt from the records alone (``--collect``), never by retraining.

A table is a list of settings (method, source cameras, partition criterion, unstable ratio, DPU) per architecture,
each run for ``seeds`` seeds; a cell is the mean ± sample standard deviation over seeds of the PSNR / SSIM (Y channel)
of the checkpoint selected on the source camera's test pairs (training-domain validation). On DRealSR the paper's
numbers (``ldt/paper_tables.json``) are printed under our rows; synthetic cameras are not comparable, so not there.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import pickle
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from ldt.data.cameras import DREALSR_CAMERAS, DatasetError, camera_label, collect_pairs
from ldt.data.synthetic_cameras import MANIFEST, build_synthetic_cameras
from ldt.experiment import ARCHS, camera_run_options, options_hash, run_stage
from ldt.options import OptionsError, prepare_options
from ldt.records import append_jsonl, read_jsonl
from ldt.train import PROJECT_ROOT

PAPER_TABLES_FILE = Path(__file__).with_name("paper_tables.json")
RESULTS_FILE = "results.jsonl"
DEFAULT_OUT = PROJECT_ROOT / "experiments" / "reproduce"
DEFAULT_DATASETS = PROJECT_ROOT / "datasets"
# --data names that build (once, cached) the download-free benchmark: folder under the datasets dir, tiny geometry.
SYNTHETIC_DATA: dict[str, tuple[str, bool]] = {
    "synthetic": ("synthetic_cameras", False),
    "synthetic_tiny": ("synthetic_cameras_tiny", True),
}
# Our architecture keys that are the paper's networks, with the paper's row names (Table 6).
PAPER_ARCHS: dict[str, str] = {"safmn": "SAFMN", "hat": "HAT", "mambair": "MambaIR"}
DREALSR_TILE = 256  # LR tile for validating on DRealSR's large test images (as the shipped option files)


class ReproduceError(ValueError):
    """Bad input to a reproduction (table, arch, data, weights, budget); raised before any training starts."""


# ------------------------------------------------------------------------------------------------------ the tables


@dataclass(frozen=True)
class Setting:
    """One row of a table: what is trained (seeds aside), and the paper's row to print beside it (None: none)."""

    label: str
    method: str
    source: tuple[str, ...] = ("olympus",)
    dpu: bool = True
    criterion: str = "var"
    unstable_ratio: float = 0.4
    paper_row: str | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """Every DRealSR camera that is not a source camera."""
        return tuple(camera for camera in DREALSR_CAMERAS if camera not in self.source)

    @property
    def slug(self) -> str:
        """File-system name of what distinguishes the run (the label may be shared by different settings)."""
        parts = ["+".join(self.source), self.method]
        if self.method in ("ldt", "ldt_s"):
            parts += ["dpu" if self.dpu else "fixedW", self.criterion, f"r{self.unstable_ratio:g}"]
        return "_".join(parts)


@dataclass(frozen=True)
class TableSpec:
    """A paper table we can run: its settings for one architecture, and where its numbers are in the paper file."""

    number: str
    title: str
    paper_key: str
    default_archs: tuple[str, ...]
    settings: Callable[[str], list[Setting]]


def _mambair(arch: str, row: str) -> str | None:
    """Paper row name for tables that the paper reports for MambaIR only."""
    return row if arch == "mambair" else None


def _table1(arch: str) -> list[Setting]:
    return [
        Setting("FT (baseline)", "ft", paper_row=_mambair(arch, "Baseline")),
        Setting("LDT (fixed W)", "ldt", dpu=False, paper_row=_mambair(arch, "LDT")),
        Setting("LDT+DPU", "ldt", paper_row=_mambair(arch, "LDT+DPU")),
    ]


def _table2(arch: str) -> list[Setting]:
    # The paper's "Mean" sorts layers by mean gradient magnitude: our abs_mean (mean is the signed mean).
    criteria = (("Random", "random"), ("Mean", "abs_mean"), ("Var/Mean", "var_over_mean"), ("Var", "var"))
    return [Setting("FT (baseline)", "ft", paper_row=_mambair(arch, "Baseline"))] + [
        Setting(f"{row} ({criterion})", "ldt", criterion=criterion, paper_row=_mambair(arch, row))
        for row, criterion in criteria
    ]


def _table4(arch: str) -> list[Setting]:
    return [Setting(label, method, paper_row=_mambair(arch, f"MambaIR + {label}"))
            for label, method in (("LP-FT", "lpft"), ("DeFT", "deft"), ("LDT", "ldt"))]


def _table5(arch: str) -> list[Setting]:
    rows = ((("olympus",), "ft"), (("olympus",), "ldt"), (("pan",), "ft"), (("pan",), "ldt"),
            (("olympus", "pan"), "ldt"), (("olympus", "sony"), "ldt"), (("sony",), "ft"), (("sony", "pan"), "ldt"))
    settings = []
    for source, method in rows:
        label = " + ".join([camera_label(camera) for camera in source] + [method.upper()])
        settings.append(Setting(label, method, source=source, paper_row=_mambair(arch, label)))
    return settings


def _table6(arch: str) -> list[Setting]:
    name = PAPER_ARCHS.get(arch)
    return [Setting("FT", "ft", paper_row=name), Setting("LDT", "ldt", paper_row=name and f"{name} + LDT")]


def _table9(arch: str) -> list[Setting]:
    return [Setting(f"ratio {ratio:g}", "ldt", unstable_ratio=ratio, paper_row=_mambair(arch, f"{ratio:g}"))
            for ratio in (0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9)]


TABLES: dict[str, TableSpec] = {
    "1": TableSpec("1", "LDT components: FT vs LDT (fixed W) vs LDT+DPU", "table1_components_mambair",
                   ("mambair",), _table1),
    "2": TableSpec("2", "Partition criteria (LDT+DPU, unstable ratio 0.4)", "table2_partition_criteria_mambair",
                   ("mambair",), _table2),
    "4": TableSpec("4", "Comparison with LP-FT and DeFT (the rows we can run)", "table4_comparison",
                   ("mambair",), _table4),
    "5": TableSpec("5", "Other and multiple source cameras", "table5_source_domains_mambair", ("mambair",), _table5),
    "6": TableSpec("6", "Architectures: FT vs LDT+DPU", "table6_architectures", ("safmn", "hat", "mambair"), _table6),
    "9": TableSpec("9", "Unstable ratio (LDT+DPU, variance criterion)", "table9_unstable_ratio_mambair",
                   ("mambair",), _table9),
}


@functools.lru_cache(maxsize=None)
def paper_tables() -> dict:
    """The paper's numbers, shipped with the package (a copy of the transcription in the project's paper notes)."""
    return json.loads(PAPER_TABLES_FILE.read_text())


@dataclass(frozen=True)
class PaperCell:
    psnr: float
    ssim: float
    psnr_std: float | None = None
    ssim_std: float | None = None


def paper_cells(spec: TableSpec, setting: Setting) -> dict[str, PaperCell]:
    """The paper's numbers of ``setting``'s row, by camera key; empty if the paper has no such row."""
    if setting.paper_row is None:
        return {}
    table = paper_tables()[spec.paper_key]
    row = table["rows"].get(setting.paper_row)
    if row is None:
        return {}
    by_label = {camera_label(camera): camera for camera in DREALSR_CAMERAS}
    cells = dict(row) if isinstance(row, dict) else dict(zip(table["columns"], row))
    stds = table.get("std", {}).get(setting.paper_row)
    stds = dict(zip(table["columns"], stds)) if stds else {}
    return {by_label[column]: PaperCell(*values, *stds.get(column, (None, None))) for column, values in cells.items()}


# --------------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Budget:
    """Training budget of every run; the defaults are those of the shipped ``options/train`` files.

    ``val_freq`` None: a tenth of the iterations (at most 500). ``lpft_warmup`` None: a tenth of the iterations (the
    linear-probe stage of LP-FT). ``tile`` None: DRealSR's large test images are validated in 256 px LR tiles,
    synthetic ones whole; 0: never tile.
    """

    iters: int = 200_000
    batch_size: int = 4
    gt_size: int = 192
    probe_batches: int = 300
    val_freq: int | None = None
    interval: int = 10
    lpft_warmup: int | None = None
    tile: int | None = None

    def check(self) -> None:
        """Reject values that would only fail inside a run."""
        for name in ("iters", "batch_size", "gt_size", "probe_batches", "val_freq", "interval", "lpft_warmup"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ReproduceError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.gt_size % 4:
            raise ReproduceError(f"--gt-size must be a multiple of the scale 4, got {self.gt_size}")
        if self.tile is not None and self.tile < 0:
            raise ReproduceError(f"--tile must be >= 0, got {self.tile}")

    def resolved(self, data_kind: str) -> Budget:
        """The budget with every automatic value made explicit (so it enters the options hash as used)."""
        tenth = max(1, self.iters // 10)
        tile = self.tile if self.tile is not None else (DREALSR_TILE if data_kind == "drealsr" else 0)
        return replace(self, val_freq=self.val_freq or min(500, tenth), lpft_warmup=self.lpft_warmup or tenth,
                       tile=tile)


@dataclass
class PlannedRun:
    """One training of one table row: its (validatable) options and their hash, which identifies its record."""

    table: str
    setting: Setting
    arch: str
    seed: int
    opt: dict = field(repr=False)
    digest: str


def plan_runs(
    tables: Sequence[str],
    data_root: str | Path,
    *,
    data_kind: str,
    archs: Sequence[str] | None = None,
    weights: Mapping[str, str | Path] | None = None,
    seeds: int = 3,
    budget: Budget = Budget(),
) -> list[PlannedRun]:
    """Every run of every table, in table / arch / row / seed order (a run shared by tables appears once per table).

    ``data_kind`` ('drealsr' or 'synthetic') fixes the automatic budget values. Pure: no file is read, so
    ``--collect`` can plan without the data.
    """
    weights = weights or {}
    budget = budget.resolved(data_kind)
    runs = []
    for table in tables:
        spec = TABLES[table]
        for arch in archs or spec.default_archs:
            for setting in spec.settings(arch):
                for seed in range(seeds):
                    opt = camera_run_options(
                        "", data_root, arch=arch, method=setting.method, source=setting.source,
                        targets=setting.targets, total_iter=budget.iters, batch_size=budget.batch_size,
                        gt_size=budget.gt_size, seed=seed, pretrained=weights.get(arch),
                        criterion=setting.criterion, unstable_ratio=setting.unstable_ratio, dpu=setting.dpu,
                        interval=budget.interval, probe_batches=budget.probe_batches, val_freq=budget.val_freq,
                        warmup_steps=budget.lpft_warmup if setting.method == "lpft" else 0,
                        tile=budget.tile or None,
                    )
                    digest = options_hash(opt)
                    opt["name"] = f"{arch}_{setting.slug}_seed{seed}_{digest}"
                    runs.append(PlannedRun(table, setting, arch, seed, opt, digest))
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
                raise ReproduceError(
                    f"unknown table {name!r}; choose from {', '.join(TABLES)} or all (Tables 3, 7 and 8 are "
                    "efficiency, classification and segmentation: not camera-shift SR runs)")
            if table not in tables:
                tables.append(table)
    return tables


def check_archs(archs: Sequence[str] | None) -> list[str] | None:
    """Reject architecture keys that :data:`ldt.experiment.ARCHS` does not define."""
    if archs is None:
        return None
    unknown = [arch for arch in archs if arch not in ARCHS]
    if unknown:
        raise ReproduceError(f"unknown arch {', '.join(map(repr, unknown))}; choose from {', '.join(ARCHS)}")
    return list(dict.fromkeys(archs))


def parse_weights(
    entries: Sequence[str] | Mapping[str, str | Path] | None, archs: Sequence[str], *, check: bool = True
) -> dict[str, Path]:
    """``--weights FILE`` (one arch in the sweep) or ``--weights ARCH=FILE ...`` → {arch: absolute path}.

    With ``check``, every file must exist and every arch must be in the sweep, and archs without weights are warned
    about (they train from random init). Without it (``--collect``) the paths are only resolved: they enter the hash.
    """
    if isinstance(entries, Mapping):
        pairs = list(entries.items())
    else:
        pairs = []
        for entry in entries or []:
            arch, sep, path = str(entry).partition("=")
            if sep and arch in ARCHS:
                pairs.append((arch, path))
            elif sep and not Path(entry).exists():
                raise ReproduceError(f"--weights {entry}: unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
            elif len(archs) == 1:
                pairs.append((archs[0], entry))
            else:
                raise ReproduceError(f"--weights {entry}: this sweep has several archs ({', '.join(archs)}); "
                                     "give one ARCH=FILE per arch")
    weights = {arch: Path(path).expanduser().resolve() for arch, path in pairs}
    if not check:
        return weights
    for arch, file in weights.items():
        if arch not in archs:
            raise ReproduceError(f"--weights {arch}={file}: arch {arch} is not in this sweep ({', '.join(archs)})")
        if not file.is_file():
            raise ReproduceError(f"weights file for {arch} does not exist: {file}")
    for arch in archs:
        if arch not in weights:
            warnings.warn(f"no --weights for {arch}: it trains from random initialisation (the paper fine-tunes "
                          "pretrained networks)", stacklevel=2)
    return weights


def check_weights(weights: Mapping[str, Path]) -> None:
    """Load every weights file into its architecture now, so a mismatch is not found after hours of other runs."""
    import ldt.archs  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    from ldt.archs.arch_util import load_pretrained

    for arch, path in weights.items():
        network = {k: v for k, v in ARCHS[arch].items() if k != "type"}
        try:
            load_pretrained(ARCH_REGISTRY.get(ARCHS[arch]["type"])(**network), path)
        except (RuntimeError, KeyError, OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ReproduceError(f"weights file {path} does not load into {arch} ({ARCHS[arch]['type']}): "
                                 f"{first}") from None


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
    root = Path(spec).expanduser().resolve()
    if build and not root.is_dir():
        raise ReproduceError(f"data root {root} does not exist (give a DRealSR root, or 'synthetic')")
    return root, "synthetic" if (root / MANIFEST).is_file() else "drealsr"


def check_data(root: Path, runs: Sequence[PlannedRun]) -> None:
    """Find the train/test splits and at least one pair of every camera the runs need (names only, no pixels)."""
    sources = {camera for run in runs for camera in run.setting.source}
    targets = {camera for run in runs for camera in run.setting.targets}
    for split, cameras in (("train", sources), ("test", sources | targets)):
        ordered = [camera for camera in DREALSR_CAMERAS if camera in cameras]
        try:
            collect_pairs(split=split, cameras=ordered, dataroot=root, check_sizes=False)
        except DatasetError as err:
            raise ReproduceError(f"data root {root}: {err}") from None


# ------------------------------------------------------------------------------------------------------- records


def make_record(run: PlannedRun, report: dict, data_kind: str, out: Path) -> dict:
    """The record of a finished run; metrics are those of the checkpoint selected on the source camera."""
    best_iter = report["best"]["iter"]
    selected = next((entry["rows"] for entry in report["history"] if entry["iter"] == best_iter), None)
    if selected is None:  # no validation during training: the final network is the only candidate
        best_iter, selected = report["iterations"], report["metrics"]["rows"]
    opt = run.opt
    return {
        "table": run.table, "setting": run.setting.label, "method": run.setting.method, "dpu": run.setting.dpu,
        "criterion": run.setting.criterion, "unstable_ratio": run.setting.unstable_ratio, "arch": run.arch,
        "source": list(run.setting.source), "targets": list(run.setting.targets), "seed": run.seed,
        "options_hash": run.digest, "data": data_kind, "data_root": opt["datasets"]["train"]["dataroot"],
        "weights": opt["path"].get("pretrain_network_g"), "iters": opt["train"]["total_iter"],
        "batch_size": opt["datasets"]["train"]["batch_size_per_gpu"], "gt_size": opt["datasets"]["train"]["gt_size"],
        "probe_batches": opt["ldt"]["probe"]["num_batches"], "best_iter": best_iter, "metrics": selected,
        "final_metrics": report["metrics"]["rows"], "train_seconds": report["train_seconds"],
        "run_dir": str(out / "experiments" / opt["name"]), "finished_at": datetime.now(timezone.utc).isoformat(),
    }


# ---------------------------------------------------------------------------------------------------- the tables


def format_stat(values: Sequence[float], digits: int) -> str:
    """``mean ± sample std`` over seeds (just the value for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _cell(psnr: Sequence[float], ssim: Sequence[float]) -> str:
    return f"{format_stat(psnr, 2)} / {format_stat(ssim, 4)}"


def _paper_cell(cell: PaperCell) -> str:
    psnr = f"{cell.psnr:.2f}" + (f" ± {cell.psnr_std:.2f}" if cell.psnr_std is not None else "")
    ssim = f"{cell.ssim:.4f}" + (f" ± {cell.ssim_std:.4f}" if cell.ssim_std is not None else "")
    return f"{psnr} / {ssim}"


def _stat_columns(values: Sequence[float]) -> list:
    if not values:
        return ["", ""]
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else ""]


def _seed_values(records: Sequence[dict], setting: Setting, camera: str, metric: str) -> list[float]:
    """One value per seed: the camera's metric, or for TARGET_MEAN the mean over the row's target cameras."""
    if camera == TARGET_MEAN:
        return [statistics.fmean(record["metrics"][c][metric] for c in setting.targets) for record in records]
    return [record["metrics"][camera][metric] for record in records]


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
    csv_rows: list[list]
    missing: int


TARGET_MEAN = "target_mean"
CSV_HEADER = ["table", "setting", "arch", "source", "camera", "seeds", "psnr_mean", "psnr_std", "ssim_mean",
              "ssim_std", "paper_psnr", "paper_ssim"]


def render_table(spec: TableSpec, runs: Sequence[PlannedRun], records: Mapping[str, dict]) -> RenderedTable:
    """Markdown and CSV rows of one table from the records of its runs (missing runs show as 'not run')."""
    rows: dict[tuple[str, Setting], list[PlannedRun]] = {}
    for run in runs:
        rows.setdefault((run.arch, run.setting), []).append(run)
    found = [records[run.digest] for run in runs if run.digest in records]
    cameras = [c for c in DREALSR_CAMERAS if any(c in setting.targets for _, setting in rows)]
    data_kinds = {record["data"] for record in found}
    show_paper = data_kinds == {"drealsr"}

    lines = [f"## Table {spec.number}: {spec.title}", ""]
    if found:
        first = found[0]
        lines.append(f"Data: {', '.join(sorted(data_kinds))} ({first['data_root']}); {first['iters']} iterations, "
                     f"batch {first['batch_size']}, GT patch {first['gt_size']}, probe {first['probe_batches']} "
                     "batches.")
        weights = {record["arch"]: record["weights"] or "random init" for record in found}
        lines.append("Weights: " + ", ".join(f"{arch} = {path}" for arch, path in weights.items()) + ".")
    lines.append("Cells: PSNR (dB) / SSIM on Y, mean ± sample std over seeds, checkpoint selected on the source "
                 "camera's test pairs.")
    if show_paper:
        lines.append("'paper' lines: the paper's DRealSR numbers (its own, longer training) for the same row.")
    elif "synthetic" in data_kinds:
        lines.append("Synthetic cameras: the paper's DRealSR numbers are not comparable and are omitted.")
    lines += ["", "| setting | arch | seeds | " + " | ".join(camera_label(c) for c in cameras) + " | target mean |",
              "|---|---|---|" + "---|" * (len(cameras) + 1)]

    csv_rows, missing = [], 0
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
            psnr, ssim = (_seed_values(row_records, setting, camera, metric) for metric in ("psnr", "ssim"))
            reference = _paper_value(paper, setting, camera)
            ours.append(_cell(psnr, ssim) if row_records else "not run")
            theirs.append(_paper_cell(reference) if reference else "")
            csv_rows.append([spec.number, setting.label, arch, "+".join(setting.source), camera, len(row_records),
                             *_stat_columns(psnr), *_stat_columns(ssim),
                             *((reference.psnr, reference.ssim) if reference else ("", ""))])
        lines.append(f"| {setting.label} | {arch} | {len(row_records)}/{len(row_runs)} | " + " | ".join(ours) + " |")
        if paper:
            lines.append(f"| ↳ paper ({setting.paper_row}) | {PAPER_ARCHS[arch]} | | " + " | ".join(theirs) + " |")
    if missing:
        lines += ["", f"{missing} of {len(runs)} runs have no record yet: run the sweep (without --collect)."]
    return RenderedTable("\n".join(lines) + "\n", csv_rows, missing)


def collect_results(out: Path, runs: Sequence[PlannedRun]) -> list[Path]:
    """Write ``table<N>.md`` and ``table<N>.csv`` for every table of ``runs`` from ``<out>/results.jsonl`` alone."""
    records = {record["options_hash"]: record for record in read_jsonl(out / RESULTS_FILE)}
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for table in dict.fromkeys(run.table for run in runs):
        rendered = render_table(TABLES[table], [run for run in runs if run.table == table], records)
        markdown, table_csv = out / f"table{table}.md", out / f"table{table}.csv"
        markdown.write_text(rendered.markdown)
        with open(table_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_HEADER)
            writer.writerows(rendered.csv_rows)
        written += [markdown, table_csv]
    return written


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


def reproduce(
    tables: Sequence[str],
    data: str | Path,
    *,
    archs: Sequence[str] | None = None,
    weights: Sequence[str] | Mapping[str, str | Path] | None = None,
    seeds: int = 3,
    budget: Budget = Budget(),
    out: str | Path = DEFAULT_OUT,
    datasets_dir: Path = DEFAULT_DATASETS,
    collect_only: bool = False,
    progress: bool = True,
) -> Summary:
    """Check every input, train each planned run that has no record, then write the tables from the records.

    With ``collect_only`` nothing is built, checked or trained: the tables are regenerated from the records of the
    runs these arguments plan (the same arguments as the sweep give the same options hashes).
    """
    start = time.time()
    tables = resolve_tables(tables)
    archs = check_archs(archs)
    if not isinstance(seeds, int) or seeds < 1:
        raise ReproduceError(f"--seeds must be a positive integer, got {seeds!r}")
    budget.check()
    sweep_archs = list(dict.fromkeys(archs or [a for t in tables for a in TABLES[t].default_archs]))
    out = Path(out).expanduser().resolve()
    data_root, data_kind = resolve_data(data, datasets_dir, build=not collect_only)
    weight_files = parse_weights(weights, sweep_archs, check=not collect_only)
    runs = plan_runs(tables, data_root, data_kind=data_kind, archs=archs, weights=weight_files, seeds=seeds,
                     budget=budget)

    results = out / RESULTS_FILE
    unique = list({run.digest: run for run in runs}.values())
    done = {record["options_hash"] for record in read_jsonl(results)}
    pending = [run for run in unique if run.digest not in done]
    if not collect_only and pending:
        check_weights(weight_files)
        for run in pending:
            try:
                prepare_options(run.opt, is_train=True, source=f"run {run.opt['name']}")
            except OptionsError as err:
                raise ReproduceError(str(err)) from None
        check_data(data_root, pending)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(unique), initial=len(unique) - len(pending), desc="reproduce", unit="run",
                   disable=not progress, dynamic_ncols=True)
        for run in pending:
            bar.set_postfix_str(run.opt["name"])
            report = run_stage(run.opt, out, label="reproduce")
            append_jsonl(results, make_record(run, report, data_kind, out))
            bar.update(1)
        bar.close()
    written = collect_results(out, runs)
    recorded = {record["options_hash"] for record in read_jsonl(results)}
    planned = {run.digest for run in unique}
    return Summary(trained=0 if collect_only else len(pending), skipped=len(unique) - len(pending), records=results,
                   tables=written, seconds=time.time() - start, missing=len(planned - recorded),
                   other_records=len(recorded - planned))


# --------------------------------------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/reproduce.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", required=True, metavar="N",
                        help=f"paper table(s) to reproduce: {', '.join(TABLES)} or all")
    parser.add_argument("--data", required=True,
                        help="a DRealSR root, or 'synthetic' (built under datasets/ if missing; 'synthetic_tiny' for "
                             "a smoke run)")
    parser.add_argument("--arch", nargs="+", default=None, metavar="ARCH",
                        help=f"architecture(s): {', '.join(ARCHS)} (default: mambair; Table 6: safmn hat mambair)")
    parser.add_argument("--weights", nargs="+", default=None, metavar="FILE|ARCH=FILE",
                        help="pretrained weights: one file for a single arch, or ARCH=FILE per arch (default: "
                             "random initialisation, with a warning)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per setting, seeds 0..N-1 (default: %(default)s)")
    defaults = Budget()
    parser.add_argument("--iters", type=int, default=defaults.iters, help="iterations per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    parser.add_argument("--gt-size", type=int, default=defaults.gt_size, help="HR patch size (default: %(default)s)")
    parser.add_argument("--probe-batches", type=int, default=defaults.probe_batches,
                        help="LDT probe batches (default: %(default)s)")
    parser.add_argument("--val-freq", type=int, default=None,
                        help="validate every N iterations (default: iters/10, at most 500)")
    parser.add_argument("--interval", type=int, default=defaults.interval,
                        help="LDT exchange interval (default: %(default)s)")
    parser.add_argument("--lpft-warmup", type=int, default=None, help="LP-FT head warm-up steps (default: iters/10)")
    parser.add_argument("--tile", type=int, default=None,
                        help=f"LR tile for validation (default: {DREALSR_TILE} on DRealSR, none on synthetic; 0: none)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--collect", action="store_true",
                        help="only rebuild the tables from <out>/results.jsonl (same arguments as the sweep)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    budget = Budget(iters=args.iters, batch_size=args.batch_size, gt_size=args.gt_size,
                    probe_batches=args.probe_batches, val_freq=args.val_freq, interval=args.interval,
                    lpft_warmup=args.lpft_warmup, tile=args.tile)
    try:
        summary = reproduce(args.table, args.data, archs=args.arch, weights=args.weights, seeds=args.seeds,
                            budget=budget, out=args.out, collect_only=args.collect)
    except (ReproduceError, OptionsError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in summary.tables:
        if path.suffix == ".md":
            print("\n" + path.read_text())
    print(f"runs: {summary.trained} trained, {summary.skipped} already recorded"
          + (f", {summary.missing} still without a record" if summary.missing else "")
          + f" ({summary.seconds:.1f} s)")
    print(f"records: {summary.records}"
          + (f" ({summary.other_records} more belong to other tables or arguments: --iters, --data, --weights, ... "
             "must be those of the sweep)" if summary.other_records else ""))
    print("tables: " + ", ".join(str(path) for path in summary.tables))
    return 0
