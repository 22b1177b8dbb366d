"""Reading weights files (``.pth``) with one-line errors that name the file and what is wrong with it.

A truncated download, an empty file, a file that is not a PyTorch checkpoint, a checkpoint of another network:
each is a :class:`WeightsError` naming the path and, for a mismatch, the first few keys that do not fit, instead of
an ``EOFError`` / ``OSError: [Errno 22]`` / size-mismatch traceback. Always ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ldt.cli import EMPTY_FILE, first_names, not_a_file

logger = logging.getLogger(__name__)

NOT_A_CHECKPOINT = "is not a PyTorch checkpoint (not a zip archive or a tensor pickle)"


class WeightsError(ValueError):
    """A weights or state file cannot be used; the message names the file and the problem."""


def gist(text: str, limit: int = 120) -> str:
    """The first sentence of a library's error message, cut at a word (not mid-word) when longer than ``limit``."""
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + " …"


def read_checkpoint(path: str | os.PathLike, *, what: str = "weights file", mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, or a :class:`WeightsError` saying why the file cannot be."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{what} {path} does not exist")
    kind = not_a_file(path)
    if kind:
        raise WeightsError(f"{what} {path} is {kind}")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise WeightsError(f"{what} {path}: cannot be read ({err.strerror})") from None
    if size == 0:
        raise WeightsError(f"{what} {path} {EMPTY_FILE}")
    try:
        with warnings.catch_warnings():  # torch's note on the protocol would come above our line, source line and all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except PermissionError:
        raise WeightsError(f"{what} {path}: permission denied") from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise WeightsError(f"{what} {path} is truncated or corrupt ({type(err).__name__})") from None
    except pickle.UnpicklingError as err:
        protocol = saved_pickle_protocol(path)
        if protocol is not None and protocol > 3:  # torch's weights-only unpickler reads protocols 2 and 3 only
            raise WeightsError(f"{what} {path} was saved by torch.save with pickle protocol {protocol}, which a "
                               "weights-only load (torch.load(weights_only=True)) cannot read: save it again with "
                               "torch.save's default protocol") from None
        if "unsupported global" in str(err).lower():
            raise WeightsError(f"{what} {path} holds Python objects other than tensors (a pickled model? save its "
                               "state_dict instead; such files are not loaded: weights_only)") from None
        raise WeightsError(f"{what} {path} {NOT_A_CHECKPOINT}") from None
    except (RuntimeError, OSError, ValueError) as err:
        foreign = foreign_zip_entries(path)
        if foreign is not None:
            raise WeightsError(f"{what} {path} is a zip archive but not a PyTorch checkpoint (no data.pkl record; it "
                               f"holds {first_names(foreign) or 'nothing'})") from None
        text = " ".join(str(err).split())
        if "Invalid magic number" in text:  # a pickle, but not one torch.save wrote
            raise WeightsError(f"{what} {path} {NOT_A_CHECKPOINT}") from None
        if any(s in text for s in ("central directory", "failed reading", "invalid header", "Invalid argument",
                                   "file read failed", "unexpected EOF", "PytorchStreamReader")):
            detail = gist(text)  # a bare errno ('[Errno 22] Invalid argument': a mapped file cut short) says nothing more
            detail = "" if re.fullmatch(r"\[Errno \d+\] [^:]*", detail) else f" ({detail})"
            raise WeightsError(f"{what} {path} is truncated or not a PyTorch checkpoint{detail}") from None
        raise WeightsError(f"{what} {path} cannot be loaded: {gist(text, 200)}") from None
    except Exception:  # on foreign bytes the weights-only unpickler also fails as KeyError, IndexError, ...
        raise WeightsError(f"{what} {path} {NOT_A_CHECKPOINT}") from None


def foreign_zip_entries(path: str | os.PathLike) -> list[str] | None:
    """The entries of a whole zip archive that holds no ``torch.save`` records (no ``data.pkl``), or None (no such
    archive). Why: torch's own errors on one (a NumPy ``.npz``, a zip of other files) name a C++ source line."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    return None if any(name.rpartition("/")[2] == "data.pkl" for name in names) else names


def saved_pickle_protocol(path: str | os.PathLike) -> int | None:
    """The pickle protocol of the records in a ``torch.save`` zip checkpoint (None: no such file). Why: a file saved
    with ``pickle_protocol=4`` or later is a real checkpoint that a weights-only load refuses, not a foreign file."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl"), None)
            if name is None:
                return None
            with archive.open(name) as records:
                head = records.read(2)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    return head[1] if len(head) == 2 and head[0] == pickle.PROTO[0] else None


