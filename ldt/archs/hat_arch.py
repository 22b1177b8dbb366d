"""HAT, the Hybrid Attention Transformer for super-resolution (Chen et al., CVPR 2023), written for LDT.

Module and attribute names follow the official XPixelGroup model, so its released weights (``HAT_SRx4.pth``,
``HAT-S_SRx4.pth``, ...) load strictly: same keys, shapes, dtypes and order. Where this code differs, results do not:

* Any input size works: the input is reflect-padded on the bottom/right to a multiple of ``window_size`` (what the
  official test pipeline does before calling the network) and the output is cropped back to ``input * upscale``.
* The shifted-window attention mask is built on the input's device and cached per (size, device); the official model
  rebuilt it on the CPU at every forward, which also broke ``torch.compile``.
* ``use_checkpoint`` really checkpoints each attention block (the official flag is accepted but unused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
from annotated_types import Ge, Le
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldt.archs.arch_util import (MAX_SCALE, ArgumentError, Count, Depths, DropPath, Rate, Ratio, Scale, Width,
                                 check_arguments, check_depths, check_width, init_transformer_weights, pad_to_multiple)
from ldt.compat import patch_basicsr

patch_basicsr()
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402  (needs the torchvision shim above)

# Shifted-window masks are (num_windows, ws^2, ws^2) floats: ~180 MB for a 512x352 input at window 16, so keep a few.
MASK_CACHE_SIZE = 4
# Largest window_size (official: 16): each window's attention holds (ws^2)^2 scores per head, 16.7 M at 64.
MAX_WINDOW = 64


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(b, h, w, c) -> (b * windows, window_size**2, c); windows of one image in row-major order, images in turn."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (b * windows, window_size**2, c) -> (b, h, w, c)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def tokens_to_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(b, h*w, c) tokens -> (b, c, h, w) feature map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) feature map -> (b, h*w, c) tokens."""
    return x.flatten(2).transpose(1, 2)


def _grid(side: int) -> torch.Tensor:
    """(side*side, 2) integer (row, col) coordinates of a square, row-major."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack((rows.flatten(), cols.flatten()), dim=-1)


def relative_position_index_sa(window_size: int) -> torch.Tensor:
    """Bias-table index of every (query, key) pair inside one window: (ws^2, ws^2) int64 in [0, (2ws-1)^2)."""
    rel = _grid(window_size)[:, None, :] - _grid(window_size)[None, :, :] + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def relative_position_index_oca(window_size: int, overlap_ratio: float) -> torch.Tensor:
    """Bias-table index of every (query, key) pair of overlapping cross-attention: (ws^2, ows^2) int64.

    The official offset ``ws - ows + 1`` does not centre the key window on the query window, so many entries are
    negative and PyTorch indexing wraps them to the end of the bias table. The released weights were trained with
    exactly this (and checkpoints store the index), so it is reproduced, negatives included.
    """
    overlap_size = window_size + int(overlap_ratio * window_size)
    rel = _grid(overlap_size)[None, :, :] - _grid(window_size)[:, None, :] + (window_size - overlap_size + 1)
    return rel[..., 0] * (window_size + overlap_size - 1) + rel[..., 1]


def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Additive mask (windows, ws^2, ws^2) of 0 / -100 for shifted-window attention on an (h, w) map.

    After the cyclic shift, windows on the bottom/right edges hold pixels from opposite sides of the image; tokens
    attend only to tokens of their own region. Built directly on ``device`` (``h``, ``w`` multiples of the window).
    """

    def region(length: int) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - window_size).long() + (pos >= length - shift_size).long()

    labels = (region(height)[:, None] * 3 + region(width)[None, :])[None, :, :, None]
    labels = window_partition(labels, window_size).squeeze(-1)  # (windows, ws^2)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape, device=device).masked_fill_(differs, -100.0)


def _relative_bias(table: nn.Parameter, index: torch.Tensor) -> torch.Tensor:
    """Gather the (1, heads, queries, keys) position bias; negative indices wrap around the table on purpose."""
    return table[index.reshape(-1)].reshape(*index.shape, -1).permute(2, 0, 1).unsqueeze(0)


