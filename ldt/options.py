"""YAML options for ``Train_pip.py`` / ``test.py``: loading, ``--force_yml`` overrides, defaults and validation.

Everything is checked before any compute starts, and all problems are reported at once in one :class:`OptionsError`
naming the file and the option path (with a "did you mean" for misspelled keys).
"""

from __future__ import annotations

import copy
import difflib
import inspect
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OPTION_DIRS = {"train": PROJECT_ROOT / "options" / "train", "test": PROJECT_ROOT / "options" / "test"}

METHODS = ("ft", "lpft", "deft", "ldt", "ldt_s")

# Defaults of the `ldt:` block: the paper / official values.
LDT_DEFAULTS: dict[str, Any] = {
    "method": "ldt",
    "criterion": "var",
    "unstable_ratio": 0.4,  # the paper's headline rows (its Table 9 row 0.4); the official script uses 0.5
    "group_by": "tensor",
    "seed": 0,
    "partition_file": None,
    "repartition_every": 0,  # re-probe and re-freeze every N iterations (0 = off; commented out in the official code)
    "head_patterns": None,  # DeFT head / LP-FT probe: regexes; None = the architecture's default
    "probe": {"num_batches": 300, "batch_size": 4, "dataset": "train", "train_mode": True},
    "warmup": {"steps": 0, "patterns": None, "lr": 1e-4},
    "exchange": {
        "interval": 10,
        "dpu": True,
        "weight": 0.99,
        "stable_base": 0.99,
        "stable_rank_base": 0.01,
        "unstable_base": 0.999,
        "unstable_rank_base": 0.001,
    },
}
SPEED_DEFAULTS: dict[str, Any] = {
    "compile": False,
    "autocast": None,  # null | bf16 | fp16
    "fused_optimizer": False,
    "tf32": False,
    "channels_last": False,
}
VAL_DEFAULTS: dict[str, Any] = {
    "val_freq": 5000,
    "save_img": False,
    "selection": "source",  # 'source' (training-domain validation) or 'oracle:<val name>'
    "source_set": "source",  # name of the validation set holding the source camera's held-out pairs
    "tile": None,
    "tile_overlap": 32,
    "crop_border": None,  # default: the scale
    "metrics": ["psnr", "ssim"],
    "pbar": True,
}
LOGGER_DEFAULTS: dict[str, Any] = {
    "print_freq": 100,
    "save_checkpoint_freq": 5000,
    "keep_last_checkpoints": 0,  # 0 keeps every net_g_<iter>.pth / <iter>.state; N keeps the newest N
    "use_tb_logger": True,
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "total_iter": 10000,
    "optim_g": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.0, 0.99**0.8]},
    "scheduler": None,
    "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
    "warmup_iter": -1,
    "nan_policy": "stop",  # stop | skip
    "max_nan_skips": 100,
}
PATH_KEYS = {"pretrain_network_g", "param_key_g", "strict_load_g", "resume_state", "experiments_root", "results_root"}
TOP_LEVEL = {
    "name": str,
    "model_type": str,
    "scale": int,
    "num_gpu": (int, str),
    "manual_seed": int,
    "datasets": dict,
    "network_g": dict,
    "path": dict,
    "train": dict,
    "val": dict,
    "logger": dict,
    "ldt": dict,
    "speed": dict,
    "dist_params": dict,
}
DATASET_COMMON = {
    "name", "type", "phase", "scale", "batch_size_per_gpu", "num_worker_per_gpu", "dataset_enlarge_ratio",
    "prefetch_mode", "pin_memory", "persistent_workers", "io_backend",
}


class OptionsError(ValueError):
    """The options file is invalid; the message lists every problem found."""


def resolve_option_file(name: str, kind: str) -> Path:
    """``name`` as a path, else as a bare file name inside ``options/<kind>/`` (with or without ``.yml``)."""
    path = Path(name)
    if path.is_file():
        return path
    folder = OPTION_DIRS[kind]
    for candidate in (folder / name, folder / f"{name}.yml", folder / path.name):
        if candidate.is_file():
            return candidate
    available = sorted(p.name for p in folder.glob("*.yml")) if folder.is_dir() else []
    raise OptionsError(f"option file '{name}' not found (looked in the working directory and {folder}); available: {available}")


