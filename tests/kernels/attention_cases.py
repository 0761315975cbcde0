"""Padding patterns shared by the attention test tables."""

from __future__ import annotations

import torch


def padding_mask(kind: str | None, b: int, n: int) -> torch.Tensor | None:
    """`[B, N]` bool (True = real) for a named padding pattern, or None for no padding.

    end: the last row's final third is padding; middle: a run in the middle of every
    row plus the first token of row 0; row: row 0 entirely padding and the last row's
    final two tokens.
    """
    if kind is None:
        return None
    real = torch.ones(b, n, dtype=torch.bool)
    if kind == "end":
        real[-1, n - max(1, n // 3) :] = False
    elif kind == "middle":
        real[:, n // 3 : n // 3 + max(1, n // 4)] = False
        real[0, 0] = False
    elif kind == "row":
        real[0] = False
        real[-1, -2:] = False
    else:
        raise ValueError(f"unknown padding pattern {kind!r}")
    return real
