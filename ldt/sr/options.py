"""The option schema of ``Train_pip.py``, ``test.py``, the demo, ``reproduce`` and the BasicSR pipeline.

Every option is declared once, here or in the object that uses it (the ``ldt:`` block is :class:`ldt.core.MethodConfig`
with three SR probe fields; dataset blocks are the schemas in :mod:`ldt.data.options`; ``network_g`` is checked
against the architecture's own constructor). :func:`prepare_options` reports *every* problem of a file at once, one
line each naming the file and the option path (with a "did you mean" for misspelled keys), before any data is read,
any weight is loaded or any probe runs. Numbers written as strings (``lr: 1e-4`` is a string to PyYAML) are read
as the numbers they spell.
"""

from __future__ import annotations

import codecs
import copy
import inspect
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ldt.cli import OneLineParser, not_a_file, suggest
from ldt.core import MethodConfig, ProbeConfig, method_class
from ldt.core.config import (
    Int,
    NonNegativeInt,
    Options,
    PathText,
    PositiveInt,
    PositiveReal,
    Real,
    Seed,
    annotation_models,
    describe_errors,
    did_you_mean,
    meant,
    network_schema,
    option_rows,
    runtime,
    type_name,
    validate_into,
)
from ldt.data.options import DatasetOptions, DRealSRCameraOptions, PairedImageOptions, SingleImageOptions
from ldt.runner import usable_cpus
from ldt.sweep import PROJECT_ROOT, identity_path

OPTION_DIRS = {"train": PROJECT_ROOT / "options" / "train", "test": PROJECT_ROOT / "options" / "test"}
# model_type values of the official MambaIR / HAT / SAFMN option files: LDTModel runs them (with a warning).
OFFICIAL_MODEL_TYPES = ("SRModel", "MambaIRModel", "HATModel")
DATASET_SCHEMAS: dict[str, type[DatasetOptions]] = {
    "DRealSRCameraDataset": DRealSRCameraOptions,
    "PairedImageDataset": PairedImageOptions,
    "SingleImageDataset": SingleImageOptions,
}


class OptionsError(ValueError):
    """The options are invalid; the message has one line per problem, each naming the file and the option."""


class OptionsWarning(UserWarning):
    """An option is accepted but ignored or reinterpreted (e.g. an official file's unused network keys)."""


# --------------------------------------------------------------------------------------------------------- the schema


class SpeedOptions(Options):
    compile: bool = Field(False, description="torch.compile every branch")
    autocast: Literal["bf16", "fp16"] | None = Field(None, description="mixed precision (changes numerics)")
    fused_optimizer: bool = Field(False, description="fused (CUDA) / foreach (CPU) Adam")
    tf32: bool = Field(False, description="TF32 matmuls and convolutions on Ampere+ GPUs")
    channels_last: bool = Field(False, description="channels-last memory format")


