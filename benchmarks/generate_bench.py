"""Generation: tokens/s and peak memory with the bounded cache against no cache.

Providers, all greedy over an untrained transformer-mode model whose END logit is held
at -inf (so every case generates exactly its token count):
- `cached`: `MusicModel.generate(constrained=False)`: prefill, then one-token decoding
  through the bounded per-layer hierarchical cache; the same work per token as the
  baseline.
- `cached-constrained`: the same with the grammar mask (the default of `generate`).
- `full-forward`: re-runs the whole forward pass for every new token, the baseline the
  generation issue compares against (run up to FULL_FORWARD_MAX_TOKENS).
Peak memory is the CUDA allocator's peak above the model (GPU) or the peak RSS of a
fresh child process (CPU). When `stretto.engine` has no `generate`, every row reads
"skipped: generation not implemented"; no number is ever filled in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks import shapes
from benchmarks.core import skipped_row
from benchmarks.timing import peak_rss_in_child, synchronize

SUITE = "generate"
PROVIDERS = ("cached", "cached-constrained", "full-forward")
FULL_FORWARD_MAX_TOKENS = 2048  # quadratic in the generated length beyond this


def generation_unavailable() -> str | None:
    """Why generation cannot be measured here, or None when it can."""
    try:
        from stretto.engine import ModelConfig, MusicModel  # noqa: F401
        from stretto.tokenizer import Vocabulary  # noqa: F401
    except ImportError as exc:
        return f"generation not implemented (stretto.engine is not importable: {exc})"
    if not callable(getattr(MusicModel, "generate", None)):
        return "generation not implemented (stretto.engine.MusicModel has no generate)"
    return None


def build_case(provider: str, preset: str, tokens: int, device: str) -> Callable[[], Any]:
    """A transformer-mode model of `preset` and the call generating `tokens` tokens."""
    import torch

    from stretto.engine import ModelConfig, MusicModel
    from stretto.tokenizer import Vocabulary

    vocab = Vocabulary()
    config = ModelConfig.from_vocab(
        vocab, mode="transformer", preset=preset, max_seq_len=max(tokens + 1, 2048)
    )
    model = MusicModel(config).to(device).eval()
    never_end = torch.zeros(vocab.size, device=device)
    never_end[vocab.END] = float("-inf")
    model.head.register_forward_hook(lambda module, args, out: out + never_end)

    if provider in ("cached", "cached-constrained"):
        constrained = provider == "cached-constrained"

        def run():
            with torch.inference_mode():
                out = model.generate(max_new_tokens=tokens, temperature=0, constrained=constrained)
            if out.shape[1] != tokens + 1:
                raise RuntimeError(f"generated {out.shape[1] - 1} tokens, not {tokens}")
            return out

    elif provider == "full-forward":

        def run():
            ids = torch.full((1, 1), vocab.START, dtype=torch.long, device=device)
            with torch.inference_mode():
                for _ in range(tokens):
                    logits = model(ids)[:, -1]  # [1, V]
                    ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            return ids

    else:
        raise ValueError(f"unknown generation provider {provider!r}")
    return run


def _cases(quick: bool, device: str) -> list[tuple[str, int]]:
    if quick:
        preset = "small" if device.startswith("cuda") else "tiny"
        return [(preset, n) for n in shapes.QUICK_GENERATE_LENGTHS]
    return [(p, n) for p in ("small", "base") for n in shapes.GENERATE_LENGTHS]


def _measure(provider: str, preset: str, tokens: int, device: str) -> dict[str, Any]:
    kwargs = {"provider": provider, "preset": preset, "tokens": tokens, "device": device}
    run = build_case(**kwargs)
    build_case(provider, preset, 8, device)()  # warm-up: lazy initialisation, kernels
    result: dict[str, Any] = {}
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run()
    synchronize(device)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    if device.startswith("cuda"):
        result["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        mem = peak_rss_in_child(build_case, kwargs)
        if "error" in mem:
            result["extra"] = {"memory_error": mem["error"]}
        else:
            result["peak_mem_mb"] = mem["peak_mem_mb"]
            result["extra"] = {k: v for k, v in mem.items() if k != "peak_mem_mb"}
    # One timed generation per case: p20 and p80 equal the single sample.
    result.update(median_ms=elapsed_ms, p20_ms=elapsed_ms, p80_ms=elapsed_ms)
    result["tokens_per_s"] = tokens / (elapsed_ms / 1e3)
    return result


def run(*, quick: bool, device: str) -> list[dict[str, Any]]:
    reason = generation_unavailable()
    if reason:
        return [skipped_row(SUITE, reason, provider=p, mode="generate") for p in PROVIDERS]
    rows: list[dict[str, Any]] = []
    dtype = "float32"
    for preset, tokens in _cases(quick, device):
        for provider in PROVIDERS:
            what = {
                "suite": SUITE,
                "provider": provider,
                "mode": "generate",
                "shape": f"{preset}-B1-T{tokens}",
                "seq_len": tokens,
                "dtype": dtype,
            }
            if provider == "full-forward" and tokens > FULL_FORWARD_MAX_TOKENS:
                reason = f"no-cache baseline is run up to {FULL_FORWARD_MAX_TOKENS} tokens only"
                rows.append(skipped_row(SUITE, reason, **what))
                continue
            try:
                measured = _measure(provider, preset, tokens, device)
            except Exception as exc:  # one failing case is a row, the others still run
                rows.append(dict(what, status=f"error: {type(exc).__name__}: {exc}"))
                continue
            extra = measured.pop("extra", {})
            rows.append(dict(what, **measured, extra=dict(extra, preset=preset)))
    return rows
