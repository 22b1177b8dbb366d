"""Fused Triton kernels for the selective scan: the ``triton`` backend of :mod:`ldt.ops.selective_scan`.

Imported lazily (it imports triton). Layout of the work:

* One program owns ``BLOCK_D`` channels of one batch element, all in the same B/C group, so the B/C tiles it loads
  serve all its channels; their (BLOCK_D, BLOCK_N) hidden state stays in registers for the whole sequence.
* The sequence is walked in tiles of ``BLOCK_T`` steps. Within a tile the recurrence ``h_t = a_t h_{t-1} + x_t`` is a
  parallel scan over time (``tl.associative_scan`` over (decay, input) pairs): only products of decays appear, so
  Mamba's decays in (0, 1] cannot overflow. The state carried in from the previous tile is added afterwards,
  ``h = h_local + (prod of decays) * h_carry``.
* ``TILES`` tiles form a chunk. The forward writes ``out`` (``D`` skip and ``z`` gating fused), the last state and
  the state at the start of every chunk, nothing per step and state.
* The backward walks the chunks in reverse. Per chunk it re-runs the forward from the saved chunk state to get the
  state at each tile start (kept in registers), then walks the tiles in reverse: it recomputes the tile's states and
  runs the adjoint recurrence ``lam_t = C_t dy_t + a_{t+1} lam_{t+1}`` as a reverse scan, seeded by the adjoint
  carried in from the tile after it (the last state's gradient for the last tile). ``a_t h_{t-1}`` is taken as
  ``h_t - x_t``, which needs neither a shifted state nor a division by a decay that may underflow to zero.
* Gradients summed over time (A, D, delta_bias, time-invariant B/C) are reduced per program and summed over the
  batch by torch. Gradients of time-varying B/C are sums over the channels of a group: each program reduces its
  BLOCK_D channels in registers and adds the result with float32 (float64) atomics, so the order of those sums, and
  the last bits of dB/dC, vary from run to run.

Everything is computed in float32 (float64 for float64 inputs) whatever the input dtype.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ldt.ops.selective_scan import _compute_dtype, _state_groups

__all__ = [
    "ELEMENTS_PER_THREAD",
    "INTERPRETED",
    "MAX_BLOCK_D",
    "MAX_BLOCK_T",
    "MAX_TILES",
    "MAX_WARPS",
    "TILE_ELEMENTS",
    "Blocks",
    "backward",
    "blocks",
    "forward",
    "saved_chunks",
]

# Tiling knobs (module attributes so that scripts/gpu_check_scan.py can sweep them). TILE_ELEMENTS bounds one
# (BLOCK_D, BLOCK_N, BLOCK_T) register tile; the backward keeps about eight of them live, at 16 elements per thread.
TILE_ELEMENTS = 4096
MAX_BLOCK_T = 32
MAX_BLOCK_D = 8
# A chunk holds at most this many tiles: their start states are one (BLOCK_D, TILES, BLOCK_N) register tile.
MAX_TILES = 8
# Warps per program: one per 32 * ELEMENTS_PER_THREAD tile elements, at most MAX_WARPS. Compiled for sm_90 with
# triton 3.8 (ptxas -v), the MambaIR tile (8, 16, 32) at 8 warps takes 126 registers forward and 223 backward, no
# spills (triton 3.6, the H200 image's: 126 and 249, no spills); at 16 warps 104 and 128 (40 bytes spilled).
ELEMENTS_PER_THREAD = 16
MAX_WARPS = 16


@triton.jit
def _compose(a1, b1, a2, b2):
    """(a, b) stands for h -> a * h + b; this is the map of the first pair followed by the second."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x):
    """F.softplus (threshold 20). For small e = exp(x) (MambaIR's step sizes are ~1e-3) log(1 + e) would lose
    digits, and the interpreter has no libdevice log1p: below e = 1/16 it is the series of 2 atanh(e / (2 + e)),
    whose first five terms leave a relative error under 1e-16."""
    e = tl.exp(tl.minimum(x, 20.0))
    s = e / (2.0 + e)
    s2 = s * s
    series = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))))
    return tl.where(x > 20.0, x, tl.where(e < 0.0625, series, tl.log(1.0 + e)))


