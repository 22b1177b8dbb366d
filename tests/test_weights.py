"""ldt.weights.read_checkpoint: every kind of file that is not a usable checkpoint gives one message naming it."""

from __future__ import annotations

import pickle
import re
import warnings

import pytest
import torch

from ldt.weights import NOT_A_CHECKPOINT, WeightsError, read_checkpoint


def write(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name,content", [
    ("text", b"hello world\n"),  # the weights-only unpickler fails on it with a KeyError
    ("png", b"\x89PNG\r\n\x1a\n" + bytes(200)),
    ("json", b'{"params": {}}\n'),
    ("plain pickle", pickle.dumps({"params": {}}, protocol=2)),  # a pickle torch.save did not write
])
def test_foreign_files_are_not_a_checkpoint_whatever_the_unpickler_raises(tmp_path, name, content):
    path = write(tmp_path / f"{name}.pth", content)
    with pytest.raises(WeightsError) as err:
        read_checkpoint(path)
    assert str(err.value) == f"weights file {path} {NOT_A_CHECKPOINT}"


@pytest.mark.parametrize("protocol", [4, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_of_a_later_protocol_is_one_message_without_torch_s_warning(tmp_path, protocol):
    """Python's default pickle protocol (4 or 5) made torch print a UserWarning about the protocol, with its source
    line, above the one-line error."""
    path = write(tmp_path / "plain.pth", pickle.dumps({"params": {}}, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(WeightsError) as err:
        warnings.simplefilter("always")
        read_checkpoint(path)
    assert str(err.value) == f"weights file {path} {NOT_A_CHECKPOINT}"
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("protocol", [4, pickle.HIGHEST_PROTOCOL])
def test_a_checkpoint_saved_with_a_later_pickle_protocol_is_named_as_such(tmp_path, protocol):
    """torch.save(..., pickle_protocol=4) writes a real checkpoint that a weights-only load cannot read: it was
    called 'not a PyTorch checkpoint (not a zip archive or a tensor pickle)', after torch's protocol warning."""
    torch.save({"params": {"w": torch.ones(2)}}, tmp_path / "net.pth", pickle_protocol=protocol)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(WeightsError) as err:
        warnings.simplefilter("always")
        read_checkpoint(tmp_path / "net.pth")
    assert str(err.value) == (f"weights file {tmp_path / 'net.pth'} was saved by torch.save with pickle protocol "
                              f"{protocol}, which a weights-only load (torch.load(weights_only=True)) cannot read: "
                              "save it again with torch.save's default protocol")
    assert [str(w.message) for w in caught] == []


def test_a_checkpoint_of_pickle_protocol_3_loads_without_torch_s_warning(tmp_path):
    torch.save({"params": {"w": torch.ones(2)}}, tmp_path / "net.pth", pickle_protocol=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(read_checkpoint(tmp_path / "net.pth")["params"]["w"], torch.ones(2))
    assert [str(w.message) for w in caught] == []


def test_paths_that_are_not_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match=f"^training state {tmp_path} is a folder, not a file$"):
        read_checkpoint(tmp_path, what="training state")
    with pytest.raises(WeightsError, match="does not exist$"):
        read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"is empty \(0 bytes\)"):
        read_checkpoint(write(tmp_path / "empty.pth", b""))


def test_a_real_checkpoint_loads(tmp_path):
    torch.save({"params": {"w": torch.ones(2)}}, tmp_path / "net.pth")
    assert torch.equal(read_checkpoint(tmp_path / "net.pth")["params"]["w"], torch.ones(2))


def test_integer_or_quantized_values_for_float_parameters_do_not_fit(tmp_path):
    """load_state_dict would cast them silently: an int8-quantized export loaded as weights trains from garbage."""
    from torch import nn

    from ldt.weights import read_weights

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = net.state_dict()
    torch.save(state, tmp_path / "fine.pth")  # num_batches_tracked is int64 in the network too
    read_weights(tmp_path / "fine.pth", model=net)
    torch.save({**state, "0.weight": (state["0.weight"] * 100).to(torch.int8)}, tmp_path / "int8.pth")
    with pytest.raises(WeightsError, match=r"int8\.pth does not fit Sequential: not floating point \(file vs net\) 1 "
                                           r"key\(s\) \(0\.weight torch\.int8 vs torch\.float32\)$"):
        read_weights(tmp_path / "int8.pth", model=net)
    quantized = torch.quantize_per_tensor(state["0.bias"], 0.1, 0, torch.qint8)
    torch.save({**state, "0.bias": quantized}, tmp_path / "q.pth")
    with pytest.raises(WeightsError, match=r"0\.bias torch\.qint8 vs torch\.float32"):
        read_weights(tmp_path / "q.pth", model=net)


@pytest.mark.parametrize("content,key,message", [
    (lambda net: {"params": net, "params_ema": {}}, "params_ema",
     "its 'params_ema' entry (the param_key asked for) is empty, not a state dict of tensors; the file has 'params' "
     "(3 tensors), 'params_ema' (empty)"),
    (lambda net: {"params": net, "params_ema": None}, "params_ema",
     "its 'params_ema' entry (the param_key asked for) is None"),
    (lambda net: {"params_ema": {}}, None,
     "net.pth does not hold a state dict of tensors; the file has 'params_ema' (empty)"),
    (lambda net: {"params_ema": {"scale": 1}}, None,
     "its 'params_ema' entry (the first non-empty of params_ema, params, state_dict, model) is a mapping of 1 entry"),
    (lambda net: {"params": net}, "params_ema", "has no 'params_ema' entry; the file has 'params' (3 tensors)"),
    (lambda net: {"params_ema": {"params": net}}, "params_ema",
     "is a mapping of 1 entry, none of them tensors, not a state dict of tensors"),
    (lambda net: {}, None, "does not hold a state dict of tensors; the file has no entries"),
])
def test_a_param_key_that_gives_no_weights_says_what_each_entry_of_the_file_holds(tmp_path, content, key, message):
    """An empty or None params_ema said only 'does not hold a state dict of tensors (top-level keys: [...])'."""
    from ldt.weights import read_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1, bias=False))
    torch.save(content(net.state_dict()), tmp_path / "net.pth")
    with pytest.raises(WeightsError, match=re.escape(message)):
        read_weights(tmp_path / "net.pth", key, net)


def test_an_empty_params_ema_is_passed_over_by_the_default_choice_and_the_entry_used_is_said(tmp_path):
    """{'params': weights, 'params_ema': {}} with no param_key was refused ('its params_ema entry ... is empty'),
    though its params are the weights (a None params_ema was passed over already); the default passes an empty
    entry over and says which it used; an empty entry asked for stays an error naming the file and the key."""
    from ldt.weights import read_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1, bias=False))
    file = tmp_path / "net.pth"
    torch.save({"params": net.state_dict(), "params_ema": {}}, file)
    said: list[str] = []
    state = read_weights(file, None, net, log=said.append)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items()) and state.keys() == net.state_dict().keys()
    assert said == [f"{file}: its 'params_ema' entry is empty: the weights are its 'params' entry (3 tensors)"]
    with pytest.raises(WeightsError, match=re.escape(f"{file}: its 'params_ema' entry (the param_key asked for) is "
                                                     "empty")):
        read_weights(file, "params_ema", net)
    said.clear()
    torch.save({"params": net.state_dict(), "params_ema": net.state_dict()}, file)
    read_weights(file, None, net, log=said.append)
    assert said == []  # nothing passed over: nothing said


