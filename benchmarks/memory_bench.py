"""Peak memory against sequence length: WHA against dense attention, kernel and model.

Attention providers (fwd+bwd, shape table of `benchmarks.shapes`): stretto-triton
(CUDA), stretto-torch (the chunked fallback), sdpa-causal (SDPA dense causal), and
sdpa-dense-band: SDPA with a dense boolean mask of the same local window, no summaries
(the mask is N x N, so its memory is quadratic; the attention suite's sdpa-dense-mask
adds the summaries).
Model providers: `MusicModel` loss forward+backward with `attention="wha"` and with
`attention="dense"`. What is not importable is reported as a skipped row.

CUDA: `max_memory_allocated` above the inputs, in process. CPU: peak RSS of a fresh
child process per case, above its size before the case. Each provider's rows also
carry `mem_growth_exponent`, the slope of log(memory) against log(N) over its measured
lengths (about 1 for linear growth, about 2 for quadratic). `seq_lens` (`--seq-len`)
replaces the sweep of both parts with the given lengths, any positive ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import shapes
from benchmarks.schema import skipped_row
from benchmarks.timing import cuda_peak_memory_mb, peak_rss_in_child

SUITE = "memory"
ATTENTION_PROVIDERS = ("stretto-triton", "stretto-torch", "sdpa-causal", "sdpa-dense-band")
MODEL_PROVIDERS = ("model-wha", "model-dense")
QUICK_CPU_MAX_SEQ = 4096  # one scaling length in a quick CPU run: growth needs 4 points


# -- cases (module level: the CPU path builds them in a child process) ----------------


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def build_attention_case(
    provider: str,
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    window: int,
    block: int | None,
    dtype: str,
    device: str,
) -> Callable[[], Any]:
    """Inputs for one attention case and the forward+backward call to measure."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, seq_len, head_dim, generator=gen)
        .to(device=device, dtype=_torch_dtype(dtype))
        .requires_grad_()
        for _ in range(3)
    )  # [B, H, N, D] each
    if provider.startswith("stretto-"):
        from stretto.kernels import hierarchical_attention

        backend = provider.removeprefix("stretto-")

        def attend():
            return hierarchical_attention(q, k, v, window=window, block=block, backend=backend)

    elif provider == "sdpa-causal":

        def attend():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    elif provider == "sdpa-dense-band":

        def attend():
            idx = torch.arange(seq_len, device=device)
            offset = idx[:, None] - idx[None, :]  # [N, N]: query - key
            band = (offset >= 0) & (offset < window)  # the causal local window
            return F.scaled_dot_product_attention(q, k, v, attn_mask=band)

    else:
        raise ValueError(f"unknown attention provider {provider!r}")

    def run() -> None:
        attend().sum().backward()
        for t in (q, k, v):
            t.grad = None

    return run


def build_model_case(
    provider: str, preset: str, batch: int, seq_len: int, dtype: str, device: str
) -> Callable[[], Any]:
    """A `MusicModel` (transformer mode) and one loss forward+backward to measure."""
    import torch

    from stretto.engine import ModelConfig, MusicModel
    from stretto.tokenizer import Vocabulary

    vocab = Vocabulary()
    attention = "wha" if provider == "model-wha" else "dense"
    config = ModelConfig.from_vocab(
        vocab, mode="transformer", preset=preset, attention=attention, max_seq_len=seq_len
    )
    model = MusicModel(config).to(device=device, dtype=_torch_dtype(dtype))
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(4, vocab.size, (batch, seq_len), generator=gen).to(device)

    def run() -> None:
        model.loss({"input_ids": ids})["loss"].backward()
        model.zero_grad(set_to_none=True)

    return run


# -- availability -------------------------------------------------------------------


def _attention_unavailable(provider: str, device: str) -> str | None:
    if provider.startswith("stretto-"):
        try:
            from stretto.kernels import hierarchical_attention  # noqa: F401
        except ImportError as exc:
            return f"stretto.kernels is not importable ({exc})"
        if provider == "stretto-triton":
            if not device.startswith("cuda"):
                return "Triton kernels need CUDA (the interpreter is for tests, not timings)"
            try:
                import triton  # noqa: F401
            except ImportError as exc:
                return f"triton is not importable ({exc})"
    return None


def _model_unavailable() -> str | None:
    try:
        from stretto.engine import ModelConfig, MusicModel  # noqa: F401
        from stretto.tokenizer import Vocabulary  # noqa: F401
    except ImportError as exc:
        return f"stretto.engine model is not importable ({exc})"
    return None


