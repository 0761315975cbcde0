"""Vectorized PyTorch fallback for windowed hierarchical attention (no N x N tensor).

Queries are cut into chunks of `C` rows. Chunk c only needs the keys of its *band*:
causal, positions `[c*C - (W-1), c*C + C - 1]`, i.e. `C + W - 1` keys (non-causal,
`C + 2W - 2`). The bands of all chunks of all heads are one overlapping strided view
of the zero-padded keys (`_head_bands`), so the local part is a single batched matmul
`[B*H*nc, C, D] x [B*H*nc, D, L]` with no Python loop and no copy of the bands, and
scores take `N x L` memory, where `L` is the band widened to whole chunks. Summary
scores are `N x NB`. Both parts share one softmax (max and sum taken over the two
pieces, never concatenated). Masks are additive (0 / -inf) and applied in place.

The backward recomputes scores from the saved log-sum-exp instead of keeping the
probabilities of every chunk (FlashAttention's trick), so it also stays within
`O(N x (W + C + NB))`. Each chunk's probabilities and score gradients are computed once,
query-major: dq is their product with the chunk's key band, and dk, dv come out as
per-band gradients `[L, D]` that are summed back onto the keys they cover. Bands start
and end on chunk boundaries, so that sum is `L / C` shifted adds of whole chunks
(`_head_bands_sum`, the inverse of `_head_bands`): no scatter-add, no atomics,
bit-for-bit deterministic.

These functions have the same signature as the fused Triton launchers (`fused.py`), so
both backends sit behind one custom op. Inputs are validated upstream.
"""

from __future__ import annotations

import torch

