"""Training cost of FT, LDT and LDT-S, and of the gradient probe, on one arch and batch; prints a markdown table.

All four run in one process on copies of the same seeded network, cycling through the same two random LR/HR batches
(HR = LR patch x the arch's scale) with an L1 loss:

* ``FT``    — one network, every parameter trained by one Adam;
* ``LDT``   — ``ldt.core.DualBranch``: primary (stable layers) and auxiliary (unstable layers), each with its own
  Adam, stepped one after the other (the second branch's forward starts after the first branch's backward, so
  activations are never held twice), exchange every ``--interval`` steps;
* ``LDT-S`` — ``ldt.core.SingleBranchLDT``: one network and one Adam, turns switch every ``--interval`` steps;
* ``probe`` — ``ldt.core.probe_gradients`` over ``--probe-batches`` batches (its statistics give the LDT partition,
  ``var`` criterion, ``--unstable-ratio``).

Time: mean wall time of one training step (both branches for LDT; one batch for the probe) after ``--warmup-iters``
untimed steps, with ``torch.cuda.synchronize`` around every step on CUDA. Exchanges / turn switches fall inside the
timed steps, so their cost is averaged in.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` from just before the method's network is built to its last step,
minus what was allocated before (so: weights, grads, optimizer state, activations, temporaries; the batch and the
CUDA context are excluded), reset between methods. On CPU there is no allocator peak counter: a separate, untimed
pass (``min(warmup + iters, interval + 1)`` steps, at least 2: past Adam's first step and, when the timed schedule
gets there, the first exchange / turn switch) replays the method under ``torch.profiler`` with ``profile_memory=True`` and sums its allocation/free events in
time order; the peak of that sum is the most bytes of torch CPU tensors alive at once. It does not see Python
objects, allocator caching/fragmentation or memory that libraries allocate outside torch's allocator (e.g. oneDNN
scratch), so it is a lower bound on what the process's RSS grows by. Both devices also report the bytes of
weights + grads + optimizer state counted tensor by tensor (and LDT-S's host copies: EMA + parked group).

    python scripts/benchmark.py --device cpu --arch safmn_tiny --batch-size 2 --patch 24 --iters 20
    python scripts/benchmark.py --device cuda --arch mambair --batch-size 4 --patch 48 --amp --json bench.json

The paper's Table 3 ratios (MambaIR, 48x48 patches, 4xV100) are read from ``ldt/paper_tables.json`` and printed
beside ours for reference only: other hardware, arch, batch and memory measure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldt.cli import (  # noqa: E402
    OneLineParser, between, check_output_file, fail, out_of_memory_is_one_line, path_flag, starting, strict_json,
)

with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback; warnings: one line each
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ldt.atomic import DiskError, atomic_write_text
    from ldt.core import MethodConfig, method_class, partition_by_score, prepare_method, probe_gradients
    from ldt.core.partition import Partition
    from ldt.sr.experiment import ARCHS

METHODS = ("ft", "ldt", "ldt_s")  # registry names of the methods compared (FT first: the reference)
PAPER_ROWS = {"ft": "Baseline", "ldt": "LDT"}  # their rows in the paper's Table 3
PAPER_TABLES = ROOT / "ldt" / "paper_tables.json"
PAPER_TABLE3 = "table3_efficiency_mambair_v100"
SCALE_KEYS = ("upscale", "upscaling_factor", "scale")
MIB = 2**20
Batch = tuple[torch.Tensor, torch.Tensor]

CUDA_MEMORY = (
    "CUDA: torch.cuda.max_memory_allocated over the method (network build, warm-up and timed steps) minus the "
    "bytes allocated before it; reset between methods; batch and CUDA context excluded"
)
CPU_MEMORY = (
    "CPU: peak bytes of live torch CPU tensors, from torch.profiler profile_memory allocation/free events in a "
    "separate untimed pass of the same method (network build + steps); excludes Python objects, allocator "
    "caching/fragmentation and memory allocated outside torch's allocator: a lower bound on RSS growth"
)


# ---- setup ------------------------------------------------------------------------------------------------------
def build_network(arch: str) -> tuple[nn.Module, int]:
    """The network of ``ARCHS[arch]`` (seeded) and its upscaling factor."""
    import ldt.archs  # noqa: F401  (registers our archs in basicsr's registry)
    from basicsr.utils.registry import ARCH_REGISTRY

    options = {k: v for k, v in ARCHS[arch].items() if k != "type"}
    torch.manual_seed(0)
    network = ARCH_REGISTRY.get(ARCHS[arch]["type"])(**options)
    scale = next((int(options[k]) for k in SCALE_KEYS if k in options), None)
    if scale is None:  # not in the options: read it off one forward pass
        with torch.no_grad():
            scale = network.eval()(torch.zeros(1, 3, 16, 16)).shape[-1] // 16
    return network.train(), scale


def make_batches(batch_size: int, patch: int, scale: int, device: torch.device, count: int = 2) -> list[Batch]:
    """``count`` random (LR, HR) pairs; training steps and probe batches cycle through them."""
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(batch_size, 3, patch, patch, generator=g).to(device),
            torch.rand(batch_size, 3, patch * scale, patch * scale, generator=g).to(device),
        )
        for _ in range(count)
    ]


def cycle(batches: Sequence[Batch], count: int) -> Iterator[Batch]:
    for index in range(count):
        yield batches[index % len(batches)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages: dict[tuple, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[(t.device.type, t.device.index, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


# ---- one method -------------------------------------------------------------------------------------------------
class Trainer:
    """One method's copy of the network (from the method registry), its optimizers and its training step."""

    def __init__(self, method: str, base: nn.Module, partition: Partition | None, args, device: torch.device) -> None:
        self.device = device
        self.amp = args.amp
        model = copy.deepcopy(base).to(device).train()
        config = MethodConfig.model_validate({"method": method, "unstable_ratio": args.unstable_ratio,
                                              "exchange": {"interval": args.interval}})
        self.method = prepare_method(model, config, partition=partition)  # the partition is given: no probe here
        self.optimizers = [torch.optim.Adam(branch.parameters, lr=1e-4) for branch in self.method.branches()]

    def step(self, batch: Batch) -> None:
        lq, gt = batch
        for branch, optimizer in zip(self.method.branches(), self.optimizers):  # one branch after the other
            optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp):
                loss = F.l1_loss(branch.module(lq), gt).float()
            loss.backward()
            optimizer.step()
            del loss
        self.method.step()

    def state_bytes(self) -> dict[str, int]:
        networks = list({id(b.module): b.module for b in self.method.branches()}.values())
        weights = tensor_bytes(t for n in networks for t in [*n.parameters(), *n.buffers()])
        grads = tensor_bytes(p.grad for n in networks for p in n.parameters() if p.grad is not None)
        optim = tensor_bytes(
            v for o in self.optimizers for s in o.state.values() for v in s.values() if torch.is_tensor(v)
        )
        host = tensor_bytes(iter(self.method.held_tensors()))
        return {"weights": weights, "grads": grads, "optimizer": optim, "host": host}


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def probe_loss(amp: bool, device: torch.device) -> Callable[[nn.Module, Batch], torch.Tensor]:
    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        with autocast(device, amp):
            return F.l1_loss(model(batch[0]), batch[1]).float()

    return loss_fn


