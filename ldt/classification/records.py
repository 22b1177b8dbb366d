"""The classification tables, derived from the sweep's records alone (``results.jsonl``, :class:`ldt.sweep.Records`).

A run whose options hash is in the records is finished and skipped, and ``table.md`` / ``table.csv`` are recomputed
from them at any time (``python -m ldt.classification --collect OUT``). A cell is the mean ± standard error over
seeds of the test accuracy for one left-out domain (or group of domains, averaged); *Avg* averages each seed's
accuracies over all columns, then over the seeds that have them all.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ldt.sweep import RESULTS_FILE, Records, Stat, csv_text, markdown_table, mean_se, run_hash

AVERAGE = "Avg"
# Run-specific keys left out of a configuration's identity: a table row gathers its seeds and test domains.
PER_RUN_KEYS = ("seed", "test_domains")


def sweep_records(out: str | Path) -> Records:
    """The records of a sweep folder."""
    return Records(Path(out) / RESULTS_FILE)


def column_label(record: dict) -> str:
    return "+".join(record["test_domains"])


def build_table(records: list[dict], order: dict[str, tuple[str, ...]] | None = None) -> list[dict]:
    """Rows of (dataset, backbone, method, configuration) with mean ± s.e. per column, from the records alone.

    ``order`` may give the preferred order of 'backbone' and 'method' names (others follow alphabetically).
    """
    order = order or {}
    cells: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    columns: dict[str, dict[str, int]] = defaultdict(dict)  # dataset -> column label -> position of its first domain
    for record in records:
        config = run_hash({k: v for k, v in record["hparams"].items() if k not in PER_RUN_KEYS})
        key = (record["dataset"], record["backbone"], record["method"], config)
        accuracies = [record["test_accuracy"][d] for d in record["test_domains"]]
        label = column_label(record)
        cells[key][label][record["seed"]] = sum(accuracies) / len(accuracies)  # a rerun of a seed replaces it
        columns[record["dataset"]][label] = record["domains"].index(record["test_domains"][0])

    def rank(kind: str, name: str) -> tuple:
        preferred = order.get(kind, ())
        return (preferred.index(name) if name in preferred else len(preferred), name)

    rows = []
    for key in sorted(cells, key=lambda k: (k[0], rank("backbone", k[1]), rank("method", k[2]), k[3])):
        dataset, backbone, method, config = key
        labels = sorted(columns[dataset], key=lambda label: (columns[dataset][label], label))
        by_column = cells[key]
        row = {"dataset": dataset, "backbone": backbone, "method": method, "config": config[:8], "columns": labels}
        seeds = sorted({seed for per_seed in by_column.values() for seed in per_seed})
        row["seeds"] = len(seeds)
        for label in labels:
            values = list(by_column.get(label, {}).values())
            row[label] = mean_se(values) if values else None
        complete = [s for s in seeds if all(s in by_column.get(label, {}) for label in labels)]
        averages = [sum(by_column[label][s] for label in labels) / len(labels) for s in complete]
        row[AVERAGE] = mean_se(averages) if averages else None
        rows.append(row)
    return rows


def format_cell(cell: Stat | None) -> str:
    return "–" if cell is None else cell.format(2, scale=100)


def to_markdown(rows: list[dict]) -> str:
    """One markdown table per dataset: test accuracy (%) as mean ± standard error over seeds."""
    sections = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [row for row in rows if row["dataset"] == dataset]
        labels = subset[0]["columns"] + [AVERAGE]
        names = [(row["backbone"], row["method"]) for row in subset]
        show_config = len(set(names)) < len(names)  # several configurations of one method: tell them apart
        header = ["Backbone", "Method"] + (["Config"] if show_config else []) + ["Seeds"] + labels
        body = [[row["backbone"], row["method"], *([row["config"]] if show_config else []), str(row["seeds"]),
                 *(format_cell(row.get(label)) for label in labels)] for row in subset]
        title = (f"### {dataset}: test-domain accuracy (%), mean ± standard error over the seeds (n = Seeds), "
                 "training-domain validation")
        sections.append(title + "\n\n" + markdown_table(header, body))
    return "\n\n".join(sections) + "\n"


def to_csv(rows: list[dict]) -> str:
    """Long format: one line per (row, column) with mean, standard error and number of seeds (fractions, not %)."""
    body = []
    for row in rows:
        for label in row["columns"] + [AVERAGE]:
            cell = row.get(label)
            if cell is not None:
                body.append([row["dataset"], row["backbone"], row["method"], row["config"], label, f"{cell.mean:.6f}",
                             "" if cell.se is None else f"{cell.se:.6f}", cell.n])
    return csv_text(["dataset", "backbone", "method", "config", "test_domains", "mean", "se", "n"], body)


def write_tables(out: str | Path, order: dict[str, tuple[str, ...]] | None = None) -> str:
    """Recompute ``table.md`` and ``table.csv`` in ``out`` from its records; returns the markdown."""
    out = Path(out)
    found = sweep_records(out).all()
    if not found:
        raise FileNotFoundError(f"no records in {out / RESULTS_FILE}: nothing to tabulate")
    rows = build_table(found, order)
    markdown = to_markdown(rows)
    (out / "table.md").write_text(markdown)
    (out / "table.csv").write_text(to_csv(rows))
    return markdown