def parse_value(text: str) -> Any:
    """A ``--force_yml`` value, read as YAML (``true``, ``[1, 2]``, ``null``, strings), and ``1e-4`` as a float.

    YAML 1.1 reads ``1e-4`` (no dot) as a string, a classic trap in SR option files.
    """
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(opt: dict, overrides: list[str] | None) -> None:
    """``key:sub=value`` assignments; the parent must exist, so a typo cannot silently create a branch."""
    for entry in overrides or []:
        if "=" not in entry:
            raise OptionsError(f"--force_yml entry '{entry}' is not of the form key:sub=value")
        keys, value = entry.split("=", 1)
        path = [k.strip() for k in keys.split(":") if k.strip()]
        node = opt
        for depth, key in enumerate(path[:-1]):
            if depth == 0 and key in TOP_LEVEL and key not in node:
                node[key] = {}  # a section left to its defaults, e.g. --force_yml ldt:method=ft
            if not isinstance(node.get(key), dict):
                raise OptionsError(f"--force_yml '{entry}': '{':'.join(path[: depth + 1])}' is not an option section")
            node = node[key]
        node[path[-1]] = parse_value(value)


def merge_defaults(values: dict | None, defaults: dict) -> dict:
    """Defaults overlaid with the given values (nested dicts merged; unknown keys kept for validation)."""
    merged = copy.deepcopy(defaults)
    for key, value in (values or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_defaults(value, merged[key])
        else:
            merged[key] = value
    return merged


def _unknown_keys(values: dict, known, where: str, problems: list[str]) -> None:
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            problems.append(f"{where}{key}: unknown option" + (f" (did you mean '{hint[0]}'?)" if hint else ""))


def _check_type(value: Any, expected, where: str, problems: list[str]) -> None:
    if value is None:
        return
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(value, bool) and bool not in types:
        problems.append(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got a boolean")
    elif not isinstance(value, types):
        problems.append(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}")


def _check_against_defaults(values: dict, defaults: dict, where: str, problems: list[str]) -> None:
    _unknown_keys(values, defaults, where, problems)
    for key, default in defaults.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                problems.append(f"{where}{key}: expected a mapping, got {value!r}")
            else:
                _check_against_defaults(value, default, f"{where}{key}:", problems)
        elif default is not None:
            _check_type(value, float if isinstance(default, float) else type(default), f"{where}{key}", problems)


def _check_network(net_opt: dict, problems: list[str]) -> None:
    from ldt.compat import patch_basicsr

    patch_basicsr()
    import ldt.archs  # noqa: F401  (registers our archs)
    from basicsr.utils.registry import ARCH_REGISTRY

    arch_type = net_opt.get("type")
    if arch_type is None:
        problems.append("network_g:type: missing (e.g. MambaIR, HAT, SAFMN)")
        return
    try:
        arch = ARCH_REGISTRY.get(arch_type)
    except KeyError:
        known = sorted(name for name, _ in ARCH_REGISTRY)
        hint = difflib.get_close_matches(arch_type, known, n=1)
        problems.append(f"network_g:type: unknown architecture '{arch_type}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        return
    params = inspect.signature(arch.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    _unknown_keys({k: v for k, v in net_opt.items() if k != "type"}, [k for k in params if k != "self"], "network_g:", problems)


def _check_datasets(opt: dict, is_train: bool, problems: list[str]) -> None:
    datasets = opt.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        problems.append("datasets: missing (a 'train' set and/or 'val_*' / 'test_*' sets)")
        return
    from ldt.compat import patch_basicsr

    patch_basicsr()
    import ldt.data  # noqa: F401
    from basicsr.utils.registry import DATASET_REGISTRY

    if is_train and "train" not in datasets:
        problems.append("datasets:train: missing")
    for phase, dataset in datasets.items():
        where = f"datasets:{phase}"
        if phase.split("_")[0] not in ("train", "val", "test"):
            problems.append(f"{where}: phase must be 'train', 'val_*' or 'test_*'")
            continue
        if not isinstance(dataset, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        for key in ("name", "type"):
            if key not in dataset:
                problems.append(f"{where}:{key}: missing")
        if "type" in dataset:
            try:
                DATASET_REGISTRY.get(dataset["type"])
            except KeyError:
                problems.append(f"{where}:type: unknown dataset type '{dataset['type']}'")
        if phase == "train":
            for key in ("batch_size_per_gpu", "num_worker_per_gpu"):
                _check_type(dataset.get(key), int, f"{where}:{key}", problems)
        for key in ("dataroot", "dataroot_gt", "dataroot_lq"):
            root = dataset.get(key)
            if isinstance(root, str) and not Path(root).expanduser().exists() and not dataset.get("build_if_missing"):
                problems.append(f"{where}:{key}: path does not exist: {root}")


def validate(opt: dict, *, is_train: bool, source: str = "options") -> None:
    """Raise :class:`OptionsError` listing every problem in ``opt`` (already merged with defaults)."""
    problems: list[str] = []
    _unknown_keys(opt, set(TOP_LEVEL) | {"is_train", "dist", "rank", "world_size", "auto_resume", "resume_partition", "root_path", "option_file"}, "", problems)
    for key, expected in TOP_LEVEL.items():
        if key in opt and key not in ("datasets",):
            _check_type(opt[key], expected, key, problems)
    for key in ("name", "network_g"):
        if key not in opt:
            problems.append(f"{key}: missing")
    if isinstance(opt.get("scale"), int) and opt["scale"] < 1:
        problems.append(f"scale: must be >= 1, got {opt['scale']}")
    if isinstance(opt.get("network_g"), dict):
        _check_network(opt["network_g"], problems)
    _check_datasets(opt, is_train, problems)
    path = opt.get("path") or {}
    _unknown_keys(path, PATH_KEYS | {"models", "training_states", "log", "visualization"}, "path:", problems)
    for key in ("pretrain_network_g", "resume_state"):
        if path.get(key) and not Path(path[key]).expanduser().is_file():
            problems.append(f"path:{key}: file does not exist: {path[key]}")
    _check_against_defaults(opt.get("val") or {}, {**VAL_DEFAULTS, "metrics": None, "tile": None}, "val:", problems)
    metrics = (opt.get("val") or {}).get("metrics")
    if is_train and isinstance(metrics, list) and "psnr" not in metrics:
        problems.append(f"val:metrics: must include 'psnr' (the best checkpoint is selected on it), got {metrics}")
    _check_against_defaults(opt.get("logger") or {}, {**LOGGER_DEFAULTS, "wandb": None}, "logger:", problems)
    _check_against_defaults(opt.get("speed") or {}, SPEED_DEFAULTS, "speed:", problems)
    keep = (opt.get("logger") or {}).get("keep_last_checkpoints")
    if isinstance(keep, int) and keep < 0:
        problems.append(f"logger:keep_last_checkpoints: must be >= 0 (0 keeps all), got {keep}")
    speed = opt.get("speed") or {}
    if speed.get("autocast") not in (None, "bf16", "fp16"):
        problems.append(f"speed:autocast: must be null, bf16 or fp16, got {speed['autocast']!r}")
    selection = (opt.get("val") or {}).get("selection", "source")
    if not (selection == "source" or (isinstance(selection, str) and selection.startswith("oracle:"))):
        problems.append(f"val:selection: must be 'source' or 'oracle:<val set name>', got {selection!r}")
    if is_train:
        train = opt.get("train") or {}
        _check_against_defaults(
            train, {**TRAIN_DEFAULTS, "optim_g": None, "scheduler": None, "pixel_opt": None}, "train:", problems
        )
        if train.get("nan_policy") not in ("stop", "skip"):
            problems.append(f"train:nan_policy: must be 'stop' or 'skip', got {train.get('nan_policy')!r}")
        ldt = opt.get("ldt") or {}
        _check_against_defaults(ldt, {**LDT_DEFAULTS, "head_patterns": None, "partition_file": None}, "ldt:", problems)
        if ldt.get("method") not in METHODS:
            problems.append(f"ldt:method: must be one of {METHODS}, got {ldt.get('method')!r}")
        ratio = ldt.get("unstable_ratio")
        if isinstance(ratio, (int, float)) and not 0 < ratio < 1:
            problems.append(f"ldt:unstable_ratio: must be strictly between 0 and 1, got {ratio}")
        from ldt.core import CRITERIA

        if ldt.get("criterion") not in CRITERIA:
            problems.append(f"ldt:criterion: must be one of {CRITERIA}, got {ldt.get('criterion')!r}")
        if ldt.get("partition_file") and not Path(ldt["partition_file"]).expanduser().is_file():
            problems.append(f"ldt:partition_file: file does not exist: {ldt['partition_file']}")
        every = ldt.get("repartition_every")
        if isinstance(every, int) and not isinstance(every, bool) and every < 0:
            problems.append(f"ldt:repartition_every: must be a non-negative integer (0 = off), got {every}")
        elif isinstance(every, int) and not isinstance(every, bool) and every > 0:
            if ldt.get("method") not in ("ldt", "ldt_s"):
                problems.append(
                    f"ldt:repartition_every: re-probing needs ldt:method ldt or ldt_s, got {ldt.get('method')!r}"
                )
            if ldt.get("criterion") == "random":
                problems.append("ldt:repartition_every: needs a probe-based ldt:criterion, not 'random'")
            if ldt.get("partition_file"):
                problems.append("ldt:repartition_every: cannot be combined with ldt:partition_file (a fixed partition)")
        probe_set = (ldt.get("probe") or {}).get("dataset")
        if isinstance(probe_set, str) and probe_set not in (opt.get("datasets") or {}):
            problems.append(f"ldt:probe:dataset: '{probe_set}' is not a key of datasets")
    if problems:
        raise OptionsError(f"invalid options in {source}:\n  - " + "\n  - ".join(problems))


def read_option_file(file: Path, chain: tuple[Path, ...] = ()) -> dict:
    """One YAML file as a dict, with ``base:`` inheritance resolved.

    ``base: other.yml`` (relative to this file's folder) makes this file a list of changes to another one, so the
    paper's variants (FT, LP-FT, ablations, other sources) are a few lines each instead of copies of a 100-line file.
    Mappings merge key by key; any other value replaces the base's; a key set to ``~`` is removed (its default applies).
    """
    file = Path(file)
    if file.resolve() in chain:
        raise OptionsError(f"{file}: 'base' files form a cycle: {' -> '.join(str(p) for p in chain + (file,))}")
    try:
        with open(file) as handle:
            opt = yaml.safe_load(handle)
    except OSError as err:
        raise OptionsError(f"cannot read option file {file}: {err}") from None
    except yaml.YAMLError as err:
        raise OptionsError(f"{file} is not valid YAML: {err}") from None
    if not isinstance(opt, dict):
        raise OptionsError(f"{file} must contain a mapping of options")
    base_name = opt.pop("base", None)
    if base_name is None:
        return opt
    if not isinstance(base_name, str):
        raise OptionsError(f"{file}: 'base' must be a file name, got {base_name!r}")
    base_file = file.parent / base_name
    if not base_file.is_file():
        raise OptionsError(f"{file}: base file {base_file} does not exist")
    return merge_changes(read_option_file(base_file, chain + (file.resolve(),)), opt)


def merge_changes(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied: nested mappings merged, other values replaced, ``None`` deletes the key."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_changes(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_options(
    path: str | Path, *, is_train: bool, overrides: list[str] | None = None, kind: str | None = None
) -> dict:
    """Read, override, merge with defaults and validate an options file; return the option dict."""
    file = resolve_option_file(str(path), kind or ("train" if is_train else "test"))
    opt = read_option_file(file)
    apply_overrides(opt, overrides)
    opt = prepare_options(opt, is_train=is_train, source=str(file))
    opt["option_file"] = str(file)
    return opt


def prepare_options(opt: dict, *, is_train: bool, source: str = "options") -> dict:
    """Fill defaults into an option dict (from a file or built in code) and validate it; returns a new dict."""
    opt = copy.deepcopy(opt)
    opt.setdefault("scale", (opt.get("network_g") or {}).get("upscale", 4))
    opt.setdefault("num_gpu", "auto")
    opt.setdefault("manual_seed", 0)
    opt["path"] = opt.get("path") or {}
    opt["val"] = merge_defaults(opt.get("val"), VAL_DEFAULTS)
    opt["logger"] = merge_defaults(opt.get("logger"), LOGGER_DEFAULTS)
    opt["speed"] = merge_defaults(opt.get("speed"), SPEED_DEFAULTS)
    if is_train:
        opt["train"] = merge_defaults(opt.get("train"), TRAIN_DEFAULTS)
        opt["ldt"] = merge_defaults(opt.get("ldt"), LDT_DEFAULTS)
    opt["is_train"] = is_train
    validate(opt, is_train=is_train, source=source)
    return opt