# ---- measurement ------------------------------------------------------------------------------------------------
def cpu_peak_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """Run ``fn`` under the profiler; the peak of live torch CPU tensor bytes it allocated (and ``fn``'s result)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler import MEMORY_EVENT_NAME
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # hides kineto's "gpuGetDeviceCount failed" on CPU-only hosts
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == MEMORY_EVENT_NAME and e.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak, result


class Measured:
    """Per-step times, peak bytes and state bytes of one method."""

    def __init__(self, times: list[float], peak: int, state: dict[str, int], **extra) -> None:
        self.times, self.peak, self.state, self.extra = times, peak, state, extra


def measure_training(method: str, base: nn.Module, partition, batches, args, device: torch.device) -> Measured:
    def run(steps: int, timed: int) -> tuple[list[float], dict[str, int]]:
        trainer = Trainer(method, base, partition, args, device)
        times = []
        for index, batch in enumerate(cycle(batches, steps)):
            synchronize(device)
            start = time.perf_counter()
            trainer.step(batch)
            synchronize(device)
            if index >= steps - timed:
                times.append(time.perf_counter() - start)
        state = trainer.state_bytes()
        del trainer
        return times, state

    steps = args.warmup_iters + args.iters
    if device.type == "cuda":
        base_bytes = reset_cuda(device)
        times, state = run(steps, args.iters)
        return Measured(times, torch.cuda.max_memory_allocated(device) - base_bytes, state,
                        reserved=torch.cuda.max_memory_reserved(device))
    times, state = run(steps, args.iters)
    peak, _ = cpu_peak_bytes(lambda: run(memory_steps(args), 0))
    return Measured(times, peak, state, memory_steps=memory_steps(args))


def memory_steps(args) -> int:
    """Steps of the CPU memory pass: enough for Adam's state, and past the first exchange / turn switch if the
    timed schedule reaches it."""
    return max(2, min(args.warmup_iters + args.iters, args.interval + 1))


def measure_probe(base: nn.Module, batches, args, device: torch.device) -> tuple[Measured, object]:
    loss_fn = probe_loss(args.amp, device)

    def run(count: int, warm: int) -> tuple[float, object, dict[str, int]]:
        model = copy.deepcopy(base).to(device).train()
        if warm:
            probe_gradients(model, cycle(batches, warm), loss_fn, num_batches=warm, distributed=False)
        synchronize(device)
        start = time.perf_counter()
        stats = probe_gradients(model, cycle(batches, count), loss_fn, num_batches=count, distributed=False)
        synchronize(device)
        seconds = time.perf_counter() - start
        # During each probe batch every parameter holds a gradient; the probe clears them when it returns.
        state = {"weights": tensor_bytes(t for t in [*model.parameters(), *model.buffers()]),
                 "grads": tensor_bytes(iter(model.parameters())), "optimizer": 0, "host": 0}
        del model
        return seconds, stats, state

    n = args.probe_batches
    warm = min(args.warmup_iters, 1)
    if device.type == "cuda":
        base_bytes = reset_cuda(device)
        seconds, stats, state = run(n, warm)
        peak = torch.cuda.max_memory_allocated(device) - base_bytes
        extra = {"reserved": torch.cuda.max_memory_reserved(device)}
    else:
        seconds, stats, state = run(n, warm)
        peak, _ = cpu_peak_bytes(lambda: run(min(n, 2), 0))
        extra = {"memory_batches": min(n, 2)}
    return Measured([seconds / n], peak, state, total_s=seconds, batches=n, **extra), stats


def reset_cuda(device: torch.device) -> int:
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


# ---- paper reference --------------------------------------------------------------------------------------------
def paper_ratios(path: Path = PAPER_TABLES) -> dict | None:
    """LDT/DeFT ÷ baseline training time and memory from the paper's Table 3 (``None`` if the file is absent)."""
    if not path.is_file():
        return None
    table = json.loads(path.read_text()).get(PAPER_TABLE3)
    if table is None:
        return None
    columns, rows = table["columns"], table["rows"]
    time_col, mem_col = columns.index("train_time_s"), columns.index("train_memory_GB")
    base = rows["Baseline"]
    ratios = {
        name: {"time": row[time_col] / base[time_col], "memory": row[mem_col] / base[mem_col]}
        for name, row in rows.items()
    }
    return {"source": f"{path.name}:{PAPER_TABLE3}", "caption": table.get("caption", ""), "ratios": ratios}


