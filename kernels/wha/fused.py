"""Fused Triton kernels for windowed hierarchical attention, forward and backward.

Launchers called by the dispatch layer (inputs already validated there):

    fused_forward(q, k, v, k_sum, v_sum, key_real, summary_real, *, window, block,
                  causal, scale) -> (o, lse)
    fused_backward(do, q, k, v, k_sum, v_sum, key_real, summary_real, o, lse, *,
                   window, block, causal, scale) -> (dq, dk, dv, dk_sum, dv_sum)

q, k, v, o, do are `[B, H, N, D]`; k_sum, v_sum are the pooled block means
`[B, H, NB, D]` (NB = ceil(N / block)), or None when block is None; key_real `[B, N]`
and summary_real `[B, NB]` are bool (True = real token / block with a real token) or
None. dk_sum, dv_sum are the gradients with respect to k_sum, v_sum (None without
summaries): pooling stays outside, and the caller's autograd routes them to k, v.

`lse` `[B, H, N]` float32 is the row log-sum-exp in base 2 of the scaled scores:
lse_i = log2(sum_j 2^(scale * log2(e) * q_i . key_j)) over the keys row i sees, i.e.
the natural-log value times log2(e). Rows that see nothing get lse = +inf (so that
2^(s - lse) = 0 in the backward) and o = 0.

Precision: fp16 and bf16 operands with fp32 accumulation. fp32 inputs use TF32 tensor
cores exactly when torch would for its own fp32 matmuls
(`torch.backends.cuda.matmul.allow_tf32`), otherwise full-precision fp32 ("ieee"), so
the plain-torch comparison of the tolerance policy is made under the same rule. The
Triton interpreter always computes in true fp32. Full-precision fp32 dots have no tensor
core path: compiled for sm_90 they run on FMA units and the autotuner has to settle for
small tiles, so fp32 is a correctness path; bf16/fp16 are the fast ones.

Head dims that are not powers of two are padded to the next one (at least 16) with
masked loads; padding never reaches memory.

Design:
- forward and dq: one program per (query tile of BLOCK_M rows, batch x head). It walks
  only the key tiles that intersect the tile's band ([m0 - window + 1, m_last] causal,
  [m0 - window + 1, m_last + window - 1] otherwise) and the summary tiles the tile can
  see (blocks entirely before the band, and when non-causal entirely after it), with
  one online softmax over both. Cost per query ~ window + N / block.
- dk/dv/dk_sum/dv_sum: one launch; programs [0, n_sum_tiles) own a tile of BLOCK_N
  summaries and walk the query tiles that can see it, the rest own a tile of BLOCK_N
  keys and walk the query tiles in its band. Each output element is written by exactly
  one program: no atomics, so results are deterministic.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from stretto.kernels.testing import new_output

# Triton reads TRITON_INTERPRET when it is first imported; autotuning under the
# interpreter is far too slow, so it gets one small configuration.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

LOG2E = 1.4426950408889634  # 1/ln(2): exp(x) = 2^(x * LOG2E)


# --------------------------------------------------------------------------------------
# Autotuning
# --------------------------------------------------------------------------------------


def _fwd_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (64, 128)
        for bn in (32, 64)
        for w in (4, 8)
        for s in (2, 3)
    ]


def _bwd_configs() -> list[triton.Config]:
    """Shared by the dq kernel (BLOCK_M queries outer) and dk/dv (BLOCK_N keys outer)."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    tiles = [(32, 64), (64, 64), (32, 128), (64, 128), (128, 32), (128, 64)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn in tiles
        for w in (4, 8)
        for s in (2, 3)
    ]


# Hopper gives one program at most 227 KB of shared memory; keep headroom for the
# compiler's own scratch (layout conversions).
_SMEM_BUDGET = 192 * 1024


def _prune(configs, named_args, **kwargs):
    """Drop tiles larger than the sequence and pipelines whose tiles overflow shared memory."""
    args = {**named_args, **kwargs}  # positional and keyword launch arguments
    n_bucket, block_d = args["N_BUCKET"], args["BLOCK_D"]
    elt = args["Q"].element_size()
    kept = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if max(bm, bn) > max(n_bucket, 32):
            continue  # a tile larger than the whole sequence only adds masked work
        # the streamed operands (two tiles per step) times the pipeline depth
        if c.num_stages * 2 * max(bm, bn) * block_d * elt > _SMEM_BUDGET:
            continue
        kept.append(c)
    return kept or configs[:1]


