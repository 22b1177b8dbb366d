"""MambaIR: official state_dict layout (keys, shapes, order, counts), shapes, checkpointing, loading, errors.

Expected keys and counts are written from the official ``csguoh/MambaIR`` architecture file and paper
(light SR: 905K / 913K / 924K parameters for x2 / x3 / x4), not derived from our model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldt.archs import mambair_arch
from ldt.archs.arch_util import load_pretrained
from ldt.weights import WeightsError
from ldt.archs.mambair_arch import SS2D, MambaIR
from tests.arch_checks import (
    CHECKPOINT_LAYOUTS,
    check_declared_ranges_at_construction,
    check_declared_types_at_construction,
    check_registered,
    check_strict_load_round_trip,
)

CLASSIC_X4 = dict(upscale=4, in_chans=3, img_size=64, img_range=1.0, d_state=16, depths=[6, 6, 6, 6, 6, 6],
                  embed_dim=180, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
LIGHT_X4 = dict(upscale=4, in_chans=3, img_size=64, img_range=1.0, d_state=10, depths=[6, 6, 6, 6], embed_dim=60,
                mlp_ratio=1.2, upsampler="pixelshuffledirect", resi_connection="1conv")
# Smallest width the channel attention (squeeze 30) allows; d_inner 36, dt_rank 2.
TINY = dict(in_chans=3, embed_dim=30, depths=[1, 1], d_state=4, mlp_ratio=1.2, drop_path_rate=0.0)


def reference_selective_scan(u, delta, A, B, C, D, delta_bias):
    """Sequential Mamba scan as SS2D calls it (softplus step, B/C shared by channel groups); slow but plainly right."""
    channels, groups = u.shape[1], B.shape[1]
    delta = F.softplus(delta + delta_bias[:, None])
    B = B.repeat_interleave(channels // groups, dim=1)
    C = C.repeat_interleave(channels // groups, dim=1)
    state = u.new_zeros(u.shape[0], channels, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        step = delta[:, :, t, None]
        state = torch.exp(step * A) * state + step * B[..., t] * u[:, :, t, None]
        ys.append((state * C[..., t]).sum(-1))
    return torch.stack(ys, dim=-1) + u * D[:, None]


def make(seed: int = 0, **overrides) -> MambaIR:
    torch.manual_seed(seed)
    return MambaIR(**{**TINY, **overrides})


def block_keys(prefix: str, light: bool = False) -> list[str]:
    """Official VSSBlock keys in state_dict order: own parameters first, then ln_1, SS2D, CAB, ln_2."""
    ssm = [f"self_attention.{n}" for n in ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds",
                                           "in_proj.weight", "conv2d.weight", "conv2d.bias", "out_norm.weight",
                                           "out_norm.bias", "out_proj.weight")]
    convs, attention = ((0, 1, 3, 4), 5) if light else ((0, 2), 3)
    cab = [f"conv_blk.cab.{i}.{n}" for i in convs for n in ("weight", "bias")]
    cab += [f"conv_blk.cab.{attention}.attention.{i}.{n}" for i in (1, 3) for n in ("weight", "bias")]
    names = ["skip_scale", "skip_scale2", "ln_1.weight", "ln_1.bias", *ssm, *cab, "ln_2.weight", "ln_2.bias"]
    return [prefix + name for name in names]


def official_keys(depths: list[int], head: list[str], light: bool = False) -> list[str]:
    keys = ["conv_first.weight", "conv_first.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for g, depth in enumerate(depths):
        for b in range(depth):
            keys += block_keys(f"layers.{g}.residual_group.blocks.{b}.", light)
        keys += [f"layers.{g}.conv.weight", f"layers.{g}.conv.bias"]
    keys += ["norm.weight", "norm.bias", "conv_after_body.weight", "conv_after_body.bias"]
    return keys + [f"{module}.{n}" for module in head for n in ("weight", "bias")]


@pytest.fixture(scope="module")
def classic_x4() -> MambaIR:
    torch.manual_seed(0)
    return MambaIR(**CLASSIC_X4).eval()


def test_classic_x4_matches_official_state_dict(classic_x4):
    sd = classic_x4.state_dict()
    assert sum(p.numel() for p in classic_x4.parameters()) == 20_569_575
    assert len(sd) == 928
    assert list(classic_x4.buffers()) == []  # the RGB mean is not state
    head = ["conv_before_upsample.0", "upsample.0", "upsample.2", "conv_last"]
    assert list(sd) == official_keys([6] * 6, head)
    assert {v.dtype for v in sd.values()} == {torch.float32}
    prefix = "layers.0.residual_group.blocks.0."
    expected_shapes = {  # inner width 360, dt_rank 12, d_state 16, 4 directions
        "self_attention.x_proj_weight": (4, 12 + 2 * 16, 360),
        "self_attention.dt_projs_weight": (4, 360, 12),
        "self_attention.dt_projs_bias": (4, 360),
        "self_attention.A_logs": (4 * 360, 16),
        "self_attention.Ds": (4 * 360,),
        "self_attention.in_proj.weight": (720, 180),
        "self_attention.conv2d.weight": (360, 1, 3, 3),
        "self_attention.out_proj.weight": (180, 360),
        "conv_blk.cab.0.weight": (60, 180, 3, 3),
        "conv_blk.cab.3.attention.1.weight": (6, 180, 1, 1),
    }
    assert {k: tuple(sd[prefix + k].shape) for k in expected_shapes} == expected_shapes
    assert tuple(sd["upsample.2.weight"].shape) == (256, 64, 3, 3)
    assert tuple(sd["conv_last.weight"].shape) == (3, 64, 3, 3)


def test_classic_x4_runs_on_odd_input(classic_x4):
    with torch.no_grad():
        out = classic_x4(torch.rand(1, 3, 3, 5))
    assert out.shape == (1, 3, 12, 20)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("upscale, count", [(2, 905_016), (3, 913_131), (4, 924_492)])
def test_light_sr_state_dict(upscale, count):
    model = MambaIR(**{**LIGHT_X4, "upscale": upscale})
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == count
    assert list(sd) == official_keys([6] * 4, ["upsample.0"], light=True)
    prefix = "layers.0.residual_group.blocks.0.conv_blk.cab."
    assert tuple(sd[prefix + "1.weight"].shape) == (30, 1, 3, 3)  # depthwise
    assert tuple(sd[prefix + "4.weight"].shape) == (60, 1, 3, 3)  # depthwise, dilated
    assert tuple(sd[prefix + "5.attention.1.weight"].shape) == (2, 60, 1, 1)
    assert tuple(sd["upsample.0.weight"].shape) == (3 * upscale**2, 60, 3, 3)


def test_tiny_state_dict_exact():
    sd = make(depths=[1], upscale=2, upsampler="pixelshuffle").state_dict()
    p = "layers.0.residual_group.blocks.0."
    expected = [
        ("conv_first.weight", (30, 3, 3, 3)), ("conv_first.bias", (30,)),
        ("patch_embed.norm.weight", (30,)), ("patch_embed.norm.bias", (30,)),
        (p + "skip_scale", (30,)), (p + "skip_scale2", (30,)), (p + "ln_1.weight", (30,)), (p + "ln_1.bias", (30,)),
        (p + "self_attention.x_proj_weight", (4, 10, 36)), (p + "self_attention.dt_projs_weight", (4, 36, 2)),
        (p + "self_attention.dt_projs_bias", (4, 36)), (p + "self_attention.A_logs", (144, 4)),
        (p + "self_attention.Ds", (144,)), (p + "self_attention.in_proj.weight", (72, 30)),
        (p + "self_attention.conv2d.weight", (36, 1, 3, 3)), (p + "self_attention.conv2d.bias", (36,)),
        (p + "self_attention.out_norm.weight", (36,)), (p + "self_attention.out_norm.bias", (36,)),
        (p + "self_attention.out_proj.weight", (30, 36)),
        (p + "conv_blk.cab.0.weight", (10, 30, 3, 3)), (p + "conv_blk.cab.0.bias", (10,)),
        (p + "conv_blk.cab.2.weight", (30, 10, 3, 3)), (p + "conv_blk.cab.2.bias", (30,)),
        (p + "conv_blk.cab.3.attention.1.weight", (1, 30, 1, 1)), (p + "conv_blk.cab.3.attention.1.bias", (1,)),
        (p + "conv_blk.cab.3.attention.3.weight", (30, 1, 1, 1)), (p + "conv_blk.cab.3.attention.3.bias", (30,)),
        (p + "ln_2.weight", (30,)), (p + "ln_2.bias", (30,)),
        ("layers.0.conv.weight", (30, 30, 3, 3)), ("layers.0.conv.bias", (30,)),
        ("norm.weight", (30,)), ("norm.bias", (30,)),
        ("conv_after_body.weight", (30, 30, 3, 3)), ("conv_after_body.bias", (30,)),
        ("conv_before_upsample.0.weight", (64, 30, 3, 3)), ("conv_before_upsample.0.bias", (64,)),
        ("upsample.0.weight", (256, 64, 3, 3)), ("upsample.0.bias", (256,)),
        ("conv_last.weight", (3, 64, 3, 3)), ("conv_last.bias", (3,)),
    ]
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected


def test_initialisation():
    model = make(embed_dim=60, depths=[2])  # d_inner int(1.2 * 60) = 72, d_state 4
    ssm = model.layers[0].residual_group.blocks[0].self_attention
    assert torch.equal(ssm.A_logs, torch.log(torch.arange(1.0, 5.0)).repeat(4 * 72, 1))
    assert torch.equal(ssm.Ds, torch.ones(4 * 72))
    dt = F.softplus(ssm.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert ssm.x_proj_weight.abs().max() <= 72 ** -0.5
    assert ssm.dt_projs_weight.abs().max() <= 4 ** -0.5  # dt_rank = ceil(60 / 16) = 4
    assert abs(ssm.in_proj.weight.std().item() - 0.02) < 0.002
    assert torch.equal(model.norm.weight, torch.ones(60))


def test_ss2d_scans_four_directions():
    """Independent check of the scan orders: gather each pixel order explicitly, scan, scatter back, sum."""
    torch.manual_seed(0)
    ssm = SS2D(d_model=8, d_state=3, expand=1.0)
    with torch.no_grad():
        ssm.dt_projs_bias.normal_()  # make directions differ
        ssm.A_logs.add_(torch.rand_like(ssm.A_logs))
    x = torch.randn(2, 8, 3, 5)
    h, w, d = 3, 5, 8
    rows = torch.arange(h * w)
    cols = rows.view(h, w).t().flatten()
    orders = [rows, cols, rows.flip(0), cols.flip(0)]
    flat = x.flatten(2)
    expected = torch.zeros_like(flat)
    for k, order in enumerate(orders):
        u = flat[:, :, order]
        dbl = torch.einsum("cd,bdl->bcl", ssm.x_proj_weight[k], u)
        dts, bs, cs = dbl.split([ssm.dt_rank, 3, 3], dim=1)
        delta = torch.einsum("dr,brl->bdl", ssm.dt_projs_weight[k], dts)
        part = slice(k * d, (k + 1) * d)
        y = reference_selective_scan(u, delta, -torch.exp(ssm.A_logs[part]), bs[:, None], cs[:, None],
                                     ssm.Ds[part], ssm.dt_projs_bias[k])
        expected[:, :, order] += y
    with torch.no_grad():
        torch.testing.assert_close(ssm._scan(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "upsampler, upscale",
    [("pixelshuffle", 2), ("pixelshuffle", 3), ("pixelshuffle", 4), ("pixelshuffledirect", 2),
     ("pixelshuffledirect", 3), ("pixelshuffledirect", 4), ("nearest+conv", 2), ("nearest+conv", 4), ("", 1)],
)
def test_forward_backward_shapes(upsampler, upscale):
    model = make(upsampler=upsampler, upscale=upscale).train()
    x = torch.rand(1, 3, 10, 12, requires_grad=True)
    out = model(x)
    assert out.shape == (1, 3, 10 * upscale, 12 * upscale)
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("size", [(1, 1), (1, 6), (7, 5), (9, 4)])
def test_any_input_size(size):
    model = make(upsampler="pixelshuffle", upscale=2, resi_connection="3conv").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, 2 * size[0], 2 * size[1])


def test_grayscale_denoiser_keeps_size():
    model = make(in_chans=1, upscale=1, upsampler="").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 6, 9)).shape == (1, 1, 6, 9)


def test_use_checkpoint_matches_plain(monkeypatch):
    """Same output and gradients, including stochastic depth in training (the RNG state is replayed)."""
    calls = []
    real_checkpoint = mambair_arch.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(mambair_arch, "checkpoint", counting_checkpoint)
    results = []
    for use_checkpoint in (False, True):
        model = make(upsampler="pixelshuffle", upscale=2, drop_path_rate=0.5, use_checkpoint=use_checkpoint)
        model.train()
        x = torch.rand(2, 3, 7, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        torch.manual_seed(123)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}))
    assert calls == [{"use_reentrant": False}] * 2  # one per block
    (out0, gx0, g0), (out1, gx1, g1) = results
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-7)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7, msg=name)


def test_use_checkpoint_property():
    model = make(use_checkpoint=True)
    assert model.use_checkpoint
    model.use_checkpoint = False
    assert not any(group.residual_group.use_checkpoint for group in model.layers)


@pytest.mark.parametrize("layout", CHECKPOINT_LAYOUTS)
def test_strict_load_round_trip(tmp_path, layout):
    check_strict_load_round_trip(lambda seed: make(seed=seed, upsampler="pixelshuffle", upscale=2), tmp_path, layout,
                                 (1, 3, 6, 5))


def test_strict_load_rejects_other_layout(tmp_path):
    source = make(upsampler="pixelshuffledirect", upscale=2)  # light CAB: other keys
    path = tmp_path / "net_g.pth"
    torch.save({"params": source.state_dict()}, path)
    with pytest.raises(WeightsError, match=r"net_g\.pth does not fit MambaIR: missing \d+ key\(s\) \(layers\.0"):
        load_pretrained(make(upsampler="pixelshuffle", upscale=2), path)


def test_registered_in_basicsr():
    check_registered("MambaIR", MambaIR, {**TINY, "upsampler": "pixelshuffle", "upscale": 2}, scale=2)


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 4, 8, 8), (1, 1, 8, 8), (1, 3, 1, 8, 8)])
def test_bad_input_raises(shape):
    model = make()
    with pytest.raises(ValueError, match=r"expects a \(B, 3, H, W\) tensor"):
        model(torch.rand(*shape))


@pytest.mark.parametrize(
    "overrides, message",
    [({"upsampler": "bicubic"}, "upsampler must be one of"), ({"resi_connection": "2conv"}, "resi_connection"),
     ({"patch_size": 2}, "patch_size must be 1"), ({"upsampler": "pixelshuffle", "upscale": 5}, "2\\^n and 3"),
     ({"upsampler": "nearest+conv", "upscale": 3}, "supports upscale 2 and 4"),
     ({"embed_dim": 12}, "^MambaIR: embed_dim: must be >= 30, got 12$")],
)
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_declared_ranges_are_checked_in_python_too():
    check_declared_ranges_at_construction(MambaIR, TINY)
    with pytest.raises(ValueError, match=r"^MambaIR: img_size\[1\]: must be >= 1, got 0$"):
        make(img_size=(64, 0))  # a member of Count | tuple[Count, Count]
    with pytest.raises(ValueError, match=r"^MambaIR: img_size: must be >= 1, got 0$"):
        make(img_size=0)
    make(img_size=[48, 64])  # a list passes for the tuple, as in an option file


def test_declared_types_are_checked_in_python() -> None:
    """A value of the wrong type fails at construction in one line (was: deep inside torch, or a network built on
    it), as the option check words it; a list or tuple where the schema takes either builds."""
    check_declared_types_at_construction(MambaIR, TINY)
    with pytest.raises(ValueError, match=r"^MambaIR: embed_dim: expected an integer, got float 36.5$"):
        MambaIR(embed_dim=36.5)
    with pytest.raises(ValueError, match=r"^MambaIR: img_size: expected an integer, got str 'a' or expected a list, "
                                         r"got str 'a'$"):
        MambaIR(img_size="a")  # Count | tuple[Count, Count]: both members' words, as the option check joins them
