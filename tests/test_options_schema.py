"""The option schema end to end through ``Train_pip.py`` / ``test.py``: every bad option exits 2 with one line that
names the file and the option, before any dataset or network is built; good spellings of odd values are accepted."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pytest
import yaml
from pydantic import Field, ValidationError
from torch import nn

from ldt.archs.arch_util import ArgumentError, check_arguments
from ldt.core.config import describe_errors, network_schema
from ldt.sr.options import OptionsError, OptionsWarning, load_options, prepare_options
from tests.sr_fixtures import tiny_cameras, tiny_options, write_options


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a dataset, a network (on a real device) or a model is built."""
    from ldt.data.drealsr_dataset import DRealSRCameraDataset
    from ldt.models.ldt_model import LDTModel

    def forbid(*args, **kwargs):
        raise AssertionError("something was built before the options were rejected")

    monkeypatch.setattr(DRealSRCameraDataset, "__init__", forbid)
    monkeypatch.setattr(LDTModel, "__init__", forbid)
    monkeypatch.setattr("ldt.sr.loaders.build_dataset", forbid)


def train_cli(path, capsys, *extra) -> tuple[int, list[str]]:
    from ldt.sr.train import main

    code = main(["-opt", str(path), *extra])
    return code, capsys.readouterr().err.strip().splitlines()


def with_change(opt: dict, keys: str, value) -> dict:
    opt = copy.deepcopy(opt)
    *parents, leaf = keys.split(":")
    node = opt
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return opt


