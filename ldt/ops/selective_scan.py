"""Selective scan (Mamba's S6 recurrence) without a compiled extension: memory-lean PyTorch and Triton backends.

MambaIR calls mamba_ssm's ``selective_scan_fn``. Its CUDA kernel is hard to install, and the pure-PyTorch reference
keeps (batch, dim, length, state) tensors for autograd (about 3.4 GiB per MambaIR block at batch 4 on 48x48 patches).
This module gives the same semantics with three backends:

* ``"cuda"``: mamba_ssm's kernel, imported lazily; optional, never required.
* ``"triton"``: fused forward and backward Triton kernels (:mod:`ldt.ops.scan_triton`), for CUDA and ROCm GPUs; the
  state stays in registers, and only the chunk-boundary states are saved, as below.
* ``"torch"``: plain PyTorch ops. The forward keeps only the inputs and the hidden state at every ``chunk_size``-th
  step; the backward walks the chunks in reverse, recomputes each chunk's states from its boundary state and runs
  the adjoint recurrence. Saved memory is O(batch * dim * length) plus the boundary states.

Within a chunk both recurrences of the torch backend run as a work-efficient parallel scan (pairs are combined level
by level, log2(chunk) levels) over *products* of decays. For Mamba's negative-real ``A`` (``A = -exp(A_log)``) every
decay lies in (0, 1], so products only shrink towards zero and nothing can overflow; cumulative sums of
``delta * A`` fed to ``exp`` would overflow within a few dozen steps. A positive ``A`` is still computed exactly, but
then the state itself grows exponentially and float32 overflows as soon as the true state does. On a CPU, once one
step's (batch, dim, state) slice is large, step-by-step loops are faster and are used instead
(:data:`SEQUENTIAL_STEP_ELEMENTS`).

The triton and torch backends run as the custom operators ``ldt::selective_scan`` and
``ldt::selective_scan_backward`` (``torch.library``, with fake implementations and a registered autograd formula),
so ``torch.compile(fullgraph=True)`` traces through a call without a graph break.

Backend choice: the ``backend`` argument, else :func:`set_scan_backend`, else the environment variable
``LDT_SCAN_BACKEND`` (``auto`` | ``cuda`` | ``triton`` | ``torch``), else ``auto``: for CUDA/ROCm tensors mamba_ssm's
kernel when it imports, else the Triton kernels when triton imports and they compile and pass a probe on the device,
else ``"torch"``; on other devices ``"torch"``. A backend that is asked for by name and cannot run raises an error
saying why. The backend used, and why, is logged once per backend on the ``ldt.ops`` logger. Under ``torch.compile``
the backend is chosen when a graph is traced.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ldt.cli import did_you_mean  # standard library only: ldt.ops stays free of pydantic and BasicSR

__all__ = [
    "BACKENDS",
    "CHUNK_ELEMENTS",
    "ENV_VAR",
    "SEQUENTIAL_STEP_ELEMENTS",
    "SelectiveScanFn",
    "choose_scan_backend",
    "default_chunk_size",
    "get_scan_backend",
    "resolve_scan_backend",
    "selective_scan_fn",
    "set_scan_backend",
]

ENV_VAR = "LDT_SCAN_BACKEND"
BACKENDS = ("auto", "cuda", "triton", "torch")
# The default chunk length makes one (batch, dim, chunk, state) temporary about this many elements (128 MiB in
# float32). Each chunk costs ~150 small kernel launches, so short chunks are launch-bound on a GPU: at MambaIR x4
# training sizes on an H100, chunks of 64 / 128 / 256 steps took 75 / 42 / 30 ms per forward+backward and peaked at
# 0.7 / 0.9 / 1.3 GiB of temporaries; longer chunks gained nothing more.
CHUNK_ELEMENTS = 1 << 25
# On a CPU the torch backend runs its within-chunk recurrences as step-by-step loops once one step's (batch, dim,
# state) slice has this many elements: a loop touches each element once while it is in cache, the parallel scan makes
# log2(chunk) passes over chunk-sized temporaries; below it the loops' per-step op overhead loses. On GPUs each step
# would be a launch, so they always use the parallel scan. Forward+backward ms, parallel scan vs loops, one thread
# (`python scripts/benchmark_scan.py --device cpu --loop --batch B --length L --channels D --groups G --state N`):
#   B=2 D=6 N=4 L=20 (chunk 8, a test size): 3.2 vs 2.6; L=129: 2.0 vs 5.7;  B=1 D=64 N=16 L=256: 7.8 vs 14.5;
#   B=1 N=16 L=512, D=128: 27.9 vs 33.7, D=256: 54.4 vs 71.1, D=512: 127.6 vs 102.7;
#   B=1 N=16, D=720 L=4096: 1755 vs 1620, D=1440 L=1024: 1115 vs 711 (G=4 throughout but the first two, G=2).
SEQUENTIAL_STEP_ELEMENTS = {"cpu": 8192}

logger = logging.getLogger("ldt.ops")

_backend_override: str | None = None
_logged_backends: set[str] = set()
# (selective_scan_fn or None, reason it is unavailable); None until the first import attempt.
_mamba: tuple[Callable[..., Any] | None, str] | None = None
# (ldt.ops.scan_triton or None, reason it is unavailable); None until the first import attempt.
_triton: tuple[ModuleType | None, str] | None = None
# Device type -> "" when the Triton kernels passed the probe there, else why they cannot be used.
_triton_checked: dict[str, str] = {}


# ----------------------------------------------------------------------------------------------------------------------
# Backend selection
# ----------------------------------------------------------------------------------------------------------------------


def _check_backend_name(name: str, source: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {name!r}{did_you_mean(name, BACKENDS)} (from {source}); "
            f"expected one of {', '.join(BACKENDS)}"
        )
    return key


def set_scan_backend(name: str | None) -> None:
    """Pin the backend for this process, overriding ``LDT_SCAN_BACKEND``; ``None`` hands control back to the env var."""
    global _backend_override
    _backend_override = None if name is None else _check_backend_name(name, "set_scan_backend")


def get_scan_backend() -> str:
    """The requested backend (one of :data:`BACKENDS`): the pinned one, else ``LDT_SCAN_BACKEND``, else 'auto'."""
    if _backend_override is not None:
        return _backend_override
    return _check_backend_name(os.environ.get(ENV_VAR, "auto") or "auto", f"environment variable {ENV_VAR}")


def _load_mamba() -> Callable[..., Any] | None:
    """mamba_ssm's ``selective_scan_fn``, imported on first use; None (reason cached) when it cannot be used."""
    global _mamba
    if _mamba is None:
        try:
            module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
            _mamba = (module.selective_scan_fn, "")
        except Exception as exc:  # a compiled extension fails as ImportError, OSError or RuntimeError alike
            _mamba = (None, f"{type(exc).__name__}: {exc}")
    return _mamba[0]


