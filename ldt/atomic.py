"""Crash-safe writes (a temporary file in the target's folder, renamed over the target) and checked JSON reads.

A process killed mid-write leaves the previous file intact (checkpoints, partitions, best scores, cached weights);
what it leaves is a ``.<name>.<random>.tmp`` file, which :func:`remove_leftovers` clears at the next start. A write
that fails (full disk, read-only or immutable file, no permission) raises :class:`DiskError`, one line naming the
path and the reason, and leaves the previous file as it was. A JSON file that a user truncated or replaced by hand is
read by :func:`read_json_object` (one-line :class:`FileContentError` naming it) or :func:`read_json_dict` (``{}``, for
caches that are simply rebuilt). Plain torch and the standard library, so the core and the classification side can use
it without BasicSR.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ldt.cli import not_a_file, read_json

TMP_SUFFIX = ".tmp"
REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (an immutable file? see lsattr)",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large (a file-size limit: see ulimit -f)",
}


FULL_DISK_BYTES = 1 << 20  # less free space than this is a full disk (a record or a small file no longer fits)
UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), and restored at once
os.umask(UMASK)


NO_ROOM = (REASONS[errno.ENOSPC], REASONS[errno.EDQUOT])  # reasons that freeing space (or time) can lift


class DiskError(RuntimeError):
    """A file or folder cannot be written; the message names the path and why. Earlier files are intact.
    ``no_room``: the disk (or quota) is full, so a later write may fit where a read-only mount never will."""

    def __init__(self, message: str, *, no_room: bool = False) -> None:
        super().__init__(message)
        self.no_room = no_room


class BusyError(ValueError):
    """Another process holds the lock of a folder this one would write (a run of the same name, a sweep)."""


class FileContentError(ValueError):
    """A file this package wrote earlier (a manifest, a summary, a best score) is unreadable or not what it wrote:
    truncated, edited or replaced by hand. The message names the file and what to do."""


def read_json_object(path: str | os.PathLike, required: Iterable[str] = (), remedy: str = "") -> dict:
    """The JSON object stored in ``path``, holding at least the ``required`` keys; otherwise a
    :class:`FileContentError` naming the file, what is wrong, and ``remedy`` (what the user can do)."""
    path = Path(path)
    try:
        content = read_json(path.read_text(encoding="utf-8"))
    except OSError as err:
        problem = err.strerror or type(err).__name__
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except json.JSONDecodeError as err:
        problem = f"not valid JSON ({err.msg} at line {err.lineno}, truncated?)"
    else:
        missing = [key for key in required if key not in content] if isinstance(content, dict) else None
        if missing is None:
            problem = f"holds a JSON {type(content).__name__}, not an object"
        elif missing:
            problem = f"lacks {', '.join(map(repr, missing))}"
        else:
            return content
    raise FileContentError(f"{path}: {problem}{'; ' + remedy if remedy else ''}")


def read_json_dict(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file is missing or unreadable (for caches whose unreadable
    stamp just means: rebuild)."""
    try:
        return read_json_object(path)
    except FileContentError:
        return {}


# errnos of a path whose kind is wrong (ENOENT: a symlink whose target is gone, said as such by in_the_way)
IN_THE_WAY = (errno.EEXIST, errno.EISDIR, errno.ELOOP, errno.ENOTDIR, errno.ENOENT)


