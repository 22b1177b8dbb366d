"""Selective scan (Mamba's S6 recurrence) with a memory-lean pure-PyTorch backward.

MambaIR calls mamba_ssm's ``selective_scan_fn``. Its CUDA kernel is hard to install, and the pure-PyTorch reference
keeps (batch, dim, length, state) tensors for autograd (about 3.4 GiB per MambaIR block at batch 4 on 48x48 patches).
This module gives the same semantics with two backends:

* ``"cuda"``: mamba_ssm's kernel, imported lazily; optional, never required.
* ``"torch"``: :class:`SelectiveScanFn`, a custom autograd function. The forward keeps only the inputs and the hidden
  state at every ``chunk_size``-th step; the backward walks the chunks in reverse, recomputes each chunk's states from
  its boundary state and runs the adjoint recurrence. Saved memory is O(batch * dim * length) plus the boundary states.

Within a chunk both recurrences run as a work-efficient parallel scan (pairs are combined level by level, log2(chunk)
levels) over *products* of decays. For Mamba's negative-real ``A`` (``A = -exp(A_log)``) every decay lies in (0, 1], so
products only shrink towards zero and nothing can overflow; cumulative sums of ``delta * A`` fed to ``exp`` would
overflow within a few dozen steps. A positive ``A`` is still computed exactly, but then the state itself grows
exponentially and float32 overflows as soon as the true state does.

Backend choice: the ``backend`` argument, else :func:`set_scan_backend`, else the environment variable
``LDT_SCAN_BACKEND`` (``auto`` | ``cuda`` | ``torch``), else ``auto`` (the kernel for CUDA tensors when mamba_ssm
imports, otherwise ``"torch"``). The backend used is logged once per backend on the ``ldt.ops`` logger.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "BACKENDS",
    "CHUNK_ELEMENTS",
    "ENV_VAR",
    "SelectiveScanFn",
    "default_chunk_size",
    "get_scan_backend",
    "resolve_scan_backend",
    "selective_scan_fn",
    "set_scan_backend",
]

ENV_VAR = "LDT_SCAN_BACKEND"
BACKENDS = ("auto", "cuda", "torch")
# The default chunk length makes one (batch, dim, chunk, state) temporary about this many elements (128 MiB in
# float32). Each chunk costs ~150 small kernel launches, so short chunks are launch-bound on a GPU: at MambaIR x4
# training sizes on an H100, chunks of 64 / 128 / 256 steps took 75 / 42 / 30 ms per forward+backward and peaked at
# 0.7 / 0.9 / 1.3 GiB of temporaries; longer chunks gained nothing more.
CHUNK_ELEMENTS = 1 << 25

logger = logging.getLogger("ldt.ops")

_backend_override: str | None = None
_logged_backends: set[str] = set()
# (selective_scan_fn or None, reason it is unavailable); None until the first import attempt.
_mamba: tuple[Callable[..., Any] | None, str] | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Backend selection
# ----------------------------------------------------------------------------------------------------------------------


def _check_backend_name(name: str, source: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {name!r} (from {source}); expected one of {', '.join(BACKENDS)}"
        )
    return key


def set_scan_backend(name: str | None) -> None:
    """Pin the backend for this process, overriding ``LDT_SCAN_BACKEND``; ``None`` hands control back to the env var."""
    global _backend_override
    _backend_override = None if name is None else _check_backend_name(name, "set_scan_backend")


def get_scan_backend() -> str:
    """The requested backend ('auto', 'cuda' or 'torch'): the pinned one, else ``LDT_SCAN_BACKEND``, else 'auto'."""
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


def resolve_scan_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The concrete backend ('cuda' or 'torch') a call on ``device`` would use; raises if 'cuda' cannot be honoured."""
    requested = get_scan_backend() if backend is None else _check_backend_name(backend, "the backend argument")
    on_cuda = torch.device(device).type == "cuda"
    if requested == "torch":
        return "torch"
    if requested == "cuda":
        if not on_cuda:
            raise ValueError(f"selective-scan backend 'cuda' needs CUDA tensors, got tensors on {device}")
        if _load_mamba() is None:
            assert _mamba is not None
            raise RuntimeError(
                "selective-scan backend 'cuda' was requested but mamba_ssm's kernel cannot be imported "
                f"({_mamba[1]}); install mamba-ssm or use backend 'torch'/'auto'"
            )
        return "cuda"
    return "cuda" if on_cuda and _load_mamba() is not None else "torch"


def _log_backend_once(backend: str, requested: str, device: torch.device) -> None:
    if backend not in _logged_backends:
        _logged_backends.add(backend)
        logger.info("selective scan: using backend '%s' (requested '%s', tensors on %s)", backend, requested, device)


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


class _Operands(NamedTuple):
    """Inputs in the compute dtype and the internal layout (see above)."""

    u: Tensor  # (batch, G, L, H)
    dt: Tensor  # the step size actually used, (batch, G, L, H)
    A: Tensor  # (G, 1, H, N)
    B: Tensor  # broadcastable to (batch, G, L, H, N)
    C: Tensor
    b_variable: bool  # B changes along time (else it is (dim, N))
    c_variable: bool

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
    return decay, _scan(decay[:, :, 1:], x)


class SelectiveScanFn(torch.autograd.Function):
    """Selective scan with an analytic, chunked reverse-time backward (see the module docstring).

    ``apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)`` returns ``(out, last_state)``; both
    are differentiable. Saved for backward: the inputs as given plus the state at the start of every chunk.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
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
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, bounds)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_size = chunk_size
        ctx.dtype = dtype
        return out.to(u.dtype), h.reshape(batch, groups * width, -1).clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_out: Tensor, grad_last: Tensor
    ) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias, bounds = ctx.saved_tensors
        dtype, chunk_size = ctx.dtype, ctx.chunk_size
        with torch.autocast(u.device.type, enabled=False):
            pre, dt = _step_size(delta, delta_bias, ctx.delta_softplus, dtype)
            ops = _prepare(u, dt, A, B, C, dtype)
            batch, groups, length, width = ops.u.shape
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
            for k in reversed(range(bounds.shape[2])):
                start, stop = k * chunk_size, min(length, (k + 1) * chunk_size)
                h0 = bounds[:, :, k]
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
                lam = _scan_reverse(decay[:, :, 1:], rhs)
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
            if ctx.delta_softplus:
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
            None,
            None,
        )


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
    float32/float64. With the 'torch' backend the last state's gradient is propagated; mamba_ssm's kernel ignores it.
    ``backend`` overrides :func:`get_scan_backend`. ``chunk_size`` (torch backend only) is the number of steps between
    saved states; None picks :func:`default_chunk_size`. Smaller chunks lower the temporary memory of one call and
    raise its run time; the saved memory barely changes.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, chunk_size)
    requested = get_scan_backend() if backend is None else _check_backend_name(backend, "the backend argument")
    chosen = resolve_scan_backend(u.device, requested)
    _log_backend_once(chosen, requested, u.device)
    if chosen == "cuda":
        kernel = _load_mamba()
        assert kernel is not None
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if chunk_size is None:
        chunk_size = default_chunk_size(u.shape[0], u.shape[1], A.shape[1])
    out, last_state = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (out, last_state) if return_last_state else out
