"""Rotary position embeddings at explicit absolute positions."""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """cos/sin tables for absolute positions; `rotate` rotates pairs (x_i, x_{i + D/2}).

    Positions are passed explicitly, so a decode step at position p rotates its single
    query and key exactly as the full forward does at row p.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
        self.head_dim, self.base = head_dim, float(base)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `[N]` (int) -> cos, sin `[N, D/2]` in float32."""
        # Frequencies are rebuilt in float32 on every call rather than kept as a buffer,
        # which `model.to(torch.bfloat16)` would round to 3 significant digits.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device)
        inv_freq = self.base ** (-exponents / self.head_dim)  # [D/2]
        angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [N, D/2]
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x `[B, H, N, D]`, cos/sin `[N, D/2]` -> rotated x, same dtype."""
        x1, x2 = x.float().chunk(2, dim=-1)  # [B, H, N, D/2] each
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, H, N, D]
        return out.to(x.dtype)
