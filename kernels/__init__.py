"""Attention kernels for Stretto: Triton fast paths, torch fallbacks and references."""