def _load_triton() -> ModuleType | None:
    """:mod:`ldt.ops.scan_triton`, imported on first use; None (reason cached) when triton cannot be imported."""
    global _triton
    if _triton is None:
        try:
            _triton = (importlib.import_module("ldt.ops.scan_triton"), "")
        except Exception as exc:  # ImportError without triton; a broken install fails in many ways
            _triton = (None, f"{type(exc).__name__}: {exc}")
    return _triton[0]


def _probe_triton(module: ModuleType, device: torch.device) -> str:
    """Run both kernels once on a small problem on ``device`` and compare them with the torch backend: '' when they
    agree, else why not. Catches a triton that imports but cannot compile or launch (driver, toolchain, arch)."""
    gen = torch.Generator().manual_seed(0)
    batch, dim, length, state, groups = 2, 4, 37, 4, 2
    inputs = [
        torch.randn(batch, dim, length, generator=gen),
        torch.randn(batch, dim, length, generator=gen) - 1.0,
        -torch.rand(dim, state, generator=gen) - 0.5,
        torch.randn(batch, groups, state, length, generator=gen),
        torch.randn(batch, groups, state, length, generator=gen),
        torch.randn(dim, generator=gen),
        torch.randn(batch, dim, length, generator=gen),
        torch.randn(dim, generator=gen),
    ]
    try:
        inputs = [t.to(device) for t in inputs]
        grad_out, grad_last = torch.ones_like(inputs[0]), torch.ones(batch, dim, state, device=device)
        results = []
        for forward, backward in ((module.forward, module.backward), (_torch_forward, _torch_backward)):
            out, last, bounds = forward(*inputs, True, 16)
            results.append([out, last, *backward(grad_out, grad_last, *inputs, bounds, True, 16)])
        for ours, ref in zip(*results):
            torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)
    except Exception as exc:  # device, compile, launch and mismatch errors alike mean "do not use it here"
        return f"the Triton kernels failed a probe run on {device} ({type(exc).__name__}: {exc})"
    return ""


def _triton_unavailable(device: torch.device) -> str:
    """'' when the triton backend can run on ``device``, else why not."""
    module = _load_triton()
    if module is None:
        assert _triton is not None
        return f"triton cannot be imported ({_triton[1]})"
    if device.type == "cpu" and module.INTERPRETED:
        return ""
    if device.type != "cuda":  # ROCm tensors are "cuda" tensors too
        return (
            f"its kernels need CUDA or ROCm tensors, got tensors on {device} (for CPU tests set TRITON_INTERPRET=1 "
            "before triton is first imported)"
        )
    if device.type not in _triton_checked:
        _triton_checked[device.type] = _probe_triton(module, device)
    return _triton_checked[device.type]


