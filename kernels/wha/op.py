"""The dispatch/autograd layer: `stretto::wha_forward` and `stretto::wha_backward`.

Both backends (the fused Triton launchers in `fused.py` and the chunked torch fallback
in `chunked.py`) expose the same pair of functions, `forward -> (o, lse)` and
`backward -> (dq, dk, dv, dk_sum, dv_sum)`, and sit behind these two custom ops. Why the
fallback goes through the op too, rather than plain autograd over torch ops: its
backward then recomputes scores from the saved log-sum-exp instead of autograd keeping
every chunk's probabilities alive, so training memory keeps the forward's linear bound;
and the op, its fake kernels and its autograd formula are exercised by every CPU test,
not only where a GPU is present.

The ops cover the attention over `[local keys ; given summaries]` only; pooling the
summaries stays outside in plain (traceable, differentiable) torch ops, so autograd
routes dk_sum/dv_sum back to k and v. The fake kernels give shapes to `torch.compile`,
so `torch.compile(fullgraph=True)` traces through without graph breaks.

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

BACKENDS = ("torch", "triton")


def fused_module():
    """The fused Triton launchers, imported on first use (triton may be missing)."""
    return importlib.import_module("stretto.kernels.wha.fused")


# Evaluated once at trace time under torch.compile (an import is not traceable).
@torch.compiler.assume_constant_result
def fused_import_error() -> Optional[str]:
    """None when the Triton path can be imported, else the reason it cannot."""
    try:
        fused_module()
    except ImportError as err:  # no triton, or fused.py not there yet
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
    k_sum: Optional[Tensor],
    v_sum: Optional[Tensor],
    key_real: Optional[Tensor],
    summary_real: Optional[Tensor],
    window: int,
    block: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(o `[B, H, N, D]`, lse `[B, H, N]` float32 (float64 for float64 inputs)).

    block 0 means no summaries.
    """
    forward, _ = _impl(backend)
    return forward(
        q,
        k,
        v,
        k_sum,
        v_sum,
        key_real,
        summary_real,
        window=window,
        block=_block(block),
        causal=causal,
        scale=scale,
    )


@wha_forward.register_fake
def _wha_forward_fake(
    q, k, v, k_sum, v_sum, key_real, summary_real, window, block, causal, scale, backend
):
    b, h, n, _ = q.shape
    return torch.empty_like(q), q.new_empty(b, h, n, dtype=chunked.lse_dtype(q.dtype))


@torch.library.custom_op("stretto::wha_backward", mutates_args=())
def wha_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_sum: Optional[Tensor],
    v_sum: Optional[Tensor],
    key_real: Optional[Tensor],
    summary_real: Optional[Tensor],
    o: Tensor,
    lse: Tensor,
    window: int,
    block: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dk_sum, dv_sum); without summaries the last two are `[B, H, 0, D]`."""
    _, backward = _impl(backend)
    dq, dk, dv, dk_sum, dv_sum = backward(
        do,
        q,
        k,
        v,
        k_sum,
        v_sum,
        key_real,
        summary_real,
        o,
        lse,
        window=window,
        block=_block(block),
        causal=causal,
        scale=scale,
    )
    if dk_sum is None:  # custom ops cannot return None
        dk_sum = k.new_empty(k.shape[0], k.shape[1], 0, k.shape[3])
        dv_sum = v.new_empty(v.shape[0], v.shape[1], 0, v.shape[3])
    return dq, dk, dv, dk_sum, dv_sum


@wha_backward.register_fake
def _wha_backward_fake(
    do, q, k, v, k_sum, v_sum, key_real, summary_real, o, lse, window, block, causal, scale, backend
):
    if k_sum is None:
        dk_sum = k.new_empty(k.shape[0], k.shape[1], 0, k.shape[3])
        dv_sum = v.new_empty(v.shape[0], v.shape[1], 0, v.shape[3])
    else:
        dk_sum, dv_sum = torch.empty_like(k_sum), torch.empty_like(v_sum)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dk_sum, dv_sum


def _setup_context(ctx, inputs, output):
    q, k, v, k_sum, v_sum, key_real, summary_real, window, block, causal, scale, backend = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, k_sum, v_sum, key_real, summary_real, o, lse)
    ctx.config = (window, block, causal, scale, backend)
    ctx.has_summaries = k_sum is not None


def _backward(ctx, do, _dlse):
    q, k, v, k_sum, v_sum, key_real, summary_real, o, lse = ctx.saved_tensors
    window, block, causal, scale, backend = ctx.config
    # Upstream gradients may be non-contiguous, even stride-0 (out.sum().backward()).
    dq, dk, dv, dk_sum, dv_sum = wha_backward(
        do.contiguous(),
        q,
        k,
        v,
        k_sum,
        v_sum,
        key_real,
        summary_real,
        o,
        lse,
        window,
        block,
        causal,
        scale,
        backend,
    )
    if not ctx.has_summaries:
        dk_sum = dv_sum = None
    return dq, dk, dv, dk_sum, dv_sum, None, None, None, None, None, None, None


wha_forward.register_autograd(_backward, setup_context=_setup_context)


def attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_sum: Optional[Tensor],
    v_sum: Optional[Tensor],
    key_real: Optional[Tensor],
    summary_real: Optional[Tensor],
    *,
    window: int,
    block: Optional[int],
    causal: bool,
    scale: float,
    backend: str,
) -> Tensor:
    """Differentiable attention over [local keys ; summaries] through the custom op."""

    def c(x):
        return None if x is None else x.contiguous()

    o, _ = wha_forward(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        c(k_sum),
        c(v_sum),
        c(key_real),
        c(summary_real),
        int(window),
        0 if block is None else int(block),
        bool(causal),
        float(scale),
        backend,
    )
    return o