# Keys: head dim, dtype (through the pointers), mode flags and a power-of-two bucket of N,
# so a new sequence length recompiles/retunes once per bucket, not once per value.
_FWD_KEY = ["N_BUCKET", "BLOCK_D", "CAUSAL", "HAS_SUM"]


# --------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------


@triton.jit
def _visible(i, t, N, NB, window, block, CAUSAL: tl.constexpr, IS_SUMMARY: tl.constexpr):
    """Bool mask (broadcast of i and t): key/summary t is visible to query i.

    Padding (key_real / summary_real) is applied by the caller.
    """
    if IS_SUMMARY:
        first = t * block
        last = tl.minimum(first + block, N) - 1
        # -- summary j: its whole block lies before i's window (or after it) --
        vis = last <= i - window
        if not CAUSAL:
            vis = vis | (first >= i + window)
        vis = vis & (t < NB)
    else:
        # -- local band: causal i - window < t <= i; otherwise |i - t| < window --
        vis = (t <= i) & (t > i - window) if CAUSAL else tl.abs(i - t) < window
        vis = vis & (t < N)
    return vis & (i < N)


@triton.jit
def _col_real(real_ptr, cols, limit, HAS_REAL: tl.constexpr):
    """[BLOCK] bool: the key/summary at `cols` is real (not padding) and in range."""
    if HAS_REAL:
        r = tl.load(real_ptr + cols, mask=cols < limit, other=0)
        return (r != 0) & (cols < limit)
    return cols < limit


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
    lo,
    hi,
    n_cols,
    N,
    NB,
    window,
    block,
    qk_scale,
    offs_d,
    D,
    CAUSAL: tl.constexpr,
    IS_SUMMARY: tl.constexpr,
    HAS_REAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Online softmax of the query tile over key (or summary) tiles [lo, hi)."""
    start = (lo // BLOCK_N) * BLOCK_N
    for n0 in range(start, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        kv_mask = col_ok[:, None] & (offs_d[None, :] < D)
        kv_off = cols[:, None] * D + offs_d[None, :]
        k = tl.load(k_base + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_base + kv_off, mask=kv_mask, other=0.0)

        # -- scores in the log2 domain --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        vis = _visible(rows[:, None], cols[None, :], N, NB, window, block, CAUSAL, IS_SUMMARY)
        vis = vis & _col_real(real_base, cols, n_cols, HAS_REAL)[None, :]
        qk = tl.where(vis, qk, float("-inf"))

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


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.autotune(
    configs=_fwd_configs(), key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune}
)
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    KS,
    VS,
    KEY_REAL,
    SUM_REAL,
    OUT,
    LSE,
    H,
    N,
    NB,
    D,
    window,
    block,
    qk_scale,
    N_BUCKET,
    CAUSAL: tl.constexpr,
    HAS_SUM: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    HAS_SUM_REAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs tiles of at least 16")
    tl.static_assert(BLOCK_D >= 16, "head dim is padded to at least 16")

    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    # int64 for the (batch, head) base: B * H * N * D can exceed 2^31; offsets inside one
    # head stay int32 (the launcher checks N * D < 2^31), which saves registers.
    q_base = Q + bh * N * D
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q_off = rows[:, None] * D + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(q_base + q_off, mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    m0 = pid_m * BLOCK_M
    m_last = tl.minimum(m0 + BLOCK_M, N) - 1

    # -- local band of the tile --
    lo = tl.maximum(m0 - window + 1, 0)
    hi = m_last + 1 if CAUSAL else tl.minimum(m_last + window, N)
    acc, m_i, l_i = _fwd_tiles(
        acc, m_i, l_i, q, rows,
        K + bh * N * D, V + bh * N * D, KEY_REAL + b * N,
        lo, hi, N, N, NB, window, block, qk_scale, offs_d, D,
        CAUSAL, False, HAS_KEY_REAL, BLOCK_N, DOT_PREC,
    )  # fmt: skip

    if HAS_SUM:
        ks_base = KS + bh * NB * D
        vs_base = VS + bh * NB * D
        sr_base = SUM_REAL + b * NB
        # -- summaries of blocks wholly before the band: last_j <= m_last - window --
        j_hi = tl.minimum(tl.maximum(m_last - window + 1, 0) // block, NB)
        acc, m_i, l_i = _fwd_tiles(
            acc, m_i, l_i, q, rows, ks_base, vs_base, sr_base,
            0, j_hi, NB, N, NB, window, block, qk_scale, offs_d, D,
            CAUSAL, True, HAS_SUM_REAL, BLOCK_N, DOT_PREC,
        )  # fmt: skip
        if not CAUSAL:
            # -- summaries of blocks wholly after the band: first_j >= m0 + window --
            j_lo = tl.minimum((m0 + window + block - 1) // block, NB)
            # start past the first range so no summary tile is visited twice
            j_lo = tl.maximum(j_lo, (j_hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N)
            acc, m_i, l_i = _fwd_tiles(
                acc, m_i, l_i, q, rows, ks_base, vs_base, sr_base,
                j_lo, NB, NB, N, NB, window, block, qk_scale, offs_d, D,
                CAUSAL, True, HAS_SUM_REAL, BLOCK_N, DOT_PREC,
            )  # fmt: skip

    # -- epilogue: normalise; rows that saw nothing get o = 0, lse = +inf --
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(OUT + bh * N * D + q_off, o.to(OUT.dtype.element_ty), mask=q_mask)
    tl.store(LSE + bh * N + rows, lse, mask=row_ok)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(OUT, DO, DELTA, NROWS, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta_i = sum_d o_id * do_id in fp32 (the softmax backward's row correction)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < NROWS)[:, None] & (offs_d[None, :] < D)
    off = rows[:, None] * D + offs_d[None, :]
    o = tl.load(OUT + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < NROWS)


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
    lo,
    hi,
    n_cols,
    N,
    NB,
    window,
    block,
    qk_scale,
    offs_d,
    D,
    CAUSAL: tl.constexpr,
    IS_SUMMARY: tl.constexpr,
    HAS_REAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dq (unscaled) of the query tile over key (or summary) tiles [lo, hi)."""
    start = (lo // BLOCK_N) * BLOCK_N
    for n0 in range(start, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (cols < n_cols)[:, None] & (offs_d[None, :] < D)
        kv_off = cols[:, None] * D + offs_d[None, :]
        k = tl.load(k_base + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(v_base + kv_off, mask=kv_mask, other=0.0)

        # -- recompute probabilities from the saved lse --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        vis = _visible(rows[:, None], cols[None, :], N, NB, window, block, CAUSAL, IS_SUMMARY)
        vis = vis & _col_real(real_base, cols, n_cols, HAS_REAL)[None, :]
        p = tl.where(vis, tl.exp2(qk - lse[:, None]), 0.0)

        # -- ds = p * (dp - delta) --
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.autotune(
    configs=_bwd_configs(), key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune}
)
@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    KS,
    VS,
    KEY_REAL,
    SUM_REAL,
    DO,
    LSE,
    DELTA,
    DQ,
    H,
    N,
    NB,
    D,
    window,
    block,
    scale,
    qk_scale,
    N_BUCKET,
    CAUSAL: tl.constexpr,
    HAS_SUM: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    HAS_SUM_REAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs tiles of at least 16")
    tl.static_assert(BLOCK_D >= 16, "head dim is padded to at least 16")

    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q_off = rows[:, None] * D + offs_d[None, :]
    q_mask = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + bh * N * D + q_off, mask=q_mask, other=0.0)
    do = tl.load(DO + bh * N * D + q_off, mask=q_mask, other=0.0)
    # Rows past N load lse = +inf: every p of theirs is 0.
    lse = tl.load(LSE + bh * N + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * N + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    m0 = pid_m * BLOCK_M
    m_last = tl.minimum(m0 + BLOCK_M, N) - 1

    # -- local band of the tile --
    lo = tl.maximum(m0 - window + 1, 0)
    hi = m_last + 1 if CAUSAL else tl.minimum(m_last + window, N)
    dq = _dq_tiles(
        dq, q, do, lse, delta, rows,
        K + bh * N * D, V + bh * N * D, KEY_REAL + b * N,
        lo, hi, N, N, NB, window, block, qk_scale, offs_d, D,
        CAUSAL, False, HAS_KEY_REAL, BLOCK_N, DOT_PREC,
    )  # fmt: skip

    if HAS_SUM:
        ks_base = KS + bh * NB * D
        vs_base = VS + bh * NB * D
        sr_base = SUM_REAL + b * NB
        # -- summaries before the band, then (non-causal) after it; see _fwd_kernel --
        j_hi = tl.minimum(tl.maximum(m_last - window + 1, 0) // block, NB)
        dq = _dq_tiles(
            dq, q, do, lse, delta, rows, ks_base, vs_base, sr_base,
            0, j_hi, NB, N, NB, window, block, qk_scale, offs_d, D,
            CAUSAL, True, HAS_SUM_REAL, BLOCK_N, DOT_PREC,
        )  # fmt: skip
        if not CAUSAL:
            j_lo = tl.minimum((m0 + window + block - 1) // block, NB)
            j_lo = tl.maximum(j_lo, (j_hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N)
            dq = _dq_tiles(
                dq, q, do, lse, delta, rows, ks_base, vs_base, sr_base,
                j_lo, NB, NB, N, NB, window, block, qk_scale, offs_d, D,
                CAUSAL, True, HAS_SUM_REAL, BLOCK_N, DOT_PREC,
            )  # fmt: skip

    # s = scale * q.k, so ds/dq carries one factor of scale
    tl.store(DQ + bh * N * D + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _dkv_tiles(
    dk,
    dv,
    k,
    v,
    cols,
    col_real,
    q_base,
    do_base,
    lse_base,
    delta_base,
    lo,
    hi,
    N,
    NB,
    window,
    block,
    qk_scale,
    offs_d,
    D,
    CAUSAL: tl.constexpr,
    IS_SUMMARY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dk (unscaled), dv of a key (or summary) tile over query tiles [lo, hi).

    Works in the transposed layout [BLOCK_N keys, BLOCK_M queries].
    """
    start = (lo // BLOCK_M) * BLOCK_M
    for m0 in range(start, hi, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        q_off = rows[:, None] * D + offs_d[None, :]
        q_mask = row_ok[:, None] & (offs_d[None, :] < D)
        q = tl.load(q_base + q_off, mask=q_mask, other=0.0)
        do = tl.load(do_base + q_off, mask=q_mask, other=0.0)
        lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)

        # -- p^T from the saved lse --
        kq = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale
        vis = _visible(rows[None, :], cols[:, None], N, NB, window, block, CAUSAL, IS_SUMMARY)
        vis = vis & col_real[:, None]
        p = tl.where(vis, tl.exp2(kq - lse[None, :]), 0.0)

        # -- dv += p^T do;  ds^T = p^T * (dp^T - delta) ;  dk += ds^T q --
        dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds = p * (dp - delta[None, :])
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.autotune(
    configs=_bwd_configs(), key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune}
)
@triton.jit
def _dkv_kernel(
    Q,
    K,
    V,
    KS,
    VS,
    KEY_REAL,
    SUM_REAL,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    DKS,
    DVS,
    H,
    N,
    NB,
    D,
    window,
    block,
    scale,
    qk_scale,
    N_BUCKET,
    CAUSAL: tl.constexpr,
    HAS_SUM: tl.constexpr,
    HAS_KEY_REAL: tl.constexpr,
    HAS_SUM_REAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs tiles of at least 16")
    tl.static_assert(BLOCK_D >= 16, "head dim is padded to at least 16")

    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + bh * N * D
    do_base = DO + bh * N * D
    lse_base = LSE + bh * N
    delta_base = DELTA + bh * N
    n_sum_tiles = 0
    if HAS_SUM:
        n_sum_tiles = tl.cdiv(NB, BLOCK_N)

    if pid < n_sum_tiles:
        # -- a tile of summaries: every query that sees one of them, i.e. those at or past
        #    last_j0 + window, and (non-causal) those at or before first_jend - window --
        j0 = pid * BLOCK_N
        cols = j0 + tl.arange(0, BLOCK_N)
        kv_off = cols[:, None] * D + offs_d[None, :]
        kv_mask = (cols < NB)[:, None] & (offs_d[None, :] < D)
        k = tl.load(KS + bh * NB * D + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(VS + bh * NB * D + kv_off, mask=kv_mask, other=0.0)
        col_real = _col_real(SUM_REAL + b * NB, cols, NB, HAS_SUM_REAL)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

        last0 = tl.minimum((j0 + 1) * block, N) - 1
        lo = tl.minimum(last0 + window, N)
        dk, dv = _dkv_tiles(
            dk, dv, k, v, cols, col_real, q_base, do_base, lse_base, delta_base,
            lo, N, N, NB, window, block, qk_scale, offs_d, D,
            CAUSAL, True, BLOCK_M, DOT_PREC,
        )  # fmt: skip
        if not CAUSAL:
            first_end = (tl.minimum(j0 + BLOCK_N, NB) - 1) * block
            hi = tl.maximum(first_end - window + 1, 0)
            # stop before the first loop's first tile so no query tile is visited twice
            hi = tl.minimum(hi, (lo // BLOCK_M) * BLOCK_M)
            dk, dv = _dkv_tiles(
                dk, dv, k, v, cols, col_real, q_base, do_base, lse_base, delta_base,
                0, hi, N, NB, window, block, qk_scale, offs_d, D,
                CAUSAL, True, BLOCK_M, DOT_PREC,
            )  # fmt: skip
        tl.store(DKS + bh * NB * D + kv_off, (dk * scale).to(DKS.dtype.element_ty), mask=kv_mask)
        tl.store(DVS + bh * NB * D + kv_off, dv.to(DVS.dtype.element_ty), mask=kv_mask)
    else:
        # -- a tile of keys: the queries in its band --
        n0 = (pid - n_sum_tiles) * BLOCK_N
        cols = n0 + tl.arange(0, BLOCK_N)
        kv_off = cols[:, None] * D + offs_d[None, :]
        kv_mask = (cols < N)[:, None] & (offs_d[None, :] < D)
        k = tl.load(K + bh * N * D + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + bh * N * D + kv_off, mask=kv_mask, other=0.0)
        col_real = _col_real(KEY_REAL + b * N, cols, N, HAS_KEY_REAL)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

        n_last = tl.minimum(n0 + BLOCK_N, N) - 1
        lo = n0 if CAUSAL else tl.maximum(n0 - window + 1, 0)
        hi = tl.minimum(n_last + window, N)
        dk, dv = _dkv_tiles(
            dk, dv, k, v, cols, col_real, q_base, do_base, lse_base, delta_base,
            lo, hi, N, NB, window, block, qk_scale, offs_d, D,
            CAUSAL, False, BLOCK_M, DOT_PREC,
        )  # fmt: skip
        tl.store(DK + bh * N * D + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + bh * N * D + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own TF32 switch so plain torch and the kernel round alike.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # Triton's default; for fp16/bf16 operands it changes nothing


def _common(q, k_sum, key_real, summary_real, window, block):
    b, h, n, d = q.shape
    if n * d >= 2**31:
        raise NotImplementedError(f"N * D = {n * d} elements in one head needs int64 offsets")
    has_sum = block is not None and k_sum is not None
    nb = k_sum.shape[2] if has_sum else 1
    # Equivalent clamps that keep index arithmetic inside int32: a window >= N sees every
    # key and no summary, a block >= N is one block.
    window = min(int(window), n)
    block = min(int(block), n) if has_sum else 1
    dummy = torch.ones(1, dtype=torch.bool, device=q.device)
    kr = key_real.contiguous() if key_real is not None else dummy
    sr = summary_real.contiguous() if (has_sum and summary_real is not None) else dummy
    return dict(
        b=b, h=h, n=n, d=d, nb=nb, has_sum=has_sum, window=window, block=block,
        key_real=kr, summary_real=sr,
        meta=dict(
            N_BUCKET=triton.next_power_of_2(n),
            HAS_SUM=has_sum,
            HAS_KEY_REAL=key_real is not None,
            HAS_SUM_REAL=has_sum and summary_real is not None,
            BLOCK_D=max(16, triton.next_power_of_2(d)),
            DOT_PREC=_dot_precision(q.dtype),
        ),
    )  # fmt: skip


def fused_forward(q, k, v, k_sum, v_sum, key_real, summary_real, *, window, block, causal, scale):
    """Fused forward: returns (o `[B, H, N, D]` in q's dtype, lse `[B, H, N]` float32, base 2)."""
    c = _common(q, k_sum, key_real, summary_real, window, block)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    ks = k_sum.contiguous() if c["has_sum"] else q
    vs = v_sum.contiguous() if c["has_sum"] else q
    b, h, n, d = c["b"], c["h"], c["n"], c["d"]
    o = new_output(b, h, n, d, dtype=q.dtype, device=q.device)
    lse = new_output(b, h, n, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), b * h)

    _fwd_kernel[grid](
        q, k, v, ks, vs, c["key_real"], c["summary_real"], o, lse,
        h, n, c["nb"], d, c["window"], c["block"], float(scale) * LOG2E,
        CAUSAL=bool(causal), **c["meta"],
    )  # fmt: skip
    return o, lse


def fused_backward(
    do, q, k, v, k_sum, v_sum, key_real, summary_real, o, lse, *, window, block, causal, scale
):
    """Fused backward: returns (dq, dk, dv, dk_sum, dv_sum); the last two None without summaries.

    dk, dv are the gradients through the local keys only; dk_sum, dv_sum those with
    respect to the pooled summaries (routed to k, v by the caller's pooling backward).
    """
    c = _common(q, k_sum, key_real, summary_real, window, block)
    # Upstream grads can be stride-0 (out.sum().backward()): the kernels assume contiguity.
    do, q, k, v, o = (x.contiguous() for x in (do, q, k, v, o))
    lse = lse.contiguous()
    has_sum = c["has_sum"]
    ks = k_sum.contiguous() if has_sum else q
    vs = v_sum.contiguous() if has_sum else q
    b, h, n, d, nb = c["b"], c["h"], c["n"], c["d"], c["nb"]
    dq = new_output(b, h, n, d, dtype=q.dtype, device=q.device)
    dk = new_output(b, h, n, d, dtype=k.dtype, device=q.device)
    dv = new_output(b, h, n, d, dtype=v.dtype, device=q.device)
    if has_sum:
        dks = new_output(b, h, nb, d, dtype=k_sum.dtype, device=q.device)
        dvs = new_output(b, h, nb, d, dtype=v_sum.dtype, device=q.device)
    else:
        dks = dvs = None
    if dq.numel() == 0:
        return dq, dk, dv, dks, dvs

    block_d = c["meta"]["BLOCK_D"]
    delta = new_output(b, h, n, dtype=torch.float32, device=q.device)
    rows = b * h * n
    block_r = 16 if _INTERPRET else 64
    _delta_kernel[(triton.cdiv(rows, block_r),)](
        o, do, delta, rows, d, BLOCK_R=block_r, BLOCK_D=block_d
    )

    args = (h, n, nb, d, c["window"], c["block"], float(scale), float(scale) * LOG2E)
    _dq_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), b * h)](
        q, k, v, ks, vs, c["key_real"], c["summary_real"], do, lse, delta, dq,
        *args, CAUSAL=bool(causal), **c["meta"],
    )  # fmt: skip

    def kv_grid(meta):
        sum_tiles = triton.cdiv(nb, meta["BLOCK_N"]) if has_sum else 0
        return (sum_tiles + triton.cdiv(n, meta["BLOCK_N"]), b * h)

    _dkv_kernel[kv_grid](
        q, k, v, ks, vs, c["key_real"], c["summary_real"], do, lse, delta,
        dk, dv, dks if has_sum else dk, dvs if has_sum else dv,
        *args, CAUSAL=bool(causal), **c["meta"],
    )  # fmt: skip
    return dq, dk, dv, dks, dvs
