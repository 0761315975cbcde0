"""Attention kernels for Stretto: Triton fast paths, torch fallbacks and references."""

from .hierarchical_attention import (
    HierarchicalKVCache,
    hierarchical_attention,
    hierarchical_attention_decode,
)

__all__ = ["HierarchicalKVCache", "hierarchical_attention", "hierarchical_attention_decode"]
