"""Argument checks shared by the command-line scripts in ``scripts/``.

Every bad flag ends in one ``error: --flag: ...`` line and exit status 2 (``parser.error``) before any work starts:
never a traceback, never a silently replaced value. :func:`check_args` runs value checks (:func:`at_least`,
:func:`between`, :func:`json_object`) on parsed arguments; :func:`check_device`, :func:`check_output_file` and
:func:`check_output_dir` check the device and output paths. The long commands stop on SIGTERM / SIGINT through
:func:`stop_on_signal` (then one line, exit status 128 + the signal); the scripts end through :func:`exit_with`
(a closed pipe leaves their work to finish). Standard library only (torch is imported when a device is checked).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import json.scanner
import logging
import math
import os
import re
import secrets
import signal
import stat
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what is wrong with it
TRACEBACK_VARIABLE = "LDT_TRACEBACK"
# The signals on which every long-running command stops cleanly: a cluster's preemption (SIGTERM) and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StoppedWhileStarting(BaseException):
    """A stop signal during :func:`starting` (a BaseException: no ``except Exception`` in an import swallows it)."""


# Where this package's own code lies (and, in a checkout, its scripts beside it): a warning it gives is a sentence
# for the user, which Python's default format would print as two lines (file:line: UserWarning: ..., then the
# source line of the warnings.warn call)
_PACKAGE = Path(__file__).resolve().parent
_OWN_CODE = (_PACKAGE, *(_PACKAGE.parent / name for name in ("scripts", "examples", "Train_pip.py", "test.py")
                         if (_PACKAGE.parent / "Train_pip.py").is_file()))
_python_format = warnings.formatwarning


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """``warning: <message>`` on one line for a warning this package (or a script of its checkout) gives; any other
    (torch's, a library's) in Python's own format, which says where it comes from."""
    if issubclass(category, UserWarning) and any(Path(filename).resolve().is_relative_to(own) for own in _OWN_CODE):
        return f"warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """Around an entry point's imports: Ctrl-C or SIGTERM there (torch and BasicSR take seconds to import, before any
    work) ends the command with one line and exit status 128 + the signal, not a KeyboardInterrupt traceback from
    inside an import, or SIGTERM's silent exit. Nothing has run yet, so nothing is to save; afterwards the handlers
    are as before, and the command's own stop handling takes over. A signal the caller ignores stays ignored."""
    def stop(signum: int, frame: object) -> None:
        raise _StoppedWhileStarting(signum)

    warnings.formatwarning = format_warning  # every command's warnings, from its start: one line each

    try:
        with stop_handler(stop):
            yield
    except _StoppedWhileStarting as stopped:
        (signum,) = stopped.args
        print(f"stopped by {signal.Signals(signum).name} while starting: nothing was done", file=sys.stderr)
        raise SystemExit(128 + signum) from None


