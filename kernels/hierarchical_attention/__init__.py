"""Windowed hierarchical attention: local sliding window plus mean-pooled block summaries."""

from .interface import hierarchical_attention

__all__ = ["hierarchical_attention"]
