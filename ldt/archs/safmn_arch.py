"""SAFMN, the Spatially-Adaptive Feature Modulation Network for efficient super-resolution (Sun et al., ICCV 2023).

Module and attribute names follow the official sunny2109/SAFMN model, so its released weights
(``SAFMN_DF2K_x4.pth``, ...) load strictly with identical keys, shapes and order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldt.archs.arch_util import ArgumentError, Blocks, Ratio, Scale, Width, check_arguments, check_width
from ldt.compat import patch_basicsr

patch_basicsr()
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402  (needs the torchvision shim above)

# SAFM pools its coarsest chunk to 1/2**(N_LEVELS-1) of the input, which must stay at least one pixel.
N_LEVELS = 4
MIN_INPUT_SIZE = 2 ** (N_LEVELS - 1)


class LayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (eps 1e-6), computed as the official model does."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class SAFM(nn.Module):
    """Spatially-adaptive feature modulation: channel chunks see the image at 1, 1/2, 1/4, 1/8 scale (max-pooled,
    depth-wise conv, nearest upsample); the fused result gates the input."""

    def __init__(self, dim: int, n_levels: int = N_LEVELS) -> None:
        super().__init__()
        self.n_levels = n_levels
        chunk_dim = dim // n_levels
        self.mfr = nn.ModuleList(
            nn.Conv2d(chunk_dim, chunk_dim, 3, 1, 1, groups=chunk_dim) for _ in range(n_levels)
        )
        self.aggr = nn.Conv2d(dim, dim, 1, 1, 0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        levels = []
        for level, (conv, chunk) in enumerate(zip(self.mfr, x.chunk(self.n_levels, dim=1))):
            if level == 0:
                levels.append(conv(chunk))
            else:
                pooled = F.adaptive_max_pool2d(chunk, (h // 2**level, w // 2**level))
                levels.append(F.interpolate(conv(pooled), size=(h, w), mode="nearest"))
        return self.act(self.aggr(torch.cat(levels, dim=1))) * x


class CCM(nn.Module):
    """Convolutional channel mixer: 3x3 expand, GELU, 1x1 project (SAFMN's feed-forward)."""

    def __init__(self, dim: int, growth_rate: float = 2.0) -> None:
        super().__init__()
        hidden_dim = int(dim * growth_rate)
        self.ccm = nn.Sequential(
            nn.Conv2d(dim, hidden_dim, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(hidden_dim, dim, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class AttBlock(nn.Module):
    """Pre-norm residual pair: SAFM, then CCM."""

    def __init__(self, dim: int, ffn_scale: float = 2.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.safm = SAFM(dim)
        self.ccm = CCM(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.safm(self.norm1(x)) + x
        return self.ccm(self.norm2(x)) + x


@ARCH_REGISTRY.register()
@check_arguments
class SAFMN(nn.Module):
    """SAFMN for RGB images; official x4 model: ``dim=36, n_blocks=8, ffn_scale=2.0``, SAFMN-L: ``dim=128, n_blocks=16``.

    Works on any input of at least 8x8 pixels; output is ``input * upscaling_factor``.
    """

    # The reconstruction head: DeFT's unstable group and LP-FT's warm-up (``ldt:head_patterns`` overrides it).
    HEAD_PATTERNS = [r"^to_img\."]

    def __init__(self, dim: Width, n_blocks: Blocks = 8, ffn_scale: Ratio = 2.0, upscaling_factor: Scale = 4) -> None:
        super().__init__()
        if dim % N_LEVELS:
            raise ArgumentError("dim", f"must be divisible by {N_LEVELS} (SAFM splits channels into {N_LEVELS} levels), "
                                       f"got {dim}")
        check_width(dim, ffn_scale, "ffn_scale")
        self.to_feat = nn.Conv2d(3, dim, 3, 1, 1)
        self.feats = nn.Sequential(*[AttBlock(dim, ffn_scale) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(
            nn.Conv2d(dim, 3 * upscaling_factor**2, 3, 1, 1),
            nn.PixelShuffle(upscaling_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) -> (b, 3, h * upscaling_factor, w * upscaling_factor); h, w >= 8."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SAFMN expects a (batch, 3, height, width) tensor, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"SAFMN needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels (its coarsest level pools "
                f"to 1/{MIN_INPUT_SIZE} scale), got {x.shape[-2]}x{x.shape[-1]}; pad the input first"
            )
        x = self.to_feat(x)
        x = self.feats(x) + x
        return self.to_img(x)
