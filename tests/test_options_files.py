"""Option files and the command line around the schema: ``--force_yml`` entries (reported as theirs, creating
documented sections only), keys written twice, the README's example errors, and ``python -m ldt.sr.options``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ldt.sr.options import OptionsError, embed_references, load_options, parse_value, read_option_file
from tests.sr_fixtures import tiny_cameras, tiny_options, write_options
from tests.test_options_schema import nothing_built, train_cli, with_change  # noqa: F401  (nothing_built: a fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_cameras(tmp_path_factory.mktemp("cams"))


def test_a_problem_an_override_causes_is_reported_as_the_entry(data_root, tmp_path, capsys, nothing_built):
    path = write_options(with_change(tiny_options(data_root, "o"), "ldt:exchange:interval", 0), tmp_path)
    code, lines = train_cli(path, capsys, "--force_yml", "train:total_iter=0", "train:scheduler={type: MultiStepLR}")
    assert code == 2
    assert sorted(lines) == sorted([
        f"error: {path}: ldt:exchange:interval: must be > 0, got 0",
        "error: --force_yml 'train:total_iter=0': train:total_iter: must be > 0, got 0",
        "error: --force_yml 'train:scheduler={type: MultiStepLR}': train:scheduler:milestones: missing (required)",
    ])


def test_an_override_value_that_is_not_yaml_is_one_line(data_root, tmp_path, capsys, nothing_built):
    code, lines = train_cli(write_options(tiny_options(data_root, "o"), tmp_path), capsys,
                            "--force_yml", "train:total_iter=[1")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: --force_yml 'train:total_iter=[1': the value '[1' is not valid YAML: "), lines


def test_an_override_from_an_unset_variable_is_one_line_not_training_from_scratch(data_root, tmp_path, capsys,
                                                                                  nothing_built):
    """``--force_yml path:pretrain_network_g=$WEIGHTS`` with WEIGHTS unset gives an empty string: it trained from the
    random initialisation, exit 0."""
    code, lines = train_cli(write_options(tiny_options(data_root, "o"), tmp_path), capsys,
                            "--force_yml", "path:pretrain_network_g=")
    assert code == 2
    assert lines == ["error: --force_yml 'path:pretrain_network_g=': path:pretrain_network_g: an empty path (an unset "
                     "variable?); give a folder or file"]


def test_overrides_create_documented_sections_the_file_omits_and_nothing_else(data_root, tmp_path):
    path = write_options(tiny_options(data_root, "o"), tmp_path)
    opt = load_options(path, is_train=True, overrides=[
        "train:pixel_opt:type=CharbonnierLoss", "train:scheduler:type=MultiStepLR", "train:scheduler:milestones=[3]",
        "ldt:warmup:lr=1e-3"])
    assert opt["train"]["pixel_opt"]["type"] == "CharbonnierLoss"
    assert opt["train"]["scheduler"]["milestones"] == [3] and opt["ldt"]["warmup"]["lr"] == 1e-3
    for entry, message in [
        ("train:pixel_optt:type=L1Loss", "'train:pixel_optt' is not an option section (did you mean 'pixel_opt'?)"),
        ("train:total_iter:x=1", "'train:total_iter' is 6 in the options, not an option section"),
    ]:
        with pytest.raises(OptionsError, match=re.escape(f"--force_yml '{entry}': {message}")):
            load_options(path, is_train=True, overrides=[entry])


@pytest.mark.parametrize("entry, option, kind", [
    ("val:metrics:psnr:type=calculate_psnr", "val:metrics", "mapping of mapping"),
    ("val:tile:x=3", "val:tile", "integer or null"),
    ("path:resume_state:x=a", "path:resume_state", "string or null"),
])
def test_an_override_inside_an_option_the_file_leaves_out_names_it_as_an_option(data_root, tmp_path, entry, option,
                                                                                 kind):
    """An entry that goes below an option that is no section (val:tile, or val:metrics, a mapping of named metrics
    with a default), which the file leaves out, said "'val:tile' is not an option section (did you mean 'tile'?)":
    a hint that names the very key typed. It says what the option is and how to set it."""
    path = write_options(tiny_options(data_root, "o"), tmp_path)
    with pytest.raises(OptionsError) as err:
        load_options(path, is_train=True, overrides=[entry])
    assert str(err.value) == (f"--force_yml '{entry}': '{option}' is an option ({kind}), not an option section: "
                              f"set it whole, as {option}=VALUE")


def test_an_option_two_entries_set_is_refused_naming_both(data_root, tmp_path):
    """BasicSR's --force_yml kept the last of two entries for one option silently (and so did this one), as PyYAML
    keeps the last of a key written twice; an entry replacing a mapping an earlier one wrote into counts too."""
    path = write_options(tiny_options(data_root, "o"), tmp_path)
    for overrides, option in [
        (["train:total_iter=3", "train: total_iter =5"], "train:total_iter"),
        (["train:scheduler:milestones=[3]", "train:scheduler={type: MultiStepLR}"], "train:scheduler:milestones"),
        (["train:scheduler={type: MultiStepLR}", "train:scheduler:type=CosineAnnealingRestartLR"],
         "train:scheduler:type"),
    ]:
        with pytest.raises(OptionsError) as err:
            load_options(path, is_train=True, overrides=overrides)
        assert str(err.value) == (f"--force_yml entries '{overrides[0]}' and '{overrides[1]}' both set {option}; "
                                  "keep one")
    opt = load_options(path, is_train=True, overrides=["train:scheduler={type: MultiStepLR}",
                                                       "train:scheduler:milestones=[3]"])
    assert opt["train"]["scheduler"]["type"] == "MultiStepLR" and opt["train"]["scheduler"]["milestones"] == [3]


@pytest.mark.parametrize("entry", ["datasets::::name=x", "train:total_iter:=8", ":train:total_iter=9", "a::=1"])
def test_an_override_path_with_an_empty_key_is_refused(data_root, tmp_path, entry):
    """An empty key was dropped: 'train::total_iter=7' set train:total_iter, hiding a typo."""
    path = write_options(tiny_options(data_root, "o"), tmp_path)
    with pytest.raises(OptionsError) as err:
        load_options(path, is_train=True, overrides=[entry])
    keys = entry.split("=")[0]
    assert str(err.value) == (f"--force_yml '{entry}': '{keys}' has an empty key (a doubled, leading or trailing "
                              "':'); write key:sub=value")


def test_force_yml_given_twice_keeps_both_lists():
    """argparse's nargs='+' kept only the last --force_yml's entries: the first list was dropped silently."""
    from ldt.sr.flags import build_parser

    args = build_parser("x", "train").parse_args(["--force_yml", "train:total_iter=3", "--force_yml", "ldt:method=ft"])
    assert args.force_yml == ["train:total_iter=3", "ldt:method=ft"]


def test_a_value_its_tag_cannot_build_or_nesting_too_deep_is_one_line(tmp_path):
    """``!!int abc`` raised PyYAML's bare ValueError, a few thousand nested ``[`` a RecursionError: tracebacks."""
    path = tmp_path / "tag.yml"
    for text, problem in (("train: {total_iter: !!int abc}\n", "invalid literal for int() with base 10: 'abc'"),
                          ("speed: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply")):
        path.write_text(text)
        with pytest.raises(OptionsError) as err:
            read_option_file(path)
        assert str(err.value).splitlines() == [f"{path} is not valid YAML: {problem}"]
    with pytest.raises(OptionsError, match=re.escape("--force_yml: the value '!!float x' is not valid YAML: could not "
                                                     "convert string to float: 'x'")):
        parse_value("!!float x")


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "twice.yml"
    path.write_text("name: x\nname: y\ntrain:\n  total_iter: 3\n  optim_g: {lr: 1, lr: 2}\ntrain:\n  total_iter: 4\n")
    with pytest.raises(OptionsError) as err:
        read_option_file(path)
    assert str(err.value).splitlines() == [
        f"{path}: name: written twice (lines 1 and 2); keep one",
        f"{path}: train: written twice (lines 3 and 6); keep one",
        f"{path}: train:optim_g:lr: written twice (line 5, columns 13 and 20); keep one",
    ]
    path.write_text("name: x\n")
    with pytest.raises(OptionsError, match="--force_yml 'train={a: 1, a: 2}': the value writes 'a' twice"):
        load_options(path, is_train=True, overrides=["train={a: 1, a: 2}"])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_an_option_file_saved_as_unicode_with_a_bom_reads_as_its_utf8_copy(encoding, tmp_path):
    """Windows Notepad's 'Unicode' (UTF-16 with a byte-order mark) was refused as 'not a text (YAML) file'; it reads
    now, and a later problem's line numbers are those of the text."""
    text = "name: x\ntrain:\n  total_iter: 3\n"
    plain, unicode = tmp_path / "plain.yml", tmp_path / "unicode.yml"
    plain.write_text(text, encoding="utf-8")
    bom = "" if encoding.endswith("-sig") or encoding in ("utf-16", "utf-32") else "\ufeff"
    unicode.write_bytes((bom + text).encode(encoding))
    assert read_option_file(unicode) == read_option_file(plain)
    unicode.write_bytes((bom + text + "name: y\n").encode(encoding))
    with pytest.raises(OptionsError) as err:
        read_option_file(unicode)
    assert str(err.value).splitlines() == [f"{unicode}: name: written twice (lines 1 and 4); keep one"]


