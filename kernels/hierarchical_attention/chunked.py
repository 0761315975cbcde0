"""Vectorized PyTorch fallback for windowed hierarchical attention (no N x N tensor).

Queries are cut into chunks of `C` rows. Chunk c only needs the keys of its *band*:
causal, positions `[c*C - (W-1), c*C + C - 1]`, i.e. `L = C + W - 1` keys (non-causal,
`L = C + 2W - 2`). Bands of all chunks are one strided view of the zero-padded keys
(`Tensor.unfold`), so the local part is a single batched matmul `[nc, C, D] x [nc, D, L]`
with no Python loop, and scores take `N x L` memory. Summary scores are `N x NB`. Both
parts share one softmax (max and sum taken over the two pieces, never concatenated).

The backward recomputes scores from the saved log-sum-exp instead of keeping the
probabilities of every chunk (FlashAttention's trick), so it also stays within
`O(N x (W + C + NB))`. dq is computed query-major (chunk of queries against its key
band); dk, dv key-major (chunk of keys against the band of queries that see them), so
every gradient is a plain matmul: no scatter-add, no atomics, bit-for-bit deterministic.

These functions have the same signature as the fused Triton launchers (`fused.py`), so
both backends sit behind one custom op. Inputs are validated upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Largest query chunk. Larger chunks waste (C - 1) / (C + W - 1) of the band's work on
# masked keys and copy the band's keys more often; smaller ones mean more, tinier matmuls.
MAX_CHUNK = 64
MIN_CHUNK = 16


def chunk_size(n: int, window: int) -> int:
    """Query rows per chunk: the window rounded up to a power of two, in [16, 64], <= N."""
    c = 1 << max(0, (min(window, n) - 1).bit_length())
    return max(1, min(n, max(MIN_CHUNK, min(MAX_CHUNK, c))))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types are computed in float32 (scores, softmax and accumulation)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The saved log-sum-exp is float32, float64 for float64 inputs (so gradients keep
    float64 accuracy; the fused kernels do not take float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pool_summaries(
    k: torch.Tensor,
    v: torch.Tensor,
    block: int,
    key_real: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block means of the unpadded keys and values, differentiable.

    `[B, H, N, D]` -> k_sum, v_sum `[B, H, NB, D]` (input dtype) and `[B, NB]` bool, True
    where the block holds at least one real token (a block without one has a zero row).
    """
    b, _, n, _ = k.shape
    nb = -(-n // block)
    tail = nb * block - n
    cd = compute_dtype(k.dtype)
    real = torch.ones(b, n, device=k.device) if key_real is None else key_real
    weights = real.to(cd)
    weights = F.pad(weights, (0, tail)).view(b, nb, block)  # [B, NB, block]
    counts = weights.sum(-1)  # [B, NB]
    weights = weights / counts.clamp(min=1)[..., None]

    def mean(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.to(cd), (0, 0, 0, tail))  # [B, H, NB*block, D]
        x = x.view(b, x.shape[1], nb, block, x.shape[-1])  # [B, H, NB, block, D]
        return torch.einsum("bhjtd,bjt->bhjd", x, weights).to(k.dtype)

    return mean(k), mean(v), counts > 0


# -- band helpers ---------------------------------------------------------------------


def _pad_seq(x: torch.Tensor, dim: int, left: int, right: int) -> torch.Tensor:
    """Zero-pad (False for bool) `left`/`right` rows along `dim`."""
    if left == 0 and right == 0:
        return x
    parts = []
    if left:
        shape = list(x.shape)
        shape[dim] = left
        parts.append(x.new_zeros(shape))
    parts.append(x)
    if right:
        shape = list(x.shape)
        shape[dim] = right
        parts.append(x.new_zeros(shape))
    return torch.cat(parts, dim=dim)


def _bands(x: torch.Tensor, dim: int, lo: int, length: int, chunk: int, nc: int) -> torch.Tensor:
    """View of `x` whose chunk c holds positions `c*chunk + lo + l`, l in [0, length).

    Positions outside `[0, N)` read zeros (False). The chunk axis is inserted at `dim`
    and the band axis is appended last (this is `Tensor.unfold`'s layout).
    """
    n = x.shape[dim]
    left = -lo
    right = max(0, (nc - 1) * chunk + length - left - n)
    return _pad_seq(x, dim, left, right).unfold(dim, length, chunk).narrow(dim, 0, nc)


class _Geometry:
    """Sizes and index masks shared by forward and backward for one call."""

    def __init__(
        self,
        n: int,
        window: int,
        block: int | None,
        causal: bool,
        key_real: torch.Tensor | None,
        summary_real: torch.Tensor | None,
        device: torch.device,
    ) -> None:
        # A window wider than the sequence sees exactly what a window of N sees (and no
        # summary in either case), so clamp it to keep bands short.
        w = min(window, n)
        self.n, self.window, self.causal = n, window, causal
        self.chunk = c = chunk_size(n, w)
        self.nc = nc = -(-n // c)
        self.npad = nc * c
        # Query-major band: keys c*C - (W-1) ...; key-major band: queries from c*C (causal)
        # or c*C - (W-1) (non-causal).
        self.lo_q = -(w - 1)
        self.lo_k = 0 if causal else -(w - 1)
        self.length = c + w - 1 if causal else c + 2 * w - 2
        r = torch.arange(c, device=device)[:, None]  # row inside the chunk
        col = torch.arange(self.length, device=device)[None, :]  # position inside the band
        chunk_start = torch.arange(nc, device=device)[:, None, None] * c  # [nc, 1, 1]

        def local(d: torch.Tensor) -> torch.Tensor:  # d = i - t
            return (d >= 0) & (d < w) if causal else d.abs() < w

        # query-major: i = cC + r, t = cC + lo_q + col
        t_q = chunk_start + self.lo_q + col  # [nc, 1, L]
        i_q = chunk_start + r  # [nc, C, 1]
        vis_q = local(r - self.lo_q - col)[None] & (i_q < n) & (t_q >= 0) & (t_q < n)
        # key-major: t = cC + r, i = cC + lo_k + col
        i_k = chunk_start + self.lo_k + col  # [nc, 1, L]
        t_k = chunk_start + r  # [nc, C, 1]
        vis_k = local(self.lo_k + col - r)[None] & (t_k < n) & (i_k >= 0) & (i_k < n)
        if key_real is None:
            self.vis_q = vis_q[None, None]  # [1, 1, nc, C, L]
            self.vis_k = vis_k[None, None]
        else:
            b = key_real.shape[0]
            real_band = _bands(key_real, 1, self.lo_q, self.length, c, nc)  # [B, nc, L]
            real_rows = _pad_seq(key_real, 1, 0, self.npad - n).view(b, nc, c)  # [B, nc, C]
            self.vis_q = (vis_q[None] & real_band[:, :, None, :])[:, None]  # [B, 1, nc, C, L]
            self.vis_k = (vis_k[None] & real_rows[..., None])[:, None]

        self.vis_s = None
        if block is not None:
            nb = -(-n // block)
            i = torch.arange(self.npad, device=device)[:, None]
            first = torch.arange(nb, device=device)[None, :] * block
            last = torch.clamp(first + block, max=n) - 1
            vis = last <= i - window
            if not causal:
                vis = vis | (first >= i + window)
            vis = vis & (i < n)  # [Npad, NB]
            vis = vis[None] if summary_real is None else vis[None] & summary_real[:, None, :]
            self.vis_s = vis.view(vis.shape[0], 1, nc, c, nb)  # [B|1, 1, nc, C, NB]


def _masked_scores(a: torch.Tensor, b_t: torch.Tensor, scale: float, vis: torch.Tensor):
    return (scale * (a @ b_t)).masked_fill(~vis, float("-inf"))


def chunked_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_sum: torch.Tensor | None,
    v_sum: torch.Tensor | None,
    key_real: torch.Tensor | None,
    summary_real: torch.Tensor | None,
    *,
    window: int,
    block: int | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over [local keys ; given summaries] -> (o `[B, H, N, D]`, lse `[B, H, N]`).

    lse is -inf for a query that sees nothing (its output row is zero).
    """
    from stretto.kernels.testing import new_output

    bsz, h, n, d = q.shape
    cd = compute_dtype(q.dtype)
    g = _Geometry(n, window, block, causal, key_real, summary_real, q.device)
    c, nc = g.chunk, g.nc
    qc = _pad_seq(q.to(cd), 2, 0, g.npad - n).view(bsz, h, nc, c, d)  # [B, H, nc, C, D]
    k_bt = _bands(k.to(cd), 2, g.lo_q, g.length, c, nc)  # [B, H, nc, D, L]
    v_b = _bands(v.to(cd), 2, g.lo_q, g.length, c, nc).transpose(-1, -2)  # [B, H, nc, L, D]

    s_loc = _masked_scores(qc, k_bt, scale, g.vis_q)  # [B, H, nc, C, L]
    m = s_loc.amax(-1)  # [B, H, nc, C]
    s_sum = None
    if g.vis_s is not None:
        k_sum_t = k_sum.to(cd).transpose(-1, -2)[:, :, None]  # [B, H, 1, D, NB]
        s_sum = _masked_scores(qc, k_sum_t, scale, g.vis_s)  # [B, H, nc, C, NB]
        m = torch.maximum(m, s_sum.amax(-1))
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=cd, device=q.device))
    p_loc = torch.exp(s_loc - m[..., None])
    acc = p_loc @ v_b  # [B, H, nc, C, D]
    denom = p_loc.sum(-1)
    if s_sum is not None:
        p_sum = torch.exp(s_sum - m[..., None])
        acc = acc + p_sum @ v_sum.to(cd)[:, :, None]
        denom = denom + p_sum.sum(-1)
    seen = denom > 0
    acc = acc / torch.where(seen, denom, torch.ones((), dtype=cd, device=q.device))[..., None]
    lse_c = torch.where(seen, m + torch.log(denom), torch.full((), float("-inf"), device=q.device))

    o = new_output(bsz, h, n, d, dtype=q.dtype, device=q.device)
    o.copy_(acc.view(bsz, h, g.npad, d)[:, :, :n])
    lse = new_output(bsz, h, n, dtype=lse_dtype(q.dtype), device=q.device)
    lse.copy_(lse_c.view(bsz, h, g.npad)[:, :, :n])
    return o, lse


def chunked_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_sum: torch.Tensor | None,
    v_sum: torch.Tensor | None,
    key_real: torch.Tensor | None,
    summary_real: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    *,
    window: int,
    block: int | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, ...]:
    """Gradients (dq, dk, dv, dk_sum, dv_sum) of `chunked_forward`; dk_sum, dv_sum are
    None when `block` is None."""
    from stretto.kernels.testing import new_output

    bsz, h, n, d = q.shape
    cd = compute_dtype(q.dtype)
    g = _Geometry(n, window, block, causal, key_real, summary_real, q.device)
    c, nc, npad = g.chunk, g.nc, g.npad
    q_, k_, v_, do_ = (x.to(cd) for x in (q, k, v, do))
    # A row that saw nothing has lse = -inf and only -inf scores: use 0 so exp gives 0.
    lse_ = lse.to(cd)
    lse_ = torch.where(torch.isfinite(lse_), lse_, torch.zeros((), dtype=cd, device=q.device))
    delta = (do_ * o.to(cd)).sum(-1)  # [B, H, N]

    # -- dq (and the summaries' gradients): query-major --
    qc = _pad_seq(q_, 2, 0, npad - n).view(bsz, h, nc, c, d)
    doc = _pad_seq(do_, 2, 0, npad - n).view(bsz, h, nc, c, d)
    lse_c = _pad_seq(lse_, 2, 0, npad - n).view(bsz, h, nc, c, 1)
    delta_c = _pad_seq(delta, 2, 0, npad - n).view(bsz, h, nc, c, 1)
    k_bt = _bands(k_, 2, g.lo_q, g.length, c, nc)  # [B, H, nc, D, L]
    v_bt = _bands(v_, 2, g.lo_q, g.length, c, nc)
    p = torch.exp(_masked_scores(qc, k_bt, scale, g.vis_q) - lse_c)  # [B, H, nc, C, L]
    ds = p * (doc @ v_bt - delta_c)
    dq_c = ds @ k_bt.transpose(-1, -2)  # [B, H, nc, C, D]
    dk_sum = dv_sum = None
    if g.vis_s is not None:
        ks, vs = k_sum.to(cd)[:, :, None], v_sum.to(cd)[:, :, None]  # [B, H, 1, NB, D]
        p_s = torch.exp(_masked_scores(qc, ks.transpose(-1, -2), scale, g.vis_s) - lse_c)
        ds_s = p_s * (doc @ vs.transpose(-1, -2) - delta_c)  # [B, H, nc, C, NB]
        dq_c = dq_c + ds_s @ ks
        nb = ks.shape[-2]
        ds_s = ds_s.reshape(bsz, h, npad, nb)
        p_s = p_s.reshape(bsz, h, npad, nb)
        dk_sum = new_output(*k_sum.shape, dtype=k_sum.dtype, device=q.device)
        dk_sum.copy_(scale * (ds_s.transpose(-1, -2) @ qc.view(bsz, h, npad, d)))
        dv_sum = new_output(*v_sum.shape, dtype=v_sum.dtype, device=q.device)
        dv_sum.copy_(p_s.transpose(-1, -2) @ doc.view(bsz, h, npad, d))
    dq = new_output(bsz, h, n, d, dtype=q.dtype, device=q.device)
    dq.copy_(scale * dq_c.view(bsz, h, npad, d)[:, :, :n])

    # -- dk, dv: key-major (chunk of keys against the band of queries that see them) --
    kc = _pad_seq(k_, 2, 0, npad - n).view(bsz, h, nc, c, d)
    vc = _pad_seq(v_, 2, 0, npad - n).view(bsz, h, nc, c, d)
    q_bt = _bands(q_, 2, g.lo_k, g.length, c, nc)  # [B, H, nc, D, L]
    do_bt = _bands(do_, 2, g.lo_k, g.length, c, nc)
    lse_b = _bands(lse_, 2, g.lo_k, g.length, c, nc)[:, :, :, None]  # [B, H, nc, 1, L]
    delta_b = _bands(delta, 2, g.lo_k, g.length, c, nc)[:, :, :, None]
    p_t = torch.exp(_masked_scores(kc, q_bt, scale, g.vis_k) - lse_b)  # [B, H, nc, C, L]
    dv_c = p_t @ do_bt.transpose(-1, -2)  # [B, H, nc, C, D]
    ds_t = p_t * (vc @ do_bt - delta_b)
    dk_c = ds_t @ q_bt.transpose(-1, -2)
    dk = new_output(bsz, h, n, d, dtype=k.dtype, device=q.device)
    dk.copy_(scale * dk_c.view(bsz, h, npad, d)[:, :, :n])
    dv = new_output(bsz, h, n, d, dtype=v.dtype, device=q.device)
    dv.copy_(dv_c.view(bsz, h, npad, d)[:, :, :n])
    return dq, dk, dv, dk_sum, dv_sum