def test_a_non_strict_load_of_a_file_that_shares_no_key_with_the_network_is_refused(tmp_path):
    """``path:strict_load_g: false`` with another network's file loaded nothing: test.py scored the random
    initialisation (other numbers at every run), exit 0. A file sharing some keys still loads them."""
    from ldt.weights import partial_load, read_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 3, 3))
    torch.save({"params": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, tmp_path / "foreign.pth")
    with pytest.raises(WeightsError, match=re.escape(
            f"{tmp_path / 'foreign.pth'} does not fit Sequential: none of its 1 key(s) (conv.weight) is the "
            "network's, so a non-strict load would load nothing (the network stays randomly initialised)")):
        read_weights(tmp_path / "foreign.pth", model=net, strict=False)
    torch.save({"params": {"0.weight": torch.zeros(4, 3, 3, 3)}}, tmp_path / "part.pth")
    assert list(read_weights(tmp_path / "part.pth", model=net, strict=False)) == ["0.weight"]
    assert partial_load(net.state_dict(), net, "whole.pth") is None  # a complete file loads without a warning
    assert partial_load({"0.weight": torch.zeros(4, 3, 3, 3)}, net, "part.pth") == (
        "path:strict_load_g: false: part.pth set 1 of the network's 4 tensors; 3 keep their initialisation "
        "(0.bias, 1.weight, 1.bias), 0 of the file's were not used")


@pytest.mark.parametrize("entries", [["a.npy"], ["weights/readme.txt", "weights/net.onnx"]])
def test_a_zip_archive_that_torch_did_not_write_is_named_as_such(tmp_path, entries):
    """A NumPy ``.npz`` or a zip of other files saved as ``.pth`` was 'cannot be loaded: [enforce fail at
    inline_container.cc:180]' (torch's message cut at its first '. ') or 'Expected hasRecord("version") …'."""
    import zipfile

    path = tmp_path / "net.pth"
    with zipfile.ZipFile(path, "w") as archive:
        for entry in entries:
            archive.writestr(entry, b"x")
    with pytest.raises(WeightsError) as err:
        read_checkpoint(path)
    assert str(err.value) == (f"weights file {path} is a zip archive but not a PyTorch checkpoint (no data.pkl "
                              f"record; it holds {', '.join(entries)})")