def state_dict_in(checkpoint: object, path: str | os.PathLike, key: str | None = None,
                  containers: tuple[str, ...] = ("params_ema", "params", "state_dict", "model"),
                  log: Callable[[str], None] = logger.info) -> "OrderedDict[str, torch.Tensor]":
    """The tensors inside a checkpoint, without a DDP ``module.`` prefix.

    ``key`` picks an entry explicitly (e.g. BasicSR's ``params`` / ``params_ema``); by default the first of
    ``containers`` that holds something is used (BasicSR releases: ``params_ema`` first, as they are evaluated), else
    the mapping itself if it already holds tensors. An empty entry is passed over by that default (a file saved with
    an empty ``params_ema`` beside its ``params``), and ``log`` says which entry was used instead; one asked for
    by ``key`` is an error.
    """
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    if key is not None and key not in checkpoint:
        raise WeightsError(f"{path} has no '{key}' entry; the file has {entries(checkpoint)}")
    chosen = key
    if key is None:
        present = [k for k in containers if isinstance(checkpoint.get(k), Mapping)]
        chosen = next((k for k in present if checkpoint[k]), None)
        empty = present[:present.index(chosen)] if chosen is not None else []
        if empty:
            log(f"{path}: its {', '.join(repr(k) for k in empty)} entr{'ies are' if len(empty) > 1 else 'y is'} "
                f"empty: the weights are its '{chosen}' entry ({held(checkpoint[chosen])})")
    state = checkpoint if chosen is None else checkpoint[chosen]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        if chosen is None:
            raise WeightsError(f"{path} does not hold a state dict of tensors; the file has {entries(checkpoint)}")
        how = "the param_key asked for" if key is not None else f"the first non-empty of {', '.join(containers)}"
        raise WeightsError(f"{path}: its '{chosen}' entry ({how}) is {held(state)}, not a state dict of tensors; the "
                           f"file has {entries(checkpoint)}")
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())


def held(value: object) -> str:
    """What a checkpoint entry holds, in words ('40 tensors', 'empty', 'None', 'a mapping of 3 entries, 2 of them
    tensors')."""
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if not isinstance(value, Mapping):
        return repr(value) if value is None or isinstance(value, (bool, int, float)) else f"a {type(value).__name__}"
    if not value:
        return "empty"
    tensors = sum(isinstance(v, torch.Tensor) for v in value.values())
    if tensors == len(value):
        return f"{tensors} tensor{'s' * (tensors > 1)}"
    return f"a mapping of {len(value)} entr{'ies' if len(value) > 1 else 'y'}, {tensors or 'none'} of them tensors"


def entries(checkpoint: Mapping, limit: int = 10) -> str:
    """A checkpoint's top-level entries with what each holds: why a key does not give weights, and which one would
    ('params' (40 tensors), 'params_ema' (empty))."""
    names = sorted(checkpoint, key=str)
    listed = ", ".join(f"'{name}' ({held(checkpoint[name])})" for name in names[:limit])
    return (listed + (f", … ({len(names)} in all)" if len(names) > limit else "")) if names else "no entries"


def check_fit(state: Mapping[str, torch.Tensor], model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
              ignore: Callable[[str], bool] = lambda key: False, label: str | None = None) -> None:
    """Raise a :class:`WeightsError` naming the first keys that do not fit ``model`` (``ignore``d keys aside; the
    network named ``label``, by default its class name).

    ``strict``: every key on both sides must match; otherwise only keys present on both sides must agree in shape
    and in kind (a floating-point parameter takes no integer, bool or quantized values), and there must be one: a
    file that shares no key with the network loaded nothing, and test.py scored a randomly initialised network.
    """
    own = {k: v for k, v in model.state_dict().items() if not ignore(k)}
    given = {k: v for k, v in state.items() if not ignore(k)}
    if not strict and own and given and not own.keys() & given.keys():
        raise WeightsError(f"{path} does not fit {label or type(model).__name__}: none of its {len(given)} key(s) "
                           f"({first_names(list(given))}) is the "
                           "network's, so a non-strict load would load nothing (the network stays randomly "
                           "initialised)")
    # Old checkpoints lack BatchNorm's num_batches_tracked; BatchNorm fills it in when loading.
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")] if strict else []
    unexpected = [k for k in given if k not in own] if strict else []
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in given.items()
              if k in own and v.shape != own[k].shape]
    # load_state_dict casts silently: integer, bool or quantized values into a float parameter are another format's
    # (an int8-quantized export), not weights
    kinds = [f"{k} {v.dtype} vs {own[k].dtype}" for k, v in given.items()
             if k in own and own[k].is_floating_point() and not v.is_floating_point()]
    if missing or unexpected or shapes or kinds:
        parts = [f"{what} {len(keys)} key(s) ({first_names(keys)})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs net)", shapes),
                                    ("not floating point (file vs net)", kinds))
                 if keys]
        raise WeightsError(f"{path} does not fit {label or type(model).__name__}: " + "; ".join(parts))


