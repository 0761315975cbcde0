"""The public op: input validation, backend choice, summary pooling."""

from __future__ import annotations

import math
import numbers
import os

import torch

from . import op
from .reference import hierarchical_attention_reference

BACKENDS = ("auto", "torch", "triton", "reference")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# What the fused kernels cover (issue 4); the torch fallback has no such limits.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (16, 128)


def hierarchical_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    block: int | None = None,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Windowed hierarchical attention: a sliding window plus mean-pooled block summaries.

    Args:
        q, k, v: `[B, H, N, D]` (the layout of `scaled_dot_product_attention`), one
            floating dtype (float16, bfloat16, float32, float64), one device, N >= 1.
        window: >= 1. Local keys of query i are the positions t with
            causal: `i - window < t <= i`;  non-causal: `|i - t| < window`.
        block: >= 1, or None for plain sliding-window attention. Block j covers
            `[j*block, min((j+1)*block, N))`; its summary key/value is the mean of its
            unpadded keys/values (a block with no unpadded token has none). Summary j is
            visible to query i iff the whole block lies outside i's window and, when
            causal, before it.
        causal: see `window`.
        key_padding_mask: `[B, N]` bool, True where the token is real; padded keys are
            never visible (padded queries still get an output).
        scale: score multiplier, default `D ** -0.5`.
        backend: "auto" (Triton for CUDA tensors when it imports and covers the dtype
            and head dim, i.e. float16/bfloat16/float32 and D in 16..128; else "torch"),
            "torch" (vectorized chunked fallback, memory O(N (window + 32 + N/block))),
            "triton" (fused kernels; CUDA, or CPU under TRITON_INTERPRET=1), or
            "reference" (dense N x N definition, for tests).

    Returns:
        `[B, H, N, D]` in the input dtype:
        `o_i = softmax(scale * q_i . [visible keys ; visible summaries]) @ [values ; summaries]`,
        one softmax over the union; a query that sees nothing gets zeros. Differentiable
        in q, k and v (summary gradients flow back to k and v through the pooling).

    Visibility, causal, N=12, window=3, block=4 (`x` local key, `s` the summary of the
    block above it, `.` hidden)::

              keys 0..11          summaries
              0123 4567 89ab      b0 b1 b2
        q0    x... .... ....      .  .  .
        q3    .xxx .... ....      .  .  .
        q6    .... xxx. ....      s  .  .      block 0 ends at 3 <= 6 - 3
        q9    .... ...x xx..      s  .  .      block 1 ends at 7 > 9 - 3: still in reach
        q11   .... .... .xxx      s  s  .      block 1 ends at 7 <= 11 - 3

    Raises:
        ValueError: wrong rank, shapes, dtype, device, window/block < 1, bad mask,
            unknown backend.
        NotImplementedError: a combination a backend does not support (named).
    """
    _validate(q, k, v, window, block, causal, key_padding_mask, scale, backend)
    window = int(window)
    block = None if block is None else int(block)
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else float(scale)
    if backend == "reference":
        return hierarchical_attention_reference(
            q,
            k,
            v,
            window=window,
            block=block,
            causal=causal,
            key_padding_mask=key_padding_mask,
            scale=scale,
        )
    if backend == "auto":
        backend = choose_backend(q.device.type, q.dtype, q.shape[-1])
    if backend == "triton":
        _check_triton(q)
    return op.attention_core(
        q,
        k,
        v,
        key_padding_mask,
        window=window,
        block=block,
        causal=causal,
        scale=scale,
        backend=backend,
    )


def choose_backend(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """What `backend="auto"` runs: "triton" on CUDA where the fused kernels cover the
    dtype and head dim, "torch" everywhere else (never an error)."""
    lo, hi = TRITON_HEAD_DIMS
    if (
        device_type == "cuda"
        and dtype in TRITON_DTYPES
        and lo <= head_dim <= hi
        and op.fused_import_error() is None
    ):
        return "triton"
    return "torch"


def _is_int(x) -> bool:
    """Python or numpy integers (anything with __index__), but not bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_window_block(window, block) -> None:
    """Raise ValueError unless `window` is an int >= 1 and `block` None or an int >= 1
    (bools are not ints)."""
    if not _is_int(window) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if block is not None and (not _is_int(block) or block < 1):
        raise ValueError(f"block must be None or an int >= 1, got {block!r}")


def _validate(q, k, v, window, block, causal, key_padding_mask, scale, backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name} must have rank 4 [B, H, N, D], got rank {x.dim()} "
                f"with shape {tuple(x.shape)}"
            )
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must have the same shape [B, H, N, D], got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.numel() == 0:
        raise ValueError(f"q, k, v must be non-empty, got shape {tuple(q.shape)}")
    if q.dtype not in DTYPES:
        raise ValueError(f"q must be one of {DTYPES}, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    check_window_block(window, block)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
    ):
        raise ValueError(f"scale must be None or a finite number, got {scale!r}")
    if key_padding_mask is not None:
        b, _, n, _ = q.shape
        if not isinstance(key_padding_mask, torch.Tensor):
            raise ValueError(
                f"key_padding_mask must be a bool tensor, got {type(key_padding_mask).__name__}"
            )
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be torch.bool (True = real token), "
                f"got {key_padding_mask.dtype}"
            )
        if tuple(key_padding_mask.shape) != (b, n):
            raise ValueError(
                f"key_padding_mask must have shape [B, N] = {(b, n)}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(
                f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}"
            )


@torch.compiler.assume_constant_result
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_triton(q: torch.Tensor) -> None:
    reason = op.fused_import_error()
    if reason is not None:
        raise NotImplementedError(
            f"backend='triton' is unavailable ({reason}); use backend='torch'"
        )
    if not q.is_cuda and not _interpreting():
        raise NotImplementedError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}"
        )
    if q.dtype not in TRITON_DTYPES:
        raise NotImplementedError(
            f"backend='triton' supports {TRITON_DTYPES}, got {q.dtype}; use backend='torch'"
        )
    lo, hi = TRITON_HEAD_DIMS
    if not lo <= q.shape[-1] <= hi:
        raise NotImplementedError(
            f"backend='triton' supports head dims {lo}..{hi}, got D={q.shape[-1]}; "
            "use backend='torch'"
        )