def disk_reason(error: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the errno of an OSError, what stands where the path goes (:func:`in_the_way`),
    or for torch's writer errors (which lose the errno) a full disk when the folder has no space left."""
    if isinstance(error, OSError) and error.errno in REASONS:
        return REASONS[error.errno]
    if isinstance(error, OSError) and error.errno in (errno.ENOTDIR, errno.EEXIST) and folder.is_file():  # in the way
        return f"{folder} is a file, not a folder"
    if isinstance(error, OSError) and error.errno in IN_THE_WAY:
        # os.replace names its target second; mkdir and open name theirs first
        for name in (error.filename2, error.filename):
            what = in_the_way(Path(os.fsdecode(name))) if isinstance(name, (str, bytes, os.PathLike)) else None
            if what:
                return what
    try:
        if shutil.disk_usage(folder).free < FULL_DISK_BYTES:
            return REASONS[errno.ENOSPC]
    except OSError:
        pass
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def in_the_way(path: Path) -> str | None:
    """What stands at ``path`` that a write cannot go through, in words (a symlink whose target is gone, a symlink
    loop, a folder where a file goes), or None: an errno's 'File exists' or 'Is a directory' does not say which."""
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"{path} is a symlink loop"
        return f"{path} is a symlink to {os.readlink(path)}, which does not exist"
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return None


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` that fails with a :class:`DiskError` naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiskError(f"cannot create {path}: {disk_reason(err, existing_parent(path))}") from None
    return path


def existing_parent(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (where a write would fail or succeed)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Create and delete a temporary file in ``folder``: a :class:`DiskError` now, not after hours of training, when
    nothing can be written there (read-only file system, no permission)."""
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        raise DiskError(f"cannot write in {folder}: {disk_reason(err, folder)}") from None
    return folder


def check_room(folder: str | os.PathLike) -> Path:
    """``folder`` exists (made if need be), can be written and has room for a small file: a :class:`DiskError`
    now, before the work whose result goes there (a full disk still lets an empty test file be created, so the free
    space is read too)."""
    folder = check_writable(make_dirs(folder))
    problem = room_problem(folder)
    if problem:
        raise DiskError(problem)
    return folder


def room_problem(folder: Path) -> str | None:
    """Why the existing ``folder`` has no room for a small file (under FULL_DISK_BYTES free), or None."""
    if shutil.disk_usage(folder).free < FULL_DISK_BYTES:
        return f"cannot write in {folder}: no space left on device"
    return None


def _file_mode(path: Path) -> int:
    """The mode a plain ``open(path, 'w')`` would give: the file's own if it exists, else 0o666 less the umask
    (``mkstemp`` creates 0o600 files, which other users of a shared results folder could not read)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~UMASK


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    make_dirs(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        reason = disk_reason(err, path.parent)
        raise DiskError(f"cannot write {path}: {reason} (the previous file, if any, is intact)",
                        no_room=reason in NO_ROOM) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


class _KeepsWriteErrors:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch's zip writer turns it into a
    ``RuntimeError`` without its errno ('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598'), so a
    quota or a file-size limit could not be told from any other failure."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None
        self.name = getattr(file, "name", None)  # the path, as a file object gives it

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(obj, tmp: str) -> None:
    with open(tmp, "wb") as file:
        writer = _KeepsWriteErrors(file)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` without ever leaving a half-written file; a write that fails names its reason (the errno torch's
    writer loses)."""
    return _atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (e.g. JSON) without ever leaving a half-written file."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file (e.g. an encoded PNG) without ever leaving a half-written file."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def leftovers(folder: str | os.PathLike) -> Iterator[Path]:
    """Temporary files that an interrupted atomic write left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        yield from (p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file())


def remove_leftovers(*folders: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left in ``folders``; returns the deleted paths."""
    removed = [p for folder in folders for p in leftovers(folder)]
    for path in removed:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # a folder that became read-only
            raise DiskError(f"cannot remove {path}: {disk_reason(err, path.parent)}") from None
    return removed


STAGING_NAME = r"\.{name}-[a-z0-9_]{{8}}"  # what tempfile.mkdtemp(prefix=".<name>-") names, and nothing else


def staging_folder(target: str | os.PathLike) -> Path:
    """A new empty hidden folder beside ``target``, to build it in and rename over it; call it holding ``target``'s
    lock (:func:`lock_beside`). Earlier staging folders of ``target`` are then those of builds killed mid-way (a
    ``kill -9`` skips their cleanup) and are deleted first, or every such kill would leave a hidden copy of the data
    behind. The folder gets a plain ``mkdir``'s mode: ``mkdtemp``'s 0o700 would make the dataset it becomes unreadable
    to the other users of a shared checkout."""
    target = Path(target)
    parent = make_dirs(target.parent)
    stale = re.compile(STAGING_NAME.format(name=re.escape(target.name)))
    for path in parent.iterdir():
        if stale.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}-"))
        os.chmod(staging, 0o777 & ~UMASK)
    except OSError as err:
        raise DiskError(f"cannot create a folder in {parent}: {disk_reason(err, parent)}") from None
    return staging


_HELD: dict[Path, int] = {}  # the locks this process holds -> their descriptors (flock refuses a second hold)


def _release_in_child() -> None:
    """A forked child (a DataLoader worker) shares its parent's lock descriptors, so a lock would outlive a killed
    parent until every child exits: the child points them at /dev/null, and holds no lock of its own."""
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for descriptor in _HELD.values():
        with contextlib.suppress(OSError):
            os.dup2(null, descriptor)
    os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_release_in_child)


def lock_beside(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: a hidden ``.<name>.lock`` beside it, since the folder itself may not exist yet,
    or be archived or replaced while the lock is held."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` for the block; the file records the holder's pid and start.

    ``busy``: when another process holds the lock, raise :class:`BusyError` with this message (``{holder}`` and
    ``{lock}`` are filled in); None: say so on stderr and wait for it. The lock goes with its process, even on
    ``kill -9``. The file is never deleted (unlinking a lock races with a process about to take it). Where it cannot
    be created (a read-only or full disk, no permission), nothing else can write beside it either: the block runs
    unlocked and the write itself reports the disk's problem, in its own words. Anything else in the way (a folder
    or FIFO of that name, a symlink loop) is a :class:`DiskError` naming it: the folder beside it can be written, so
    running unlocked would let a second run of the name in. Re-entrant within a process (a sweep stage holds its
    run's lock and the training inside it takes it again).
    """
    path = Path(path)
    key = Path(os.path.realpath(path))  # one key for every spelling of the path (symlinks, ..), as flock sees one
    # file; not Path.resolve, which raises a bare RuntimeError on a symlink loop (named by the open below)
    if key in _HELD:
        yield
        return
    descriptor = _open_lock(path)
    if descriptor is None:
        yield
        return
    with os.fdopen(descriptor, "r+" if _writable(descriptor) else "r") as handle:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            if busy is not None:
                raise BusyError(busy.format(holder=holder, lock=path)) from None
            print(f"waiting for {holder} (lock {path}) ...", file=sys.stderr, flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        if handle.writable():
            # Unbuffered: a pid the disk has no room for (a full disk) must not fail again when the handle closes.
            with contextlib.suppress(OSError):  # the pid is for messages only
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _HELD[key] = descriptor
        try:
            yield
        finally:
            _HELD.pop(key, None)


def _writable(descriptor: int) -> bool:
    return fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _open_lock(path: Path) -> int | None:
    """A descriptor of the lock file, created if need be; read-only where another user created it (flock needs no
    write access, so a shared folder still locks); None where the disk lets it be neither created nor opened (see
    :data:`REASONS`); a :class:`DiskError` where something other than a regular file is in its way."""
    kind = not_a_file(path)
    if kind:
        raise DiskError(f"cannot lock {path}: it is {kind} (made by hand or by another tool?); move it away")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        pass
    except OSError as err:
        if err.errno in REASONS:  # the disk refuses it, and every write beside it
            return None
        raise DiskError(f"cannot lock {path}: {disk_reason(err, existing_parent(path))}") from None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:  # not there to open: no permission to create it, nor to write beside it
        return None


def build_once(root: str | os.PathLike, what: str, manifest_name: str, manifest: dict,
               write: Callable[[Path], None]) -> Path:
    """``root`` as ``write(folder)`` fills it, unless its manifest (``root/manifest_name``) already equals ``manifest``.

    Every generated dataset needs the same care, so it lives here once: under ``root``'s lock (a second build waits,
    then finds the first's), built in a :func:`staging_folder` renamed over ``root`` at the end with the manifest
    written last (a kill leaves no half-written dataset), never over a non-empty folder without the manifest, and a
    full disk is one :class:`DiskError` naming the dataset (``what``). An unreadable manifest is a stale build."""
    root = Path(root)
    with exclusive_lock(lock_beside(root)):
        if read_json_dict(root / manifest_name) == manifest:
            return root
        if root.exists() and not (root / manifest_name).is_file() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists but is not a generated {what} (no {manifest_name}); choose another "
                                  "folder")
        staging = staging_folder(root)
        try:
            write(staging)
            (staging / manifest_name).write_text(json.dumps(manifest, indent=1) + "\n")
            if root.exists():
                # A build with other settings: renamed aside whole (under a staging name, so a kill leaves no
                # half-deleted build with its manifest, and the next build deletes it), then removed.
                old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
                os.rename(root, old)
                os.replace(staging, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, root)
        except OSError as err:  # a full disk: one line naming the dataset, not a bare errno
            raise DiskError(f"cannot write the generated {what} {root}: {disk_reason(err, root.parent)}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root
