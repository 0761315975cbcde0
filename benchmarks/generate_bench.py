"""Generation: tokens/s and peak memory with the bounded cache against no cache.

Providers, all greedy over an untrained transformer-mode model whose END logit is held
at -inf (so every case generates exactly its token count):
- `cached`: `MusicModel.generate(constrained=False)`: prefill, then one-token decoding
  through the bounded per-layer hierarchical cache; the same work per token as the
  baseline.
- `cached-constrained`: the same with the grammar mask (the default of `generate`).
- `full-forward`: re-runs the whole forward pass for every new token, the baseline the
  generation issue compares against (run up to FULL_FORWARD_MAX_TOKENS).
- `hf-llama`: the peer a user would reach for: Hugging Face `generate` (greedy, its
  own KV cache, SDPA attention, no EOS) on a `LlamaForCausalLM` of the preset's shape
  (hidden d_model, n_layers, n_heads, intermediate d_ff, vocabulary 774, tied
  embedding and head as in MusicModel, untrained).
  Needs transformers (the `hf` extra); without it its rows read "skipped".
Each case runs its generation exactly once, after a warm-up generation of
WARMUP_TOKENS tokens with the same provider and preset. GPU: timed in process, peak
memory is the CUDA allocator's peak above the model. CPU: one fresh child process per
case builds the model, warms up, resets its RSS high-water mark and runs the measured
generation once, reporting both its wall time and its peak RSS above the model (so
the hour-long no-cache base case is not run a second time for its memory; the child
gives up after CPU_CASE_TIMEOUT_S). That child keeps glibc's default allocator, as a
user's process would (see `benchmarks.timing.peak_rss_in_child`); its warm-up is short,
so little of the warm-up's memory can be reused by the measured generation.
Presets: `small` and `base` (quick: `small` on CUDA, `tiny` on a CPU) or those of
`--preset`; generated lengths: 2048 and 8192 (quick: 256) or those of `--seq-len`,
any positive length. When `stretto.engine` has no `generate`, every row reads
"skipped: generation not implemented"; no number is ever filled in.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import shapes
from benchmarks.schema import progress, skipped_row
from benchmarks.timing import peak_rss_in_child, synchronize

SUITE = "generate"
PROVIDERS = ("cached", "cached-constrained", "full-forward", "hf-llama")
FULL_FORWARD_MAX_TOKENS = 2048  # quadratic in the generated length beyond this
WARMUP_TOKENS = 8  # the warm-up generation before each measured one
# One CPU case runs in one child. The no-cache base baseline at 2048 tokens sums 2048
# forwards of 1..2048 tokens: about 0.07 s at 16 tokens and 1.2-5 s at 1024-2048 on
# two shared cores (one forward each, timed one by one), i.e. 20 minutes to over an
# hour; the limit leaves room for a loaded machine.
CPU_CASE_TIMEOUT_S = 7200.0


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

    elif provider == "hf-llama":
        llama = hf_llama(config, device)

        def run():
            ids = torch.full((1, 1), vocab.START, dtype=torch.long, device=device)
            with torch.inference_mode():
                out = llama.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=False,
                )
            if out.shape[1] != tokens + 1:
                raise RuntimeError(f"generated {out.shape[1] - 1} tokens, not {tokens}")
            return out

    else:
        raise ValueError(f"unknown generation provider {provider!r}")
    return run


def hf_llama(config, device: str):
    """An untrained `LlamaForCausalLM` of `config`'s shape, greedy, with no EOS."""
    import transformers

    llama_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len + 1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        tie_word_embeddings=True,  # as MusicModel: its head is its embedding
        attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(llama_config).to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _provider_unavailable(provider: str) -> str | None:
    if provider == "hf-llama" and importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (pip install -e '.[hf]')"
    return None


def _cases(
    quick: bool, device: str, seq_lens: Sequence[int] | None, presets: Sequence[str] | None
) -> list[tuple[str, int]]:
    if quick:
        default_presets = ("small",) if device.startswith("cuda") else ("tiny",)
        default_lens = shapes.QUICK_GENERATE_LENGTHS
    else:
        default_presets, default_lens = ("small", "base"), shapes.GENERATE_LENGTHS
    return [(p, n) for p in (presets or default_presets) for n in (seq_lens or default_lens)]


def _measure(provider: str, preset: str, tokens: int, device: str) -> dict[str, Any]:
    kwargs = {"provider": provider, "preset": preset, "tokens": tokens, "device": device}
    if not device.startswith("cuda"):
        return _measure_cpu(kwargs)
    import torch

    run = build_case(**kwargs)
    build_case(provider, preset, WARMUP_TOKENS, device)()  # lazy initialisation, kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run()
    synchronize(device)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    result: dict[str, Any] = {
        "peak_mem_mb": (torch.cuda.max_memory_allocated() - before) / 2**20,
    }
    return _with_time(result, elapsed_ms, tokens)


def _measure_cpu(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Time and peak RSS of the same single generation, in one fresh child process."""
    probe = peak_rss_in_child(
        build_case,
        kwargs,
        warmup_kwargs=dict(kwargs, tokens=WARMUP_TOKENS),
        timed=True,
        timeout_s=CPU_CASE_TIMEOUT_S,
    )
    if "error" in probe:
        raise RuntimeError(f"in the child process: {probe['error']}")
    elapsed_ms = probe.pop("elapsed_ms")
    result: dict[str, Any] = {"peak_mem_mb": probe.pop("peak_mem_mb"), "extra": probe}
    return _with_time(result, elapsed_ms, kwargs["tokens"])


def _with_time(result: dict[str, Any], elapsed_ms: float, tokens: int) -> dict[str, Any]:
    # One timed generation per case: p20 and p80 equal the single sample.
    result.update(median_ms=elapsed_ms, p20_ms=elapsed_ms, p80_ms=elapsed_ms)
    result["tokens_per_s"] = tokens / (elapsed_ms / 1e3)
    return result


def run(
    *,
    quick: bool,
    device: str,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every (preset, generated length, provider); see the module docstring."""
    reason = generation_unavailable()
    if reason:
        return [skipped_row(SUITE, reason, provider=p, mode="generate") for p in PROVIDERS]
    rows: list[dict[str, Any]] = []
    dtype = "float32"
    cases = [(p, n, v) for p, n in _cases(quick, device, seq_lens, presets) for v in PROVIDERS]
    for i, (preset, tokens, provider) in enumerate(cases, 1):
        what = {
            "suite": SUITE,
            "provider": provider,
            "mode": "generate",
            "shape": f"{preset}-B1-T{tokens}",
            "seq_len": tokens,
            "dtype": dtype,
        }
        missing = _provider_unavailable(provider)
        if missing:
            rows.append(skipped_row(reason=missing, **what))
            continue
        if provider == "full-forward" and tokens > FULL_FORWARD_MAX_TOKENS:
            reason = f"no-cache baseline is run up to {FULL_FORWARD_MAX_TOKENS} tokens only"
            rows.append(skipped_row(reason=reason, **what))
            continue
        progress(f"[generate] {i}/{len(cases)}: {provider}, preset {preset}, {tokens} tokens")
        try:
            measured = _measure(provider, preset, tokens, device)
        except Exception as exc:  # one failing case is a row, the others still run
            rows.append(dict(what, status=f"error: {type(exc).__name__}: {exc}"))
            continue
        extra = measured.pop("extra", {})
        rows.append(dict(what, **measured, extra=dict(extra, preset=preset)))
    return rows
