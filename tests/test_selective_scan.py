"""Selective scan: values and gradients against a step-by-step reference, saved memory, backend selection."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ldt.ops import ENV_VAR, get_scan_backend, resolve_scan_backend, selective_scan_fn, set_scan_backend
from ldt.ops import selective_scan as scan_module

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def reference_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """The recurrence written literally, one time step at a time, in float64. Returns (out, last_state)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    dt = delta + delta_bias.double()[:, None] if delta_bias is not None else delta
    if delta_softplus:
        dt = F.softplus(dt)

    def at(bc: Tensor, t: int) -> Tensor:  # (batch or 1, dim, N) at step t
        if bc.dim() == 2:
            return bc.unsqueeze(0)
        if bc.dim() == 3:
            return bc[:, None, :, t]
        return bc[:, :, :, t].repeat_interleave(dim // bc.shape[1], dim=1)

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * at(B, t) * u[:, :, t, None]
        ys.append((h * at(C, t)).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


@dataclass
class Config:
    batch: int = 2
    dim: int = 6
    state: int = 4
    length: int = 20
    chunk: int = 8
    bc: str = "grouped"  # grouped (batch, G, N, L) | flat (batch, N, L) | invariant (dim, N) | mixed (B invariant)
    groups: int = 2
    D: bool = False
    z: bool = False
    bias: bool = False
    softplus: bool = False
    last_state: bool = False
    small_steps: bool = False  # MambaIR-like step sizes softplus(delta + bias) ~ 1e-3..1e-2 (needs bias, softplus)


CONFIGS = {
    "plain G=1": Config(groups=1),
    "all options G=2": Config(D=True, z=True, bias=True, softplus=True, last_state=True),
    "G=3 D only, L multiple of chunk": Config(groups=3, length=24, D=True),
    "z and softplus, L < chunk": Config(length=5, chunk=16, z=True, softplus=True, last_state=True),
    "bias, chunk 1": Config(length=7, chunk=1, bias=True, D=True),
    "L=1": Config(length=1, chunk=4, D=True, z=True, last_state=True),
    "G=dim": Config(groups=6, length=13, chunk=5, softplus=True, bias=True),
    "flat B/C (batch, N, L)": Config(bc="flat", length=11, chunk=4, D=True, softplus=True, bias=True),
    "time-invariant B and C": Config(bc="invariant", length=9, chunk=4, D=True, z=True),
    "invariant B, grouped C": Config(
        bc="mixed", groups=3, length=10, chunk=3, softplus=True, bias=True, last_state=True
    ),
    "MambaIR-like small steps": Config(length=33, chunk=16, D=True, bias=True, softplus=True, small_steps=True),
    "odd chunk, long": Config(batch=1, dim=4, state=3, length=67, chunk=13, D=True, softplus=True, bias=True),
}


def make_inputs(
    cfg: Config, dtype: torch.dtype = torch.float64, device: str = "cpu", seed: int = 0
) -> dict[str, Tensor | None]:
    """MambaIR-like values: A = -exp(A_log) < 0, softplus(delta + bias) of order 0.01..1."""
    gen = torch.Generator().manual_seed(seed)
    b, d, n, L, g = cfg.batch, cfg.dim, cfg.state, cfg.length, cfg.groups

    def rand(*shape: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)

    shapes = {"grouped": (b, g, n, L), "flat": (b, n, L), "invariant": (d, n)}
    b_shape = shapes["invariant" if cfg.bc in ("invariant", "mixed") else cfg.bc]
    c_shape = shapes["grouped" if cfg.bc == "mixed" else cfg.bc]
    tensors: dict[str, Tensor | None] = {
        "u": rand(b, d, L),
        "delta": rand(b, d, L, scale=0.5, shift=-1.0) if cfg.softplus else rand(b, d, L, scale=0.2, shift=0.3).abs(),
        "A": -torch.exp(rand(d, n, scale=0.5)).to(dtype),
        "B": rand(*b_shape),
        "C": rand(*c_shape),
        "D": rand(d) if cfg.D else None,
        "z": rand(b, d, L) if cfg.z else None,
        "delta_bias": rand(d, scale=0.3, shift=-5.0 if cfg.small_steps else 0.0) if cfg.bias else None,
    }
    return {k: None if t is None else t.requires_grad_() for k, t in tensors.items()}


def run_both(
    cfg: Config, dtype: torch.dtype, device: str = "cpu", backend: str = "torch"
) -> tuple[list[Tensor], list[Tensor]]:
    """Outputs then gradients of every tensor input: ``backend``'s (in ``dtype``) first, then the float64 reference."""
    inputs = make_inputs(cfg, dtype, device)
    ours = selective_scan_fn(
        **inputs, delta_softplus=cfg.softplus, return_last_state=True, backend=backend, chunk_size=cfg.chunk
    )
    exact = {k: None if t is None else t.detach().double().requires_grad_() for k, t in inputs.items()}
    ref = reference_scan(**exact, delta_softplus=cfg.softplus)
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(ref[0].shape, generator=gen, dtype=torch.float64).to(device)
    grad_last = torch.randn(ref[1].shape, generator=gen, dtype=torch.float64).to(device) if cfg.last_state else None
    results = []
    for (out, last), leaves in ((ours, inputs), (ref, exact)):
        loss = (out.double() * grad_out).sum()
        if grad_last is not None:
            loss = loss + (last.double() * grad_last).sum()
        results.append([out, last, *torch.autograd.grad(loss, [t for t in leaves.values() if t is not None])])
    return results[0], results[1]


@pytest.fixture(autouse=True)
def _clean_backend_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_scan_backend(None)
    yield
    set_scan_backend(None)


@pytest.fixture(params=["parallel scan", "loops"])
def recurrence(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the torch backend's within-chunk recurrences both ways, whatever the size rule would pick."""
    monkeypatch.setattr(scan_module, "SEQUENTIAL_STEP_ELEMENTS", {"cpu": 0} if request.param == "loops" else {})
    return request.param


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference_float64(name: str, recurrence: str) -> None:
    ours, ref = run_both(CONFIGS[name], torch.float64)
    for a, b in zip(ours, ref):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference_float32(name: str, recurrence: str) -> None:
    ours, ref = run_both(CONFIGS[name], torch.float32)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        scale = b.abs().max().item() + 1e-6
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * scale)


def test_output_dtypes_and_shapes() -> None:
    inputs = make_inputs(Config(D=True, z=True, bias=True), torch.float32)
    inputs["u"] = inputs["u"].detach().bfloat16().requires_grad_()
    out, last = selective_scan_fn(**inputs, return_last_state=True)
    assert out.dtype == torch.bfloat16 and out.shape == inputs["u"].shape
    assert last.dtype == torch.float32 and last.shape == (2, 6, 4)
    out.float().sum().backward()
    assert inputs["u"].grad.dtype == torch.bfloat16
    ref, _ = reference_scan(**inputs)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


def test_autocast_does_not_lower_precision() -> None:
    inputs = make_inputs(Config(D=True, bias=True, softplus=True), torch.float32)
    plain = selective_scan_fn(**inputs, delta_softplus=True, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = selective_scan_fn(**inputs, delta_softplus=True, chunk_size=8)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain)


def test_non_contiguous_inputs() -> None:
    cfg = Config(D=True, softplus=True)
    inputs = make_inputs(cfg, torch.float64)
    strided = {
        k: None if t is None else t.detach().transpose(0, -1).contiguous().transpose(0, -1) for k, t in inputs.items()
    }
    assert not strided["u"].is_contiguous()
    torch.testing.assert_close(
        selective_scan_fn(**strided, delta_softplus=True, chunk_size=cfg.chunk),
        selective_scan_fn(**inputs, delta_softplus=True, chunk_size=cfg.chunk),
    )


@pytest.mark.parametrize("bc", ["grouped", "invariant"])
def test_gradcheck(bc: str, recurrence: str) -> None:
    cfg = Config(batch=2, dim=4, state=3, length=7, chunk=3, bc=bc, D=True, z=True, bias=True, softplus=True)
    inputs = make_inputs(cfg, torch.float64)
    keys = [k for k, t in inputs.items() if t is not None]

    def fn(*tensors: Tensor) -> tuple[Tensor, Tensor]:
        kwargs = dict(zip(keys, tensors))
        return selective_scan_fn(**kwargs, delta_softplus=True, return_last_state=True, chunk_size=cfg.chunk)

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in keys])


