"""SAFMN: official-checkpoint compatibility (keys, shapes, order), forward/backward, input checks, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ldt.archs  # noqa: F401  (registers every arch)
from ldt.archs.safmn_arch import SAFMN, LayerNorm
from tests.arch_checks import (
    CHECKPOINT_LAYOUTS,
    check_forward_backward,
    check_declared_ranges_at_construction,
    check_declared_types_at_construction,
    check_registered,
    check_strict_load_round_trip,
)

SAFMN_X4 = dict(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=4)  # official SAFMN_DF2K_x4 / DIV2K_x4
SAFMN_L_X4 = dict(dim=128, n_blocks=16, ffn_scale=2.0, upscaling_factor=4)
TINY = dict(dim=8, n_blocks=2, ffn_scale=2.0, upscaling_factor=2)

BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
    "safm.mfr.0.weight", "safm.mfr.0.bias", "safm.mfr.1.weight", "safm.mfr.1.bias",
    "safm.mfr.2.weight", "safm.mfr.2.bias", "safm.mfr.3.weight", "safm.mfr.3.bias",
    "safm.aggr.weight", "safm.aggr.bias", "ccm.ccm.0.weight", "ccm.ccm.0.bias", "ccm.ccm.2.weight", "ccm.ccm.2.bias",
]  # fmt: skip


def tiny(seed: int = 0, **overrides) -> SAFMN:
    torch.manual_seed(seed)
    return SAFMN(**{**TINY, **overrides})


@pytest.mark.parametrize("config, params, tensors", [(SAFMN_X4, 239_520, 148), (SAFMN_L_X4, 5_600_816, 292)])
def test_parameter_count_of_official_configs(config: dict, params: int, tensors: int) -> None:
    model = SAFMN(**config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == tensors  # 2 + 18 per block + 2, no buffers
    assert len(list(model.buffers())) == 0


def test_state_dict_order_and_shapes_match_official() -> None:
    sd = SAFMN(**SAFMN_X4).state_dict()
    expected = ["to_feat.weight", "to_feat.bias"]
    for i in range(8):
        expected += [f"feats.{i}.{k}" for k in BLOCK_KEYS]
    expected += ["to_img.0.weight", "to_img.0.bias"]
    assert list(sd) == expected
    shapes = {
        "to_feat.weight": (36, 3, 3, 3),
        "feats.0.norm1.weight": (36,),
        "feats.0.safm.mfr.3.weight": (9, 1, 3, 3),
        "feats.0.safm.aggr.weight": (36, 36, 1, 1),
        "feats.7.ccm.ccm.0.weight": (72, 36, 3, 3),
        "feats.7.ccm.ccm.2.weight": (36, 72, 1, 1),
        "to_img.0.weight": (48, 36, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_channels_first_layer_norm() -> None:
    norm = LayerNorm(6)
    assert norm.eps == 1e-6
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (17, 8), (31, 23)])
def test_tiny_forward_backward_any_size(size: tuple[int, int]) -> None:
    check_forward_backward(tiny(), size, scale=2)


@pytest.mark.parametrize("scale", [1, 3, 4])
def test_other_scales(scale: int) -> None:
    with torch.no_grad():
        out = tiny(upscaling_factor=scale).eval()(torch.rand(1, 3, 10, 9))
    assert out.shape == (1, 3, 10 * scale, 9 * scale)


@pytest.mark.parametrize("shape", [(1, 3, 7, 16), (1, 3, 16, 5), (1, 3, 1, 1)])
def test_inputs_below_8_pixels_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"at least 8x8 pixels.*got \d+x\d+"):
        tiny()(torch.rand(*shape))


def test_bad_inputs_raise_clear_errors() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"SAFMN expects a \(batch, 3, height, width\).*\(1, 1, 16, 16\)"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="SAFMN expects"):
        model(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        SAFMN(dim=10)


@pytest.mark.parametrize("layout", CHECKPOINT_LAYOUTS)
def test_strict_load_round_trip(tmp_path, layout: str) -> None:
    check_strict_load_round_trip(lambda seed: tiny(seed=seed), tmp_path, layout, (1, 3, 12, 9))


def test_registered_in_basicsr() -> None:
    check_registered("SAFMN", SAFMN, TINY, scale=2)

def test_declared_ranges_are_checked_in_python_too() -> None:
    check_declared_ranges_at_construction(SAFMN, TINY)
    with pytest.raises(ValueError, match=r"^SAFMN: n_blocks: must be >= 1, got 0$"):
        SAFMN(dim=36, n_blocks=0)  # was built: a network without body blocks
    with pytest.raises(ValueError, match=r"^SAFMN: upscaling_factor: must be <= 16, got 10000$"):
        SAFMN(36, 8, 2.0, 10_000)  # positional arguments are checked too
    with pytest.raises(ValueError, match=r"^SAFMN: dim: must be divisible by 4"):
        SAFMN(dim=10)  # the constructor's own checks name the class as well


def test_declared_types_are_checked_in_python() -> None:
    """A value of the wrong type fails at construction in one line (was: deep inside torch, or a network built on
    it), as the option check words it; a list or tuple where the schema takes either builds."""
    check_declared_types_at_construction(SAFMN, TINY)
    with pytest.raises(ValueError, match=r"^SAFMN: dim: expected an integer, got str '36'$"):
        SAFMN(dim="36")
