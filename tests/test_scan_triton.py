"""The triton backend: outputs and all gradients against the torch backend and a float64 reference.

On a CPU the kernels run under the Triton interpreter. It has to be enabled (``TRITON_INTERPRET=1``) before triton
is first imported, since triton.language's own helpers are decorated at import, and in a full test run other modules
import triton (through torch.compile) first. So one subprocess, started with the variable set, runs every case
through the triton backend (``python -m tests.test_scan_triton OUT``) and saves the results; the tests compare them
here. Without a GPU, Triton's compiler still builds the kernels for sm_90, sm_80 and gfx942 from the exact launch
arguments; with CUDA the compiled kernels are run and compared as well.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from ldt.ops import selective_scan_fn
from tests.test_selective_scan import Config, make_inputs, reference_scan, run_both, saved_bytes

pytestmark = pytest.mark.slow  # the Triton interpreter in a subprocess
# A CPU-only torch build ships no triton; the backend is then simply not available (tests/test_selective_scan.py
# checks that auto falls back and an explicit request says what is missing).
triton = pytest.importorskip("triton", reason="triton is not installed (CPU-only torch builds ship none)")
tl = triton.language
from ldt.ops import scan_triton  # noqa: E402  (after the skip: it imports triton)

ROOT = Path(__file__).resolve().parents[1]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


# Triton 3.6's interpreter reads a scalar kernel argument with int() on a 1-element array, which NumPy 2.4 refuses
# (triton-lang/triton#9171, fixed in triton 3.7). Compiled kernels are unaffected; the compile tests still run.
INTERPRETER_BROKEN = (
    f"the Triton {triton.__version__} interpreter fails on NumPy {np.__version__} (triton-lang/triton#9171): "
    "use triton >= 3.7 or numpy < 2.4 to run these tests"
    if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4) else ""
)


@dataclass(frozen=True)
class Case:
    cfg: Config
    dtype: torch.dtype = torch.float32


ALL = dict(D=True, z=True, bias=True, softplus=True, last_state=True)
# Sizes stay small: the interpreter runs a scan's combine function once per element in Python. Block shapes follow
# from them (ldt.ops.scan_triton.blocks): dim 6 in 2 groups gives one channel per program and three programs adding
# to each group's dB/dC; length 129 with chunk 64 gives 32-step tiles, two per chunk, three chunks, a 1-step last tile.
CASES = {
    "all options, L=7, 3 programs per group, float64": Case(Config(length=7, **ALL), torch.float64),
    "all options, L=7, 3 programs per group": Case(Config(length=7, **ALL)),
    "state 1, L=1, no options, float64": Case(Config(batch=1, dim=2, state=1, length=1, groups=1), torch.float64),
    "state 1, L=1, all options": Case(Config(batch=1, dim=2, state=1, length=1, groups=1, **ALL)),
    "state 16, L=129, chunks of 2 tiles, float64": Case(
        Config(batch=1, dim=2, groups=2, state=16, length=129, chunk=64, D=True, bias=True, softplus=True,
               last_state=True),
        torch.float64,
    ),
    "state 16, L=129, chunks of 2 tiles, small steps": Case(
        Config(batch=1, dim=2, groups=2, state=16, length=129, chunk=64, D=True, bias=True, softplus=True,
               last_state=True, small_steps=True)
    ),
    "state 1, L=129, G=3, z, 5 chunks, float64": Case(
        Config(batch=1, dim=3, groups=3, state=1, length=129, chunk=32, z=True, last_state=True), torch.float64
    ),
    "G=4 of 8 channels, small steps, L=33": Case(
        Config(batch=2, dim=8, groups=4, state=4, length=33, chunk=16, D=True, bias=True, softplus=True,
               small_steps=True)
    ),
    "flat B/C (batch, N, L)": Case(Config(bc="flat", dim=4, length=7, D=True, bias=True, softplus=True)),
    "time-invariant B and C": Case(Config(bc="invariant", dim=4, length=7, D=True, z=True, last_state=True)),
    "invariant B, grouped C, float64": Case(
        Config(bc="mixed", groups=3, length=7, bias=True, softplus=True, last_state=True), torch.float64
    ),
    "bf16 inputs, all options": Case(Config(length=7, **ALL), torch.bfloat16),
}
STABILITY = Config(batch=1, dim=3, state=4, length=33, chunk=64, groups=1, softplus=True, bias=True, D=True)
SAVED = Config(batch=2, dim=8, state=16, length=64, chunk=32, groups=2, D=True, bias=True, softplus=True)
NON_CONTIGUOUS = Config(length=7, D=True, softplus=True)
AUTOCAST = Config(length=7, D=True, bias=True, softplus=True)


def _scan(inputs: dict[str, Tensor | None], cfg: Config, backend: str = "triton") -> Tensor:
    return selective_scan_fn(**inputs, delta_softplus=cfg.softplus, backend=backend, chunk_size=cfg.chunk)


def _stability_results() -> list[Tensor]:
    """A decay of exp(-1e3) per step (cumulative sums of dt * A fed to exp would overflow): out and gradients."""
    inputs = make_inputs(STABILITY, torch.float32)
    with torch.no_grad():
        inputs["A"].mul_(1000.0)
        inputs["delta_bias"].add_(3.0)
    out = _scan(inputs, STABILITY)
    out.sum().backward()
    return [out.detach(), *(t.grad for t in inputs.values() if t is not None)]


def _autocast_results() -> list[Tensor]:
    """float32 inputs with and without bf16 autocast."""
    inputs = make_inputs(AUTOCAST, torch.float32)
    plain = _scan(inputs, AUTOCAST)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = _scan(inputs, AUTOCAST)
    return [plain, cast]


def _non_contiguous_results() -> list[Tensor]:
    inputs = make_inputs(NON_CONTIGUOUS, torch.float64)
    strided = {
        k: None if t is None else t.detach().transpose(0, -1).contiguous().transpose(0, -1) for k, t in inputs.items()
    }
    assert not strided["u"].is_contiguous()
    return [_scan(strided, NON_CONTIGUOUS), _scan(inputs, NON_CONTIGUOUS)]


def _saved_bytes() -> int:
    inputs = make_inputs(SAVED, torch.float32)
    return saved_bytes(lambda: _scan(inputs, SAVED))


# Index arithmetic at sizes no test can allocate: the kernels' own offset helpers, run under the interpreter (whose
# int32 arithmetic wraps like a GPU's) with sizes where an int32 offset would wrap, against exact Python integers.
# The sizes are only scalars here; nothing is loaded beyond A, D and delta_bias of (dim, state) and (dim,).
OFFSETS = dict(batch=3, dim=8, groups=2, state=16, length=(1 << 30) + 7, n_chunks=(1 << 27) + 3, block_d=4)


@triton.jit
def _offsets_probe(A_ptr, D_ptr, bias_ptr, base_ptr, bound_ptr, b_rows_ptr, dim, length, state, n_chunks, groups,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Stores the forward's/backward's row starts, last chunk's bound offsets and B rows of every program."""
    (offs_d, offs_n, mask_d, mask_n, mask_dn, channel_rows, base, state_offs, A, bias, skip,
     b_rows, B_inv, c_rows, C_inv) = scan_triton._prologue(
        A_ptr, A_ptr, A_ptr, D_ptr, bias_ptr, dim, length, state, groups, groups,
        BLOCK_D, BLOCK_N, True, True, True, True, tl.float32,
    )
    bound = scan_triton._bound_offsets(channel_rows, offs_n, n_chunks, n_chunks - 1, state)
    tl.store(base_ptr + channel_rows, base.to(tl.int64))
    tl.store(bound_ptr + channel_rows[:, None] * BLOCK_N + offs_n[None, :], bound.to(tl.int64))
    group = tl.min(channel_rows, axis=0) // (dim // groups)  # batch element * groups + group
    tl.store(b_rows_ptr + group * BLOCK_N + offs_n, b_rows.to(tl.int64))


