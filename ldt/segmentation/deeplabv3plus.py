"""DeepLabV3+ (Chen et al., 2018) on torchvision's ResNet-18 / ResNet-50, written here.

Structure: ResNet backbone (stride-4 ``layer1`` features for the decoder, ``layer4`` features at output stride 16
or 8) -> ASPP (1x1 conv, three 3x3 atrous convs, image pooling; concatenated and projected) -> decoder (ASPP output
upsampled to stride 4, concatenated with the reduced ``layer1`` features, two 3x3 convs) -> 1x1 classifier ->
bilinear upsampling to the input size. Parameter names: ``backbone.*`` (torchvision's own ResNet names, so an
ImageNet state dict loads as it is), ``aspp.*``, ``decoder.*``, ``classifier.*``; :data:`HEAD_PATTERNS` match the
last three, the randomly initialised "head" that LP-FT warms up and DeFT makes unstable.

Output stride: ResNet-50 uses torchvision's ``replace_stride_with_dilation`` (layer4 dilated for 16, layer3 and
layer4 for 8). torchvision refuses dilation in ResNet-18's BasicBlock, so for ResNet-18 the same atrous conversion is
applied to the built network: in each converted stage the strided 3x3 conv and the 1x1 shortcut get stride 1 (the
strided conv keeps the previous dilation, as torchvision does for Bottleneck), and every later 3x3 conv of the stage
gets the new dilation with matching padding. No weight changes shape, so ImageNet weights load unchanged and each
conv sees the same receptive field it had at stride 32, now sampled densely.

Weights: only from a local file (:func:`load_backbone_weights`, read by :mod:`ldt.weights`); nothing is ever
downloaded.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from ldt.weights import check_finite, check_fit, read_checkpoint, state_dict_in

BACKBONES = ("resnet18", "resnet50")
HEAD_PATTERNS: list[str] = [r"^aspp\.", r"^decoder\.", r"^classifier\."]
DEFAULT_ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
_DILATED_STAGES = {16: [False, False, True], 8: [False, True, True]}  # layer2, layer3, layer4


def _dilate_basic_stages(resnet: models.ResNet, dilated: Sequence[bool]) -> None:
    """Atrous conversion of ResNet-18's stages layer2..layer4 where ``dilated`` says so (see the module docstring)."""
    dilation = 1
    for stage, convert in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilated):
        if not convert:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(stage):
            convs = [(block.conv1, previous if index == 0 else dilation), (block.conv2, dilation)]
            for conv, rate in convs:
                conv.stride, conv.dilation, conv.padding = (1, 1), (rate, rate), (rate, rate)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and ``fc``: returns (layer1 features, layer4 features)."""

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__()
        dilated = _DILATED_STAGES[output_stride]
        if name == "resnet50":
            resnet = models.resnet50(weights=None, replace_stride_with_dilation=dilated)
        else:
            resnet = models.resnet18(weights=None)
            _dilate_basic_stages(resnet, dilated)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.low_channels = 64 * resnet.layer1[0].expansion  # 64 (BasicBlock) or 256 (Bottleneck)
        self.high_channels = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, one 3x3 conv per rate, and global image pooling, projected."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(cin, cout, 1))
        self.project = nn.Sequential(_conv_bn_relu(cout * (len(rates) + 2), cout, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            raise ValueError("DeepLabV3+ needs a batch of 2 or more in train mode (the image-pooling BatchNorm sees one "
                             "value per image); use model.eval() for single images")
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder: reduce the stride-4 features, concatenate the upsampled ASPP output, refine."""

    def __init__(self, low_channels: int, aspp_channels: int, reduced: int, channels: int) -> None:
        super().__init__()
        self.reduce = _conv_bn_relu(low_channels, reduced, 1)
        self.refine = nn.Sequential(_conv_bn_relu(aspp_channels + reduced, channels, 3), _conv_bn_relu(channels, channels, 3))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(torch.cat([high, self.reduce(low)], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ returning (N, num_classes, H, W) logits at the input size.

    ``aspp_rates`` default to (6, 12, 18) at output stride 16 and (12, 24, 36) at 8. Seed the global torch RNG
    first for reproducible initialisation; ``backbone_weights`` loads a local torchvision ImageNet state dict into
    the backbone (the head stays random).
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 19, *, output_stride: int = 16,
                 aspp_rates: Sequence[int] | None = None, aspp_channels: int = 256, low_level_channels: int = 48,
                 decoder_channels: int = 256, dropout: float = 0.1, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        if output_stride not in _DILATED_STAGES:
            raise ValueError(f"output_stride must be one of {sorted(_DILATED_STAGES)}, got {output_stride}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        rates = tuple(DEFAULT_ASPP_RATES[output_stride] if aspp_rates is None else aspp_rates)
        self.backbone = ResNetBackbone(backbone, output_stride)
        self.aspp = ASPP(self.backbone.high_channels, aspp_channels, rates, dropout)
        self.decoder = Decoder(self.backbone.low_channels, aspp_channels, low_level_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.backbone_name, self.output_stride = backbone, output_stride
        if backbone_weights is not None:
            load_backbone_weights(self, backbone_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        logits = self.classifier(self.decoder(low, self.aspp(high)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters :data:`HEAD_PATTERNS` match (ASPP, decoder, classifier)."""
    patterns = [re.compile(p) for p in HEAD_PATTERNS]
    return [name for name, _ in model.named_parameters() if any(p.search(name) for p in patterns)]


def load_backbone_weights(model: DeepLabV3Plus, path: str | Path) -> None:
    """Load a local torchvision ResNet state dict (its ``fc`` dropped; also under 'state_dict' / 'model', DDP's
    'module.' prefixes removed) into ``model.backbone``, through the project's one reader (:mod:`ldt.weights`,
    ``weights_only=True``: a checkpoint never runs code). The file must cover the whole backbone and hold nothing
    else; otherwise one :class:`ldt.weights.WeightsError` names the file and the first mismatching keys."""
    state = state_dict_in(read_checkpoint(path), path)
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("fc."))
    check_fit(state, model.backbone, path)
    check_finite(state, path)
    model.backbone.load_state_dict(state, strict=False)  # strict but for BatchNorm's num_batches_tracked
