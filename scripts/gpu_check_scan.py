"""GPU check of the triton selective-scan backend, in one run: parity, benchmark, tile sweep.

1. Parity of the triton backend with the torch backend (and both with the torch backend in float64), outputs and
   every gradient, at MambaIR x4 training size (batch 4, 48x48 LR patches: L=2304, 4 directions x 360 channels:
   dim 1440 in 4 B/C groups as SS2D stacks them, state 16, D, delta_bias, softplus, float32) and on two smaller
   problems that cover z, the last state's gradient, bf16 inputs, lengths off the tile size and time-invariant B/C.
2. ``scripts/benchmark_scan.py`` at MambaIR size with its torch, triton and (where mamba_ssm imports) cuda rows.
3. Median forward / forward+backward times of the triton backend (``triton.testing.do_bench``, L2 flushed between
   runs) for a few tile shapes (``ldt.ops.scan_triton`` knobs), to pick the defaults.

Usage, on a CUDA (or ROCm) machine: ``python scripts/gpu_check_scan.py [--no-sweep]``. Exit status 1 when a parity
check fails or the triton backend cannot run. Targets (issue 13, H100/H200): forward+backward <= 2 ms per call at
MambaIR size, saved memory no more than the torch backend's; both are printed as PASS/MISS at the end.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark_scan  # noqa: E402
from ldt.ops import resolve_scan_backend, selective_scan_fn  # noqa: E402

MAMBAIR = dict(batch=4, length=48 * 48, channels=4 * 360, groups=4, state=16)
NAMES = ("out", "last", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
# Relative error bounds, ||ours - theirs|| / ||theirs|| (float32 arithmetic lands far below 1e-4; bf16 inputs and
# gradients are rounded to 8 bits).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def make_inputs(
    batch: int, length: int, channels: int, groups: int, state: int, dtype: torch.dtype, z: bool, invariant_bc: bool
) -> dict[str, Tensor | None]:
    """MambaIR-like inputs (benchmark_scan's), plus z; B/C as (dim, state) when ``invariant_bc``. Fresh draws."""
    args = argparse.Namespace(batch=batch, length=length, channels=channels, groups=groups, state=state,
                              dtype=str(dtype).removeprefix("torch."))
    u, delta, A, B, C, D, delta_bias = benchmark_scan.make_inputs(args, torch.device("cuda"))
    if invariant_bc:
        B, C = (torch.randn(channels, state, device="cuda").requires_grad_() for _ in range(2))
    gate = torch.randn(batch, channels, length, device="cuda").to(dtype).requires_grad_() if z else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=gate, delta_bias=delta_bias)


