"""Fused Triton kernels for windowed hierarchical attention: pooling, forward, backward.

Launchers called by the dispatch layer (inputs already validated there):

    fused_forward(q, k, v, key_real, *, window, block, causal, scale)
        -> (o, lse, k_sum, v_sum, inv_count)
    fused_backward(do, q, k, v, key_real, o, lse, k_sum, v_sum, inv_count, *, window,
                   block, causal, scale) -> (dq, dk, dv)

q, k, v, o, do are `[B, H, N, D]`; key_real `[B, N]` bool (True = real token) or None.
With `block`, k_sum, v_sum `[B, H, NB, D]` (NB = ceil(N / block)) are the block means
in the input dtype and inv_count `[B, NB]` float32 is 1 / (real tokens of the block),
0 for a block of padding only (it has no summary); without, they are empty
(`[B, H, 0, D]`, `[B, 0]`). dk, dv include the gradient through the pooling.

`lse` `[B, H, N]` float32 is the row log-sum-exp in base 2 of the scaled scores
(natural-log value times log2(e)); rows that see nothing get lse = +inf (so that
2^(s - lse) = 0 in the backward) and o = 0.

Precision: fp16 and bf16 operands with fp32 accumulation. fp32 inputs use TF32 tensor
cores exactly when torch would for its own fp32 matmuls
(`torch.backends.cuda.matmul.allow_tf32`), otherwise full-precision fp32 ("ieee") FMA
dots with small tiles. The Triton interpreter always computes in true fp32.

Launches (one config each, pinned in `configs.py`; `STRETTO_AUTOTUNE=1` tunes):
- pool: one program per (batch x head, block): fp32 sums of the block's real rows,
  written once in the input dtype; no padded or upcast copy of k, v.
- fwd: one program per (batch x head, query tile). It walks the key tiles of its band
  ([m0 - window + 1, m_last] causal, [m0 - window + 1, m_last + window - 1] otherwise)
  and the summary tiles it can see, one online softmax over both. Cost per query
  ~ window + N / block.
- dq: the same walk; it also computes delta_i = o_i . do_i for its rows.
- dsum (with summaries): one program per (batch x head, BLOCK_S summaries, split of
  SPLIT_ROWS query rows) writes partial fp32 gradients of k_sum, v_sum; programs are
  short, so nothing trails the launch.
- dkv: one program per (batch x head, key tile) walks the query tiles of its band, then
  adds the summary gradients of its keys' blocks (sum of the partials, times the
  pooling weight): pooling's backward costs no launch and no pass over dk, dv.
Each output element is written by exactly one program: no atomics, deterministic.

Masks run only on edge tiles: each walk over keys (or, in dsum, over queries) is split
into tiles that every row of the tile sees whole (no mask; padding is a per-column
bias) and the edge tiles around them. Summary walks in fwd and dq are short (N / block
summaries in narrow BLOCK_S tiles) and stay masked, which keeps the code small.

Grid: one axis of B x H x tiles programs (axis 0 allows 2^31 - 1), so B x H is not
bound by the 65,535 of axes 1 and 2. Launches run under `torch.cuda.device(q.device)`.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from stretto.kernels.outputs import new_output

from . import configs

# Triton reads TRITON_INTERPRET when it is first imported.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

LOG2E = 1.4426950408889634  # 1/ln(2): exp(x) = 2^(x * LOG2E)
POOL_ROWS = 32  # rows of a block summed per step of the pooling kernel


# --------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------


@triton.jit
def _load_rows(
    base,
    rows,
    limit,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
):
    """[rows, BLOCK_D] tile of a row-major [*, HEAD_DIM] matrix; zeros outside."""
    ptrs = base + rows[:, None] * HEAD_DIM + offs_d[None, :]
    if CHECK_ROWS:
        mask = rows[:, None] < limit
        if HEAD_DIM != BLOCK_D:
            mask = mask & (offs_d[None, :] < HEAD_DIM)
        x = tl.load(ptrs, mask=mask, other=0.0)
    elif HEAD_DIM != BLOCK_D:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store_rows(base, rows, limit, offs_d, x, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs = base + rows[:, None] * HEAD_DIM + offs_d[None, :]
    mask = rows[:, None] < limit
    if HEAD_DIM != BLOCK_D:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(ptrs, x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _visible(i, t, N, window, block, CAUSAL: tl.constexpr, IS_SUMMARY: tl.constexpr):
    """Bool mask (broadcast of i and t): key/summary t is visible to query i.

    Bounds on t and padding are applied by the caller.
    """
    if IS_SUMMARY:
        first = t * block
        last = tl.minimum(first + block, N) - 1
        # -- summary j: its whole block lies before i's window (or after it) --
        vis = last <= i - window
        if not CAUSAL:
            vis = vis | (first >= i + window)
    elif CAUSAL:
        # -- local band: causal i - window < t <= i; otherwise |i - t| < window --
        vis = (t <= i) & (t > i - window)
    else:
        vis = tl.abs(i - t) < window
    return vis


@triton.jit
def _col_real(key_real_ptr, inv_count_ptr, cols, limit, IS_SUMMARY: tl.constexpr):
    """[cols] bool: the key is real, or the summary's block holds a real token."""
    if IS_SUMMARY:
        inv = tl.load(inv_count_ptr + cols, mask=cols < limit, other=0.0)
        real = inv > 0.0
    else:
        real = tl.load(key_real_ptr + cols, mask=cols < limit, other=0) != 0
    return real & (cols < limit)