def _choose(device: torch.device, requested: str) -> tuple[str, str]:
    """(concrete backend, why) for a call on ``device``; raises if a backend requested by name cannot run."""
    on_gpu = device.type == "cuda"
    if requested == "torch":
        return "torch", "requested"
    if requested == "cuda":
        if not on_gpu:
            raise ValueError(f"selective-scan backend 'cuda' needs CUDA tensors, got tensors on {device}")
        if _load_mamba() is None:
            assert _mamba is not None
            raise RuntimeError(
                "selective-scan backend 'cuda' was requested but mamba_ssm's kernel cannot be imported "
                f"({_mamba[1]}); install mamba-ssm or use backend 'triton'/'torch'/'auto'"
            )
        return "cuda", "requested"
    if requested == "triton":
        reason = _triton_unavailable(device)
        if reason:
            raise RuntimeError(
                f"selective-scan backend 'triton' was requested but cannot run: {reason}; use backend 'torch'/'auto'"
            )
        return "triton", "requested"
    if not on_gpu:
        # The torch backend picks the faster recurrence for a CPU problem itself: see SEQUENTIAL_STEP_ELEMENTS.
        return "torch", f"{device.type} tensors"
    if _load_mamba() is not None:
        return "cuda", "mamba_ssm imports"
    assert _mamba is not None
    reason = _triton_unavailable(device)
    if not reason:
        return "triton", f"mamba_ssm cannot be imported ({_mamba[1]})"
    return "torch", f"mamba_ssm cannot be imported ({_mamba[1]}) and the triton backend cannot run: {reason}"


def _requested(backend: str | None) -> str:
    """The backend a call asks for: ``backend`` checked, or (None) :func:`get_scan_backend`'s."""
    return get_scan_backend() if backend is None else _check_backend_name(backend, "the backend argument")


def choose_scan_backend(device: torch.device | str, backend: str | None = None) -> tuple[str, str]:
    """(concrete backend, why) for a call on ``device`` with ``backend`` (None: :func:`get_scan_backend`'s); raises
    if the name is unknown or a backend requested by name cannot run there."""
    requested = _requested(backend)
    return _choose(torch.device(device), requested)


