"""The model: train-step and forward tokens/s per mode, WHA against dense SDPA attention.

For each mode (transformer, vae, vae_gan) and length (512, 1024, 2048), the `base`
preset runs with windowed hierarchical attention (`attention="wha"`, the model's own),
with full SDPA attention (`attention="dense"`, everything else identical), and with no
attention at all (`no-attention`, the ceiling, below). Phases: `train` is one
`Trainer.train_step` (loss, backward, clipping, AdamW; vae_gan adds the discriminator
step), `forward` is `model(ids)` under inference mode. GPU: CUDA-event timings (bf16
autocast) and peak CUDA memory. CPU: float32, the three providers interleaved in one
process so their ratios are the result; peak resident memory from a spawned child per
case (full runs only).

The ceiling: `no-attention` is the dense model with its attention operation replaced,
during each timed call only, by a stand-in that returns `v` unchanged (same shape and
dtype, no work): the q/k/v and output projections, rotary, MLP, norms, head, loss,
backward and optimizer all still run. It is patched here, at the one call that
`HierarchicalAttention` makes for dense attention
(`stretto.kernels.wha.module.dense_attention`), and restored after each call; the
engine has no such option. No attention
implementation can make the step faster than this row, so it bounds what WHA can gain
over dense SDPA at this model size, where projections and MLP dominate.

Rows: `mode` is the phase (`train-step` or `fwd`), `provider` the attention and model
mode (`wha-transformer`, `dense-vae`, `no-attention-vae_gan`, ...), and `shape` names
the model mode and preset (`vae-base-B4-N2048`), so the report's "vs best" column
compares the providers of one model and phase only (the ceiling reads 1.00x when
measured), and plots draw one line per provider. `extra` carries the preset, the batch
size and, when dense was measured in this run, `speedup_vs_dense` (dense median / this
median) on the WHA and ceiling rows, `ceiling_speedup_vs_dense` on the WHA row, and
`ceiling` on the ceiling row.

Filters: `presets` (default `base`; a quick run `tiny`) and `seq_lens` (default 512,
1024, 2048; a quick run 512), any positive length. Each case prints one progress line
to stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from benchmarks import shapes
from benchmarks.schema import progress, skipped_row
from benchmarks.timing import (
    bench_cpu,
    bench_cuda,
    cuda_peak_memory_mb,
    peak_rss_in_child,
    synchronize,
)

SUITE = "model"
MODES = ("transformer", "vae", "vae_gan")
ATTENTIONS = ("wha", "dense", "none")
PROVIDER = {"wha": "wha", "dense": "dense", "none": "no-attention"}
CEILING_NOTE = "ceiling: attention replaced by a no-op; no attention implementation is faster"
MEMORY_CHILD_TIMEOUT_S = 1800.0  # a base vae_gan train step at 2048, twice, on two cores
PHASES = ("train", "forward")
ROW_MODE = {"train": "train-step", "forward": "fwd"}


def build_case(
    attention: str, mode: str, phase: str, preset: str, batch: int, seq_len: int, device: str
) -> Callable[[], Any]:
    """A model of `preset`/`mode` with `attention`, and the callable running one `phase`.

    `attention` is "wha", "dense" or "none" (the dense model with the attention
    operation replaced by `_attention_stand_in` during each call).
    """
    if attention == "none":
        run = build_case("dense", mode, phase, preset, batch, seq_len, device)

        def without_attention() -> None:
            with _no_attention():
                run()

        return without_attention
    import torch

    from stretto.engine import ModelConfig, MusicModel, TrainConfig, Trainer
    from stretto.tokenizer import Vocabulary

    vocab = Vocabulary()
    config = ModelConfig.from_vocab(
        vocab, mode=mode, preset=preset, attention=attention, max_seq_len=max(seq_len, 2048)
    )
    torch.manual_seed(0)
    model = MusicModel(config).to(device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab.size, (batch, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)

    if phase == "train":
        trainer = Trainer(
            model,
            [],
            config=TrainConfig(steps=10**9, warmup_steps=0),
            device=device,
            progress=False,
        )
        batch_dict = {"input_ids": ids, "attention_mask": mask}

        def run() -> None:
            trainer.train_step([batch_dict])
            synchronize(device)

        return run

    model.eval()
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )

    def forward() -> None:
        with torch.inference_mode(), amp:
            model(ids, mask)
        synchronize(device)

    return forward


def _attention_stand_in(q, k, v, *, causal, key_padding_mask=None):
    """Takes the place of the engine's dense attention: `v` itself, `[B, H, N, D]`."""
    return v


