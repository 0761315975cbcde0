"""The network's building blocks: SwiGLU MLP, pre-norm block, block stack, discriminator.

Attention is `stretto.kernels.HierarchicalAttention` (windowed hierarchical attention,
or dense SDPA as the baseline flag of the same module). A `Stack` runs its blocks over a
whole sequence, or, given one cache per block, prefills a prompt and then decodes one
token at a time through the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from stretto.kernels import HierarchicalAttention, HierarchicalKVCache

from .config import ModelConfig

# One epsilon for every dtype (nn.RMSNorm's default is the dtype's own machine epsilon,
# which makes a float64 copy of the model a different function from the float32 one).
NORM_EPS = 1e-6


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up in one projection."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # [B, N, F] each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)).

    With `cond_dim`, both norms are adaptive: a vector `cond` `[B, cond_dim]` gives a
    scale and a shift per norm (`norm(x) * (1 + scale) + shift`), so the condition
    reaches every position of every block through the normalized stream itself.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        config: ModelConfig,
        *,
        causal: bool,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(d_model, eps=NORM_EPS)
        self.attn = HierarchicalAttention(
            d_model,
            n_heads,
            window=config.window,
            block=config.block,
            causal=causal,
            backend=config.attention_backend,
            rope_base=config.rope_base,
            dense=config.attention == "dense",
        )
        self.mlp_norm = nn.RMSNorm(d_model, eps=NORM_EPS)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(config.dropout)
        self.modulation = None if cond_dim is None else nn.Linear(cond_dim, 4 * d_model)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        cache: HierarchicalKVCache | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h_attn = self.attn_norm(x)
        if self.modulation is not None:
            mod = self.modulation(cond)[:, None, :]  # [B, 1, 4C]
            scale1, shift1, scale2, shift2 = mod.chunk(4, dim=-1)  # [B, 1, C] each
            h_attn = h_attn * (1 + scale1) + shift1
        h = self.attn(h_attn, key_padding_mask, cache=cache, positions=positions)
        x = x + self.drop(h)
        h_mlp = self.mlp_norm(x)
        if self.modulation is not None:
            h_mlp = h_mlp * (1 + scale2) + shift2
        return x + self.drop(self.mlp(h_mlp))


class Stack(nn.Module):
    """Blocks, then a final norm; optional conditioning of every block on a vector.

    `forward(x, key_padding_mask, positions=None, cond=None, caches=None, features=None)`:
    x `[B, N, C]`; `positions` `[N]` absolute positions (default: 0..N-1, or each
    cache's length onwards); `cond` `[B, cond_dim]`; `caches` one `HierarchicalKVCache`
    per block (see `HierarchicalAttention.forward`); `features`, when a list, receives
    every block's output.
    """

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        config: ModelConfig,
        *,
        causal: bool,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, config, causal=causal, cond_dim=cond_dim)
            for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d_model, eps=NORM_EPS)

    def new_caches(self, batch: int, max_length: int) -> list[HierarchicalKVCache]:
        """One empty decoding cache per block."""
        return [block.attn.new_cache(batch, max_length) for block in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        caches: list[HierarchicalKVCache] | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, key_padding_mask, positions, None if caches is None else caches[i], cond)
            if features is not None:
                features.append(x)
        return self.norm(x)


class Discriminator(nn.Module):
    """Bidirectional, spectral-normalized; reads token embeddings, one score per sequence.

    Input is a distribution over tokens per position (`[B, N, V]`, one-hot for real
    data) multiplied into its own embedding table.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.disc_d_model
        self.embed = nn.Parameter(torch.randn(config.vocab_size, d) * 0.02)  # [V, C]
        self.stack = Stack(config.disc_layers, d, config.disc_n_heads, 4 * d, config, causal=False)
        for module in self.stack.modules():
            if isinstance(module, nn.Linear):
                spectral_norm(module)
        # no bias: under the hinge loss its gradient is the share of active real margins
        # minus that of fake ones, zero whenever the game is undecided
        self.head = spectral_norm(nn.Linear(d, 1, bias=False))
        self.score_scale = d**-0.5

    def forward(
        self, soft_tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """soft_tokens `[B, N, V]`, mask `[B, N]` bool -> (scores `[B]`, pooled features)."""
        x = soft_tokens.to(self.embed.dtype) @ self.embed  # [B, N, C]
        features: list[torch.Tensor] = []
        h = self.stack(x, mask, features=features)
        pooled = [masked_mean(f, mask) for f in features]  # each [B, C]
        # The pooled features have RMS 1 (final norm), so a unit-spectral-norm head could
        # score sqrt(C) at init and saturate the hinge margins before training starts.
        score = self.head(masked_mean(h, mask)).squeeze(-1) * self.score_scale  # [B]
        return score, pooled


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x `[B, N, C]`, mask `[B, N]` -> `[B, C]` mean over real positions."""
    w = mask.to(x.dtype)[..., None]  # [B, N, 1]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)
