"""Windowed hierarchical attention: local sliding window plus mean-pooled block summaries.

`reference.py` is the definition in dense PyTorch; `chunked.py` the vectorized torch
fallback; `fused.py` the Triton kernels; `op.py` the custom ops and autograd over both;
`interface.py` the public function; `decode.py` the bounded decoding cache; `module.py`
the `nn.Module`.
"""

from .decode import HierarchicalKVCache, hierarchical_attention_decode
from .interface import hierarchical_attention
from .module import HierarchicalAttention, dense_attention

__all__ = [
    "HierarchicalAttention",
    "HierarchicalKVCache",
    "dense_attention",
    "hierarchical_attention",
    "hierarchical_attention_decode",
]