# Largest query chunk. Larger chunks waste about C / (C + W) of the band's work on
# masked keys; smaller ones mean more, tinier matmuls. 64 was fastest for fwd+bwd at
# W = 256 on a 2-core x86 CPU (32 and 128 within noise of it, 256 clearly slower).
MAX_CHUNK = 64
MIN_CHUNK = 16
LOG2E = 1.4426950408889634  # exp(x) = 2^(x * LOG2E)


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
    k: torch.Tensor, block: int, key_real: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block means of the unpadded rows of `k` `[B, H, N, D]` (fp32 or fp64), no copy of k.

    Returns (`[B, H, NB, D]` in k's dtype, inv_count `[B, NB]`: 1 / real tokens of the
    block, 0 for a block of padding only, which then has a zero row and no summary).
    Without padding, whole blocks are a view of k summed in place and the last,
    partial block is summed on its own; with padding, rows are index-added onto their
    block's slot. Either way nothing of k's size is allocated.
    """
    b, h, n, d = k.shape
    full, tail = divmod(n, block)
    ones = key_real is None
    if ones:
        counts = torch.full((full,), float(block), dtype=k.dtype, device=k.device)
        if tail:
            counts = torch.cat([counts, counts.new_full((1,), float(tail))])
        counts = counts.expand(b, -1)
    else:
        real = key_real.to(k.dtype)  # [B, N]
        counts = real[:, : full * block].view(b, full, block).sum(-1)
        if tail:
            counts = torch.cat([counts, real[:, full * block :].sum(-1, keepdim=True)], 1)
    inv_count = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    if not ones:
        # Each real row is added onto its block's sum, padded rows onto a spare slot;
        # one index_add_ per batch row reads k in place (no masked or padded copy).
        nb = counts.shape[1]
        slot = torch.arange(n, device=k.device) // block  # [N]
        slots = torch.where(key_real, slot, nb)  # [B, N]
        sums = k.new_zeros(b, h, nb + 1, d)
        for row in range(b):
            sums[row].index_add_(1, slots[row], k[row])
        sums = sums[:, :, :nb].contiguous()  # summary-sized
    else:
        parts = []
        if full:  # whole blocks: a view of k, summed in place
            parts.append(k[:, :, : full * block].unflatten(2, (full, block)).sum(3))
        if tail:
            parts.append(k[:, :, full * block :].sum(2, keepdim=True))
        sums = parts[0] if len(parts) == 1 else torch.cat(parts, 2)
    return sums.mul_(inv_count[:, None, :, None]), inv_count


def unpool_add_(
    dx: torch.Tensor, dx_sum: torch.Tensor, block: int, key_real, inv_count: torch.Tensor
) -> torch.Tensor:
    """Pooling's backward, added in place: dx[t] += dx_sum[t // block] * real_t / count.

    dx `[B, H, N, D]`, dx_sum `[B, H, NB, D]` (one dtype); no `[B, H, N, D]` temporary.
    """
    b, h, n, d = dx.shape
    full, tail = divmod(n, block)
    g = dx_sum * inv_count[:, None, :, None]  # [B, H, NB, D]
    real = None if key_real is None else key_real.to(dx.dtype)
    if full:
        view = dx[:, :, : full * block].unflatten(2, (full, block))  # [B, H, NB', block, D]
        gf = g[:, :, :full, None, :]
        if real is None:
            view.add_(gf)
        else:
            view.addcmul_(gf, real[:, None, : full * block].view(b, 1, full, block, 1))
    if tail:
        view = dx[:, :, full * block :]
        gt = g[:, :, full:]
        if real is None:
            view.add_(gt)
        else:
            view.addcmul_(gt, real[:, None, full * block :, None])
    return dx


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


def _head_bands(x: torch.Tensor, lo: int, length: int, chunk: int, npad: int) -> torch.Tensor:
    """Bands of `[B, H, N, W]` rows as one `[B*H*nc, length, W]` strided view, no copy.

    Heads are laid end to end in one zero-filled buffer, `npad = nc * chunk` rows each,
    after `-lo` leading rows. Global chunk g = bh*nc + c then starts at buffer row
    `g * chunk` and reads head bh's rows `c*chunk + lo + l`: a constant batch stride, so
    bmm consumes the overlapping bands in place instead of copying each one. Rows
    outside `[0, N)` read zeros or a neighbouring head's rows; the masks hide both.
    """
    b, h, n, w = x.shape
    front = -lo
    back = max(0, length - chunk - front)
    buf = x.new_zeros(front + b * h * npad + back, w)
    buf[front : front + b * h * npad].view(b, h, npad, w)[:, :, :n] = x
    nbands = b * h * (npad // chunk)
    return buf.as_strided((nbands, length, w), (chunk * w, w, 1))


def _head_bands_sum(
    grads: torch.Tensor, shape: torch.Size, lo: int, chunk: int, npad: int
) -> torch.Tensor:
    """Inverse of `_head_bands`: sum per-band rows `[B*H*nc, L, W]` onto `shape` rows.

    `lo` and `L` are multiples of `chunk`, so sub-block j of band g lands on whole buffer
    chunk g + j: the sum is `L / chunk` shifted adds of `[B*H*nc, chunk, W]` slabs, in a
    fixed order. Rows that fall outside their head (masked, hence exactly zero) land in
    the padding or a neighbour's rows and add nothing.
    """
    b, h, n, w = shape
    nbands, length, _ = grads.shape
    m = length // chunk
    buf = grads.new_zeros(nbands + m - 1, chunk, w)
    for j, part in enumerate(grads.view(nbands, m, chunk, w).unbind(1)):
        buf[j : j + nbands].add_(part)
    front = -lo // chunk
    return buf[front : front + nbands].view(b, h, npad, w)[:, :, :n]


class _Geometry:
    """Sizes and additive masks (0 visible, -inf hidden) shared by forward and backward.

    Masks are additive so that scores are masked by one in-place add on the matmul's
    output: on CPU, every fresh `[B, H, N, L]` temporary costs as much as the math.
    """

    def __init__(
        self,
        n: int,
        window: int,
        block: int | None,
        causal: bool,
        key_real: torch.Tensor | None,
        summary_real: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        # A window wider than the sequence sees exactly what a window of N sees (and no
        # summary in either case), so clamp it to keep bands short.
        self.w = w = min(window, n)
        self.n, self.window, self.block, self.causal = n, window, block, causal
        self.key_real, self.summary_real = key_real, summary_real
        self.dtype, self.device = dtype, device
        self.chunk = c = chunk_size(n, w)
        self.nc = -(-n // c)
        self.npad = self.nc * c
        # Band of chunk c: keys from c*C + lo (lo = -(W-1) rounded down to a whole
        # chunk) to the chunk's last row (causal) or W-1 past it (non-causal), rounded
        # up to a whole chunk, so band gradients sum back chunk by chunk.
        self.lo_q = -c * -(-(w - 1) // c)
        reach = c - 1 if causal else c + w - 2  # last key offset from c*C
        self.length = c * -(-(reach - self.lo_q + 1) // c)

    def _bias(self, vis: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        return torch.where(vis, zero, torch.full_like(zero, float("-inf")))

    def _local(self, d: torch.Tensor) -> torch.Tensor:  # d = i - t
        return (d >= 0) & (d < self.w) if self.causal else d.abs() < self.w

    def _grid(self):
        dev, c = self.device, self.chunk
        r = torch.arange(c, device=dev)[:, None]  # row inside the chunk
        col = torch.arange(self.length, device=dev)[None, :]  # position inside the band
        start = torch.arange(self.nc, device=dev)[:, None, None] * c  # [nc, 1, 1]
        return r, col, start

    def bias_q(self) -> torch.Tensor:
        """Query-major `[B|1, 1, nc, C, L]`: row i = cC + r against key t = cC + lo_q + col."""
        r, col, start = self._grid()
        n = self.n
        t, i = start + self.lo_q + col, start + r
        vis = self._local(r - self.lo_q - col)[None] & (i < n) & (t >= 0) & (t < n)
        if self.key_real is not None:
            real = _bands(self.key_real, 1, self.lo_q, self.length, self.chunk, self.nc)
            vis = vis[None] & real[:, :, None, :]  # [B, nc, C, L]
        return self._bias(vis).unsqueeze(-4) if vis.dim() == 4 else self._bias(vis)[None, None]

    def bias_s(self) -> torch.Tensor:
        """Summaries `[B|1, 1, nc, C, NB]` (rows past N hidden)."""
        n, block, window = self.n, self.block, self.window
        nb = -(-n // block)
        i = torch.arange(self.npad, device=self.device)[:, None]
        first = torch.arange(nb, device=self.device)[None, :] * block
        last = torch.clamp(first + block, max=n) - 1
        vis = last <= i - window
        if not self.causal:
            vis = vis | (first >= i + window)
        vis = (vis & (i < n))[None]  # [1, Npad, NB]
        if self.summary_real is not None:
            vis = vis & self.summary_real[:, None, :]
        return self._bias(vis).view(vis.shape[0], 1, self.nc, self.chunk, nb)


def chunked_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_real: torch.Tensor | None,
    *,
    window: int,
    block: int | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, ...]:
    """Pooling and attention over [local keys ; summaries] -> (o `[B, H, N, D]`,
    lse `[B, H, N]`, k_sum, v_sum `[B, H, NB, D]` in the input dtype, inv_count
    `[B, NB]`; the last three empty without `block`).

    Scores are kept in the log2 domain (`exp2` runs several times faster than `exp` on
    CPU), so lse is base 2: `log2(sum_j 2^(scale * log2(e) * q . key_j))`. It is -inf
    for a query that sees nothing (its output row is zero).
    """
    from stretto.kernels.outputs import new_output

    bsz, h, n, d = q.shape
    cd = compute_dtype(q.dtype)
    k_, v_ = k.to(cd), v.to(cd)
    k_sum, v_sum, inv_count = _summaries(k_, v_, block, key_real, k.dtype)
    summary_real = None if key_real is None or block is None else inv_count > 0
    g = _Geometry(n, window, block, causal, key_real, summary_real, cd, q.device)
    c, nc, npad, length = g.chunk, g.nc, g.npad, g.length
    qs = _pad_seq(q.to(cd) * (scale * LOG2E), 2, 0, npad - n)  # [B, H, Npad, D], log2 units
    k_b = _head_bands(k_, g.lo_q, length, c, npad)  # [B*H*nc, L, D]
    v_b = _head_bands(v_, g.lo_q, length, c, npad)

    # -- scores, one softmax over [band ; summaries] without concatenating them --
    p_loc = torch.bmm(qs.view(-1, c, d), k_b.transpose(1, 2))  # [B*H*nc, C, L]
    p_loc = p_loc.view(bsz, h, nc, c, length).add_(g.bias_q())
    m = p_loc.amax(-1)  # [B, H, nc, C]
    p_sum = None
    if block is not None:
        p_sum = qs @ k_sum.to(cd).transpose(-1, -2)  # [B, H, Npad, NB] (rounded summaries)
        p_sum = p_sum.view(bsz, h, nc, c, -1).add_(g.bias_s())
        m = torch.maximum(m, p_sum.amax(-1))
    zero = torch.zeros((), dtype=cd, device=q.device)
    m = torch.where(torch.isfinite(m), m, zero)[..., None]  # rows that see nothing: 0
    p_loc.sub_(m).exp2_()
    acc = torch.bmm(p_loc.view(-1, c, length), v_b).view(bsz, h, npad, d)
    denom = p_loc.sum(-1).view(bsz, h, npad)
    if p_sum is not None:
        p_sum.sub_(m).exp2_()
        p_sum = p_sum.view(bsz, h, npad, -1)
        acc.add_(p_sum @ v_sum.to(cd))
        denom.add_(p_sum.sum(-1))
    seen = denom > 0
    acc.div_(torch.where(seen, denom, torch.ones_like(zero))[..., None])
    m = m.view(bsz, h, npad)
    lse_pad = torch.where(seen, m + torch.log2(denom), torch.full_like(zero, float("-inf")))

    o = new_output(bsz, h, n, d, dtype=q.dtype, device=q.device)
    o.copy_(acc[:, :, :n])
    lse = new_output(bsz, h, n, dtype=lse_dtype(q.dtype), device=q.device)
    lse.copy_(lse_pad[:, :, :n])
    return o, lse, k_sum, v_sum, inv_count


def _summaries(k_, v_, block, key_real, dtype):
    """k_sum, v_sum in `dtype` and inv_count, from k_, v_ in the compute dtype."""
    b, h, _, d = k_.shape
    if block is None:
        empty = k_.new_empty(b, h, 0, d, dtype=dtype)
        return empty, empty.clone(), k_.new_empty(b, 0)
    k_sum, inv_count = pool_summaries(k_, block, key_real)
    v_sum, _ = pool_summaries(v_, block, key_real)
    return k_sum.to(dtype), v_sum.to(dtype), inv_count


def chunked_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_real: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    k_sum: torch.Tensor,
    v_sum: torch.Tensor,
    inv_count: torch.Tensor,
    *,
    window: int,
    block: int | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, ...]:
    """Gradients (dq, dk, dv) of `chunked_forward`, dk and dv through the pooling too."""
    from stretto.kernels.outputs import new_output

    bsz, h, n, d = q.shape
    cd = compute_dtype(q.dtype)
    summary_real = None if key_real is None or block is None else inv_count > 0
    g = _Geometry(n, window, block, causal, key_real, summary_real, cd, q.device)
    c, nc, npad, length = g.chunk, g.nc, g.npad, g.length
    qs = q.to(cd) * (scale * LOG2E)  # log2-domain scores qs . k; dk = ds^T qs / LOG2E
    k_, v_, do_ = (x.to(cd) for x in (k, v, do))
    zero = torch.zeros((), dtype=cd, device=q.device)
    # A row that saw nothing has lse = -inf and only -inf scores: use 0 so exp2 gives 0.
    lse_ = lse.to(cd)
    lse_ = torch.where(torch.isfinite(lse_), lse_, zero)
    delta = (do_ * o.to(cd)).sum(-1)  # [B, H, N]

    def rows(x: torch.Tensor) -> torch.Tensor:  # [B, H, N, w] -> [B, H, Npad, w]
        return _pad_seq(x, 2, 0, npad - n)

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, H, nc, C, w] -> [B*H*nc, C, w]
        return x.reshape(-1, c, x.shape[-1])

    # -- one query-major pass: probabilities and score gradients of each chunk's band --
    qs_r, do_r = rows(qs), rows(do_)  # [B, H, Npad, D]
    lse_c = rows(lse_[..., None]).view(bsz, h, nc, c, 1)
    delta_c = rows(delta[..., None]).view(bsz, h, nc, c, 1)
    k_b = _head_bands(k_, g.lo_q, length, c, npad)  # [B*H*nc, L, D]
    v_b = _head_bands(v_, g.lo_q, length, c, npad)
    p = torch.bmm(chunked(qs_r), k_b.transpose(1, 2)).view(bsz, h, nc, c, length)
    p.add_(g.bias_q()).sub_(lse_c).exp2_()
    p = p.view(-1, c, length)  # [B*H*nc, C, L]
    dv = _head_bands_sum(torch.bmm(p.transpose(1, 2), chunked(do_r)), q.shape, g.lo_q, c, npad)
    ds = torch.bmm(chunked(do_r), v_b.transpose(1, 2)).view(bsz, h, nc, c, length)
    ds.sub_(delta_c).mul_(p.view(bsz, h, nc, c, length))
    del p
    ds = ds.view(-1, c, length)
    dq = torch.bmm(ds, k_b).view(bsz, h, npad, d)
    dk_b = torch.bmm(ds.transpose(1, 2), chunked(qs_r))  # [B*H*nc, L, D]
    del ds
    dk = _head_bands_sum(dk_b, q.shape, g.lo_q, c, npad)
    del dk_b

    dq_out = new_output(bsz, h, n, d, dtype=q.dtype, device=q.device)
    dk_out = new_output(bsz, h, n, d, dtype=k.dtype, device=q.device)
    dv_out = new_output(bsz, h, n, d, dtype=v.dtype, device=q.device)
    if block is not None:
        ks, vs = k_sum.to(cd), v_sum.to(cd)  # [B, H, NB, D]
        nb = ks.shape[-2]
        p_s = (qs_r @ ks.transpose(-1, -2)).view(bsz, h, nc, c, nb)
        p_s.add_(g.bias_s()).sub_(lse_c).exp2_()
        ds_s = (do_r @ vs.transpose(-1, -2)).view(bsz, h, nc, c, nb)
        ds_s.sub_(delta_c).mul_(p_s)
        ds_s, p_s = ds_s.view(bsz, h, npad, nb), p_s.view(bsz, h, npad, nb)
        dq.add_(ds_s @ ks)
        # -- summary grads routed to their blocks' keys (pooling's backward), in the
        #    log2 units of dk: dk_sum = ds_s^T qs / LOG2E --
        unpool_add_(dk, ds_s.transpose(-1, -2) @ qs_r, block, key_real, inv_count)
        unpool_add_(dv, p_s.transpose(-1, -2) @ do_r, block, key_real, inv_count)
    dq_out.copy_(dq[:, :, :n].mul_(scale))
    del dq
    dk_out.copy_(dk).div_(LOG2E)
    dv_out.copy_(dv)
    return dq_out, dk_out, dv_out