def test_a_yaml_merge_key_with_keys_of_its_own_is_no_key_written_twice(tmp_path):
    """``<<: *anchor`` then keys of the mapping's own (YAML's override of merged keys) writes each key once; a key
    written twice beside a merge is still one."""
    path = tmp_path / "merge.yml"
    text = "val_1: &v {name: a, split: test}\nval_2:\n  <<: *v\n  name: b\n"
    path.write_text(text)
    assert read_option_file(path) == {"val_1": {"name": "a", "split": "test"}, "val_2": {"name": "b", "split": "test"}}
    path.write_text(text + "  name: c\n")
    with pytest.raises(OptionsError) as err:
        read_option_file(path)
    assert str(err.value).splitlines() == [f"{path}: val_2:name: written twice (lines 4 and 5); keep one"]


@pytest.mark.parametrize("check_sizes", [True, False])
def test_a_training_crop_larger_than_an_lr_image_names_gt_size(check_sizes, data_root, tmp_path, capsys):
    """A DRealSR training image smaller than the LR patch was named alone ('…/x.png: LR size [8, 8] is smaller than
    the LR patch 12'), not the option that asks for that crop (a BasicSR PairedImageDataset's line named both)."""
    from PIL import Image

    scale = 4
    sizes = {path: Image.open(path).size[::-1] for path in (data_root / "x4" / "Train_x4" / "train_LR").glob("P*.png")}
    smallest = min(sizes, key=lambda path: min(sizes[path]))
    gt_size = (min(sizes[smallest]) + 1) * scale
    opt = with_change(tiny_options(data_root, "crop", scale=scale), "datasets:train:gt_size", gt_size)
    code, lines = train_cli(write_options(with_change(opt, "datasets:train:check_sizes", check_sizes), tmp_path),
                            capsys, "--root", str(tmp_path))
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, lines
    said = (f"LR size {tuple(sizes[smallest])} is smaller than the LR patch {gt_size // scale} "
            f"(gt_size {gt_size} / scale {scale})")
    assert said in errors[0] and f"{data_root}" in errors[0]
    assert errors[0].startswith("error: datasets:train:gt_size: ") == check_sizes  # read at start, or in a batch