def _offsets_results() -> list[Tensor]:
    o = OFFSETS
    A, D, bias = torch.zeros(o["dim"], o["state"]), torch.zeros(o["dim"]), torch.zeros(o["dim"])
    base = torch.zeros(o["batch"] * o["dim"], dtype=torch.int64)
    bound = torch.zeros(o["batch"] * o["dim"], o["state"], dtype=torch.int64)
    b_rows = torch.zeros(o["batch"] * o["groups"], o["state"], dtype=torch.int64)
    _offsets_probe[(o["batch"], o["dim"] // o["block_d"])](
        A, D, bias, base, bound, b_rows, o["dim"], o["length"], o["state"], o["n_chunks"], o["groups"],
        BLOCK_D=o["block_d"], BLOCK_N=o["state"],
    )
    return [base, bound, b_rows]


def interpreted_results() -> dict[str, object]:
    """Everything the tests below need from the triton backend, computed in this process (the interpreter must be
    on)."""
    from ldt.ops import scan_triton

    if not scan_triton.INTERPRETED:
        raise RuntimeError("the Triton interpreter is off: run with TRITON_INTERPRET=1 set before triton is imported")
    results: dict[str, object] = {
        name: run_both(case.cfg, case.dtype, backend="triton")[0] for name, case in CASES.items()
    }
    results["stability"] = _stability_results()
    results["autocast"] = _autocast_results()
    results["non-contiguous"] = _non_contiguous_results()
    results["saved bytes"] = _saved_bytes()
    results["offsets"] = _offsets_results()
    return results


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if INTERPRETER_BROKEN:
        pytest.skip(INTERPRETER_BROKEN)
    path = tmp_path_factory.mktemp("scan_triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_scan_triton", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr}"
    return torch.load(path)


def _close(actual: Tensor, expected: Tensor, dtype: torch.dtype, against_reference: bool) -> None:
    assert actual.shape == expected.shape
    scale = expected.abs().max().item() + 1e-6
    if dtype == torch.float64:
        rtol, atol = 1e-9, 1e-11 * scale
    elif dtype == torch.float32:
        rtol, atol = 1e-4, 1e-5 * scale
    else:  # bf16 inputs, outputs and input gradients; computed in float32
        rtol, atol = (2e-2, 2e-2 * scale) if against_reference else (1e-2, 1e-2 * scale)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernels_match_torch_backend_and_reference(name: str, interpreted: dict[str, object]) -> None:
    case = CASES[name]
    triton_results = interpreted[name]
    torch_results, reference = run_both(case.cfg, case.dtype, backend="torch")
    assert len(triton_results) == len(torch_results) == len(reference)
    for i, (ours, theirs, exact) in enumerate(zip(triton_results, torch_results, reference)):
        assert ours.dtype == theirs.dtype, f"result {i}"
        _close(ours, theirs, case.dtype, against_reference=False)
        _close(ours, exact, case.dtype, against_reference=True)


def test_interpreted_kernels_stay_finite_for_large_decays(interpreted: dict[str, object]) -> None:
    out, *grads = interpreted["stability"]
    assert all(torch.isfinite(g).all() for g in grads)
    inputs = make_inputs(STABILITY, torch.float32)
    with torch.no_grad():
        inputs["A"].mul_(1000.0)
        inputs["delta_bias"].add_(3.0)
    exact = reference_scan(**inputs, delta_softplus=True)[0]
    torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-4)
    torch_out = _scan(inputs, STABILITY, backend="torch")
    torch_out.sum().backward()
    for ours, theirs in zip(grads, (t.grad for t in inputs.values() if t is not None)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * (theirs.abs().max().item() + 1e-6))