def test_stable_for_large_decay_and_correct_for_positive_A() -> None:
    cfg = Config(batch=1, dim=3, state=4, length=96, chunk=64, groups=1, softplus=True, bias=True, D=True)
    inputs = make_inputs(cfg, torch.float32)
    with torch.no_grad():
        inputs["A"].mul_(1000.0)  # dt * A reaches -1e3 per step: exp of a cumulative sum would overflow
        inputs["delta_bias"].add_(3.0)
    out = selective_scan_fn(**inputs, delta_softplus=True, chunk_size=cfg.chunk)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs.values() if t is not None)
    torch.testing.assert_close(out.double(), reference_scan(**inputs, delta_softplus=True)[0], rtol=1e-4, atol=1e-4)

    growing = make_inputs(Config(length=30, chunk=7), torch.float64)
    with torch.no_grad():
        growing["A"].copy_(0.05 * growing["A"].abs())
    ours, ref = selective_scan_fn(**growing, chunk_size=7), reference_scan(**growing)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def saved_bytes(fn) -> int:  # noqa: ANN001 - any callable
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_saved_memory_is_inputs_plus_chunk_boundaries() -> None:
    cfg = Config(batch=2, dim=128, state=16, length=512, chunk=32, groups=2, D=True, bias=True, softplus=True)
    inputs = make_inputs(cfg, torch.float32)
    input_bytes = sum(t.untyped_storage().nbytes() for t in inputs.values() if t is not None)
    n_chunks = -(-cfg.length // cfg.chunk)
    boundary_bytes = cfg.batch * cfg.dim * n_chunks * cfg.state * 4
    all_states_bytes = cfg.batch * cfg.dim * cfg.length * cfg.state * 4  # what the naive autograd graph keeps

    ours = saved_bytes(lambda: selective_scan_fn(**inputs, delta_softplus=True, chunk_size=cfg.chunk))
    assert ours <= input_bytes + boundary_bytes
    assert ours < all_states_bytes / 4
    # The budget is tight enough to reject a scan whose autograd graph keeps per-step states.
    assert saved_bytes(lambda: reference_scan(**inputs, delta_softplus=True)) > input_bytes + boundary_bytes


def test_loops_only_on_cpus_and_for_large_steps() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not scan_module._sequential(cpu, 1, 256, 16)  # 4096 elements per step: the parallel scan was faster
    assert scan_module._sequential(cpu, 1, 512, 16)
    assert not scan_module._sequential(cuda, 64, 1440, 16)


def test_default_chunk_size() -> None:
    assert scan_module.default_chunk_size(4, 1440, 16) == 256  # MambaIR x4 training batch
    assert scan_module.default_chunk_size(1, 4, 2) == 1024
    assert scan_module.default_chunk_size(1024, 1440, 16) == 16
    cfg = Config(length=40, D=True)
    inputs = make_inputs(cfg, torch.float64)
    torch.testing.assert_close(selective_scan_fn(**inputs), reference_scan(**inputs)[0])


# ------------------------------------------------------------------------------------------------ backend selection


def test_backend_defaults_to_auto_and_torch_on_cpu() -> None:
    assert get_scan_backend() == "auto"
    assert resolve_scan_backend("cpu") == "torch"


def test_backend_from_env_var_and_setter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, " Torch ")
    assert get_scan_backend() == "torch"
    monkeypatch.setenv(ENV_VAR, "cuda")
    assert get_scan_backend() == "cuda"
    set_scan_backend("torch")  # the setter wins over the environment
    assert get_scan_backend() == "torch"
    set_scan_backend(None)
    assert get_scan_backend() == "cuda"