def resolve_scan_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The concrete backend ('cuda', 'triton' or 'torch') a call on ``device`` would use; raises if a backend
    requested by name cannot run there."""
    return choose_scan_backend(device, backend)[0]


@torch.compiler.assume_constant_result
def _plan_backend(device: torch.device, backend: str | None) -> str:
    """:func:`resolve_scan_backend`, logging the first use of each backend. ``torch.compile`` runs it once while
    tracing and keeps its result (it reads the environment and may import and probe kernels)."""
    requested = _requested(backend)
    chosen, why = _choose(device, requested)
    if chosen not in _logged_backends:
        _logged_backends.add(chosen)
        logger.info(
            "selective scan: using backend '%s' (requested '%s', tensors on %s: %s)", chosen, requested, device, why
        )
    return chosen


# ----------------------------------------------------------------------------------------------------------------------
# Input checks and layout
# ----------------------------------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _bc_groups(name: str, t: Tensor, batch: int, dim: int, state: int, length: int) -> int:
    """Groups of a B/C operand (0 = time-invariant per-channel (dim, state)); raises ValueError on a bad shape."""
    if t.dim() == 2:
        if _shape(t) != (dim, state):
            raise ValueError(f"{name} of shape (dim, state) must be {(dim, state)}, got {_shape(t)}")
        return 0
    if t.dim() == 3:
        if _shape(t) != (batch, state, length):
            raise ValueError(
                f"{name} of shape (batch, state, length) must be {(batch, state, length)}, got {_shape(t)}"
            )
        return 1
    if t.dim() == 4:
        groups = t.shape[1]
        if _shape(t) != (batch, groups, state, length) or groups < 1 or dim % groups:
            raise ValueError(
                f"{name} of shape (batch, groups, state, length) must be ({batch}, G, {state}, {length}) with "
                f"dim={dim} divisible by G, got {_shape(t)}"
            )
        return groups
    raise ValueError(
        f"{name} must have shape (dim, state), (batch, state, length) or (batch, groups, state, length), "
        f"got {_shape(t)}"
    )


def _validate(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    chunk_size: int | None,
) -> None:
    """Check shapes up front so that a wrong argument is named instead of failing deep inside a broadcast."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is not None and not (isinstance(t, Tensor) and t.is_floating_point()):
            raise ValueError(
                f"{name} must be a real floating-point tensor, got {type(t).__name__} {getattr(t, 'dtype', '')}"
            )
    if u.dim() != 3 or u.shape[0] < 1 or u.shape[1] < 1 or u.shape[2] < 1:
        raise ValueError(f"u must have shape (batch, dim, length) with all sizes >= 1, got {_shape(u)}")
    batch, dim, length = u.shape
    if _shape(delta) != _shape(u):
        raise ValueError(f"delta must have u's shape {_shape(u)}, got {_shape(delta)}")
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        raise ValueError(f"A must have shape (dim={dim}, state), got {_shape(A)}")
    state = A.shape[1]
    groups = {_bc_groups(name, t, batch, dim, state, length) for name, t in (("B", B), ("C", C))} - {0, 1}
    if len(groups) > 1:
        raise ValueError(
            f"B and C must use the same number of groups (or one group), got {B.shape[1]} and {C.shape[1]}"
        )
    if D is not None and _shape(D) != (dim,):
        raise ValueError(f"D must have shape (dim,) = ({dim},), got {_shape(D)}")
    if z is not None and _shape(z) != _shape(u):
        raise ValueError(f"z must have u's shape {_shape(u)}, got {_shape(z)}")
    if delta_bias is not None and _shape(delta_bias) != (dim,):
        raise ValueError(f"delta_bias must have shape (dim,) = ({dim},), got {_shape(delta_bias)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def default_chunk_size(batch: int, dim: int, state: int) -> int:
    """Chunk length used when none is given: the largest power of two keeping a (batch, dim, chunk, state)
    temporary within :data:`CHUNK_ELEMENTS`, clamped to [16, 1024]."""
    fits = max(1, CHUNK_ELEMENTS // (batch * dim * state))
    return max(16, min(1024, 1 << (fits.bit_length() - 1)))


# Internally every per-step tensor is laid out (batch, G, time, H, N) with H = dim // G channels per B/C group: a
# time step is one contiguous (H, N) block, so the scans slice whole blocks, and contractions with B/C over N (or
# over H for their gradients) are batched matrix products instead of broadcast-multiply-then-sum temporaries.


def _state_groups(B: Tensor, C: Tensor) -> int:
    """Channel groups G of the internal layout: the finest B/C grouping (time-invariant and 3-D forms count as 1)."""
    return max(t.shape[1] if t.dim() == 4 else 1 for t in (B, C))


def _bc_layout(t: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """B/C as a tensor broadcastable to (batch, G, time, H, N)."""
    if t.dim() == 2:  # (dim, N): per channel, constant in time
        return t.to(dtype).reshape(1, groups, 1, t.shape[0] // groups, t.shape[1])
    if t.dim() == 3:  # (batch, N, L): one group
        return t.to(dtype).transpose(1, 2).contiguous().reshape(t.shape[0], 1, t.shape[2], 1, t.shape[1])
    return t.to(dtype).transpose(2, 3).contiguous().unsqueeze(3)  # (batch, G, L, 1, N)


def _bc_unlayout(grad: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_bc_layout` for a gradient, in ``like``'s shape and dtype."""
    if like.dim() == 2:
        out = grad.reshape(_shape(like))
    elif like.dim() == 3:
        out = grad.reshape(like.shape[0], like.shape[2], like.shape[1]).transpose(1, 2)
    else:
        out = grad.squeeze(3).transpose(2, 3)
    return out.to(like.dtype)


def _to_layout(t: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """(batch, dim, L) -> contiguous (batch, G, L, H)."""
    batch, dim, length = t.shape
    return t.to(dtype).reshape(batch, groups, dim // groups, length).transpose(2, 3).contiguous()


def _from_layout(t: Tensor, like: Tensor) -> Tensor:
    """(batch, G, L, H) -> ``like``'s (batch, dim, L) shape and dtype."""
    return t.transpose(2, 3).reshape(_shape(like)).to(like.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# The scan (time is dim -3 of (..., time, H, N))
# ----------------------------------------------------------------------------------------------------------------------


def _scan(decay: Tensor, x: Tensor) -> Tensor:
    """Solve h_0 = x_0, h_t = decay_{t-1} * h_{t-1} + x_t along dim -3 (``decay`` is one step shorter than ``x``).

    Work-efficient parallel scan: pairs (2k, 2k+1) are folded into one step, the half-length problem is solved
    recursively, and the even positions are filled in from their odd predecessors. Only products of decays appear,
    so decays in [0, 1] can never overflow.
    """
    length = x.shape[-3]
    if length == 1:
        return x
    half = length // 2
    step_in = decay[..., 0 : 2 * half - 1 : 2, :, :]  # 2k -> 2k+1
    step_cross = decay[..., 1 : 2 * half - 2 : 2, :, :]  # 2k-1 -> 2k, k >= 1
    odd = _scan(
        step_in[..., 1:, :, :] * step_cross,
        torch.addcmul(x[..., 1 : 2 * half : 2, :, :], step_in, x[..., 0 : 2 * half : 2, :, :]),
    )
    h = torch.empty_like(x)
    h[..., 1::2, :, :] = odd
    h[..., 0, :, :] = x[..., 0, :, :]
    if length > 2:
        evens = (length + 1) // 2
        torch.addcmul(
            x[..., 2::2, :, :],
            decay[..., 1 : 2 * evens - 2 : 2, :, :],
            odd[..., : evens - 1, :, :],
            out=h[..., 2::2, :, :],
        )
    return h


def _scan_reverse(decay: Tensor, x: Tensor) -> Tensor:
    """Solve l_{T-1} = x_{T-1}, l_t = decay_t * l_{t+1} + x_t along dim -3: :func:`_scan` mirrored in time.

    Running it directly (pairs are anchored at the end) avoids three flipped copies of chunk-sized tensors.
    """
    length = x.shape[-3]
    if length == 1:
        return x
    lead = length % 2  # with an odd length the first position is left unpaired
    start = 1 - lead  # first position filled in after the recursion (same parity as length - 1)
    step_in = decay[..., lead : length - 1 : 2, :, :]  # q+1 -> q for the paired positions q
    step_cross = decay[..., lead + 1 : length - 2 : 2, :, :]  # q+2 -> q+1
    paired = _scan_reverse(
        step_in[..., :-1, :, :] * step_cross,
        torch.addcmul(x[..., lead : length - 1 : 2, :, :], step_in, x[..., lead + 1 : length : 2, :, :]),
    )
    h = torch.empty_like(x)
    h[..., lead : length - 1 : 2, :, :] = paired
    h[..., -1, :, :] = x[..., -1, :, :]
    if length > 2:
        torch.addcmul(
            x[..., start : length - 2 : 2, :, :],
            decay[..., start : length - 2 : 2, :, :],
            paired[..., start:, :, :],
            out=h[..., start : length - 2 : 2, :, :],
        )
    return h


def _scan_steps(decay: Tensor, x: Tensor) -> Tensor:
    """:func:`_scan` one step at a time (see :data:`SEQUENTIAL_STEP_ELEMENTS`)."""
    h = torch.empty_like(x)
    h[..., 0, :, :] = x[..., 0, :, :]
    for t in range(1, x.shape[-3]):
        torch.addcmul(x[..., t, :, :], decay[..., t - 1, :, :], h[..., t - 1, :, :], out=h[..., t, :, :])
    return h


def _scan_reverse_steps(decay: Tensor, x: Tensor) -> Tensor:
    """:func:`_scan_reverse` one step at a time."""
    h = torch.empty_like(x)
    h[..., -1, :, :] = x[..., -1, :, :]
    for t in range(x.shape[-3] - 2, -1, -1):
        torch.addcmul(x[..., t, :, :], decay[..., t, :, :], h[..., t + 1, :, :], out=h[..., t, :, :])
    return h


def _sequential(device: torch.device, batch: int, dim: int, state: int) -> bool:
    """Whether the torch backend runs its recurrences as loops for this problem (:data:`SEQUENTIAL_STEP_ELEMENTS`)."""
    threshold = SEQUENTIAL_STEP_ELEMENTS.get(device.type)
    return threshold is not None and batch * dim * state >= threshold


class _Operands(NamedTuple):
    """Inputs in the compute dtype and the internal layout (see above)."""

    u: Tensor  # (batch, G, L, H)
    dt: Tensor  # the step size actually used, (batch, G, L, H)
    A: Tensor  # (G, 1, H, N)
    B: Tensor  # broadcastable to (batch, G, L, H, N)
    C: Tensor
    b_variable: bool  # B changes along time (else it is (dim, N))
    c_variable: bool
    sequential: bool  # recurrences as step loops (see SEQUENTIAL_STEP_ELEMENTS)

    def scan(self, decay: Tensor, x: Tensor) -> Tensor:
        return (_scan_steps if self.sequential else _scan)(decay, x)

    def scan_reverse(self, decay: Tensor, x: Tensor) -> Tensor:
        return (_scan_reverse_steps if self.sequential else _scan_reverse)(decay, x)

    def at(self, t: Tensor, variable: bool, start: int, stop: int) -> Tensor:
        """Steps ``start:stop`` of a B/C layout tensor; a time-invariant one passes through."""
        return t[:, :, start:stop] if variable else t


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 like mamba_ssm (half inputs are upcast), float64 when any input is float64 (tests, gradcheck)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _step_size(
    delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(delta + delta_bias, dt) in (batch, dim, L): dt is the softplus of the first when ``delta_softplus``."""
    pre = delta.to(dtype)
    if delta_bias is not None:
        pre = pre + delta_bias.to(dtype).unsqueeze(-1)
    return pre, F.softplus(pre) if delta_softplus else pre


def _prepare(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, dtype: torch.dtype) -> _Operands:
    groups = _state_groups(B, C)
    return _Operands(
        u=_to_layout(u, groups, dtype),
        dt=_to_layout(dt, groups, dtype),
        A=A.to(dtype).reshape(groups, 1, A.shape[0] // groups, A.shape[1]),
        B=_bc_layout(B, groups, dtype),
        C=_bc_layout(C, groups, dtype),
        b_variable=B.dim() > 2,
        c_variable=C.dim() > 2,
        sequential=_sequential(u.device, u.shape[0], u.shape[1], A.shape[1]),
    )


def _contract_state(states: Tensor, bc: Tensor, variable: bool) -> Tensor:
    """sum_n states[..., n] * bc[..., n] -> (batch, G, T, H)."""
    if variable:
        return torch.matmul(states, bc.transpose(-1, -2)).squeeze(-1)
    return (states * bc).sum(-1)


def _bc_grad(states: Tensor, weight: Tensor, bc: Tensor, variable: bool) -> Tensor:
    """Gradient of ``bc`` from ``sum_n states * bc`` weighted per channel by ``weight`` (batch, G, T, H)."""
    if variable:
        return torch.matmul(weight.unsqueeze(-2), states).sum_to_size(bc.shape)
    return (states * weight.unsqueeze(-1)).sum_to_size(bc.shape)


def _chunk_states(ops: _Operands, start: int, stop: int, h0: Tensor) -> tuple[Tensor, Tensor]:
    """Per-step decays exp(dt * A) and hidden states of steps ``start:stop``, given the state before ``start``."""
    dt = ops.dt[:, :, start:stop]
    decay = (dt.unsqueeze(-1) * ops.A).exp_()
    x = (dt * ops.u[:, :, start:stop]).unsqueeze(-1) * ops.at(ops.B, ops.b_variable, start, stop)
    x[:, :, 0].addcmul_(decay[:, :, 0], h0)
    return decay, ops.scan(decay[:, :, 1:], x)


# ----------------------------------------------------------------------------------------------------------------------
# The torch backend
# ----------------------------------------------------------------------------------------------------------------------


def _torch_forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last state, the state at the start of every chunk as (batch, dim, n_chunks, state))."""
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    with torch.autocast(u.device.type, enabled=False):
        ops = _prepare(u, _step_size(delta, delta_bias, delta_softplus, dtype)[1], A, B, C, dtype)
        batch, groups, length, width = ops.u.shape
        n_chunks = -(-length // chunk_size)
        bounds = ops.u.new_empty(batch, groups, n_chunks, width, A.shape[1])
        y = torch.empty_like(ops.u)
        h = ops.u.new_zeros(batch, groups, width, A.shape[1])
        for k in range(n_chunks):
            start, stop = k * chunk_size, min(length, (k + 1) * chunk_size)
            bounds[:, :, k] = h
            _, states = _chunk_states(ops, start, stop, h)
            C_c = ops.at(ops.C, ops.c_variable, start, stop)
            y[:, :, start:stop] = _contract_state(states, C_c, ops.c_variable)
            h = states[:, :, -1]
        out = _from_layout(y, u.to(dtype))
        if D is not None:
            out.addcmul_(u.to(dtype), D.to(dtype).unsqueeze(-1))
        if z is not None:
            out.mul_(F.silu(z.to(dtype)))
    last = h.reshape(batch, groups * width, -1).contiguous()
    return out.to(u.dtype), last, bounds.transpose(2, 3).reshape(batch, groups * width, n_chunks, -1).contiguous()


def _torch_backward(
    grad_out: Tensor,
    grad_last: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    bounds: Tensor,
    delta_softplus: bool,
    chunk_size: int,
) -> tuple[Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias) in their dtypes (None for an absent input): the chunks in
    reverse, each chunk's states recomputed from its saved start state."""
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    with torch.autocast(u.device.type, enabled=False):
        pre, dt = _step_size(delta, delta_bias, delta_softplus, dtype)
        ops = _prepare(u, dt, A, B, C, dtype)
        batch, groups, length, width = ops.u.shape
        bounds = bounds.reshape(batch, groups, width, -1, A.shape[1])
        grad_out = grad_out.to(dtype)
        dz = None
        if z is not None:
            # out = y * silu(z): dy = g * silu(z); dz needs y, which is recomputed chunk by chunk below.
            z_ = z.to(dtype)
            sig = torch.sigmoid(z_)
            g = _to_layout(grad_out * z_ * sig, groups, dtype)
            dz_factor = _to_layout(grad_out * sig * (1 + z_ * (1 - sig)), groups, dtype)
            dz = torch.empty_like(ops.u)
        else:
            g = _to_layout(grad_out, groups, dtype)
        D_ = None if D is None else D.to(dtype).reshape(groups, 1, width)
        # Adjoint flowing into the current chunk from the step after it; the last state's gradient seeds it.
        carry = grad_last.to(dtype).reshape(batch, groups, width, -1)
        du, ddt = torch.empty_like(ops.u), torch.empty_like(ops.u)
        dA, dB, dC = torch.zeros_like(ops.A), torch.zeros_like(ops.B), torch.zeros_like(ops.C)
        for k in reversed(range(bounds.shape[3])):
            start, stop = k * chunk_size, min(length, (k + 1) * chunk_size)
            h0 = bounds[:, :, :, k]
            decay, states = _chunk_states(ops, start, stop, h0)
            u_c, dt_c, dy = ops.u[:, :, start:stop], ops.dt[:, :, start:stop], g[:, :, start:stop]
            B_c = ops.at(ops.B, ops.b_variable, start, stop)
            C_c = ops.at(ops.C, ops.c_variable, start, stop)
            if dz is not None:
                y_c = _contract_state(states, C_c, ops.c_variable)
                if D_ is not None:
                    y_c.addcmul_(u_c, D_)
                dz[:, :, start:stop] = y_c * dz_factor[:, :, start:stop]
            ops.at(dC, ops.c_variable, start, stop).add_(_bc_grad(states, dy, C_c, ops.c_variable))
            # Adjoint lam_t = dL/dh_t: lam_t = C_t dy_t + decay_{t+1} lam_{t+1}, a scan run backwards in time.
            rhs = dy.unsqueeze(-1) * C_c
            rhs[:, :, -1] += carry
            lam = ops.scan_reverse(decay[:, :, 1:], rhs)
            # q_t = lam_t * decay_t * h_{t-1}: the adjoint of the decay factor, shared by the dt and A gradients.
            q = lam * decay
            q[:, :, 1:] *= states[:, :, :-1]
            q[:, :, 0] *= h0
            dA += (q * dt_c.unsqueeze(-1)).sum_to_size(dA.shape)
            lam_b = _contract_state(lam, B_c, ops.b_variable)
            torch.mul(lam_b, dt_c, out=du[:, :, start:stop])
            torch.addcmul((q * ops.A).sum(-1), lam_b, u_c, out=ddt[:, :, start:stop])
            ops.at(dB, ops.b_variable, start, stop).add_(_bc_grad(lam, dt_c * u_c, B_c, ops.b_variable))
            carry = decay[:, :, 0] * lam[:, :, 0]
        ddelta = _from_layout(ddt, pre)
        if delta_softplus:
            ddelta.mul_(torch.sigmoid(pre))
        du = _from_layout(du, pre)
        dD = None
        if D is not None:
            dy = _from_layout(g, pre)
            du.addcmul_(dy, D.to(dtype).unsqueeze(-1))
            dD = (dy * u.to(dtype)).sum((0, 2)).to(D.dtype)
    return (
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA.reshape(A.shape).to(A.dtype),
        _bc_unlayout(dB, B),
        _bc_unlayout(dC, C),
        dD,
        None if z is None else _from_layout(dz, z),
        None if delta_bias is None else ddelta.sum((0, 2)).to(delta_bias.dtype),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Custom operators (torch.compile sees two opaque ops with fake implementations and an autograd formula)
# ----------------------------------------------------------------------------------------------------------------------


def _backend_functions(backend: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(forward, backward) of a concrete backend the ops run ('torch' or 'triton')."""
    if backend == "torch":
        return _torch_forward, _torch_backward
    module = _load_triton()
    if backend != "triton" or module is None:
        raise ValueError(f"the selective-scan custom op runs backends 'torch' and 'triton', got {backend!r}")
    return module.forward, module.backward


def _chunk(u: Tensor, A: Tensor, chunk_size: int | None) -> int:
    return default_chunk_size(u.shape[0], u.shape[1], A.shape[1]) if chunk_size is None else chunk_size


@torch.library.custom_op("ldt::selective_scan", mutates_args=())
def _scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last state, chunk start states) of the 'torch' or 'triton' backend; inputs already validated."""
    forward = _backend_functions(backend)[0]
    out, last, bounds = forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, _chunk(u, A, chunk_size))
    return out.contiguous(), last, bounds  # the fake's strides (the torch backend's out may be a transposed view)


@_scan_op.register_fake
def _scan_op_fake(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    batch, dim, length = u.shape
    state = A.shape[1]
    sizes = (batch, dim, length, state, chunk_size)
    if all(isinstance(s, int) or s is None for s in sizes):
        chunk = _chunk(u, A, chunk_size)
        if backend == "triton":
            module = _load_triton()
            assert module is not None
            n_chunks = module.saved_chunks(dim, _state_groups(B, C), state, length, chunk)
        else:
            n_chunks = -(-length // chunk)
    else:  # symbolic sizes: the count (a power-of-two rounding of them) is left to the real run
        n_chunks = torch.library.get_ctx().new_dynamic_size()
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    return (
        u.new_empty(u.shape),
        u.new_empty(batch, dim, state, dtype=dtype),
        u.new_empty(batch, dim, n_chunks, state, dtype=dtype),
    )


@torch.library.custom_op("ldt::selective_scan_backward", mutates_args=())
def _scan_backward_op(
    grad_out: Tensor,
    grad_last: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    bounds: Tensor,
    delta_softplus: bool,
    chunk_size: int | None,
    backend: str,
) -> list[Tensor]:
    """Gradients of the inputs that are present, in the order (u, delta, A, B, C, D, z, delta_bias)."""
    backward = _backend_functions(backend)[1]
    grads = backward(
        grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, bounds, delta_softplus, _chunk(u, A, chunk_size)
    )
    return [g.contiguous() for g in grads if g is not None]


@_scan_backward_op.register_fake
def _scan_backward_op_fake(
    grad_out: Tensor,
    grad_last: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    bounds: Tensor,
    delta_softplus: bool,
    chunk_size: int | None,
    backend: str,
) -> list[Tensor]:
    return [t.new_empty(t.shape) for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]


def _scan_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    *tensors, delta_softplus, chunk_size, backend = inputs
    ctx.save_for_backward(*tensors, output[2])
    ctx.options = (delta_softplus, chunk_size, backend)


def _scan_op_backward(ctx: Any, grad_out: Tensor, grad_last: Tensor, _grad_bounds: Tensor) -> tuple[Any, ...]:
    *tensors, bounds = ctx.saved_tensors
    grads = iter(_scan_backward_op(grad_out, grad_last, *tensors, bounds, *ctx.options))
    return (*(None if t is None else next(grads) for t in tensors), None, None, None)


_scan_op.register_autograd(_scan_op_backward, setup_context=_scan_setup_context)


class SelectiveScanFn:
    """The torch backend with the argument order of the former autograd Function (kept for existing callers)."""

    @staticmethod
    def apply(
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        z: Tensor | None,
        delta_bias: Tensor | None,
        delta_softplus: bool,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        """``(out, last_state)``, both differentiable."""
        out, last, _ = _scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, "torch")
        return out, last


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: str | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba_ssm's ``selective_scan_fn``, runnable without its CUDA kernel.

    Shapes: u, delta, z: (batch, dim, L); A: (dim, N), real (complex A is not supported); B, C: (batch, G, N, L)
    with dim divisible by G (each run of dim // G channels shares B/C), or (batch, N, L) (one group), or (dim, N)
    (constant in time); D, delta_bias: (dim,). With dt = delta + delta_bias (softplus'ed if ``delta_softplus``):
    ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t`` and ``out_t = (C_t . h_t + D * u_t) * silu(z_t)``.
    Computed in float32 (float64 for float64 inputs); ``out`` has u's dtype, the last state (batch, dim, N) is
    float32/float64. The 'triton' and 'torch' backends propagate the last state's gradient; mamba_ssm's kernel
    ignores it. ``backend`` overrides :func:`get_scan_backend`. ``chunk_size`` (triton and torch backends) is the
    number of steps between saved states; None picks :func:`default_chunk_size`. With the torch backend smaller
    chunks lower the temporary memory of one call and raise its run time; the triton backend rounds it up to a
    power-of-two number of its time tiles (at most 8); the saved memory barely changes.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, chunk_size)
    chosen = _plan_backend(u.device, backend)
    if chosen == "cuda":
        kernel = _load_mamba()
        assert kernel is not None
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out, last_state, _ = _scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, chosen)
    return (out, last_state) if return_last_state else out
