"""MambaIR (Guo et al., ECCV 2024), written from scratch but state_dict-compatible with the official checkpoints.

Every module and parameter name, shape and registration order follows the official
``csguoh/MambaIR/basicsr/archs/mambair_arch.py``, because the released ``.pth`` files (``classicSRx4.pth`` ...) are
keyed by them and we load them with ``strict=True``. Deliberate differences, none of which changes a key or an
output:

* the RGB mean is built per call from constants (officially a plain tensor attribute, never in the state_dict);
* ``use_checkpoint=True`` works (the official flag drops ``x_size`` and raises) and uses ``use_reentrant=False``;
* bad input shapes and unknown options raise a clear ``ValueError``;
* ``upsampler='nearest+conv'`` (SwinIR's real-SR head, x2/x4) is an extension: no official MambaIR weights use it.

Tensor layouts: images ``(B, C, H, W)``; tokens ``(B, H*W, C)`` in row-major pixel order.
"""

from __future__ import annotations

import math
from typing import Annotated, Sequence

import torch
from annotated_types import Ge
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldt.archs.arch_util import (ArgumentError, Count, Depths, DropPath, Rate, Ratio, Scale, Width, check_arguments,
                                 check_depths, check_width, init_transformer_weights)
from ldt.compat import patch_basicsr

patch_basicsr()
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402  (needs the patch above)

# Mean of DIV2K in RGB, subtracted from inputs by every BasicSR-family SR network of this lineage.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
RESI_CONNECTIONS = ("1conv", "3conv")
NUM_FEAT = 64  # width of the classic-SR reconstruction head, fixed in the official code
SQUEEZE_FACTOR = 30  # the channel attention of every block divides embed_dim by it, fixed in the official code