def test_invalid_backend_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown selective-scan backend 'mamba'.*auto, cuda, triton, torch"):
        set_scan_backend("mamba")
    inputs = make_inputs(Config(), torch.float64)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fast'"):
        selective_scan_fn(**inputs, backend="fast")
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=f"'gpu' \\(from environment variable {ENV_VAR}\\)"):
        selective_scan_fn(**inputs)


def test_cuda_backend_without_mamba_ssm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_module, "_mamba", (None, "ModuleNotFoundError: No module named 'mamba_ssm'"))
    with pytest.raises(RuntimeError, match="mamba_ssm's kernel cannot be imported.*No module named 'mamba_ssm'"):
        resolve_scan_backend("cuda", "cuda")
    monkeypatch.setattr(scan_module, "_triton", (SimpleNamespace(INTERPRETED=False), ""))
    monkeypatch.setattr(scan_module, "_triton_checked", {"cuda": "the Triton kernels failed a probe run"})
    assert resolve_scan_backend("cuda", "auto") == "torch"
    inputs = make_inputs(Config(), torch.float64)
    with pytest.raises(ValueError, match="'cuda' needs CUDA tensors"):
        selective_scan_fn(**inputs, backend="cuda")


def test_auto_prefers_the_kernel_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_module, "_mamba", (lambda *args: None, ""))
    monkeypatch.setattr(scan_module, "_triton", (SimpleNamespace(INTERPRETED=True), ""))
    monkeypatch.setattr(scan_module, "_triton_checked", {"cuda": ""})
    assert resolve_scan_backend("cuda") == "cuda"
    assert resolve_scan_backend("cpu") == "torch"  # even when the interpreted kernels could run there
    assert resolve_scan_backend("cuda", "torch") == "torch"
    assert resolve_scan_backend("cuda", "triton") == "triton"


