"""Whole-image and sliding-window inference, returning logits (call ``model.eval()`` first).

Why sliding windows: networks trained on 512x512 crops are usually evaluated on 1024x2048 Cityscapes frames and
larger Mapillary images window by window, which bounds memory and keeps the scale of objects the one seen in
training. Windows of ``window`` (height, width) start every ``stride`` pixels, and a last window is placed flush
with the bottom / right edge, so every pixel is covered; overlapping logits are averaged. An image smaller than
the window is zero-padded at the bottom / right (zero = the ImageNet mean colour after normalisation) and the
padding is cropped off the result. For a convolutional network the padding and window edges change the context
a pixel sees, so sliding results equal whole-image results exactly only where that context is unchanged (for
example when one window is the whole image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_positions(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``: every ``stride``, the last flush with the end."""
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window {window}, stride {stride}")
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def _resize(logits: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_whole(model: nn.Module, images: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, C, H, W) logits of the whole images, resized bilinearly to ``output_size`` (e.g. the label's) if given."""
    logits = _resize(model(images), tuple(images.shape[-2:]))
    return _resize(logits, output_size).float()


@torch.no_grad()
def predict_sliding(model: nn.Module, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int], *,
                    output_size: tuple[int, int] | None = None, windows_per_batch: int = 4) -> torch.Tensor:
    """(N, C, H, W) logits averaged over overlapping windows, resized to ``output_size`` if given.

    ``windows_per_batch`` windows (of all N images) go through the network at once.
    """
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be positive, got {windows_per_batch}")
    (height, width), (win_h, win_w) = images.shape[-2:], window
    tops, lefts = window_positions(height, win_h, stride[0]), window_positions(width, win_w, stride[1])
    padded = F.pad(images, (0, max(win_w - width, 0), 0, max(win_h - height, 0)), value=0.0)
    boxes = [(top, left) for top in tops for left in lefts]
    total, count = None, torch.zeros(padded.shape[-2:], device=images.device)
    for first in range(0, len(boxes), windows_per_batch):
        chunk = boxes[first:first + windows_per_batch]
        crops = torch.cat([padded[..., t:t + win_h, l:l + win_w] for t, l in chunk])
        logits = _resize(model(crops), (win_h, win_w)).float().split(images.shape[0])
        if total is None:
            total = torch.zeros(images.shape[0], logits[0].shape[1], *padded.shape[-2:], device=images.device)
        for (t, l), part in zip(chunk, logits):
            total[..., t:t + win_h, l:l + win_w] += part
            count[t:t + win_h, l:l + win_w] += 1
    return _resize((total / count)[..., :height, :width], output_size)