BAD = [
    # (option path, value, the line must contain)
    ("datasets:train:camears", ["pan"], "datasets:train:camears: unknown option (did you mean 'cameras'?)"),
    ("ldt:exchange:interval", 0, "ldt:exchange:interval: must be > 0, got 0"),
    ("ldt:exchange:weight", 2, "ldt:exchange:weight: must be < 1, got 2"),
    ("ldt:unstable_ratio", 0.99, "ldt:unstable_ratio: 0.99 leaves the stable group empty for the 22 layers of SAFMN"),
    ("train:optim_g:lr", -1e-3, "train:optim_g:lr: must be > 0, got -0.001"),
    ("train:optim_g:type", "SGD", "train:optim_g:type: unknown type 'SGD'; choose from Adam, AdamW"),
    ("train:scheduler", {"type": "StepLR", "step_size": 3}, "train:scheduler:type: unknown type 'StepLR'"),
    ("train:optim_g:type", "AdamWW", "train:optim_g:type: unknown type 'AdamWW'; choose from Adam, AdamW (did you mean "
                                     "'AdamW'?)"),
    ("val:val_freq", 0, "val:val_freq: must be > 0, got 0"),
    ("logger:print_freq", 0, "logger:print_freq: must be > 0, got 0"),
    ("logger:save_checkpoint_freq", 0, "logger:save_checkpoint_freq: must be > 0, got 0"),
    ("train:total_iter", 0, "train:total_iter: must be > 0, got 0"),
    ("ldt:probe:num_batches", 0, "ldt:probe:num_batches: must be > 0, got 0"),
    # ... and each of its kind
    ("nmae", "x", "nmae: unknown option (did you mean 'name'?)"),
    ("name", "../../escape", "name: must be a relative name inside experiments/"),
    ("name", "/abs/path", "name: must be a relative name inside experiments/"),
    ("train:total_iter", True, "train:total_iter: expected an integer, got bool True"),
    ("train:total_iter", 2.5, "train:total_iter: expected an integer, got float 2.5"),
    ("train:optim_g:lr", "fast", "train:optim_g:lr: expected a number, got str 'fast'"),
    ("train:optim_g:betas", [0.9], "train:optim_g:betas: must have length >= 2, got [0.9]"),
    ("train:optim_g:momentum", 0.9, "train:optim_g:momentum: unknown option"),
    ("train:scheduler", {"type": "MultiStepLR", "milestones": "soon"}, "train:scheduler:milestones: expected a list"),
    ("train:scheduler", {"type": "MultiStepLR"}, "train:scheduler:milestones: missing (required)"),
    ("train:pixel_opt:type", "L2Loss", "train:pixel_opt:type: must be one of L1Loss, MSELoss, CharbonnierLoss"),
    ("train:nan_policy", "ignore", "train:nan_policy: must be one of stop, skip, got 'ignore'"),
    ("train:ema_decay", 1.0, "train:ema_decay: must be < 1, got 1.0"),
    ("train:warmup_iterr", 5, "train:warmup_iterr: unknown option (did you mean 'warmup_iter'?)"),
    ("val:metrics", {"psnr": {"type": "calculate_psnrr"}}, "val:metrics:psnr:type: must be one of calculate_psnr"),
    ("val:metrics", ["ssim"], "val:metrics: must include a calculate_psnr metric"),
    ("val:metrics", {"psnr": {"type": "calculate_psnr", "crop_borderr": 4}},
     "val:metrics:psnr:crop_borderr: unknown option (did you mean 'crop_border'?)"),
    ("val:metrics", {"psnr": {"typ": "calculate_psnr"}}, "val:metrics:psnr:typ: unknown option (did you mean 'type'?)"),
    ("val:metrics", {"psnr": 5}, "val:metrics:psnr: expected a mapping, got int 5"),
    ("val:selection", "target", "val:selection: must be 'source', 'last' or 'oracle:<validation set name>'"),
    ("val:selection", "oracle:sony", "val:selection: 'oracle:sony' names no validation set"),
    ("val:source_set", "olympus", "val:source_set: 'olympus' names no validation set"),
    ("val:tile", 8, "val:tile_overlap: 32 must be smaller than val:tile 8"),
    ("logger:keep_last_checkpoints", -1, "logger:keep_last_checkpoints: must be >= 0, got -1"),
    ("logger:use_tb_loger", True, "logger:use_tb_loger: unknown option (did you mean 'use_tb_logger'?)"),
    ("speed:autocast", "fp32", "speed:autocast: must be one of bf16, fp16, got 'fp32'"),
    ("speed:compiled", True, "speed:compiled: unknown option (did you mean 'compile'?)"),
    ("path:pretrain_network_g", "/nonexistent/net.pth", "path:pretrain_network_g: file does not exist"),
    ("path:pretrain_network_g", "/", "path:pretrain_network_g: / is a folder, not a file"),
    ("datasets:train:meta_info_file", "/", "datasets:train:meta_info_file: / is a folder, not a file"),
    ("datasets:train:dataroot", __file__, f"datasets:train:dataroot: {__file__} is a file, not a folder"),
    ("path:pretrained_network_g", "x.pth", "path:pretrained_network_g: unknown option (did you mean 'pretrain_network_g'?)"),
    ("network_g:type", "SAFNM", "network_g:type: unknown architecture 'SAFNM' (did you mean 'SAFMN'?)"),
    ("network_g:n_block", 2, "network_g:n_block: unknown option (did you mean 'n_blocks'?)"),
    ("network_g:dim", "eight", "network_g:dim: expected an integer, got str 'eight'"),
    ("network_g:ffn_scale", [2], "network_g:ffn_scale: expected a number"),
    # the ranges on the constructor's parameters: no body blocks trained, 1e30 blocks hung the build, ffn_scale 0
    # made 0-channel convolutions (a traceback in the probe), a huge dim overflowed inside torch
    ("network_g:n_blocks", 0, "network_g:n_blocks: must be >= 1, got 0"),
    ("network_g:n_blocks", -1, "network_g:n_blocks: must be >= 1, got -1"),
    ("network_g:n_blocks", "1e30", "network_g:n_blocks: must be <= 1000, got '1e30'"),
    ("network_g:ffn_scale", 0, "network_g:ffn_scale: must be > 0, got 0"),
    ("network_g:ffn_scale", 0.01, "network_g:ffn_scale: 0.01 makes layers of int(8 x 0.01) = 0 channels: need 1 to"),
    ("network_g:dim", 2**70, "network_g:dim: must be <= 16384, got 1180591620717411303424"),
    ("network_g:dim", 10, "network_g:dim: must be divisible by 4"),
    ("network_g:upscaling_factor", 0, "network_g:upscaling_factor: must be >= 1, got 0"),
    ("scale", 2, "scale: 2, but network_g upscales by 4"),
    ("num_gpu", -1, "num_gpu: must be auto or a non-negative integer, got -1"),
    ("datasets:train:meta_info_file", 3, "datasets:train:meta_info_file: expected a string, got int 3 or expected a list"),
    ("ldt:methd", "ldt", "ldt:methd: unknown option (did you mean 'method'?)"),
    ("ldt:method", "ltd", "ldt:method: unknown method 'ltd' (did you mean 'ldt'?)"),
    ("ldt:criterion", "variance", "ldt:criterion: must be one of"),
    ("ldt:group_by", "layer", "ldt:group_by: must be one of tensor, module, got 'layer'"),
    ("ldt:unstable_ratio", 0, "ldt:unstable_ratio: must be > 0"),
    ("ldt:warmup:steps", -1, "ldt:warmup:steps: must be >= 0, got -1"),
    ("ldt:warmup", {"steps": 2, "patterns": ["^nothing$"]}, "ldt:warmup:patterns: ['^nothing$'] match no parameter"),
    ("ldt:warmup:steps", 3, "ldt:warmup:steps: ft trains every layer from the first step", "ft"),
    ("ldt:warmup:steps", 0, "ldt:warmup:steps: lpft needs its head warm-up: must be > 0", "lpft"),
    ("ldt:head_patterns", ["("], "ldt:head_patterns: invalid regex", "deft"),
    ("ldt:head_patterns", [".*"], "ldt:head_patterns: the head patterns match every parameter", "deft"),
    ("ldt:exchange:stable_rank_base", 0.5, "ldt:exchange: stable_base + stable_rank_base must stay within [0, 1]"),
    ("ldt:exchange:weight", 1.0, "ldt:exchange:weight: must be < 1, got 1.0"),
    ("ldt:exchange:unstable_base", 1, "ldt:exchange:unstable_base: must be < 1, got 1"),
    ("ldt:exchange:dpu", "yes please", "ldt:exchange:dpu: expected true or false"),
    ("ldt:probe:dataset", "val_2", "ldt:probe:dataset: 'val_2' reads ['pan'], which are not training cameras"),
    ("ldt:probe:dataset", "val_9", "ldt:probe:dataset: 'val_9' is not a key of datasets"),
    ("ldt:partition_file", "/nonexistent/partition.json", "ldt:partition_file: partition file not found"),
    ("datasets:train:batch_size_per_gpu", 0, "datasets:train:batch_size_per_gpu: must be > 0, got 0"),
    ("datasets:train:gt_size", 30, "datasets:train:gt_size: 30 is not a multiple of the scale 4"),
    # 1e30: an OverflowError traceback in the sampler, a fork of workers until the machine froze, and lines about
    # the data ('has 6 samples, fewer than one batch per rank', 'LR size [8, 8] is smaller than the LR patch ...')
    ("datasets:train:dataset_enlarge_ratio", 1e30, "datasets:train:dataset_enlarge_ratio: must be <= 10000, got 1000"),
    ("datasets:train:num_worker_per_gpu", "1e30", "datasets:train:num_worker_per_gpu: must be <= 256, got 1000"),
    ("datasets:train:batch_size_per_gpu", 1e30, "datasets:train:batch_size_per_gpu: must be <= 65536, got 1e+30"),
    ("datasets:train:gt_size", "1e30", "datasets:train:gt_size: must be <= 16384, got '1e30'"),
    ("datasets:train:dataroot", "/nonexistent/DRealSR", "datasets:train:dataroot: path does not exist"),
    # an empty path is the current folder to pathlib (it 'exists'); an empty pretrain_network_g trained from scratch
    ("path:pretrain_network_g", "", "path:pretrain_network_g: an empty path (an unset variable?)"),
    ("datasets:train:dataroot", " ", "datasets:train:dataroot: an empty path (an unset variable?)"),
    ("ldt:partition_file", "", "ldt:partition_file: an empty path (an unset variable?)"),
    ("datasets:val_1:meta_info_file", [], "datasets:val_1:meta_info_file: an empty list names no file"),
    # a list for 'a string or a list of strings' is checked as the list, without 'expected a string' beside it
    ("datasets:val_1:meta_info_file", [""], "datasets:val_1:meta_info_file[0]: an empty path (an unset variable?)"),
    ("datasets:val_1:meta_info_file", ["a.txt", 3], "datasets:val_1:meta_info_file[1]: expected a string, got int 3"),
    ("datasets:train:split", "validation", "datasets:train:split: must be one of train, test"),
    ("datasets:val_2:cameras", ["pann"], "datasets:val_2:cameras: unknown camera 'pann'"),
    ("datasets:val_2:cameras", ["olympus"], "datasets:val_2: the target set 'pan' evaluates ['olympus']"),
    ("datasets:val_1:split", "train", "datasets:val_1: reads the same train pairs of ['olympus'] as datasets:train"),
    ("datasets:val_2:type", "PairedDataset", "datasets:val_2:type: no option schema for dataset type 'PairedDataset'"),
    ("datasets:val_2:type", ["DRealSRCameraDataset"],
     "datasets:val_2:type: expected a string, got list ['DRealSRCameraDataset']; supported: DRealSRCameraDataset"),
    ("datasets:train:type", {}, "datasets:train:type: expected a string, got dict {}; supported: "),
    ("datasets:train:io_backend", {"type": "s3"}, "datasets:train:io_backend:type: must be one of disk, lmdb"),
    ("datasets:validation", {"name": "x"}, "datasets:validation: a dataset key must be 'train', 'val[_*]' or 'test[_*]'"),
    # what BasicSR, numpy or the network would only refuse with a traceback, mid-run
    ("train:warmup_iter", 100, "train:warmup_iter: 100 needs a train:scheduler"),
    ("train:scheduler", {"type": "CosineAnnealingRestartLR", "periods": [6], "restart_weights": [1, 1]},
     "train:scheduler:restart_weights: 2 weight(s) [1.0, 1.0] for periods [6]: give one weight per entry of periods"),
    ("train:scheduler", {"type": "MultiStepRestartLR", "milestones": [2], "restarts": [0, 3], "restart_weights": [1]},
     "train:scheduler:restart_weights: 1 weight(s) [1.0] for restarts [0, 3]"),
    ("train:scheduler", {"type": "CosineAnnealingRestartLR", "periods": [2]},
     "train:scheduler: periods [2] end at iteration 2, before train:total_iter 6"),
    ("train:scheduler", {"type": "MultiStepLR", "milestones": [3], "restart_weights": [-1]},
     "train:scheduler:restart_weights[0]: must be > 0, got -1"),
    ("manual_seed", -1, "manual_seed: must be >= 0, got -1"),
    ("manual_seed", 99999999999999999999, "manual_seed: must be <= 2147483647, got 99999999999999999999"),
    ("datasets:val_1:held_out", {"fraction": 0.5, "seed": -1}, "datasets:val_1:held_out:seed: must be >= 0, got -1"),
    ("datasets:train:gt_size", 16, "datasets:train:gt_size: 16 makes LR patches of 4x4 at scale 4, but SAFMN needs "
                                   "inputs of at least 8x8 pixels: use gt_size >= 32"),
    ("val", {"val_freq": 3, "pbar": False, "tile": 4, "tile_overlap": 0},
     "val:tile: 4, but SAFMN needs inputs of at least 8x8 pixels: use val:tile >= 8"),
    # a section written but empty is not 'every default' (train: 10,000 iterations)
    ("train", None, "train: is empty (null): give it options, or leave the section out for its defaults"),
    ("ldt", None, "ldt: is empty (null): give it options, or leave the section out for its defaults"),
    # no knock-on line: the set's name is unknown, so val:source_set cannot be checked against it
    ("datasets:val_1:dataroott", "/x", "datasets:val_1:dataroott: unknown option (did you mean 'dataroot'?)"),
    ("datasets", 5, "datasets: must be a mapping of sets ('train', 'val_*', 'test_*'), got int 5"),
    ("datasets", ["train"], "datasets: must be a mapping of sets ('train', 'val_*', 'test_*'), got list ['train']"),
]