def _cpu_too_big(provider: str, batch: int, heads: int, seq_len: int) -> str | None:
    """A dense N x N case that would take more than half the free RAM is not started."""
    if provider not in ("sdpa-dense-band", "model-dense"):
        return None
    # scores, probabilities and their gradients in float32, as a lower bound
    need = 4 * batch * heads * seq_len * seq_len * 4
    avail = _mem_available()
    if avail is not None and need > avail / 2:
        return (
            f"skipped: a dense {seq_len}x{seq_len} case needs about {need / 2**30:.1f} GiB, "
            f"more than half of the {avail / 2**30:.1f} GiB available"
        )
    return None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- measuring ----------------------------------------------------------------------


def _measure(build: Callable[..., Callable[[], Any]], kwargs: dict, device: str) -> dict:
    if not device.startswith("cuda"):
        return peak_rss_in_child(build, kwargs)
    import torch

    try:
        run = build(**kwargs)
        run()  # warm-up: autotuning and lazy initialisation are not the case's memory
        return cuda_peak_memory_mb(run)
    except torch.OutOfMemoryError:
        return {"skipped": "out of CUDA memory at this size"}
    finally:
        torch.cuda.empty_cache()


def _row(provider, mode, shape_label, seq_len, dtype, result, extra) -> dict[str, Any]:
    row: dict[str, Any] = {
        "suite": SUITE,
        "provider": provider,
        "mode": mode,
        "shape": shape_label,
        "seq_len": seq_len,
        "dtype": dtype,
        "extra": dict(extra),
    }
    if "error" in result:
        row["status"] = f"error: {result['error']}"
    elif "skipped" in result:
        row["status"] = f"skipped: {result['skipped']}"
    else:
        row["peak_mem_mb"] = result["peak_mem_mb"]
        row["extra"].update({k: v for k, v in result.items() if k != "peak_mem_mb"})
    return row


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(memory) on log(N); None with fewer than two points."""
    pts = [(math.log(n), math.log(m)) for n, m in points if m and m > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def _add_growth(rows: list[dict[str, Any]]) -> None:
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("peak_mem_mb") is not None:
            by_provider.setdefault(row["provider"], []).append(row)
    for group in by_provider.values():
        slope = growth_exponent([(r["seq_len"], r["peak_mem_mb"]) for r in group])
        if slope is not None:
            for r in group:
                r["extra"]["mem_growth_exponent"] = round(slope, 3)


def run(*, quick: bool, device: str, seq_lens: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Rows per provider and length; `seq_lens` (any positive lengths) replaces the sweep."""
    dtype = shapes.dtype_name(device)
    lens = list(shapes.seq_lens(quick=quick, scaling=True))
    if quick and not device.startswith("cuda"):
        lens.append(QUICK_CPU_MAX_SEQ)
    if seq_lens:
        lens = sorted(set(seq_lens))
    rows: list[dict[str, Any]] = []

    for provider in ATTENTION_PROVIDERS:
        reason = _attention_unavailable(provider, device)
        if reason:
            rows.append(skipped_row(SUITE, reason, provider=provider, mode="fwd+bwd"))
            continue
        for n in lens:
            shape = shapes.AttentionShape(
                shapes.batch_size(device, n), shapes.HEADS, n, shapes.HEAD_DIM
            )
            kwargs = {
                "provider": provider,
                "batch": shape.batch,
                "heads": shape.heads,
                "seq_len": n,
                "head_dim": shape.head_dim,
                "window": shape.window,
                "block": shape.block,
                "dtype": dtype,
                "device": device,
            }
            big = None if device.startswith("cuda") else _cpu_too_big(provider, 1, shape.heads, n)
            result = {"skipped": big.removeprefix("skipped: ")} if big else None
            result = result or _measure(build_attention_case, kwargs, device)
            extra = {"window": shape.window, "block": shape.block}
            rows.append(_row(provider, "fwd+bwd", shape.label, n, dtype, result, extra))

    short = quick and not seq_lens  # asked-for lengths all run
    model_lens = [n for n in lens if n <= max(shapes.SEQ_LENS)] if short else lens
    # base on a GPU; on a CPU small, or tiny in a quick run (one child per case adds up)
    preset = "base" if device.startswith("cuda") else ("tiny" if quick else "small")
    reason = _model_unavailable()
    for provider in MODEL_PROVIDERS:
        if reason:
            rows.append(skipped_row(SUITE, reason, provider=provider, mode="fwd+bwd"))
            continue
        for n in model_lens:
            batch = shapes.batch_size(device, n, kind="model")
            kwargs = {
                "provider": provider,
                "preset": preset,
                "batch": batch,
                "seq_len": n,
                "dtype": dtype,
                "device": device,
            }
            big = None if device.startswith("cuda") else _cpu_too_big(provider, batch, 8, n)
            result = {"skipped": big.removeprefix("skipped: ")} if big else None
            result = result or _measure(build_model_case, kwargs, device)
            label = f"{preset}-B{batch}-N{n}"
            rows.append(_row(provider, "fwd+bwd", label, n, dtype, result, {"preset": preset}))

    _add_growth(rows)
    return rows