def test_interpreted_kernels_ignore_autocast_and_strides(interpreted: dict[str, object]) -> None:
    plain, cast = interpreted["autocast"]
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain)
    strided, contiguous = interpreted["non-contiguous"]
    torch.testing.assert_close(strided, contiguous)
    inputs = make_inputs(NON_CONTIGUOUS, torch.float64)
    torch.testing.assert_close(contiguous, _scan(inputs, NON_CONTIGUOUS, backend="torch"))


def test_interpreted_kernels_save_no_more_than_the_torch_backend(interpreted: dict[str, object]) -> None:
    inputs = make_inputs(SAVED, torch.float32)
    input_bytes = sum(t.untyped_storage().nbytes() for t in inputs.values() if t is not None)
    boundary_bytes = SAVED.batch * SAVED.dim * -(-SAVED.length // SAVED.chunk) * SAVED.state * 4
    assert saved_bytes(lambda: _scan(inputs, SAVED, backend="torch")) == input_bytes + boundary_bytes
    assert interpreted["saved bytes"] <= input_bytes + boundary_bytes


def test_interpreted_offsets_do_not_wrap_past_2_to_the_31(interpreted: dict[str, object]) -> None:
    """Row starts in (batch, dim, L) tensors, chunk-state offsets and B/C row offsets stay exact where the products
    pass 2**31 (MambaIR at test time: batch * 1440 channels * L = 2**20 steps of a 1024x1024 input)."""
    o = OFFSETS
    base, bound, b_rows = interpreted["offsets"]
    assert o["batch"] * o["dim"] * o["length"] > 2**32
    rows = range(o["batch"] * o["dim"])
    assert base.tolist() == [r * o["length"] for r in rows]
    assert bound.tolist() == [[(r * o["n_chunks"] + o["n_chunks"] - 1) * o["state"] + n for n in range(o["state"])]
                              for r in rows]
    assert b_rows.tolist() == [[(g * o["state"] + n) * o["length"] for n in range(o["state"])]
                               for g in range(o["batch"] * o["groups"])]


# ------------------------------------------------------------------------------------------------ compiles for GPUs

# Triton types of the tensors the wrappers pass.
TRITON_TYPES = {torch.float32: "*fp32", torch.float64: "*fp64", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
COMPILE_CASES = {
    "MambaIR x4 (1440 channels in 4 groups, state 16), sm_90": (
        Config(batch=1, dim=1440, groups=4, state=16, length=2304, chunk=256, D=True, bias=True, softplus=True),
        torch.float32, ("cuda", 90, 32),
    ),
    "all options, invariant B, state 64, bf16, sm_80": (
        Config(bc="mixed", batch=1, dim=64, groups=4, state=64, length=300, **ALL), torch.bfloat16, ("cuda", 80, 32),
    ),
    "flat B/C, state 1, L=1 (size-1 blocks), float64, sm_90": (
        Config(bc="flat", batch=1, dim=6, state=1, length=1, z=True, bias=True), torch.float64, ("cuda", 90, 32),
    ),
    "MambaIR x4, ROCm gfx942": (
        Config(batch=1, dim=1440, groups=4, state=16, length=2304, chunk=256, D=True, bias=True, softplus=True),
        torch.float32, ("hip", "gfx942", 64),
    ),
}


def _launches(
    cfg: Config, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[object, tuple[int, ...], tuple, dict]]:
    """(kernel, grid, args, keyword args) of the launches the wrappers make for ``cfg``, recorded instead of run."""
    from ldt.ops import scan_triton

    launches = []

    class Recorder:
        def __init__(self, kernel: object) -> None:
            self.kernel = kernel

        def __getitem__(self, grid: tuple[int, ...]) -> object:
            return lambda *args, **kwargs: launches.append((self.kernel, grid, args, kwargs))

    for name in ("_scan_fwd_kernel", "_scan_bwd_kernel"):
        monkeypatch.setattr(scan_triton, name, Recorder(getattr(scan_triton, name)))
    inputs = make_inputs(cfg, dtype)
    args = [None if t is None else t.detach() for t in inputs.values()]
    out, last, bounds = scan_triton.forward(*args, cfg.softplus, cfg.chunk)
    scan_triton.backward(out, last, *args, bounds, cfg.softplus, cfg.chunk)
    return launches


_PTR_OP = re.compile(r"^\s*(%[\w#.]+) = tt\.(splat|broadcast|expand_dims|reshape|addptr) (%[\w#.]+)[^:]*:(.*)$")
_ACCESS = re.compile(r"^\s*(?:%[\w#.]+ = )?tt\.(load|store|atomic_rmw)\s+(?:[a-z_]+, )*(%[\w#.]+)")
_PTR_ARG = re.compile(r"(%\w+): !tt\.ptr<")


def _narrow_accesses(ttir: str, small: set[str]) -> list[str]:
    """Loads, stores and atomics of a TTIR kernel whose pointer was offset from its argument by 32-bit offsets only
    (each pointer is followed from its argument through splat, broadcast, expand_dims, reshape and addptr), except
    for the arguments in ``small``."""
    pointers: dict[str, tuple[str, bool]] = {}  # SSA value -> (argument, an i64 offset was added on the way)
    narrow = []
    for line in ttir.splitlines():
        if "tt.func" in line:
            pointers.update({name: (name[1:], False) for name in _PTR_ARG.findall(line)})
            continue
        line = re.sub(r"\s+loc\(.*$", "", line)
        if (m := _PTR_OP.match(line)) and m.group(3) in pointers:
            arg, wide = pointers[m.group(3)]
            pointers[m.group(1)] = (arg, wide or (m.group(2) == "addptr" and re.search(r"i64>?$", m.group(4).strip())
                                                  is not None))
        elif m := _ACCESS.match(line):
            arg, wide = pointers[m.group(2)]
            if not wide and arg not in small:
                narrow.append(f"{m.group(1)} of {arg}")
    return narrow


@pytest.mark.parametrize("name", list(COMPILE_CASES))
def test_kernels_compile_for_gpus(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's compiler (to a cubin or hsaco) on the exact arguments the wrappers pass; no GPU needed. This is what
    the interpreter cannot check: block shapes, layouts, types and registers that a real GPU build accepts, and
    the width of the offsets the compiled code uses."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ldt.ops import scan_triton

    if scan_triton.INTERPRETED:
        pytest.skip("this process runs the Triton interpreter (TRITON_INTERPRET=1)")
    cfg, dtype, target = COMPILE_CASES[name]
    launches = _launches(cfg, dtype, monkeypatch)
    assert [kernel.__name__ for kernel, _, _, _ in launches] == ["_scan_fwd_kernel", "_scan_bwd_kernel"]
    for kernel, _, args, kwargs in launches:
        constexprs = {k: v for k, v in kwargs.items() if k != "num_warps"}
        signature = {
            arg: "constexpr" if arg in constexprs else TRITON_TYPES[value.dtype] if torch.is_tensor(value) else "i32"
            for arg, value in zip(kernel.arg_names, (*args, *constexprs.values()))
        }
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget(*target),
            options={"num_warps": kwargs["num_warps"]},
        )
        assert compiled.asm.get("cubin" if target[0] == "cuda" else "hsaco")
        # Every access to a (batch, dim, ...) tensor is offset in 64 bits (program ids and aranges are int32, and
        # batch * dim * L passes 2**31 at test-time sizes); only the per-channel (dim, N) and (dim,) operands may
        # be indexed in 32 bits.
        small = {"A_ptr", "D_ptr", "bias_ptr"} | {f"{x}_ptr" for x in "BC" if not kwargs[f"{x}_VARIABLE"]}
        assert not _narrow_accesses(compiled.asm["ttir"], small)
        assert len(re.findall(r"tt\.(?:load|store|atomic_rmw)\s", compiled.asm["ttir"])) > 5  # the parser saw them


@pytest.mark.parametrize("batch", [1, 70000])
def test_launch_grids_fit_cuda_limits(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA refuses a grid with axis 0 over 2**31 - 1 or axis 1 or 2 over 65535 programs: the grids stay inside at
    any batch and still hold one program per (batch element, channel block)."""
    cfg = Config(batch=batch, dim=8, groups=2, state=2, length=3, chunk=2, D=True)
    launches = _launches(cfg, torch.float32, monkeypatch)
    assert len(launches) == 2
    for _, grid, _, kwargs in launches:
        assert 1 <= len(grid) <= 3 and grid[0] < 2**31 and all(g <= 65535 for g in grid[1:]), grid
        assert math.prod(grid) * kwargs["BLOCK_D"] == batch * cfg.dim


def test_launch_refuses_more_channel_blocks_than_a_grid_axis_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config(batch=1, dim=65537, groups=1, state=1, length=1, chunk=1)  # an odd width: one channel per program
    with pytest.raises(ValueError, match="65535"):
        _launches(cfg, torch.float32, monkeypatch)


def test_launches_run_on_the_inputs_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton launches on the current CUDA device: both kernels are launched under a guard for the inputs' device
    (tensors on cuda:1 with cuda:0 current would otherwise reach a kernel on the wrong GPU)."""
    guard = scan_triton._on_device(SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1  # built without touching a GPU
    active: list[torch.device] = []
    seen: list[list[torch.device]] = []

    @contextlib.contextmanager
    def recording(t: Tensor) -> Iterator[None]:
        active.append(t.device)
        yield
        active.pop()

    class Recorder:
        def __getitem__(self, grid: tuple[int, ...]) -> object:
            return lambda *args, **kwargs: seen.append(list(active))

    monkeypatch.setattr(scan_triton, "_on_device", recording)
    for name in ("_scan_fwd_kernel", "_scan_bwd_kernel"):
        monkeypatch.setattr(scan_triton, name, Recorder())
    cfg = Config(length=3, D=True)
    args = [None if t is None else t.detach() for t in make_inputs(cfg, torch.float32).values()]
    out, last, bounds = scan_triton.forward(*args, cfg.softplus, cfg.chunk)
    scan_triton.backward(out, last, *args, bounds, cfg.softplus, cfg.chunk)
    assert seen == [[args[0].device], [args[0].device]]


def test_the_gpu_check_script_runs_through_on_the_cpu():
    """``scripts/gpu_check_scan.py --dry-run``: every step of the one-shot GPU check (parity tables, both benchmarks,
    tile sweep, MambaIR step, targets) at tiny sizes under the interpreter, so a GPU's limited time is never spent
    on a script error."""
    if INTERPRETER_BROKEN:
        pytest.skip(INTERPRETER_BROKEN)
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check_scan.py", "--dry-run"], cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for heading in ("## parity: MambaIR x4 training size", "## parity: z, last state, bf16 inputs",
                    "## parity: time-invariant B/C", "## scripts/benchmark_scan.py", "## triton tile sweep",
                    "## scripts/benchmark.py --device cpu --arch mambair", "## targets at MambaIR size"):
        assert heading in out, heading
    assert "| triton |" in out and "FAIL" not in out and out.rstrip().endswith("parity: PASS")
    assert "MambaIR FT step, torch backend:" in out


# The dry run's start, up to its first parity check (the rest takes minutes under the interpreter).
GPU_CHECK_START = """
import sys
sys.path.insert(0, "scripts")
import gpu_check_scan
gpu_check_scan.parity = lambda *args: sys.exit(7)
sys.exit(gpu_check_scan.main(["--dry-run"]))
"""


def test_the_gpu_check_script_runs_whatever_ldt_scan_backend_says():
    """The check names every backend it runs, so a misspelled ``LDT_SCAN_BACKEND`` in the shell does not stop it
    (it ended in a ValueError traceback before the first parity check); 'auto picks' is what ``auto`` picks."""
    if INTERPRETER_BROKEN:
        pytest.skip(INTERPRETER_BROKEN)
    proc = subprocess.run(
        [sys.executable, "-c", GPU_CHECK_START], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TRITON_INTERPRET": "1", "LDT_SCAN_BACKEND": "trition", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 7, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "auto picks 'torch'; explicit: 'triton'" in proc.stdout


def test_the_gpu_check_script_without_triton_says_it_needs_it():
    """A checkout whose torch came without triton (a CPU wheel): the dry run says what it needs, not an ImportError
    traceback."""
    start = GPU_CHECK_START.replace("import gpu_check_scan", "sys.modules['triton'] = None  # not installed\n"
                                    "import gpu_check_scan")
    proc = subprocess.run([sys.executable, "-c", start], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("needs triton (pip install triton): "), proc.stdout


# ------------------------------------------------------------------------------------------------ compiled, on a GPU

GPU_CASES = ["all options, L=7, 3 programs per group", "state 16, L=129, chunks of 2 tiles, small steps",
             "bf16 inputs, all options"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", GPU_CASES)
def test_compiled_kernels_match_torch_backend(name: str) -> None:
    case = CASES[name]
    ours, _ = run_both(case.cfg, case.dtype, device="cuda", backend="triton")
    theirs, exact = run_both(case.cfg, case.dtype, device="cuda", backend="torch")
    for a, b, c in zip(ours, theirs, exact):
        assert a.is_cuda
        _close(a, b, case.dtype, against_reference=False)
        _close(a, c, case.dtype, against_reference=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_kernels_at_a_mambair_like_size() -> None:
    cfg = Config(batch=2, dim=96, groups=4, state=16, length=300, chunk=64, D=True, z=True, bias=True,
                 softplus=True, last_state=True, small_steps=True)
    ours, _ = run_both(cfg, torch.float32, device="cuda", backend="triton")
    theirs, _ = run_both(cfg, torch.float32, device="cuda", backend="torch")
    for a, b in zip(ours, theirs):
        _close(a, b, torch.float32, against_reference=False)


if __name__ == "__main__":
    torch.save(interpreted_results(), sys.argv[1])