@pytest.mark.parametrize("case", BAD, ids=[f"{c[0]}={c[1]!r}"[:60] for c in BAD])
def test_every_bad_option_is_one_line_naming_file_and_option(case, data_root, tmp_path, capsys, nothing_built):
    keys, value, expected, method = (*case, "ldt")[:4]
    opt = with_change(tiny_options(data_root, "bad", method), keys, value)
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    code, lines = train_cli(path, capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("block, typo", [("datasets", "dataset"), ("datasets", "datsets"), ("network_g", "network"),
                                         ("network_g", "netwrok_g")])
def test_a_misspelled_top_level_block_is_one_line_without_knock_on_lines(block, typo, data_root, tmp_path, capsys,
                                                                         nothing_built):
    """A misspelled ``datasets`` / ``network_g`` is one problem: no 'missing' line for the block the hint names,
    and no line from a check that needed it (the scale of a network written under the wrong key is unknown)."""
    opt = tiny_options(data_root, "typo", "ldt")
    opt.pop("scale")
    opt["network_g"]["upscaling_factor"] = 2
    opt["datasets"]["train"]["gt_size"] = 34  # a multiple of the network's scale 2, not of the default 4
    opt[typo] = opt.pop(block)
    code, lines = train_cli(write_options(opt, tmp_path), capsys)
    assert code == 2
    assert lines == [f"error: {tmp_path / 'typo.yml'}: {typo}: unknown option (did you mean '{block}'?)"], lines


def test_a_network_g_left_out_says_missing(data_root, tmp_path, capsys, nothing_built):
    """A file without ``network_g`` (or ``network_g:`` left blank) read 'expected a mapping, got None'."""
    opt = tiny_options(data_root, "nonet", "ldt")
    opt.pop("network_g")
    code, lines = train_cli(write_options(opt, tmp_path), capsys)
    assert code == 2
    assert lines == [f"error: {tmp_path / 'nonet.yml'}: network_g: missing: the network to train or test (type: "
                     "MambaIR, HAT, SAFMN, ... and its constructor arguments)"], lines


def test_all_problems_are_reported_together(data_root, tmp_path, capsys, nothing_built):
    opt = tiny_options(data_root, "many", "ldt")
    opt["train"]["total_iter"] = 0
    opt["ldt"]["exchange"]["interval"] = 0
    opt["network_g"]["n_block"] = 2
    code, lines = train_cli(write_options(opt, tmp_path), capsys)
    assert code == 2 and len(lines) == 3
    assert {line.split(": ")[2] for line in lines} == {"train:total_iter", "network_g:n_block", "ldt:exchange:interval"}


def test_a_field_that_fails_does_not_hide_the_checks_across_sections(data_root, tmp_path, capsys, nothing_built):
    """The checks that read several sections (paths, tiles, the method against the network) still run when some
    other field fails, so a file's problems come in one run, not one per fix."""
    opt = tiny_options(data_root, "many", "ldt")
    opt["train"]["optim_g"]["lrr"] = 1e-4  # a misspelled key
    opt["path"] = {**opt.get("path", {}), "pretrain_network_g": str(tmp_path / "missing.pth")}
    opt["val"] = {**opt["val"], "tile": 32, "tile_overlap": 32}
    opt["ldt"]["unstable_ratio"] = 0.9999
    code, lines = train_cli(write_options(opt, tmp_path), capsys)
    assert code == 2 and len(lines) == 4, lines
    assert [line.split(": ")[2] for line in lines] == ["train:optim_g:lrr", "path:pretrain_network_g",
                                                       "val:tile_overlap", "ldt:unstable_ratio"]


def test_numbers_written_as_yaml_strings_are_the_numbers_they_spell(data_root, tmp_path):
    text = yaml.safe_dump(tiny_options(data_root, "strings", "ldt"), sort_keys=False)
    text = text.replace("lr: 0.001", "lr: 1e-3").replace("val_freq: 3", "val_freq: 3e0")
    path = tmp_path / "strings.yml"
    path.write_text(text)
    assert yaml.safe_load(text)["train"]["optim_g"]["lr"] == "1e-3"  # what PyYAML makes of it
    opt = load_options(path, is_train=True)
    assert opt["train"]["optim_g"]["lr"] == 1e-3 and opt["val"]["val_freq"] == 3
    # BasicSR files write frequencies as !!float 5e3
    opt = load_options(path, is_train=True, overrides=["logger:save_checkpoint_freq=!!float 6e0"])
    assert opt["logger"]["save_checkpoint_freq"] == 6 and isinstance(opt["logger"]["save_checkpoint_freq"], int)


def test_defaults_are_filled_from_the_single_declaration(data_root):
    from ldt.core import ExchangeConfig, MethodConfig
    from ldt.sr.options import LDTOptions, TrainOptions

    opt = prepare_options(tiny_options(data_root, "defaults", "ldt", ldt={"method": "ldt"}), is_train=True)
    assert opt["ldt"]["unstable_ratio"] == MethodConfig.model_fields["unstable_ratio"].default == 0.4
    assert opt["ldt"]["exchange"] == ExchangeConfig().to_dict()
    assert opt["ldt"] == LDTOptions(method="ldt").to_dict()
    assert opt["train"]["nan_policy"] == TrainOptions().nan_policy
    assert opt["val"]["metrics"] == {"psnr": {"type": "calculate_psnr", "crop_border": None, "test_y_channel": True,
                                              "better": "higher"},
                                     "ssim": {"type": "calculate_ssim", "crop_border": None, "test_y_channel": True,
                                              "better": "higher"}}


def official_mambair_options(root) -> dict:
    """Shaped like the official MambaIR train_MambaIR_SR_x4.yml (its keys, with our tiny sizes and data)."""
    return {
        "name": "official", "model_type": "MambaIRModel", "scale": 4, "num_gpu": 0, "manual_seed": 10,
        "datasets": {
            "train": {"task": "SR", "name": "DF2K", "type": "PairedImageDataset", "dataroot_gt": [str(root)],
                      "dataroot_lq": [str(root)], "filename_tmpl": "{}x4", "io_backend": {"type": "disk"},
                      "gt_size": 32, "use_hflip": True, "use_rot": True, "use_shuffle": True,
                      "num_worker_per_gpu": 0, "batch_size_per_gpu": 2, "dataset_enlarge_ratio": 1,
                      "prefetch_mode": None},
            "val": {"name": "Set14", "type": "PairedImageDataset", "dataroot_gt": str(root), "dataroot_lq": str(root),
                    "filename_tmpl": "{}x4", "io_backend": {"type": "disk"}},
        },
        "network_g": {"type": "MambaIR", "upscale": 4, "in_chans": 3, "img_size": 64, "window_size": 8,
                      "img_range": 1.0, "d_state": 4, "depths": [1], "embed_dim": 30, "mlp_ratio": 2,
                      "upsampler": "pixelshuffle", "resi_connection": "1conv"},
        "path": {"pretrain_network_g": None, "strict_load_g": False, "resume_state": None},
        "train": {"optim_g": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
                  "scheduler": {"type": "MultiStepLR", "milestones": [125000, 200000], "gamma": 0.5},
                  "total_iter": 250000, "warmup_iter": -1,
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}},
        "val": {"val_freq": 5e3, "save_img": True, "selection": "last",
                "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 4, "test_y_channel": True}}},
        "logger": {"print_freq": 200, "save_checkpoint_freq": 5e3, "use_tb_logger": True,
                   "wandb": {"project": None, "resume_id": None}},
        "dist_params": {"backend": "nccl", "port": 29500},
    }


def test_an_official_mambair_file_is_accepted_with_warnings_naming_the_ignored_keys(tmp_path):
    with pytest.warns(OptionsWarning) as caught:
        opt = prepare_options(official_mambair_options(tmp_path), is_train=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "network_g: window_size ignored" in messages and "MambaIRModel runs as LDTModel" in messages
    assert "window_size" not in opt["network_g"] and opt["network_g"]["embed_dim"] == 30
    assert opt["datasets"]["train"]["dataroot_gt"] == str(tmp_path)  # BasicSR's dataset reads one folder
    assert opt["val"]["val_freq"] == 5000 and opt["model_type"] == "LDTModel"
    bad = official_mambair_options(tmp_path)
    bad["network_g"]["windw_size"] = 8  # not an official extra: still an error
    with pytest.raises(OptionsError, match="network_g:windw_size: unknown option"), warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionsWarning)
        prepare_options(bad, is_train=True)


HAT = {"type": "HAT", "embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4, "img_size": 8,
       "squeeze_factor": 3, "upscale": 4}
MAMBAIR = {"type": "MambaIR", "embed_dim": 30, "depths": [1], "upscale": 4, "upsampler": "pixelshuffle"}
BAD_NETWORKS = [
    # (network_g, the one line it makes): each was accepted (a network that trains wrong or fails mid-run), a
    # traceback, or a line that did not say which argument
    ({**HAT, "embed_dim": 0}, "network_g:embed_dim: must be >= 1, got 0"),
    ({**HAT, "embed_dim": 13}, "network_g:embed_dim: 13 must be divisible by every num_heads entry [2]"),
    ({**HAT, "depths": [0]}, "network_g:depths[0]: must be >= 1, got 0"),
    ({**HAT, "depths": []}, "network_g:depths: must have length >= 1, got []"),  # was pydantic's 'value should ...'
    ({**HAT, "depths": [600, 600], "num_heads": [2, 2]}, "network_g:depths: [600, 600] make 1200 blocks in all: at "
                                                         "most 1000"),
    ({**HAT, "depths": [1, 1]}, "network_g:num_heads: [2] and depths [1, 1] must have the same length"),
    ({**HAT, "num_heads": [0]}, "network_g:num_heads[0]: must be >= 1, got 0"),
    ({**HAT, "window_size": 0}, "network_g:window_size: must be >= 1, got 0"),
    ({**HAT, "window_size": 10**9}, "network_g:window_size: must be <= 64"),
    ({**HAT, "mlp_ratio": 0}, "network_g:mlp_ratio: must be > 0, got 0"),
    ({**HAT, "mlp_ratio": 1e30}, "network_g:mlp_ratio: 1e+30 makes layers of int(12 x 1e+30) = more than 16384"),
    ({**HAT, "upscale": 5}, "network_g:upscale: HAT supports 1, 2, 4, 8, 16 or 3, got 5"),
    ({**HAT, "upscale": 0}, "network_g:upscale: must be >= 1, got 0"),
    ({**HAT, "compress_ratio": 0}, "network_g:compress_ratio: must be >= 1, got 0"),
    ({**HAT, "squeeze_factor": 30}, "network_g:squeeze_factor: 30 exceeds embed_dim 12"),
    ({**HAT, "overlap_ratio": -1}, "network_g:overlap_ratio: must be >= 0, got -1"),
    ({**HAT, "overlap_ratio": 0.75}, "network_g:overlap_ratio: int(overlap_ratio x window_size) = int(0.75 x 4) must "
                                     "be even"),
    ({**HAT, "img_size": 4}, "network_g:img_size: 4 must exceed window_size (4)"),
    ({**HAT, "img_range": 0}, "network_g:img_range: must be > 0, got 0"),
    ({**HAT, "drop_path_rate": 1}, "network_g:drop_path_rate: must be < 1, got 1"),
    ({**HAT, "qk_scale": 0}, "network_g:qk_scale: must be > 0, got 0"),
    ({**MAMBAIR, "embed_dim": 29}, "network_g:embed_dim: must be >= 30, got 29"),
    ({**MAMBAIR, "depths": ["1e30"]}, "network_g:depths[0]: must be <= 1000, got '1e30'"),
    ({**MAMBAIR, "d_state": 0}, "network_g:d_state: must be >= 1, got 0"),
    ({**MAMBAIR, "mlp_ratio": 0}, "network_g:mlp_ratio: must be > 0, got 0"),
    ({**MAMBAIR, "upscale": 5}, "network_g:upscale: upsampler 'pixelshuffle' supports scales 2^n and 3, got 5"),
    ({**MAMBAIR, "upsampler": "pixelshuffledirect", "upscale": 10**6}, "network_g:upscale: must be <= 16"),
    ({**MAMBAIR, "upsampler": "nearest+conv", "upscale": 3}, "network_g:upscale: upsampler 'nearest+conv' supports "
                                                            "upscale 2 and 4, got 3"),
    ({**MAMBAIR, "img_range": 0}, "network_g:img_range: must be > 0, got 0"),
    # upsampler '' (MambaIR's default) keeps the input size, whatever upscale says: x4 pairs on a x1 network
    ({"type": "MambaIR", "embed_dim": 30, "depths": [1], "upscale": 4}, "scale: 4, but network_g upscales by 1"),
    ({**MAMBAIR, "in_chans": 0}, "network_g:in_chans: must be >= 1, got 0"),
    # another registered network (BasicSR's EDSR, unchecked by our schema): torch's C++ error, first line only
    ({"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": -4, "upscale": 4},
     "network_g: EDSR cannot be built with these options: Trying to create tensor with negative dimension -4"),
    # unannotated arguments: a failure names those whose type is not their default's
    ({"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": "x", "upscale": 4, "img_range": 255},
     "network_g: EDSR cannot be built with these options: not all arguments converted during string formatting "
     "(num_feat: 'x' where its default is the integer 64)"),
    ({"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": True, "upscale": 4.0, "img_range": 255},
     "network_g: EDSR cannot be built with these options: empty(): argument 'size' (position 1) must be tuple of "
     "ints, but found element of type bool at pos 0 (num_feat: True where its default is the integer 64; "
     "upscale: 4.0 where its default is the integer 4)"),
    ({**HAT, "depths": 6}, "network_g:depths: expected a list, got int 6"),  # was pydantic's 'Input should be ...'
]


@pytest.mark.parametrize("network, expected", BAD_NETWORKS, ids=[line.split(": ")[0] + f"={i}"
                                                                 for i, (_, line) in enumerate(BAD_NETWORKS)])
def test_hat_and_mambair_arguments_out_of_range_are_one_line_naming_them(network, expected, data_root):
    with pytest.raises(OptionsError) as raised:
        prepare_options(tiny_options(data_root, "net", network_g=network), is_train=True, source="f.yml")
    lines = str(raised.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"f.yml: {expected}"), lines


SAME_WORDS = [  # (network_g, what is wrong with it): before, the two routes worded these differently, or not at all
    ({**MAMBAIR, "img_size": 0}, "img_size: must be >= 1, got 0"),  # file: '... or expected a list, got int 0'
    ({**MAMBAIR, "img_size": [64]}, "img_size: must have length >= 2, got [64]"),  # Python: built
    ({**MAMBAIR, "img_size": [1, 2, 3]}, "img_size: must have length <= 2, got [1, 2, 3]"),  # Python: built
    ({**MAMBAIR, "depths": "66"}, "depths: expected a list, got str '66'"),  # file: pydantic's words
    ({**HAT, "depths": []}, "depths: must have length >= 1, got []"),  # file: pydantic's words
    ({**HAT, "depths": [1, 0]}, "depths[1]: must be >= 1, got 0"),
    ({**HAT, "qk_scale": 0}, "qk_scale: must be > 0, got 0"),
    ({"type": "SAFMN", "dim": True}, "dim: expected an integer, got bool True"),
]


@pytest.mark.parametrize("network, problem", SAME_WORDS, ids=[problem for _, problem in SAME_WORDS])
def test_a_python_call_and_an_option_file_say_the_same(network, problem, data_root):
    """One declaration, one check: ``@check_arguments`` validates a Python call through the option check's model
    (strict), so both name the argument in the same words (``HAT: depths[1]: ...`` / ``network_g:depths[1]: ...``)."""
    from ldt.sr.options import arch_registry

    with pytest.raises(OptionsError) as raised:
        prepare_options(tiny_options(data_root, "net", network_g=network), is_train=True, source="f.yml")
    assert str(raised.value) == f"f.yml: network_g:{problem}"
    with pytest.raises(ValueError) as raised:
        arch_registry().get(network["type"])(**{k: v for k, v in network.items() if k != "type"})
    assert str(raised.value) == f"{network['type']}: {problem}"


@check_arguments
class Toy(nn.Module):
    """Constructor annotations of kinds no SR network of ours declares yet."""

    def __init__(self, mode: Literal["fast", "slow"] = "fast", width: Annotated[int, Field(gt=0)] = 1) -> None:
        super().__init__()


def test_a_new_kind_of_declaration_is_checked_in_python_too():
    """A constructor annotation pydantic knows (a Literal, a Field bound) is checked in a Python call as in an option
    file, with nothing written for it in arch_util (the former walkers let both through); numpy numbers pass."""
    for given, problem in [({"mode": "quick"}, "mode: must be one of fast, slow, got 'quick'"),
                           ({"width": 0}, "width: must be > 0, got 0")]:
        with pytest.raises(ValidationError) as raised:
            network_schema(Toy).model_validate({"type": "Toy", **given})
        assert describe_errors(raised.value, network_schema(Toy), ["network_g"]) == [f"network_g:{problem}"]
        with pytest.raises(ArgumentError) as raised:
            Toy(**given)
        assert (str(raised.value), raised.value.argument) == (f"Toy: {problem}", next(iter(given)))
    Toy("slow", np.int64(3))
    assert network_schema(Toy, strict=True) is network_schema(Toy, strict=True)  # built once per class


def test_the_official_networks_pass_the_ranges(data_root):
    """The ranges reject none of the official models (HAT: its released window of 16; its default 7 never built)."""
    for network in ({"type": "HAT", "upscale": 4, "window_size": 16}, {"type": "SAFMN", "dim": 36},
                    {"type": "MambaIR", "upscale": 4, "upsampler": "pixelshuffle"}):
        opt = prepare_options(tiny_options(data_root, "net", network_g=network), is_train=True)
        assert opt["network_g"] == network


def test_test_py_rejects_bad_options_in_one_line(data_root, tmp_path, capsys, nothing_built):
    from ldt.sr.evaluate import main

    opt = {"name": "t", "model_type": "LDTModel", "num_gpu": 0, "network_g": tiny_options(data_root, "x")["network_g"],
           "datasets": {"test_1": {"name": "pan", "type": "DRealSRCameraDataset", "dataroot": str(data_root),
                                   "split": "test", "camera": ["pan"]}},
           "path": {"pretrain_network_g": str(tmp_path / "missing.pth")}}
    path = tmp_path / "t.yml"
    path.write_text(yaml.safe_dump(opt))
    assert main(["-opt", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {path}: ") for line in lines)
    assert any("datasets:test_1:camera: unknown option (did you mean 'cameras'?)" in line for line in lines)
    assert any("path:pretrain_network_g: file does not exist" in line for line in lines)


def test_launcher_pytorch_outside_torchrun_is_one_line(data_root, tmp_path, capsys, monkeypatch, nothing_built):
    """Train_pip.py: not the process group's traceback after the checks; test.py: refused, not silently ignored."""
    from ldt.sr.evaluate import main as test_main
    from ldt.sr.train import TORCHRUN_VARIABLES, main as train_main

    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    path = write_options(tiny_options(data_root, "launch"), tmp_path)
    for main, words in ((train_main, "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set; start it under torchrun"),
                        (test_main, "test.py evaluates in one process")):
        with pytest.raises(SystemExit) as exit_info:
            main(["-opt", str(path), "--root", str(tmp_path), "--launcher", "pytorch"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        assert f"error: --launcher pytorch: {words}" in err.strip().splitlines()[-1]
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "results").exists()


def test_an_lmdb_paired_set_on_a_plain_folder_is_one_line_per_folder(tmp_path):
    """BasicSR's PairedImageDataset with io_backend: lmdb on an image folder raised a bare ValueError ('should both in
    lmdb formats'; a *.lmdb without meta_info.txt: FileNotFoundError) from inside the training's set-up."""
    opt = official_mambair_options(tmp_path)
    (tmp_path / "lq.lmdb").mkdir()
    opt["datasets"]["train"].update(io_backend={"type": "lmdb"}, dataroot_lq=[str(tmp_path / "lq.lmdb")])
    with pytest.raises(OptionsError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionsWarning)
        prepare_options(opt, is_train=True)
    lines = str(err.value).splitlines()
    assert lines == [f"options: datasets:train:{field}: {path} is not an LMDB (io_backend: lmdb reads a folder whose name ends "
                     "in .lmdb, holding a meta_info.txt, as BasicSR's create_lmdb writes)"
                     for field, path in (("dataroot_gt", tmp_path), ("dataroot_lq", tmp_path / "lq.lmdb"))]
    for folder in ("gt.lmdb", "lq.lmdb"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "meta_info.txt").write_text("a.png (8,8,3) 1\n")
    opt["datasets"]["train"]["dataroot_gt"] = [str(tmp_path / "gt.lmdb")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionsWarning)
        assert prepare_options(opt, is_train=True)["datasets"]["train"]["io_backend"] == {"type": "lmdb"}


def test_more_loader_workers_than_cpus_is_one_warning_naming_the_options(data_root, monkeypatch):
    """``num_worker_per_gpu`` is bounded (MAX_WORKERS) but 256 workers on a 2-CPU job only queue for the same CPUs:
    one warning at start-up names each block's option and the CPU count; the run goes on."""
    monkeypatch.setattr("ldt.sr.options.usable_cpus", lambda: 2)
    opt = tiny_options(data_root, "workers", "ldt")
    opt["datasets"]["train"]["num_worker_per_gpu"] = 8
    opt["datasets"]["val_2"]["num_worker_per_gpu"] = 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_options(opt, is_train=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, OptionsWarning)]
    assert messages == ["datasets:train:num_worker_per_gpu: 8, datasets:val_2:num_worker_per_gpu: 3: more DataLoader "
                        "workers than the 2 CPU(s) this process may use; they only queue for the same CPUs (set at "
                        "most 2)"], messages
    assert prepared["datasets"]["train"]["num_worker_per_gpu"] == 8
    opt["datasets"]["train"]["num_worker_per_gpu"] = 2
    opt["datasets"]["val_2"]["num_worker_per_gpu"] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_options(opt, is_train=True)
    assert not [w for w in caught if issubclass(w.category, OptionsWarning)]


def test_torch_does_not_repeat_the_workers_warning_in_its_own_words(data_root, monkeypatch):
    """Beside our one line, torch's DataLoader said the same in a multi-line UserWarning ('This DataLoader will create
    N worker processes in total ...'), twice (at the loader's creation and at its iterator's): now ours alone."""
    import os

    import torch

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr("ldt.sr.options.usable_cpus", lambda: cpus)
    opt = tiny_options(data_root, "workers", "ldt")
    opt["datasets"]["train"]["num_worker_per_gpu"] = cpus + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_options(opt, is_train=True)
        torch.utils.data.DataLoader(range(4), num_workers=cpus + 1)
    assert [str(w.message) for w in caught if issubclass(w.category, OptionsWarning)]
    assert not [w for w in caught if "worker processes in total" in str(w.message)], [str(w.message) for w in caught]


def test_a_warning_of_options_checked_twice_is_shown_once(data_root, tmp_path, monkeypatch):
    """The entry point checks the options (load_options) and the model checks them again (LDTModel): the workers and
    wandb warnings were shown by both, each attributed to its caller; under Python's default filter, once now."""
    monkeypatch.setattr("ldt.sr.options.usable_cpus", lambda: 2)
    opt = tiny_options(data_root, "twice", "ldt")
    opt["datasets"]["train"]["num_worker_per_gpu"] = 8
    opt["logger"]["wandb"] = {"project": "p"}
    file = tmp_path / "twice.yml"
    file.write_text(yaml.safe_dump(opt))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        loaded = load_options(file, is_train=True)
        prepare_options(loaded, is_train=True)  # as LDTModel does
    messages = [str(w.message) for w in caught if issubclass(w.category, OptionsWarning)]
    assert len(messages) == 2 and len(set(messages)) == 2, messages
    assert any(m.startswith("datasets:train:num_worker_per_gpu: 8: more DataLoader workers than the 2 CPU(s)")
               for m in messages)


def test_every_did_you_mean_comes_from_the_one_helper():
    """``ldt.cli.meant`` is the one "did you mean" (an option, a choice, a type tag, a method, an architecture, a
    flag): a module calling difflib itself could pick hints by other rules (cut-off, candidates)."""
    import ldt

    package = Path(ldt.__file__).parent
    callers = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "difflib" in path.read_text() and path != package / "cli.py")
    assert callers == []


def test_every_did_you_mean_suffix_comes_from_the_one_helper():
    """``ldt.cli.did_you_mean`` writes the " (did you mean 'X'?)" suffix; a module building it by hand (seven
    did) could word or quote it differently, or forget the fallback, for the same kind of misspelling."""
    import ldt
    from ldt.cli import did_you_mean

    package = Path(ldt.__file__).parent
    callers = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "did you mean '" in path.read_text() and path != package / "cli.py")
    assert callers == []
    assert did_you_mean("ltd", ["ldt", "ft"]) == " (did you mean 'ldt'?)"
    assert did_you_mean("zzz", ["ldt", "ft"]) == ""
    assert did_you_mean("zzz", ["ldt", "ft"], otherwise="; known: ldt, ft") == "; known: ldt, ft"


@pytest.mark.parametrize("parser", ["one_line", "hinting"])
def test_a_misspelled_flag_gets_the_did_you_mean_of_option_names(parser, capsys):
    """``unrecognized arguments: --stesp 4`` named no ``--steps`` (option files and methods had the hint, flags
    not); the flags are compared without their dashes, which alone made '--help' the hint of any short flag."""
    from ldt.cli import HintingParser, OneLineParser

    def error_of(*argv: str) -> str:
        built = (OneLineParser if parser == "one_line" else HintingParser)(prog="prog")
        built.add_argument("--steps", type=int)
        built.add_argument("--auto_resume", action="store_true")
        with pytest.raises(SystemExit) as exited:
            built.parse_args(list(argv))
        assert exited.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert error_of("--stesp", "4") == "prog: error: unrecognized arguments: --stesp 4 (did you mean '--steps'?)"
    assert error_of("--auto-resume") == "prog: error: unrecognized arguments: --auto-resume (did you mean '--auto_resume'?)"
    assert error_of("--stpes=4") == "prog: error: unrecognized arguments: --stpes=4 (did you mean '--steps'?)"
    assert error_of("--zzzz") == "prog: error: unrecognized arguments: --zzzz"
    assert error_of("--hepl") == "prog: error: unrecognized arguments: --hepl (did you mean '--help'?)"
    assert error_of("--steps", "x") == "prog: error: argument --steps: invalid int value: 'x'"
    # an abbreviation, which argparse read as the flag it starts, is refused with that flag as the hint
    assert error_of("--ste", "4") == "prog: error: unrecognized arguments: --ste 4 (did you mean '--steps'?)"
    assert error_of("--a") == "prog: error: unrecognized arguments: --a (did you mean '--auto_resume'?)"


def test_a_prefix_of_a_single_dash_flag_is_refused_but_a_short_flag_keeps_its_attached_value(capsys):
    """argparse's allow_abbrev=False refuses '--auto' but still read '-o FILE' as '-opt FILE'."""
    from ldt.cli import OneLineParser

    built = OneLineParser(prog="prog")
    built.add_argument("-opt", "--opt")
    built.add_argument("-n", type=int)
    assert vars(built.parse_args(["-n4", "-opt=x"])) == {"opt": "x", "n": 4}
    with pytest.raises(SystemExit) as exited:
        built.parse_args(["-op", "x"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "prog: error: unrecognized arguments: -op x (did you mean '-opt'?)\n"


def test_every_command_parser_hints_misspelled_flags():
    """Every command's parser (the scripts, ``Train_pip.py`` / ``test.py`` through ldt.sr.train, the runners, the
    examples) is an ``ldt.cli`` parser, so each misspelled flag gets the hint."""
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("*.py"), *(root / "scripts").glob("*.py"), *(root / "examples").glob("*.py"),
             *(root / "ldt").rglob("*.py")]
    plain = sorted(str(path.relative_to(root)) for path in files if "argparse.ArgumentParser(" in path.read_text())
    assert plain == []
    # and the one-line one: HintingParser (its base) printed argparse's usage above the error line
    usage_above = sorted(str(path.relative_to(root)) for path in files if "HintingParser(" in path.read_text()
                         and path != root / "ldt" / "cli.py")
    assert usage_above == []


def test_the_commands_and_the_package_have_no_unused_name_but_registrations():
    """pyflakes over ldt/, scripts/, examples/ and the root scripts finds nothing but the imports that register
    architectures, datasets and models (and ldt.ops' star import): ``python -m ldt.sr.options``' main imported an
    argparse it no longer used."""
    pytest.importorskip("pyflakes")
    import io

    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter

    root = Path(__file__).resolve().parents[1]
    found = io.StringIO()
    checkRecursive([str(root / "ldt"), str(root / "scripts"), str(root / "examples"), str(root / "Train_pip.py"),
                    str(root / "test.py")], Reporter(found, found))
    registration = re.compile(r"'ldt\.(archs|data|models)' imported but unused|ldt/ops/__init__\.py:.*selective_scan")
    left = [line for line in found.getvalue().splitlines() if not registration.search(line)]
    assert left == []


def test_the_option_reference_shows_the_ranges_of_optional_options_too():
    """``PositiveInt | None`` keeps its bound inside the union, where the reference's range column did not look."""
    from pydantic import BaseModel

    from ldt.core.config import PositiveInt, PositiveReal, option_rows
    from ldt.sr.options import options_reference

    class Example(BaseModel):
        tile: PositiveInt | None = None
        eps: PositiveReal | None = None
        steps: PositiveInt = 1

    assert [row[3] for row in option_rows(Example)] == ["> 0", "> 0", "> 0"]
    assert "| `val:tile` | integer or null | null | > 0 |" in options_reference()


class UserNet(nn.Module):
    """A researcher's own x4 network (no annotations, no declared scale), whose forward returns what ``kind`` says."""

    def __init__(self, kind: str = "image", upscale: int = 4, num_in_ch: int = 3) -> None:
        super().__init__()
        self.kind, self.upscale = kind, upscale
        self.conv = nn.Conv2d(num_in_ch, 3 * upscale * upscale, 3, padding=1)

    def forward(self, x):
        if self.kind == "needs_values":  # fine on real data, cannot run on the meta device
            x = x * float(x.mean().item() >= 0)
        out = nn.functional.pixel_shuffle(self.conv(x), self.upscale)
        return {"tuple": lambda: (out, x), "dict": lambda: {"sr": out}, "x2": lambda: out[..., ::2, ::2],
                "grey": lambda: out[:, :1]}.get(self.kind, lambda: out)()


@pytest.fixture
def user_net(monkeypatch):
    """``UserNet`` registered as a ``*_arch.py`` of the user's would register it, for this test only."""
    from ldt.sr.options import arch_registry

    monkeypatch.setitem(arch_registry()._obj_map, "UserNet", UserNet)


@pytest.mark.parametrize("kind, problem", [
    ("tuple", "UserNet's forward returns a tuple, not an image tensor"),
    ("dict", "UserNet's forward returns a dict, not an image tensor"),
    ("x2", "UserNet maps a 1x3x16x16 input to 1x3x32x32, but scale 4 needs 1x3x64x64"),
    ("grey", "UserNet maps a 1x3x16x16 input to 1x1x64x64, but scale 4 needs 1x3x64x64"),
])
def test_a_network_whose_output_is_no_sr_image_is_one_line_before_any_data(kind, problem, user_net, data_root,
                                                                           tmp_path, capsys, nothing_built):
    """Its forward runs once on the meta device at the option check; before, the run stopped in a traceback from
    inside the pixel loss at the first probe batch or step (a grey output was broadcast against the RGB target,
    with only torch's warning), and test.py in one from the tiling (``'tuple' object has no attribute 'clamp_'``)."""
    opt = tiny_options(data_root, f"user_{kind}", network_g={"type": "UserNet", "kind": kind})
    code, lines = train_cli(write_options(opt, tmp_path), capsys)
    assert (code, lines) == (2, [f"error: {tmp_path / f'user_{kind}.yml'}: network_g: {problem} (training, "
                                 "validation and test.py take its output as the SR image of the input)"])
    test_opt = {"name": "t", "network_g": opt["network_g"], "datasets": {"test_1": opt["datasets"]["val_1"]},
                "path": {"pretrain_network_g": str(data_root / "synthetic_cameras.json")}}
    with pytest.raises(OptionsError, match=f"^f.yml: network_g: {problem}"):
        prepare_options(test_opt, is_train=False, source="f.yml")


@pytest.mark.parametrize("network_g, expects", [
    ({"type": "UserNet", "num_in_ch": 1}, "UserNet expects 1 input channel(s)"),
    ({"type": "UserNet", "num_in_ch": 4}, "UserNet expects 4 input channel(s)"),
    ({"type": "HAT", "upscale": 4, "in_chans": 1, "img_size": 16, "window_size": 4, "compress_ratio": 3,
      "squeeze_factor": 3, "depths": [1], "embed_dim": 12, "num_heads": [2], "mlp_ratio": 2}, "HAT expects 1 input "
                                                                                              "channel(s)"),
])
def test_a_network_for_another_channel_count_than_the_data_is_one_line_before_any_data(network_g, expects, user_net,
                                                                                       data_root, tmp_path, capsys,
                                                                                       nothing_built):
    """A network_g built for grey (``num_in_ch: 1``, HAT's ``in_chans: 1``) or RGBA input fed the RGB images every
    dataset reads: its forward failed on the meta device, so the check left it to the run, which stopped in a
    traceback at the first probe batch (a conv's 'expected input[...] to have 1 channels, but got 3'). Now one line
    naming the network, the set and what to change, before any data is read (test.py: its first test set)."""
    opt = tiny_options(data_root, "chans", network_g=network_g)
    code, lines = train_cli(write_options(opt, tmp_path), capsys)
    assert (code, lines) == (2, [f"error: {tmp_path / 'chans.yml'}: network_g: {expects} but datasets:train gives 3 "
                                 "(RGB images: every dataset reads 3 channels); build it for 3 input channels"])
    test_opt = {"name": "t", "network_g": network_g, "datasets": {"test_1": opt["datasets"]["val_1"]},
                "path": {"pretrain_network_g": str(data_root / "synthetic_cameras.json")}}
    with pytest.raises(OptionsError, match=rf"^f.yml: network_g: {re.escape(expects)} but datasets:test_1 gives 3 \("):
        prepare_options(test_opt, is_train=False, source="f.yml")


@pytest.mark.parametrize("kind", ["image", "needs_values"])
def test_a_network_that_returns_the_sr_image_or_cannot_run_on_meta_passes_the_output_check(kind, user_net, data_root):
    """The check is never stricter than the network: a forward that needs real values is left to the run."""
    opt = prepare_options(tiny_options(data_root, "user", network_g={"type": "UserNet", "kind": kind}), is_train=True)
    assert opt["network_g"] == {"type": "UserNet", "kind": kind}


@pytest.mark.parametrize("source_cameras, selection, warned", [
    (["olympus", "pan"], "source", True),  # the selecting set reads the target camera pan
    (["olympus"], "source", False),
    (["olympus", "pan"], "last", False),  # no set selects the checkpoint
    (["olympus", "pan"], "oracle:pan", False),  # an oracle selects on a target by design
])
def test_a_checkpoint_selecting_set_reading_a_target_camera_is_one_warning(source_cameras, selection, warned,
                                                                           data_root):
    """``datasets:val_1:cameras: [olympus, pan]`` beside a target set of pan was silent: the source-selection set
    read target data, so the 'source' checkpoint was chosen partly on the target. A warning, not a refusal."""
    opt = tiny_options(data_root, "selecting", "ldt", val__selection=selection)
    opt["datasets"]["val_1"]["cameras"] = source_cameras
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_options(opt, is_train=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, OptionsWarning)]
    expected = ["datasets:val_1:cameras: the set 'source' that selects the checkpoint (val:source_set) reads ['pan'], "
                "which datasets:val_2 (pan) evaluates as a target: target data picks the checkpoint; select on "
                "source cameras only"]
    assert messages == (expected if warned else []), messages
    assert prepared["datasets"]["val_1"]["cameras"] == source_cameras
