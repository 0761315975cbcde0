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

if __name__ == "stretto.kernels":
    from .rotary import Rotary
    from .wha import (
        HierarchicalAttention,
        HierarchicalKVCache,
        dense_attention,
        hierarchical_attention,
        hierarchical_attention_decode,
    )
else:
    # This folder imported under another name: a checkout's root on sys.path (as
    # `python -m pytest` puts it there) makes it a top-level `kernels`, a name that
    # transformers imports to probe for the Hub's own `kernels` package. Importing the
    # ops again under that name would register the custom ops a second time, and the
    # duplicate's teardown unregisters the real ones. So it stays an empty module.
    __all__ = []