@triton.jit
def _step_size(delta_ptr, offs, mask, bias, SOFTPLUS: tl.constexpr, COMPUTE: tl.constexpr):
    """(delta + bias, dt) for a (BLOCK_D, BLOCK_T) tile; dt is zero outside ``mask`` so that padded steps keep the
    state (decay exp(0) = 1, input 0)."""
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(COMPUTE) + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(pre)
    else:
        dt = pre
    return pre, tl.where(mask, dt, 0.0)


@triton.jit
def _load_bc(ptr, rows, invariant, t, mask_n, mask_t, VARIABLE: tl.constexpr, COMPUTE: tl.constexpr):
    """B or C for a tile, broadcastable to (BLOCK_D, BLOCK_N, BLOCK_T): the group's (N, T) tile when it varies in
    time (``rows`` = offsets of its N rows), else the per-channel (D, N) values."""
    if VARIABLE:
        bc = tl.load(ptr + rows[:, None] + t[None, :], mask=mask_n[:, None] & mask_t[None, :], other=0.0)
        bc = bc.to(COMPUTE)[None, :, :]
    else:
        bc = invariant[:, :, None]
    return bc


@triton.jit
def _tile_forward(
    u_ptr, delta_ptr, B_ptr, base, b_rows, B_inv, A, bias, h0, t, length, mask_d, mask_n,
    B_VARIABLE: tl.constexpr, SOFTPLUS: tl.constexpr, COMPUTE: tl.constexpr,
):
    """One tile's recurrence from the state ``h0`` before it.

    Returns (offsets, mask, u, pre, dt, B, x, h): (BLOCK_D, BLOCK_T) offsets, mask, u, pre-activation and step
    size, the tile of B (broadcastable to (BLOCK_D, BLOCK_N, BLOCK_T)), and the inputs ``x = dt u B`` and states.
    """
    mask_t = t < length
    mask = mask_d[:, None] & mask_t[None, :]
    offs = base[:, None] + t[None, :]
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    pre, dt = _step_size(delta_ptr, offs, mask, bias, SOFTPLUS, COMPUTE)
    Bt = _load_bc(B_ptr, b_rows, B_inv, t, mask_n, mask_t, B_VARIABLE, COMPUTE)
    x = (dt * u)[:, None, :] * Bt
    decay = tl.exp(dt[:, None, :] * A[:, :, None])
    cum_decay, h_local = tl.associative_scan((decay, x), axis=2, combine_fn=_compose)
    h = h_local + cum_decay * h0[:, :, None]
    return offs, mask, u, pre, dt, Bt, x, h


@triton.jit
def _column(x, cols, index):
    """x[:, :, index] of a (D, N, T) tile (a masked sum: register tensors cannot be indexed)."""
    return tl.sum(tl.where(cols[None, None, :] == index, x, 0.0), axis=2)


@triton.jit
def _load_channel(ptr, offs_d, mask_d, HAS: tl.constexpr, COMPUTE: tl.constexpr):
    """A per-channel vector (D or delta_bias), zeros when absent."""
    if HAS:
        v = tl.load(ptr + offs_d, mask=mask_d, other=0.0).to(COMPUTE)
    else:
        v = tl.zeros(offs_d.shape, COMPUTE)
    return v


@triton.jit
def _bc_operand(ptr, pid_b, block_start, offs_d, offs_n, mask_dn, dim, state, length, groups,
                VARIABLE: tl.constexpr, COMPUTE: tl.constexpr):
    """Where a program finds B or C: the row offsets of its group's (N, L) slab when the operand varies in time
    (its BLOCK_D channels share one group), else the operand's (BLOCK_D, BLOCK_N) per-channel values."""
    if VARIABLE:
        group = block_start // (dim // groups)
        rows = ((pid_b * groups + group) * state + offs_n) * length
        values = tl.zeros(mask_dn.shape, COMPUTE)
    else:
        rows = offs_n
        values = tl.load(ptr + offs_d[:, None] * state + offs_n[None, :], mask=mask_dn, other=0.0).to(COMPUTE)
    return rows, values