def run(inputs: dict[str, Tensor | None], backend: str, weights: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """Output, last state and the gradients of ``sum(out * w) + sum(last * w_last)``; freed memory is filled with
    NaN first, so an output element the kernels never write shows up."""
    torch.full((1 << 28,), math.nan, device="cuda")  # returned to the caching allocator right away, NaN inside
    out, last = selective_scan_fn(
        **inputs, delta_softplus=True, return_last_state=True, backend=backend
    )
    leaves = {k: t for k, t in inputs.items() if t is not None}
    loss = (out.double() * weights[0]).sum() + (last.double() * weights[1]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    results = {"out": out.detach(), "last": last.detach()}
    results.update({f"d{k}": g for k, g in zip(leaves, grads)})
    return results


def parity(name: str, inputs: dict[str, Tensor | None], dtype: torch.dtype) -> bool:
    """Triton vs torch backend, and both vs the torch backend on float64 copies; prints one line per tensor."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    u = inputs["u"]
    weights = (torch.randn(u.shape, generator=gen, device="cuda", dtype=torch.float64),
               torch.randn(u.shape[0], u.shape[1], inputs["A"].shape[1], generator=gen, device="cuda",
                           dtype=torch.float64))
    ours = run(inputs, "triton", weights)
    theirs = run(inputs, "torch", weights)
    exact_inputs = {k: None if t is None else t.detach().double().requires_grad_() for k, t in inputs.items()}
    exact = run(exact_inputs, "torch", weights)
    print(f"\n## parity: {name}\n| tensor | triton vs torch | triton vs float64 | torch vs float64 | result |")
    print("|---|---|---|---|---|")
    ok = True
    for key in NAMES:
        if key not in ours:
            continue
        a, b, c = ours[key].double(), theirs[key].double(), exact[key]
        errors = [((x - y).norm() / y.norm().clamp_min(1e-30)).item() for x, y in ((a, b), (a, c), (b, c))]
        good = bool(torch.isfinite(a).all()) and errors[0] <= TOLERANCE[dtype] and errors[1] <= 2 * max(
            errors[2], TOLERANCE[dtype]
        )
        ok &= good
        print(f"| {key} | {errors[0]:.2e} | {errors[1]:.2e} | {errors[2]:.2e} | {'ok' if good else 'FAIL'} |")
    return ok


def median_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def timings(inputs: dict[str, Tensor | None]) -> tuple[float, float]:
    """Median forward and forward+backward ms of the triton backend (the benchmark's loss)."""
    leaves = [t for t in inputs.values() if t is not None]

    def forward() -> Tensor:
        return selective_scan_fn(**inputs, delta_softplus=True, backend="triton")

    def step() -> None:
        torch.autograd.grad(forward().float().square().mean(), leaves)

    with torch.no_grad():
        fwd = median_ms(forward)
    return fwd, median_ms(step)


def sweep(inputs: dict[str, Tensor | None], reference: Tensor) -> None:
    """Forward / forward+backward time per tile shape; the output must still match the torch backend's."""
    from ldt.ops import scan_triton

    knobs = ("TILE_ELEMENTS", "MAX_BLOCK_T", "MAX_BLOCK_D", "ELEMENTS_PER_THREAD")
    defaults = {k: getattr(scan_triton, k) for k in knobs}
    shapes = [
        (4096, 32, 8, 16), (4096, 32, 8, 8), (2048, 32, 4, 8), (2048, 16, 8, 8), (4096, 64, 4, 8), (8192, 64, 8, 16),
        (1024, 16, 4, 8),
    ]
    u, A, B, C = inputs["u"], inputs["A"], inputs["B"], inputs["C"]
    print(f"\n## triton tile sweep (MambaIR size)\n| {', '.join(knobs)} | blocks (d, n, t, tiles, warps) | fwd ms | "
          "fwd+bwd ms | max abs diff vs torch |\n|---|---|---|---|---|")
    try:
        for shape in shapes:
            for k, v in zip(knobs, shape):
                setattr(scan_triton, k, v)
            groups = max(t.shape[1] if t.dim() == 4 else 1 for t in (B, C))
            cfg = scan_triton.blocks(u.shape[1], groups, A.shape[1], u.shape[2], 256)
            try:
                with torch.no_grad():
                    out = selective_scan_fn(**inputs, delta_softplus=True, backend="triton")
                diff = (out.float() - reference.float()).abs().max().item()
                fwd, both = timings(inputs)
                print(f"| {shape} | {tuple(cfg)} | {fwd:.3f} | {both:.3f} | {diff:.2e} |")
            except Exception as exc:  # a shape that does not compile or fit is a result too
                print(f"| {shape} | {tuple(cfg)} | - | - | {type(exc).__name__}: {str(exc)[:120]} |")
    finally:
        for k, v in defaults.items():
            setattr(scan_triton, k, v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile-shape sweep")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA or ROCm GPU")
        return 1
    import triton

    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    try:
        print(f"auto picks '{resolve_scan_backend('cuda')}'; explicit: '{resolve_scan_backend('cuda', 'triton')}'")
    except RuntimeError as exc:
        print(f"the triton backend cannot run: {exc}")
        return 1

    ok = parity("MambaIR x4 training size, float32", make_inputs(**MAMBAIR, dtype=torch.float32, z=False,
                                                                    invariant_bc=False), torch.float32)
    small = dict(batch=2, length=1000, channels=192, groups=4, state=16)
    ok &= parity("z, last state, bf16 inputs, L=1000", make_inputs(**small, dtype=torch.bfloat16, z=True,
                                                                  invariant_bc=False), torch.bfloat16)
    ok &= parity("time-invariant B/C, z, state 8, L=77", make_inputs(
        batch=2, length=77, channels=24, groups=1, state=8, dtype=torch.float32, z=True, invariant_bc=True
    ), torch.float32)

    print("\n## scripts/benchmark_scan.py --device cuda --repeat 20 --warmup 3 --skip-naive")
    benchmark_scan.main(["--device", "cuda", "--repeat", "20", "--warmup", "3", "--skip-naive"])

    inputs = make_inputs(**MAMBAIR, dtype=torch.float32, z=False, invariant_bc=False)
    with torch.no_grad():
        reference = selective_scan_fn(**inputs, delta_softplus=True, backend="torch")
    if not args.no_sweep:
        sweep(inputs, reference)
    fwd, both = timings(inputs)
    saved = {b: benchmark_scan.saved_bytes(lambda b=b: selective_scan_fn(**inputs, delta_softplus=True, backend=b))[1]
             for b in ("triton", "torch")}
    print(f"\n## targets at MambaIR size (default tiles)\ntriton forward {fwd:.3f} ms, forward+backward {both:.3f} ms "
          f"(target <= 2 ms): {'PASS' if both <= 2.0 else 'MISS'}")
    print(f"saved for backward: triton {saved['triton'] / 2**20:.1f} MiB, torch {saved['torch'] / 2**20:.1f} MiB: "
          f"{'PASS' if saved['triton'] <= saved['torch'] else 'MISS'}")
    print(f"parity: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