@contextlib.contextmanager
def _no_attention() -> Iterator[None]:
    """The engine's dense attention call is the stand-in while inside (one process,
    cases run one at a time, so the WHA and dense cases never see it)."""
    from stretto.kernels.wha import module as attention_module

    saved = attention_module.dense_attention
    attention_module.dense_attention = _attention_stand_in
    try:
        yield
    finally:
        attention_module.dense_attention = saved


def _unavailable() -> str | None:
    try:
        from stretto.engine import ModelConfig, MusicModel, Trainer  # noqa: F401
        from stretto.kernels import hierarchical_attention  # noqa: F401
    except ImportError as exc:
        return f"stretto.engine is not importable ({exc})"
    return None


def run(
    *,
    quick: bool,
    device: str,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
) -> list[dict]:
    """Rows for every preset x mode x length x phase x provider (see the module docstring)."""
    presets = list(presets or (("tiny",) if quick else ("base",)))
    lens = list(seq_lens or ((512,) if quick else shapes.SEQ_LENS))
    cuda = device.startswith("cuda")
    dtype = shapes.dtype_name(device)
    reason = _unavailable()
    rows: list[dict] = []
    cases = [(p, m, n, ph) for p in presets for m in MODES for n in lens for ph in PHASES]
    for i, (preset, mode, n, phase) in enumerate(cases, 1):
        batch = shapes.batch_size(device, n, kind="model")
        shape = f"{mode}-{preset}-B{batch}-N{n}"
        what = {"mode": ROW_MODE[phase], "shape": shape, "seq_len": n, "dtype": dtype}
        if reason:
            rows += [
                skipped_row(SUITE, reason, provider=f"{PROVIDER[a]}-{mode}", **what)
                for a in ATTENTIONS
            ]
            continue
        progress(
            f"[model] {i}/{len(cases)}: wha, dense, no-attention; {mode} {ROW_MODE[phase]}, "
            f"preset {preset}, batch {batch}, {n} tokens"
        )
        rows += _measure_case(mode, phase, preset, batch, n, device, cuda, quick, what)
    return rows


def _measure_case(mode, phase, preset, batch, n, device, cuda, quick, what) -> list[dict]:
    import torch

    args = {"mode": mode, "phase": phase, "preset": preset, "batch": batch, "seq_len": n}
    timings, memory, errors = {}, {}, {}
    cases = {}
    for attention in ATTENTIONS:
        try:
            cases[attention] = build_case(attention, device=device, **args)
        except Exception as exc:  # reported in the row, never hidden
            errors[attention] = f"error: {type(exc).__name__}: {exc}"
    if cuda:
        for attention, fn in cases.items():
            try:
                timings[attention] = bench_cuda(fn, warmup_ms=50, rep_ms=200 if quick else 500)
                memory[attention] = cuda_peak_memory_mb(fn)
            except Exception as exc:
                errors[attention] = f"error: {type(exc).__name__}: {exc}"
            torch.cuda.empty_cache()
    elif cases:
        try:
            timings = bench_cpu(cases, warmup=1, repeats=3 if quick else 5, budget_s=120)
        except Exception as exc:
            errors.update({a: f"error: {type(exc).__name__}: {exc}" for a in cases})
        if not quick:
            for attention in cases:
                memory[attention] = peak_rss_in_child(
                    build_case,
                    {"attention": attention, "device": device, **args},
                    timeout_s=MEMORY_CHILD_TIMEOUT_S,
                )
    cases.clear()

    rows = []
    for attention in ATTENTIONS:
        row = {"suite": SUITE, "provider": f"{PROVIDER[attention]}-{mode}", **what}
        extra = {"preset": preset, "batch": batch, "model_mode": mode, "attention": attention}
        if attention in errors or attention not in timings:
            row["status"] = errors.get(attention, "error: not measured")
            row["extra"] = extra
            rows.append(row)
            continue
        t = timings[attention]
        row.update(t.as_row())
        row["tokens_per_s"] = batch * n / (t.median_ms / 1e3)
        mem = memory.get(attention, {})
        if "peak_mem_mb" in mem:
            row["peak_mem_mb"] = mem["peak_mem_mb"]
            extra.update({k: v for k, v in mem.items() if k != "peak_mem_mb"})
        elif "error" in mem:
            extra["memory_error"] = mem["error"]
        if attention == "none":
            extra["ceiling"] = CEILING_NOTE
        if attention != "dense" and "dense" in timings:
            extra["speedup_vs_dense"] = timings["dense"].median_ms / t.median_ms
        if attention == "wha" and "dense" in timings and "none" in timings:
            extra["ceiling_speedup_vs_dense"] = (
                timings["dense"].median_ms / timings["none"].median_ms
            )
        row["extra"] = extra
        row["status"] = "ok"
        rows.append(row)
    return rows