@triton.jit
def _prologue(
    A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dim, length, state, b_groups, c_groups,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr,
):
    """What a program needs for the whole sequence: its channel and state offsets and masks, the (batch, channel)
    row index of each channel, and the per-channel operands (A, delta_bias, D, where to find B and C)."""
    # Grid (batch, dim // BLOCK_D): CUDA limits grid axis 0 to 2**31 - 1 programs but axes 1 and 2 to 65535, so the
    # batch, which may be large, takes axis 0 (see _grid).
    pid_b = tl.program_id(0).to(tl.int64)
    block_start = tl.program_id(1) * BLOCK_D
    offs_d = block_start + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # Decays exp(0) = 1 and inputs 0 for the padded states n >= state: they stay zero and contribute nothing.
    A = tl.load(A_ptr + offs_d[:, None] * state + offs_n[None, :], mask=mask_dn, other=0.0).to(COMPUTE)
    bias = _load_channel(bias_ptr, offs_d, mask_d, HAS_BIAS, COMPUTE)
    skip = _load_channel(D_ptr, offs_d, mask_d, HAS_D, COMPUTE)
    b_rows, B_inv = _bc_operand(B_ptr, pid_b, block_start, offs_d, offs_n, mask_dn, dim, state, length, b_groups,
                                B_VARIABLE, COMPUTE)
    c_rows, C_inv = _bc_operand(C_ptr, pid_b, block_start, offs_d, offs_n, mask_dn, dim, state, length, c_groups,
                                C_VARIABLE, COMPUTE)
    # Offsets into (batch, dim, ...) tensors are int64 (pid_b is): batch * dim * length passes 2**31 at MambaIR's
    # test sizes (a 1024x1024 input gives L = 2**20 with dim 1440), and an int32 product would wrap silently.
    channel_rows = pid_b * dim + offs_d
    base = channel_rows * length  # start of each channel's (batch, channel, :) row
    state_offs = channel_rows[:, None] * state + offs_n[None, :]  # (batch, dim, state) tensors
    return (offs_d, offs_n, mask_d, mask_n, mask_dn, channel_rows, base, state_offs, A, bias, skip,
            b_rows, B_inv, c_rows, C_inv)


