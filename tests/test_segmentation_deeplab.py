"""DeepLabV3+: shapes and output strides for both backbones, the atrous conversion of ResNet-18, head patterns, and
backbone weights from local files only (with errors that name the file and the keys)."""

from __future__ import annotations

import re

import pytest
import torch
from torchvision import models

from ldt.segmentation.deeplabv3plus import DeepLabV3Plus, head_parameter_names
from ldt.weights import WeightsError


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("backbone, stride", [("resnet18", 16), ("resnet18", 8), ("resnet50", 16)])
def test_forward_backward_shapes_and_output_stride(backbone, stride):
    torch.manual_seed(0)
    model = DeepLabV3Plus(backbone, num_classes=5, output_stride=stride, aspp_channels=32, decoder_channels=32)
    x = torch.randn(2, 3, 64, 48)
    low, high = model.backbone(x)
    assert low.shape[-2:] == (16, 12) and high.shape[-2:] == (64 // stride, 48 // stride)
    assert low.shape[1] == model.backbone.low_channels and high.shape[1] == model.backbone.high_channels
    logits = model(x)
    assert logits.shape == (2, 5, 64, 48)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_dilated_backbone_is_the_dense_version_of_the_stride_32_network(backbone):
    """At output stride 16 the layer4 features, sampled every second position, are those of the undilated
    torchvision network with the same weights: dilation only makes the stride-32 computation dense."""
    torch.manual_seed(0)
    model = DeepLabV3Plus(backbone, output_stride=16).eval()
    plain = getattr(models, backbone)(weights=None).eval()
    plain.load_state_dict(model.backbone.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        dense = model.backbone(x)[1]
        sparse = plain.layer4(plain.layer3(plain.layer2(plain.layer1(plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))))))
    assert dense.shape[-2:] == (4, 4) and sparse.shape[-2:] == (2, 2)
    assert torch.allclose(dense[..., ::2, ::2], sparse, rtol=1e-5, atol=1e-4)  # float sums differ across threads
    assert not torch.allclose(dense[..., 1::2, 1::2], sparse, atol=1e-3)  # the new positions are new values


def test_head_patterns_split_backbone_from_head():
    model = DeepLabV3Plus("resnet18", num_classes=3, aspp_channels=16, decoder_channels=16)
    head = set(head_parameter_names(model))
    names = [n for n, _ in model.named_parameters()]
    assert head == {n for n in names if n.split(".")[0] in ("aspp", "decoder", "classifier")}
    assert {n for n in names if n not in head} == {n for n in names if n.startswith("backbone.")}
    assert "classifier.weight" in head and "aspp.pooling.1.0.weight" in head and "decoder.reduce.0.weight" in head


def test_train_mode_batch_of_one_is_refused_clearly():
    model = DeepLabV3Plus("resnet18", num_classes=3, aspp_channels=16, decoder_channels=16)
    with pytest.raises(ValueError, match="batch of 2 or more"):
        model(torch.randn(1, 3, 32, 32))
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def imagenet_like_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return models.resnet18(weights=None).state_dict()


def test_local_torchvision_weights_load_into_the_backbone(tmp_path):
    state = imagenet_like_state()
    plain, wrapped = tmp_path / "resnet18.pth", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        torch.manual_seed(0)
        model = DeepLabV3Plus("resnet18", num_classes=4, aspp_channels=16, decoder_channels=16, backbone_weights=path)
        own = model.backbone.state_dict()
        assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    torch.manual_seed(0)
    fresh = DeepLabV3Plus("resnet18", num_classes=4, aspp_channels=16, decoder_channels=16)
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)  # the head stays as initialised
    assert not torch.equal(fresh.backbone.conv1.weight, model.backbone.conv1.weight)


def test_bad_weight_files_give_one_clear_error(tmp_path):
    """Read through the shared reader (ldt.weights): every broken file is one WeightsError naming it."""
    build = lambda path: DeepLabV3Plus("resnet18", aspp_channels=16, decoder_channels=16, backbone_weights=path)  # noqa: E731
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "none.pth")) + " does not exist"):
        build(tmp_path / "none.pth")
    good = tmp_path / "good.pth"
    torch.save(imagenet_like_state(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match=re.escape(str(truncated)) + " is truncated"):
        build(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match=re.escape(str(empty)) + " is empty"):
        build(empty)
    for text in ("hello", "not a checkpoint"):  # 'h' trips torch's unpickler with a bare KeyError
        notes = tmp_path / "notes.pth"
        notes.write_text(text)
        with pytest.raises(WeightsError, match=re.escape(str(notes)) + " is not a PyTorch checkpoint"):
            build(notes)
    listing = tmp_path / "listing.pth"
    torch.save({"weights": [1, 2]}, listing)
    with pytest.raises(WeightsError, match=re.escape(str(listing)) + " does not hold a state dict"):
        build(listing)
    foreign = tmp_path / "resnet50.pth"
    torch.save(models.resnet50(weights=None).state_dict(), foreign)
    with pytest.raises(WeightsError) as info:
        build(foreign)
    message = str(info.value)
    assert message.startswith(f"{foreign} does not fit ResNetBackbone")
    assert "unexpected 198 key(s) (layer1.0.conv3.weight" in message
    assert "layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in message
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in imagenet_like_state().items() if not k.startswith("layer4.")}, partial)
    with pytest.raises(WeightsError, match=r"missing 25 key\(s\) \(layer4\.0\.conv1\.weight"):
        build(partial)
