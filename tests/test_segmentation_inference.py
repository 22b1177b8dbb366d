"""Sliding-window inference: windows cover the image, one whole-image window is whole-image inference, and for
translation-equivariant nets overlapping windows reproduce whole-image logits wherever a pixel's context is the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldt.segmentation.deeplabv3plus import DeepLabV3Plus
from ldt.segmentation.inference import predict_sliding, predict_whole, window_positions


def test_window_positions_cover_and_end_flush():
    assert window_positions(10, 4, 3) == [0, 3, 6]
    assert window_positions(11, 4, 3) == [0, 3, 6, 7]
    assert window_positions(4, 4, 2) == [0] and window_positions(3, 8, 4) == [0]
    for length, window, stride in [(37, 8, 5), (64, 16, 16), (17, 16, 1)]:
        starts = window_positions(length, window, stride)
        covered = {p for s in starts for p in range(s, s + window)}
        assert covered == set(range(length)) and starts[-1] == length - window
    with pytest.raises(ValueError):
        window_positions(10, 4, 5)  # a stride past the window would leave gaps


def test_one_window_covering_the_image_is_whole_image_inference():
    torch.manual_seed(0)
    model = DeepLabV3Plus("resnet18", num_classes=4, aspp_channels=16, decoder_channels=16).eval()
    images = torch.randn(2, 3, 48, 64)
    whole = predict_whole(model, images)
    assert torch.allclose(predict_sliding(model, images, (48, 64), (24, 32)), whole, atol=1e-5)
    assert predict_sliding(model, images, (48, 64), (48, 64), output_size=(96, 128)).shape == (2, 4, 96, 128)


def pointwise_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()


@pytest.mark.parametrize("window, stride", [((8, 8), (8, 8)), ((8, 12), (5, 7)), ((16, 40), (3, 3)), ((40, 40), (10, 10))])
def test_pointwise_net_gives_whole_image_logits_for_any_windows(window, stride):
    """A 1x1-conv net sees no context: every window, padding included, must reproduce whole-image logits."""
    net, images = pointwise_net(), torch.randn(2, 3, 21, 30)
    whole = predict_whole(net, images)
    for per_batch in (1, 3):
        assert torch.allclose(predict_sliding(net, images, window, stride, windows_per_batch=per_batch), whole, atol=1e-6)


def test_conv_net_matches_whole_image_where_the_window_context_is_unchanged():
    """Two 3x3 convs see 2 px around each pixel. Where every window covering a pixel holds those 2 px (or ends at the
    image border, where whole-image inference pads alike), the average equals the whole-image logits; elsewhere it
    may not, and does somewhere."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    images, window, stride, reach = torch.randn(1, 3, 30, 41), (12, 16), (7, 9), 2
    whole, sliding = predict_whole(net, images), predict_sliding(net, images, window, stride)

    def clean(length: int, size: int, step: int) -> torch.Tensor:
        """Positions whose context is complete in every window covering them (along one axis)."""
        ok = torch.ones(length, dtype=torch.bool)
        for start in window_positions(length, size, step):
            for p in range(start, start + size):
                inside = (p - start >= reach or start == 0) and (start + size - 1 - p >= reach or start + size == length)
                ok[p] &= inside
        return ok

    mask = clean(30, window[0], stride[0])[:, None] & clean(41, window[1], stride[1])[None, :]
    assert 0.3 < mask.float().mean() < 1.0
    assert torch.allclose(sliding[..., mask], whole[..., mask], atol=1e-5)
    assert not torch.allclose(sliding[..., ~mask], whole[..., ~mask], atol=1e-3)
