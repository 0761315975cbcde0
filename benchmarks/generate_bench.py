"""Generation: tokens/s and peak memory, eager and compiled, against Hugging Face and the
weight-streaming floor.

Providers, all greedy over an untrained transformer-mode model whose END logit is held
at -inf (so every case generates exactly its token count, every row of a batch too):
- `cached`: `MusicModel.generate(constrained=False)`: prefill, then one-token decoding
  through the bounded per-layer hierarchical cache, eager.
- `cached-constrained`: the same with the grammar mask and policies (the default of
  `generate`), eager: the reference the compiled step must match.
- `compiled`: `generate(compile_step=True)`, the whole token step (model, grammar,
  sampling, grammar update) compiled; steady state (the warm-up is a whole generation
  of the same shapes, so the timed one compiles nothing).
- `compiled-aten-mm`, `compiled-broadcast`, `compiled-onednn` (CPU): `compiled` with
  every matrix product of the step in one form of `stretto.engine.decode_matmul`
  (`MATMUL_FORMS`): left to `aten.mm`, a broadcast sum, oneDNN's linear, whatever the
  rows; side by side with `compiled` they show what each form costs at each batch, the
  measurement behind `BROADCAST_MAX_ROWS`. Run only when `--provider` names them.
- `compiled-profile`: `compiled`'s timed generation under `torch.profiler` (Inductor's
  CPU kernels each recorded as an event): where a step's time goes, the
  PROFILE_EVENTS events with the most self time per step (and the rest), in
  `extra["profile"]`. Its own time includes the profiler's overhead, so read speed
  from `compiled`. Run only when `--provider` names it.
- `compiled-first-call`: the same in a fresh process whose Inductor cache is empty (a
  new machine): the compile and the generation together, what a first `stretto
  generate --compile on` costs.
- `compiled-disk-cache`: the first call in another fresh process over the Inductor
  cache the steady-state case left on disk (every later process on the machine).
- `full-forward`: re-runs the whole forward pass for every new token (run up to
  FULL_FORWARD_MAX_TOKENS).
- `hf-llama`: Hugging Face `generate` (greedy, its dynamic cache, SDPA attention, no
  EOS) on a `LlamaForCausalLM` of the preset's shape (hidden d_model, n_layers, n_heads,
  intermediate d_ff, vocabulary 774, tied embedding and head as in MusicModel,
  untrained). Needs transformers (the `hf` extra); without it its rows read "skipped".
- `hf-llama-static`: the same with its static cache and its compiled forward
  (`cache_implementation="static"`, compiled on every device), steady state.
- `floor`: no generation: the bytes one token reads at batch B (every weight once per
  step, shared by the B rows, plus each row's cache: keys, values and block sums at the
  last token) over the machine's copy bandwidth measured here (`copy_bandwidth`): the
  time no provider can beat. Every measured row carries `x_floor`, its time per token
  over the floor of its batch.
- `matmul-floor`: no generation either: the time one step of B tokens spends in its
  matrix products alone (`matmul_ms`: x @ W.T with x `[B, in]` for every linear layer's
  weight, the tied head included, one after another, in the forms the compiled step
  uses: on a CPU those of `stretto.engine.decode_matmul`), per token: the cost of the
  weights' arithmetic on this machine (memory-bound at batch 1, compute-bound by
  batch 32). Every measured row carries `x_matmul`, its time
  per token over the matmul floor of its batch: how much the rest of the step
  (attention over the cache, norms, the grammar, sampling, launches) adds.
The floors are per (preset, length, batch) of the run, so the ratio of two batches'
floors says what the larger batch could gain at equal efficiency.
Batches: B = 1 for every provider; B = 8 and 32 for BATCHED_PROVIDERS (tokens/s summed
over the rows, each row under its own grammar state).

Each case runs its generation exactly once, after a warm-up (WARMUP_TOKENS tokens with
the same provider and preset; the steady-state compiled providers warm up on the same
shapes). GPU: timed in process, peak memory is the CUDA allocator's peak above the
model. CPU: one fresh child process per case builds the model, warms up, resets its RSS
high-water mark and runs the measured generation once, reporting both its wall time
and its peak RSS above the model (so the hour-long no-cache base case is not run a
second time for its memory; the child gives up after CPU_CASE_TIMEOUT_S). That child
keeps glibc's default allocator, as a user's process would (see
`benchmarks.timing.peak_rss_in_child`).
Presets: `small` and `base` (quick: `small` on CUDA, `tiny` on a CPU) or those of
`--preset`; generated lengths: 2048 and 8192 (quick: 256) or those of `--seq-len`;
providers: all, or those of `--provider`. When `stretto.engine` has no `generate`,
every row reads "skipped: generation not implemented"; no number is ever filled in.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import shapes
from benchmarks.schema import progress, skipped_row
from benchmarks.timing import peak_rss_in_child, synchronize

SUITE = "generate"
PROVIDERS = (
    "cached",
    "cached-constrained",
    "compiled",
    "compiled-aten-mm",
    "compiled-broadcast",
    "compiled-onednn",
    "compiled-profile",
    "compiled-first-call",
    "compiled-disk-cache",
    "full-forward",
    "hf-llama",
    "hf-llama-static",
)
FLOORS = ("floor", "matmul-floor")  # rows of every run, measured without generating
# The products of the compiled step in one form: DECODE_MATMULS's broadcast_max_rows and
# onednn for each provider.
MATMUL_FORMS = {
    "compiled-aten-mm": (0, False),
    "compiled-broadcast": (2**31, False),
    "compiled-onednn": (0, True),
}
PROFILED = "compiled-profile"
PROFILE_EVENTS = 12  # events listed per profiled case, by self time
NAMED_ONLY = (*MATMUL_FORMS, PROFILED)  # run only when --provider names them
BATCHED_PROVIDERS = ("cached-constrained", "compiled", *NAMED_ONLY, "hf-llama")
BATCH_SIZES = (1, 8, 32)  # quick: 1
STEADY = ("compiled", *MATMUL_FORMS, "hf-llama-static")  # warm up on the measured shapes
COPY_BYTES = 2**28  # the buffer `copy_bandwidth` copies: far past any cache level
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


def build_case(
    provider: str,
    preset: str,
    tokens: int,
    device: str,
    batch: int = 1,
    inductor_cache: str | None = None,
    profile_path: str | None = None,
) -> Callable[[], Any]:
    """A transformer-mode model of `preset` and the call generating `tokens` tokens for
    each of `batch` rows; `inductor_cache` is the folder Inductor caches its compiled
    code in (set before anything compiles); `compiled-profile` writes its profile to
    `profile_path` (JSON, see `profile_summary`)."""
    if inductor_cache is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
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
    if provider in MATMUL_FORMS:  # one child process per case: set for this case only
        from stretto.engine.decode_matmul import DECODE_MATMULS

        DECODE_MATMULS.broadcast_max_rows, DECODE_MATMULS.onednn = MATMUL_FORMS[provider]

    if provider in ("cached", "cached-constrained") or provider.startswith("compiled"):
        options = {
            "max_new_tokens": tokens,
            "temperature": 0,
            "batch_size": batch,
            "constrained": provider != "cached",
            "compile_step": provider.startswith("compiled"),
        }

        if provider == PROFILED:
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True  # one event per C++ kernel

        profiling = provider == PROFILED and profile_path is not None  # not in the warm-up

        def run():
            profiler = contextlib.nullcontext()
            if profiling:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.device(device).type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                profiler = torch.profiler.profile(activities=activities)
            start = time.perf_counter()
            with profiler, torch.inference_mode():
                out = model.generate(**options)
            synchronize(device)
            elapsed_s = time.perf_counter() - start
            if out.shape != (batch, tokens + 1):
                raise RuntimeError(f"generated {list(out.shape)}, not {[batch, tokens + 1]}")
            if profiling:
                summary = profile_summary(profiler.key_averages(), tokens, elapsed_s)
                Path(profile_path).write_text(json.dumps(summary))
            return out

    elif provider == "full-forward":

        def run():
            ids = torch.full((1, 1), vocab.START, dtype=torch.long, device=device)
            with torch.inference_mode():
                for _ in range(tokens):
                    logits = model(ids)[:, -1]  # [1, V]
                    ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            return ids

    elif provider in ("hf-llama", "hf-llama-static"):
        llama = hf_llama(config, device)
        static = {}
        if provider == "hf-llama-static":
            import transformers

            compile_config = transformers.CompileConfig()  # its defaults, ...
            compile_config._compile_all_devices = True  # ... on every device, not CUDA only
            static = {"cache_implementation": "static", "compile_config": compile_config}

        def run():
            ids = torch.full((batch, 1), vocab.START, dtype=torch.long, device=device)
            with torch.inference_mode():
                out = llama.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=False,
                    **static,
                )
            if out.shape != (batch, tokens + 1):
                raise RuntimeError(f"generated {list(out.shape)}, not {[batch, tokens + 1]}")
            return out

    else:
        raise ValueError(f"unknown generation provider {provider!r}")
    return run


def profile_summary(events, steps: int, elapsed_s: float) -> dict[str, Any]:
    """What one profiled generation of `steps` token steps spent, from
    `profiler.key_averages()`: the PROFILE_EVENTS events with the most self time (CPU,
    or the device's where it ran one), each in microseconds per step, its share of all
    events' self time and its calls per step, then the rest as one line; and the wall
    time per step (`elapsed_s`, the profiler's overhead included)."""
    device = any(getattr(e, "self_device_time_total", 0) > 0 for e in events)
    clock = "self_device_time_total" if device else "self_cpu_time_total"
    timed = sorted(
        ((e.key, float(getattr(e, clock)), int(e.count)) for e in events),
        key=lambda item: -item[1],
    )
    total = sum(t for _, t, _ in timed) or 1.0
    top = [
        {"event": name, "us_per_step": t / steps, "share": t / total, "calls_per_step": n / steps}
        for name, t, n in timed[:PROFILE_EVENTS]
    ]
    rest = timed[PROFILE_EVENTS:]
    if rest:
        t = sum(t for _, t, _ in rest)
        top.append(
            {
                "event": f"the other {len(rest)} events",
                "us_per_step": t / steps,
                "share": t / total,
                "calls_per_step": sum(n for _, _, n in rest) / steps,
            }
        )
    return {
        "clock": "device" if device else "cpu",
        "events": top,
        "self_us_per_step": total / steps,
        "wall_us_per_step": elapsed_s * 1e6 / steps,
    }


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


def _provider_unavailable(provider: str, device: str) -> str | None:
    if provider.startswith("hf-llama") and importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (pip install -e '.[hf]')"
    if provider in ("compiled-first-call", "compiled-disk-cache") and device.startswith("cuda"):
        return "a first call is measured in a fresh process, on the CPU only"
    if provider in MATMUL_FORMS and device.startswith("cuda"):
        return "the forms of stretto.engine.decode_matmul are the CPU step's"
    return None


def copy_bandwidth(device: str, nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes per second one `copy_` of an `nbytes` buffer moves (read plus write), the
    best of `repeats`: the machine's streaming bandwidth as torch reaches it."""
    import torch

    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # pages touched before timing
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def matmul_ms(preset: str, device: str, repeats: int = 30, batch: int = 1) -> float:
    """Milliseconds one decoding step of `batch` tokens of `preset` spends in its matrix
    products: `x @ W.T`, x `[batch, in]`, for the weight of every `nn.Linear` of a
    transformer-mode model (the head is the embedding, read once), in the model's order,
    done as the compiled step does them: on a CPU compiled with the step's own matmul
    pass (`stretto.engine.decode_matmul`), elsewhere eager; the median of `repeats`
    passes after 3 untimed ones."""
    import statistics

    import torch
    from torch import nn

    from stretto.engine import ModelConfig, MusicModel
    from stretto.engine.decode_matmul import DECODE_MATMULS
    from stretto.tokenizer import Vocabulary

    config = ModelConfig.from_vocab(Vocabulary(), mode="transformer", preset=preset)
    model = MusicModel(config).to(device)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    inputs = [torch.randn(batch, w.shape[1], device=device) for w in weights]

    def products(inputs: list[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.nn.functional.linear(x, w) for x, w in zip(inputs, weights, strict=True)]

    if device == "cpu":
        # Every call compiles `products` anew for its shapes; Dynamo counts the compiles
        # of one function against its recompile limit (8), and a run's floors ask for one
        # per (preset, batch). The cases run in child processes on a CPU: nothing else
        # compiled in this one is lost.
        torch._dynamo.reset()
        options = {"post_grad_custom_post_pass": DECODE_MATMULS}
        products = torch.compile(products, fullgraph=True, dynamic=False, options=options)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            synchronize(device)
            start = time.perf_counter()
            products(inputs, weights)
            synchronize(device)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bytes_per_token(preset: str, tokens: int, batch: int = 1) -> float:
    """What one decoding token of a batch-`batch` generation of `tokens` tokens reads, at
    its last token: every parameter once per step, shared by the batch (the head is the
    embedding: one matrix), and every tensor of its row's caches (`MusicModel.new_cache`:
    rings, block sums, note tracker)."""
    from stretto.engine import ModelConfig, MusicModel
    from stretto.tokenizer import Vocabulary

    config = ModelConfig.from_vocab(
        Vocabulary(), mode="transformer", preset=preset, max_seq_len=max(tokens + 1, 2048)
    )
    model = MusicModel(config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cache = model.new_cache(batch, tokens + 1)
    return (weights + sum(t.numel() * t.element_size() for t in cache.tensors())) / batch


def _grid(
    quick: bool,
    device: str,
    seq_lens: Sequence[int] | None,
    presets: Sequence[str] | None,
    batches: Sequence[int] | None = None,
) -> tuple[Sequence[str], Sequence[int], Sequence[int]]:
    """The presets, generated lengths and batch sizes of a run."""
    if batches is not None and any(isinstance(b, bool) or b < 1 for b in batches):
        raise ValueError(f"batch sizes must be >= 1, got {list(batches)}")
    if quick:
        default_presets = ("small",) if device.startswith("cuda") else ("tiny",)
        lengths = seq_lens or shapes.QUICK_GENERATE_LENGTHS
        return presets or default_presets, lengths, batches or (1,)
    lengths = seq_lens or shapes.GENERATE_LENGTHS
    return presets or ("small", "base"), lengths, batches or BATCH_SIZES


def _cases(
    grid: tuple[Sequence[str], Sequence[int], Sequence[int]], providers: Sequence[str] | None
) -> list[tuple[str, int, int, str]]:
    """(preset, generated length, batch, provider) of every measured row."""
    if providers is None:
        chosen = [v for v in PROVIDERS if v not in NAMED_ONLY]
    else:
        chosen = [v for v in PROVIDERS if v in providers]
    presets, lengths, batches = grid
    return [
        (p, n, b, v)
        for p in presets
        for n in lengths
        for b in batches
        for v in chosen
        if b == 1 or v in BATCHED_PROVIDERS
    ]


def _measure(kwargs: dict[str, Any], warmup: dict[str, Any]) -> dict[str, Any]:
    if not kwargs["device"].startswith("cuda"):
        return _measure_cpu(kwargs, warmup)
    import torch

    run = build_case(**kwargs)
    build_case(**warmup)()  # lazy initialisation, kernels; the steady state's compile
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run()
    synchronize(kwargs["device"])
    elapsed_ms = (time.perf_counter() - start) * 1e3
    result: dict[str, Any] = {
        "peak_mem_mb": (torch.cuda.max_memory_allocated() - before) / 2**20,
    }
    return _with_time(result, elapsed_ms, kwargs["tokens"] * kwargs["batch"])


def _measure_cpu(kwargs: dict[str, Any], warmup: dict[str, Any]) -> dict[str, Any]:
    """Time and peak RSS of the same single generation, in one fresh child process."""
    probe = peak_rss_in_child(
        build_case, kwargs, warmup_kwargs=warmup, timed=True, timeout_s=CPU_CASE_TIMEOUT_S
    )
    if "error" in probe:
        raise RuntimeError(f"in the child process: {probe['error']}")
    elapsed_ms = probe.pop("elapsed_ms")
    result: dict[str, Any] = {"peak_mem_mb": probe.pop("peak_mem_mb"), "extra": probe}
    return _with_time(result, elapsed_ms, kwargs["tokens"] * kwargs["batch"])


def _with_time(result: dict[str, Any], elapsed_ms: float, tokens: int) -> dict[str, Any]:
    # One timed generation per case: p20 and p80 equal the single sample.
    result.update(median_ms=elapsed_ms, p20_ms=elapsed_ms, p80_ms=elapsed_ms)
    result["tokens_per_s"] = tokens / (elapsed_ms / 1e3)
    return result


def _warmup(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The warm-up before a measured case: the same generation for the steady states,
    an eager one for the first calls (it compiles nothing), else a short one."""
    provider = kwargs["provider"]
    if provider in STEADY:
        return dict(kwargs)
    if provider == PROFILED:  # compiled on the measured shapes, nothing profiled
        return dict(kwargs, profile_path=None)
    if provider in ("compiled-first-call", "compiled-disk-cache"):
        return dict(kwargs, provider="cached-constrained", tokens=WARMUP_TOKENS)
    return dict(kwargs, tokens=WARMUP_TOKENS)


def run(
    *,
    quick: bool,
    device: str,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every (preset, generated length, batch, provider) and the floor rows per
    (preset, length, batch); see the module docstring. `batches` keeps those batch sizes (the
    batched providers run every one of them, the others batch 1 only)."""
    unknown = [v for v in providers or () if v not in (*PROVIDERS, *FLOORS)]
    if unknown:
        known = ", ".join((*PROVIDERS, *FLOORS))
        raise ValueError(f"unknown generate provider {unknown[0]!r}; known: {known}")
    reason = generation_unavailable()
    if reason:
        return [skipped_row(SUITE, reason, provider=p, mode="generate") for p in PROVIDERS]
    rows: list[dict[str, Any]] = []
    dtype = "float32"
    caches: dict[tuple[str, int, int], str] = {}  # the steady state's Inductor cache folder
    scratch = tempfile.TemporaryDirectory(prefix="stretto-inductor-")
    grid = _grid(quick, device, seq_lens, presets, batches)
    cases = _cases(grid, providers)
    floors, matmuls = {}, {}
    bandwidth = copy_bandwidth(device)
    presets, lengths, batches = grid
    for preset, batch in ((p, b) for p in presets for b in batches):
        matmuls[preset, batch] = matmul_ms(preset, device, batch=batch) / batch
    for preset, tokens, batch in ((p, n, b) for p in presets for n in lengths for b in batches):
        nbytes = bytes_per_token(preset, tokens, batch)
        floor_ms = nbytes / bandwidth * 1e3
        floors[preset, tokens, batch] = floor_ms
        matmul = matmuls[preset, batch]
        shape = {"shape": f"{preset}-B{batch}-T{tokens}", "seq_len": tokens, "dtype": dtype}
        for provider, ms, extra in (
            (
                "floor",
                floor_ms,
                {"bytes_per_token": nbytes, "copy_bandwidth_gb_s": bandwidth / 1e9},
            ),
            ("matmul-floor", matmul, {"x_floor": matmul / floor_ms}),
        ):
            rows.append(
                {
                    "suite": SUITE,
                    "provider": provider,
                    "mode": "generate",
                    **shape,
                    "median_ms": ms * tokens * batch,
                    "p20_ms": ms * tokens * batch,
                    "p80_ms": ms * tokens * batch,
                    "tokens_per_s": 1e3 / ms,
                    "extra": {"preset": preset, "batch": batch, **extra},
                }
            )
    for i, (preset, tokens, batch, provider) in enumerate(cases, 1):
        what = {
            "suite": SUITE,
            "provider": provider,
            "mode": "generate",
            "shape": f"{preset}-B{batch}-T{tokens}",
            "seq_len": tokens,
            "dtype": dtype,
        }
        missing = _provider_unavailable(provider, device)
        if missing:
            rows.append(skipped_row(reason=missing, **what))
            continue
        if provider == "full-forward" and tokens > FULL_FORWARD_MAX_TOKENS:
            reason = f"no-cache baseline is run up to {FULL_FORWARD_MAX_TOKENS} tokens only"
            rows.append(skipped_row(reason=reason, **what))
            continue
        key = (preset, tokens, batch)
        inductor_cache = None
        fresh = ("compiled", *NAMED_ONLY, "compiled-first-call")
        if provider in fresh and not device.startswith("cuda"):
            # a folder for the CPU child (CUDA runs in this process: its cache stays put)
            inductor_cache = tempfile.mkdtemp(dir=scratch.name)
            if provider == "compiled":
                caches[key] = inductor_cache
        elif provider == "compiled-disk-cache":
            if key not in caches:
                reason = "the disk cache is the one `compiled` leaves: run that provider too"
                rows.append(skipped_row(reason=reason, **what))
                continue
            inductor_cache = caches[key]
        kwargs = dict(
            provider=provider,
            preset=preset,
            tokens=tokens,
            device=device,
            batch=batch,
            inductor_cache=inductor_cache,
        )
        if provider == PROFILED:
            kwargs["profile_path"] = os.path.join(scratch.name, f"profile-{i}.json")
        progress(
            f"[generate] {i}/{len(cases)}: {provider}, preset {preset}, batch {batch}, "
            f"{tokens} tokens"
        )
        try:
            measured = _measure(kwargs, _warmup(kwargs))
        except Exception as exc:  # one failing case is a row, the others still run
            rows.append(dict(what, status=f"error: {type(exc).__name__}: {exc}"))
            continue
        extra = dict(measured.pop("extra", {}), preset=preset, batch=batch)
        if provider == PROFILED:
            with open(kwargs["profile_path"]) as f:
                extra["profile"] = json.load(f)
        per_token_ms = measured["median_ms"] / (tokens * batch)
        extra["x_floor"] = per_token_ms / floors[preset, tokens, batch]
        extra["x_matmul"] = per_token_ms / matmuls[preset, batch]
        rows.append(dict(what, **measured, extra=extra))
    scratch.cleanup()
    return rows