@contextlib.contextmanager
def stop_handler(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for each of :data:`STOP_SIGNALS` inside the block, the previous handlers after (one set outside
    Python: the default). A signal the caller ignores (a background job's SIGINT) stays ignored; in a thread other
    than the main one (where signals cannot be handled) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, signal.SIG_DFL if old is None else old)


_held: list[int] | None = None  # inside whole_step(): the stop signals that arrived, acted on when it ends


class Stopped(BaseException):
    """SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) stopped the command. A BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` on the way turns it into a data or weights error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.saved: Path | None = None  # what the command saved on its way out (a run's training state), if any


def _ignore_signal(signum: int, frame: object) -> None:
    """A Python-level handler that does nothing."""


@contextlib.contextmanager
def stop_on_signal() -> Iterator[None]:
    """Raise :class:`Stopped` where the command is when SIGTERM / SIGINT arrives, so it can end in one line rather
    than silently (SIGTERM's default) or in a traceback (Ctrl-C). Unwinding from any point leaves whole files:
    writes are atomic, a record append cuts itself back, a dataset build removes its staging folder. A second signal
    exits at once; a signal the caller ignores (a background job's SIGINT) stays ignored."""
    owner = os.getpid()
    child = getattr(signal, "SIGCHLD", None)
    replaced: dict[int, object] = {}

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked DataLoader worker: its loop ends quietly on KeyboardInterrupt
            raise KeyboardInterrupt
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        if child is not None:  # a SIGTERM sent to the process group (timeout, a scheduler) kills the DataLoader
            # workers (torch's worker handler): torch's SIGCHLD handler would raise 'worker ... is killed by signal'
            # wherever the stop is, its state save included; no batch is loaded after a stop. A handler that does
            # nothing, not SIG_DFL: a SIGCHLD already pending would print 'Signal 17 ignored due to race condition'
            replaced[child] = signal.signal(child, _ignore_signal)
        if _held is not None:
            _held.append(signum)
            return
        raise Stopped(signum)

    try:
        with stop_handler(stop):
            yield
    finally:
        for number, handler in replaced.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(number, handler)


@contextlib.contextmanager
def whole_step() -> Iterator[None]:
    """Under :func:`stop_on_signal`, a stop that arrives inside the block raises :class:`Stopped` when the block ends,
    not in its middle: a training step is never cut in half, so the state saved on a stop is a whole step's."""
    global _held
    outer, _held = _held, ([] if _held is None else _held)
    try:
        yield
    finally:
        held, _held = _held, outer
    if outer is None and held:
        raise Stopped(held[0])


@contextlib.contextmanager
def stop_in_one_line(kept: Callable[[], str]) -> Iterator[None]:
    """:func:`stop_on_signal` for a command without state to save: a stop ends it with ``stopped by SIGTERM:
    <kept()>`` (what its outputs are left as, said when the stop comes) and exit status 128 + the signal."""
    try:
        with stop_on_signal():
            yield
    except Stopped as stopped:
        print(f"stopped by {signal.Signals(stopped.signum).name}: {kept()}", file=sys.stderr, flush=True)
        raise SystemExit(128 + stopped.signum) from None


def meant(key: Any, known: Sequence[str]) -> str | None:
    """The known name an unknown one most likely misspells (the "did you mean" of an unknown option, section,
    architecture or dataset type), or None. Case is ignored: 'safmn' means 'SAFMN', which difflib alone misses."""
    folded = {name.casefold(): name for name in known}
    hint = difflib.get_close_matches(str(key).casefold(), list(folded), n=1)
    return folded[hint[0]] if hint else None


def suggest(name: str) -> str:
    """`` (did you mean 'NAME'?)``: the one wording of the hint (:func:`did_you_mean` finds the name itself)."""
    return f" (did you mean '{name}'?)"


def did_you_mean(key: Any, known: Sequence[str], otherwise: str = "") -> str:
    """`` (did you mean 'X'?)`` for the known name ``key`` most likely misspells (:func:`meant`), else ``otherwise``:
    the one wording of the hint, so every unknown option, choice, type, method or architecture reads alike."""
    hint = meant(key, known)
    return suggest(hint) if hint else otherwise


class HintingParser(argparse.ArgumentParser):
    """argparse, with the "did you mean" of a misspelled flag (``unrecognized arguments: --stesp 4`` named no
    ``--steps``), as option files and method names have. It still prints the usage above the error line: every
    command builds :class:`OneLineParser` (a test checks).

    No abbreviations: argparse read an unambiguous prefix as the flag it starts, so reproduce.py's ``--seed 3`` ran
    three seeds (``--seeds 3``) and said nothing; a prefix is an unrecognized flag, hinted with the flag it starts."""

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def _get_option_tuples(self, option_string: str) -> list[tuple]:
        """argparse's readings of ``option_string`` as a flag it does not spell exactly; without abbreviations only a
        short flag with its value attached (``-n4``): argparse's ``allow_abbrev=False`` still read ``-o FILE`` as
        ``-opt FILE`` (a prefix of a single-dash flag)."""
        readings = super()._get_option_tuples(option_string)
        if self.allow_abbrev:
            return readings
        return [reading for reading in readings if reading[1] == option_string[:2]]

    def error(self, message: str) -> NoReturn:
        super().error(message + self.flag_hint(message))

    def flag_hint(self, message: str) -> str:
        """`` (did you mean '--steps'?)`` for the first unrecognized flag of an argparse ``message``, else ``""``: the
        one flag it is a prefix of, in its first spelling that it starts (``--seed``: ``--seeds``; difflib can miss a
        short one, ``--pre``), the flags of several (``--t``: ``--table, --tile``), else the closest (:func:`meant`)."""
        unknown = re.match(r"unrecognized arguments: (-\S+)", message)
        if not unknown:
            return ""
        given = unknown.group(1).split("=", 1)[0]
        started: dict[argparse.Action, str] = {}  # flag -> its first spelling that ``given`` starts
        for option, action in self._option_string_actions.items():
            if option.startswith(given):
                started.setdefault(action, option)
        if len(started) == 1:
            return suggest(*started.values())
        if len(started) > 1:  # argparse's own 'ambiguous option' named them; so does this
            return f" (an abbreviation of {', '.join(started.values())}: spell the flag out)"
        names = [option[2:] for option in self._option_string_actions if option.startswith("--")]
        hint = meant(given.lstrip("-"), names)  # without the dashes, which matched --help
        return suggest(f"--{hint}") if hint else ""


class OneLineParser(HintingParser):
    """argparse, but a usage error is one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}{self.flag_hint(message)}\n")


def flag(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def fail(message: str) -> NoReturn:
    """One ``error: ...`` line on stderr and exit status 2 (for problems found after parsing, outside a parser)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _ReaderMayLeave:
    """``sys.stdout`` that, once its reader has gone (``| head -1``: EPIPE), sends what follows to the null device
    instead of failing the command wherever it next prints (a sweep's progress line before a run, an export's
    'wrote' line between two exports)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _gone(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())  # the stream's buffered text is flushed there later, unread
        finally:
            os.close(null)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def output_reader_may_leave() -> Iterator[None]:
    """:class:`_ReaderMayLeave` around ``sys.stdout`` for a command's work: its records, tables, exports and builds
    are files, so a reader that stops reading (``| head -1``) must not cut them short. Flushed at the end: the
    interpreter's own flush at exit would print 'Exception ignored ... BrokenPipeError'."""
    stream = sys.stdout
    sys.stdout = guarded = _ReaderMayLeave(stream)
    try:
        yield
    finally:
        guarded.flush()
        sys.stdout = stream


def exit_with(main: Callable[[], int | str | None]) -> NoReturn:
    """``sys.exit(main())`` for a command that prints, under :func:`output_reader_may_leave`: a reader that stops
    reading (``| head -1``) leaves the work to go on to its end, and its exit status, where print raised a
    BrokenPipeError traceback (the work cut short) or the last flush said 'Exception ignored ... BrokenPipeError'."""
    with output_reader_may_leave():
        status = main()
    raise SystemExit(status)


OUT_OF_MEMORY = ("out of memory", "can't allocate memory")  # torch's CUDA (OutOfMemoryError) and CPU allocators'


@contextlib.contextmanager
def out_of_memory_is_one_line(sizes: str) -> Iterator[None]:
    """Memory running out inside the block (Python's or numpy's MemoryError, torch's CUDA or CPU allocator) ends the
    command in one line naming the ``sizes`` that asked for it, not a traceback from deep inside a step."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        if not isinstance(err, MemoryError) and not any(words in text for words in OUT_OF_MEMORY):
            raise
        fail(f"out of memory at {sizes}: {text[:300]}; use smaller sizes")


def show_traceback(err: BaseException) -> None:
    """With ``LDT_TRACEBACK=1`` in the environment, print ``err``'s traceback (with its causes) on stderr.

    The entry points report bad input as one ``error:`` line; a bug raising the same exception types would lose
    where it happened, so the report can be asked for in full. Called before the one-line report."""
    if os.environ.get(TRACEBACK_VARIABLE, "").strip() not in ("", "0"):
        traceback.print_exception(err, file=sys.stderr)


def original_error(message: str) -> str:
    """``message`` itself, or for an error re-raised from a DataLoader worker (its message carries the worker's
    traceback) the original error: the traceback's last line, without the exception's name."""
    if "Original Traceback" not in message:
        return message
    return re.sub(r"^[A-Za-z_][\w.]*: ", "", message.strip().splitlines()[-1].strip())


def error_lines(err: BaseException) -> list[str]:
    """An error's message as the ``error:`` lines to print: one per line of it (an error listing several problems
    gives each its own line), whitespace collapsed; a DataLoader worker's error as its original error."""
    lines = [" ".join(line.split()) for line in original_error(str(err)).splitlines()]
    return [line for line in lines if line] or [type(err).__name__]


def at_least(minimum: int) -> Check:
    """An integer >= ``minimum``."""
    def check(value: int) -> str | None:
        if value >= minimum:
            return None
        wanted = "a positive integer" if minimum == 1 else "a non-negative integer" if minimum == 0 else \
            f"an integer >= {minimum}"
        return f"must be {wanted}, got {value}"
    return check


positive = at_least(1)
non_negative = at_least(0)


def between(low: float, high: float, *, inclusive: bool = False) -> Check:
    """A number strictly between ``low`` and ``high`` (or within them if ``inclusive``)."""
    def check(value: float) -> str | None:
        ok = low <= value <= high if inclusive else low < value < high
        return None if ok else f"must be {'' if inclusive else 'strictly '}between {low:g} and {high:g}" \
                               f"{' (inclusive)' if inclusive else ''}, got {value:g}"
    return check


def json_object(text: str) -> str | None:
    """A JSON object such as ``'{"width": 64}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno}): {text!r}"
    return None if isinstance(value, dict) else f"must be a JSON object such as '{{\"width\": 64}}', got {text!r}"


# Infinity is written as the number 1e999: strict JSON (jq, JavaScript and Python's parse_constant refuse the bare
# Infinity / NaN tokens json.dumps writes by default) that overflows to the infinite float in every JSON reader
# (Python, JavaScript; jq clips it to the largest double). NaN has no number: it is the string 'nan' spelled
# "\u006ean" (its n escaped), which every JSON reader reads as the string 'nan' but json.dumps never writes for a
# string, so :func:`read_json` turns it, and only it, back into the float: a name 'nan' (an experiment, camera,
# domain or method so called) stays a string.
INFINITY_LITERAL = "1e999"
NAN_STRING = "nan"
NAN_LITERAL = '"\\u006ean"'


def _finite_only(value: Any, infinity: str, nan: str) -> Any:
    """``value`` with NaN floats as the string ``nan`` and infinities as the string ``infinity`` (-: ``'-' + infinity``)."""
    if isinstance(value, float) and value != value:
        return nan
    if isinstance(value, float) and value in (math.inf, -math.inf):
        return infinity if value > 0 else "-" + infinity
    if isinstance(value, dict):
        return {key: _finite_only(item, infinity, nan) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(item, infinity, nan) for item in value]
    return value


def strict_json(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)`` as strict JSON: an infinite float (the PSNR of an output identical to its HR)
    is written as the number ``1e999`` (``-1e999``), a NaN as :data:`NAN_LITERAL`; :func:`read_json` reads both back."""
    token = secrets.token_hex(16)  # strings no other value holds, swapped for the literals afterwards
    infinity, nan = f"infinity-{token}", f"nan-{token}"
    text = json.dumps(_finite_only(value, infinity, nan), allow_nan=False, **options)
    return (text.replace(f'"-{infinity}"', "-" + INFINITY_LITERAL).replace(f'"{infinity}"', INFINITY_LITERAL)
            .replace(f'"{nan}"', NAN_LITERAL))


class _NanDecoder(json.JSONDecoder):
    """A decoder that reads the string value :data:`NAN_LITERAL` as the float NaN (an object key spelled so stays a
    string): its strings are told apart by their spelling in the text, which ``json.loads``' C scanner does not show."""

    def __init__(self) -> None:
        super().__init__()
        plain = self.parse_string

        def parse_string(text: str, end: int, strict: bool) -> tuple[Any, int]:
            if text.startswith(NAN_LITERAL, end - 1):  # ``end``: just past the opening quote
                return math.nan, end - 1 + len(NAN_LITERAL)
            return plain(text, end, strict)

        self.parse_string = parse_string
        self.scan_once = json.scanner.py_make_scanner(self)


def read_json(text: str) -> Any:
    """The value of JSON ``text`` written by :func:`strict_json` (``1e999`` is read as inf by ``json.loads`` itself,
    :data:`NAN_LITERAL` as NaN) or by an earlier version of this package (bare Infinity / NaN). Every other string
    stays a string, 'nan' too; where an earlier version wrote a NaN number as the plain string 'nan',
    :func:`number_back` reads it where a number is expected."""
    if NAN_LITERAL not in text:
        return json.loads(text)  # the C scanner: no NaN to tell apart
    return _NanDecoder().decode(text)


def number_back(value: Any) -> Any:
    """``value`` read where a number is expected (a metric, a score): the plain string 'nan', which the previous
    version of :func:`strict_json` wrote for a NaN, is the float NaN; anything else is returned as it is."""
    return math.nan if value == NAN_STRING else value


# What a file of 0 bytes is (a weights file, an image of a dataset), after its name.
EMPTY_FILE = "is empty (0 bytes): an interrupted write or download?"


def cannot_decode(what: str, path: str | os.PathLike, error: BaseException) -> str:
    """The line for a file (``what``: image, label) PIL could not decode when it was read: one of 0 bytes (emptied
    after the start-up check, which says so too) is :data:`EMPTY_FILE`, not PIL's 'cannot identify image file'."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False
    return f"{what} {os.fspath(path)} {EMPTY_FILE}" if empty else f"cannot decode {what} {os.fspath(path)}: {error}"


EMPTY_PATH = "an empty path (an unset variable?); give a folder or file"


def expand_home(path: str | os.PathLike) -> Path:
    """``Path(path).expanduser()``; a ``~user`` naming no account (or ``~`` without a home folder) is a ValueError
    naming it, not pathlib's ``RuntimeError: Could not determine home directory.`` traceback."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        head = os.fspath(path).split(os.sep, 1)[0]
        raise ValueError(f"{os.fspath(path)}: cannot expand {head!r}: no such user's home folder") from None


def path_flag(text: str) -> Path:
    """An argparse ``type`` for a folder or file flag: an empty value (``--out ""``, an unset shell variable) is an
    error, not the current folder or the flag's default, where a sweep would write its records and tables; ``~``
    is expanded (:func:`expand_home`: one that names no home is the flag's error)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(EMPTY_PATH)
    try:
        return expand_home(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class OnceList(argparse.Action):
    """``action=`` of a list flag (``nargs='+'``) that may be given once: argparse keeps only the last of ``--table 1
    --table 2`` (a sweep then ran table 2 alone, ``--seeds 0 --seeds 1`` seed 1 alone), so a repeat is an error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, self.default) is not self.default:  # set by an earlier occurrence
            parser.error(f"argument {option_string}: given twice; list all its values after one {option_string}")
        setattr(namespace, self.dest, values)


def first_names(names: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` of ``names`` for a one-line message, ', ...' when there are more; a name that would break
    the line or vanish in it (a line end kept from a file, an empty key) is quoted."""
    shown = [name if name.isprintable() and name else repr(name) for name in names[:limit]]
    return ", ".join(shown) + (", ..." if len(names) > limit else "")


def listing(items: Iterable[object], limit: int) -> str:
    """The first ``limit`` of ``items`` for an error naming files, then how many more (``a, b, ... (5 more)``): the
    data checks' lists, where the count says how much of a dataset is at fault (:func:`first_names` does not)."""
    items = list(items)
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# What a path that exists but is no regular file is, for the line that refuses it.
_NOT_REGULAR = ((stat.S_ISDIR, "a folder, not a file"), (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file"),
                (stat.S_ISCHR, "a character device, not a regular file"),
                (stat.S_ISBLK, "a block device, not a regular file"), (stat.S_ISSOCK, "a socket, not a regular file"))


def not_a_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is no regular file ('a folder, not a file', 'a FIFO (named pipe), not a
    regular file', ...), else None (a regular file, or nothing there). Why: an input file must be refused before it is
    opened: reading a FIFO waits for a writer forever, ``/dev/zero`` never ends, and ``is_file()`` alone would call
    them 'not found'."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else next((what for test, what in _NOT_REGULAR if test(mode)),
                                                "not a regular file")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, **checks: Check) -> None:
    """``parser.error('--flag: ...')`` for the first argument whose check fails (``None`` values are skipped)."""
    for dest, check in checks.items():
        value = getattr(args, dest)
        if value is None:
            continue
        problem = check(value)
        if problem:
            parser.error(f"{flag(dest)}: {problem}")


def device_problem(name: str) -> str | None:
    """Why ``name`` is no device torch can run on here (unknown to torch, CUDA absent, an index past the last GPU),
    or None. Shared by the scripts and the classification / segmentation runners."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return "not a torch device (e.g. cpu, cuda, cuda:1)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"only {torch.cuda.device_count()} CUDA device(s)"
    return None


def check_device(parser: argparse.ArgumentParser, option: str, name: str):
    """The ``torch.device`` named ``name``; ``parser.error`` if :func:`device_problem` finds one, or if it is
    neither a CPU nor a CUDA device (what the scripts measure)."""
    import torch

    problem = device_problem(name)
    if problem:
        parser.error(f"{option}: {name}: {problem}")
    device = torch.device(name)
    if device.type not in ("cpu", "cuda"):
        parser.error(f"{option}: {name}: only cpu and cuda are supported")
    return device


def _writable_problem(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (the nearest existing ancestor of an output is tried), or None."""
    from ldt.atomic import DiskError, check_writable, existing_parent, room_problem

    folder = existing_parent(folder)
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        check_writable(folder)
    except DiskError as err:
        return str(err)
    return room_problem(folder)  # a full disk still takes the empty test file


def output_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not (and cannot be created as) a folder that can be written in, or None. Nothing is created,
    so a command can check its output folder first and still leave it untouched when a later input check fails."""
    from ldt.atomic import in_the_way

    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    if path.is_symlink() and not path.exists():  # a loop or a dangling symlink: mkdir's bare 'File exists' else
        return in_the_way(path)
    return _writable_problem(path)


def require_output_dir(option: str, path: Path | None, error: type[Exception] = ValueError) -> None:
    """``error`` naming ``option`` unless ``path`` (None: a default decided later) is, or can be created as, a folder
    that can be written in: for a check made after parsing, before the work (data builds, pre-training) that came
    before the folder's first write."""
    problem = None if path is None else output_dir_problem(path)
    if problem:
        raise error(f"{option}: {problem}")


def check_output_dir(parser: argparse.ArgumentParser, option: str, path: Path | None) -> None:
    """``parser.error`` unless ``path`` is (or can be created as) a folder that can be written in."""
    problem = None if path is None else output_dir_problem(path)
    if problem:
        parser.error(f"{option}: {problem}")


def check_output_file(parser: argparse.ArgumentParser, option: str, path: Path | None) -> None:
    """``parser.error`` unless ``path`` can be written as a file: not a folder, its folder writable or creatable."""
    if path is None:
        return
    if path.is_dir():
        parser.error(f"{option}: {path} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        parser.error(f"{option}: cannot write {path}")
    problem = _writable_problem(path.parent)
    if problem:
        parser.error(f"{option}: {problem}")


def leave_process(code: int) -> NoReturn:
    """End this process with ``code`` now, its output and logs flushed, skipping the interpreter's teardown: after a
    gloo process group, freeing what its worker threads still hold during finalization can abort the process
    ('terminate called without an active exception', SIGABRT, exit -6) after a run that had ended, well or with
    its one error line (seen now and then here; the cause as pytorch/pytorch#179291 describes it)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)
