"""One-token decoding against a bounded cache (causal windowed hierarchical attention).

A decode step has the same shapes at every token: the position is a device tensor
(`cache.pos`), the ring of the last `window` keys is attended whole under a mask of its
filled slots, and every block summary slot is attended under a mask built on the
device from the position and the blocks' token counts. So one `torch.compile`
(`fullgraph=True, dynamic=False`) or one CUDA graph serves every token, and nothing
syncs with the host. Eager calls also keep a host copy of the length, which lets them
slice the ring and the summaries to what is filled (fewer FLOPs early on, same
result) and check `max_length`; a compiled step forgets that copy.
"""

from __future__ import annotations

import torch

from .chunked import compute_dtype


class HierarchicalKVCache:
    """Static decoding cache for causal `hierarchical_attention`, one layer.

    Holds a ring buffer of the last `window` keys/values (`[B, H, window, D]`) and, when
    `block` is set, running per-block sums and real-token counts (`[B, H, NB, D]`,
    `[B, NB]` with `NB = ceil(max_length / block)`) from which the block summaries are
    formed: memory O(window + max_length / block) per layer, never O(max_length) keys.
    Everything is allocated once; `append`/`attend` never synchronise with the host:
    the position is `pos`, an int64 device scalar, and masks are built on the device.

    Usage::

        cache = HierarchicalKVCache(B, H, D, window=256, block=64, max_length=4096)
        cache.prefill(k, v)                 # [B, H, N, D] prompt keys/values (optional)
        cache.append(k_t, v_t)              # [B, H, D] (or [B, H, 1, D]) for the new token
        o_t = cache.attend(q_t)             # [B, H, D] == full forward at that position

    `attend` answers for the most recently appended position i, exactly as
    `hierarchical_attention(..., causal=True)` does at row i (keys `i - window < t <= i`
    plus the summaries of blocks ending at or before `i - window`). Key padding: pass
    `real` (`[B]` bool, True = real token) to `append` / `key_padding_mask` to `prefill`;
    padded tokens are never visible and do not enter the block means. Only causal
    attention can be decoded token by token: `causal=False` raises NotImplementedError.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        *,
        window: int,
        block: int | None = None,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        causal: bool = True,
    ) -> None:
        for name, value in (
            ("batch", batch),
            ("heads", heads),
            ("head_dim", head_dim),
            ("window", window),
            ("max_length", max_length),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if block is not None and (
            not isinstance(block, int) or isinstance(block, bool) or block < 1
        ):
            raise ValueError(f"block must be None or an int >= 1, got {block!r}")
        if not causal:
            raise NotImplementedError(
                "HierarchicalKVCache decodes causal attention only: a non-causal query "
                "needs keys after it"
            )
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.window, self.block, self.max_length = window, block, max_length
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # tokens appended
        # The device the tensors landed on: "cuda" resolves to "cuda:0", which inputs
        # on the current device report, so checks compare like with like.
        self.dtype, self.device = dtype, self.pos.device
        # Host copy of pos, kept by eager calls; None after a compiled step wrote pos.
        self._host_length: int | None = 0

        ring = min(window, max_length)  # a window past max_length never fills
        self.k_ring = torch.zeros(batch, heads, ring, head_dim, dtype=dtype, device=self.device)
        self.v_ring = torch.zeros_like(self.k_ring)
        self.real_ring = torch.zeros(batch, ring, dtype=torch.bool, device=self.device)
        self.k_block_sum = self.v_block_sum = self.block_count = None
        if block is not None:
            nb = -(-max_length // block)
            cd = compute_dtype(dtype)
            # [B, H, NB, D]
            self.k_block_sum = torch.zeros(batch, heads, nb, head_dim, dtype=cd, device=self.device)
            self.v_block_sum = torch.zeros_like(self.k_block_sum)
            self.block_count = torch.zeros(batch, nb, dtype=cd, device=self.device)  # [B, NB]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the cache holds: `pos`, the ring (keys, values, real-token flags)
        and, with `block`, the block sums and counts. They are allocated once and written
        in place, so a compiled or graphed step can take them as static inputs."""
        held = (self.pos, self.k_ring, self.v_ring, self.real_ring)
        if self.block is None:
            return held
        return (*held, self.k_block_sum, self.v_block_sum, self.block_count)

    @property
    def length(self) -> int:
        """Tokens appended so far (reads `pos` from the device after a compiled step)."""
        if self._host_length is None:
            self._host_length = int(self.pos.item())
        return self._host_length

    def _known_length(self) -> int | None:
        """The host copy of the length in eager mode; None while tracing (so a compiled
        step neither reads it nor specialises on it)."""
        if torch.compiler.is_compiling():
            self._host_length = None  # pos moves on without the host seeing it
            return None
        return self._host_length

    # -- writing --

    def reset(self) -> None:
        """Forget every token (buffers are kept)."""
        self.pos.zero_()
        self._host_length = 0
        self.real_ring.zero_()
        if self.block is not None:
            self.k_block_sum.zero_()
            self.v_block_sum.zero_()
            self.block_count.zero_()

    def _token(self, name: str, x: torch.Tensor) -> torch.Tensor:
        want = (self.batch, self.heads, self.head_dim)
        if x.dim() == 4 and x.shape[2] == 1:
            x = x[:, :, 0]
        if tuple(x.shape) != want:
            raise ValueError(
                f"{name} must be [B, H, D] = {want} (or [B, H, 1, D]), got {tuple(x.shape)}"
            )
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device}, the cache on {self.device}")
        return x

    def _real(self, real: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
        shape = (self.batch,) if n is None else (self.batch, n)
        if real is None:
            return torch.ones(shape, dtype=torch.bool, device=self.device)
        if real.dtype != torch.bool or tuple(real.shape) != shape:
            raise ValueError(
                f"padding mask must be torch.bool of shape {shape}, "
                f"got {real.dtype} {tuple(real.shape)}"
            )
        return real.to(self.device)

    def append(
        self, k_t: torch.Tensor, v_t: torch.Tensor, real: torch.Tensor | None = None
    ) -> None:
        """Add the next token's key and value (`[B, H, D]`); `real` `[B]` bool, True = real."""
        k_t, v_t = self._token("k_t", k_t), self._token("v_t", v_t)
        real = self._real(real)
        known = self._known_length()
        if known is not None and known >= self.max_length:
            raise ValueError(f"cache is full: max_length={self.max_length} tokens appended")
        slot = (self.pos % self.k_ring.shape[2]).view(1)  # [1], on the device
        self.k_ring.index_copy_(2, slot, k_t.to(self.dtype)[:, :, None])
        self.v_ring.index_copy_(2, slot, v_t.to(self.dtype)[:, :, None])
        self.real_ring.index_copy_(1, slot, real[:, None])
        if self.block is not None:
            j = (self.pos // self.block).view(1)
            w = real.to(self.k_block_sum.dtype)  # [B]
            self.k_block_sum.index_add_(2, j, (k_t.to(w.dtype) * w[:, None, None])[:, :, None])
            self.v_block_sum.index_add_(2, j, (v_t.to(w.dtype) * w[:, None, None])[:, :, None])
            self.block_count.index_add_(1, j, w[:, None])
        self.pos.add_(1)
        if known is not None:
            self._host_length = known + 1

    def prefill(
        self, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> None:
        """Fill an empty cache with a prompt's keys/values `[B, H, N, D]` (N <= max_length)."""
        if self.length:
            raise ValueError(f"prefill needs an empty cache, it holds {self.length} tokens")
        want = (self.batch, self.heads)
        if k.dim() != 4 or tuple(k.shape[:2]) != want or k.shape[3] != self.head_dim:
            raise ValueError(
                f"k must be [B, H, N, D] with B, H, D = {self.batch, self.heads, self.head_dim}, "
                f"got {tuple(k.shape)}"
            )
        if v.shape != k.shape:
            raise ValueError(f"v must match k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
        n = k.shape[2]
        if n > self.max_length:
            raise ValueError(f"prompt of {n} tokens exceeds max_length={self.max_length}")
        real = self._real(key_padding_mask, n)  # [B, N]
        ring = self.k_ring.shape[2]
        positions = torch.arange(max(0, n - ring), n, device=self.device)
        slots = positions % ring
        self.k_ring[:, :, slots] = k[:, :, positions].to(self.dtype)
        self.v_ring[:, :, slots] = v[:, :, positions].to(self.dtype)
        self.real_ring[:, slots] = real[:, positions]
        if self.block is not None:
            nb = -(-n // self.block)
            tail = nb * self.block - n
            cd = self.k_block_sum.dtype
            w = torch.nn.functional.pad(real.to(cd), (0, tail)).view(self.batch, nb, self.block)
            for x, sums in ((k, self.k_block_sum), (v, self.v_block_sum)):
                x = torch.nn.functional.pad(x.to(cd), (0, 0, 0, tail))
                x = x.view(self.batch, self.heads, nb, self.block, self.head_dim)
                sums[:, :, :nb] = torch.einsum("bhjtd,bjt->bhjd", x, w)
            self.block_count[:, :nb] = w.sum(-1)
        self.pos.fill_(n)
        self._host_length = n

    # -- reading --

    def attend(self, q_t: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Output `[B, H, D]` (dtype of the cache) of query `q_t` at the last appended
        position; zeros when it sees nothing."""
        q_t = self._token("q_t", q_t)
        known = self._known_length()
        if known == 0:
            raise ValueError("attend needs at least one appended token")
        i = self.pos - 1  # the query's position, on the device
        scale = self.head_dim**-0.5 if scale is None else float(scale)
        cd = compute_dtype(self.dtype)
        neg_inf = float("-inf")
        ring = self.k_ring.shape[2]
        # Fixed shapes: the whole ring under the mask of its filled slots. Eagerly, with
        # the length known, slice to the filled slots (the same result, fewer FLOPs).
        used = ring if known is None else min(known, ring)
        q = q_t.to(cd).unsqueeze(-1)  # [B, H, D, 1]
        k_loc, v_loc = self.k_ring[:, :, :used].to(cd), self.v_ring[:, :, :used].to(cd)
        s_loc = torch.matmul(k_loc, q).squeeze(-1).mul_(scale)  # [B, H, W]
        s_loc.masked_fill_(~self.real_ring[:, None, :used], neg_inf)
        m = s_loc.amax(-1)  # [B, H]
        s_sum = v_sum = None
        # Blocks j with (j+1)*block - 1 <= i - window are complete and out of reach:
        # j < seen. Every slot is attended under that mask (eagerly: the first `seen`).
        n_blocks = 0
        if self.block is not None:
            nb = self.k_block_sum.shape[2]
            n_blocks = nb if known is None else min(nb, max(0, known - self.window) // self.block)
        if n_blocks:
            seen = torch.clamp(i - self.window + 1, min=0) // self.block  # device scalar
            count = self.block_count[:, :n_blocks]  # [B, NB]
            slots = torch.arange(n_blocks, device=self.device)
            visible = (slots < seen) & (count > 0)  # blocks of padding only: no summary
            per = count.clamp(min=1)[:, None, :, None]
            # Summaries round to the cache dtype, as the pooled k_sum/v_sum of the full op.
            k_sum = (self.k_block_sum[:, :, :n_blocks] / per).to(self.dtype).to(cd)
            v_sum = (self.v_block_sum[:, :, :n_blocks] / per).to(self.dtype).to(cd)
            s_sum = torch.matmul(k_sum, q).squeeze(-1).mul_(scale)  # [B, H, NB]
            s_sum.masked_fill_(~visible[:, None, :], neg_inf)
            m = torch.maximum(m, s_sum.amax(-1))
        m = torch.where(torch.isfinite(m), m, 0.0).unsqueeze(-1)  # rows that see nothing: 0
        p = s_loc.sub_(m).exp_()
        acc = torch.matmul(p.unsqueeze(-2), v_loc).squeeze(-2)  # [B, H, D]
        denom = p.sum(-1)
        if s_sum is not None:
            p_s = s_sum.sub_(m).exp_()
            acc.add_(torch.matmul(p_s.unsqueeze(-2), v_sum).squeeze(-2))
            denom.add_(p_s.sum(-1))
        denom = torch.where(denom > 0, denom, 1.0)
        return acc.div_(denom.unsqueeze(-1)).to(self.dtype)


def hierarchical_attention_decode(
    q_t: torch.Tensor, cache: HierarchicalKVCache, scale: float | None = None
) -> torch.Tensor:
    """`cache.attend(q_t)`: one query `[B, H, D]` at the cache's last position -> `[B, H, D]`."""
    return cache.attend(q_t, scale=scale)
