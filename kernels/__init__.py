"""Attention kernels for Stretto: Triton fast paths, torch fallbacks and references."""

from .hierarchical_attention import hierarchical_attention

__all__ = ["hierarchical_attention"]
