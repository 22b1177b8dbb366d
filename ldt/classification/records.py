"""The classification tables, derived from the sweep's records alone (``results.jsonl``, :class:`ldt.sweep.Records`).

A run whose options hash is in the records is finished and skipped, and ``table.md`` / ``table.csv`` are recomputed
from them at any time (``python -m ldt.classification --collect OUT``). A cell is the mean ± standard error over
seeds of the test accuracy for one left-out domain (or group of domains, averaged); *Avg* averages each seed's
accuracies over all columns, then over the seeds that have them all.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ldt.sweep import (
    RESULTS_FILE, Records, RowKey, SeedCells, Stat, configuration, csv_stat, csv_text, recorded_mean, seed_markdown,
    seed_rows, write_record_tables,
)

AVERAGE = "Avg"
# Run-specific keys left out of a configuration's identity: a table row gathers its seeds and test domains.
PER_RUN_KEYS = ("seed", "test_domains")
# What a record needs to be a table cell, of which type (another task's record in the same file lacks some, a record
# edited by hand may hold another type: skipped with a warning).
TABLE_FIELDS = {"dataset": str, "backbone": str, "method": str, "seed": int, "test_domains": list, "domains": list,
                "test_accuracy": dict, "hparams": dict}


def sweep_records(out: str | Path) -> Records:
    """The records of a sweep folder."""
    return Records(Path(out) / RESULTS_FILE)


def column_labels(groups: set[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """The table column of each left-out group of one dataset: its domains joined by ``+``, except a group of several
    whose joined name is also another column's (a domain folder named ``a+b``, in records written before or after the
    group ``a`` + ``b``): that group is written ``a + b``, so the two never share a column (their seeds averaged)."""
    joined: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for group in groups:
        joined["+".join(group)].append(group)
    return {group: " + ".join(group) if len(same) > 1 and len(group) > 1 else name
            for name, same in joined.items() for group in same}


def build_table(records: list[dict], order: dict[str, tuple[str, ...]] | None = None) -> list[dict]:
    """Rows of (dataset, backbone, method, configuration) with mean ± s.e. per column, from the records alone; a
    row's ``group`` is its dataset and its columns follow the dataset's domain order.

    ``order`` may give the preferred order of 'backbone' and 'method' names (others follow alphabetically).
    """
    cells: dict[RowKey, SeedCells] = defaultdict(lambda: defaultdict(dict))
    positions: dict[str, dict[str, int]] = defaultdict(dict)  # dataset -> column label -> position of its first domain
    groups: dict[str, set[tuple[str, ...]]] = defaultdict(set)  # dataset -> its left-out groups, as stored (lists)
    for record in records:
        groups[record["dataset"]].add(tuple(record["test_domains"]))
    labels_of = {dataset: column_labels(found) for dataset, found in groups.items()}
    for record in records:
        key = (record["dataset"], record["backbone"], record["method"], configuration(record, PER_RUN_KEYS))
        accuracies = [record["test_accuracy"][d] for d in record["test_domains"]]
        label = labels_of[record["dataset"]][tuple(record["test_domains"])]
        cells[key][label][record["seed"]] = recorded_mean(accuracies)  # a rerun of a seed replaces it
        positions[record["dataset"]][label] = record["domains"].index(record["test_domains"][0])
    columns = {dataset: sorted(labels, key=lambda label: (labels[label], label)) for dataset, labels in positions.items()}
    return seed_rows(cells, columns, AVERAGE, order)


def format_cell(cell: Stat) -> str:
    return cell.format(2, scale=100)


def to_markdown(rows: list[dict]) -> str:
    """One markdown table per dataset: test accuracy (%) as mean ± standard error over seeds."""
    return seed_markdown(rows, AVERAGE, cell=format_cell, title=lambda dataset: (
        f"{dataset}: test-domain accuracy (%), mean ± standard error over the seeds (n = Seeds unless a cell says "
        "otherwise), training-domain validation"))


def to_csv(rows: list[dict]) -> str:
    """Long format: one line per (row, column) with mean, standard error and number of seeds (fractions, not %)."""
    body = [[row["group"], row["backbone"], row["method"], row["config"], label, *csv_stat(row[label])]
            for row in rows for label in row["columns"] + [AVERAGE] if row.get(label) is not None]
    return csv_text(["dataset", "backbone", "method", "config", "test_domains", "mean", "se", "n"], body)


def write_tables(out: str | Path, order: dict[str, tuple[str, ...]] | None = None) -> str:
    """Recompute ``table.md`` and ``table.csv`` in ``out`` from its records; returns the markdown."""
    def render(records: list[dict]) -> dict[str, str]:
        rows = build_table(records, order)
        return {"table.md": to_markdown(rows), "table.csv": to_csv(rows)}
    return write_record_tables(out, render, TABLE_FIELDS)["table.md"]
