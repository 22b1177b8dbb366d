"""Option files that build on another (``base:``), and the paper's variant files built that way."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from ldt.sr.options import OPTION_DIRS, OptionsError, read_option_file


def write(path, data) -> None:
    path.write_text(yaml.safe_dump(data))


def test_base_merges_mappings_replaces_values_and_tilde_deletes(tmp_path):
    write(tmp_path / "base.yml", {"name": "a", "ldt": {"method": "ldt", "exchange": {"interval": 10, "dpu": True}},
                                  "datasets": {"val_0": {"cameras": ["olympus"]}, "val_1": {"cameras": ["pan"]}}})
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "child.yml", {"base": "../base.yml", "name": "b", "ldt": {"exchange": {"dpu": False}},
                                           "datasets": {"val_0": {"cameras": ["olympus", "pan"]}, "val_1": None}})
    opt = read_option_file(tmp_path / "sub" / "child.yml")
    assert opt == {"name": "b", "ldt": {"method": "ldt", "exchange": {"interval": 10, "dpu": False}},
                   "datasets": {"val_0": {"cameras": ["olympus", "pan"]}}}


def test_base_chains_and_reports_cycles_and_missing_files(tmp_path):
    write(tmp_path / "a.yml", {"base": "b.yml", "x": 1})
    write(tmp_path / "b.yml", {"base": "c.yml", "y": 2})
    write(tmp_path / "c.yml", {"z": 3})
    assert read_option_file(tmp_path / "a.yml") == {"x": 1, "y": 2, "z": 3}
    write(tmp_path / "c.yml", {"base": "a.yml"})
    with pytest.raises(OptionsError, match="cycle"):
        read_option_file(tmp_path / "a.yml")
    write(tmp_path / "d.yml", {"base": "nowhere.yml"})
    with pytest.raises(OptionsError, match=r"d\.yml: base file .*nowhere\.yml does not exist"):
        read_option_file(tmp_path / "d.yml")


def test_paper_variant_files_change_only_what_they_say():
    train = OPTION_DIRS["train"]
    full = read_option_file(train / "train_MambaIR_LDT_x4.yml")

    def diff(name: str) -> dict:
        variant = read_option_file(train / name)
        return {key: variant[key] for key in variant if variant[key] != full.get(key)}

    assert diff("train_MambaIR_FT_x4.yml") == {"name": "MambaIR_FT_x4_olympus", "ldt": {**full["ldt"], "method": "ft"}}
    ratio = read_option_file(train / "ablations" / "train_MambaIR_LDT_ratio0.7_x4.yml")
    assert ratio["ldt"]["unstable_ratio"] == 0.7 and ratio["network_g"] == full["network_g"]
    two = read_option_file(train / "sources" / "train_MambaIR_LDT_x4_olympus+pan.yml")
    assert two["datasets"]["train"]["cameras"] == ["olympus", "pan"]
    assert two["datasets"]["train"]["gt_size"] == full["datasets"]["train"]["gt_size"]
    targets = {d["cameras"][0] for k, d in two["datasets"].items() if k.startswith("val_") and k != "val_0"}
    assert targets == {"sony", "dsc", "img", "canon"}
    moved = read_option_file(train / "sources" / "train_MambaIR_LDT_x4_sony+pan.yml")
    names = sorted(d["name"] for k, d in moved["datasets"].items() if k.startswith("val_"))
    assert names == ["canon", "dsc", "img", "olympus", "source"]


def test_an_option_file_that_is_a_folder_is_named(tmp_path):
    from ldt.sr.options import resolve_option_file

    with pytest.raises(OptionsError, match=f"^option file '{tmp_path}' is a folder, not a file$"):
        resolve_option_file(str(tmp_path), "test")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "run.yml"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("special,kind", [("fifo", "a FIFO (named pipe), not a regular file"),
                                          ("/dev/zero", "a character device, not a regular file")])
def test_an_option_file_that_is_a_fifo_or_a_device_is_named_not_read_or_not_found(special, kind, request, tmp_path):
    """A FIFO or /dev/zero was 'not found' (is_file() was False); a base: FIFO 'did not exist'. Reading either would
    wait for a writer forever or never end."""
    from ldt.sr.options import resolve_option_file

    path = str(request.getfixturevalue("fifo") if special == "fifo" else special)
    with pytest.raises(OptionsError, match=f"^option file '{re.escape(path)}' is {re.escape(kind)}$"):
        resolve_option_file(path, "train")
    write(tmp_path / "child.yml", {"base": path, "name": "x"})
    with pytest.raises(OptionsError, match=f"child.yml: base file {re.escape(path)} is {re.escape(kind)}$"):
        read_option_file(tmp_path / "child.yml")


def test_weights_that_are_a_fifo_are_named_in_the_option_check(fifo, tmp_path):
    """path:pretrain_network_g: a FIFO was 'file does not exist'."""
    from ldt.sr.options import prepare_options
    from tests.sr_fixtures import tiny_options

    opt = tiny_options(tmp_path, "w", path={"pretrain_network_g": str(fifo)})
    with pytest.raises(OptionsError, match=f"path:pretrain_network_g: {re.escape(str(fifo))} is a FIFO \\(named "
                                           "pipe\\), not a regular file"):
        prepare_options(opt, is_train=True)


def test_an_option_file_not_found_lists_and_suggests_the_files_in_subfolders():
    """A bare name not found listed only options/train/*.yml: the 17 files in ablations/ and sources/, which -opt
    accepts as 'ablations/NAME', were not named nor suggested."""
    from ldt.sr.options import resolve_option_file

    assert resolve_option_file("ablations/train_MambaIR_LDT_ratio0.1_x4", "train").name == \
        "train_MambaIR_LDT_ratio0.1_x4.yml"
    with pytest.raises(OptionsError) as err:
        resolve_option_file("train_MambaIR_LDT_ratio0.1_x4", "train")
    message = str(err.value)
    assert "\n" not in message
    assert "(did you mean 'ablations/train_MambaIR_LDT_ratio0.1_x4.yml'?)" in message
    assert "'sources/train_MambaIR_LDT_x4_pan.yml'" in message and "'train_MambaIR_LDT_x4.yml'" in message
    with pytest.raises(OptionsError, match=r"\(did you mean 'sources/train_MambaIR_FT_x4_sony.yml'\?\)"):
        resolve_option_file("sources/train_MambaIR_FT_x4_sny.yml", "train")
