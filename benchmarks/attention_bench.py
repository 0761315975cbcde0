"""Windowed hierarchical attention: time and peak memory against other ways to get it.

Providers, all on the shape table of `benchmarks.shapes` (H 8, D 64, window 256,
block 64, causal; bf16 on CUDA, float32 on CPU):

- stretto-triton: `hierarchical_attention(..., backend="triton")` (CUDA only: on a CPU
  Triton runs only under its interpreter, which is not something to time);
- stretto-torch: the same op with the chunked torch fallback;
- flex: FlexAttention with the same mask, the block summaries concatenated as extra
  keys (`[k ; k_sum]`) and a mask_mod encoding local window + visible summaries
  (on CPU forward only: FlexAttention has no CPU backward);
- sdpa-causal: dense causal SDPA (a different, larger computation: the usual baseline);
- sdpa-dense-mask: SDPA over `[k ; k_sum]` with a dense boolean mask, the same function;
- flash-attn: `flash_attn_func(..., causal=True, window_size=(window - 1, 0))`, local
  window only, when importable (a skipped row otherwise).

Masks (the flex BlockMask, the dense boolean mask) are built once per shape, outside the
timed region; pooling the summaries is inside it for every provider that needs them.

`tflops` counts 4·D FLOPs per visible (query, key) pair of WHA for the forward and
14·D for forward+backward (the backward recomputes the scores: 5 matmuls), whatever
the provider actually computes, so it reads as useful work per second. On CUDA each
row's `extra` also has the roofline floor: bytes of q, k, v, o (forward; plus do, dq,
dk, dv and the re-reads of q, k, v, o for the backward) over the measured copy
bandwidth, and those FLOPs over a measured bf16 matmul rate; `roofline_fraction` is
floor / median (1.0 = at the floor).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import shapes
from benchmarks.timing import bench_cpu, bench_cuda, cuda_peak_memory_mb, synchronize

SUITE = "attention"
PROVIDERS = (
    "stretto-triton",
    "stretto-torch",
    "flex",
    "sdpa-causal",
    "sdpa-dense-mask",
    "flash-attn",
)
MODES = ("fwd", "fwd+bwd")


class _Skip(Exception):
    """The provider cannot run here; the row says why."""


# -- problem size -------------------------------------------------------------------------


def visible_pairs(n: int, window: int, block: int | None, causal: bool) -> int:
    """Number of visible (query, key-or-summary) pairs of one head, no padding."""
    import torch

    from stretto.kernels.wha import reference as ref

    i = torch.arange(n, dtype=torch.int64)
    if causal:
        local = torch.clamp(i + 1, max=window)
    else:
        local = torch.clamp(i + window, max=n) - torch.clamp(i - window + 1, min=0)
    total = int(local.sum())
    if block is not None:
        total += int(ref.summary_visibility(n, window, block, causal).sum())
    return total


def _pool(x, block: int):
    """The op's block summaries (its reference pooling): `[B, H, N, D]` -> `[B, H, NB, D]`
    (no padding in this suite)."""
    from stretto.kernels.wha import reference as ref

    return ref.pool_blocks(x, block, None)[0]


def _summary_visible(n: int, window: int, block: int, causal: bool, device):
    from stretto.kernels.wha import reference as ref

    return ref.summary_visibility(n, window, block, causal, device)  # [N, NB]


# -- providers: each returns attend(q, k, v) -> o -------------------------------------------


def _stretto(backend: str, shape: shapes.AttentionShape, device: str):
    from stretto.kernels import hierarchical_attention

    if backend == "triton" and not device.startswith("cuda"):
        raise _Skip("Triton runs on a CPU only under its interpreter, which is not timed")

    def attend(q, k, v):
        return hierarchical_attention(
            q, k, v, window=shape.window, block=shape.block, causal=shape.causal, backend=backend
        )

    return attend


def _flex(shape: shapes.AttentionShape, device: str, mode: str):
    import torch

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        raise _Skip(f"FlexAttention not importable: {exc}") from exc
    if mode == "fwd+bwd" and not device.startswith("cuda"):
        raise _Skip("FlexAttention has no CPU backward (torch 2.13)")
    n, window, block, causal = shape.seq_len, shape.window, shape.block, shape.causal

    def mask_mod(b, h, q_idx, kv_idx):
        if causal:
            local = (kv_idx <= q_idx) & (kv_idx > q_idx - window)
        else:
            local = (q_idx - kv_idx).abs() < window
        local = local & (kv_idx < n)
        if block is None:
            return local
        j = kv_idx - n  # summary index of the extra keys
        last = ((j + 1) * block).clamp(max=n) - 1
        summary = (kv_idx >= n) & (last <= q_idx - window)
        if not causal:
            summary = summary | ((kv_idx >= n) & (j * block >= q_idx + window))
        return local | summary

    n_keys = n + (0 if block is None else -(-n // block))
    block_mask = create_block_mask(mask_mod, None, None, n, n_keys, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def attend(q, k, v):
        if block is not None:
            k = torch.cat([k, _pool(k, block)], dim=2)  # [B, H, N + NB, D]
            v = torch.cat([v, _pool(v, block)], dim=2)
        return compiled(q, k, v, block_mask=block_mask)

    return attend


def _sdpa_causal(shape, device):
    import torch.nn.functional as F

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return attend


def _sdpa_dense_mask(shape: shapes.AttentionShape, device: str):
    import torch
    import torch.nn.functional as F

    from stretto.kernels.wha import reference as ref

    n, window, block = shape.seq_len, shape.window, shape.block
    mask = ref.local_visibility(n, window, shape.causal, device)  # [N, N]
    if block is not None:
        mask = torch.cat([mask, _summary_visible(n, window, block, shape.causal, device)], -1)

    def attend(q, k, v):
        if block is not None:
            k = torch.cat([k, _pool(k, block)], dim=2)  # [B, H, N + NB, D]
            v = torch.cat([v, _pool(v, block)], dim=2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return attend


def _flash_attn(shape: shapes.AttentionShape, device: str):
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:
        raise _Skip(f"flash-attn not importable ({exc})") from exc
    if not device.startswith("cuda"):
        raise _Skip("flash-attn needs CUDA")
    if not shape.causal:
        raise _Skip("compared in the causal setting only")

    def attend(q, k, v):
        # flash-attn takes [B, N, H, D]; window_size=(left, right) counts keys besides i
        o = flash_attn_func(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            causal=True,
            window_size=(shape.window - 1, 0),
        )
        return o.transpose(1, 2)

    return attend


def _provider(name: str, shape, device: str, mode: str):
    if name == "stretto-triton":
        return _stretto("triton", shape, device)
    if name == "stretto-torch":
        return _stretto("torch", shape, device)
    if name == "flex":
        return _flex(shape, device, mode)
    if name == "sdpa-causal":
        return _sdpa_causal(shape, device)
    if name == "sdpa-dense-mask":
        return _sdpa_dense_mask(shape, device)
    if name == "flash-attn":
        return _flash_attn(shape, device)
    raise ValueError(f"unknown provider {name!r}")


# -- roofline ceilings (CUDA) --------------------------------------------------------------


def measure_ceilings() -> dict[str, float]:
    """Copy bandwidth (bytes/s, read + write) and bf16 matmul rate (FLOP/s), measured here."""
    import torch
    from triton.testing import do_bench

    def copy_rate() -> float:
        src = torch.randn(256 * 1024 * 1024 // 4, device="cuda")  # 1 GiB
        dst = torch.empty_like(src)
        copy_ms = do_bench(lambda: dst.copy_(src), quantiles=[0.5])
        return 2 * src.numel() * src.element_size() / (copy_ms * 1e-3)

    def matmul_rate(m: int = 8192) -> float:
        a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        mm_ms = do_bench(lambda: a @ b, quantiles=[0.5])
        return 2 * m**3 / (mm_ms * 1e-3)

    bandwidth = copy_rate()
    torch.cuda.empty_cache()
    return {"bandwidth_Bps": bandwidth, "bf16_flops": matmul_rate()}


# -- the suite ---------------------------------------------------------------------------


def _inputs(shape: shapes.AttentionShape, dtype, device: str, grad: bool):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    size = (shape.batch, shape.heads, shape.seq_len, shape.head_dim)
    q, k, v, do = (
        torch.randn(size, generator=gen).to(device=device, dtype=dtype) for _ in range(4)
    )
    if grad:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    return q, k, v, do


def _case(attend: Callable, mode: str, q, k, v, do) -> Callable[[], Any]:
    import torch

    if mode == "fwd":

        def run():
            with torch.no_grad():
                return attend(q, k, v)

    else:

        def run():
            attend(q, k, v).backward(do)

    return run


def _row(shape, provider: str, mode: str, dtype: str, **fields) -> dict[str, Any]:
    row = {
        "suite": SUITE,
        "provider": provider,
        "mode": mode,
        "shape": shape.label,
        "seq_len": shape.seq_len,
        "dtype": dtype,
    }
    row.update(fields)
    return row


def _work(shape, mode: str, elt: int) -> tuple[float, float]:
    """(FLOPs on visible pairs, roofline bytes) of one call."""
    heads = shape.batch * shape.heads
    pairs = visible_pairs(shape.seq_len, shape.window, shape.block, shape.causal) * heads
    per_pair = 4 if mode == "fwd" else 14
    tensor_bytes = heads * shape.seq_len * shape.head_dim * elt
    n_tensors = 4 if mode == "fwd" else 4 + 5 + 3  # fwd: q k v o; bwd: q k v o do, dq dk dv
    return per_pair * shape.head_dim * pairs, n_tensors * tensor_bytes


def _roofline(nbytes: float, flops: float, median_ms: float, ceilings) -> dict[str, Any]:
    memory_s = nbytes / ceilings["bandwidth_Bps"]
    compute_s = flops / ceilings["bf16_flops"]
    floor_ms = max(memory_s, compute_s) * 1e3
    return {
        "roofline_floor_ms": floor_ms,
        "roofline_fraction": floor_ms / median_ms,
        "roofline_bound": "memory" if memory_s > compute_s else "compute",
        "measured_bandwidth_GBps": ceilings["bandwidth_Bps"] / 1e9,
        "measured_bf16_tflops": ceilings["bf16_flops"] / 1e12,
    }


def run(*, quick: bool, device: str) -> list[dict]:
    """Rows for every (shape, mode, provider); what cannot run is a skipped row."""
    import torch

    dtype_name = shapes.dtype_name(device)
    dtype = getattr(torch, dtype_name)
    cuda = device.startswith("cuda")
    ceilings = measure_ceilings() if cuda else None
    rows: list[dict] = []
    for shape in shapes.attention_shapes(device, quick=quick, scaling=True):
        for mode in MODES:
            q, k, v, do = _inputs(shape, dtype, device, grad=(mode == "fwd+bwd"))
            flops, nbytes = _work(shape, mode, torch.finfo(dtype).bits // 8)
            cases: dict[str, Callable[[], Any]] = {}
            for provider in PROVIDERS:
                try:
                    case = _case(_provider(provider, shape, device, mode), mode, q, k, v, do)
                    case()  # compile / autotune / warm up, and catch failures per provider
                    synchronize(device)
                    cases[provider] = case
                except _Skip as exc:
                    rows.append(_row(shape, provider, mode, dtype_name, status=f"skipped: {exc}"))
                except torch.cuda.OutOfMemoryError as exc:
                    torch.cuda.empty_cache()
                    status = f"skipped: out of memory ({exc})"[:300]
                    rows.append(_row(shape, provider, mode, dtype_name, status=status))
                except Exception as exc:
                    traceback.print_exc()
                    third_party = provider in ("flex", "flash-attn")
                    kind = "skipped" if third_party else "error"
                    status = f"{kind}: {type(exc).__name__}: {exc}"[:300]
                    rows.append(_row(shape, provider, mode, dtype_name, status=status))
            grads = [q, k, v] if mode == "fwd+bwd" else None
            if cuda:
                timings = {p: bench_cuda(c, grad_to_none=grads) for p, c in cases.items()}
            else:
                timings = bench_cpu(
                    cases, warmup=0, repeats=3 if quick else 7, budget_s=20 if quick else 60
                )
            for provider, t in timings.items():
                extra: dict[str, Any] = {"flops_counted": "WHA visible pairs"}
                peak = None
                if cuda:
                    mem = cuda_peak_memory_mb(cases[provider])
                    peak = mem["peak_mem_mb"]
                    extra["peak_total_mb"] = mem["peak_total_mb"]
                    extra.update(_roofline(nbytes, flops, t.median_ms, ceilings))
                else:
                    extra["peak_mem_note"] = "CPU peak memory: see the memory suite"
                tflops = flops / (t.median_ms * 1e-3) / 1e12 if t.median_ms > 0 else math.nan
                fields = dict(peak_mem_mb=peak, tflops=tflops, status="ok", extra=extra)
                rows.append(_row(shape, provider, mode, dtype_name, **t.as_row(), **fields))
            del q, k, v, do, cases
            if cuda:
                torch.cuda.empty_cache()
    return rows
