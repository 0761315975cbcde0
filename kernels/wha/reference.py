"""The definition of windowed hierarchical attention, in plain dense PyTorch.

This file is the specification in code (SPEC, "Windowed hierarchical attention"): it
builds the full N x N visibility and is meant for tests, in any dtype including
float64. Fast paths are checked against it; nothing else should call it on long inputs.
"""

from __future__ import annotations

import torch


def local_visibility(
    n: int, window: int, causal: bool, device: torch.device | str | None = None
) -> torch.Tensor:
    """`[N, N]` bool: key t is in query i's local window.

    causal: i - window < t <= i;  non-causal: |i - t| < window.
    """
    i = torch.arange(n, device=device)[:, None]
    t = torch.arange(n, device=device)[None, :]
    if causal:
        return (t <= i) & (t > i - window)
    return (i - t).abs() < window


def summary_visibility(
    n: int, window: int, block: int, causal: bool, device: torch.device | str | None = None
) -> torch.Tensor:
    """`[N, NB]` bool: block j's summary is visible to query i (before padding is applied).

    Block j covers positions [j*block, min((j+1)*block, N)). Its summary is visible iff
    the whole block lies outside i's local window and, when causal, before it.
    """
    nb = -(-n // block)
    i = torch.arange(n, device=device)[:, None]
    first = torch.arange(nb, device=device)[None, :] * block
    last = torch.clamp(first + block, max=n) - 1
    before = last <= i - window
    if causal:
        return before
    return before | (first >= i + window)


def pool_blocks(
    x: torch.Tensor, block: int, key_padding_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each block's unpadded rows: `[B, H, N, D]` -> (`[B, H, NB, D]`, `[B, NB]` bool).

    The bool says the block has at least one unpadded token (otherwise it has no summary
    and its pooled row is zero).
    """
    b, _, n, _ = x.shape
    nb = -(-n // block)
    real = (
        torch.ones(b, n, dtype=torch.bool, device=x.device)
        if key_padding_mask is None
        else key_padding_mask
    )
    member = (
        torch.arange(n, device=x.device)[None, :] // block
        == torch.arange(nb, device=x.device)[:, None]
    )  # [NB, N]
    weights = (member[None] & real[:, None, :]).to(x.dtype)  # [B, NB, N]
    counts = weights.sum(-1)  # [B, NB]
    weights = weights / counts.clamp(min=1)[..., None]
    return torch.einsum("bjn,bhnd->bhjd", weights, x), counts > 0


def hierarchical_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    block: int | None = None,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dense windowed hierarchical attention; q, k, v `[B, H, N, D]` -> `[B, H, N, D]`.

    `key_padding_mask` is `[B, N]` bool, True where the token is real. Computation stays
    in the input dtype (run it in float64 for a trusted answer). Inputs are not
    validated: the public `hierarchical_attention` does that.
    """
    b, _, n, d = q.shape
    scale = d**-0.5 if scale is None else scale
    real = (
        torch.ones(b, n, dtype=torch.bool, device=q.device)
        if key_padding_mask is None
        else key_padding_mask
    )

    visible = local_visibility(n, window, causal, q.device)[None] & real[:, None, :]  # [B, N, N]
    scores = scale * (q @ k.transpose(-1, -2))  # [B, H, N, N]
    values = v
    if block is not None:
        k_sum, has_summary = pool_blocks(k, block, key_padding_mask)  # [B, H, NB, D], [B, NB]
        v_sum, _ = pool_blocks(v, block, key_padding_mask)
        sees_summary = summary_visibility(n, window, block, causal, q.device)[None]  # [1, N, NB]
        sees_summary = sees_summary & has_summary[:, None, :]  # [B, N, NB]
        visible = torch.cat([visible, sees_summary], dim=-1)  # [B, N, N + NB]
        scores = torch.cat([scores, scale * (q @ k_sum.transpose(-1, -2))], dim=-1)
        values = torch.cat([v, v_sum], dim=-2)  # [B, H, N + NB, D]

    visible = visible[:, None]  # [B, 1, N, keys]
    sees_any = visible.any(-1, keepdim=True)  # [B, 1, N, 1]
    scores = scores.masked_fill(~visible, float("-inf"))
    # A row that sees nothing gets finite scores so softmax stays NaN-free, then is zeroed.
    scores = torch.where(sees_any, scores, torch.zeros((), dtype=scores.dtype, device=q.device))
    probs = torch.softmax(scores, dim=-1) * sees_any
    return probs @ values
