"""The one case table of the attention tests, its id function and its padding helper.

Every kernel test (public op and torch fallback, fused Triton kernels, decoding) draws
its geometries from `CASES`, with deliberately awkward sizes; a file picks a subset
with a plain filter (decoding takes the causal ones), never its own table.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Case(NamedTuple):
    b: int
    h: int
    n: int
    d: int
    window: int
    block: int | None
    causal: bool
    pad: str | None  # a `padding_mask` pattern, or None


CASES = [
    Case(2, 3, 77, 32, 8, 4, True, "end"),
    Case(1, 2, 1, 16, 4, 2, True, None),  # N = 1
    Case(2, 1, 5, 16, 9, 2, True, "end"),  # N < window
    Case(2, 2, 63, 40, 7, 10, False, "middle"),  # N not a multiple of block, odd D
    Case(1, 2, 20, 16, 20, 3, True, None),  # window == N
    Case(1, 1, 20, 16, 64, 3, False, "end"),  # window > N
    Case(2, 2, 50, 64, 6, None, True, "middle"),  # sliding window only
    Case(2, 2, 33, 16, 4, 1, True, "row"),  # block 1, a batch row entirely padding
    Case(2, 2, 33, 16, 4, 1, False, "row"),
    Case(1, 3, 130, 16, 16, 8, True, "end"),  # several query chunks and tiles
    Case(2, 1, 77, 16, 1, 5, True, None),  # window 1: itself plus earlier summaries
    Case(1, 2, 129, 16, 40, 16, False, "middle"),  # wide band: unmasked interior tiles
    Case(1, 2, 97, 24, 48, 5, True, None),  # causal interior tiles, summaries cross splits
    Case(1, 1, 45, 16, 3, 64, False, None),  # block > N: a single summary
    Case(1, 2, 30, 16, 7, 10, True, "middle"),  # block > window
    Case(1, 1, 40, 128, 8, 4, True, "end"),  # the largest head dim
    Case(1, 1, 21, 16, 2**40, 2**40, False, None),  # huge window and block: clamped
]


def case_id(case: Case) -> str:
    """Readable id, e.g. `B2-H3-N77-D32-w8-g4-causal-end`."""
    b, h, n, d, window, block, causal, pad = case
    window = "big" if window >= 2**31 else window
    block = "big" if block is not None and block >= 2**31 else block
    mode = "causal" if causal else "bidir"
    return f"B{b}-H{h}-N{n}-D{d}-w{window}-g{block}-{mode}-{pad or 'nopad'}"


def padding_mask(kind: str | None, b: int, n: int, device=None) -> torch.Tensor | None:
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
    return real if device is None else real.to(device)
