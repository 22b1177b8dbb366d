"""The paper's SR tables we can run (1, 2, 4, 5, 6, 9): their rows as settings, and the paper's numbers for each row.

A table is a list of settings (method, source cameras, the ``ldt:`` options the row changes) per architecture; the
engine that trains and tabulates them is :mod:`ldt.sr.reproduce`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ldt.core import MethodConfig
from ldt.data.cameras import DREALSR_CAMERAS, camera_label

PAPER_TABLES_FILE = Path(__file__).resolve().parents[1] / "paper_tables.json"
# Our architecture keys that are the paper's networks, with the paper's row names (Table 6).
PAPER_ARCHS: dict[str, str] = {"safmn": "SAFMN", "hat": "HAT", "mambair": "MambaIR"}


@dataclass(frozen=True)
class Setting:
    """One row of a table: what is trained (seeds aside), and the paper's row to print beside it (None: none)."""

    label: str
    method: str
    source: tuple[str, ...] = ("olympus",)
    dpu: bool | None = None  # None: the method's default (ldt:exchange:dpu)
    criterion: str | None = None  # None: ldt:criterion's default
    unstable_ratio: float | None = None  # None: ldt:unstable_ratio's default
    interval: int | None = None  # None: the sweep's --interval
    paper_row: str | None = None
    extra: bool = False  # trained with the sweep's --extra-seeds seeds instead of --seeds (a costly side setting)

    @property
    def targets(self) -> tuple[str, ...]:
        """Every DRealSR camera that is not a source camera."""
        return tuple(camera for camera in DREALSR_CAMERAS if camera not in self.source)

    def ldt_options(self) -> dict:
        """The ``ldt:`` options this setting sets besides the method (the rest keep the schema's defaults)."""
        options: dict = {}
        if self.criterion is not None:
            options["criterion"] = self.criterion
        if self.unstable_ratio is not None:
            options["unstable_ratio"] = self.unstable_ratio
        exchange = {k: v for k, v in (("dpu", self.dpu), ("interval", self.interval)) if v is not None}
        if exchange:
            options["exchange"] = exchange
        return options

    def resolved(self) -> MethodConfig:
        """The setting's method options with every default filled in."""
        return MethodConfig.model_validate({"method": self.method, **self.ldt_options()})

    @property
    def slug(self) -> str:
        """File-system name of what distinguishes the run (the label may be shared by different settings)."""
        parts = ["+".join(self.source), self.method]
        parts += [f"{key}-{value:g}" if isinstance(value, float) else f"{key}-{value}"
                  for key, value in (("criterion", self.criterion), ("ratio", self.unstable_ratio),
                                     ("dpu", None if self.dpu is None else str(self.dpu).lower()),
                                     ("interval", self.interval)) if value is not None]
        return "_".join(parts)


@dataclass(frozen=True)
class TableSpec:
    """A paper table we can run: its settings for one architecture, and where its numbers are in the paper file."""

    number: str
    title: str
    paper_key: str | None
    default_archs: tuple[str, ...]
    settings: Callable[[str], list[Setting]]
    render: Callable | None = None  # (runs, records, out) -> RenderedTable; None: the paper-table layout


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


def _study(arch: str) -> list[Setting]:
    """What LDT buys (README "What LDT buys here"): LDT against FT and FT-EMA, the EMA control with LDT's smoothing."""
    return [
        Setting("FT", "ft"), Setting("FT-EMA", "ft_ema"), Setting("LDT (fixed W)", "ldt", dpu=False),
        Setting("LDT+DPU", "ldt"), Setting("DeFT", "deft", extra=True), Setting("LDT-S", "ldt_s", extra=True),
        Setting("LDT+DPU, exchange every 10", "ldt", interval=10, extra=True),
    ]


def _render_study(runs, records, out):
    from ldt.sr.study import render_study

    return render_study(runs, records, out)


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
    "study": TableSpec("study", "What LDT buys: controls, selection protocols, paired differences to FT", None,
                       ("safmn_tiny",), _study, render=_render_study),
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
