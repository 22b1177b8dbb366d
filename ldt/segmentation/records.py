"""The segmentation tables, derived from the sweep's records alone (``results.jsonl``, :class:`ldt.sweep.Records`).

A run whose options hash is in the records is finished and skipped, and the tables are recomputed from them at any
time (``python -m ldt.segmentation --collect OUT``). One table per source (group of source domains): a row is a
backbone × method × configuration, a column a target domain; a cell is the mean ± standard error over seeds of the
selected network's mIoU (%) on that target; *Mean* averages each seed's mIoU over the targets, then over the seeds
that have them all. ``classes.csv`` gives the same statistics for every class's IoU.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

from ldt.core import method_class
from ldt.segmentation.classes import CLASS_NAMES
from ldt.sweep import (
    RESULTS_FILE, Records, RowKey, SeedCells, Stat, configuration, csv_stat, csv_text, mean_se, ordered_keys,
    seed_markdown, seed_rows, write_record_tables,
)

MEAN = "Mean"
# Run-specific keys left out of a configuration's identity: a table row gathers its seeds.
PER_RUN_KEYS = ("seed",)
# What a record needs to be a table cell, of which type (another task's record in the same file lacks some, a record
# edited by hand may hold another type: skipped with a warning).
TABLE_FIELDS = {"sources": list, "targets": list, "backbone": str, "method": str, "seed": int, "target_miou": dict,
                "target_results": dict, "hparams": dict}


def sweep_records(out: str | Path) -> Records:
    """The records of a sweep folder."""
    return Records(Path(out) / RESULTS_FILE)


def row_key(record: dict) -> RowKey:
    """(sources, backbone, method, configuration hash): the runs one row gathers over seeds."""
    return "+".join(record["sources"]), record["backbone"], record["method"], configuration(record, PER_RUN_KEYS)


def _gather(records: list[dict], value: Callable[[dict, str], float | None]) -> tuple[dict[RowKey, SeedCells], dict]:
    """({row key: {target: {seed: value}}}, {sources: target columns in first-seen order}); a rerun of a seed
    replaces it, a None value (a class absent from a target) is left out."""
    cells: dict[RowKey, SeedCells] = defaultdict(lambda: defaultdict(dict))
    columns: dict[str, dict[str, None]] = defaultdict(dict)
    for record in records:
        key = row_key(record)
        for target in record["targets"]:
            columns[key[0]][target] = None
            found = value(record, target)
            if found is not None:
                cells[key][target][record["seed"]] = found
    return cells, {sources: list(targets) for sources, targets in columns.items()}


def build_table(records: list[dict], order: dict[str, tuple[str, ...]] | None = None) -> list[dict]:
    """Rows with mean ± s.e. of the target mIoU per column and their *Mean*, from the records alone; a row's
    ``group`` is its source(s).

    ``order`` may give the preferred order of 'backbone' and 'method' names (others follow alphabetically).
    """
    cells, columns = _gather(records, lambda record, target: record["target_miou"][target])
    return seed_rows(cells, columns, MEAN, order)


def to_markdown(rows: list[dict]) -> str:
    """One markdown table per source: target mIoU (%) as mean ± standard error over seeds."""
    return seed_markdown(rows, MEAN, cell=Stat.format, method_label=lambda name: method_class(name).label,
                         title=lambda sources: f"Source {sources}: target-domain mIoU (%), mean ± standard error "
                                               "over the seeds (n = Seeds unless a cell says otherwise), "
                                               "training-domain validation")


def to_csv(rows: list[dict]) -> str:
    """Long format: one line per (row, column) with mean, standard error and number of seeds (mIoU in %)."""
    body = [[row["group"], row["backbone"], row["method"], row["config"], label, *csv_stat(row.get(label))]
            for row in rows for label in row["columns"] + [MEAN]]
    return csv_text(["sources", "backbone", "method", "config", "target", "miou", "se", "n"], body)


def class_csv(records: list[dict], order: dict[str, tuple[str, ...]] | None = None) -> str:
    """Per-class IoU (%) per row and target: mean, standard error and seeds (a class absent from a target's ground
    truth and predictions has no IoU and no line)."""
    found = {c for r in records for result in r["target_results"].values() for c in result["iou"]}
    # Records are stored with sorted keys: put the classes back in train-id order.
    classes = sorted(found, key=lambda c: (CLASS_NAMES.index(c) if c in CLASS_NAMES else len(CLASS_NAMES), c))
    per_class = {name: _gather(records, lambda record, target, name=name: record["target_results"][target]["iou"][name])
                 for name in classes}
    keys = ordered_keys({key for cells, _ in per_class.values() for key in cells}, order)
    body = []
    for key in keys:
        for target in next(iter(per_class.values()))[1][key[0]]:
            for name, (cells, _) in per_class.items():
                values = cells.get(key, {}).get(target)
                if values:
                    body.append([key[0], key[1], key[2], key[3][:8], target, name, *csv_stat(mean_se(values.values()))])
    return csv_text(["sources", "backbone", "method", "config", "target", "class", "iou", "se", "n"], body)


def write_tables(out: str | Path, order: dict[str, tuple[str, ...]] | None = None) -> str:
    """Recompute ``table.md``, ``table.csv`` and ``classes.csv`` in ``out`` from its records; returns the markdown."""
    def render(records: list[dict]) -> dict[str, str]:
        rows = build_table(records, order)
        return {"table.md": to_markdown(rows), "table.csv": to_csv(rows), "classes.csv": class_csv(records, order)}
    return write_record_tables(out, render, TABLE_FIELDS)["table.md"]