def _tokens_to_map(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing each residual group and the body: one 3x3 conv, or a cheaper bottleneck of three."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ArgumentError("resi_connection", f"must be one of {RESI_CONNECTIONS}, got {resi_connection!r}")


class ChannelAttention(nn.Module):
    """RCAN squeeze-and-excitation: rescale channels by a gate computed from their global average."""

    def __init__(self, num_feat: int, squeeze_factor: int) -> None:
        super().__init__()
        if num_feat < squeeze_factor:
            raise ValueError(f"channel attention squeezes by {squeeze_factor}: needs at least that many channels, "
                             f"got {num_feat} (MambaIR needs embed_dim >= 30)")
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Convolutional channel-attention block: adds the local detail and channel mixing a 1-D scan lacks.

    Light-SR models use a depthwise/dilated variant (fewer parameters, wider receptive field), as the official
    lightweight checkpoints do.
    """

    def __init__(self, num_feat: int, is_light_sr: bool = False, compress_ratio: int = 3,
                 squeeze_factor: int = SQUEEZE_FACTOR) -> None:
        super().__init__()
        if is_light_sr:
            hidden = num_feat // 2
            self.cab = nn.Sequential(
                nn.Conv2d(num_feat, hidden, 1, 1, 0),
                nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden),
                nn.GELU(),
                nn.Conv2d(hidden, num_feat, 1, 1, 0),
                nn.Conv2d(num_feat, num_feat, 3, 1, padding=2, groups=num_feat, dilation=2),
                ChannelAttention(num_feat, squeeze_factor),
            )
        else:
            hidden = num_feat // compress_ratio
            self.cab = nn.Sequential(
                nn.Conv2d(num_feat, hidden, 3, 1, 1),
                nn.GELU(),
                nn.Conv2d(hidden, num_feat, 3, 1, 1),
                ChannelAttention(num_feat, squeeze_factor),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class SS2D(nn.Module):
    """2-D selective scan: run a Mamba SSM along four pixel orders and sum, so every pixel sees the whole image.

    The orders are row-major, column-major and both reversed (``K = 4``); each has its own projections, stored
    stacked as ``(K, ...)`` parameters exactly as in the official checkpoints.
    """

    K = 4

    def __init__(self, d_model: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 3, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16)
        k, d_inner, dt_rank = self.K, self.d_inner, self.dt_rank

        # Parameters first, in the official order (own parameters precede submodules in a state_dict anyway).
        # x_proj: per direction, d_inner -> (dt_rank + 2 * d_state), with nn.Linear's default init.
        bound = 1.0 / math.sqrt(d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        # dt_proj: dt_rank -> d_inner, scaled to keep the variance of dt at init.
        std = dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank).uniform_(-std, std))
        # Bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], so initial step sizes span both scales.
        log_dt = torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real init: A = -(1..N) for every channel, stored as log; D (skip) = 1.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))

        self.in_proj = nn.Linear(d_model, d_inner * 2, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.act = nn.SiLU()
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` -> ``(B, D, H*W)``: the four directional scans, mapped back to row-major and summed."""
        from ldt.ops.selective_scan import selective_scan_fn

        b, d, h, w = x.shape
        length = h * w
        rows = x.flatten(2)
        cols = x.transpose(2, 3).flatten(2)
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (B, K, D, L)

        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)

        # The scan runs in float32 whatever the autocast dtype, as the official code does.
        y = selective_scan_fn(
            xs.float().reshape(b, -1, length),
            dts.float().reshape(b, -1, length),
            -torch.exp(self.A_logs.float()),
            bs.float().contiguous(),
            cs.float().contiguous(),
            self.Ds.float(),
            z=None,
            delta_bias=self.dt_projs_bias.float().reshape(-1),
            delta_softplus=True,
            return_last_state=False,
        ).view(b, self.K, d, length)

        def from_columns(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, d, w, h).transpose(2, 3).reshape(b, d, length)

        # Summed in the official order (row, reversed row, column, reversed column) so float rounding matches too.
        return y[:, 0] + y[:, 2].flip(-1) + from_columns(y[:, 1]) + from_columns(y[:, 3].flip(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self._scan(x).transpose(1, 2).reshape(b, h, w, -1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class VSSBlock(nn.Module):
    """Residual state-space block: LN -> SS2D (with stochastic depth), then LN -> CAB; both skips are learnt scales."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, expand: float = 2.0,
                 is_light_sr: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state, expand=expand)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(hidden_dim))
        self.conv_blk = CAB(hidden_dim, is_light_sr)
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.skip_scale2 = nn.Parameter(torch.ones(hidden_dim))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        """Tokens ``(B, H*W, C)`` -> tokens."""
        b, _, c = x.shape
        x = x.view(b, x_size[0], x_size[1], c)
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))
        local = self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        x = x * self.skip_scale2 + local
        return x.reshape(b, -1, c)


class BasicLayer(nn.Module):
    """A stack of VSS blocks, optionally with per-block activation checkpointing to trade compute for memory."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], d_state: int = 16, mlp_ratio: float = 2.0,
                 use_checkpoint: bool = False, is_light_sr: bool = False) -> None:
        super().__init__()
        if len(drop_path) != depth:
            raise ValueError(f"need one drop_path rate per block ({depth}), got {len(drop_path)}")
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=rate, d_state=d_state, expand=mlp_ratio, is_light_sr=is_light_sr)
            for rate in drop_path
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                # Non-reentrant checkpointing replays the saved RNG state, so DropPath masks match the first pass.
                x = checkpoint(block, x, x_size, use_reentrant=False)
            else:
                x = block(x, x_size)
        return x


class ResidualGroup(nn.Module):
    """Residual State-Space Group (RSSG): blocks, a closing conv, and a long skip over the group."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], d_state: int = 16, mlp_ratio: float = 2.0,
                 use_checkpoint: bool = False, resi_connection: str = "1conv", is_light_sr: bool = False) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, drop_path, d_state=d_state, mlp_ratio=mlp_ratio,
                                         use_checkpoint=use_checkpoint, is_light_sr=is_light_sr)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        y = self.residual_group(x, x_size)
        return _map_to_tokens(self.conv(_tokens_to_map(y, x_size))) + x


class PatchEmbed(nn.Module):
    """Feature map -> tokens, then the optional norm (its weights are ``patch_embed.norm.*`` in checkpoints)."""

    def __init__(self, embed_dim: int, norm_layer: type[nn.Module] | None) -> None:
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _map_to_tokens(x)
        return x if self.norm is None else self.norm(x)


class Upsample(nn.Sequential):
    """Classic-SR upsampler: conv + PixelShuffle(2) per factor of 2, or one conv + PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale >= 2 and scale & (scale - 1) == 0:
            for _ in range(scale.bit_length() - 1):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ArgumentError("upscale", f"upsampler 'pixelshuffle' supports scales 2^n and 3, got {scale}")
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """Lightweight upsampler: a single conv straight to ``scale**2 * out`` channels and one PixelShuffle."""

    def __init__(self, scale: int, num_feat: int, num_out_ch: int) -> None:
        if scale < 1:
            raise ArgumentError("upscale", f"must be >= 1, got {scale}")
        super().__init__(nn.Conv2d(num_feat, scale**2 * num_out_ch, 3, 1, 1), nn.PixelShuffle(scale))


@ARCH_REGISTRY.register()
@check_arguments
class MambaIR(nn.Module):
    """MambaIR: shallow conv, residual state-space groups, then an upsampling (or denoising) head.

    Official presets: classic SR ``embed_dim=180, depths=[6]*6, d_state=16, mlp_ratio=2, upsampler='pixelshuffle'``;
    light SR ``embed_dim=60, depths=[6]*4, d_state=10, mlp_ratio=1.2, upsampler='pixelshuffledirect'``; colour
    denoising ``embed_dim=180, depths=[6]*6, mlp_ratio=1.2, upscale=1, upsampler=''``.

    ``img_size`` and ``patch_size`` are accepted so official option files work; the network takes any input size
    (``patch_size`` must be 1, the only value the official code supports). ``upscale`` is ignored when
    ``upsampler=''`` (restoration at the input size). ``norm_layer`` is the class used for the token norms around
    the body; the blocks always use ``nn.LayerNorm``, as officially.
    """

    # The reconstruction head: DeFT's unstable group and LP-FT's warm-up (``ldt:head_patterns`` overrides it).
    HEAD_PATTERNS = [r"^conv_before_upsample\.", r"^upsample\.", r"^conv_last\."]
    # Keys of the official option files that the official constructor swallows (**kwargs); accepted, ignored.
    OFFICIAL_EXTRA_OPTIONS = ("window_size", "interval", "num_heads")

    def __init__(
        self,
        img_size: Count | tuple[Count, Count] = 64,
        patch_size: int = 1,
        in_chans: Width = 3,
        embed_dim: Annotated[Width, Ge(SQUEEZE_FACTOR)] = 96,
        depths: Depths = (6, 6, 6, 6),
        drop_rate: Rate = 0.0,
        d_state: Width = 16,
        mlp_ratio: Ratio = 2.0,
        drop_path_rate: Rate = 0.1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: Scale = 2,
        img_range: Ratio = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
    ) -> None:
        super().__init__()
        if patch_size != 1:
            raise ArgumentError("patch_size", f"MambaIR works on pixels: patch_size must be 1, got {patch_size}")
        if upsampler not in UPSAMPLERS:
            raise ArgumentError("upsampler", f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        if upsampler == "nearest+conv" and upscale not in (2, 4):
            raise ArgumentError("upscale", f"upsampler 'nearest+conv' supports upscale 2 and 4, got {upscale}")
        check_depths(depths)
        check_width(embed_dim, mlp_ratio, "mlp_ratio")
        self.img_size = img_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.upscale = upscale
        self.upsampler = upsampler
        # What the output's size is, for the option checks: upsampler '' keeps the input size whatever ``upscale``
        # says (its default 2 included), so reading ``upscale`` would train x4 pairs on a x1 network.
        self.output_scale = upscale if upsampler else 1
        self.img_range = img_range
        self.rgb_mean = RGB_MEAN if in_chans == 3 else (0.0,)
        is_light_sr = upsampler == "pixelshuffledirect"

        # 1. shallow features
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)

        # 2. deep features; stochastic-depth rates grow linearly over all blocks of all groups
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # on the host: meta-safe
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            ResidualGroup(embed_dim, depth, rates[start:start + depth], d_state=d_state, mlp_ratio=mlp_ratio,
                          use_checkpoint=use_checkpoint, resi_connection=resi_connection, is_light_sr=is_light_sr)
            for depth, start in zip(depths, starts)
        )
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        # 3. reconstruction
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
            if upscale == 4:
                self.conv_up2 = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
            self.conv_hr = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
            self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

        self.apply(init_transformer_weights)

    @property
    def use_checkpoint(self) -> bool:
        """Whether the blocks recompute activations in backward; settable after construction."""
        return all(group.residual_group.use_checkpoint for group in self.layers)

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        for group in self.layers:
            group.residual_group.use_checkpoint = value

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features ``(B, embed_dim, H, W)`` from shallow ones of the same shape."""
        x_size = (x.shape[2], x.shape[3])
        tokens = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            tokens = layer(tokens, x_size)
        return _tokens_to_map(self.norm(tokens), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` in ``[0, 1]`` (times ``img_range``) -> ``(B, in_chans, s*H, s*W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MambaIR expects a (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        # float32 first, then x's dtype: the same rounding as the official `mean.type_as(x)`.
        mean = torch.tensor(self.rgb_mean, device=x.device).view(1, -1, 1, 1).to(x.dtype)
        x = (x - mean) * self.img_range

        if self.upsampler == "":
            shallow = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(shallow)) + shallow)
        else:
            shallow = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(shallow)) + shallow
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:
                x = self.conv_before_upsample(x)
                x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
                if self.upscale == 4:
                    x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.conv_last(self.lrelu(self.conv_hr(x)))

        return x / self.img_range + mean