def test_auto_takes_triton_when_mamba_ssm_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_module, "_mamba", (None, "ModuleNotFoundError: No module named 'mamba_ssm'"))
    monkeypatch.setattr(scan_module, "_triton", (SimpleNamespace(INTERPRETED=False), ""))
    monkeypatch.setattr(scan_module, "_triton_checked", {"cuda": ""})
    assert resolve_scan_backend("cuda") == "triton"
    assert resolve_scan_backend("cpu") == "torch"


def test_triton_backend_never_falls_back_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = make_inputs(Config(), torch.float64)
    monkeypatch.setattr(scan_module, "_triton", (None, "ModuleNotFoundError: No module named 'triton'"))
    with pytest.raises(RuntimeError, match="'triton' was requested but cannot run: triton cannot be imported"):
        selective_scan_fn(**inputs, backend="triton")
    monkeypatch.setattr(scan_module, "_triton", (SimpleNamespace(INTERPRETED=False), ""))
    with pytest.raises(RuntimeError, match="need CUDA or ROCm tensors, got tensors on cpu.*TRITON_INTERPRET=1"):
        selective_scan_fn(**inputs, backend="triton")
    monkeypatch.setattr(scan_module, "_triton_checked", {"cuda": "the Triton kernels failed a probe run on cuda"})
    with pytest.raises(RuntimeError, match="'triton' was requested but cannot run: the Triton kernels failed a probe"):
        resolve_scan_backend("cuda", "triton")
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="'triton' was requested"):
        selective_scan_fn(**inputs)


def test_triton_probe_rejects_wrong_or_failing_kernels() -> None:
    def perturbed_forward(*args: object) -> tuple[Tensor, Tensor, Tensor]:
        out, last, bounds = scan_module._torch_forward(*args)
        return out * 1.01, last, bounds

    def failing_backward(*args: object) -> tuple[Tensor, ...]:
        raise RuntimeError("PTX assembly aborted")

    exact = SimpleNamespace(forward=scan_module._torch_forward, backward=scan_module._torch_backward)
    wrong = SimpleNamespace(forward=perturbed_forward, backward=scan_module._torch_backward)
    broken = SimpleNamespace(forward=scan_module._torch_forward, backward=failing_backward)
    cpu = torch.device("cpu")
    assert scan_module._probe_triton(exact, cpu) == ""
    assert "a probe run on cpu (AssertionError: Tensor-likes are not close" in scan_module._probe_triton(wrong, cpu)
    assert scan_module._probe_triton(broken, cpu).endswith("(RuntimeError: PTX assembly aborted)")