# ---- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="ldt.sr.experiment.ARCHS key (default: safmn_tiny on "
                        "CPU, mambair on CUDA, the paper's Table 3 arch)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch", type=int, default=48, help="LR patch size (HR = patch x scale)")
    parser.add_argument("--iters", type=int, default=20, help="timed training steps per method")
    parser.add_argument("--warmup-iters", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--probe-batches", type=int, default=10)
    defaults = MethodConfig()
    parser.add_argument("--interval", type=int, default=defaults.exchange.interval,
                        help="LDT exchange interval / LDT-S turn length (default: %(default)s)")
    parser.add_argument("--unstable-ratio", type=float, default=defaults.unstable_ratio, help="default: %(default)s")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--scan-backend", choices=("auto", "cuda", "triton", "torch"), default=None,
                        help="MambaIR's selective scan (default: LDT_SCAN_BACKEND, else auto); the report names the "
                             "backend that ran")
    parser.add_argument("--json", type=path_flag, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.amp and args.device != "cuda":
        parser.error("--amp (bf16 autocast) is for CUDA only")
    if args.arch is None:
        args.arch = "mambair" if args.device == "cuda" else "safmn_tiny"
    for name in ("batch_size", "patch", "iters", "probe_batches", "interval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup_iters < 0:
        parser.error("--warmup-iters must be >= 0")
    problem = between(0, 1)(args.unstable_ratio)  # MethodConfig's bound, checked here rather than as a traceback
    if problem:
        parser.error(f"--unstable-ratio: {problem}")
    check_output_file(parser, "--json", args.json)  # before the benchmark, not after it
    return args


def check_patch(base: nn.Module, args, device: torch.device) -> None:
    """One error line, before anything is measured, when the arch cannot run on ``--patch`` LR inputs (one forward
    of a single patch through a copy of the network on the device); memory running out there is the out-of-memory
    line of the measured steps, not a size the arch cannot take."""
    network = copy.deepcopy(base).to(device).eval()
    try:
        with out_of_memory_is_one_line(f"--patch {args.patch} ({args.arch} on {device}, one patch)"), torch.no_grad():
            network(torch.zeros(1, 3, args.patch, args.patch, device=device))
    except (ValueError, RuntimeError) as err:  # e.g. "SAFMN needs inputs of at least 8x8"
        fail(f"--patch: {args.arch} cannot run on {args.patch}x{args.patch} inputs: {' '.join(str(err).split())}")
    finally:
        del network


def check_ratio(base: nn.Module, args) -> None:
    """One error line, before anything is measured, when ``--unstable-ratio`` leaves this network's stable group
    empty (the probe's partition would otherwise raise after FT and the probe were timed)."""
    config = MethodConfig(method="ldt", unstable_ratio=args.unstable_ratio)
    for option, problem in method_class("ldt").check(config, base):
        if option == "unstable_ratio":
            fail(f"--unstable-ratio: {problem}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print the table and return (and optionally write) the results as a dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    from ldt.ops import resolve_scan_backend, set_scan_backend
    from ldt.ops.selective_scan import ENV_VAR

    set_scan_backend(args.scan_backend)
    try:
        scan_backend = resolve_scan_backend(device)
    except (RuntimeError, ValueError) as err:  # a backend asked for by name that cannot run here, or misspelled
        fail(f"{'--scan-backend' if args.scan_backend else ENV_VAR}: {err}")  # the flag, else the variable, chose it
    base, scale = build_network(args.arch)
    check_patch(base, args, device)
    check_ratio(base, args)
    measured: dict[str, Measured] = {}
    with out_of_memory_is_one_line(f"--batch-size {args.batch_size} --patch {args.patch} ({args.arch} on {device})"):
        batches = make_batches(args.batch_size, args.patch, scale, device)
        measured[METHODS[0]] = measure_training(METHODS[0], base, None, batches, args, device)
        measured["probe"], stats = measure_probe(base, batches, args, device)
        partition = partition_by_score(stats, args.unstable_ratio, "var")
        for method in METHODS[1:]:
            measured[method] = measure_training(method, base, partition, batches, args, device)

    ft = measured[METHODS[0]]
    ft_time, ft_peak = statistics.mean(ft.times), ft.peak
    results = {}
    for name in (*METHODS, "probe"):
        m = measured[name]
        mean = statistics.mean(m.times)
        results[name] = {
            "label": method_class(name).label if name != "probe" else "probe",
            "time_s": mean,
            "time_median_s": statistics.median(m.times),
            "time_ratio": mean / ft_time,
            "peak_bytes": m.peak,
            "memory_ratio": m.peak / ft_peak,
            "state_bytes": m.state,
            "steps_timed": len(m.times) if name != "probe" else m.extra["batches"],
            **m.extra,
        }
    num_params = sum(p.numel() for p in base.parameters())
    report = {
        "config": {
            "arch": args.arch, "type": ARCHS[args.arch]["type"], "scale": scale, "batch_size": args.batch_size,
            "patch": args.patch, "iters": args.iters, "warmup_iters": args.warmup_iters,
            "probe_batches": args.probe_batches, "interval": args.interval, "unstable_ratio": args.unstable_ratio,
            "amp": args.amp, "params": num_params, "scan_backend": scan_backend,
            "param_bytes": tensor_bytes(iter(base.parameters())),
        },
        "device": {
            "type": device.type,
            "name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                     else f"{torch.get_num_threads()} threads"),
            "torch": torch.__version__,
        },
        "partition": {"stable": len(partition.stable), "unstable": len(partition.unstable),
                      "excluded": len(partition.excluded), "criterion": partition.criterion},
        "time_measure": "mean wall time per training step (LDT: both branches; probe: per batch) after the warm-up "
                        "steps" + (", torch.cuda.synchronize around each step" if device.type == "cuda" else ""),
        "memory_measure": CUDA_MEMORY if device.type == "cuda" else CPU_MEMORY,
        "results": results,
        "paper": paper_ratios(),
    }
    print(format_table(report))
    if args.json:
        try:  # atomic: a full disk or a kill mid-write leaves an earlier report whole
            atomic_write_text(args.json, strict_json(report, indent=2) + "\n")
        except DiskError as err:  # checked before the benchmark; this is what changed since
            fail(f"--json: {err}")
    return report


def format_table(report: dict) -> str:
    c, d, r = report["config"], report["device"], report["results"]
    paper = report["paper"]
    lines = [
        f"arch={c['arch']} ({c['type']}, {c['params'] / 1e6:.3f} M params, |θ|={c['param_bytes'] / MIB:.2f} MiB, "
        f"x{c['scale']}), batch {c['batch_size']} of {c['patch']}x{c['patch']} LR, L1 on random tensors, Adam"
        f"{', bf16 autocast' if c['amp'] else ''}; selective scan backend (MambaIR): {c['scan_backend']}",
        f"device={d['type']} ({d['name']}), torch {d['torch']}; interval {c['interval']}; partition from the probe "
        f"({report['partition']['criterion']}, ratio {c['unstable_ratio']}): {report['partition']['stable']} stable / "
        f"{report['partition']['unstable']} unstable tensors",
        f"time: {report['time_measure']}; {c['iters']} timed + {c['warmup_iters']} warm-up steps",
        f"memory: {report['memory_measure']}",
        "",
        "| method | ms / step | time × FT | peak MiB | memory × FT | weights+grads+optim MiB | rest of peak MiB | "
        "paper × FT (time, memory) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in (*METHODS, "probe"):
        row = r[name]
        state = row["state_bytes"]
        own = state["weights"] + state["grads"] + state["optimizer"]
        label = row["label"] if name != "probe" else f"probe ({row['batches']} batches; per batch)"
        if state["host"]:
            label += f" (+{state['host'] / MIB:.2f} MiB host copies)"
        ratios = (paper or {}).get("ratios", {})
        ref = PAPER_ROWS.get(name)
        reference = (
            f"{ratios[ref]['time']:.2f}×, {ratios[ref]['memory']:.2f}×" if ref and ref in ratios else "—"
        )
        lines.append(
            f"| {label} | {1e3 * row['time_s']:.2f} | {row['time_ratio']:.2f}× | {row['peak_bytes'] / MIB:.2f} | "
            f"{row['memory_ratio']:.2f}× | {own / MIB:.2f} | {(row['peak_bytes'] - own) / MIB:.2f} | {reference} |"
        )
    lines.append(
        "\nrest of peak = peak − (weights + grads + optimizer state, counted at the end): activations and "
        "temporaries" + ("; on CPU also LDT-S's host copies" if d["type"] == "cpu" else "")
        + ". Probe: ms per batch; its weights+grads column is the weights and one gradient per parameter."
    )
    if paper:
        deft = paper["ratios"].get("DeFT")
        lines.append(
            f"\npaper: {paper['source']} (MambaIR, 4xV100; {paper['caption']})"
            + (f"; DeFT {deft['time']:.2f}×, {deft['memory']:.2f}×" if deft else "")
            + ". LDT-S and the probe are not in the paper's table."
        )
    else:
        lines.append("\npaper: ldt/paper_tables.json not found, no reference ratios")
    if not all(math.isfinite(r[n]["time_s"]) for n in r):
        lines.append("warning: non-finite times")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
