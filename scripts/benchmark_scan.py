"""Time and memory of the selective-scan backends at MambaIR sizes; prints a markdown table.

Defaults are MambaIR x4 training sizes: batch 4, 48x48 patches (L=2304), 4 scan directions x 360 channels stacked
(1440 channels in 4 groups), state 16. On a CPU use smaller sizes, e.g.::

    python scripts/benchmark_scan.py --batch 1 --length 576 --device cpu

Rows: the torch backend (one row per ``--chunk-sizes`` entry; with ``--loop`` two, its within-chunk recurrences
forced to the parallel scan and to step-by-step loops, the choice ``SEQUENTIAL_STEP_ELEMENTS`` makes on CPUs), the
triton backend and mamba_ssm's kernel (``cuda``) where they can run on the device (a line says why not otherwise),
and "naive", a mamba_ssm-style reference (materialises (batch, dim, L, state) and loops over time under autograd)
written here for comparison only.

Columns: mean forward+backward time; "saved" = bytes of the distinct storages autograd keeps for backward, counted
with ``torch.autograd.graph.saved_tensors_hooks`` during the forward (inputs included, on any device); on CUDA also
"peak" = ``torch.cuda.max_memory_allocated`` during forward+backward minus the memory allocated before it
(inputs excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldt.cli import (  # noqa: E402
    OneLineParser, check_args, check_device, exit_with, non_negative, out_of_memory_is_one_line, positive,
    starting,
)

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback; warnings: one line each
    import torch
    import torch.nn.functional as F
    from torch import Tensor

    from ldt.ops import ENV_VAR, choose_scan_backend, default_chunk_size, resolve_scan_backend, selective_scan_fn
    from ldt.ops import selective_scan as scan_module

MIB = 1024**2


def naive_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor) -> Tensor:
    """Straightforward autograd version: what the selective scan costs without a custom backward."""
    dt = F.softplus(delta.float() + delta_bias[:, None])
    heads = u.shape[1] // B.shape[1]
    B_full = B.float().repeat_interleave(heads, dim=1)  # (b, dim, N, L)
    C_full = C.float().repeat_interleave(heads, dim=1)
    decay = torch.exp(dt.unsqueeze(-1) * A[:, None, :])  # (b, dim, L, N)
    inputs = (dt * u.float()).unsqueeze(-1) * B_full.transpose(2, 3)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + inputs[:, :, t]
        ys.append((h * C_full[:, :, :, t]).sum(-1))
    return (torch.stack(ys, dim=-1) + D[:, None] * u.float()).to(u.dtype)


@contextlib.contextmanager
def torch_recurrence(device: torch.device, sequential: bool) -> Iterator[None]:
    """Force the torch backend's within-chunk recurrences on ``device`` to step loops or to the parallel scan
    (normally chosen by ``SEQUENTIAL_STEP_ELEMENTS``)."""
    thresholds = scan_module.SEQUENTIAL_STEP_ELEMENTS
    saved = dict(thresholds)
    thresholds.pop(device.type, None)
    if sequential:
        thresholds[device.type] = 0
    try:
        yield
    finally:
        thresholds.clear()
        thresholds.update(saved)


def make_inputs(args: argparse.Namespace, device: torch.device) -> list[Tensor]:
    """MambaIR-like inputs: softplus(dt bias) log-uniform in [1e-3, 1e-1], A = -(1..N), D = 1."""
    gen = torch.Generator().manual_seed(0)
    b, d, length, n, g = args.batch, args.channels, args.length, args.state, args.groups
    dt_init = torch.exp(torch.rand(d, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = [
        torch.randn(b, d, length, generator=gen),  # u
        0.1 * torch.randn(b, d, length, generator=gen),  # delta
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),  # A
        torch.randn(b, g, n, length, generator=gen),  # B
        torch.randn(b, g, n, length, generator=gen),  # C
        torch.ones(d),  # D
        dt_init + torch.log(-torch.expm1(-dt_init)),  # delta_bias = softplus^-1(dt_init)
    ]
    dtype = getattr(torch, args.dtype)
    return [
        t.to(device=device, dtype=dtype if i in (0, 1, 3, 4) else torch.float32).requires_grad_()
        for i, t in enumerate(tensors)
    ]


def saved_bytes(fn: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """Run ``fn`` and count the bytes of distinct storages that autograd saves for backward."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


@dataclass
class Row:
    backend: str
    ms: float
    saved: int
    out: Tensor
    peak: int | None


def measure(name: str, fn: Callable[[], Tensor], inputs: list[Tensor], args: argparse.Namespace) -> Row:
    """Mean forward+backward time, saved bytes and (CUDA) peak memory of one backend."""
    device = inputs[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        out = fn()
        torch.autograd.grad(out.float().square().mean(), inputs)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeat):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    out, saved = saved_bytes(fn)
    out = out.detach()
    peak = None
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync()
        peak = torch.cuda.max_memory_allocated(device) - before
    return Row(name, 1e3 * statistics.mean(times), saved, out, peak)