class ChannelAttention(nn.Module):
    """RCAN-style squeeze-and-excitation gate."""

    def __init__(self, num_feat: int, squeeze_factor: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention convolution branch that runs beside window attention in every HAB."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class Mlp(nn.Module):
    """Token-wise feed-forward network."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally shifted) windows, with a relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (b * windows, ws^2, c); ``mask``: (windows, ws^2, ws^2) or None for unshifted windows."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + _relative_bias(self.relative_position_bias_table, rpi)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b_ // windows, windows, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(b_, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(x))


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention plus a scaled channel-attention conv branch, then an MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        compress_ratio: int,
        squeeze_factor: int,
        conv_scale: float,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], rpi_sa: torch.Tensor, attn_mask: torch.Tensor
    ) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        conv_x = image_to_tokens(self.conv_block(x.permute(0, 3, 1, 2)))

        shift = self.shift_size
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), rpi_sa, attn_mask if shift else None)
        attn_x = window_merge(windows, self.window_size, h, w)
        if shift:
            attn_x = torch.roll(attn_x, shifts=(shift, shift), dims=(1, 2))

        x = shortcut + self.drop_path(attn_x.reshape(b, h * w, c)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention block: queries from each window attend to keys/values of an enlarged window."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        overlap_ratio: float,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: float | None,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi: torch.Tensor) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        shortcut = x
        qkv = self.qkv(self.norm1(x)).reshape(b, h, w, 3, c)

        q = window_partition(qkv[..., 0, :], ws)  # (b * windows, ws^2, c)
        kv = qkv[..., 1:, :].permute(0, 3, 4, 1, 2).reshape(b, 2 * c, h, w)  # channels: all of k, then all of v
        # Unfold yields one zero-padded ows x ows patch per window (channel-major), windows in row-major order.
        kv = F.unfold(kv, kernel_size=ows, stride=ws, padding=(ows - ws) // 2)
        k, v = kv.reshape(b, 2, c, ows * ows, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, ows * ows, c).unbind(0)

        b_ = q.shape[0]
        q = q.reshape(b_, ws * ws, heads, c // heads).transpose(1, 2)
        k = k.reshape(b_, ows * ows, heads, c // heads).transpose(1, 2)
        v = v.reshape(b_, ows * ows, heads, c // heads).transpose(1, 2)
        attn = (q * self.scale) @ k.transpose(-2, -1) + _relative_bias(self.relative_position_bias_table, rpi)
        windows = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b_, ws * ws, c)

        x = self.proj(window_merge(windows, ws, h, w).reshape(b, h * w, c)) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """The HABs of one group (alternating plain / shifted windows) followed by one OCAB."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        compress_ratio: int,
        squeeze_factor: int,
        conv_scale: float,
        overlap_ratio: float,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            HAB(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor,
                conv_scale=conv_scale,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, num_heads, qkv_bias, qk_scale, mlp_ratio)

    def _run(self, block: nn.Module, *args: object) -> torch.Tensor:
        """Call ``block``, recomputing its activations in backward when checkpointing (saves memory, same grads)."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(
        self,
        x: torch.Tensor,
        x_size: tuple[int, int],
        rpi_sa: torch.Tensor,
        rpi_oca: torch.Tensor,
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        for block in self.blocks:
            x = self._run(block, x, x_size, rpi_sa, attn_mask)
        return self._run(self.overlap_attn, x, x_size, rpi_oca)


class RHAG(nn.Module):
    """Residual hybrid attention group: attention blocks, a 3x3 conv (or identity), and a long skip."""

    def __init__(self, dim: int, resi_connection: str, **block_kwargs: object) -> None:
        super().__init__()
        self.residual_group = AttenBlocks(dim=dim, **block_kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        x_size: tuple[int, int],
        rpi_sa: torch.Tensor,
        rpi_oca: torch.Tensor,
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        y = self.residual_group(x, x_size, rpi_sa, rpi_oca, attn_mask)
        return image_to_tokens(self.conv(tokens_to_image(y, x_size))) + x


class PatchEmbed(nn.Module):
    """Feature map -> tokens, with the LayerNorm the official model applies there (``patch_norm``)."""

    def __init__(self, embed_dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = image_to_tokens(x)
        return x if self.norm is None else self.norm(x)


def _upsample(scale: int, num_feat: int) -> nn.Sequential:
    """Conv + PixelShuffle stages: log2(scale) x2 stages for powers of two, one x3 stage for 3."""
    if scale & (scale - 1) == 0:
        stages = [(4, 2)] * int(math.log2(scale))
    elif scale == 3:
        stages = [(9, 3)]
    else:
        powers = ", ".join(str(2**n) for n in range(MAX_SCALE.bit_length()))
        raise ArgumentError("upscale", f"HAT supports {powers} or 3, got {scale}")
    layers: list[nn.Module] = []
    for channel_factor, factor in stages:
        layers += [nn.Conv2d(num_feat, channel_factor * num_feat, 3, 1, 1), nn.PixelShuffle(factor)]
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
@check_arguments
class HAT(nn.Module):
    """Hybrid Attention Transformer; arguments and defaults are the official ones (see the module docstring).

    ``img_size`` only has to exceed ``window_size`` (the official model silently shrinks its windows otherwise);
    inputs of any size are accepted. Only the official ``upsampler='pixelshuffle'`` head exists. The defaults are the
    official constructor's, kept although ``HAT()`` cannot be built: window_size 7 with overlap_ratio 0.5 makes odd
    overlaps, which the official code cannot run either (it fails in forward); every released model sets
    ``window_size=16``, and a default that builds here would be one the official files never meant.
    """

    # The reconstruction head: DeFT's unstable group and LP-FT's warm-up (``ldt:head_patterns`` overrides it).
    HEAD_PATTERNS = [r"^conv_before_upsample\.", r"^upsample\.", r"^conv_last\."]

    def __init__(
        self,
        img_size: Count = 64,
        in_chans: Width = 3,
        embed_dim: Width = 96,
        depths: Depths = (6, 6, 6, 6),
        num_heads: Sequence[Count] = (6, 6, 6, 6),
        window_size: Annotated[int, Ge(1), Le(MAX_WINDOW)] = 7,
        compress_ratio: Count = 3,
        squeeze_factor: Count = 30,
        conv_scale: float = 0.01,
        overlap_ratio: Annotated[float, Ge(0), Le(2)] = 0.5,  # above 2 a key window reaches past the windows beside
        mlp_ratio: Ratio = 4.0,
        qkv_bias: bool = True,
        qk_scale: Ratio | None = None,
        drop_rate: Rate = 0.0,
        attn_drop_rate: Rate = 0.0,
        drop_path_rate: Rate = 0.1,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: Scale = 2,
        img_range: Ratio = 1.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ArgumentError("num_heads", f"{list(num_heads)} and depths {list(depths)} must have the same length "
                                             "(one entry per residual group)")
        check_depths(depths)
        if any(embed_dim % heads for heads in num_heads):
            raise ArgumentError("embed_dim", f"{embed_dim} must be divisible by every num_heads entry {list(num_heads)}")
        for name, factor in (("compress_ratio", compress_ratio), ("squeeze_factor", squeeze_factor)):
            if embed_dim < factor:  # the channel-attention branch divides embed_dim by both
                raise ArgumentError(name, f"{factor} exceeds embed_dim {embed_dim}: embed_dim // {name} channels "
                                          "would be 0")
        check_width(embed_dim, mlp_ratio, "mlp_ratio")
        overlap = int(overlap_ratio * window_size)
        if overlap % 2:  # OCAB pads by overlap // 2 per side: the key windows would not line up with the queries
            raise ArgumentError("overlap_ratio", f"int(overlap_ratio x window_size) = int({overlap_ratio:g} x "
                                                 f"{window_size}) must be even so each window gets one overlapping "
                                                 f"window, got {overlap} (the official HAT fails on it too: its "
                                                 "defaults, window_size 7 with overlap_ratio 0.5, never run); e.g. "
                                                 "window_size 16 with overlap_ratio 0.5, as in the released models")
        if img_size <= window_size:
            raise ArgumentError("img_size", f"{img_size} must exceed window_size ({window_size})")
        if upsampler != "pixelshuffle":
            raise ArgumentError("upsampler", f"only 'pixelshuffle' is implemented (as in the official HAT), got "
                                             f"{upsampler!r}")
        if resi_connection not in ("1conv", "identity"):
            raise ArgumentError("resi_connection", f"must be '1conv' or 'identity', got {resi_connection!r}")

        self.in_chans = in_chans
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.upscale = upscale
        self.img_range = img_range
        num_feat = 64

        self.register_buffer("relative_position_index_SA", relative_position_index_sa(window_size))
        self.register_buffer("relative_position_index_OCA", relative_position_index_oca(window_size, overlap_ratio))
        rgb_mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", rgb_mean, persistent=False)
        self._mask_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # grows with depth (host: meta-safe)
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            RHAG(
                dim=embed_dim,
                resi_connection=resi_connection,
                depth=depth,
                num_heads=heads,
                window_size=window_size,
                compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor,
                conv_scale=conv_scale,
                overlap_ratio=overlap_ratio,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_path[start : start + depth],
                use_checkpoint=use_checkpoint,
            )
            for depth, heads, start in zip(depths, num_heads, starts)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = _upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        self.apply(init_transformer_weights)

    def attn_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Shifted-window mask for a (padded) feature size, built once per (size, device) and kept out of state_dict."""
        key = (height, width, device)
        mask = self._mask_cache.get(key)
        if mask is None:
            if len(self._mask_cache) >= MASK_CACHE_SIZE:
                self._mask_cache.pop(next(iter(self._mask_cache)))  # drop the oldest size
            mask = shifted_window_mask(height, width, self.window_size, self.shift_size, device)
            self._mask_cache[key] = mask
        return mask

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features of a (b, embed_dim, h, w) map whose sides are multiples of the window size."""
        x_size = (x.shape[2], x.shape[3])
        attn_mask = self.attn_mask(x_size[0], x_size[1], x.device)
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x, x_size, self.relative_position_index_SA, self.relative_position_index_OCA, attn_mask)
        return tokens_to_image(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, in_chans, h, w) -> (b, in_chans, h * upscale, w * upscale) for any h, w."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"HAT expects a (batch, {self.in_chans}, height, width) tensor, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.window_size)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + mean
        return x[..., : height * self.upscale, : width * self.upscale]
