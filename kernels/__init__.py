"""Attention kernels for Stretto: Triton fast paths, torch fallbacks and references.

`hierarchical_attention` is the op (`[B, H, N, D]` tensors in and out),
`HierarchicalAttention` the module built on it (`[B, N, C]`, projections, rotary
positions, decoding cache), `HierarchicalKVCache` the bounded cache for one-token
decoding. The implementation lives in `stretto.kernels.wha`.
"""

from .rotary import Rotary
from .wha import (
    HierarchicalAttention,
    HierarchicalKVCache,
    dense_attention,
    hierarchical_attention,
    hierarchical_attention_decode,
)

__all__ = [
    "HierarchicalAttention",
    "HierarchicalKVCache",
    "Rotary",
    "dense_attention",
    "hierarchical_attention",
    "hierarchical_attention_decode",
]
