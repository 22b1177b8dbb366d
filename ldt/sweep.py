"""One sweep engine for every task (SR tables, classification, segmentation): run identity, records, skip-finished,
weights parsing, statistics and tables.

Like DomainBed's sweep / ``collect_results``: every finished run appends one self-describing JSON line to
``results.jsonl``, keyed by the hash of the options that define it (:func:`run_hash`). So an interrupted sweep
resumes by skipping every run that already has a record, a run shared by several tables is trained once, and
tables are always recomputed from the records alone, never by retraining.

Statistics, one convention for all tasks: a cell is the mean ± standard error over seeds (sample standard deviation,
ddof 1, over √n) with n stated; a comparison of two settings is the paired difference over the seeds both have
(same seed = same data order and initialisation), with a 95 % Student-t interval.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import hashlib
import io
import json
import math
import numbers
import os
import statistics
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ldt.cli import number_back, read_json, strict_json

RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".sweep.lock"
TABLES_LOCK_FILE = ".tables.lock"


class SweepError(ValueError):
    """Bad input to a sweep (weights, seeds, ...), found before any run starts; the message names the culprit."""


def sweep_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``out`` for a sweep: a second sweep on the same folder would train the same runs (and
    append the same records) again. The lock goes with the process, so a killed sweep never leaves one."""
    from ldt.atomic import exclusive_lock

    return exclusive_lock(out / LOCK_FILE, busy=f"another sweep is running on {out} ({{holder}}, lock {{lock}}); "
                                                "wait for it, or give another --out")


def tables_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """Held while the tables of ``out`` are computed from its records and written (and anything drawn beside them):
    a ``--collect`` that read the records before a sweep's last record was appended would otherwise write its older
    tables over the sweep's. Short, so a second writer waits (said on stderr) rather than being refused; whichever
    writes last read the records last. Separate from :func:`sweep_lock`, which a sweep holds for hours."""
    from ldt.atomic import exclusive_lock

    return exclusive_lock(out / TABLES_LOCK_FILE)


# ---------------------------------------------------------------------------------------------------------- identity