def test_backend_is_logged_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(scan_module, "_logged_backends", set())
    inputs = make_inputs(Config(), torch.float64)
    with caplog.at_level(logging.INFO, logger="ldt.ops"):
        selective_scan_fn(**inputs)
        selective_scan_fn(**inputs)
    records = [r for r in caplog.records if r.name == "ldt.ops"]
    assert len(records) == 1
    assert "using backend 'torch' (requested 'auto', tensors on cpu: cpu tensors" in records[0].getMessage()


# ------------------------------------------------------------------------------------------------ custom op, compile

OP_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.mark.parametrize(
    ("cfg", "dtype", "chunk"),
    [
        (Config(length=13, D=True, z=True, bias=True, softplus=True), torch.float64, 4),
        (Config(bc="invariant", length=13), torch.float32, None),
    ],
)
def test_custom_ops_pass_opcheck(cfg: Config, dtype: torch.dtype, chunk: int | None) -> None:
    """Schema, fake (meta) implementations against the real ones (shapes, strides, dtypes), autograd registration
    and AOT dispatch with dynamic shapes, for the forward op and the backward op."""
    inputs = make_inputs(cfg, dtype)
    args = [inputs[k] for k in OP_ARGS]
    torch.library.opcheck(scan_module._scan_op, (*args, cfg.softplus, chunk, "torch"))
    out, last, bounds = scan_module._scan_op(*args, cfg.softplus, chunk, "torch")
    detached = [None if t is None else t.detach() for t in args]
    grads = (torch.randn_like(out), torch.randn_like(last))
    backward_args = (*grads, *detached, bounds.detach(), cfg.softplus, chunk, "torch")
    torch.library.opcheck(scan_module._scan_backward_op, backward_args)


class _ScanBlock(torch.nn.Module):
    """A Mamba-like block: projections around the scan, parameters A_log, D and the step bias."""

    def __init__(self, dim: int = 6, state: int = 4, groups: int = 2) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.groups, self.state = groups, state
        self.in_proj = torch.nn.Linear(dim, dim * 2)
        self.bc_proj = torch.nn.Linear(dim, 2 * groups * state)
        self.A_log = torch.nn.Parameter(torch.randn(dim, state, generator=gen) * 0.5)
        self.D = torch.nn.Parameter(torch.randn(dim, generator=gen))
        self.dt_bias = torch.nn.Parameter(torch.randn(dim, generator=gen) * 0.3)

    def forward(self, x: Tensor) -> Tensor:  # (batch, L, dim) -> (batch, L, dim)
        batch, length, _ = x.shape
        u, delta = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        B, C = self.bc_proj(x).transpose(1, 2).reshape(batch, 2, self.groups, self.state, length).unbind(1)
        y = selective_scan_fn(
            u, delta, -torch.exp(self.A_log), B, C, self.D, z=None, delta_bias=self.dt_bias, delta_softplus=True
        )
        return y.transpose(1, 2)


def test_torch_compile_fullgraph_has_the_scan_as_one_op() -> None:
    """fullgraph=True fails on any graph break; the captured graph must hold the custom op (not the Python scan),
    and compiled values and gradients must equal eager ones, also after a recompile for a new sequence length."""
    torch._dynamo.reset()
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., object]:
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    block = _ScanBlock()
    compiled = torch.compile(block, fullgraph=True, backend=recording_backend)
    gen = torch.Generator().manual_seed(3)
    for length in (9, 14):
        x = torch.randn(2, length, 6, generator=gen, requires_grad=True)
        eager_out = block(x)
        eager_grads = torch.autograd.grad(eager_out.square().sum(), [x, *block.parameters()])
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
        torch.testing.assert_close(out, eager_out)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e)
    assert graphs and all("torch.ops.ldt.selective_scan.default" in gm.code for gm in graphs)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ bad input


