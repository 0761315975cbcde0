"""The dispatch/autograd layer: `stretto::wha_forward` and `stretto::wha_backward`.

Both backends (the fused Triton launchers in `fused.py` and the chunked torch fallback
in `chunked.py`) expose the same pair of functions,
`forward -> (o, lse, k_sum, v_sum, inv_count)` and `backward -> (dq, dk, dv)`, and sit
behind these two custom ops. Why the fallback goes through the op too, rather than
plain autograd over torch ops: its backward then recomputes scores from the saved
log-sum-exp instead of autograd keeping every chunk's probabilities alive, so training
memory keeps the forward's linear bound; and the op, its fake kernels and its autograd
formula are exercised by every CPU test, not only where a GPU is present.

The ops cover the whole op: pooling the block summaries (returned, and saved for the
backward), the attention over `[local keys ; summaries]`, and a backward whose dk, dv
include pooling's gradient: no backend materialises a padded copy of k and v for the
summaries, nor makes a second pass over dk, dv for them. The fake kernels give
shapes to `torch.compile`, so `torch.compile(fullgraph=True)` traces through without
graph breaks.

This module does not use `from __future__ import annotations`: `custom_op` reads the
schema from the annotations.
"""

# ruff: noqa: UP045  (custom_op's schema inference across torch 2.5..2.13 reliably
# understands typing.Optional; `X | None` is only recognised by newer releases)

import importlib
from typing import Optional

import torch
from torch import Tensor

from . import chunked


def fused_module():
    """The fused Triton launchers, imported on first use (triton may be missing)."""
    return importlib.import_module("stretto.kernels.wha.fused")


# Evaluated once at trace time under torch.compile (an import is not traceable).
@torch.compiler.assume_constant_result
def fused_import_error() -> Optional[str]:
    """None when the Triton path can be imported, else the reason it cannot."""
    try:
        fused_module()
    except ImportError as err:  # no triton in this environment
        return f"{type(err).__name__}: {err}"
    return None


def _impl(backend: str):
    if backend == "torch":
        return chunked.chunked_forward, chunked.chunked_backward
    mod = fused_module()
    return mod.fused_forward, mod.fused_backward


def _block(block: int) -> Optional[int]:
    return block if block > 0 else None  # 0 encodes "no summaries" in the op schema


@torch.library.custom_op("stretto::wha_forward", mutates_args=())
def wha_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_real: Optional[Tensor],
    window: int,
    block: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(o `[B, H, N, D]`, lse `[B, H, N]`, k_sum, v_sum `[B, H, NB, D]`, inv_count `[B, NB]`).

    lse and inv_count are float32 (float64 for float64 inputs); block 0 means no
    summaries (then k_sum, v_sum, inv_count are empty).
    """
    forward, _ = _impl(backend)
    return forward(
        q, k, v, key_real, window=window, block=_block(block), causal=causal, scale=scale
    )


def _num_blocks(n: int, block: int) -> int:
    return 0 if block <= 0 else -(-n // min(block, n))


@wha_forward.register_fake
def _wha_forward_fake(q, k, v, key_real, window, block, causal, scale, backend):
    # Like the real launchers: fresh contiguous outputs (not empty_like, which would
    # copy an input's strides).
    b, h, n, d = q.shape
    nb = _num_blocks(n, block)
    stats = chunked.lse_dtype(q.dtype)
    return (
        q.new_empty(b, h, n, d),
        q.new_empty(b, h, n, dtype=stats),
        k.new_empty(b, h, nb, d),
        v.new_empty(b, h, nb, d),
        q.new_empty(b, nb, dtype=stats),
    )


@torch.library.custom_op("stretto::wha_backward", mutates_args=())
def wha_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_real: Optional[Tensor],
    o: Tensor,
    lse: Tensor,
    k_sum: Tensor,
    v_sum: Tensor,
    inv_count: Tensor,
    window: int,
    block: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), dk and dv including the gradient through the summaries' pooling."""
    _, backward = _impl(backend)
    geometry = dict(window=window, block=_block(block), causal=causal, scale=scale)
    return backward(do, q, k, v, key_real, o, lse, k_sum, v_sum, inv_count, **geometry)


@wha_backward.register_fake
def _wha_backward_fake(
    do, q, k, v, key_real, o, lse, k_sum, v_sum, inv_count, window, block, causal, scale, backend
):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_real, window, block, causal, scale, backend = inputs
    o, lse, k_sum, v_sum, inv_count = output
    ctx.mark_non_differentiable(lse, k_sum, v_sum, inv_count)
    ctx.save_for_backward(q, k, v, key_real, o, lse, k_sum, v_sum, inv_count)
    ctx.config = (window, block, causal, scale, backend)


def _backward(ctx, do, _dlse, _dk_sum, _dv_sum, _dinv):
    # Upstream gradients may be non-contiguous, even stride-0 (out.sum().backward()).
    # The saved tensors, then the config, are wha_backward's arguments after do, in order.
    dq, dk, dv = wha_backward(do.contiguous(), *ctx.saved_tensors, *ctx.config)
    return dq, dk, dv, None, None, None, None, None, None


wha_forward.register_autograd(_backward, setup_context=_setup_context)


def attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_real: Optional[Tensor],
    *,
    window: int,
    block: Optional[int],
    causal: bool,
    scale: float,
    backend: str,
) -> Tensor:
    """Differentiable attention (pooling included) through the custom op."""
    o, *_ = wha_forward(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        None if key_real is None else key_real.contiguous(),
        int(window),
        0 if block is None else int(block),
        bool(causal),
        float(scale),
        backend,
    )
    return o