def run_hash(options: Mapping) -> str:
    """A short stable hash of the options that define a run (key order does not matter)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The checkout this package runs from (realpath): data and weights inside it are named relative to it in run
# identities, so a moved or copied checkout (datasets, weights and results together) keeps its records.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_MARK = "<project>"


def identity_path(path: str | os.PathLike) -> str:
    """How a run identity names a data or weights path: the real path (symlinks, ``~`` and relative spellings
    resolved), written ``<project>/...`` when it lies inside :data:`PROJECT_ROOT`."""
    return project_relative(os.path.realpath(os.path.expanduser(os.fspath(path))))


def project_relative(value: object) -> object:
    """``value`` (nested dicts and lists) with every absolute path inside :data:`PROJECT_ROOT` written as
    ``<project>/...``: how identities name paths now, also applied to records written before (absolute paths)."""
    root = str(PROJECT_ROOT)

    def relative(text: str) -> str:
        inside = text == root or text.startswith(root + os.sep)
        return PROJECT_MARK + text[len(root):].replace(os.sep, "/") if inside else text

    return _map_strings(value, relative)


def _absolute(value: object) -> object:
    """The inverse of :func:`project_relative`."""
    def absolute(text: str) -> str:
        inside = text == PROJECT_MARK or text.startswith(PROJECT_MARK + "/")
        return str(PROJECT_ROOT) + text[len(PROJECT_MARK):].replace("/", os.sep) if inside else text

    return _map_strings(value, absolute)


def _map_strings(value: object, rewrite: Callable[[str], str]) -> object:
    if isinstance(value, Mapping):
        return {key: _map_strings(item, rewrite) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(item, rewrite) for item in value]
    return rewrite(value) if isinstance(value, str) else value


def earlier_run_hash(options: Mapping) -> str:
    """The hash these options had when identities named every path absolutely (ldt before project-relative paths):
    records and run states written then carry it, and are still found by it (:class:`Records` ``earlier``)."""
    return run_hash(_absolute(options))


# A runner's training recipe in its run identities (an integer; a record without one is recipe 1): a change that
# alters results in a way the options do not show bumps it, so records of the earlier recipe get another hash.
RECIPE_KEY = "recipe"


def earlier_recipes(records: Iterable[Mapping], planned: Iterable[Mapping]) -> dict[int, int]:
    """{earlier recipe: count} of the ``records`` whose options are those of a ``planned`` run (hparams) but for
    the recipe, older than the planned one: records the sweep will not reuse, though they look like its runs (paths
    compared as :func:`project_relative` names them, so a record written with absolute paths is found too)."""
    def rest(options: Mapping) -> str:
        return run_hash(project_relative({k: v for k, v in options.items() if k != RECIPE_KEY}))

    wanted = {rest(options): options[RECIPE_KEY] for options in planned if RECIPE_KEY in options}
    found: dict[int, int] = {}
    for record in records:
        options = record.get("hparams")
        key = rest(options) if isinstance(options, Mapping) else None
        recipe = options.get(RECIPE_KEY, 1) if key in wanted else None
        if isinstance(recipe, int) and recipe < wanted[key]:
            found[recipe] = found.get(recipe, 0) + 1
    return found


# ----------------------------------------------------------------------------------------------------------- records


def wrong_type(record: Mapping, kinds: Mapping[str, type | tuple[type, ...]]) -> str | None:
    """What is wrong with the first of ``kinds``' fields that ``record`` holds with a value of another type
    ("'seed' is of type bool, not int"), or None. Why not a bare isinstance: JSON true is a Python bool, which is an
    int, so a seed edited to true was seed 1; a bool passes only where ``bool`` is one of the types."""
    for name, kind in kinds.items():
        if name not in record:
            continue
        allowed = kind if isinstance(kind, tuple) else (kind,)
        value = record[name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            expected = " or ".join(k.__name__ for k in allowed)
            return f"{name!r} is of type {type(value).__name__}, not {expected}"
    return None


_WARNED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("ldt_sweep_warned", default=None)


@contextlib.contextmanager
def one_warning_each() -> Iterator[None]:
    """Within it, every :class:`Records` warns of each problem once in all: a sweep reads its records through two
    objects (its own, which maps earlier identities onto its runs, and the tables', which does not), so one broken
    line was said twice by one command. Nested uses share the outermost scope."""
    if _WARNED.get() is not None:
        yield
        return
    token = _WARNED.set(set())
    try:
        yield
    finally:
        _WARNED.reset(token)


def _record(line: str) -> dict | None:
    """The record a line of a records file holds: a JSON object with a string ``options_hash``; else None."""
    try:
        record = read_json(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("options_hash"), str) else None


class Records:
    """A ``results.jsonl`` file: one finished run per line, each with its ``options_hash``. ``earlier`` maps the
    :func:`earlier_run_hash` of planned runs to their run hash, so their records written before are theirs."""

    def __init__(self, path: str | Path, earlier: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.earlier = {old: new for old, new in (earlier or {}).items() if old != new}
        self._warned: set[str] = set()  # the warnings given: see _warn

    def _warn(self, message: str, stacklevel: int) -> None:
        """Warn once of each problem: a command reads its records several times (the runs done, the tables, the runs
        recorded), from call sites Python's once-per-place filter tells apart, so one broken line was said up to
        three times. Inside :func:`one_warning_each` the warnings given are those of every ``Records`` of the command.
        ``stacklevel`` counts from the caller, as for :func:`warnings.warn`."""
        warned = _WARNED.get()
        warned = self._warned if warned is None else warned
        if message not in warned:
            warned.add(message)
            warnings.warn(message, stacklevel=stacklevel + 1)

    def all(self) -> list[dict]:
        """Every complete record (none if the file does not exist); a line cut short by an interrupted write, or
        anything that is not a JSON object with a string ``options_hash`` (one edited to a list broke every
        sweep's look-up of finished runs), is skipped with a warning."""
        return [record for _, record in self.numbered()]

    def numbered(self) -> list[tuple[int, dict]]:
        """(line number, record) of every complete record, as :meth:`all` (line numbers name a record in warnings).
        A records path that is a folder or a FIFO is a :class:`ldt.atomic.DiskError`: read as 'no records', a sweep
        trained its first run and then failed to append its record."""
        from ldt.cli import not_a_file

        kind = not_a_file(self.path)
        if kind:
            from ldt.atomic import DiskError

            raise DiskError(f"cannot read the records {self.path}: it is {kind}; move it away, or give another --out")
        if not self.path.is_file():
            return []
        records, broken = [], []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            record = _record(line)
            if record is not None:
                records.append((number, record))
            else:
                broken.append(number)
        if len(broken) == 1:
            self._warn(f"{self.path}:{broken[0]}: not a complete record (an interrupted write, or edited by "
                       "hand?); ignored", stacklevel=3)
        elif broken:  # one warning, not one per line: a foreign or binary file has thousands of them
            from ldt.cli import listing

            self._warn(f"{self.path}: {len(broken)} lines are not complete records (lines "
                       f"{listing(broken, 10)}; a foreign file, or edited by hand?); ignored", stacklevel=3)
        return records

    def having(self, fields: Sequence[str] | Mapping[str, type | tuple[type, ...]],
               readable: Callable[[dict], object] | None = None) -> list[dict]:
        """The complete records that hold every one of ``fields`` (with a mapping: each of its type); any other (a
        foreign tool's record, another task's in the same file) is skipped with a warning naming its line, so one
        stray line never breaks a table. ``readable(record)`` raising (a field edited by hand to a value of another
        type) skips it the same way. Types are checked because a value that reads alone may not sort with the
        others' (a seed edited to a string, beside integer seeds). Of several records of one run (a results file
        appended to another), the last is kept, and one warning names their lines: the tables read one record a run."""
        kinds = fields if isinstance(fields, Mapping) else {}
        kept: dict[str, tuple[int, dict]] = {}  # run hash -> (line, record), in the file order of the kept ones
        lines: dict[str, list[int]] = {}  # run hash -> the lines of its readable records
        for number, record in self.numbered():
            missing = [name for name in fields if name not in record]
            if missing:
                self._warn(f"{self.path}:{number}: a record without {', '.join(map(repr, missing))} (another "
                           "task's or tool's?); ignored", stacklevel=2)
                continue
            wrong = wrong_type(record, kinds)
            if wrong is not None:
                self._warn(f"{self.path}:{number}: a record whose {wrong} (edited by hand?); ignored", stacklevel=2)
                continue
            try:
                if readable is not None:
                    readable(record)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as err:
                self._warn(f"{self.path}:{number}: a record the table cannot read ({type(err).__name__}: {err}; "
                           "edited by hand?); ignored", stacklevel=2)
            else:
                digest = self.digest(record)
                lines.setdefault(digest, []).append(number)
                kept.pop(digest, None)
                kept[digest] = (number, record)
        self._warn_repeated({digest: numbers for digest, numbers in lines.items() if len(numbers) > 1})
        return [record for _, record in kept.values()]

    def _warn_repeated(self, repeated: Mapping[str, list[int]]) -> None:
        """One warning for every run with several records (``repeated``: run hash -> their lines), not one a run."""
        def spelled(numbers: list[int]) -> str:
            return f"{', '.join(map(str, numbers[:-1]))} and {numbers[-1]}"

        why = "(a results file appended to another, or edited by hand?)"
        if len(repeated) == 1:
            [(digest, numbers)] = repeated.items()
            self._warn(f"{self.path}: lines {spelled(numbers)} are records of one run ({digest}): the tables use "
                       f"the last, line {numbers[-1]} {why}", stacklevel=3)
        elif repeated:
            runs = [f"lines {spelled(numbers)} of run {digest}" for digest, numbers in repeated.items()]
            shown = "; ".join(runs[:10]) + (f"; ... ({len(runs) - 10} more)" if len(runs) > 10 else "")
            self._warn(f"{self.path}: {len(repeated)} runs have more than one record ({shown}): the tables use the "
                       f"last of each {why}", stacklevel=3)

    def digest(self, record: Mapping) -> str:
        """The run hash a record belongs to (its ``options_hash``, or the run it had under the earlier identity)."""
        return self.earlier.get(record["options_hash"], record["options_hash"])

    def by_hash(self) -> dict[str, dict]:
        """The records by run hash (a rerun of a run replaces its earlier record)."""
        return {self.digest(record): record for record in self.all()}

    def check_appendable(self) -> None:
        """A :class:`ldt.atomic.DiskError` now, before a run trains, when a record could not be appended to the file
        (an immutable or append-refusing file, no permission, a symlink loop or one into a folder that is gone):
        opening it to append writes nothing. A file not made yet is left to the check of its folder."""
        from ldt.atomic import DiskError, disk_reason

        if not self.path.is_file() and not self.path.is_symlink():
            return
        try:
            with open(self.path, "ab"):
                pass
        except OSError as err:
            raise DiskError(f"cannot append a record to {self.path}: {disk_reason(err, self.path.parent)}; no run "
                            "started (the earlier records are intact)") from None

    @property
    def broken_path(self) -> Path:
        """Where :meth:`append` moves the lines that are no complete record: ``results.jsonl.broken``."""
        return self.path.with_name(self.path.name + ".broken")

    def _move_broken(self) -> None:
        """Move the lines that are no complete record (one cut short by a sweep killed mid-append, a hand edit) to
        :attr:`broken_path`, appended there and synced before the records file is rewritten without them
        (atomically), so no line is lost; said once. Otherwise every later command warned of them for good. A file
        that cannot be rewritten (append-only, a read-only folder) keeps them, as before."""
        from ldt.atomic import DiskError, atomic_write_bytes

        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except OSError:
            return  # not there yet, or unreadable: the append says why
        kept, broken = [], []
        for line in lines:
            text = line.decode(errors="replace")
            (kept if not text.strip() or _record(text) is not None else broken).append(line)
        if not broken:
            return
        broken = [line if line.endswith(b"\n") else line + b"\n" for line in broken]
        target = Path(os.path.realpath(self.path))  # a symlinked records file stays a symlink
        try:
            with open(self.broken_path, "ab+") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.write(b"".join(broken))
                handle.flush()
                os.fsync(handle.fileno())
                try:
                    atomic_write_bytes(target, b"".join(kept))
                except DiskError:
                    handle.truncate(size)  # the lines stay in the records: no copy of them kept here
                    if not size:
                        os.unlink(self.broken_path)
                    raise
        except (OSError, DiskError):
            return
        self._warn(f"{self.path}: moved {len(broken)} line(s) that are no complete record (a sweep killed while "
                   f"appending, or edited by hand?) to {self.broken_path}", stacklevel=3)

    def append(self, record: dict) -> None:
        """Append one record as a line and sync it, so a crash right after a run still leaves its record whole.

        Lines that are no complete record are moved to :attr:`broken_path` first (:meth:`_move_broken`); one that
        stays (a file that cannot be rewritten) is closed first, or the new record would be glued to it and lost. A
        write that fails (full disk, no permission) is cut back to the file's earlier size, so no partial line stays,
        and raises :class:`ldt.atomic.DiskError` naming the file; one interrupted by a signal is cut back the same.
        """
        if "options_hash" not in record:
            raise ValueError("a record needs its 'options_hash'")
        from ldt.atomic import DiskError, disk_reason, make_dirs

        make_dirs(self.path.parent)
        line = (strict_json(record, sort_keys=True) + "\n").encode()
        self._move_broken()
        try:
            with open(self.path, "ab+", buffering=0) as handle:  # unbuffered: nothing left to flush after a cut-back
                size = handle.seek(0, os.SEEK_END)
                try:
                    if size:
                        handle.seek(-1, os.SEEK_END)
                        if handle.read(1) != b"\n":
                            line = b"\n" + line
                    view = memoryview(line)
                    while view:
                        view = view[handle.write(view):]
                    os.fsync(handle.fileno())
                except BaseException:  # a full disk, or a signal that stops the sweep mid-line
                    handle.truncate(size)
                    raise
        except OSError as err:
            raise DiskError(f"cannot append a record to {self.path}: {disk_reason(err, self.path.parent)} (the "
                            "earlier records are intact)") from None


@dataclass
class PlannedRun:
    """One run of a sweep: its identity, a label for progress and messages, how to run it (-> its record), and what
    to do once its record is written (e.g. delete the run's training state)."""

    digest: str
    label: str
    execute: Callable[[], dict]
    recorded: Callable[[], None] = lambda: None  # called once the run's record is written


def stale_weights(records: Records, runs: Iterable[tuple[str, str | None]], now: Mapping[str, str]) -> str | None:
    """Why recorded runs cannot be reused, or None: a run's record holds another tensor fingerprint than its weights
    file has now (a file replaced or rebuilt in place; run identities name weights by path only). ``runs``: (options
    hash, weights path or None); ``now``: path -> current fingerprint. Records without a fingerprint are not checked."""
    recorded, runs = records.by_hash(), list(runs)
    for digest, path in runs:
        then = recorded.get(digest, {}).get("weights_fingerprint")
        if then and path is not None and then != now[path]:
            stale = sum(1 for d, p in runs if p == path and recorded.get(d, {}).get("weights_fingerprint") == then)
            return (f"weights {path} changed since {stale} run(s) in {records.path} were trained from them (tensor "
                    f"fingerprint {then} then, {now[path]} now): restore the file, or record this sweep elsewhere "
                    "with --out")
    return None


def run_pending(runs: Sequence[PlannedRun], records: Records, *, progress: bool = True, desc: str = "sweep") -> tuple[int, int]:
    """Run every planned run without a record (each once, in order), appending each record as it finishes.

    Returns (runs trained, runs skipped because a record exists). A run planned twice (shared by two tables) runs once.
    """
    unique = list({run.digest: run for run in runs}.values())
    done = set(records.by_hash())
    pending = [run for run in unique if run.digest not in done]
    if pending:
        records.check_appendable()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(unique), initial=len(unique) - len(pending), desc=desc, unit="run", disable=not progress,
               dynamic_ncols=True)
    from ldt.atomic import DiskError

    for run in pending:
        bar.set_postfix_str(run.label)
        record = run.execute()
        try:
            records.append({**record, "options_hash": run.digest})
        except DiskError as err:  # the run trained: say which one is not recorded, and where
            raise DiskError(f"run {run.label} finished but its record was not written: {err}") from None
        run.recorded()
        bar.update(1)
    bar.close()
    return len(pending), len(unique) - len(pending)


# ----------------------------------------------------------------------------------------------------------- weights


def parse_weights(entries: Sequence[str] | None, names: Sequence[str], known: Sequence[str], *,
                  flag: str = "--weights", noun: str = "NAME") -> dict[str, str]:
    """``FILE`` (when the sweep has one network) or ``NAME=FILE ...`` → {name: path as given}.

    ``names``: the networks of this sweep; ``known``: every name the tool knows (a ``NAME=`` outside it is a typo
    unless the whole entry is an existing file whose name contains '='); ``noun``: what a name is, for messages. A
    name given two files, or an empty path, is a :class:`SweepError` (not the last file, or the current folder).
    """
    weights: dict[str, str] = {}
    for entry in entries or []:
        name, sep, path = str(entry).partition("=")
        if not str(entry):
            raise SweepError(f"{flag} '': no file (an empty path would be read as the current folder)")
        if sep and name in known:
            if not path:
                raise SweepError(f"{flag} {entry}: no file after '='")
            if weights.get(name, path) != path:  # the last would silently win
                raise SweepError(f"{flag}: {name}={weights[name]} and {entry}: one file per {noun.lower()}")
            weights[name] = path
        elif sep and not Path(entry).exists():
            raise SweepError(f"{flag} {entry}: unknown {noun.lower()} {name!r}; choose from {', '.join(known)}")
        elif len(names) == 1 and len(entries) == 1:
            weights[names[0]] = str(entry)
        else:
            raise SweepError(f"{flag} {entry}: with several {noun.lower()}s or files ({', '.join(names)} swept), "
                             f"write {noun}=FILE for each")
    unused = sorted(set(weights) - set(names))
    if unused:
        raise SweepError(f"{flag} given for {', '.join(unused)}, not swept here ({', '.join(names)})")
    return weights


def check_weights(weights: Mapping[str, str], load: Callable[[str, str], object], *, flag: str = "--weights") -> None:
    """``load(name, path)`` for each network's weights file now, so a file that is missing, unreadable or does not fit
    fails before the first run, not hours into the sweep, in one line naming the flag and the network
    (``--weights resnet18: weights file … does not fit …``), the same for every runner."""
    from ldt.weights import WeightsError  # torch: not at import, Train_pip.py routes with this module's PROJECT_ROOT

    for name, path in weights.items():
        try:
            load(name, path)
        except (WeightsError, FileNotFoundError) as err:
            raise SweepError(f"{flag} {name}: {err}") from None


# -------------------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean and standard error over ``n`` seeds (se is None for a single seed)."""

    mean: float
    se: float | None
    n: int

    def format(self, digits: int = 2, scale: float = 1.0) -> str:
        value = f"{self.mean * scale:.{digits}f}"
        return value if self.se is None else f"{value} ± {self.se * scale:.{digits}f}"


def recorded_number(value: object) -> float:
    """A metric read from a record, as a float. Why: JSON ``true`` / ``false`` (a hand edit) reads as a bool, which
    arithmetic takes for 1 / 0, so a table counted it; any value that is no real number is a ``TypeError``, which
    :meth:`Records.having` turns into a warning naming the record's line. The string 'nan' (a NaN as the previous
    version wrote it) is NaN (:func:`ldt.cli.number_back`)."""
    value = number_back(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def recorded_mean(values: Iterable[object]) -> float:
    """The mean of metrics read from one record (a run's mean over its test domains or cameras), each checked by
    :func:`recorded_number`."""
    return statistics.fmean(map(recorded_number, values))


def sample_stdev(values: Sequence[float]) -> float:
    """``statistics.stdev``, NaN where a value is not finite (a NaN metric, an older file's 'nan'), where Python's
    raises ``AttributeError: 'float' object has no attribute 'numerator'``."""
    return statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan


def mean_se(values: Iterable[float]) -> Stat:
    """Mean ± standard error of the mean (sample std with ddof 1, over √n); se None for one value. Each value is
    checked by :func:`recorded_number`: the values come from records."""
    values = [recorded_number(value) for value in values]
    if not values:
        raise ValueError("mean_se of no values")
    mean = statistics.fmean(values)
    se = sample_stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return Stat(mean, se, len(values))


def t_quantile(probability: float, dof: int) -> float:
    """The Student-t quantile (scipy)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


@dataclass(frozen=True)
class Paired:
    """A paired difference (setting − reference) over ``n`` common seeds with a 95 % t interval (None for n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def distinguishable(self) -> bool | None:
        """Whether the 95 % interval excludes zero (None when there is no interval)."""
        if self.low is None:
            return None
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 2) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f}, n={self.n}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def verdict(self) -> str:
        """The table's 'distinguishable from zero' column."""
        flag = self.distinguishable
        return "n < 2" if flag is None else ("yes" if flag else "no")


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> Paired | None:
    """``values − reference`` over their common seeds; None if they share no seed."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    differences = [values[s] - reference[s] for s in seeds]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return Paired(mean, None, None, 1)
    half = t_quantile(0.975, len(differences) - 1) * sample_stdev(differences) / math.sqrt(len(differences))
    return Paired(mean, mean - half, mean + half, len(differences))


# ------------------------------------------------------------------------------------------------------------ tables


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def csv_stat(stat: Stat | None) -> list:
    """(mean, se, n) columns of a CSV row; empty cells for a missing stat or se."""
    if stat is None:
        return ["", "", 0]
    return [stat.mean, "" if stat.se is None else stat.se, stat.n]


# ------------------------------------------------------------------------------------------- tables over seeds
# A row gathers the runs of one (group, backbone, method, configuration) over seeds; a column is one test domain (or
# group of them). Classification groups by dataset, segmentation by source domains.

RowKey = tuple[str, str, str, str]  # (group, backbone, method, configuration hash)
SeedCells = dict[str, dict[int, float]]  # column -> seed -> value


def configuration(record: Mapping, per_run_keys: Sequence[str]) -> str:
    """The hash of a record's options without its per-run keys (seed, ...): the runs one row gathers share it (a
    record written when identities held absolute paths joins the row of its runs recorded since)."""
    return run_hash(project_relative({k: v for k, v in record["hparams"].items() if k not in per_run_keys}))


def ordered_keys(keys: Iterable[RowKey], order: Mapping[str, Sequence[str]] | None = None) -> list[RowKey]:
    """Row keys by group, then backbone and method in the preferred ``order`` (others alphabetically after them)."""
    order = order or {}

    def rank(kind: str, name: str) -> tuple:
        preferred = tuple(order.get(kind, ()))
        return (preferred.index(name) if name in preferred else len(preferred), name)

    return sorted(keys, key=lambda k: (k[0], rank("backbone", k[1]), rank("method", k[2]), k[3]))


def seed_rows(cells: Mapping[RowKey, SeedCells], columns: Mapping[str, Sequence[str]], average: str,
              order: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
    """One row per key: mean ± s.e. over seeds per column of its group, and ``average``, the mean over seeds of each
    seed's mean over all columns (only the seeds that have every column)."""
    rows = []
    for key in ordered_keys(cells, order):
        group, backbone, method, config = key
        labels, by_column = list(columns[group]), cells[key]
        seeds = sorted({seed for per_seed in by_column.values() for seed in per_seed})
        row = {"group": group, "backbone": backbone, "method": method, "config": config[:8], "columns": labels,
               "seeds": len(seeds)}
        for label in labels:
            values = list(by_column.get(label, {}).values())
            row[label] = mean_se(values) if values else None
        complete = [s for s in seeds if all(s in by_column.get(label, {}) for label in labels)]
        row[average] = mean_se(sum(by_column[label][s] for label in labels) / len(labels) for s in complete) \
            if complete else None
        rows.append(row)
    return rows