def test_a_problem_with_an_option_a_base_file_writes_names_that_file(data_root, tmp_path):
    """A variant (``base: base.yml``) switching the network named itself for every argument its base wrote
    (``child.yml: network_g:dim: unknown option``), a key the file the user opens does not hold."""
    opt = tiny_options(data_root, "base")
    base = write_options(opt, tmp_path)
    child = tmp_path / "child.yml"
    child.write_text("base: base.yml\nname: child\nnetwork_g: {type: HAT}\ntrain: {total_iter: 0}\n")
    with pytest.raises(OptionsError) as err:
        load_options(child, is_train=True)
    lines = str(err.value).splitlines()
    written = [line for key in opt["network_g"] if key != "type"
               for line in lines if f": network_g:{key}: unknown option" in line]
    assert len(written) == len(opt["network_g"]) - 1 and all(line.startswith(f"{base} (the base of {child}): ") for line in written), lines
    assert f"{child}: train:total_iter: must be > 0, got 0" in lines


def test_an_unknown_architecture_is_our_line_only(data_root, tmp_path, capsys, nothing_built):
    """BasicSR's registry prints 'Name ... is not found' on stdout for an unknown name: it is never asked."""
    path = write_options(with_change(tiny_options(data_root, "o"), "network_g:type", "SAFMNN"), tmp_path)
    from ldt.sr.train import main as train_main

    assert train_main(["-opt", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"error: {path}: network_g:type: unknown architecture 'SAFMNN' (did you mean 'SAFMN'?)"]


def test_test_py_without_weights_names_the_file(data_root, tmp_path, capsys, nothing_built):
    from ldt.sr.evaluate import main as test_main

    opt = {key: value for key, value in tiny_options(data_root, "t").items() if key not in ("train", "ldt")}
    opt["path"] = {"pretrain_network_g": None}
    path = write_options(opt, tmp_path)
    assert test_main(["-opt", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {path}: path:pretrain_network_g: missing: the weights to evaluate, e.g. "
        "experiments/<name>/models/net_g_best.pth"]


# How each example line of the README's options section is produced (every line must have one).
README_EXAMPLES = {
    "datasets:train:camears": (("datasets:train:camears", ["pan"]), []),
    "ldt:unstable_ratio": (("ldt:unstable_ratio", 0.99), []),
    "train:optim_g:type": (("train:optim_g:type", "SGD"), []),
    "train:total_iter": (None, ["train:total_iter=0"]),
}


def test_the_readme_example_errors_are_what_the_check_prints(data_root, tmp_path, capsys, nothing_built):
    section = README.read_text().split("### Options: one schema, every problem at once", 1)[1]
    examples = [line for line in section.split("```", 2)[1].splitlines() if line.startswith("error: ")]
    assert len(examples) == len(README_EXAMPLES)
    for example in examples:
        option = example.split(": ")[2]
        change, overrides = README_EXAMPLES[option]
        opt = tiny_options(data_root, "mine")
        path = write_options(with_change(opt, *change) if change else opt, tmp_path)
        _, lines = train_cli(path, capsys, *(["--force_yml", *overrides] if overrides else []))
        assert [line.replace(str(path), "options/train/mine.yml") for line in lines] == [example]


def test_the_reference_cli_regenerates_a_readme_and_refuses_in_one_line(tmp_path, capsys):
    from ldt.sr.options import main

    readme = tmp_path / "README.md"
    current = README.read_text()
    stale = re.sub(r"(<!-- options:begin -->\n).*?(<!-- options:end -->)", r"\1stale\n\2", current, flags=re.S)
    readme.write_text(stale)
    assert main(["--readme", str(readme)]) == 0 and readme.read_text() == embed_references(current)
    (tmp_path / "plain.md").write_text("no markers\n")
    for argument, message in [(tmp_path / "absent.md", "No such file or directory"), (tmp_path, "Is a directory"),
                              (tmp_path / "plain.md", "no <!-- methods:begin --> marker")]:
        assert main(["--readme", str(argument)]) == 2
        assert capsys.readouterr().err.splitlines() == [f"error: {argument}: {message}"]
    for arguments, status in [(["--readme"], 2), (["--bogus"], 2), (["--help"], 0)]:
        with pytest.raises(SystemExit) as stop:
            main(arguments)
        assert stop.value.code == status


def test_the_method_seed_is_one_numpy_and_torch_take(data_root, tmp_path, capsys, nothing_built):
    path = write_options(with_change(tiny_options(data_root, "o"), "ldt:seed", 99999999999999999999), tmp_path)
    code, lines = train_cli(path, capsys)
    assert code == 2 and len(lines) == 1 and "ldt:seed: must be <=" in lines[0], lines


def test_a_resume_with_another_method_names_the_method_only(data_root):
    from ldt.sr.checkpoints import option_changes
    from ldt.sr.options import prepare_options

    saved, current = (prepare_options(tiny_options(data_root, "o", method), is_train=True) for method in ("ldt", "ft"))
    assert option_changes(saved, current) == (["ldt:method: 'ldt' -> 'ft'"], [])
    with_ema = prepare_options(tiny_options(data_root, "o", train={"total_iter": 6, "ema_decay": 0.9}), is_train=True)
    assert "ldt:ema_decay: None -> 0.9" in option_changes(prepare_options(tiny_options(data_root, "o"), is_train=True),
                                                          with_ema)[0]
