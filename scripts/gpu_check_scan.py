"""GPU check of the triton selective-scan backend, in one run: parity, benchmark, tile sweep.

1. Parity of the triton backend with the torch backend (and both with the torch backend in float64), outputs and
   every gradient, at MambaIR x4 training size (batch 4, 48x48 LR patches: L=2304, 4 directions x 360 channels:
   dim 1440 in 4 B/C groups as SS2D stacks them, state 16, D, delta_bias, softplus, float32) and on two smaller
   problems that cover z, the last state's gradient, bf16 inputs, lengths off the tile size and time-invariant B/C.
2. ``scripts/benchmark_scan.py`` at MambaIR size with its torch, triton and (where mamba_ssm imports) cuda rows.
3. Median forward / forward+backward times of the triton backend (``triton.testing.do_bench``, L2 flushed between
   runs) for a few tile shapes (``ldt.ops.scan_triton`` knobs), to pick the defaults.
4. ``scripts/benchmark.py --arch mambair`` (batch 4, 48x48 LR patches) per scan backend: the FT / LDT / LDT-S step.

Usage, on a CUDA (or ROCm) machine: ``python scripts/gpu_check_scan.py [--no-sweep] [--no-step]``. Exit status 1
when a parity check fails or the triton backend cannot run. Targets (issue 13, H100/H200): forward+backward <= 2 ms
per call at MambaIR size, saved memory no more than the torch backend's, MambaIR FT step <= 0.35 s; each is printed
as PASS/MISS at the end.

``--dry-run`` runs every step of the script on the CPU at tiny sizes, the kernels under the Triton interpreter (it
sets ``TRITON_INTERPRET=1`` itself) and MambaIR's step with the torch backend only: its numbers mean nothing, it only
shows that the script runs through before a GPU's limited time is spent on it (``tests/test_scan_triton.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

if "--dry-run" in sys.argv[1:]:  # before triton is first imported (by torch or by ldt.ops)
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ldt.cli import OneLineParser, exit_with, starting  # noqa: E402

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback; warnings: one line each
    import torch
    from torch import Tensor

    import benchmark_scan
    from ldt.ops import resolve_scan_backend, selective_scan_fn

MAMBAIR = dict(batch=4, length=48 * 48, channels=4 * 360, groups=4, state=16)
# The problems of each step: on a GPU at MambaIR size; in a dry run small enough for the Triton interpreter.
SIZES = {
    False: {"mambair": MAMBAIR, "small": dict(batch=2, length=1000, channels=192, groups=4, state=16),
            "invariant": dict(batch=2, length=77, channels=24, groups=1, state=8),
            "step": dict(batch=4, patch=48, iters=3, warmup=1, backends=("triton", "torch"))},
    True: {"mambair": dict(batch=1, length=40, channels=8, groups=4, state=4),
           "small": dict(batch=1, length=33, channels=8, groups=2, state=4),
           "invariant": dict(batch=1, length=7, channels=4, groups=1, state=2),
           "step": dict(batch=1, patch=8, iters=1, warmup=0, backends=("torch",))},
}
DEVICE = torch.device("cuda")  # the dry run sets "cpu"
STEP_TARGET_S = 0.35
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
    u, delta, A, B, C, D, delta_bias = benchmark_scan.make_inputs(args, DEVICE)
    if invariant_bc:
        B, C = (torch.randn(channels, state, device=DEVICE).requires_grad_() for _ in range(2))
    gate = torch.randn(batch, channels, length, device=DEVICE).to(dtype).requires_grad_() if z else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=gate, delta_bias=delta_bias)


def run(inputs: dict[str, Tensor | None], backend: str, weights: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """Output, last state and the gradients of ``sum(out * w) + sum(last * w_last)``; freed memory is filled with
    NaN first, so an output element the kernels never write shows up."""
    if DEVICE.type == "cuda":
        torch.full((1 << 28,), math.nan, device=DEVICE)  # returned to the caching allocator right away, NaN inside
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
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    u = inputs["u"]
    weights = (torch.randn(u.shape, generator=gen, device=DEVICE, dtype=torch.float64),
               torch.randn(u.shape[0], u.shape[1], inputs["A"].shape[1], generator=gen, device=DEVICE,
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
    if DEVICE.type != "cuda":  # a dry run: one call, to run the code path
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
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


def mambair_steps(batch: int, patch: int, iters: int, warmup: int, backends: tuple[str, ...]) -> dict[str, float]:
    """``scripts/benchmark.py --arch mambair`` per scan backend (its table printed); the FT step seconds of each."""
    import benchmark

    seconds = {}
    for backend in backends:
        argv = ["--device", DEVICE.type, "--arch", "mambair", "--batch-size", str(batch), "--patch", str(patch),
                "--iters", str(iters), "--warmup-iters", str(warmup), "--probe-batches", "2",
                "--scan-backend", backend]
        print(f"\n## scripts/benchmark.py {' '.join(argv)}", flush=True)
        seconds[backend] = benchmark.main(argv)["results"]["ft"]["time_s"]
    return seconds


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    # --dry-run is read from sys.argv before argparse (to set TRITON_INTERPRET in time): OneLineParser refuses its
    # abbreviations, which that read would miss.
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile-shape sweep")
    parser.add_argument("--no-step", action="store_true", help="skip the MambaIR step benchmark")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every step on the CPU at tiny sizes under the Triton interpreter (numbers mean nothing)")
    args = parser.parse_args(argv)
    sizes = SIZES[args.dry_run]
    if not (args.dry_run or torch.cuda.is_available()):
        print("needs a CUDA or ROCm GPU (or --dry-run)")
        return 1
    try:
        import triton
    except ImportError as exc:  # a torch wheel without it (CPU builds): every step runs the triton backend
        print(f"needs triton (pip install triton): {exc}")
        return 1
    if args.dry_run:
        DEVICE = torch.device("cpu")
        from ldt.ops import scan_triton

        if not scan_triton.INTERPRETED:
            print("--dry-run needs the Triton interpreter: TRITON_INTERPRET=1 must be set before triton is imported")
            return 1

    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU, Triton interpreter (dry run)"
    print(f"torch {torch.__version__}, triton {triton.__version__}, {where}")
    try:
        # Every step names its backend, so LDT_SCAN_BACKEND (misspelled or not) plays no part: 'auto' is asked for.
        print(f"auto picks '{resolve_scan_backend(DEVICE, 'auto')}'; "
              f"explicit: '{resolve_scan_backend(DEVICE, 'triton')}'")
    except RuntimeError as exc:
        print(f"the triton backend cannot run: {exc}")
        return 1

    mambair, small, invariant = sizes["mambair"], sizes["small"], sizes["invariant"]
    ok = parity("MambaIR x4 training size, float32", make_inputs(**mambair, dtype=torch.float32, z=False,
                                                                    invariant_bc=False), torch.float32)
    ok &= parity(f"z, last state, bf16 inputs, L={small['length']}", make_inputs(
        **small, dtype=torch.bfloat16, z=True, invariant_bc=False), torch.bfloat16)
    ok &= parity(f"time-invariant B/C, z, state {invariant['state']}, L={invariant['length']}", make_inputs(
        **invariant, dtype=torch.float32, z=True, invariant_bc=True), torch.float32)

    bench = ["--device", DEVICE.type, "--repeat", "20", "--warmup", "3", "--skip-naive"]
    if args.dry_run:
        bench = ["--device", "cpu", "--repeat", "1", "--warmup", "0", "--skip-naive",
                 *(f"--{key}={value}" for key, value in mambair.items())]
    print(f"\n## scripts/benchmark_scan.py {' '.join(bench)}", flush=True)
    benchmark_scan.main(bench)

    inputs = make_inputs(**mambair, dtype=torch.float32, z=False, invariant_bc=False)
    with torch.no_grad():
        reference = selective_scan_fn(**inputs, delta_softplus=True, backend="torch")
    if not args.no_sweep:
        sweep(inputs, reference)
    fwd, both = timings(inputs)
    saved = {b: benchmark_scan.saved_bytes(lambda b=b: selective_scan_fn(**inputs, delta_softplus=True, backend=b))[1]
             for b in ("triton", "torch")}
    step = sizes["step"]
    seconds = {} if args.no_step else mambair_steps(step["batch"], step["patch"], step["iters"], step["warmup"],
                                                    step["backends"])
    print(f"\n## targets at MambaIR size (default tiles)\ntriton forward {fwd:.3f} ms, forward+backward {both:.3f} ms "
          f"(target <= 2 ms): {'PASS' if both <= 2.0 else 'MISS'}")
    print(f"saved for backward: triton {saved['triton'] / 2**20:.1f} MiB, torch {saved['torch'] / 2**20:.1f} MiB: "
          f"{'PASS' if saved['triton'] <= saved['torch'] else 'MISS'}")
    for backend, value in seconds.items():
        target = f" (target <= {STEP_TARGET_S} s): {'PASS' if value <= STEP_TARGET_S else 'MISS'}"
        print(f"MambaIR FT step, {backend} backend: {value:.3f} s{target if backend == 'triton' else ''}")
    print(f"parity: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    exit_with(main)