def _bad(name: str, value: object) -> dict[str, object]:
    inputs: dict[str, object] = dict(make_inputs(Config(dim=8, groups=2), torch.float32))
    inputs[name] = value
    return inputs


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("u", torch.zeros(2, 8), "u must have shape"),
        ("u", torch.zeros(2, 8, 20, dtype=torch.long), "u must be a real floating-point tensor"),
        ("delta", torch.zeros(2, 8, 19), "delta must have u's shape"),
        ("A", torch.zeros(7, 4), "A must have shape"),
        ("A", torch.zeros(8, 4, dtype=torch.complex64), "A must be a real floating-point tensor"),
        ("B", torch.zeros(2, 2, 4, 19), "B of shape \\(batch, groups, state, length\\)"),
        ("B", torch.zeros(2, 3, 4, 20), "B of shape .*divisible by G"),
        ("B", torch.zeros(2, 4), "B of shape \\(dim, state\\)"),
        ("C", torch.zeros(2, 5, 20), "C of shape \\(batch, state, length\\)"),
        ("C", torch.zeros(2, 2, 4, 20, 1), "C must have shape"),
        ("C", torch.zeros(2, 4, 4, 20), "B and C must use the same number of groups"),
        ("D", torch.zeros(8, 1), "D must have shape"),
        ("z", torch.zeros(2, 8, 21), "z must have u's shape"),
        ("delta_bias", torch.zeros(4), "delta_bias must have shape"),
        ("chunk_size", 0, "chunk_size must be a positive int"),
    ],
)
def test_bad_input_names_the_argument(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        selective_scan_fn(**_bad(name, value))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_torch_backend_matches_reference(dtype: torch.dtype) -> None:
    cfg = CONFIGS["all options G=2"]
    ours, ref = run_both(cfg, dtype, device="cuda")
    for a, b in zip(ours, ref):
        assert a.is_cuda
        scale = b.abs().max().item() + 1e-6
        tol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-4, 1e-5 * scale)
        torch.testing.assert_close(a.double(), b, rtol=tol[0], atol=tol[1])


@pytest.mark.skipif(
    not torch.cuda.is_available() or scan_module._load_mamba() is None, reason="needs CUDA and mamba_ssm"
)
def test_mamba_kernel_matches_torch_backend() -> None:
    cfg = Config(batch=2, dim=64, state=16, length=300, chunk=64, groups=4, D=True, z=True, bias=True, softplus=True)
    inputs = make_inputs(cfg, torch.float32, device="cuda")
    kernel = selective_scan_fn(**inputs, delta_softplus=True, backend="cuda")
    ours = selective_scan_fn(**inputs, delta_softplus=True, backend="torch", chunk_size=cfg.chunk)
    torch.testing.assert_close(kernel, ours, rtol=1e-4, atol=1e-4)


def test_a_misspelled_backend_name_gets_a_did_you_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "trition")
    with pytest.raises(ValueError, match=r"unknown selective-scan backend 'trition' \(did you mean 'triton'\?\) "
                                         f"\\(from environment variable {ENV_VAR}\\)"):
        get_scan_backend()
    with pytest.raises(ValueError, match=r"'Torhc' \(did you mean 'torch'\?\) \(from set_scan_backend\)"):
        set_scan_backend("Torhc")
    with pytest.raises(ValueError, match=r"'fast' \(from set_scan_backend\)"):  # nothing close: no hint
        set_scan_backend("fast")


def test_ldt_ops_imports_neither_pydantic_nor_basicsr() -> None:
    """The hint comes from ldt.cli (standard library only): ldt.ops stays usable without the training stack."""
    code = "import sys, ldt.ops; print(sorted(m for m in ('pydantic', 'basicsr', 'yaml') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]"
