"""`HierarchicalAttention`: multi-head self-attention as an `nn.Module` over the public op.

The last link of the chain kernel -> launcher -> custom op -> `hierarchical_attention`
-> module: projections, optional rotary positions, and one forward that serves training
(the whole sequence), prefill (the whole prompt, filling a cache) and decoding (one
token against the cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..rotary import Rotary
from .decode import HierarchicalKVCache
from .interface import BACKENDS, check_window_block, hierarchical_attention


class HierarchicalAttention(nn.Module):
    """Multi-head self-attention with windowed hierarchical attention (or dense SDPA).

    Args:
        d_model: width of the input and output `[B, N, d_model]`.
        n_heads: heads of `d_model // n_heads` (even when `rotary`).
        window, block, causal, backend: as in `stretto.kernels.hierarchical_attention`
            (`block=None` is plain sliding-window attention).
        rotary: rotate q and k by their absolute positions (base `rope_base`).
        bias: biases on the q/k/v and output projections.
        dense: full scaled-dot-product attention instead of WHA (window and block are
            then unused): the baseline to compare against, through the same module.

    `forward(x, key_padding_mask=None, cache=None, positions=None) -> [B, N, d_model]`:
    `key_padding_mask` `[B, N]` bool, True for real tokens; `positions` `[N]` absolute
    positions for the rotary phases (default: the cache's position `cache.pos`, a
    device tensor, for one token; else 0..N-1). With a `cache` from `new_cache`: N > 1
    tokens fill an empty cache (prefill, the same attention as without a cache); one
    token (N = 1) is appended and attends over the cache, which equals the full
    forward's row at that position. That one-token step has the same shapes at every
    position, so `torch.compile(fullgraph=True, dynamic=False)` compiles it once.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        window: int,
        block: int | None = None,
        causal: bool = True,
        backend: str = "auto",
        rotary: bool = True,
        rope_base: float = 10000.0,
        bias: bool = False,
        dense: bool = False,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} must split into n_heads={n_heads} equal heads")
        check_window_block(window, block)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.window, self.block, self.causal = window, block, causal
        self.backend, self.dense = backend, dense
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.rotary = Rotary(self.head_dim, rope_base) if rotary else None

    def extra_repr(self) -> str:
        kind = "dense" if self.dense else f"window={self.window}, block={self.block}"
        return f"d_model={self.d_model}, n_heads={self.n_heads}, {kind}, causal={self.causal}"

    # -- cache ------------------------------------------------------------------------------
    def new_cache(
        self,
        batch: int,
        max_length: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> HierarchicalKVCache:
        """An empty decoding cache for this layer, for `batch` rows of up to `max_length`
        tokens (dtype and device default to the projection weights')."""
        if not self.causal:
            raise ValueError("only causal attention decodes token by token (causal=False)")
        weight = self.qkv.weight
        window, block = (max_length, None) if self.dense else (self.window, self.block)
        return HierarchicalKVCache(
            batch,
            self.n_heads,
            self.head_dim,
            window=window,
            block=block,
            max_length=max_length,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
        )

    # -- forward ----------------------------------------------------------------------------
    def project(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x `[B, N, C]` -> q, k, v `[B, H, N, D]` each (q and k rotated)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim)  # [B, N, 3, H, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, D]
        if self.rotary is not None:
            cos, sin = self.rotary(positions)  # [N, D/2] each
            q, k = Rotary.rotate(q, cos, sin), Rotary.rotate(k, cos, sin)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        cache: HierarchicalKVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be [B, N, {self.d_model}], got {list(x.shape)}")
        b, n, c = x.shape
        if cache is not None and n == 1:
            # -- one token: append its key and value, attend over the cache. Fixed shapes
            #    and a device-side position: one compiled step (or graph) serves every
            #    token. Also the first token of an empty cache (the same attention). --
            if positions is None:
                positions = cache.pos.view(1)  # [1], on the device
            q, k, v = self.project(x, positions)
            real = None if key_padding_mask is None else key_padding_mask[:, 0]
            cache.append(k[:, :, 0], v[:, :, 0], real)
            o = cache.attend(q[:, :, 0])  # [B, H, D]
            return self.out(o.reshape(b, 1, c))
        if cache is not None and cache.length:
            raise ValueError(
                f"a filled cache decodes one token at a time, got {n} tokens "
                f"(the cache holds {cache.length})"
            )
        if positions is None:
            positions = torch.arange(n, device=x.device)
        q, k, v = self.project(x, positions)
        o = self._attend(q, k, v, key_padding_mask)  # [B, H, N, D]
        if cache is not None:
            cache.prefill(k, v, key_padding_mask)
        return self.out(o.transpose(1, 2).reshape(b, n, c))  # [B, N, H*D]

    def _attend(self, q, k, v, key_padding_mask):
        if self.dense:
            return dense_attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask)
        return hierarchical_attention(
            q,
            k,
            v,
            window=self.window,
            block=self.block,
            causal=self.causal,
            key_padding_mask=key_padding_mask,
            backend=self.backend,
        )


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full SDPA attention over `[B, H, N, D]` (the baseline WHA is compared with).

    Every query also sees itself, so a padded query never produces NaN. Without padding
    it takes SDPA's `is_causal` path (no N x N mask); the all-real check costs one host
    sync, acceptable on this baseline path.
    """
    if key_padding_mask is not None and bool(key_padding_mask.all()):
        key_padding_mask = None
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    n = q.shape[-2]
    idx = torch.arange(n, device=q.device)
    visible = key_padding_mask[:, None, None, :]  # [B, 1, 1, N]
    if causal:
        visible = visible & (idx[None, :] <= idx[:, None])  # [B, 1, N, N]
    visible = visible | torch.eye(n, dtype=torch.bool, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