def _available(device: torch.device, backend: str) -> str:
    """'' when ``backend`` can run on ``device``, else why not."""
    try:
        resolve_scan_backend(device, backend)
    except (RuntimeError, ValueError) as exc:
        return str(exc)
    return ""


def default_backend(device: torch.device) -> str:
    """What a call on ``device`` that names no backend (a training run's) runs, and why: every row here names its
    own, so ``LDT_SCAN_BACKEND`` changes no row, but it does change what such a call runs (or makes it fail)."""
    variable = os.environ.get(ENV_VAR, "").strip()
    source = f"{ENV_VAR}={variable}" if variable else f"{ENV_VAR} unset, auto"
    try:
        chosen, why = choose_scan_backend(device)
    except (RuntimeError, ValueError) as exc:
        return f"fails here ({source}: {exc})"
    return f"runs '{chosen}' here ({source}: {why})"


def chunk_sizes_problem(texts: list[str]) -> str | None:
    """What is wrong with the ``--chunk-sizes`` entries ('auto' or positive integers), or None."""
    for text in texts:
        if text != "auto" and not (text.isdigit() and int(text) > 0):
            return f"each entry must be 'auto' or a positive integer, got {text!r}"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=48 * 48, help="sequence length (pixels of a patch)")
    parser.add_argument("--channels", type=int, default=4 * 360, help="scan channels (directions x inner width)")
    parser.add_argument("--groups", type=int, default=4, help="B/C groups (scan directions)")
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="dtype of u, delta, B, C"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--chunk-sizes", nargs="+", default=["auto"], help="torch backend chunk sizes to time ('auto' = the default)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive reference (slow, memory hungry)")
    parser.add_argument(
        "--loop", action="store_true", help="time the torch backend both with its parallel scans and with step loops"
    )
    args = parser.parse_args(argv)
    check_args(parser, args, batch=positive, length=positive, channels=positive, groups=positive, state=positive,
               repeat=positive, warmup=non_negative, chunk_sizes=chunk_sizes_problem)
    if args.channels % args.groups:
        parser.error(f"--channels: {args.channels} is not divisible by --groups {args.groups}")
    device = check_device(parser, "--device", args.device)
    sizes = (f"--batch {args.batch} --length {args.length} --channels {args.channels} --groups {args.groups} "
             f"--state {args.state}")
    with out_of_memory_is_one_line(sizes):
        inputs = make_inputs(args, device)
    u, delta, A, B, C, D, delta_bias = inputs

    def ours(backend: str, chunk: int | None = None) -> Callable[[], Tensor]:
        return lambda: selective_scan_fn(
            u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend=backend, chunk_size=chunk
        )

    # (row name, function, context it runs in)
    candidates: list[tuple[str, Callable[[], Tensor], Callable[[], contextlib.AbstractContextManager]]] = []
    for text in args.chunk_sizes:
        chunk = default_chunk_size(args.batch, args.channels, args.state) if text == "auto" else int(text)
        name = f"torch (chunk {chunk}{', auto' if text == 'auto' else ''})"
        if args.loop:
            for sequential, kind in ((False, "parallel scan"), (True, "loops")):
                context = functools.partial(torch_recurrence, device, sequential)
                candidates.append((f"{name}, {kind}", ours("torch", chunk), context))
        else:
            candidates.append((name, ours("torch", chunk), contextlib.nullcontext))
    unavailable = {}
    for backend, name in (("triton", "triton"), ("cuda", "cuda (mamba_ssm)")):
        unavailable[backend] = _available(device, backend)
        if not unavailable[backend]:
            candidates.append((name, ours(backend), contextlib.nullcontext))
    if not args.skip_naive:
        candidates.append(("naive", lambda: naive_scan(u, delta, A, B, C, D, delta_bias), contextlib.nullcontext))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"batch={args.batch} length={args.length} channels={args.channels} groups={args.groups} "
        f"state={args.state} dtype={args.dtype} device={device} ({where}) torch={torch.__version__} "
        f"repeat={args.repeat}; each row names its backend; a call that names none (a training run) "
        f"{default_backend(device)}"
    )
    for backend, reason in unavailable.items():
        if reason:
            print(f"no {backend} row: {reason}")
    print()
    rows = []
    for name, fn, context in candidates:
        with out_of_memory_is_one_line(f"{sizes}, row {name}"), context():
            rows.append(measure(name, fn, inputs, args))
    cuda = device.type == "cuda"
    header = "| backend | fwd+bwd ms | saved MiB |" + (" peak MiB |" if cuda else "") + " max abs diff vs first |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        diff = (row.out.float() - rows[0].out.float()).abs().max().item()
        peak = f" {row.peak / MIB:.0f} |" if row.peak is not None else ""
        print(f"| {row.backend} | {row.ms:.1f} | {row.saved / MIB:.1f} |{peak} {diff:.2e} |")


if __name__ == "__main__":
    exit_with(main)
