"""Run records (one JSON line per finished run) and the result tables derived from them alone.

``results.jsonl`` is the only state of a sweep: a run whose options hash is in it is finished and skipped, and
``table.md`` / ``table.csv`` are recomputed from it at any time (``python -m ldt.classification --collect OUT``).
A table cell is the mean ± standard error over seeds of the test accuracy for one left-out domain (or group of
domains, averaged); *Avg* averages each seed's accuracies over all columns, then over the seeds that have them all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path

from ldt.records import append_jsonl, read_jsonl

RESULTS = "results.jsonl"
AVERAGE = "Avg"
# Run-specific keys left out of a configuration's identity: a table row gathers its seeds and test domains.
PER_RUN_KEYS = ("seed", "test_domains")


def options_hash(hparams: dict) -> str:
    """A short stable hash of a run's options (key order does not matter)."""
    return hashlib.sha256(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:16]


def append_record(out: str | Path, record: dict) -> None:
    """Append one run's record to ``out/results.jsonl`` (crash-safe, see :func:`ldt.records.append_jsonl`)."""
    append_jsonl(Path(out) / RESULTS, record)


def load_records(out: str | Path) -> list[dict]:
    """Every complete record of ``out/results.jsonl``."""
    return read_jsonl(Path(out) / RESULTS)


def finished(out: str | Path) -> set[str]:
    """Options hashes of the runs recorded in ``out``."""
    return {record["options_hash"] for record in load_records(out)}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


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
        config = options_hash({k: v for k, v in record["hparams"].items() if k not in PER_RUN_KEYS})
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
            row[label] = mean_se(values) + (len(values),) if values else None
        complete = [s for s in seeds if all(s in by_column.get(label, {}) for label in labels)]
        averages = [sum(by_column[label][s] for label in labels) / len(labels) for s in complete]
        row[AVERAGE] = mean_se(averages) + (len(averages),) if averages else None
        rows.append(row)
    return rows


def format_cell(cell: tuple[float, float, int] | None) -> str:
    return "–" if cell is None else f"{100 * cell[0]:.2f} ± {100 * cell[1]:.2f}"


def to_markdown(rows: list[dict]) -> str:
    """One markdown table per dataset: test accuracy (%) as mean ± standard error over seeds."""
    sections = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [row for row in rows if row["dataset"] == dataset]
        labels = subset[0]["columns"] + [AVERAGE]
        names = [(row["backbone"], row["method"]) for row in subset]
        show_config = len(set(names)) < len(names)  # several configurations of one method: tell them apart
        header = ["Backbone", "Method"] + (["Config"] if show_config else []) + ["Seeds"] + labels
        lines = [f"### {dataset}: test-domain accuracy (%), mean ± s.e. over seeds, training-domain validation", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for row in subset:
            values = [row["backbone"], row["method"]] + ([row["config"]] if show_config else []) + [str(row["seeds"])]
            values += [format_cell(row.get(label)) for label in labels]
            lines.append("| " + " | ".join(values) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def to_csv(rows: list[dict]) -> str:
    """Long format: one line per (row, column) with mean, standard error and number of seeds (fractions, not %)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "backbone", "method", "config", "test_domains", "mean", "se", "n"])
    for row in rows:
        for label in row["columns"] + [AVERAGE]:
            cell = row.get(label)
            if cell is not None:
                writer.writerow([row["dataset"], row["backbone"], row["method"], row["config"], label, f"{cell[0]:.6f}", f"{cell[1]:.6f}", cell[2]])
    return buffer.getvalue()


def write_tables(out: str | Path, order: dict[str, tuple[str, ...]] | None = None) -> str:
    """Recompute ``table.md`` and ``table.csv`` in ``out`` from its records; returns the markdown."""
    out = Path(out)
    records = load_records(out)
    if not records:
        raise FileNotFoundError(f"no records in {out / RESULTS}: nothing to tabulate")
    rows = build_table(records, order)
    markdown = to_markdown(rows)
    (out / "table.md").write_text(markdown)
    (out / "table.csv").write_text(to_csv(rows))
    return markdown
