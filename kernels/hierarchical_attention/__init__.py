"""Windowed hierarchical attention: local sliding window plus mean-pooled block summaries."""

from .decode import HierarchicalKVCache, hierarchical_attention_decode
from .interface import hierarchical_attention

__all__ = ["HierarchicalKVCache", "hierarchical_attention", "hierarchical_attention_decode"]
