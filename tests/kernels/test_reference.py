"""The dense reference against a second, loop-by-loop reading of the SPEC, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from stretto.kernels.wha.reference import hierarchical_attention_reference
from tests.kernels.attention_cases import padding_mask


def _naive(q, k, v, *, window, block, causal, real, scale):
    """Row by row, straight from the SPEC's sentences (no masks, no broadcasting)."""
    b_, h_, n, d = q.shape
    out = torch.zeros_like(q)
    for b in range(b_):
        # Summaries: block j covers [j*block, min((j+1)*block, N)); mean of unpadded rows.
        blocks = []
        if block is not None:
            for j in range(math.ceil(n / block)):
                first, last = j * block, min((j + 1) * block, n) - 1
                members = [t for t in range(first, last + 1) if real[b][t]]
                if members:
                    blocks.append((first, last, members))
        for h in range(h_):
            for i in range(n):
                keys, values = [], []
                for t in range(n):
                    local = (i - window < t <= i) if causal else abs(i - t) < window
                    if local and real[b][t]:
                        keys.append(k[b, h, t])
                        values.append(v[b, h, t])
                for first, last, members in blocks:
                    before = last <= i - window
                    after = first >= i + window
                    if before or (not causal and after):
                        keys.append(torch.stack([k[b, h, t] for t in members]).mean(0))
                        values.append(torch.stack([v[b, h, t] for t in members]).mean(0))
                if not keys:
                    continue  # sees nothing: zeros
                scores = torch.stack([scale * (q[b, h, i] @ key) for key in keys])
                probs = torch.softmax(scores, 0)
                out[b, h, i] = sum(p * val for p, val in zip(probs, values, strict=True))
    return out


TINY = [
    (1, 1, 1, 4, 1, None, True, None),
    (1, 2, 9, 4, 3, 2, True, None),
    (2, 1, 9, 4, 3, 2, False, "middle"),
    (2, 1, 10, 3, 2, 1, True, "end"),
    (2, 2, 11, 4, 4, 3, False, "row"),
    (1, 1, 6, 4, 10, 2, True, None),  # window >= N
    (1, 1, 13, 4, 1, 5, False, "end"),  # window 1, last block partial
]


def _id(case) -> str:
    b, h, n, d, w, g, causal, pad = case
    return f"B{b}-H{h}-N{n}-D{d}-w{w}-g{g}-{'causal' if causal else 'bidir'}-{pad or 'nopad'}"


@pytest.mark.parametrize("case", TINY, ids=_id)
def test_reference_matches_naive_construction(case):
    b, h, n, d, window, block, causal, pad = case
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    mask = padding_mask(pad, b, n)
    real = mask.tolist() if mask is not None else [[True] * n for _ in range(b)]
    scale = d**-0.5
    got = hierarchical_attention_reference(
        q, k, v, window=window, block=block, causal=causal, key_padding_mask=mask, scale=scale
    )
    want = _naive(q, k, v, window=window, block=block, causal=causal, real=real, scale=scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


GRADCHECK = [
    (1, 1, 9, 3, 3, 2, True, None),
    (2, 1, 8, 2, 2, 3, False, "middle"),
    (2, 1, 7, 2, 2, 1, True, "row"),
]


@pytest.mark.parametrize("case", GRADCHECK, ids=_id)
def test_reference_gradcheck(case):
    b, h, n, d, window, block, causal, pad = case
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = padding_mask(pad, b, n)

    def f(q, k, v):
        return hierarchical_attention_reference(
            q, k, v, window=window, block=block, causal=causal, key_padding_mask=mask
        )

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)
