"""Greedy generation of 2048 tokens, small preset, batch 1, on the CPU: the decode step
compiled once (`generate(compile_step=True)`) against the eager step, in one process.

    .venv/bin/python benchmarks/results/cpu-amd-epyc/2026-11-28-compiled-decode/compiled_gen.py

The first compiled call includes torch.compile's compilation; the second reuses it.
"""

import time

import torch

from stretto.engine import ModelConfig, MusicModel
from stretto.tokenizer import Vocabulary

vocab = Vocabulary()
n = 2048
config = ModelConfig.from_vocab(vocab, mode="transformer", preset="small", max_seq_len=n + 1)
model = MusicModel(config).eval()
never_end = torch.zeros(vocab.size)
never_end[vocab.END] = float("-inf")
model.head.register_forward_hook(lambda m, a, out: out + never_end)
for label, kw in (
    ("compiled (first call: compile + run)", dict(compile_step=True)),
    ("compiled (second call)", dict(compile_step=True)),
    ("eager", dict()),
):
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(max_new_tokens=n, temperature=0, constrained=False, **kw)
    dt = time.perf_counter() - t
    print(f"{label}: {out.shape[1] - 1} tokens in {dt:.1f} s, {n / dt:.0f} tokens/s", flush=True)
