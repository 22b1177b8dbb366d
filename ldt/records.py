"""Results as JSON lines (one finished run per line), shared by ``scripts/reproduce.py`` and ``ldt.classification``.

Like DomainBed's ``results.jsonl``: appending is crash-safe, and tables are always recomputed from these lines alone.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line and sync it, so a crash right after a run still leaves its record whole.

    A line cut short by an earlier crash is closed first, or the new record would be glued to it and lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as handle:
        if handle.seek(0, os.SEEK_END):
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write((json.dumps(record, sort_keys=True) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete record of a results file (none if it does not exist); a line cut short by an interrupted
    write, or anything that is not a JSON object with an ``options_hash``, is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "options_hash" in record:
            records.append(record)
        else:
            warnings.warn(f"{path}:{number}: not a complete record (an interrupted write?); ignored", stacklevel=2)
    return records