def partial_load(state: Mapping[str, torch.Tensor], model: nn.Module, path: str | os.PathLike) -> str | None:
    """What a non-strict load of ``state`` into ``model`` leaves out, in one line, or None when every key matches:
    BasicSR's own loader logs the keys that differ, and a network partly at its initialisation is scored silently
    otherwise."""
    network = model.state_dict()
    own = [k for k in network if not k.endswith("num_batches_tracked")]
    kept = [k for k in own if k not in state]
    unused = [k for k in state if k not in network]
    if not kept and not unused:
        return None
    listed = f" ({first_names(kept)})" if kept else ""
    return (f"path:strict_load_g: false: {path} set {len(own) - len(kept)} of the network's {len(own)} tensors; "
            f"{len(kept)} keep their initialisation{listed}, {len(unused)} of the file's were not used")


def read_weights(path: str | os.PathLike, key: str | None = None, model: nn.Module | None = None,
                 strict: bool = True, log: Callable[[str], None] = logger.info) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of a weights file, checked against ``model`` when given (one-line errors naming the file);
    ``log``: where the entry used instead of an empty one is said (:func:`state_dict_in`)."""
    state = state_dict_in(read_checkpoint(path), path, key, log=log)
    if model is not None:
        check_fit(state, model, path, strict=strict)
    check_finite(state, path)
    return state


def check_finite(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """A :class:`WeightsError` naming the first floating-point tensor with NaN/inf values: a network saved from a run
    that diverged would train on NaN from the first step (or test to NaN metrics), and fail far from the file."""
    broken = next((name for name, tensor in state.items()
                   if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.isfinite().all()), None)
    if broken is not None:
        raise WeightsError(f"weights file {path}: '{broken}' has NaN/inf values (saved from a run that diverged?)")


def check_cached_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """A weights file this package trained and cached (a demo's pre-trained backbone), read whole and checked against
    the network it was trained as before it is reused: a cut-off, foreign or replaced file is one line naming it and
    the remedy (deleting it trains it again), not a failure inside the first run or a message without the remedy."""
    try:
        read_weights(path, model=model)
    except WeightsError as err:
        raise WeightsError(f"cached pre-trained backbone: {err}; delete {path} to pre-train it again") from None


# Fingerprints computed in this process, by the file's identity (see file_identity): the demo's and the sweeps'
# stages start from one backbone, and each read it whole for its fingerprint besides training's start-up check.
_FINGERPRINTS: dict[tuple, str] = {}
# Only a file unchanged for this long is kept: a file system's clock ticks (a few ms on older kernels, more on some
# network file systems), so a rewrite within the tick of the last change could keep the same identity.
SETTLED_SECONDS = 1.0


def file_identity(path: str | os.PathLike) -> tuple | None:
    """What changes when a file is replaced (a new inode) or rewritten in place (its size, mtime or ctime; ctime
    also when a copy keeps the old mtime), or None when it cannot be read (the read then says why)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def content_fingerprint(path: str | os.PathLike) -> str:
    """A short sha256 of every tensor in a checkpoint (names, dtypes, shapes, values), not of the file's bytes;
    computed once per file identity in a process (:func:`file_identity`; a file changed in the last
    :data:`SETTLED_SECONDS` is read each time).

    Why: run identities name pre-trained weights by path; a file rebuilt in place (``--force``) or replaced by hand
    must not let old records or cached stages pass as runs of the new weights. Two saves of the same tensors differ
    in their zip records, so the bytes of the file are no identity; the tensors are.
    """
    identity, started = file_identity(path), time.time()
    if identity in _FINGERPRINTS:
        return _FINGERPRINTS[identity]
    digest = hashlib.sha256()

    def visit(prefix: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{prefix}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                visit(f"{prefix}/{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{prefix}/{index}", item)
        else:
            digest.update(f"{prefix}={value!r}|".encode())

    visit("", read_checkpoint(path))
    fingerprint = digest.hexdigest()[:16]
    settled = identity is not None and identity[-1] < (started - SETTLED_SECONDS) * 1e9  # its ctime
    if settled and file_identity(path) == identity:  # nor changed while it was read
        _FINGERPRINTS[identity] = fingerprint
    return fingerprint
