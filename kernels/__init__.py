"""Attention kernels for Stretto: Triton fast paths, torch fallbacks and references.

`hierarchical_attention` is the op (`[B, H, N, D]` tensors in and out),
`HierarchicalAttention` the module built on it (`[B, N, C]`, projections, rotary
positions, decoding cache), `HierarchicalKVCache` the bounded cache for one-token
decoding. The implementation lives in `stretto.kernels.wha`.
"""

__all__ = [
    "HierarchicalAttention",
    "HierarchicalKVCache",
    "Rotary",
    "dense_attention",
    "hierarchical_attention",
    "hierarchical_attention_decode",
]

if __name__ != "stretto.kernels":
    # This folder imported as a top-level `kernels` (the checkout's root is on sys.path):
    # the name goes to the installed package of that name, if any (_stretto_checkout.py).
    from _stretto_checkout import claim_bare_name

    claim_bare_name(__name__, globals())
else:
    from .rotary import Rotary
    from .wha import (
        HierarchicalAttention,
        HierarchicalKVCache,
        dense_attention,
        hierarchical_attention,
        hierarchical_attention_decode,
    )