@triton.jit
def _interior(start, end, f_lo, f_hi, TILE: tl.constexpr):
    """Clamp the tile-aligned range [f_lo, f_hi) of tiles that need no mask into the
    walk [start, end): the walk is then [start, f_lo) masked, [f_lo, f_hi) unmasked,
    [f_hi, end) masked."""
    end_up = (end + TILE - 1) // TILE * TILE
    f_lo = tl.minimum(tl.maximum(f_lo, start), end_up)
    f_hi = tl.maximum(tl.minimum(f_hi, end_up), f_lo)
    return f_lo, f_hi


@triton.jit
def _round_up(x, TILE: tl.constexpr):
    """x >= 0 rounded up to a multiple of TILE (callers keep x non-negative: integer
    division truncates on the GPU but floors in the interpreter)."""
    return (x + TILE - 1) // TILE * TILE


# --------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------


@triton.jit
def _pool_kernel(
    K,
    V,
    KEY_REAL,
    KS,
    VS,
    INV_COUNT,
    H,
    N,
    NB,
    block,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = (pid // NB).to(tl.int64)
    j = pid % NB
    b = bh // H
    offs_d = tl.arange(0, BLOCK_D)
    first = j * block
    end = tl.minimum(first + block, N)
    k_base = K + bh * N * HEAD_DIM
    v_base = V + bh * N * HEAD_DIM
    acc_k = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    count = tl.zeros([BLOCK_T], dtype=tl.float32)
    for t0 in range(first, end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        if HAS_KEY_REAL:
            w = _col_real(KEY_REAL + b * N, KEY_REAL, rows, end, False).to(tl.float32)
        else:
            w = (rows < end).to(tl.float32)
        k = _load_rows(k_base, rows, end, offs_d, HEAD_DIM, BLOCK_D, True)
        v = _load_rows(v_base, rows, end, offs_d, HEAD_DIM, BLOCK_D, True)
        acc_k += k.to(tl.float32) * w[:, None]
        acc_v += v.to(tl.float32) * w[:, None]
        count += w
    n_real = tl.sum(count, 0)
    inv = tl.where(n_real > 0.0, 1.0 / tl.maximum(n_real, 1.0), 0.0)
    out = bh * NB * HEAD_DIM + j * HEAD_DIM + offs_d
    d_ok = offs_d < HEAD_DIM
    tl.store(KS + out, (tl.sum(acc_k, 0) * inv).to(KS.dtype.element_ty), mask=d_ok)
    tl.store(VS + out, (tl.sum(acc_v, 0) * inv).to(VS.dtype.element_ty), mask=d_ok)
    if bh % H == 0:
        tl.store(INV_COUNT + b * NB + j, inv)


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit
def _fwd_tiles(
    acc,
    m_i,
    l_i,
    q,
    rows,
    k_base,
    v_base,
    real_base,
    inv_base,
    start,
    end,
    n_cols,
    N,
    window,
    block,
    qk_scale,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_SUMMARY: tl.constexpr,
    HAS_REAL: tl.constexpr,
    MASKED: tl.constexpr,
    TILE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Online softmax of the query tile over key (or summary) tiles [start, end)."""
    for n0 in range(start, end, TILE):
        cols = n0 + tl.arange(0, TILE)
        k = _load_rows(k_base, cols, n_cols, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(v_base, cols, n_cols, offs_d, HEAD_DIM, BLOCK_D, MASKED)

        # -- scores in the log2 domain --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED:
            vis = _visible(rows[:, None], cols[None, :], N, window, block, CAUSAL, IS_SUMMARY)
            if HAS_REAL:
                vis = vis & _col_real(real_base, inv_base, cols, n_cols, IS_SUMMARY)[None, :]
            else:
                vis = vis & (cols < n_cols)[None, :]
            qk = tl.where(vis, qk, float("-inf"))
        elif HAS_REAL:
            real = _col_real(real_base, inv_base, cols, n_cols, IS_SUMMARY)
            qk += tl.where(real, 0.0, float("-inf"))[None, :]

        # -- update m_i and l_i --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with nothing visible so far keeps m = -inf; shift by 0 to stay NaN-free.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        p = tl.exp2(qk - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)

        # -- update the output accumulator --
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    KS,
    VS,
    KEY_REAL,
    INV_COUNT,
    OUT,
    LSE,
    H,
    N,
    NB,
    window,
    block,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SUM: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_S >= 16, "tl.dot needs 16")
    tl.static_assert(BLOCK_D >= 16 and BLOCK_D >= HEAD_DIM, "head dim padded to >= 16")

    n_tiles = tl.cdiv(N, BLOCK_M)
    pid = tl.program_id(0)
    # int64 for the (batch, head) base: B * H * N * D can exceed 2^31; offsets inside one
    # head stay int32 (the launcher checks N * D < 2^31), which saves registers.
    bh = (pid // n_tiles).to(tl.int64)
    # Later tiles see more summaries: start them first.
    tile = n_tiles - 1 - pid % n_tiles
    b = bh // H
    m0 = tile * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + bh * N * HEAD_DIM, rows, N, offs_d, HEAD_DIM, BLOCK_D, True)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_last = tl.minimum(m0 + BLOCK_M, N) - 1

    # -- local band [lo, hi); the rows of the tile all see key tiles in [f_lo, f_hi) --
    lo = tl.maximum(m0 - window + 1, 0)
    hi = m_last + 1 if CAUSAL else tl.minimum(m_last + window, N)
    start = lo // BLOCK_N * BLOCK_N
    f_lo = _round_up(tl.maximum(m_last - window + 1, 0), BLOCK_N)
    f_end = m0 + 1 if CAUSAL else m0 + window
    f_hi = tl.minimum(f_end, N) // BLOCK_N * BLOCK_N
    f_lo, f_hi = _interior(start, hi, f_lo, f_hi, BLOCK_N)
    k_base = K + bh * N * HEAD_DIM
    v_base = V + bh * N * HEAD_DIM
    kr = KEY_REAL + b * N
    acc, m_i, l_i = _fwd_tiles(
        acc,
        m_i,
        l_i,
        q,
        rows,
        k_base,
        v_base,
        kr,
        INV_COUNT,
        start,
        f_lo,
        N,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        HAS_KEY_REAL,
        True,
        BLOCK_N,
        DOT_PREC,
    )
    acc, m_i, l_i = _fwd_tiles(
        acc,
        m_i,
        l_i,
        q,
        rows,
        k_base,
        v_base,
        kr,
        INV_COUNT,
        f_lo,
        f_hi,
        N,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        HAS_KEY_REAL,
        False,
        BLOCK_N,
        DOT_PREC,
    )
    acc, m_i, l_i = _fwd_tiles(
        acc,
        m_i,
        l_i,
        q,
        rows,
        k_base,
        v_base,
        kr,
        INV_COUNT,
        f_hi,
        hi,
        N,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        HAS_KEY_REAL,
        True,
        BLOCK_N,
        DOT_PREC,
    )

    if HAS_SUM:
        # Summary walks are short (N / block summaries, narrow tiles): every tile masked.
        ks_base = KS + bh * NB * HEAD_DIM
        vs_base = VS + bh * NB * HEAD_DIM
        inv = INV_COUNT + b * NB
        # -- summaries of blocks wholly before the band: last_j <= i - window, i.e.
        #    j < j_hi for the tile's last row --
        j_hi = tl.minimum(tl.maximum(m_last - window + 1, 0) // block, NB)
        acc, m_i, l_i = _fwd_tiles(
            acc,
            m_i,
            l_i,
            q,
            rows,
            ks_base,
            vs_base,
            kr,
            inv,
            0,
            j_hi,
            NB,
            N,
            window,
            block,
            qk_scale,
            offs_d,
            HEAD_DIM,
            BLOCK_D,
            CAUSAL,
            True,
            HAS_KEY_REAL,
            True,
            BLOCK_S,
            DOT_PREC,
        )
        if not CAUSAL:
            # -- summaries of blocks wholly after the band: first_j >= i + window --
            j_lo = tl.minimum((m0 + window + block - 1) // block, NB)
            # start past the first walk so no summary tile is visited twice
            start = tl.maximum(j_lo // BLOCK_S * BLOCK_S, _round_up(j_hi, BLOCK_S))
            acc, m_i, l_i = _fwd_tiles(
                acc,
                m_i,
                l_i,
                q,
                rows,
                ks_base,
                vs_base,
                kr,
                inv,
                start,
                NB,
                NB,
                N,
                window,
                block,
                qk_scale,
                offs_d,
                HEAD_DIM,
                BLOCK_D,
                CAUSAL,
                True,
                HAS_KEY_REAL,
                True,
                BLOCK_S,
                DOT_PREC,
            )

    # -- epilogue: normalise; rows that saw nothing get o = 0, lse = +inf --
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    _store_rows(OUT + bh * N * HEAD_DIM, rows, N, offs_d, o, HEAD_DIM, BLOCK_D)
    tl.store(LSE + bh * N + rows, lse, mask=rows < N)


# --------------------------------------------------------------------------------------
# Backward: dq (and delta)
# --------------------------------------------------------------------------------------


@triton.jit
def _dq_tiles(
    dq,
    q,
    do,
    lse,
    delta,
    rows,
    k_base,
    v_base,
    real_base,
    inv_base,
    start,
    end,
    n_cols,
    N,
    window,
    block,
    qk_scale,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_SUMMARY: tl.constexpr,
    HAS_REAL: tl.constexpr,
    MASKED: tl.constexpr,
    TILE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dq (unscaled) of the query tile over key (or summary) tiles [start, end)."""
    for n0 in range(start, end, TILE):
        cols = n0 + tl.arange(0, TILE)
        k = _load_rows(k_base, cols, n_cols, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(v_base, cols, n_cols, offs_d, HEAD_DIM, BLOCK_D, MASKED)

        # -- recompute probabilities from the saved lse --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED:
            vis = _visible(rows[:, None], cols[None, :], N, window, block, CAUSAL, IS_SUMMARY)
            if HAS_REAL:
                vis = vis & _col_real(real_base, inv_base, cols, n_cols, IS_SUMMARY)[None, :]
            else:
                vis = vis & (cols < n_cols)[None, :]
            p = tl.where(vis, tl.exp2(qk - lse[:, None]), 0.0)
        elif HAS_REAL:
            real = _col_real(real_base, inv_base, cols, n_cols, IS_SUMMARY)
            p = tl.exp2(qk - lse[:, None] + tl.where(real, 0.0, float("-inf"))[None, :])
        else:
            p = tl.exp2(qk - lse[:, None])

        # -- ds = p * (dp - delta) --
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    KS,
    VS,
    KEY_REAL,
    INV_COUNT,
    DO,
    OUT,
    LSE,
    DELTA,
    DQ,
    H,
    N,
    NB,
    window,
    block,
    scale,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SUM: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_S >= 16, "tl.dot needs 16")
    tl.static_assert(BLOCK_D >= 16 and BLOCK_D >= HEAD_DIM, "head dim padded to >= 16")

    n_tiles = tl.cdiv(N, BLOCK_M)
    pid = tl.program_id(0)
    bh = (pid // n_tiles).to(tl.int64)
    tile = n_tiles - 1 - pid % n_tiles
    b = bh // H
    m0 = tile * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q = _load_rows(Q + bh * N * HEAD_DIM, rows, N, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + bh * N * HEAD_DIM, rows, N, offs_d, HEAD_DIM, BLOCK_D, True)
    o = _load_rows(OUT + bh * N * HEAD_DIM, rows, N, offs_d, HEAD_DIM, BLOCK_D, True)
    # -- delta_i = o_i . do_i in fp32, the softmax backward's row correction (also read
    #    by the key-major kernels launched after this one) --
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * N + rows, delta, mask=row_ok)
    # Rows past N load lse = +inf: every p of theirs is 0.
    lse = tl.load(LSE + bh * N + rows, mask=row_ok, other=float("inf"))
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_last = tl.minimum(m0 + BLOCK_M, N) - 1

    # -- local band; see _fwd_kernel --
    lo = tl.maximum(m0 - window + 1, 0)
    hi = m_last + 1 if CAUSAL else tl.minimum(m_last + window, N)
    start = lo // BLOCK_N * BLOCK_N
    f_lo = _round_up(tl.maximum(m_last - window + 1, 0), BLOCK_N)
    f_end = m0 + 1 if CAUSAL else m0 + window
    f_hi = tl.minimum(f_end, N) // BLOCK_N * BLOCK_N
    f_lo, f_hi = _interior(start, hi, f_lo, f_hi, BLOCK_N)
    k_base = K + bh * N * HEAD_DIM
    v_base = V + bh * N * HEAD_DIM
    kr = KEY_REAL + b * N
    dq = _dq_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        rows,
        k_base,
        v_base,
        kr,
        INV_COUNT,
        start,
        f_lo,
        N,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        HAS_KEY_REAL,
        True,
        BLOCK_N,
        DOT_PREC,
    )
    dq = _dq_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        rows,
        k_base,
        v_base,
        kr,
        INV_COUNT,
        f_lo,
        f_hi,
        N,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        HAS_KEY_REAL,
        False,
        BLOCK_N,
        DOT_PREC,
    )
    dq = _dq_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        rows,
        k_base,
        v_base,
        kr,
        INV_COUNT,
        f_hi,
        hi,
        N,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        HAS_KEY_REAL,
        True,
        BLOCK_N,
        DOT_PREC,
    )

    if HAS_SUM:
        # -- summaries before the band, then (non-causal) after it; see _fwd_kernel --
        ks_base = KS + bh * NB * HEAD_DIM
        vs_base = VS + bh * NB * HEAD_DIM
        inv = INV_COUNT + b * NB
        j_hi = tl.minimum(tl.maximum(m_last - window + 1, 0) // block, NB)
        dq = _dq_tiles(
            dq,
            q,
            do,
            lse,
            delta,
            rows,
            ks_base,
            vs_base,
            kr,
            inv,
            0,
            j_hi,
            NB,
            N,
            window,
            block,
            qk_scale,
            offs_d,
            HEAD_DIM,
            BLOCK_D,
            CAUSAL,
            True,
            HAS_KEY_REAL,
            True,
            BLOCK_S,
            DOT_PREC,
        )
        if not CAUSAL:
            j_lo = tl.minimum((m0 + window + block - 1) // block, NB)
            start = tl.maximum(j_lo // BLOCK_S * BLOCK_S, _round_up(j_hi, BLOCK_S))
            dq = _dq_tiles(
                dq,
                q,
                do,
                lse,
                delta,
                rows,
                ks_base,
                vs_base,
                kr,
                inv,
                start,
                NB,
                NB,
                N,
                window,
                block,
                qk_scale,
                offs_d,
                HEAD_DIM,
                BLOCK_D,
                CAUSAL,
                True,
                HAS_KEY_REAL,
                True,
                BLOCK_S,
                DOT_PREC,
            )

    # s = scale * q.k, so ds/dq carries one factor of scale
    _store_rows(DQ + bh * N * HEAD_DIM, rows, N, offs_d, dq * scale, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------
# Backward: key-major kernels (summary gradients, then keys)
# --------------------------------------------------------------------------------------


@triton.jit
def _dkv_tiles(
    dk,
    dv,
    k,
    v,
    cols,
    q_base,
    do_base,
    lse_base,
    delta_base,
    start,
    end,
    N,
    window,
    block,
    qk_scale,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_SUMMARY: tl.constexpr,
    MASKED: tl.constexpr,
    TILE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dk (unscaled), dv of a key (or summary) tile over query tiles [start, end).

    Works in the transposed layout [keys, TILE queries]. Column padding is left to the
    caller: a key's p only reaches its own rows of dk and dv, which it zeroes.
    """
    for m0 in range(start, end, TILE):
        rows = m0 + tl.arange(0, TILE)
        q = _load_rows(q_base, rows, N, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        do = _load_rows(do_base, rows, N, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        if MASKED:
            # Rows past N load lse = +inf: every p of theirs is 0.
            lse = tl.load(lse_base + rows, mask=rows < N, other=float("inf"))
            delta = tl.load(delta_base + rows, mask=rows < N, other=0.0)
        else:
            lse = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)

        # -- p^T from the saved lse --
        kq = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale
        if MASKED:
            vis = _visible(rows[None, :], cols[:, None], N, window, block, CAUSAL, IS_SUMMARY)
            p = tl.where(vis, tl.exp2(kq - lse[None, :]), 0.0)
        else:
            p = tl.exp2(kq - lse[None, :])

        # -- dv += p^T do;  ds^T = p^T * (dp^T - delta) ;  dk += ds^T q --
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds = p * (dp - delta[None, :])
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _dsum_kernel(
    Q,
    KS,
    VS,
    KEY_REAL,
    INV_COUNT,
    DO,
    LSE,
    DELTA,
    DKS_PART,
    DVS_PART,
    BH,
    H,
    N,
    NB,
    window,
    block,
    scale,
    qk_scale,
    split_rows,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Partial gradients of BLOCK_S summaries over the query rows of one split."""
    tl.static_assert(BLOCK_M >= 16 and BLOCK_S >= 16, "tl.dot needs 16")
    n_splits = tl.cdiv(N, split_rows)
    per_bh = tl.cdiv(NB, BLOCK_S) * n_splits
    pid = tl.program_id(0)
    bh = (pid // per_bh).to(tl.int64)
    r = pid % per_bh
    split = r % n_splits
    j0 = (r // n_splits) * BLOCK_S
    b = bh // H
    offs_d = tl.arange(0, BLOCK_D)
    cols = j0 + tl.arange(0, BLOCK_S)
    k = _load_rows(KS + bh * NB * HEAD_DIM, cols, NB, offs_d, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(VS + bh * NB * HEAD_DIM, cols, NB, offs_d, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    q_base = Q + bh * N * HEAD_DIM
    do_base = DO + bh * N * HEAD_DIM
    lse_base = LSE + bh * N
    delta_base = DELTA + bh * N

    r0 = split * split_rows
    r1 = tl.minimum(r0 + split_rows, N)
    j_last = tl.minimum(j0 + BLOCK_S, NB) - 1
    # -- queries past the blocks: i >= last_j + window (some summary of the tile from
    #    last_j0 + window on, all of them from last_jlast + window on) --
    last0 = tl.minimum((j0 + 1) * block, N) - 1
    last_l = tl.minimum((j_last + 1) * block, N) - 1
    lo = tl.minimum(tl.maximum(r0, last0 + window), r1)
    start = lo // BLOCK_M * BLOCK_M
    f_lo = _round_up(tl.minimum(last_l + window, N), BLOCK_M)
    f_lo, f_hi = _interior(start, r1, f_lo, r1 // BLOCK_M * BLOCK_M, BLOCK_M)
    dk, dv = _dkv_tiles(
        dk,
        dv,
        k,
        v,
        cols,
        q_base,
        do_base,
        lse_base,
        delta_base,
        start,
        f_lo,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        True,
        True,
        BLOCK_M,
        DOT_PREC,
    )
    dk, dv = _dkv_tiles(
        dk,
        dv,
        k,
        v,
        cols,
        q_base,
        do_base,
        lse_base,
        delta_base,
        f_lo,
        f_hi,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        True,
        False,
        BLOCK_M,
        DOT_PREC,
    )
    dk, dv = _dkv_tiles(
        dk,
        dv,
        k,
        v,
        cols,
        q_base,
        do_base,
        lse_base,
        delta_base,
        f_hi,
        r1,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        True,
        True,
        BLOCK_M,
        DOT_PREC,
    )
    if not CAUSAL:
        # -- queries before the blocks: i <= first_j - window (all of the tile's up to
        #    first_j0 - window, some up to first_jlast - window); stop before the first
        #    walk's first tile so no query tile is visited twice --
        hi = tl.maximum(j_last * block - window + 1, 0)
        hi = tl.maximum(tl.minimum(tl.minimum(hi, r1), start), r0)
        f_hi = tl.minimum(tl.maximum(j0 * block - window + 1, 0), N) // BLOCK_M * BLOCK_M
        f_lo, f_hi = _interior(r0, hi, r0, f_hi, BLOCK_M)
        dk, dv = _dkv_tiles(
            dk,
            dv,
            k,
            v,
            cols,
            q_base,
            do_base,
            lse_base,
            delta_base,
            f_lo,
            f_hi,
            N,
            window,
            block,
            qk_scale,
            offs_d,
            HEAD_DIM,
            BLOCK_D,
            CAUSAL,
            True,
            False,
            BLOCK_M,
            DOT_PREC,
        )
        dk, dv = _dkv_tiles(
            dk,
            dv,
            k,
            v,
            cols,
            q_base,
            do_base,
            lse_base,
            delta_base,
            f_hi,
            hi,
            N,
            window,
            block,
            qk_scale,
            offs_d,
            HEAD_DIM,
            BLOCK_D,
            CAUSAL,
            True,
            True,
            BLOCK_M,
            DOT_PREC,
        )

    if HAS_KEY_REAL:
        # a block of padding only has no summary (and p may hold anything there)
        real = _col_real(KEY_REAL, INV_COUNT + b * NB, cols, NB, True)
        dk = tl.where(real[:, None], dk, 0.0)
        dv = tl.where(real[:, None], dv, 0.0)
    part = (split * BH + bh) * NB * HEAD_DIM
    _store_rows(DKS_PART + part, cols, NB, offs_d, dk * scale, HEAD_DIM, BLOCK_D)
    _store_rows(DVS_PART + part, cols, NB, offs_d, dv, HEAD_DIM, BLOCK_D)


@triton.jit
def _dkv_kernel(
    Q,
    K,
    V,
    KEY_REAL,
    INV_COUNT,
    DO,
    LSE,
    DELTA,
    DKS_PART,
    DVS_PART,
    DK,
    DV,
    BH,
    H,
    N,
    NB,
    window,
    block,
    scale,
    qk_scale,
    n_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SUM: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs 16")
    tl.static_assert(BLOCK_D >= 16 and BLOCK_D >= HEAD_DIM, "head dim padded to >= 16")
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    bh = (pid // n_tiles).to(tl.int64)
    b = bh // H
    n0 = (pid % n_tiles) * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + bh * N * HEAD_DIM, cols, N, offs_d, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(V + bh * N * HEAD_DIM, cols, N, offs_d, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # -- the queries in the tile's band [lo, hi); rows of query tiles in [f_lo, f_hi)
    #    see every key of the tile --
    n_last = tl.minimum(n0 + BLOCK_N, N) - 1
    lo = n0 if CAUSAL else tl.maximum(n0 - window + 1, 0)
    hi = tl.minimum(n_last + window, N)
    start = lo // BLOCK_M * BLOCK_M
    f_lo = n0 + BLOCK_N - 1 if CAUSAL else tl.maximum(n0 + BLOCK_N - window, 0)
    f_lo = _round_up(f_lo, BLOCK_M)
    f_hi = tl.minimum(n0 + window, N) // BLOCK_M * BLOCK_M
    f_lo, f_hi = _interior(start, hi, f_lo, f_hi, BLOCK_M)
    q_base = Q + bh * N * HEAD_DIM
    do_base = DO + bh * N * HEAD_DIM
    lse_base = LSE + bh * N
    delta_base = DELTA + bh * N
    dk, dv = _dkv_tiles(
        dk,
        dv,
        k,
        v,
        cols,
        q_base,
        do_base,
        lse_base,
        delta_base,
        start,
        f_lo,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        True,
        BLOCK_M,
        DOT_PREC,
    )
    dk, dv = _dkv_tiles(
        dk,
        dv,
        k,
        v,
        cols,
        q_base,
        do_base,
        lse_base,
        delta_base,
        f_lo,
        f_hi,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        False,
        BLOCK_M,
        DOT_PREC,
    )
    dk, dv = _dkv_tiles(
        dk,
        dv,
        k,
        v,
        cols,
        q_base,
        do_base,
        lse_base,
        delta_base,
        f_hi,
        hi,
        N,
        window,
        block,
        qk_scale,
        offs_d,
        HEAD_DIM,
        BLOCK_D,
        CAUSAL,
        False,
        True,
        BLOCK_M,
        DOT_PREC,
    )
    dk = dk * scale

    if HAS_SUM:
        # -- pooling's backward: key t of block j gets the summary gradient of j times
        #    its weight real_t / count_j (the partials of every split, in order) --
        col_ok = cols < N
        j = tl.minimum(cols, N - 1) // block
        w = tl.load(INV_COUNT + b * NB + j, mask=col_ok, other=0.0)
        if HAS_KEY_REAL:
            w = tl.where(_col_real(KEY_REAL + b * N, KEY_REAL, cols, N, False), w, 0.0)
        g_k = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        g_v = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for s in range(0, n_splits):
            part = (s * BH + bh) * NB * HEAD_DIM
            g_k += _load_rows(DKS_PART + part, j, NB, offs_d, HEAD_DIM, BLOCK_D, True)
            g_v += _load_rows(DVS_PART + part, j, NB, offs_d, HEAD_DIM, BLOCK_D, True)
        dk += g_k * w[:, None]
        dv += g_v * w[:, None]

    if HAS_KEY_REAL:
        # a padded key is never seen and weighs nothing in its block's mean: whatever
        # its rows of p held, its grads are 0
        real = _col_real(KEY_REAL + b * N, KEY_REAL, cols, N, False)
        dk = tl.where(real[:, None], dk, 0.0)
        dv = tl.where(real[:, None], dv, 0.0)
    _store_rows(DK + bh * N * HEAD_DIM, cols, N, offs_d, dk, HEAD_DIM, BLOCK_D)
    _store_rows(DV + bh * N * HEAD_DIM, cols, N, offs_d, dv, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

KERNELS = {"fwd": _fwd_kernel, "dq": _dq_kernel, "dkv": _dkv_kernel, "dsum": _dsum_kernel}
# Autotune keys: everything that changes the kernel but the sequence length, so a new
# length reuses the choice (and Triton's on-disk cache keeps it across processes).
_TUNE_KEY = ("HEAD_DIM", "CAUSAL", "HAS_SUM", "HAS_KEY_REAL", "DOT_PREC")
_tuned: dict[tuple[str, str, int, bool], object] = {}


def tune_key(name: str) -> list[str]:
    """The autotune key of kernel `name`: the names of _TUNE_KEY among its arguments.

    Kernels differ (dsum takes no HAS_SUM), and a key must name arguments only: Triton
    3.9 refuses any other name, and 3.6 drops it from the key without a word.
    """
    arg_names = KERNELS[name].arg_names
    return [k for k in _TUNE_KEY if k in arg_names]


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device, not the tensors': switch to theirs."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def dot_kind(dtype: torch.dtype) -> str:
    """ "16bit", "tf32" or "ieee" (see configs.KINDS). fp32 follows torch's own TF32
    switch, so plain torch and the kernel round alike."""
    if dtype in (torch.float16, torch.bfloat16):
        return "16bit"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def dot_precision(kind: str) -> str:
    return "ieee" if kind == "ieee" else "tf32"  # tf32 changes nothing for 16-bit dots


def split_rows() -> int:
    return configs.INTERPRET_SPLIT_ROWS if _INTERPRET else configs.SPLIT_ROWS


def arch(t: torch.Tensor) -> int:
    """Compute capability of t's device as major * 10 + minor (90 when not on CUDA)."""
    if t.device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(t.device)
    return major * 10 + minor


def _autotuned(name: str, kind: str, head_dim: int, cc: int = 90):
    key = (name, kind, configs.head_dim_bucket(head_dim), cc < 90)
    if key not in _tuned:
        cands = [
            triton.Config(
                {"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "BLOCK_S": c.block_s},
                num_warps=c.num_warps,
                num_stages=c.num_stages,
            )
            for c in configs.candidates(name, kind, head_dim, cc)
        ]
        _tuned[key] = triton.autotune(configs=cands, key=tune_key(name), cache_results=True)(
            KERNELS[name]
        )
    return _tuned[key]


def _launch(name: str, grid, args: tuple, kind: str, head_dim: int, meta: dict) -> None:
    """Launch kernel `name` with its pinned config (tuned under STRETTO_AUTOTUNE=1).

    `grid(block_m, block_n, block_s)` gives the program count; args[0] is a tensor on
    the launch's device.
    """
    if _INTERPRET:
        cfg = configs.INTERPRET
    elif configs.autotune_enabled():
        tuned = _autotuned(name, kind, head_dim, arch(args[0]))
        tuned[lambda m: (grid(m["BLOCK_M"], m["BLOCK_N"], m["BLOCK_S"]),)](*args, **meta)
        return
    else:
        cfg = configs.pinned(name, kind, head_dim, arch(args[0]))
    KERNELS[name][(grid(cfg.block_m, cfg.block_n, cfg.block_s),)](*args, **meta, **cfg.meta())


def _geometry(q, key_real, window, block):
    b, h, n, d = q.shape
    if n * d >= 2**31:
        raise NotImplementedError(f"N * D = {n * d} elements in one head needs int64 offsets")
    has_sum = block is not None
    # Equivalent clamps that keep index arithmetic inside int32: a window >= N sees every
    # key and no summary, a block >= N is one block.
    window = min(int(window), n)
    block = min(int(block), n) if has_sum else 1
    nb = -(-n // block) if has_sum else 0
    kind = dot_kind(q.dtype)
    meta = dict(
        HEAD_DIM=d,
        BLOCK_D=configs.head_dim_bucket(d),
        HAS_SUM=has_sum,
        HAS_KEY_REAL=key_real is not None,
        DOT_PREC=dot_precision(kind),
    )
    return b, h, n, d, nb, window, block, kind, meta


def _key_real(key_real, device):
    if key_real is None:
        return torch.ones(1, dtype=torch.bool, device=device)
    return key_real.contiguous()


def fused_forward(q, k, v, key_real, *, window, block, causal, scale):
    """Pooling and forward: (o `[B, H, N, D]`, lse `[B, H, N]` float32 base 2,
    k_sum, v_sum `[B, H, NB, D]`, inv_count `[B, NB]` float32)."""
    b, h, n, d, nb, window, block, kind, meta = _geometry(q, key_real, window, block)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    kr = _key_real(key_real, q.device)
    o = new_output(b, h, n, d, dtype=q.dtype, device=q.device)
    lse = new_output(b, h, n, dtype=torch.float32, device=q.device)
    k_sum = new_output(b, h, nb, d, dtype=k.dtype, device=q.device)
    v_sum = new_output(b, h, nb, d, dtype=v.dtype, device=q.device)
    inv_count = new_output(b, nb, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse, k_sum, v_sum, inv_count
    has_sum = meta["HAS_SUM"]
    with device_guard(q):
        if has_sum:
            _pool_kernel[(b * h * nb,)](
                k,
                v,
                kr,
                k_sum,
                v_sum,
                inv_count,
                h,
                n,
                nb,
                block,
                HEAD_DIM=d,
                BLOCK_D=meta["BLOCK_D"],
                HAS_KEY_REAL=meta["HAS_KEY_REAL"],
                BLOCK_T=16 if _INTERPRET else POOL_ROWS,
                num_warps=4,
            )
        ks, vs, inv = (k_sum, v_sum, inv_count) if has_sum else (q, q, lse)
        args = (q, k, v, ks, vs, kr, inv, o, lse)
        args += (h, n, max(nb, 1), window, block, float(scale) * LOG2E)
        meta = dict(meta, CAUSAL=bool(causal))
        _launch("fwd", lambda bm, bn, bs: b * h * triton.cdiv(n, bm), args, kind, d, meta)
    return o, lse, k_sum, v_sum, inv_count


def fused_backward(
    do, q, k, v, key_real, o, lse, k_sum, v_sum, inv_count, *, window, block, causal, scale
):
    """Backward: (dq, dk, dv) `[B, H, N, D]`, dk and dv through the pooling as well."""
    b, h, n, d, nb, window, block, kind, meta = _geometry(q, key_real, window, block)
    # Upstream grads can be stride-0 (out.sum().backward()): the kernels assume contiguity.
    do, q, k, v, o = (x.contiguous() for x in (do, q, k, v, o))
    lse = lse.contiguous()
    kr = _key_real(key_real, q.device)
    dq = new_output(b, h, n, d, dtype=q.dtype, device=q.device)
    dk = new_output(b, h, n, d, dtype=k.dtype, device=q.device)
    dv = new_output(b, h, n, d, dtype=v.dtype, device=q.device)
    if dq.numel() == 0:
        return dq, dk, dv
    has_sum = meta["HAS_SUM"]
    delta = new_output(b, h, n, dtype=torch.float32, device=q.device)
    rows_per_split = split_rows()
    n_splits = triton.cdiv(n, rows_per_split) if has_sum else 1
    if has_sum:
        ks, vs, inv = k_sum.contiguous(), v_sum.contiguous(), inv_count.contiguous()
        dks_part = new_output(n_splits, b * h, nb, d, dtype=torch.float32, device=q.device)
        dvs_part = new_output(n_splits, b * h, nb, d, dtype=torch.float32, device=q.device)
    else:
        ks = vs = q
        inv = dks_part = dvs_part = delta
    meta = dict(meta, CAUSAL=bool(causal))
    scales = (float(scale), float(scale) * LOG2E)
    nb1 = max(nb, 1)
    with device_guard(q):
        # dq first: it also writes delta, which the key-major kernels read
        args = (q, k, v, ks, vs, kr, inv, do, o, lse, delta, dq)
        args += (h, n, nb1, window, block, *scales)
        _launch("dq", lambda bm, bn, bs: b * h * triton.cdiv(n, bm), args, kind, d, meta)
        if has_sum:
            args = (q, ks, vs, kr, inv, do, lse, delta, dks_part, dvs_part)
            args += (b * h, h, n, nb, window, block, *scales, rows_per_split)
            _launch(
                "dsum",
                lambda bm, bn, bs: b * h * triton.cdiv(nb, bs) * n_splits,
                args,
                kind,
                d,
                {k_: v_ for k_, v_ in meta.items() if k_ != "HAS_SUM"},
            )
        args = (q, k, v, kr, inv, do, lse, delta, dks_part, dvs_part, dk, dv)
        args += (b * h, h, n, nb1, window, block, *scales, n_splits)
        _launch("dkv", lambda bm, bn, bs: b * h * triton.cdiv(n, bn), args, kind, d, meta)
    return dq, dk, dv