Betas = Annotated[list[Annotated[Real, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]


class AdamOptions(Options):
    type: Literal["Adam"]
    lr: PositiveReal = Field(1e-4, description="learning rate")
    betas: Betas = Field([0.0, 0.99**0.8], description="official LDT betas (0, 0.99^0.8)")
    weight_decay: Real = Field(0.0, ge=0, description="L2 penalty")
    eps: PositiveReal = Field(1e-8, description="Adam epsilon")
    amsgrad: bool = Field(False, description="AMSGrad variant")


class AdamWOptions(AdamOptions):
    type: Literal["AdamW"]  # type: ignore[assignment]
    weight_decay: Real = Field(0.01, ge=0, description="decoupled weight decay (torch's default)")


def _one_weight_each(weights: list[float], info: ValidationInfo, field: str) -> list[float]:
    """BasicSR's schedulers assert one restart weight per entry of ``field``: say so here, naming both."""
    entries = info.data.get(field)
    if entries is not None and len(entries) != len(weights):
        raise ValueError(f"{len(weights)} weight(s) {weights} for {field} {entries}: give one weight per entry of "
                         f"{field}")
    return weights


class MultiStepOptions(Options):
    type: Literal["MultiStepLR", "MultiStepRestartLR"]
    milestones: list[PositiveInt] = Field(description="iterations at which the lr is multiplied by gamma")
    gamma: PositiveReal = Field(0.1, description="lr factor at each milestone")
    restarts: list[NonNegativeInt] = Field([0], description="BasicSR restarts")
    restart_weights: list[PositiveReal] = Field([1.0], description="BasicSR restart weights, one per restart")

    @field_validator("restart_weights")
    @classmethod
    def _per_restart(cls, weights: list[float], info: ValidationInfo) -> list[float]:
        return _one_weight_each(weights, info, "restarts")


class CosineRestartOptions(Options):
    type: Literal["CosineAnnealingRestartLR"]
    periods: list[PositiveInt] = Field(min_length=1, description="cosine periods (iterations); they must cover "
                                                                 "train:total_iter")
    restart_weights: list[PositiveReal] = Field([1.0], description="lr weight of each period, one per period")
    eta_min: Real = Field(0.0, ge=0, description="lowest lr")

    @field_validator("restart_weights")
    @classmethod
    def _per_period(cls, weights: list[float], info: ValidationInfo) -> list[float]:
        return _one_weight_each(weights, info, "periods")


class PixelLossOptions(Options):
    type: Literal["L1Loss", "MSELoss", "CharbonnierLoss"] = Field("L1Loss", description="BasicSR pixel loss")
    loss_weight: PositiveReal = Field(1.0, description="loss weight")
    reduction: Literal["mean", "sum"] = Field("mean", description="over pixels")
    eps: PositiveReal | None = Field(None, description="CharbonnierLoss only")

    @model_validator(mode="after")
    def _eps_for_charbonnier(self) -> "PixelLossOptions":
        if self.eps is not None and self.type != "CharbonnierLoss":
            raise ValueError(f"eps is an option of CharbonnierLoss, not of {self.type}")
        return self


class TrainOptions(Options):
    total_iter: PositiveInt = Field(10000, description="training iterations")
    optim_g: Annotated[Union[AdamOptions, AdamWOptions], Field(discriminator="type")] = Field(
        default_factory=lambda: AdamOptions(type="Adam"), description="optimizer of every branch")
    scheduler: Annotated[Union[MultiStepOptions, CosineRestartOptions], Field(discriminator="type")] | None = Field(
        None, description="lr schedule (null: constant)")
    pixel_opt: PixelLossOptions = Field(default_factory=PixelLossOptions)
    warmup_iter: Int = Field(-1, ge=-1, description="linear lr warm-up iterations (-1: none)")
    ema_decay: Real = Field(0.0, ge=0, lt=1, description="BasicSR's EMA of the deployed network, saved as "
                                                        "params_ema and validated instead (0: off; ft_ema: matched)")
    nan_policy: Literal["stop", "skip"] = Field("stop", description="on a NaN/inf loss: stop, or skip the step")
    max_nan_skips: NonNegativeInt = Field(100, description="skip at most this many steps (nan_policy skip)")

    @field_validator("scheduler")
    @classmethod
    def _periods_cover_the_run(cls, scheduler: Any, info: ValidationInfo) -> Any:
        """BasicSR's cosine schedule has no learning rate after its last period (a TypeError mid-run)."""
        total = info.data.get("total_iter")
        if isinstance(scheduler, CosineRestartOptions) and total is not None and sum(scheduler.periods) < total:
            raise ValueError(f"periods {scheduler.periods} end at iteration {sum(scheduler.periods)}, before "
                             f"train:total_iter {total}: make them sum to at least {total}")
        return scheduler

    @field_validator("warmup_iter")
    @classmethod
    def _warmup_needs_a_scheduler(cls, warmup_iter: int, info: ValidationInfo) -> int:
        """BasicSR's warm-up ramps to the 'initial_lr' a scheduler records: without one it fails at iteration 1."""
        if warmup_iter > 0 and "scheduler" in info.data and info.data["scheduler"] is None:
            raise ValueError(f"{warmup_iter} needs a train:scheduler (BasicSR's warm-up ramps up to the scheduler's "
                             "initial lr); set warmup_iter: -1, or add a scheduler, e.g. {type: MultiStepLR, "
                             "milestones: [total_iter]}")
        return warmup_iter


class MetricOptions(Options):
    type: Literal["calculate_psnr", "calculate_ssim"] = Field(description="BasicSR metric")
    crop_border: NonNegativeInt | None = Field(None, description="pixels cut at each border (null: the scale)")
    test_y_channel: bool = Field(True, description="on the Y channel, as DRealSR results are reported")
    better: Literal["higher", "lower"] = Field("higher", description="BasicSR's best-metric direction")


def _metric_shorthand(value: Any) -> Any:
    """``[psnr, ssim]`` means BasicSR's ``{psnr: {type: calculate_psnr}, ssim: {type: calculate_ssim}}``."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {name: {"type": f"calculate_{name}"} for name in value}
    return value


class ValOptions(Options):
    val_freq: PositiveInt = Field(5000, description="validate the deployed network every N iterations (and at the end)")
    validate_start: bool = Field(False, description="also validate the network before fine-tuning (iteration 0) as a "
                                                    "candidate for the best checkpoint, as the official script does")
    save_img: bool = Field(False, description="save validation / test outputs")
    selection: str = Field("source", description="best checkpoint by: 'source' (training-domain validation), 'last', "
                                                 "or 'oracle:<set>' (a target set, labelled oracle)")
    source_set: str = Field("source", description="the validation set of the source camera's held-out pairs")
    tile: PositiveInt | None = Field(None, description="evaluate in LR tiles of this size (large test images)")
    tile_overlap: NonNegativeInt = Field(32, description="overlap of the LR tiles")
    metrics: Annotated[dict[str, MetricOptions], Field(description="metrics (a list of names is shorthand)")] = Field(
        default_factory=lambda: _metric_shorthand(["psnr", "ssim"]))
    pbar: bool = Field(True, description="progress bars while validating")
    suffix: str | None = Field(None, description="BasicSR test: suffix of saved images")

    @field_validator("metrics", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _metric_shorthand(value)

    @field_validator("suffix")
    @classmethod
    def _suffix_is_part_of_a_file_name(cls, value: str | None) -> str | None:
        """test.py saves ``<image>_<suffix>.png``: a '/' made a folder per image, and '../' wrote outside results/."""
        if value is not None and ("/" in value or "\\" in value):
            raise ValueError(f"must be part of a file name, without '/' or '\\', got {value!r}")
        return value

    @field_validator("selection")
    @classmethod
    def _selection(cls, value: str) -> str:
        if value not in ("source", "last") and not (value.startswith("oracle:") and len(value) > len("oracle:")):
            raise ValueError(f"must be 'source', 'last' or 'oracle:<validation set name>', got {value!r}")
        return value


class WandbOptions(Options):
    project: str | None = Field(None, description="BasicSR pipeline only")
    resume_id: str | None = Field(None, description="BasicSR pipeline only")
    entity: str | None = Field(None, description="BasicSR pipeline only")


class LoggerOptions(Options):
    print_freq: PositiveInt = Field(100, description="log the losses every N iterations")
    save_checkpoint_freq: PositiveInt = Field(
        5000, description="save net_g_<iter>.pth and <iter>.state every N (and at the last iteration)")
    keep_last_checkpoints: NonNegativeInt = Field(0, description="keep the newest N iteration checkpoints (0: all)")
    use_tb_logger: bool = Field(True, description="TensorBoard curves under tb_logger/<name>")
    wandb: WandbOptions | None = Field(None, description="Weights & Biases (BasicSR pipeline only)")


class PathOptions(Options):
    pretrain_network_g: PathText | None = Field(None, description="weights to start from (test.py: to evaluate)")
    param_key_g: str | None = Field(None, description="key of the weights inside the file (null: params_ema, else "
                                                      "params, the first not empty, else the bare state dict)")
    strict_load_g: bool = Field(True, description="every key must match")
    resume_state: PathText | None = Field(None, description="a training state to resume from")
    ignore_resume_networks: list[str] | None = Field(None, description="BasicSR pipeline")
    experiments_root: str | None = runtime()
    models: str | None = runtime()
    training_states: str | None = runtime()
    log: str | None = runtime()
    visualization: str | None = runtime()
    results_root: str | None = runtime()


class DistOptions(Options):
    backend: str = Field("nccl", description="BasicSR slurm launcher")
    port: PositiveInt | None = Field(None, description="BasicSR slurm launcher")


class SRProbeOptions(ProbeConfig):
    batch_size: PositiveInt = Field(4, description="LR patches per probe batch, as the official code")
    dataset: str = Field("train", description="the datasets key the probe reads (source data)")
    order: Literal["shuffled", "file"] = Field(
        "shuffled", description="which patches: 'shuffled' draws the batches with a sampler seeded by ldt:seed (and "
                                "the dataset's enlarge ratio); 'file' reads the first num_batches x batch_size pairs "
                                "in the dataset's file order, as the official probe (random crops and flips apply in "
                                "both)")


class LDTOptions(MethodConfig):
    probe: SRProbeOptions = Field(default_factory=SRProbeOptions)


class RunOptions(Options):
    """The top level of an option file (``datasets`` and ``network_g`` are checked per type / architecture)."""

    name: str = Field(description="experiment name: experiments/<name>, tb_logger/<name> (test: results/<name>)")
    model_type: Literal["LDTModel"] = Field("LDTModel", description="BasicSR model")
    scale: PositiveInt | None = Field(None, description="SR factor (null: the network's upscale, else 4)")
    num_gpu: Any = Field("auto", description="GPUs per process: a non-negative integer, or auto (1 if CUDA, else 0)")
    manual_seed: Seed = Field(0, description="seed of initialisation, data order and augmentation")
    datasets: Any = Field(description="train / val_* / test_* blocks, each checked by its dataset type's schema")
    network_g: Any = Field(description="the network: type + its constructor arguments, checked against the "
                                       "architecture's constructor")
    path: PathOptions = Field(default_factory=PathOptions)
    train: TrainOptions = Field(default_factory=TrainOptions)
    val: ValOptions = Field(default_factory=ValOptions)
    logger: LoggerOptions = Field(default_factory=LoggerOptions)
    ldt: LDTOptions = Field(default_factory=LDTOptions)
    speed: SpeedOptions = Field(default_factory=SpeedOptions)
    dist_params: DistOptions | None = None
    is_train: bool | None = runtime()
    dist: bool | None = runtime()
    rank: Int | None = runtime()
    world_size: Int | None = runtime()
    auto_resume: bool | None = runtime()
    root_path: str | None = runtime()
    option_file: str | None = runtime()

    @field_validator("num_gpu")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"must be auto or a non-negative integer, got {value!r}")

    @field_validator("name")
    @classmethod
    def _inside_experiments(cls, name: str) -> str:
        """A name is a relative path that stays inside experiments/ (``demo/ft`` is fine, ``../x`` is not)."""
        path = PurePosixPath(name)
        if not name.strip() or path.is_absolute() or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
            raise ValueError(f"must be a relative name inside experiments/ (results/ for test.py) without '..', '.', "
                             f"'\\' or empty parts, got {name!r}")
        if any(ord(char) < 32 for char in name):
            raise ValueError(f"must not contain control characters, got {name!r}")
        return name


# ---------------------------------------------------------------------------------------------- files and overrides


def resolve_option_file(name: str, kind: str) -> Path:
    """``name`` as a path, else as a bare file name inside ``options/<kind>/`` (with or without ``.yml``)."""
    path = Path(name)
    what = not_a_file(path)
    if what:  # a FIFO or a device would hang the read or never end; named, never looked for elsewhere
        raise OptionsError(f"option file '{name}' is {what}")
    if path.is_file():
        return path
    folder = OPTION_DIRS[kind]
    for candidate in (folder / name, folder / f"{name}.yml", folder / path.name):
        if candidate.is_file():
            return candidate
    # the files of its subfolders too (ablations/, sources/), as the relative names the candidates above accept
    available = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.yml")) if folder.is_dir() else []
    wanted = name if name.endswith(".yml") else f"{name}.yml"
    same_name = [known for known in available if Path(known).name == Path(wanted).name]
    hint = (suggest(same_name[0]) if len(same_name) == 1 else did_you_mean(wanted, available))
    raise OptionsError(f"option file '{name}' not found (looked in the working directory and {folder}){hint}; "
                       f"available: {available}")


def _duplicate_keys(node: yaml.Node, path: tuple[str, ...] = (), seen: set[int] | None = None) -> list[tuple[str, str]]:
    """(option path, where it is written) of each key written twice in a mapping (PyYAML keeps the last silently)."""
    seen = set() if seen is None else seen
    if id(node) in seen or not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        return []
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        return [p for index, item in enumerate(node.value) for p in _duplicate_keys(item, (*path, f"[{index}]"), seen)]
    problems, first = [], {}
    for key, _ in node.value:  # this mapping's keys first, then those inside its values
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
        if name is None or key.tag == "tag:yaml.org,2002:merge":
            continue
        mark = key.start_mark
        if (key.tag, name) in first:
            line, column = first[key.tag, name]
            problems.append((":".join((*path, name)).replace(":[", "["),
                             f"lines {line} and {mark.line + 1}" if line != mark.line + 1 else
                             f"line {line}, columns {column} and {mark.column + 1}"))
        first.setdefault((key.tag, name), (mark.line + 1, mark.column + 1))
    for key, value in node.value:
        problems += _duplicate_keys(value, (*path, str(key.value) if isinstance(key, yaml.ScalarNode) else "?"), seen)
    return problems


def load_yaml(stream: Any) -> tuple[Any, list[tuple[str, str]]]:
    """(``stream`` read as ``yaml.safe_load`` reads it, the keys it writes twice); YAML errors propagate, as does
    a :class:`yaml.YAMLError` for a value its tag cannot build (``!!int abc``: PyYAML's bare ValueError) and for
    nesting deeper than Python's stack (a RecursionError)."""
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        # before construction: it flattens each '<<: *anchor' into the mapping, whose own keys then looked written twice
        duplicates = _duplicate_keys(node)
        return loader.construct_document(node), duplicates
    except UnicodeDecodeError:
        raise
    except ValueError as err:
        raise yaml.YAMLError(str(err)) from None
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


def parse_value(text: str, where: str = "--force_yml") -> Any:
    """A ``--force_yml`` value, read as YAML (``true``, ``[1, 2]``, ``null``, strings); numbers-as-text stay text
    here and are read by the schema. Invalid YAML is one line naming ``where``."""
    if not text.strip():
        return ""
    try:
        value, duplicates = load_yaml(text)
    except yaml.YAMLError as err:
        raise OptionsError(f"{where}: the value {text!r} is not valid YAML: "
                           f"{getattr(err, 'problem', None) or ' '.join(str(err).split())}") from None
    if duplicates:
        raise OptionsError("\n".join(f"{where}: the value writes '{key}' twice" for key, _ in duplicates))
    return value


def _sections(models: Sequence[type[BaseModel]], key: str) -> list[type[BaseModel]]:
    """The option sections ``key`` holds in ``models`` (several for a union such as ``train:scheduler``; none when
    ``key`` is not a section of theirs)."""
    return [section for model in models if key in model.model_fields
            for section in annotation_models(model.model_fields[key].annotation)]


def apply_overrides(opt: dict, overrides: list[str] | None, source: str = "--force_yml") -> dict[str, str]:
    """Apply ``key:sub=value`` assignments. A parent must exist or be a documented section (then created, e.g.
    ``train:scheduler`` for ``train:scheduler:type=MultiStepLR``), so a typo cannot silently create a branch.

    Returns the entry that set each option path (sections it created included), so that a problem with them is
    reported as the entry's, not the file's."""
    origins: dict[str, str] = {}
    written: dict[tuple[str, ...], str] = {}  # every option an earlier entry wrote -> that entry
    for entry in overrides or []:
        label = f"{source} '{entry}'"
        if "=" not in entry:
            raise OptionsError(f"{source} entry '{entry}' is not of the form key:sub=value")
        keys, value = entry.split("=", 1)
        if not keys.strip():
            raise OptionsError(f"{source} entry '{entry}' names no option")
        path = [k.strip() for k in keys.split(":")]
        if "" in path:  # 'train::total_iter' read as 'train:total_iter' hid a typo
            raise OptionsError(f"{label}: '{keys.strip()}' has an empty key (a doubled, leading or trailing ':'); "
                               "write key:sub=value")
        node, models = opt, [RunOptions]
        for depth, key in enumerate(path[:-1]):
            where, sections = ":".join(path[: depth + 1]), _sections(models, key)
            if key not in node and sections:
                node[key] = {}  # a section the file leaves to its defaults, e.g. --force_yml ldt:method=ft
                origins.setdefault(where, label)
            if key in node and not isinstance(node[key], dict):
                value_text = "null" if node[key] is None else repr(node[key])
                raise OptionsError(f"{label}: '{where}' is {value_text} in the options, not an option section")
            option = next((model.model_fields[key] for model in models if key in model.model_fields), None)
            if key not in node and option is not None:  # no section, left to its default: a hint would echo the key
                raise OptionsError(f"{label}: '{where}' is an option ({type_name(option.annotation)}), not an option "
                                   f"section: set it whole, as {where}=VALUE")
            if key not in node:
                known = [str(k) for k in node] + [name for model in models for name in model.model_fields]
                raise OptionsError(f"{label}: '{where}' is not an option section" + did_you_mean(key, known))
            node, models = node[key], sections
        undone = next((option for option in written if option[: len(path)] == tuple(path)), None)
        if undone:  # BasicSR keeps the last silently; as for a key written twice in a file, say so
            raise OptionsError(f"{source} entries '{written[undone]}' and '{entry}' both set {':'.join(undone)}; "
                               "keep one")
        node[path[-1]] = parse_value(value, label)
        origins[":".join(path)] = label
        written.update(dict.fromkeys(_written(tuple(path), node[path[-1]]), entry))
    return origins


def _written(path: tuple[str, ...], value: Any) -> list[tuple[str, ...]]:
    """The options an entry writes: its path, or for a mapping value each option inside it (an entry replaces the
    whole mapping, so a later one at or above any of them would silently undo it)."""
    if isinstance(value, dict) and value:
        return [option for key, inner in value.items() for option in _written(path + (str(key),), inner)]
    return [path]


def _origin(problem: str, origins: Mapping[str, str], inside: bool = True) -> str | None:
    """Who wrote the option a problem line is about, from ``origins`` (option path -> writer: the ``--force_yml``
    entries of :func:`apply_overrides`, the files of :func:`read_option_file`): the writer of its option, of a section
    holding it, or (``inside``) of an option inside it, the most specific such path; None if none wrote it. A file
    that wrote an option inside a section did not write the section's problem: its ``sources`` pass ``inside=False``."""
    where = problem.split(": ", 1)[0]

    def within(inner: str, outer: str) -> bool:
        return inner == outer or inner.startswith((f"{outer}:", f"{outer}["))

    matches = [key for key in origins if within(where, key) or (inside and within(key, where))]
    return origins[max(matches, key=len)] if matches else None


# Byte-order marks and the codec each one says, UTF-32's first (UTF-32-LE's mark begins with UTF-16-LE's); the codec
# drops its mark, so the text's line numbers are the file's.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig"))


def _option_text(data: bytes) -> str:
    """An option file's text: UTF-8, or the Unicode encoding its byte-order mark says (Windows Notepad saves
    'Unicode' as UTF-16 with one)."""
    return data.decode(next((codec for bom, codec in _BOMS if data.startswith(bom)), "utf-8"))


def read_option_file(file: Path, chain: tuple[Path, ...] = (), sources: dict[str, str] | None = None) -> dict:
    """One YAML file as a dict, with ``base:`` inheritance resolved; a key written twice is an error.

    ``base: other.yml`` (relative to this file's folder) makes this file a list of changes to another one, so the
    paper's variants (FT, LP-FT, ablations, other sources) are a few lines each instead of copies of a 100-line file.
    Mappings merge key by key; any other value replaces the base's; a key set to ``~`` is removed (its default applies).
    ``sources`` (if given) is filled with the file that last wrote each option path, so that a problem with an
    option of a base file names that file, and the file it is the base of (:func:`_origin`).
    """
    file = Path(file)
    if file.resolve() in chain:
        raise OptionsError(f"{file}: 'base' files form a cycle: {' -> '.join(str(p) for p in chain + (file,))}")
    try:
        opt, duplicates = load_yaml(_option_text(file.read_bytes()))
    except OSError as err:
        raise OptionsError(f"cannot read option file {file}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise OptionsError(f"{file} is not valid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError:
        raise OptionsError(f"{file} is not a text (YAML) file") from None
    if duplicates:
        raise OptionsError("\n".join(f"{file}: {key}: written twice ({place}); keep one" for key, place in duplicates))
    if not isinstance(opt, dict):
        raise OptionsError(f"{file} must contain a mapping of options, got {type(opt).__name__}")
    base_name = opt.pop("base", None)
    merged = opt
    if base_name is not None:
        if not isinstance(base_name, str):
            raise OptionsError(f"{file}: 'base' must be a file name, got {base_name!r}")
        base_file = file.parent / base_name
        kind = not_a_file(base_file)
        if kind or not base_file.is_file():
            raise OptionsError(f"{file}: base file {base_file} " + (f"is {kind}" if kind else "does not exist"))
        merged = merge_changes(read_option_file(base_file, chain + (file.resolve(),), sources), opt)
    if sources is not None:  # after its base's: this file's keys are its own
        sources.update(dict.fromkeys(_option_paths(opt), f"{file} (the base of {chain[-1]})" if chain else str(file)))
    return merged


def _option_paths(options: Mapping, prefix: str = "") -> list[str]:
    """Every option path a mapping writes, sections included (``train``, ``train:optim_g``, ``train:optim_g:lr``)."""
    return [path for key, value in options.items() for path in
            [f"{prefix}{key}", *(_option_paths(value, f"{prefix}{key}:") if isinstance(value, dict) else [])]]


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


# --------------------------------------------------------------------------------------------------- the network


def unlike_defaults(arch: type, options: Mapping[str, Any]) -> list[str]:
    """The given arguments whose type is not their default's (``num_feat: 'x' where its default is the integer
    64``): the likely cause when a constructor our schema knows no types of (unannotated) fails in words of its
    own ('not all arguments converted during string formatting'). Said only after a failure, so never stricter than
    the constructor; a number for a number and a list for a tuple are alike."""
    alike = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (tuple, list), list: (tuple, list)}
    suspects = []
    for name, parameter in inspect.signature(arch.__init__).parameters.items():
        default, value = parameter.default, options.get(name, parameter.default)
        accepted = alike.get(type(default))
        if name in options and accepted and (not isinstance(value, accepted)
                                             or isinstance(value, bool) != isinstance(default, bool)):
            suspects.append(f"{name}: {value!r} where its default is the {type_name(type(default))} {default!r}")
    return suspects


def build_meta_network(arch: type, kwargs: dict) -> Any:
    """``arch(**kwargs)`` on the meta device (parameter names and shapes, no memory or init); on the CPU if the
    constructor needs real values (e.g. BasicSR's SwinIR reads tensor items)."""
    import torch

    try:
        with torch.device("meta"):
            return arch(**kwargs)
    except (NotImplementedError, RuntimeError) as err:
        if "meta" not in str(err):
            raise
        return arch(**kwargs)


def arch_registry() -> Any:
    """BasicSR's architecture registry, ours registered in it. Test ``name in`` it before ``.get(name)``: BasicSR's
    ``get`` prints 'Name ... is not found' for an unknown name before it raises."""
    from ldt.compat import patch_basicsr

    patch_basicsr()
    import ldt.archs  # noqa: F401  (registers our archs)
    from basicsr.utils.registry import ARCH_REGISTRY

    return ARCH_REGISTRY


def min_input_size(arch: type) -> int:
    """The smallest LR height / width ``arch`` runs on: its ``MIN_INPUT_SIZE`` (SAFMN's module declares it and its
    forward raises below it), else 1."""
    return getattr(arch, "MIN_INPUT_SIZE", None) or getattr(sys.modules.get(arch.__module__), "MIN_INPUT_SIZE", 1)


def _check_network(raw: Any, problems: list[str]) -> tuple[dict | None, Any, type | None]:
    """(the checked network_g options, the network built on the meta device, its class), or Nones on problems."""
    registry = arch_registry()
    if raw is None:
        problems.append("network_g: missing: the network to train or test (type: MambaIR, HAT, SAFMN, ... and its "
                        "constructor arguments)")
        return None, None, None
    if not isinstance(raw, dict):
        problems.append(f"network_g: expected a mapping, got {raw!r}")
        return None, None, None
    arch_type = raw.get("type")
    if not isinstance(arch_type, str):
        problems.append("network_g:type: missing (e.g. MambaIR, HAT, SAFMN)")
        return None, None, None
    if arch_type not in registry:
        known = sorted(registry.keys())
        problems.append(f"network_g:type: unknown architecture '{arch_type}'"
                        + did_you_mean(arch_type, known, f"; known: {', '.join(known)}"))
        return None, None, None
    arch = registry.get(arch_type)
    ignored = [key for key in getattr(arch, "OFFICIAL_EXTRA_OPTIONS", ()) if key in raw]
    if ignored:
        warnings.warn(f"network_g: {', '.join(ignored)} ignored: the official {arch_type} constructor swallows "
                      f"{'it' if len(ignored) == 1 else 'them'} too (they do not change the network)", OptionsWarning,
                      stacklevel=3)
    kept = {k: v for k, v in raw.items() if k not in ignored}
    schema = network_schema(arch)
    checked = validate_into(schema, kept, ["network_g"], problems)
    if checked is None:
        return None, None, None
    options = {"type": arch_type, **checked.model_dump(exclude_unset=True, exclude={"type"})}
    from ldt.archs.arch_util import ArgumentError

    try:
        network = build_meta_network(arch, {k: v for k, v in options.items() if k != "type"})
    except ArgumentError as err:  # our constructors' checks across arguments name the argument at fault
        problems.append(f"network_g:{err.argument}: {err.message}")
        # without it, so the checks that read the network's scale do not report a refused upscale again
        return {k: v for k, v in options.items() if k != err.argument}, None, arch
    except Exception as err:  # other constructors' checks (ValueError, AssertionError, ...); torch's C++ errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__  # carry stack frames
        suspects = unlike_defaults(arch, options)
        problems.append(f"network_g: {arch_type} cannot be built with these options: {first}"
                        + (f" ({'; '.join(suspects)})" if suspects else ""))
        return options, None, arch
    return options, network, arch


def network_scale(options: dict, network: Any = None) -> int | None:
    """How much the network upscales: the built ``network``'s ``output_scale`` where it declares one (MambaIR
    without an upsampler keeps the size), else the written factor; None if unknown."""
    if isinstance(getattr(network, "output_scale", None), int):
        return network.output_scale
    for key in ("upscale", "upscaling_factor", "scale"):
        if isinstance(options.get(key), int):
            return options[key]
    return None


OUTPUT_CHECK_SIZE = 16
"""The LR height and width of the one forward the option check runs (raised to the network's smallest input)."""

SR_IMAGE_ROLE = "training, validation and test.py take its output as the SR image of the input"


OTHER_INPUT_CHANNELS = (1, 2, 4)
"""What a network whose forward fails on the 3 channels of the data may have been built for: grey, grey + alpha,
RGBA (``num_in_ch: 1``, HAT's ``in_chans: 1``)."""


def output_problem(network: Any, arch_type: str, scale: int, size: int, data_where: str = "the data") -> str | None:
    """Why ``network`` (as the option check built it, on the meta device) is no x``scale`` SR network of RGB images,
    from one forward of a 1x3x``size``x``size`` input: its output is not one tensor (a tuple of features beside the
    image), or not of the input's 3 channels at ``scale`` times its size, or the forward fails on 3 channels but runs
    on one of :data:`OTHER_INPUT_CHANNELS` (a network built for grey or RGBA input; ``data_where``: the dataset block
    to name). Why: the pixel loss, the validation and test.py failed on it in a traceback from inside them (a grey
    output was broadcast against the RGB target, with only torch's warning; a grey input network stopped at the first
    probe batch). None when it is one, or when the forward cannot run here (it needs real values: left to the run)."""
    import torch

    tensors = [*network.parameters(), *network.buffers()]
    device = tensors[0].device if tensors else torch.device("meta")
    was_training = network.training
    network.eval()

    def forward(channels: int) -> Any:
        with torch.no_grad():
            return network(torch.zeros(1, channels, size, size, device=device))

    try:
        try:
            output = forward(3)
        except Exception:
            for channels in OTHER_INPUT_CHANNELS:
                try:
                    forward(channels)
                except Exception:
                    continue
                return (f"{arch_type} expects {channels} input channel(s) but {data_where} gives 3 (RGB images: every "
                        "dataset reads 3 channels); build it for 3 input channels")
            return None
    finally:
        network.train(was_training)
    if not isinstance(output, torch.Tensor):
        return f"{arch_type}'s forward returns a {type(output).__name__}, not an image tensor ({SR_IMAGE_ROLE})"
    expected = (1, 3, size * scale, size * scale)
    if tuple(output.shape) != expected:
        return (f"{arch_type} maps a 1x3x{size}x{size} input to {'x'.join(map(str, output.shape))}, but scale {scale} "
                f"needs {'x'.join(map(str, expected))} ({SR_IMAGE_ROLE})")
    return None


def unused_parameters(network_g: Mapping[str, Any]) -> list[str] | None:
    """The names of the parameters of the ``network_g`` network that one training-mode forward and backward leaves
    without a gradient (built on the meta device: no memory, no compute; the input as :func:`output_problem`'s),
    or None when the forward or backward cannot run there. Why: DDP built without ``find_unused_parameters`` stops
    the second step of a branch that trains such a parameter (FT trains every parameter)."""
    import torch

    arch = arch_registry().get(network_g["type"])
    network = build_meta_network(arch, {k: v for k, v in network_g.items() if k != "type"})
    tensors = [*network.parameters(), *network.buffers()]
    size = max(min_input_size(arch), OUTPUT_CHECK_SIZE)
    try:
        output = network.train()(torch.zeros(2, 3, size, size, device=tensors[0].device if tensors else "meta"))
        output.float().mean().backward()
    except Exception:
        return None
    return [name for name, parameter in network.named_parameters() if parameter.grad is None]


# ------------------------------------------------------------------------------------------------- cross-checks


def _dataset_problems(raw: Any, is_train: bool, scale: int | None, problems: list[str]) -> dict[str, DatasetOptions]:
    """The checked dataset blocks; ``scale`` None (unknown: network_g failed) leaves the crop's scale unchecked."""
    if not raw:
        problems.append("datasets: missing (a 'train' set and/or 'val_*' / 'test_*' sets)")
        return {}
    if not isinstance(raw, dict):
        problems.append(f"datasets: must be a mapping of sets ('train', 'val_*', 'test_*'), got "
                        f"{type(raw).__name__} {raw!r:.60}")
        return {}
    checked: dict[str, DatasetOptions] = {}
    for key, block in raw.items():
        where = f"datasets:{key}"
        if str(key).split("_")[0] not in ("train", "val", "test") or (str(key).startswith("train") and key != "train"):
            problems.append(f"{where}: a dataset key must be 'train', 'val[_*]' or 'test[_*]'")
            continue
        if not isinstance(block, dict):
            problems.append(f"{where}: expected a mapping, got {block!r}")
            continue
        kind = block.get("type")
        if not isinstance(kind, str) or kind not in DATASET_SCHEMAS:
            if kind is None:
                problem = "missing"
            elif isinstance(kind, str):
                problem = f"no option schema for dataset type '{kind}'" + did_you_mean(kind, list(DATASET_SCHEMAS))
            else:
                problem = f"expected a string, got {type(kind).__name__} {kind!r:.60}"
            problems.append(f"{where}:type: {problem}; supported: {', '.join(DATASET_SCHEMAS)}")
            continue
        if kind == "SingleImageDataset" and (is_train or key == "train"):
            problems.append(f"{where}:type: SingleImageDataset has no GT: it is for test.py's test_* / val_* sets "
                            "(SR images saved, not scored); training and validation need pairs (PairedImageDataset, "
                            "DRealSRCameraDataset)")
            continue
        options = validate_into(DATASET_SCHEMAS[kind], block, [where], problems)
        if options is not None:
            checked[key] = options
    for key, options in checked.items():
        where = f"datasets:{key}"
        for field in ("dataroot", "dataroot_gt", "dataroot_lq", "meta_info_file"):
            values = getattr(options, field, None)
            for value in ([values] if isinstance(values, str) else values or []):
                path, folder = Path(value).expanduser(), field != "meta_info_file"
                if not path.exists():
                    problems.append(f"{where}:{field}: path does not exist: {value}")
                elif path.is_dir() != folder:
                    problems.append(f"{where}:{field}: {value} is a {'file' if folder else 'folder'}, not a "
                                    f"{'folder' if folder else 'file'}")
                elif isinstance(options, (PairedImageOptions, SingleImageOptions)) and folder \
                        and options.io_backend.type == "lmdb" \
                        and not (value.endswith(".lmdb") and (path / "meta_info.txt").is_file()):
                    # BasicSR's reader raised a bare ValueError / FileNotFoundError from inside its set-up
                    problems.append(f"{where}:{field}: {value} is not an LMDB (io_backend: lmdb reads a folder whose "
                                    "name ends in .lmdb, holding a meta_info.txt, as BasicSR's create_lmdb writes)")
        if key == "train":
            if options.batch_size_per_gpu is None:
                problems.append(f"{where}:batch_size_per_gpu: missing (required for the training set)")
            gt_size = getattr(options, "gt_size", None)
            if gt_size is not None and scale is not None and gt_size % scale:
                problems.append(f"{where}:gt_size: {gt_size} is not a multiple of the scale {scale}")
            if isinstance(options, PairedImageOptions) and gt_size is None:
                problems.append(f"{where}:gt_size: missing (required for a PairedImageDataset training set)")
    if is_train and "train" not in checked and not any(p.startswith("datasets:train") for p in problems):
        problems.append("datasets:train: missing (the training set)")
    if not is_train and not any(k.startswith(("val", "test")) for k in raw):
        problems.append("datasets: no val_* / test_* set to evaluate")
    return checked


def _camera_sets(options: DatasetOptions) -> set[str]:
    from ldt.data.cameras import resolve_cameras

    return set(resolve_cameras(options.cameras)) if isinstance(options, DRealSRCameraOptions) else set()


def _same_root(a: DRealSRCameraOptions, b: DRealSRCameraOptions) -> bool:
    def root(o: DRealSRCameraOptions) -> tuple:
        return tuple(os.path.realpath(os.path.expanduser(p)) if p else None for p in (o.dataroot, o.dataroot_gt))

    return root(a) == root(b)


def _leak_problems(datasets: dict[str, DatasetOptions], val: ValOptions, probe_set: str | None) -> list[str]:
    """Domain generalisation's first rule: no target camera is trained on, and validation never reads training pairs."""
    train = datasets.get("train")
    names = {options.name for options in datasets.values()}
    if not isinstance(train, DRealSRCameraOptions) or (val.selection == "source" and val.source_set not in names):
        return []  # no training cameras to guard, or no source set to tell apart (that is reported on its own)
    problems = []
    seen = _camera_sets(train)
    for key, options in datasets.items():
        if key == "train" or not isinstance(options, DRealSRCameraOptions) or not _same_root(train, options):
            continue
        overlap = sorted(_camera_sets(options) & seen)
        if not overlap:
            continue
        if options.name != val.source_set and key != probe_set:
            problems.append(f"datasets:{key}: the target set '{options.name}' evaluates {overlap}, which datasets:train "
                            f"trains on; a target camera must be unseen (or make this set val:source_set)")
            continue
        complementary = (train.held_out is not None and options.held_out is not None
                         and train.held_out.part == "train" and options.held_out.part == "holdout"
                         and (train.held_out.fraction, train.held_out.seed)
                         == (options.held_out.fraction, options.held_out.seed))
        if options.split == train.split and not complementary and key != probe_set:
            problems.append(f"datasets:{key}: reads the same {train.split} pairs of {overlap} as datasets:train; "
                            "validate on the test split, or on complementary held_out parts (same fraction and seed)")
    if probe_set in datasets and probe_set != "train":
        unseen = sorted(_camera_sets(datasets[probe_set]) - seen)
        if unseen:
            problems.append(f"ldt:probe:dataset: '{probe_set}' reads {unseen}, which are not training cameras "
                            "(the probe must see source data only)")
    return problems


def _selection_leak(datasets: dict[str, DatasetOptions], val: ValOptions, probe_set: str | None) -> str | None:
    """A warning when the set choosing the 'source' checkpoint reads a camera another validation set evaluates as a
    target (on the same root): the target then picks the checkpoint it is scored on. Not refused: a mixed selection
    set can be a deliberate ablation, as an oracle is."""
    if val.selection != "source":
        return None
    selecting = next(((key, options) for key, options in datasets.items() if key != "train"
                      and options.name == val.source_set and isinstance(options, DRealSRCameraOptions)), None)
    if selecting is None:
        return None
    key, source = selecting
    for other_key, other in datasets.items():
        if other_key in ("train", key, probe_set) or not isinstance(other, DRealSRCameraOptions):
            continue
        shared = sorted(_camera_sets(source) & _camera_sets(other)) if _same_root(source, other) else []
        if shared:
            return (f"datasets:{key}:cameras: the set '{source.name}' that selects the checkpoint (val:source_set) "
                    f"reads {shared}, which datasets:{other_key} ({other.name}) evaluates as a target: target data "
                    "picks the checkpoint; select on source cameras only")
    return None


def _val_problems(opt: RunOptions, datasets: dict[str, DatasetOptions], is_train: bool, names_known: bool,
                  metrics_known: bool) -> list[str]:
    """``names_known``: every validation block passed its schema (else a set's name may be what failed, and a "names
    no validation set" line would only echo that problem); ``metrics_known``: every val:metrics block did (else a
    "must include a calculate_psnr metric" line would echo the block that failed)."""
    problems = []
    val = opt.val
    names = [d.name for key, d in datasets.items() if key.startswith(("val", "test"))]
    if val.tile is not None and val.tile_overlap >= val.tile:
        problems.append(f"val:tile_overlap: {val.tile_overlap} must be smaller than val:tile {val.tile}")
    scored = any(key.startswith(("val", "test")) and not isinstance(d, SingleImageOptions)
                 for key, d in datasets.items())
    if not is_train and metrics_known and not val.metrics and scored:  # a table of no numbers
        problems.append("val:metrics: empty: test.py would score nothing; name at least one, e.g. [psnr, ssim], or "
                        "leave val:metrics out for both")
    if is_train and metrics_known and not any(m.type == "calculate_psnr" for m in val.metrics.values()):
        problems.append(f"val:metrics: must include a calculate_psnr metric (the best checkpoint is selected on it), "
                        f"got {list(val.metrics)}")
    if is_train and names and names_known:
        if val.selection.startswith("oracle:") and val.selection.split(":", 1)[1] not in names:
            problems.append(f"val:selection: '{val.selection}' names no validation set (have {names})")
        if val.selection == "source" and val.source_set not in names:
            problems.append(f"val:source_set: '{val.source_set}' names no validation set (have {names}); name the "
                            "source camera's held-out set, or use val:selection: last")
    if len(set(names)) < len(names):
        problems.append(f"datasets: validation set names must be unique, got {names}")
    return problems


def _input_size_problems(arch: type, arch_type: str, datasets: dict[str, DatasetOptions], val: ValOptions,
                         scale: int) -> list[str]:
    """The training crop and the validation tiles are inputs of at least the network's smallest size (a traceback in
    the first step, or in the first validation after a whole training, otherwise)."""
    smallest = min_input_size(arch)
    needs = f"{arch_type} needs inputs of at least {smallest}x{smallest} pixels"
    problems = []
    train = datasets.get("train")
    crop = train.crop_size(scale) if train is not None else None
    if crop is not None and crop % scale == 0 and crop // scale < smallest:
        problems.append(f"datasets:train:gt_size: {crop} makes LR patches of {crop // scale}x{crop // scale} at scale "
                        f"{scale}, but {needs}: use gt_size >= {smallest * scale}")
    if val.tile is not None and val.tile < smallest:
        problems.append(f"val:tile: {val.tile}, but {needs}: use val:tile >= {smallest}")
    return problems


def _path_problems(opt: RunOptions, is_train: bool, reported: Sequence[str]) -> list[str]:
    """``reported``: the problems found so far; a value that failed its own check (``pretrain_network_g: 5``) was
    dropped before this check, and is not 'missing' as well."""
    problems = []
    failed = any(problem.startswith(("path:pretrain_network_g: ", "path: ")) for problem in reported)
    if not is_train and not opt.path.pretrain_network_g and not failed:
        problems.append("path:pretrain_network_g: missing: the weights to evaluate, e.g. "
                        "experiments/<name>/models/net_g_best.pth")
    for key in ("pretrain_network_g", "resume_state"):
        value = getattr(opt.path, key)
        kind = not_a_file(Path(value).expanduser()) if value else None
        if kind:
            problems.append(f"path:{key}: {value} is {kind}")
        elif value and not Path(value).expanduser().is_file():
            problems.append(f"path:{key}: file does not exist: {value}")
    return problems


def _drop_at(data: Any, location: Sequence) -> None:
    """Remove from ``data`` the deepest mapping entry on the path ``location`` (a pydantic error's ``loc``)."""
    node = data
    for depth, key in enumerate(location):
        if not isinstance(node, dict) or key not in node:
            return
        child = node[key]
        if depth == len(location) - 1 or not isinstance(child, dict) or location[depth + 1] not in child:
            del node[key]
            return
        node = child


def _checkable(model: type[BaseModel], data: dict, problems: list[str]) -> BaseModel | None:
    """``model`` validated from ``data``; when some fields fail (their problems appended), validated again without
    them, so that the checks across sections still see every field that passed and one run reports every problem of
    a file (a misspelled key no longer hides a bad path). None when even that fails (a required field missing)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems += describe_errors(err, model, [])
        pruned = copy.deepcopy(data)
        for error in err.errors():
            _drop_at(pruned, error["loc"])
    try:
        return model.model_validate(pruned)
    except ValidationError:
        return None


# ------------------------------------------------------------------------------------------------- the entry point


def prepare_options(raw: dict, *, is_train: bool, source: str = "options", origins: Mapping[str, str] | None = None,
                    sources: Mapping[str, str] | None = None) -> dict:
    """Check ``raw`` (an option dict from a file or built in code) against the schema; return it normalised (every
    default filled in, official aliases resolved) as a new dict. All problems are raised together, each as the
    ``source``'s, as the ``--force_yml`` entry's that set the option (``origins``, from :func:`apply_overrides`), or
    as the base file's that wrote it (``sources``, from :func:`read_option_file`)."""
    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        raise OptionsError(f"{source}: expected a mapping of options")
    problems: list[str] = []
    if raw.get("model_type") in OFFICIAL_MODEL_TYPES:
        warnings.warn(f"model_type: {raw['model_type']} runs as LDTModel (the method is ldt:method)", OptionsWarning,
                      stacklevel=2)
        raw["model_type"] = "LDTModel"
    top = _checkable(RunOptions, {**raw, "datasets": raw.get("datasets") or {}, "network_g": raw.get("network_g") or {}},
                     problems)
    # a block written under a misspelled key is the unknown key's problem alone: not 'missing' as well
    hinted = {meant(key, RunOptions.model_fields) for key in raw if key not in RunOptions.model_fields}
    misspelled = {block for block in ("datasets", "network_g") if block not in raw and block in hinted}
    network, meta_network, arch = (None, None, None) if "network_g" in misspelled else \
        _check_network(raw.get("network_g"), problems)
    # None while unknown (no top-level scale and a network_g that failed): the crop is not checked against a guess
    written = raw["network_g"] if isinstance(raw.get("network_g"), dict) else {}
    scale = (top.scale if top is not None and top.scale else None) or network_scale(network or written, meta_network) \
        or (4 if network else None)
    built_scale = network_scale(network, meta_network) if network else None
    if top is not None and top.scale and built_scale not in (None, top.scale):
        problems.append(f"scale: {top.scale}, but network_g upscales by {built_scale}")
    elif meta_network is not None:
        size = max(min_input_size(arch), OUTPUT_CHECK_SIZE)
        sets = [str(key) for key in raw["datasets"]] if isinstance(raw.get("datasets"), dict) else []
        read = next((key for key in sets if key == "train"), None) or next(iter(sorted(sets)), None)
        wrong_output = output_problem(meta_network, network["type"], scale, size,
                                      f"datasets:{read}" if read else "the data")
        if wrong_output:
            problems.append(f"network_g: {wrong_output}")
    datasets = {} if "datasets" in misspelled else _dataset_problems(raw.get("datasets"), is_train, scale, problems)
    if top is not None:
        sets = raw.get("datasets") if isinstance(raw.get("datasets"), dict) else {}
        evaluated = [key for key in sets if str(key).startswith(("val", "test"))]
        problems += _path_problems(top, is_train, problems)
        metrics = raw["val"].get("metrics") if isinstance(raw.get("val"), dict) else None
        problems += _val_problems(top, datasets, is_train, names_known=all(key in datasets for key in evaluated),
                                  metrics_known=not isinstance(metrics, dict) or metrics.keys() <= top.val.metrics.keys())
        if arch is not None:
            problems += _input_size_problems(arch, network["type"], datasets, top.val, scale)
        if top.num_gpu not in ("auto", 0):
            import torch

            if torch.cuda.device_count() < top.num_gpu:
                problems.append(f"num_gpu: {top.num_gpu}, but {torch.cuda.device_count()} CUDA device(s) are visible "
                                "(use num_gpu: 0 or auto)")
        if is_train:
            if sets and top.ldt.probe.dataset not in sets:  # no sets at all is one problem already
                problems.append(f"ldt:probe:dataset: '{top.ldt.probe.dataset}' is not a key of datasets")
            problems += _leak_problems(datasets, top.val, top.ldt.probe.dataset)
            if meta_network is not None:
                from ldt.archs.arch_util import head_patterns

                head = head_patterns(network["type"], arch)
                method = method_class(top.ldt.method)
                problems += [f"ldt:{where}: {message}" for where, message in method.check(top.ldt, meta_network, head)]
    if problems:
        raise OptionsError("\n".join(
            f"{_origin(problem, origins or {}) or _origin(problem, sources or {}, inside=False) or source}: {problem}"
            for problem in dict.fromkeys(problems)))
    opt = top.model_dump(exclude_none=False)
    opt.update(scale=scale, network_g=network, datasets={
        key: {**datasets[key].model_dump(), "phase": key.split("_")[0], "scale": scale} for key in raw["datasets"]})
    opt["is_train"] = is_train
    _warn_of_workers_beyond_cpus(opt["datasets"])  # first: it may add a warnings filter, which must precede them all
    leak = _selection_leak(datasets, top.val, top.ldt.probe.dataset) if is_train else None
    if leak:
        _warn_once(leak)
    if opt["logger"]["wandb"] and opt["logger"]["wandb"].get("project"):
        _warn_once("logger:wandb is used by the BasicSR pipeline only; Train_pip.py logs to TensorBoard")
    return opt


def _warn_of_workers_beyond_cpus(datasets: Mapping[str, dict]) -> None:
    """One warning naming every block whose ``num_worker_per_gpu`` exceeds the CPUs this process may use: the bound
    (:data:`ldt.data.options.MAX_WORKERS`) is the same on every machine, but workers beyond the CPUs only queue for
    them, each a process of its own; a warning, not an error, as the run is still correct, only no faster."""
    cpus = usable_cpus()
    beyond = [f"datasets:{key}:num_worker_per_gpu: {block['num_worker_per_gpu']}" for key, block in datasets.items()
              if block["num_worker_per_gpu"] > cpus]
    if beyond:
        # torch's DataLoader says the same in a multi-line warning of its own, at each loader and iterator: ours alone
        # (the filter is added once, before our warning: a change of the filters shows a 'once' warning again)
        torchs = r"This DataLoader will create \d+ worker processes in total"
        if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == torchs for f in warnings.filters):
            warnings.filterwarnings("ignore", message=torchs, category=UserWarning)
        _warn_once(f"{', '.join(beyond)}: more DataLoader workers than the {cpus} CPU(s) this process may use; "
                   f"they only queue for the same CPUs (set at most {cpus})")


def _warn_once(message: str) -> None:
    """An :class:`OptionsWarning` of prepared options, attributed to this one line, so that Python's default filter
    shows each message once per process: the model checks the options the entry point checked again
    (:class:`ldt.models.ldt_model.LDTModel`), and a warning attributed to each caller was shown by both."""
    warnings.warn(message, OptionsWarning, stacklevel=1)


def load_options(path: str | Path, *, is_train: bool, overrides: list[str] | None = None, kind: str | None = None) -> dict:
    """Read an option file (``base:`` resolved), apply ``--force_yml`` overrides, check and normalise it."""
    file = resolve_option_file(str(path), kind or ("train" if is_train else "test"))
    sources: dict[str, str] = {}
    opt = read_option_file(file, sources=sources)
    origins = apply_overrides(opt, overrides)
    opt = prepare_options(opt, is_train=is_train, source=str(file), origins=origins, sources=sources)
    opt["option_file"] = str(file)
    return opt


def method_options(opt: dict) -> LDTOptions:
    """The ``ldt:`` block of prepared options as the method's config object."""
    return LDTOptions.model_validate(opt["ldt"])


# ------------------------------------------------------------------------------------------------ run identity

# What a resumed run may change (applied on resume): the learning rate, the length, validation and (in
# identity_sections) where the data lives; everything else defines the run and must match the state.
RESUMABLE: dict[str, tuple[str, ...]] = {
    "train": ("total_iter", "optim_g.lr", "nan_policy", "max_nan_skips"),
    "val": ("val_freq", "pbar", "save_img", "tile", "tile_overlap", "suffix"),
}
DATA_PATHS = ("dataroot", "dataroot_gt", "dataroot_lq", "meta_info_file")
# Options added after run identities were first recorded, by their section in the identity (``ldt:probe`` is there only
# for the methods that probe): left out of the identity while at their schema default, so the records and cached
# stages of earlier runs (which behaved as that default) stay valid.
LATER_OPTIONS: dict[str, tuple[str, ...]] = {"val": ("validate_start",), "ldt:probe": ("order",)}


def _section_model(path: str) -> type[BaseModel]:
    """The schema class of the option section ``path`` (``ldt:probe`` -> :class:`SRProbeOptions`)."""
    model: type[BaseModel] = RunOptions
    for key in path.split(":"):
        (model,) = annotation_models(model.model_fields[key].annotation)
    return model


def _without_later_defaults(sections: dict) -> dict:
    """``sections`` without the :data:`LATER_OPTIONS` that are at their schema default."""
    for path, keys in LATER_OPTIONS.items():
        node: Any = sections
        for key in path.split(":"):
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            fields = _section_model(path).model_fields
            for key in keys:
                if key in node and node[key] == fields[key].default:
                    del node[key]
    return sections


def _canonical(path: Any) -> Any:
    if isinstance(path, list):
        return [_canonical(p) for p in path]
    return None if path is None else identity_path(str(path))


def _drop(values: dict, dotted: Sequence[str]) -> dict:
    values = copy.deepcopy(values)
    for key in dotted:
        node, *rest = key.split(".")
        if rest:
            values.get(node, {}).pop(rest[0], None)
        else:
            values.pop(node, None)
    return values


def identity_sections(opt: dict, *, resumable: bool = False) -> dict:
    """The options that define a training run, normalised without reading any file (so a sweep can be planned
    without its data): dataset blocks and sections with their defaults, paths as :func:`ldt.sweep.identity_path` names them, the ``ldt:`` block
    reduced to what the method reads (:func:`ldt.core.run_identity`). Left out: the name, output paths, logging and
    where it runs (``num_gpu``, ``speed:compile``); with ``resumable`` also what a resume may change
    (:data:`RESUMABLE`, the data paths: the data may have moved, the starting weights: the state has its own)."""
    from ldt.core import run_identity as method_identity

    train = TrainOptions.model_validate(opt.get("train") or {}).model_dump()
    val = ValOptions.model_validate(opt.get("val") or {}).model_dump()
    if resumable:
        train, val = _drop(train, RESUMABLE["train"]), _drop(val, RESUMABLE["val"])
    datasets = {}
    for key, block in (opt.get("datasets") or {}).items():
        values = DATASET_SCHEMAS[block["type"]].model_validate(block).model_dump(exclude={"phase", "scale"})
        for field in DATA_PATHS:
            if field in values:
                values[field] = None if resumable else _canonical(values[field])
        datasets[key] = values
    network = opt["network_g"]
    registry = arch_registry()
    arch = registry.get(network.get("type")) if network.get("type") in registry else None
    arch_extras = getattr(arch, "OFFICIAL_EXTRA_OPTIONS", ())
    method = LDTOptions.model_validate(opt.get("ldt") or {})
    return _without_later_defaults({
        "scale": opt.get("scale") or network_scale(network) or 4,
        "manual_seed": opt.get("manual_seed", 0),
        "network_g": {k: v for k, v in network.items() if k not in arch_extras},
        "datasets": datasets,
        "train": {k: v for k, v in train.items() if k != "ema_decay"},
        "val": val,
        "ldt": method_identity(method, train["ema_decay"]),
        "speed": SpeedOptions.model_validate(opt.get("speed") or {}).model_dump(exclude={"compile"}),
        "pretrain": None if resumable else _canonical((opt.get("path") or {}).get("pretrain_network_g")),
    })


def run_identity(opt: dict, *, resumable: bool = False, earlier: bool = False) -> str:
    """A short hash of :func:`identity_sections` (two option dicts with the same hash train the same run); with
    ``earlier``, the hash records of this run carry when written by an ldt whose identities held absolute paths."""
    from ldt.sweep import earlier_run_hash, run_hash

    return (earlier_run_hash if earlier else run_hash)(identity_sections(opt, resumable=resumable))


# ------------------------------------------------------------------------------------------------ the reference


def options_reference() -> str:
    """The option reference of the README, generated from the schema (``python -m ldt.sr.options``)."""
    from ldt.sweep import markdown_table

    header = ["option", "type", "default", "range", "what it does"]
    sections = [
        ("Top level", option_rows(RunOptions)),
        ("`datasets:<key>:` with `type: DRealSRCameraDataset`", option_rows(DRealSRCameraOptions)),
        ("`datasets:<key>:` with `type: PairedImageDataset` (BasicSR's)", option_rows(PairedImageOptions)),
        ("`datasets:test_*:` with `type: SingleImageDataset` (BasicSR's; LR only, test.py)",
         option_rows(SingleImageOptions)),
        ("`ldt:` (the method: `ldt.core.MethodConfig`, plus the SR probe's data)", option_rows(LDTOptions, "ldt:")),
    ]
    top = [row for row in sections[0][1] if not row[0].startswith("`ldt")]
    sections[0] = (sections[0][0], top)
    parts = ["`network_g:` takes `type` and the architecture's own constructor arguments (`ldt/archs/*_arch.py`), "
             "checked against its signature and types."]
    for title, rows in sections:
        parts += [f"**{title}**", markdown_table(header, rows)]
    return "\n\n".join(parts) + "\n"


def methods_reference() -> str:
    """The README's methods table, generated from the registry (each method's rules live in its class)."""
    from ldt.core import METHODS
    from ldt.sweep import markdown_table

    warmups = {"never": "no", "optional": "if `warmup:steps` > 0", "required": "required (`warmup:steps` > 0)"}
    partitions = {"none": "—", "head": "`head_patterns` (head = unstable)", "score": "probe scores (`criterion`)"}
    rows = [[f"`{name}`", cls.label, warmups[cls.warmup_rule], partitions[cls.partition_source],
             ", ".join(f"`{k}: {str(v).lower()}`" for k, v in cls.forced_exchange.items()) or "",
             "yes" if cls.repartitions else "", cls.summary] for name, cls in METHODS.items()]
    return markdown_table(["`ldt:method`", "label", "head warm-up", "partition", "fixes", "re-probes", "what it does"],
                          rows) + "\n"


REFERENCES = {"methods": methods_reference, "options": options_reference}


def embed_references(text: str) -> str:
    """``text`` (the README) with each ``<!-- name:begin -->`` … ``<!-- name:end -->`` block regenerated."""
    for name, generate in REFERENCES.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        head, found, rest = text.partition(begin)
        if not found:
            raise ValueError(f"no {begin} marker")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"no {end} marker after {begin}")
        text = f"{head}{begin}\n{generate()}{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m ldt.sr.options``: print the generated references, or regenerate them in a README; a problem is
    one ``error:`` line and exit status 2."""
    from ldt.atomic import atomic_write_text

    parser = OneLineParser(prog="python -m ldt.sr.options",
                           description="Print the README's methods table and option reference, generated "
                                       "from the schema.")
    parser.add_argument("--readme", metavar="FILE", type=Path,
                        help="regenerate them in FILE instead, between its <!-- methods:begin/end --> and "
                             "<!-- options:begin/end --> markers")
    args = parser.parse_args(argv)
    if args.readme is None:
        print(methods_reference(), options_reference(), sep="\n", end="")
        return 0
    try:
        text = args.readme.read_text()
        updated = embed_references(text)
        if updated != text:
            atomic_write_text(args.readme, updated)
        return 0
    except OSError as err:
        problem = str(err.strerror or err)
    except UnicodeDecodeError:
        problem = "not a text file"
    except ValueError as err:  # a marker is missing
        problem = str(err)
    print(f"error: {args.readme}: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
