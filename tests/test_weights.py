"""ldt.weights.read_checkpoint: every kind of file that is not a usable checkpoint gives one message naming it."""

from __future__ import annotations

import pickle

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