def seed_markdown(rows: Sequence[dict], average: str, *, title: Callable[[str], str],
                  cell: Callable[[Stat], str], method_label: Callable[[str], str] = str) -> str:
    """One markdown table per group; a Config column appears only when one method has several configurations. A
    cell over fewer seeds than its row's Seeds (a partial sweep) says its own n, which the title's 'n = Seeds' is not."""
    def shown(stat: Stat, seeds: int) -> str:
        return cell(stat) if stat.n == seeds else f"{cell(stat)} (n = {stat.n})"

    sections = []
    for group in dict.fromkeys(row["group"] for row in rows):
        subset = [row for row in rows if row["group"] == group]
        labels = subset[0]["columns"] + [average]
        names = [(row["backbone"], row["method"]) for row in subset]
        show_config = len(set(names)) < len(names)
        header = ["Backbone", "Method"] + (["Config"] if show_config else []) + ["Seeds"] + labels
        body = [[row["backbone"], method_label(row["method"]), *([row["config"]] if show_config else []),
                 str(row["seeds"]), *("–" if row.get(label) is None else shown(row[label], row["seeds"])
                                      for label in labels)]
                for row in subset]
        sections.append(f"### {title(group)}\n\n" + markdown_table(header, body))
    return "\n\n".join(sections) + "\n"