@triton.jit
def _bound_offsets(channel_rows, offs_n, n_chunks, k, state):
    """Offsets of chunk ``k``'s start states in the (batch, dim, n_chunks, state) ``bounds``."""
    return (channel_rows[:, None] * n_chunks + k) * state + offs_n[None, :]


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, last_ptr, bounds_ptr,
    dim, length, state, n_chunks, b_groups, c_groups,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, TILES: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    COMPUTE: tl.constexpr = bounds_ptr.dtype.element_ty
    (offs_d, offs_n, mask_d, mask_n, mask_dn, channel_rows, base, state_offs, A, bias, skip,
     b_rows, B_inv, c_rows, C_inv) = _prologue(
        A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dim, length, state, b_groups, c_groups,
        BLOCK_D, BLOCK_N, B_VARIABLE, C_VARIABLE, HAS_D, HAS_BIAS, COMPUTE,
    )
    cols = tl.arange(0, BLOCK_T)
    h = tl.zeros((BLOCK_D, BLOCK_N), COMPUTE)
    for k in range(n_chunks):
        bound_offs = _bound_offsets(channel_rows, offs_n, n_chunks, k, state)
        tl.store(bounds_ptr + bound_offs, h, mask=mask_dn)
        for j in range(TILES):
            t = (k * TILES + j) * BLOCK_T + cols
            offs, mask, u, _, _, _, _, hs = _tile_forward(
                u_ptr, delta_ptr, B_ptr, base, b_rows, B_inv, A, bias, h, t, length, mask_d, mask_n,
                B_VARIABLE, SOFTPLUS, COMPUTE,
            )
            Ct = _load_bc(C_ptr, c_rows, C_inv, t, mask_n, t < length, C_VARIABLE, COMPUTE)
            y = tl.sum(hs * Ct, axis=1) + skip[:, None] * u
            if HAS_Z:
                z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
                y = y * z * _sigmoid(z)
            tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
            # Padded steps keep the state, so the last column is the state after the tile's last real step.
            h = _column(hs, cols, BLOCK_T - 1)
    tl.store(last_ptr + state_offs, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    grad_out_ptr, grad_last_ptr,
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, bounds_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, length, state, n_chunks, b_groups, c_groups,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, TILES: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    COMPUTE: tl.constexpr = bounds_ptr.dtype.element_ty
    (offs_d, offs_n, mask_d, mask_n, mask_dn, channel_rows, base, state_offs, A, bias, skip,
     b_rows, B_inv, c_rows, C_inv) = _prologue(
        A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dim, length, state, b_groups, c_groups,
        BLOCK_D, BLOCK_N, B_VARIABLE, C_VARIABLE, HAS_D, HAS_BIAS, COMPUTE,
    )
    cols = tl.arange(0, BLOCK_T)
    tile_ids = tl.arange(0, TILES)
    # Adjoint of the state at the step after the current tile; the last state's gradient seeds it.
    carry = tl.load(grad_last_ptr + state_offs, mask=mask_dn, other=0.0).to(COMPUTE)
    dA = tl.zeros((BLOCK_D, BLOCK_N), COMPUTE)
    dB_inv = tl.zeros((BLOCK_D, BLOCK_N), COMPUTE)
    dC_inv = tl.zeros((BLOCK_D, BLOCK_N), COMPUTE)
    dD = tl.zeros((BLOCK_D,), COMPUTE)
    dbias = tl.zeros((BLOCK_D,), COMPUTE)
    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        bound_offs = _bound_offsets(channel_rows, offs_n, n_chunks, k, state)
        h = tl.load(bounds_ptr + bound_offs, mask=mask_dn, other=0.0)
        # Pass 1: the state before every tile of the chunk, from the saved state at its start.
        starts = tl.zeros((BLOCK_D, TILES, BLOCK_N), COMPUTE)
        for j in range(TILES - 1):
            starts = tl.where(tile_ids[None, :, None] == j, h[:, None, :], starts)
            t = (k * TILES + j) * BLOCK_T + cols
            _, _, _, _, _, _, _, hs = _tile_forward(
                u_ptr, delta_ptr, B_ptr, base, b_rows, B_inv, A, bias, h, t, length, mask_d, mask_n,
                B_VARIABLE, SOFTPLUS, COMPUTE,
            )
            h = _column(hs, cols, BLOCK_T - 1)
        starts = tl.where(tile_ids[None, :, None] == TILES - 1, h[:, None, :], starts)
        # Pass 2: the tiles in reverse.
        for jj in range(TILES):
            j = TILES - 1 - jj
            t = (k * TILES + j) * BLOCK_T + cols
            mask_t = t < length
            h0 = tl.sum(tl.where(tile_ids[None, :, None] == j, starts, 0.0), axis=1)
            offs, mask, u, pre, dt, Bt, x, hs = _tile_forward(
                u_ptr, delta_ptr, B_ptr, base, b_rows, B_inv, A, bias, h0, t, length, mask_d, mask_n,
                B_VARIABLE, SOFTPLUS, COMPUTE,
            )
            Ct = _load_bc(C_ptr, c_rows, C_inv, t, mask_n, mask_t, C_VARIABLE, COMPUTE)
            dout = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
            if HAS_Z:
                # out = y * silu(z): dy = dout * silu(z), dz = dout * y * silu'(z).
                z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
                sig = _sigmoid(z)
                y = tl.sum(hs * Ct, axis=1) + skip[:, None] * u
                dz = dout * y * sig * (1.0 + z * (1.0 - sig))
                tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
                dy = dout * z * sig
            else:
                dy = dout
            # lam_t = C_t dy_t + a_{t+1} lam_{t+1}: a reverse scan over (a_{t+1}, C_t dy_t), continued from `carry`.
            # a_{t+1} comes from the step sizes one step later; past the end it is exp(0) = 1, which passes the
            # last state's gradient to the last real step unchanged.
            _, dt_next = _step_size(delta_ptr, offs + 1, mask_d[:, None] & (t + 1 < length)[None, :], bias,
                                    SOFTPLUS, COMPUTE)
            decay_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
            cum_decay, lam_local = tl.associative_scan(
                (decay_next, dy[:, None, :] * Ct), axis=2, combine_fn=_compose, reverse=True
            )
            lam = lam_local + cum_decay * carry[:, :, None]
            carry = _column(lam, cols, 0)
            # q_t = lam_t * a_t * h_{t-1} = lam_t * (h_t - x_t): the adjoint of the decay factor.
            q = lam * (hs - x)
            dA += tl.sum(q * dt[:, None, :], axis=2)
            lam_b = tl.sum(lam * Bt, axis=1)
            du = lam_b * dt + skip[:, None] * dy
            ddt = tl.sum(q * A[:, :, None], axis=1) + lam_b * u
            if SOFTPLUS:
                ddt = ddt * _sigmoid(pre)
            ddt = tl.where(mask, ddt, 0.0)
            tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)
            tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
            if HAS_BIAS:
                dbias += tl.sum(ddt, axis=1)
            if HAS_D:
                dD += tl.sum(dy * u, axis=1)
            dB_t = lam * (dt * u)[:, None, :]
            dC_t = hs * dy[:, None, :]
            mask_nt = mask_n[:, None] & mask_t[None, :]
            if B_VARIABLE:
                tl.atomic_add(dB_ptr + b_rows[:, None] + t[None, :], tl.sum(dB_t, axis=0), mask=mask_nt,
                              sem="relaxed")
            else:
                dB_inv += tl.sum(dB_t, axis=2)
            if C_VARIABLE:
                tl.atomic_add(dC_ptr + c_rows[:, None] + t[None, :], tl.sum(dC_t, axis=0), mask=mask_nt,
                              sem="relaxed")
            else:
                dC_inv += tl.sum(dC_t, axis=2)
    tl.store(dA_ptr + state_offs, dA, mask=mask_dn)
    if not B_VARIABLE:
        tl.store(dB_ptr + state_offs, dB_inv, mask=mask_dn)
    if not C_VARIABLE:
        tl.store(dC_ptr + state_offs, dC_inv, mask=mask_dn)
    tl.store(dD_ptr + channel_rows, dD, mask=mask_d)
    tl.store(dbias_ptr + channel_rows, dbias, mask=mask_d)


