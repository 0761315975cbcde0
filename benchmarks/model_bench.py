"""The model: train-step and forward tokens/s per mode, WHA against dense SDPA attention.

For each mode (transformer, vae, vae_gan) and length (512, 1024, 2048), the `base`
preset runs once with windowed hierarchical attention (`attention="wha"`, the
model's own) and once with full SDPA attention (`attention="dense"`, everything else
identical). Phases: `train` is one `Trainer.train_step` (loss, backward, clipping,
AdamW; vae_gan adds the discriminator step), `forward` is `model(ids)` under
inference mode. GPU: CUDA-event timings (bf16 autocast) and peak CUDA memory. CPU:
float32, both attentions interleaved in one process so their ratio is the result;
peak resident memory from a spawned child per case (full runs only).

Rows: `mode` is the phase (`train-step` or `fwd`), `provider` the attention and model
mode (`wha-transformer`, `dense-vae`, ...), and `shape` names the model mode too
(`vae-B4-N2048`), so the report's "vs best" column compares WHA with dense for the
same model and phase only, and plots draw one line per attention and model. `extra`
carries the preset, the batch size and, when both attentions were measured in this
run, `speedup_vs_dense` (dense median / WHA median). A quick run uses the `tiny`
preset at 512 only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks import shapes
from benchmarks.core import skipped_row
from benchmarks.timing import (
    bench_cpu,
    bench_cuda,
    cuda_peak_memory_mb,
    peak_rss_in_child,
    synchronize,
)

SUITE = "model"
MODES = ("transformer", "vae", "vae_gan")
ATTENTIONS = ("wha", "dense")
PHASES = ("train", "forward")
ROW_MODE = {"train": "train-step", "forward": "fwd"}


def build_case(
    attention: str, mode: str, phase: str, preset: str, batch: int, seq_len: int, device: str
) -> Callable[[], Any]:
    """A model of `preset`/`mode` with `attention`, and the callable running one `phase`."""
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
            model, [], config=TrainConfig(steps=10**9, warmup_steps=0), device=device,
            progress=False,
        )  # fmt: skip
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


def _unavailable() -> str | None:
    try:
        from stretto.engine import ModelConfig, MusicModel, Trainer  # noqa: F401
        from stretto.kernels import hierarchical_attention  # noqa: F401
    except ImportError as exc:
        return f"stretto.engine is not importable ({exc})"
    return None


def run(*, quick: bool, device: str) -> list[dict]:
    """Rows for every mode x length x phase x attention (see the module docstring)."""
    preset = "tiny" if quick else "base"
    lens = (512,) if quick else shapes.SEQ_LENS
    cuda = device.startswith("cuda")
    dtype = shapes.dtype_name(device)
    reason = _unavailable()
    rows: list[dict] = []
    for mode in MODES:
        for n in lens:
            batch = shapes.batch_size(device, n, kind="model")
            shape = f"{mode}-B{batch}-N{n}"
            for phase in PHASES:
                what = {"mode": ROW_MODE[phase], "shape": shape, "seq_len": n, "dtype": dtype}
                if reason:
                    rows += [
                        skipped_row(SUITE, reason, provider=f"{a}-{mode}", **what)
                        for a in ATTENTIONS
                    ]
                    continue
                rows += _measure_pair(mode, phase, preset, batch, n, device, cuda, quick, what)
    return rows


def _measure_pair(mode, phase, preset, batch, n, device, cuda, quick, what) -> list[dict]:
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
                    build_case, {"attention": attention, "device": device, **args}
                )
    cases.clear()

    rows = []
    for attention in ATTENTIONS:
        row = {"suite": SUITE, "provider": f"{attention}-{mode}", **what}
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
        if attention == "wha" and "dense" in timings:
            extra["speedup_vs_dense"] = timings["dense"].median_ms / t.median_ms
        row["extra"] = extra
        row["status"] = "ok"
        rows.append(row)
    return rows