_UNWRITTEN: contextvars.ContextVar[bool] = contextvars.ContextVar("ldt_sweep_tables_unwritten", default=False)


@contextlib.contextmanager
def tables_unwritten() -> Iterator[None]:
    """Within it, :func:`write_record_tables` computes the tables and writes none: for a folder that cannot be
    written in whose runs are all recorded, where a sweep prints its tables instead (:func:`ldt.runner.main`)."""
    token = _UNWRITTEN.set(True)
    try:
        yield
    finally:
        _UNWRITTEN.reset(token)


def write_record_tables(out: str | Path, render: Callable[[list[dict]], Mapping[str, str]],
                        required: Sequence[str] | Mapping[str, type | tuple[type, ...]] = ()) -> dict[str, str]:
    """Recompute the tables of a sweep folder from its records alone: ``render(records)`` gives {file name: text},
    each written into ``out``; returns them. Records without every ``required`` field (of its type, where ``required``
    maps fields to types), or that ``render`` cannot read alone, are skipped with a warning (:meth:`Records.having`). No records is a ``FileNotFoundError`` naming the file. Each table is written atomically:
    a sweep killed while writing it leaves the previous table whole, and a disk that refuses it is a ``DiskError``."""
    from ldt.atomic import atomic_write_text

    out = Path(out)
    records, unwritten = Records(out / RESULTS_FILE), _UNWRITTEN.get()
    nothing = f"no records in {records.path}: nothing to tabulate"
    if not records.path.exists():  # said as such, not after making a lock file in a folder that may not exist
        raise FileNotFoundError(nothing)
    with contextlib.nullcontext() if unwritten else tables_lock(out):  # the records read and the tables written
        found = records.having(required, readable=lambda record: render([record]))  # as one step
        if not found:
            raise FileNotFoundError(nothing)
        files = dict(render(found))
        for name, text in files.items() if not unwritten else ():
            atomic_write_text(out / name, text)
    return files