# Kernels decorated while TRITON_INTERPRET=1 was set (before triton was first imported) run on CPU tensors.
INTERPRETED = not isinstance(_scan_fwd_kernel, triton.runtime.JITFunction)


class Blocks(NamedTuple):
    """Launch shape: channels per program, padded state, steps per tile, tiles per saved chunk, warps."""

    d: int
    n: int
    t: int
    tiles: int
    warps: int

    @property
    def chunk(self) -> int:
        """Steps between saved states."""
        return self.t * self.tiles


def _floor_pow2(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def blocks(dim: int, groups: int, state: int, length: int, chunk_size: int) -> Blocks:
    """Tile shapes for a problem (all powers of two, as Triton needs): the widest channel block that divides the
    channels per B/C group, within :data:`TILE_ELEMENTS` per tile. The saved chunk is ``chunk_size`` rounded up
    to a power-of-two number of tiles, capped by :data:`MAX_TILES` and by the sequence."""
    n = triton.next_power_of_2(state)
    t = min(MAX_BLOCK_T, triton.next_power_of_2(length), _floor_pow2(TILE_ELEMENTS // n))
    width = dim // groups
    d = min(width & -width, MAX_BLOCK_D, _floor_pow2(TILE_ELEMENTS // (n * t)))
    tiles = min(
        triton.next_power_of_2(triton.cdiv(chunk_size, t)),
        triton.next_power_of_2(triton.cdiv(length, t)),
        MAX_TILES,
        _floor_pow2(TILE_ELEMENTS // (d * n)),
    )
    warps = max(1, min(MAX_WARPS, d * n * t // (32 * ELEMENTS_PER_THREAD)))
    return Blocks(d, n, t, tiles, warps)


class _Problem(NamedTuple):
    """Contiguous operands and the launch parameters shared by the forward and the backward."""

    tensors: tuple[Tensor, ...]  # u, delta, A, B, C, D, z, delta_bias
    dtype: torch.dtype
    cfg: Blocks
    n_chunks: int
    sizes: tuple[int, ...]  # dim, length, state, n_chunks, B groups, C groups
    flags: dict[str, object]


def _problem(
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
) -> _Problem:
    # An absent operand is passed as an empty tensor (its HAS_* flag is off, so it is never read): helper functions
    # then see ordinary pointer arguments rather than constexpr None.
    absent = u.new_empty(0)
    tensors = tuple(absent if t is None else t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias))
    _, dim, length = u.shape
    state = A.shape[1]
    cfg = blocks(dim, _state_groups(B, C), state, length, chunk_size)
    n_chunks = triton.cdiv(length, cfg.chunk)
    groups = [t.shape[1] if t.dim() == 4 else 1 for t in (B, C)]
    flags = dict(
        BLOCK_D=cfg.d, BLOCK_N=cfg.n, BLOCK_T=cfg.t, TILES=cfg.tiles,
        B_VARIABLE=B.dim() > 2, C_VARIABLE=C.dim() > 2,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        num_warps=cfg.warps,
    )
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    return _Problem(tensors, dtype, cfg, n_chunks, (dim, length, state, n_chunks, *groups), flags)


def _grid(batch: int, dim: int, cfg: Blocks) -> tuple[int, int]:
    """One program per (batch element, block of ``cfg.d`` channels); the channel blocks on grid axis 1, which CUDA
    (and ROCm) limit to 65535 programs."""
    if dim // cfg.d > 65535:
        raise ValueError(f"the triton scan launches one program per {cfg.d} channels of a batch element: "
                         f"{dim // cfg.d} programs for {dim} channels exceed grid axis 1's limit of 65535")
    return (batch, dim // cfg.d)


def _on_device(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """The launch context for tensors on ``t``'s device: Triton launches on the *current* CUDA device and stream,
    so tensors on another GPU than the current one (a model on cuda:1 in a process whose current device is cuda:0)
    would be handed to a kernel running on the wrong GPU."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def saved_chunks(dim: int, groups: int, state: int, length: int, chunk_size: int) -> int:
    """Number of saved chunk states along the sequence (the size of dim 2 of the forward's ``bounds``)."""
    return triton.cdiv(length, blocks(dim, groups, state, length, chunk_size).chunk)


def forward(
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
    """(out, last state, chunk start states (batch, dim, n_chunks, state)); same contract as the torch backend."""
    p = _problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    batch, dim, _ = u.shape
    state = A.shape[1]
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    last = u.new_empty(batch, dim, state, dtype=p.dtype)
    bounds = u.new_empty(batch, dim, p.n_chunks, state, dtype=p.dtype)
    with _on_device(u):
        _scan_fwd_kernel[_grid(batch, dim, p.cfg)](*p.tensors, out, last, bounds, *p.sizes, **p.flags)
    return out, last, bounds


def backward(
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
    """Gradients of (u, delta, A, B, C, D, z, delta_bias), each in its input's dtype (None for an absent input)."""
    p = _problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    batch, dim, _ = u.shape
    state = A.shape[1]

    def like(t: Tensor) -> Tensor:
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)

    def per_channel(*shape: int) -> Tensor:  # per-batch partial sums, reduced over the batch below
        return u.new_empty(batch, dim, *shape, dtype=p.dtype)

    def bc_grad(t: Tensor) -> Tensor:  # time-varying: atomically accumulated in the operand's layout
        return torch.zeros(t.shape, dtype=p.dtype, device=t.device) if t.dim() > 2 else per_channel(state)

    du, ddelta, dz = like(u), like(delta), None if z is None else like(z)
    dA, dB, dC, dD, dbias = per_channel(state), bc_grad(B), bc_grad(C), per_channel(), per_channel()
    with _on_device(u):
        _scan_bwd_kernel[_grid(batch, dim, p.cfg)](
            grad_out.contiguous(), grad_last.to(p.dtype).contiguous(), *p.tensors, bounds,
            du, ddelta, u.new_empty(0) if dz is None else dz, dA, dB, dC, dD, dbias, *p.sizes, **p.flags,
        )

    def bc_result(grad: Tensor, like_: Tensor) -> Tensor:
        return (grad if like_.dim() > 2 else grad.sum(0)).to(like_.dtype)

    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        bc_result(dB, B),
        bc_result(dC, C),
        None if D is None else dD.sum(0).to(D.dtype),
        dz,
        None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
    )
