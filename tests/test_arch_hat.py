"""HAT: official-checkpoint compatibility (keys, shapes, buffers), forward/backward, padding, mask cache, checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ldt.archs  # noqa: F401  (registers every arch)
from ldt.archs import hat_arch
from ldt.archs.hat_arch import HAT
from tests.arch_checks import (
    CHECKPOINT_LAYOUTS,
    check_forward_backward,
    check_declared_ranges_at_construction,
    check_declared_types_at_construction,
    check_registered,
    check_strict_load_round_trip,
)

# Official option files: options/test/HAT_SRx4.yml and HAT-S_SRx4.yml (network_g).
HAT_SRX4 = dict(
    upscale=4, in_chans=3, img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
    overlap_ratio=0.5, img_range=1.0, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2,
    upsampler="pixelshuffle", resi_connection="1conv",
)  # fmt: skip
HAT_S_SRX4 = {**HAT_SRX4, "embed_dim": 144, "compress_ratio": 24, "squeeze_factor": 24}
# Two blocks per group so that the shifted-window (masked) path runs.
TINY = dict(
    upscale=2, in_chans=3, img_size=16, window_size=4, compress_ratio=3, squeeze_factor=3, depths=[2, 2],
    embed_dim=12, num_heads=[2, 2], mlp_ratio=2,
)  # fmt: skip

BLOCK = "layers.0.residual_group.blocks.0."
OCAB = "layers.0.residual_group.overlap_attn."


@pytest.fixture(scope="module")
def hat_x4() -> HAT:
    torch.manual_seed(0)
    return HAT(**HAT_SRX4)


def tiny(seed: int = 0, **overrides) -> HAT:
    torch.manual_seed(seed)
    return HAT(**{**TINY, **overrides})


def official_rpi_sa(ws: int) -> torch.Tensor:
    """The official formula, written with (2, N) coordinate stacks and in-place shifts."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def official_rpi_oca(ws: int, overlap_ratio: float) -> torch.Tensor:
    ext = ws + int(overlap_ratio * ws)
    ori = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    big = torch.stack(torch.meshgrid(torch.arange(ext), torch.arange(ext), indexing="ij")).flatten(1)
    rel = (big[:, None, :] - ori[:, :, None]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - ext + 1
    rel[:, :, 1] += ws - ext + 1
    rel[:, :, 0] *= ws + ext - 1
    return rel.sum(-1)


def official_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """Slice-painted region labels, as the official calculate_mask does."""
    img = torch.zeros(1, h, w, 1)
    slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for label, (hs, wsl) in enumerate((a, b) for a in slices for b in slices):
        img[:, hs, wsl, :] = label
    win = img.view(1, h // ws, ws, w // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


# ---------------------------------------------------------------- official checkpoint layout


@pytest.mark.parametrize("config, expected", [(HAT_SRX4, 20_772_507), (HAT_S_SRX4, 9_621_183)])
def test_parameter_count_of_official_configs(config: dict, expected: int) -> None:
    model = HAT(**config)
    assert sum(p.numel() for p in model.parameters()) == expected
    # 2 index buffers + 6 groups x (6 HAB x 21 + OCAB 13 + conv 2) + 18 tensors outside the groups.
    assert len(model.state_dict()) == 864


def test_state_dict_order_and_shapes_match_official(hat_x4: HAT) -> None:
    sd = hat_x4.state_dict()
    keys = list(sd)
    assert keys[:8] == [
        "relative_position_index_SA", "relative_position_index_OCA", "conv_first.weight", "conv_first.bias",
        "patch_embed.norm.weight", "patch_embed.norm.bias", BLOCK + "norm1.weight", BLOCK + "norm1.bias",
    ]  # fmt: skip
    block = [k[len(BLOCK):] for k in keys if k.startswith(BLOCK)]
    assert block == [
        "norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight", "attn.qkv.bias",
        "attn.proj.weight", "attn.proj.bias", "conv_block.cab.0.weight", "conv_block.cab.0.bias",
        "conv_block.cab.2.weight", "conv_block.cab.2.bias", "conv_block.cab.3.attention.1.weight",
        "conv_block.cab.3.attention.1.bias", "conv_block.cab.3.attention.3.weight",
        "conv_block.cab.3.attention.3.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
        "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    ocab = [k[len(OCAB):] for k in keys if k.startswith(OCAB)]
    assert ocab == [
        "relative_position_bias_table", "norm1.weight", "norm1.bias", "qkv.weight", "qkv.bias", "proj.weight",
        "proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    i = keys.index(OCAB + "mlp.fc2.bias")
    assert keys[i + 1 : i + 4] == ["layers.0.conv.weight", "layers.0.conv.bias", "layers.1.residual_group.blocks.0.norm1.weight"]
    assert keys[-12:] == [
        "norm.weight", "norm.bias", "conv_after_body.weight", "conv_after_body.bias",
        "conv_before_upsample.0.weight", "conv_before_upsample.0.bias", "upsample.0.weight", "upsample.0.bias",
        "upsample.2.weight", "upsample.2.bias", "conv_last.weight", "conv_last.bias",
    ]  # fmt: skip
    shapes = {
        BLOCK + "attn.relative_position_bias_table": (961, 6),
        BLOCK + "attn.qkv.weight": (540, 180),
        BLOCK + "conv_block.cab.0.weight": (60, 180, 3, 3),
        BLOCK + "conv_block.cab.3.attention.1.weight": (6, 180, 1, 1),
        BLOCK + "mlp.fc1.weight": (360, 180),
        OCAB + "relative_position_bias_table": (1521, 6),
        "layers.5.residual_group.blocks.5.mlp.fc2.weight": (180, 360),
        "conv_before_upsample.0.weight": (64, 180, 3, 3),
        "upsample.0.weight": (256, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert all(v.dtype == torch.float32 for k, v in sd.items() if not k.startswith("relative_position_index"))


def test_persistent_buffers_are_the_official_int64_indices(hat_x4: HAT) -> None:
    sd = hat_x4.state_dict()
    params = {name for name, _ in hat_x4.named_parameters()}
    buffers = {k: (tuple(v.shape), v.dtype) for k, v in sd.items() if k not in params}
    assert buffers == {
        "relative_position_index_SA": ((256, 256), torch.int64),
        "relative_position_index_OCA": ((256, 576), torch.int64),
    }
    assert "mean" in dict(hat_x4.named_buffers())  # moves with .to(), but is not a checkpoint entry


@pytest.mark.parametrize("ws, ratio", [(16, 0.5), (8, 0.5), (4, 0.5), (8, 0.25)])
def test_relative_position_indices_equal_official_formula(ws: int, ratio: float) -> None:
    assert torch.equal(hat_arch.relative_position_index_sa(ws), official_rpi_sa(ws))
    assert torch.equal(hat_arch.relative_position_index_oca(ws, ratio), official_rpi_oca(ws, ratio))


def test_official_oca_index_has_wrapping_negatives(hat_x4: HAT) -> None:
    oca = hat_x4.relative_position_index_OCA
    assert torch.equal(oca, official_rpi_oca(16, 0.5))
    assert (oca.min().item(), oca.max().item()) == (-880, 640)  # table has 39 * 39 = 1521 rows
    assert (oca < 0).any()
    sa = hat_x4.relative_position_index_SA
    assert torch.equal(sa, official_rpi_sa(16)) and (sa.min().item(), sa.max().item()) == (0, 960)


# ---------------------------------------------------------------- forward / backward / padding


@pytest.mark.parametrize("size", [(16, 24), (13, 7), (5, 9), (1, 1)])
def test_tiny_forward_backward_any_size(size: tuple[int, int]) -> None:
    check_forward_backward(tiny(), size, scale=2)


def test_padding_is_reflect_then_crop() -> None:
    model = tiny().eval()
    x = torch.rand(1, 3, 13, 10)
    padded = F.pad(x, (0, 2, 0, 3), mode="reflect")  # to 16 x 12, the official test-time padding
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :26, :20])


@pytest.mark.parametrize("upscale, size", [(1, (9, 8)), (3, (7, 8)), (8, (5, 4))])
def test_other_scales(upscale: int, size: tuple[int, int]) -> None:
    with torch.no_grad():
        out = tiny(upscale=upscale).eval()(torch.rand(1, 3, *size))
    assert out.shape == (1, 3, size[0] * upscale, size[1] * upscale)


def test_drop_path_follows_official_schedule_and_is_train_only() -> None:
    model = tiny(drop_path_rate=0.3)
    rates = [blk.drop_path.drop_prob for layer in model.layers for blk in layer.residual_group.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.rand(4, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(a, model(x))


def test_bad_inputs_raise_clear_errors() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"HAT expects a \(batch, 3, height, width\).*\(1, 4, 8, 8\)"):
        model(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="HAT expects"):
        model(torch.rand(3, 8, 8))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"upsampler": "pixelshuffledirect"}, "pixelshuffle"),
        ({"resi_connection": "3conv"}, "resi_connection"),
        ({"num_heads": [2]}, "same length"),
        ({"num_heads": [5, 5]}, "divisible"),
        ({"window_size": 6}, "even"),  # int(0.5 * 6) = 3 would misalign the overlapping windows
        ({"img_size": 4}, "img_size"),
        ({"upscale": 5}, "upscale"),
    ],
)
def test_bad_configs_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HAT(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "overrides, line",
    [
        ({"embed_dim": -1}, "HAT: embed_dim: must be >= 1, got -1"),  # was: 'must be divisible by every num_heads'
        ({"depths": [2, 0]}, "HAT: depths[1]: must be >= 1, got 0"),  # was built: a group without blocks
        ({"depths": []}, "HAT: depths: must have length >= 1, got []"),
        ({"num_heads": (2, 0)}, "HAT: num_heads[1]: must be >= 1, got 0"),
        ({"qk_scale": 0.0}, "HAT: qk_scale: must be > 0, got 0.0"),  # Optional: None passes, 0 does not
        ({"drop_path_rate": 1.0}, "HAT: drop_path_rate: must be < 1, got 1.0"),
        ({"num_heads": [2]}, "HAT: num_heads: [2] and depths [2, 2] must have the same length"),
    ],
)
def test_declared_ranges_are_checked_in_python_too(overrides: dict, line: str) -> None:
    with pytest.raises(ValueError) as raised:
        HAT(**{**TINY, **overrides})
    assert str(raised.value).startswith(line), str(raised.value)


def test_the_official_defaults_fail_at_construction_naming_the_rule_and_a_fix() -> None:
    """HAT's default window_size 7 with overlap_ratio 0.5 gives 3-pixel overlaps, which the official OCAB pads by
    (3 // 2) per side, so its windows do not line up with the queries: it fails in forward, officially too."""
    with pytest.raises(ValueError) as raised:
        HAT()
    line = str(raised.value)
    assert line.startswith("HAT: overlap_ratio: int(overlap_ratio x window_size) = int(0.5 x 7) must be even"), line
    assert "defaults" in line and "window_size 16" in line and "\n" not in line, line


def test_every_declared_range_is_checked_in_python() -> None:
    check_declared_ranges_at_construction(HAT, TINY)
    HAT(**{**TINY, "qk_scale": None})  # the optional argument's None is in range


# ---------------------------------------------------------------- shifted-window mask cache


def test_mask_equals_official_construction() -> None:
    for h, w, ws in [(16, 24, 4), (64, 48, 16), (8, 8, 8)]:
        mask = hat_arch.shifted_window_mask(h, w, ws, ws // 2)
        assert mask.dtype == torch.float32
        assert torch.equal(mask, official_mask(h, w, ws, ws // 2))


def test_mask_built_once_per_size_on_input_device(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    real = hat_arch.shifted_window_mask

    def counting(*args, **kwargs):
        builds.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(hat_arch, "shifted_window_mask", counting)
    model = tiny().eval()
    keys_before = list(model.state_dict())
    with torch.no_grad():
        model(torch.rand(1, 3, 13, 7))
        first = model.attn_mask(16, 8, torch.device("cpu"))
        model(torch.rand(2, 3, 16, 8))  # same padded size
        assert builds == [(16, 8)]
        assert model.attn_mask(16, 8, torch.device("cpu")) is first
        model(torch.rand(1, 3, 12, 12))
    assert builds == [(16, 8), (12, 12)]
    other = model.attn_mask(12, 12, torch.device("cpu"))
    assert other.shape == (9, 16, 16) and first.shape == (8, 16, 16)
    assert first.device == other.device == torch.device("cpu")
    assert list(model.state_dict()) == keys_before
    assert not any("mask" in k for k in model.state_dict())


def test_mask_cache_is_bounded() -> None:
    model = tiny()
    for side in range(4, 4 * (hat_arch.MASK_CACHE_SIZE + 3), 4):
        model.attn_mask(side, side, torch.device("cpu"))
    assert len(model._mask_cache) == hat_arch.MASK_CACHE_SIZE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_lives_on_cuda_input_device() -> None:
    model = tiny().cuda().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 13, 7, device="cuda"))
    assert out.device.type == "cuda"
    (key,) = model._mask_cache
    assert model._mask_cache[key].device == out.device


# ---------------------------------------------------------------- activation checkpointing


def test_use_checkpoint_gives_same_outputs_and_grads() -> None:
    plain = tiny(seed=3, drop_path_rate=0.2).train()
    ckpt = tiny(seed=4, drop_path_rate=0.2, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 11, 9)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(7)  # same stochastic-depth draws; checkpoint replays them in backward
        out = model(x)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


# ---------------------------------------------------------------- loading / registry


@pytest.mark.parametrize("layout", CHECKPOINT_LAYOUTS)
def test_strict_load_round_trip(tmp_path, layout: str) -> None:
    check_strict_load_round_trip(lambda seed: tiny(seed=seed), tmp_path, layout, (1, 3, 9, 10))


def test_registered_in_basicsr() -> None:
    check_registered("HAT", HAT, TINY, scale=2)

def test_declared_types_are_checked_in_python() -> None:
    """A value of the wrong type fails at construction in one line (was: deep inside torch, or a network built on
    it), as the option check words it; a list or tuple where the schema takes either builds."""
    check_declared_types_at_construction(HAT, TINY)
    with pytest.raises(ValueError, match=r"^HAT: depths: expected a list, got int 6$"):
        HAT(depths=6)
