"""Benchmark the gradient probe: peak extra memory (relative to |θ|) and time (relative to plain forward+backward).

Three ways to go over the same probe batches are measured:

* ``plain``  — forward + backward only (the floor any probe pays);
* ``ldt``    — our streaming probe (``ldt.core.probe_gradients``), no per-batch gradient copies;
* ``stored`` — the official approach: keep every batch's gradient, then ``torch.var(torch.stack(...))``.

On CUDA peak memory is ``torch.cuda.max_memory_allocated``; on CPU each mode runs in a fresh subprocess and the peak
resident set size (``ru_maxrss``) is compared, so CPU numbers include allocator noise of a few MiB.

    python scripts/benchmark_probe.py --arch SAFMN --batches 20
    python scripts/benchmark_probe.py --arch MambaIR --arch-opt '{"embed_dim": 60, "depths": [2, 2]}' --device cuda
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldt.cli import (  # noqa: E402
    OneLineParser, check_args, check_device, exit_with, fail, json_object, out_of_memory_is_one_line, positive,
    starting,
)

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback; warnings: one line each
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ldt.core import probe_gradients
    from ldt.core.config import unknown_choice

MODES = ("plain", "ldt", "stored")


CONVNET_OPTIONS = ("width", "depth")


def build_model(arch: str, options: dict, scale: int = 4) -> nn.Module:
    if arch == "convnet":
        unknown = sorted(set(options) - set(CONVNET_OPTIONS))
        if unknown:
            raise TypeError(f"convnet takes only {', '.join(CONVNET_OPTIONS)}, not {', '.join(unknown)}")
        width = options.get("width", 128)
        layers = [nn.Conv2d(3, width, 3, padding=1)]
        for _ in range(options.get("depth", 8)):
            layers += [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(width, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale)]
        return nn.Sequential(*layers)
    import ldt.archs  # noqa: F401  (registers our archs)
    from basicsr.utils.registry import ARCH_REGISTRY

    return ARCH_REGISTRY.get(arch)(**options)


def make_batches(count: int, batch: int, size: int, scale: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(batch, 3, size, size, generator=g).to(device), torch.rand(batch, 3, size * scale, size * scale, generator=g).to(device))
        for _ in range(count)
    ]


def l1(model: nn.Module, batch) -> torch.Tensor:
    lq, gt = batch
    return F.l1_loss(model(lq), gt)


def run_mode(mode: str, model: nn.Module, batches) -> None:
    if mode == "plain":
        for batch in batches:
            model.zero_grad(set_to_none=True)
            l1(model, batch).backward()
    elif mode == "ldt":
        probe_gradients(model, batches, l1)
    else:
        stored = {name: [] for name, _ in model.named_parameters()}
        for batch in batches:
            model.zero_grad(set_to_none=True)
            l1(model, batch).backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    stored[name].append(p.grad.detach().clone())
        for grads in stored.values():
            if grads:
                torch.var(torch.stack(grads))


def measure(args, mode: str) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch, json.loads(args.arch_opt), args.scale).to(device).train()
    batches = make_batches(args.batches, args.batch, args.size, args.scale, device)
    run_mode("plain", model, batches[:1])  # warm-up: allocator, kernels, lazy init
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run_mode(mode, model, batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"mode": mode, "seconds": seconds, "peak_bytes": peak, "param_bytes": params}


def arch_problem(arch: str, err: BaseException) -> str:
    """``err``'s message on one line, naming ``arch`` once: the archs' own errors name their class already
    ('SAFMN: n_blocks: ...', 'SAFMN.__init__() got ...'); a message that does not gets it in front."""
    message = " ".join(str(err).split()) or type(err).__name__
    return message if re.match(rf"{re.escape(arch)}\b", message) else f"{arch}: {message}"


def check_model(parser: argparse.ArgumentParser, args, device: torch.device) -> None:
    """Build the model and run one LR input through it, so that an unknown arch, bad constructor options, an input
    too small for the arch or a scale it does not have end in one error line before anything is measured."""
    if args.arch != "convnet":
        import ldt.archs  # noqa: F401  (registers our archs)
        from basicsr.utils.registry import ARCH_REGISTRY

        if args.arch not in ARCH_REGISTRY:
            parser.error("--arch: " + unknown_choice("arch", args.arch,
                                                     ["convnet", *sorted(name for name, _ in ARCH_REGISTRY)]))
    try:
        model = build_model(args.arch, json.loads(args.arch_opt), args.scale).to(device)
    except Exception as err:  # noqa: BLE001  (any constructor error is the options' fault)
        parser.error(f"--arch-opt: {args.arch_opt}: {arch_problem(args.arch, err)}")
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, args.size, args.size, device=device))
    except Exception as err:  # noqa: BLE001  (e.g. SAFMN's minimum input size)
        parser.error(f"--size: {args.size}x{args.size} inputs: {arch_problem(args.arch, err)}")
    if tuple(out.shape[-2:]) != (args.size * args.scale,) * 2:
        parser.error(f"--scale: {args.arch} turns {args.size}x{args.size} into {out.shape[-2]}x{out.shape[-1]}, "
                     f"not x{args.scale}; set --scale (or its upscale option in --arch-opt) to match")


def exit_reason(returncode: int) -> str:
    """Why a mode's process that printed nothing ended: a signal by name (the OOM killer's SIGKILL, most likely
    from batches too large for memory), else its exit status."""
    if returncode >= 0:
        return f"exit status {returncode}"
    name = signal.Signals(-returncode).name
    if -returncode == signal.SIGKILL:
        return f"killed by {name} (out of memory? use a smaller --batch, --size or --batches)"
    return f"killed by {name}"


def main() -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="convnet", help="'convnet' or a registered arch (SAFMN, HAT, MambaIR, ...)")
    parser.add_argument("--arch-opt", default="{}", help="JSON constructor arguments of the arch")
    parser.add_argument("--batches", type=int, default=20, help="probe batches")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="LR patch size")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one mode in this process
    args = parser.parse_args()

    sizes = f"--batches {args.batches} --batch {args.batch} --size {args.size} ({args.arch} on {args.device})"
    if args.mode:
        with out_of_memory_is_one_line(sizes):
            print(json.dumps(measure(args, args.mode)))
        return
    check_args(parser, args, batches=positive, batch=positive, size=positive, scale=positive, arch_opt=json_object)
    device = check_device(parser, "--device", args.device)
    check_model(parser, args, device)
    results = {}
    for mode in MODES:
        if device.type == "cuda":
            with out_of_memory_is_one_line(sizes):
                results[mode] = measure(args, mode)
        else:  # a fresh process per mode: ru_maxrss is a process-lifetime peak
            cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                lines = [line for line in run.stderr.splitlines() if line.strip()] or [exit_reason(run.returncode)]
                fail(f"the {mode} run failed: {lines[-1].strip()}")
            results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    plain = results["plain"]
    params = plain["param_bytes"]
    print(f"arch={args.arch} device={args.device} |θ|={params / 2**20:.1f} MiB, {args.batches} batches of {args.batch}×{args.size}²")
    print("| mode | time (s) | time / plain | peak extra vs plain (MiB) | extra / |θ| |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        r = results[mode]
        extra = r["peak_bytes"] - plain["peak_bytes"]
        print(
            f"| {mode} | {r['seconds']:.3f} | {r['seconds'] / plain['seconds']:.2f}× | {extra / 2**20:.1f} | "
            f"{extra / params:.2f} |"
        )


if __name__ == "__main__":
    exit_with(main)
