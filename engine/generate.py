"""Autoregressive generation: prefill once, then one token at a time through the model's
own decoder forward with one bounded `HierarchicalKVCache` per block, with sampling
(temperature, top-k, top-p) and the grammar mask of `stretto.engine.grammar` kept on
the device.

Sampling order at each step: the logits are divided by the temperature; the grammar
and its generation policies apply to the tempered logits (`Grammar.sampling_logits`:
the note limit under `at_limit`, the NOTE_OFF family under `note_off`, so "spread"
keeps the family's probability of the distribution actually sampled, and the NOTE_ONs
of sounding pitches under `note_on`); then the pitch temperature (the NOTE_ON ids
sharpened among themselves, their total probability kept: `sharpen_family`); then
top-k, then top-p, then the draw. Temperature 0 applies the grammar to the raw logits
and takes the argmax.

Memory: each decoder layer holds a ring of the last `window` keys/values
(`[B, H, window, D]`) plus running block sums (`[B, H, ceil(L / block), D]`, L = prompt +
new tokens), so memory is flat in the generated length apart from that per-block
summary buffer (2 x L / block x D numbers per head and layer, e.g. 1/64 of a full KV
cache at block 64). Cost per token is O(window + L / block), as in the full forward.

Positions: the cache is sized for the requested length, and tokens keep their absolute
rotary positions. The prompt must fit the model's `max_seq_len`; generating past it is
allowed and extrapolates (positions, and the number of visible block summaries, go
beyond what training showed the model), which is what a sliding-window model can do
but the result's quality is the model's affair.

With `config.attention == "dense"` (the benchmark baseline) the cache keeps every key
(window = L, no summaries): exact, but memory grows with L.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch._dynamo.utils import counters, get_compilation_metrics
from torch._inductor import list_mode_options

from stretto.tokenizer.vocabulary import Vocabulary

from .decode_matmul import DECODE_MATMULS
from .grammar import (
    DEFAULT_MAX_NOTE_STEPS,
    DEFAULT_MAX_SILENCE_STEPS,
    GRAMMAR_RULES,
    Grammar,
    GrammarState,
    check_policies,
)
from .notes import DecodeCache

if TYPE_CHECKING:  # annotations only: model.py imports this module
    from .model import MusicModel

_VOCAB = Vocabulary()
# Where a vae's z comes from when none is given: the aggregate posterior (the encoder's
# posteriors over the training windows, MusicModel.latent_distribution) or N(0, I).
LATENTS = ("posterior", "prior")
STOP_CHECK_EVERY = 32  # steps between the host syncs that ask "has every sequence ended?"
# The compiled step is one function compiled once per shape of its caches (batch, and
# prompt plus new tokens over the block): Dynamo's default limit of 8 compiles of one
# function made the ninth generation length of a process fail (fullgraph=True). A
# step's first call runs under this limit instead.
STEP_RECOMPILE_LIMIT = 256
# The sampling `stretto generate`, the demo and the audit use for a model of each mode
# (`generate()` itself keeps temperature 1 without top-p, and the grammar's measured
# default policies): the quality suite's pick for that mode among its grammar policies
# (for the vae modes each with z from the aggregate posterior and from the prior), then
# temperatures and top-p, then pitch temperatures, chosen on held-out half A by the
# smallest mean distance as a multiple of real against real, and read on half B, which
# the choice never saw: run 2026-12-07-d50b1b6 (tiny models with the note and instrument
# states trained 400 steps from two seeds on the dev corpus, each seed's pieces pooled;
# docs/engine.md, Generation), which tests/test_quality_bench.py holds this table to (a
# setting the pick leaves out is generate()'s default).
LISTENING_SAMPLING: dict[str, dict[str, str | float | None]] = {
    "transformer": {
        "note_off": "spread",
        "at_limit": "freeze",
        "note_on": "off-first",
        "temperature": 1.0,
        "top_p": None,
        "pitch_temperature": 0.4,
    },
    "vae": {
        "note_off": "spread",
        "at_limit": "freeze",
        "note_on": "restrike",
        "latent": "posterior",
        "temperature": 1.0,
        "top_p": 0.95,
        "pitch_temperature": 1.0,
    },
    "vae_gan": {
        "note_off": "spread",
        "at_limit": "release",
        "note_on": "off-first",
        "latent": "posterior",
        "temperature": 1.0,
        "top_p": None,
        "pitch_temperature": 0.6,
    },
}


# compile_step="auto": compile when a call decodes at least this many tokens per row on
# a device of this type. CPU (small preset, batch 1, generate run 2026-12-07-974a079):
# with Inductor's disk cache warm, the first compiled call in a process takes 4.20 s for
# 1,024 tokens and 5.01 s for 2,048, eager 3.60 s and 8.13 s, so compiling pays from
# about 1,200 tokens (where the two lines cross); the base preset gains more per token,
# batches more per step. A device type without a measurement decodes eagerly.
AUTO_COMPILE_MIN_TOKENS = {"cpu": 1200}


def listening_sampling(mode: str) -> dict[str, str | float | None]:
    """The measured sampling for a model of `mode` (`note_off`, `at_limit`, `note_on`,
    `temperature`, `top_p`, `pitch_temperature`, and `latent` for the vae modes): a copy of
    `LISTENING_SAMPLING[mode]`, for `generate(**listening_sampling(mode))`."""
    if mode not in LISTENING_SAMPLING:
        raise ValueError(f"mode must be one of {tuple(LISTENING_SAMPLING)}, got {mode!r}")
    return dict(LISTENING_SAMPLING[mode])


def check_sampling(
    temperature: float, top_k: int | None, top_p: float | None, pitch_temperature: float = 1.0
) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if (
        not isinstance(pitch_temperature, (int, float))
        or isinstance(pitch_temperature, bool)
        or not 0 < pitch_temperature < float("inf")
    ):
        raise ValueError(
            f"pitch_temperature must be a finite number > 0 (1 = off), got {pitch_temperature!r}"
        )


def sharpen_family(logits: torch.Tensor, family: range, temperature: float) -> torch.Tensor:
    """`logits` `[..., V]` with the ids of `family` divided by `temperature` among
    themselves and shifted so that the family's total probability is what it was: below 1
    the choice inside the family is sharper (which pitch), while how often the family is
    sampled (how often a note is struck) does not move. Forbidden ids (-inf) stay
    forbidden; a family with every id forbidden is left as it is."""
    if temperature == 1.0:
        return logits
    part = logits[..., family.start : family.stop]
    mass = part.logsumexp(-1, keepdim=True)
    scaled = part / temperature
    scaled = scaled - scaled.logsumexp(-1, keepdim=True) + mass
    kept = torch.where(mass.isfinite(), scaled, part)
    return torch.cat([logits[..., : family.start], kept, logits[..., family.stop :]], -1)


def policy_logits(
    logits: torch.Tensor,
    temperature: float,
    grammar: Grammar | None = None,
    state: GrammarState | None = None,
    policies: dict | None = None,
    pitch_temperature: float = 1.0,
) -> torch.Tensor:
    """What top-k, top-p and the draw see (module docstring, "Sampling order"): `logits`
    `[B, V]` divided by `temperature` (as they are at 0, greedy), then, with `grammar`,
    its rules and generation `policies` after `state` (`Grammar.sampling_logits`:
    forbidden ids at -inf), then the NOTE_ON ids sharpened by `pitch_temperature`
    (`sharpen_family`). Sample them with `sample` at temperature 1 (0: greedy)."""
    if temperature > 0:
        logits = logits / temperature
    if grammar is not None:
        logits = grammar.sampling_logits(state, logits, **policies)
    return sharpen_family(logits, _VOCAB.NOTE_ON, pitch_temperature)


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits `[B, V]` (masked entries -inf) -> token ids `[B]`, on the device.

    temperature 0 is greedy (argmax); top_k keeps the k largest (k > V keeps all);
    top_p keeps the smallest set whose probability reaches p (1.0 keeps all). Sampling
    is an exponential race (argmax of p / E, E ~ Exp(1)), so no host sync. With
    `shared_noise` every row races against the same draw of E (rows whose
    distributions agree pick the same token: what an interpolation compares).
    `noise`: E drawn beforehand (`[B, V]`, or `[1, V]` shared), so that a compiled step
    draws nothing and picks the tokens the eager step picks; drawn here when None.
    """
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token >= p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if noise is None:
        shape = (1, probs.shape[-1]) if shared_noise else probs.shape
        noise = torch.empty(shape, device=probs.device).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(-1)


# -- generate ----------------------------------------------------------------------------
def _prompt(model, prompt, batch_size: int, device) -> torch.Tensor:
    c = model.config
    v_start = _vocab(model).START
    if prompt is None:
        return torch.full((batch_size, 1), v_start, dtype=torch.long, device=device)
    if not isinstance(prompt, torch.Tensor):
        prompt = torch.as_tensor(prompt)
    if prompt.dtype.is_floating_point or prompt.dtype == torch.bool:
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    if prompt.dim() == 1:
        prompt = prompt[None]
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be [N] or [B, N] with N >= 1, got {list(prompt.shape)}")
    if prompt.shape[1] > c.max_seq_len:
        raise ValueError(
            f"prompt of {prompt.shape[1]} tokens exceeds the model's max_seq_len {c.max_seq_len}"
        )
    lo, hi = int(prompt.min()), int(prompt.max())
    if lo < 0 or hi >= c.vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {c.vocab_size})")
    if bool((prompt == c.pad_id).any()):
        raise ValueError("the prompt holds PAD: prompts are unpadded (rows of one length)")
    return prompt.to(device=device, dtype=torch.long).expand(batch_size, -1)


def _vocab(model: MusicModel) -> Vocabulary:
    v = Vocabulary()
    if v.signature != model.config.vocab_signature:
        raise ValueError("the model was built for another vocabulary than this tokenizer's")
    return v


def _latent(model, z, batch_size: int, generator, device, dtype, latent: str = "posterior"):
    c = model.config
    if model.encoder is None:
        return None
    if z is None:
        z = torch.randn(batch_size, c.latent_dim, generator=generator, device=device)
        if latent == "posterior":
            mean, std = model.latent_distribution()
            z = mean.to(device) + std.to(device) * z
    if z.dim() == 1:
        z = z[None]
    if z.dim() != 2 or z.shape[1] != c.latent_dim:
        raise ValueError(
            f"z must be [latent_dim] or [B, latent_dim={c.latent_dim}], got {list(z.shape)}"
        )
    return z.to(device=device, dtype=dtype).expand(batch_size, -1)


def _batch(batch_size: int, prompt, z) -> int:
    """The batch: `batch_size`, or the rows of a `[B, N]` prompt or a `[B, L]` z; every
    one of them is 1 or that batch."""
    rows = {"batch_size": batch_size}
    for name, x in (("prompt", prompt), ("z", z)):
        if isinstance(x, torch.Tensor) and x.dim() == 2:
            rows[name] = x.shape[0]
    b = max(rows.values())
    if any(r not in (1, b) for r in rows.values()):
        raise ValueError(f"batch sizes disagree: {rows} (each must be 1 or the same B)")
    return b


@torch.no_grad()
def generate(
    model: MusicModel,
    prompt: torch.Tensor | Sequence[int] | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    pitch_temperature: float = 1.0,
    seed: int | None = None,
    batch_size: int = 1,
    z: torch.Tensor | None = None,
    latent: str = "posterior",
    constrained: bool = True,
    max_note_steps: int = DEFAULT_MAX_NOTE_STEPS,
    max_silence_steps: int = DEFAULT_MAX_SILENCE_STEPS,
    note_off: str = "spread",
    at_limit: str = "release",
    note_on: str = "off-first",
    shared_noise: bool = False,
    compile_step: bool | str = False,
) -> torch.Tensor:
    """Sample continuations of `model` (`model.generate(prompt, ...)` calls this);
    returns LongTensor `[B, N + T]` (prompt, then new tokens).

    `prompt`: ids `[N]` or `[B, N]` (default `[START]`), N <= max_seq_len, prefilled
    once; then up to `max_new_tokens` tokens are decoded one at a time through one
    bounded cache per decoder block (module docstring). A row that
    emits END is padded with PAD afterwards; the output is cut after the last END
    when every row has ended. vae modes: `z` `[latent_dim]` or `[B, latent_dim]`;
    when None, drawn from the aggregate posterior (`latent="posterior"`,
    `MusicModel.latent_distribution`) or from the prior N(0, I) (`latent="prior"`),
    the same draw scaled either way. Sampling: `temperature` (0 = greedy), `top_k`
    (larger than the vocabulary keeps all), `top_p` (1.0 keeps all),
    `pitch_temperature` (the NOTE_ON ids alone, their total probability kept: below 1 a
    narrower choice of pitch at the same rate of notes; 1 = off); `seed` makes it
    reproducible on one device. `constrained` masks the logits with the grammar of
    `stretto.engine.grammar`, so the output passes `stretto.tokenizer.validate`; the
    prompt must then keep the grammar too (else ValueError naming the position, the
    rule and the token). Its generation policies: no note longer than
    `max_note_steps` x 15.625 ms, with `at_limit="release"` (the oldest note is
    released when it reaches the limit) or `"freeze"` (time stops until it is);
    `note_off="spread"` (the probability of NOTE_OFFs of silent pitches goes to the
    sounding pitches) or `"mask"` (it is renormalized over every allowed token);
    `note_on="off-first"` (the probability of a NOTE_ON of a sounding pitch goes to
    that pitch's NOTE_OFF) or `"restrike"` (it strikes the pitch again, as the model
    scores it); no silence (no note sounding) longer than `max_silence_steps` steps,
    at the start of the piece or inside it.
    `shared_noise`: every row samples with the same random draw at each step.
    `compile_step`: True compiles the whole token step once per process and shapes
    (`TokenStep`; on CUDA captured as a CUDA graph and replayed per token unless
    Inductor skips it), with the same tokens as the eager step; a string is a
    `torch.compile` mode; "auto" compiles when the call decodes at least
    `AUTO_COMPILE_MIN_TOKENS[device type]` tokens per row (eagerly where unmeasured).
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    check_sampling(temperature, top_k, top_p, pitch_temperature)
    check_policies(note_off, at_limit, note_on)
    if latent not in LATENTS:
        raise ValueError(f"latent must be one of {', '.join(LATENTS)}, got {latent!r}")
    policies = {"note_off": note_off, "at_limit": at_limit, "note_on": note_on}
    sampling = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "pitch_temperature": pitch_temperature,
        "shared_noise": shared_noise,
    }
    vocab = _vocab(model)
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    if model.encoder is None and z is not None:
        raise ValueError(f"mode {model.config.mode!r} takes no z (vae modes only)")
    if prompt is not None and not isinstance(prompt, torch.Tensor):
        prompt = torch.as_tensor(prompt)
    if z is not None:
        z = torch.as_tensor(z)
    batch_size = _batch(batch_size, prompt, z)
    modes = ("auto", *list_mode_options())
    if not (isinstance(compile_step, bool) or compile_step in modes):
        raise ValueError(
            f"compile_step must be a bool or one of {', '.join(modes)}, got {compile_step!r}"
        )
    if compile_step == "auto":
        least = AUTO_COMPILE_MIN_TOKENS.get(device.type)
        compile_step = least is not None and max_new_tokens >= least
    z = _latent(model, z, batch_size, generator, device, dtype, latent)
    ids = _prompt(model, prompt, batch_size, device)
    grammar = state = None
    if constrained:
        grammar = Grammar(vocab, max_note_steps=max_note_steps, max_silence_steps=max_silence_steps)
        state = _read_prompt(grammar, ids, vocab)
    if max_new_tokens == 0:
        return ids.clone()

    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        out = sample_tokens(
            model,
            ids,
            z,
            max_new_tokens,
            sampling=sampling,
            grammar=grammar,
            state=state,
            policies=policies,
            generator=generator,
            compile_step=compile_step,
        )
    finally:
        model.train(was_training)
    # Columns after the last END of every row are padding only: trim them.
    is_end = out == vocab.END
    length = torch.where(is_end.any(1), is_end.int().argmax(1) + 1, out.shape[1])  # [B]
    length = torch.where((ids == vocab.END).any(1), 0, length)
    return torch.cat([ids, out[:, : int(length.max())]], dim=1)


class DecodeStep:
    """One decoding step of `model` over its caches: token ids `[B]` -> logits `[B, V]`.

    `cache` is the list from `model.new_cache` (one `HierarchicalKVCache` per decoder
    block), `z` the latent `[B, latent_dim]` of the vae modes or None. The step has the
    same shapes at every token (positions live on the device, the cache is attended
    whole under masks), so `compile=True` compiles it once with
    `torch.compile(fullgraph=True, dynamic=False)`: on CUDA with
    `mode="reduce-overhead"`, which asks Inductor to capture the step as a CUDA graph
    and replay it for each token, elsewhere with the default mode. A string picks
    another `torch.compile` mode (`torch._inductor.list_mode_options()`). On the CPU
    the step is compiled with that mode's options and `decode_matmul.DECODE_MATMULS`,
    which does its matrix products at the speed of reading the weights.

    Inductor captures a graph only if the inputs the step mutates are static; otherwise
    it skips the graph without an error (a log line and a counter). The tensors of the
    step outside the model, which Dynamo does not mark itself, are `static_tensors()`
    (each cache's `HierarchicalKVCache.tensors()`, then z): a compiled step marks them
    with `torch._dynamo.mark_static_address` (unguarded: per torch's documentation,
    caches at other addresses re-record the graph instead of recompiling) before its
    first call. `cudagraph_skips()` and `cudagraph_skip_reasons()` say what Inductor
    skipped since the step was built.

    Eager (the default) slices the cache to what is filled, which costs fewer FLOPs
    early in a piece.
    """

    def __init__(
        self,
        model: MusicModel,
        cache: DecodeCache,
        z: torch.Tensor | None,
        *,
        compile: bool | str = False,
    ):
        modes = list_mode_options()
        if not (isinstance(compile, bool) or (isinstance(compile, str) and compile in modes)):
            raise ValueError(
                f"compile must be a bool or a torch.compile mode ({', '.join(modes)}), "
                f"got {compile!r}"
            )
        self.model, self.cache, self.z = model, cache, z
        self.compiled = compile is not False
        self._called = False
        # Inductor's records are per process: remember where they stood.
        self._skips_before = counters["inductor"]["cudagraph_skips"]
        self._metrics_before = get_compilation_metrics()[-1:]
        fn = self._step
        if self.compiled:
            for t in self.static_tensors():
                torch._dynamo.mark_static_address(t)
            device = next(model.parameters()).device
            mode = compile
            if compile is True:
                mode = "reduce-overhead" if device.type == "cuda" else None
            if device.type == "cpu":  # the mode's options and the CPU's matrix products
                options = {
                    **list_mode_options(mode or "default"),
                    "post_grad_custom_post_pass": DECODE_MATMULS,
                }
                fn = torch.compile(fn, fullgraph=True, dynamic=False, options=options)
            else:
                fn = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        self._fn = fn

    def static_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors the step reads or writes in place besides the model's own
        parameters and buffers: every block's cache tensors, the note and instrument
        states' tracker (`MusicModel.new_cache`), then z (vae modes)."""
        held = self.cache.tensors()
        return held if self.z is None else (*held, self.z)

    def cudagraph_skips(self) -> int:
        """How many times Inductor skipped a CUDA graph since this step was built (a
        compiled step compiles on its first call; the count is per process, so it
        includes other compilations run meanwhile). 0 with no CUDA graph asked for."""
        return counters["inductor"]["cudagraph_skips"] - self._skips_before

    def cudagraph_skip_reasons(self) -> list[str]:
        """The reasons Inductor recorded for those skips (it records one only for graphs
        on CUDA; the last 64 compilations of the process are kept)."""
        metrics = get_compilation_metrics()
        start = 0
        if self._metrics_before:
            last = self._metrics_before[0]
            start = next((i + 1 for i, m in enumerate(metrics) if m is last), 0)
        return [m.cudagraph_skip_reason for m in metrics[start:] if m.cudagraph_skip_reason]

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decoder_logits(tokens[:, None], None, self.z, None, self.cache)[:, 0]

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        if self._called:
            return self._fn(*inputs)
        # The first call compiles the step for these caches' shapes, or picks the code
        # compiled for them: a process may hold more shapes than Dynamo's default limit.
        with torch._dynamo.config.patch(recompile_limit=STEP_RECOMPILE_LIMIT):
            out = self._fn(*inputs)
        self._called = True
        return out


class TokenStep(DecodeStep):
    """One whole token of generation as one function of fixed shapes: noise `[B, V]`
    (or `[1, V]`, or None when greedy) -> token ids `[B]`.

    From the next token's logits (held in `logits`, `[B, V]`), it applies the
    temperature, the grammar mask and its policies (`Grammar.sampling_logits`), the
    pitch temperature, samples (top-k, top-p, the exponential race against the `noise`
    drawn beforehand), puts PAD
    on the rows that have ended, updates the grammar state and `ended` (`[B]`), and runs
    the model's one-token step (`DecodeStep`) to write the next logits into `logits`.
    Every tensor it touches (caches, note tracker, grammar state, `logits`, `ended`) is
    written in place, so `compile=True` compiles it once as one graph (on CUDA one CUDA
    graph per token, its inputs marked static); `generate` runs it with the eager step
    as the reference: for the same noise the compiled step picks the same tokens.

    `sampling` holds `temperature`, `top_k`, `top_p` and optionally `pitch_temperature`
    (see `generate`; a `shared_noise` entry is the caller's, who draws `[1, V]` noise
    for it), `policies` `note_off`, `at_limit` and `note_on`; `grammar` None samples
    without constraints.
    `record_allowed`: each step also writes the ids the grammar and its policies allow
    (the tempered logits' finite entries, before top-k and top-p) into `allowed`
    (`[B, V]` bool, all True without a grammar).
    """

    def __init__(
        self,
        model: MusicModel,
        cache: DecodeCache,
        z: torch.Tensor | None,
        logits: torch.Tensor,
        *,
        ended: torch.Tensor,
        grammar: Grammar | None,
        state: GrammarState | None,
        sampling: dict,
        policies: dict,
        compile: bool | str = False,
        record_allowed: bool = False,
    ):
        self.logits = logits.float().clone()  # owned: rewritten in place at every token
        self.ended = ended.clone()
        self.allowed = None
        if record_allowed:
            self.allowed = torch.ones(self.logits.shape, dtype=torch.bool, device=logits.device)
        self.grammar, self.state, self.policies = grammar, state, policies
        # The temperature goes first, so the grammar's policies see the tempered logits.
        self.temperature = sampling["temperature"]
        self.pitch_temperature = sampling.get("pitch_temperature", 1.0)
        self.sampling = {
            "temperature": 1.0 if self.temperature > 0 else 0.0,
            "top_k": sampling["top_k"],
            "top_p": sampling["top_p"],
        }
        vocab = Vocabulary()
        self.end_id, self.pad_id = vocab.END, vocab.PAD
        if grammar is not None:
            grammar.tables(self.logits.device)  # built eagerly, read while tracing
        super().__init__(model, cache, z, compile=compile)

    def static_tensors(self) -> tuple[torch.Tensor, ...]:
        """`DecodeStep.static_tensors`, then `logits`, `ended`, the grammar state and
        the grammar's constant tables."""
        own = (self.logits, self.ended)
        if self.allowed is not None:
            own = (*own, self.allowed)
        if self.grammar is not None:
            tables = self.grammar.tables(self.logits.device).values()
            own = (*own, *self.state.tensors(), *tables)
        return (*super().static_tensors(), *own)

    def _step(self, noise: torch.Tensor | None) -> torch.Tensor:
        logits = policy_logits(
            self.logits,
            self.temperature,
            self.grammar,
            self.state,
            self.policies,
            self.pitch_temperature,
        )
        if self.allowed is not None:
            self.allowed.copy_(logits.isfinite())
        token = sample(logits, noise=noise, **self.sampling)
        token = torch.where(self.ended, self.pad_id, token)
        if self.grammar is not None:
            self.grammar.advance(self.state, token)
        self.ended |= token == self.end_id
        self.logits.copy_(DecodeStep._step(self, token))
        return token


def _read_prompt(grammar: Grammar, ids: torch.Tensor, vocab: Vocabulary) -> GrammarState:
    """The grammar state after the prompt `ids` `[B, N]`, or ValueError at the first
    token the grammar does not allow. On the host: N tiny steps, no device launches."""
    host = ids.cpu()
    b, n = host.shape
    state = grammar.initial_state(b, "cpu")
    for pos in range(n):
        rule = grammar.broken_rule(state, host[:, pos])  # [B]
        if bool((rule >= 0).any()):
            row = int((rule >= 0).nonzero()[0, 0])
            where = f"position {pos}" + (f" of row {row}" if b > 1 else "")
            token = vocab.describe(int(host[row, pos]))
            raise ValueError(
                f"the prompt breaks the grammar at {where} ({GRAMMAR_RULES[int(rule[row])]}: "
                f"{token} is not allowed there); pass constrained=False to continue it anyway"
            )
        grammar.advance(state, host[:, pos])
    return grammar.to(state, ids.device)


@torch.no_grad()
def sample_tokens(
    model: MusicModel,
    ids: torch.Tensor,
    z: torch.Tensor | None,
    steps: int,
    *,
    sampling: dict,
    policies: dict,
    grammar: Grammar | None = None,
    state: GrammarState | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    compile_step: bool | str = False,
) -> torch.Tensor:
    """The sampling loop of `generate` and of the vae_gan's rollout: prefill `ids`
    `[B, N]` (unpadded) through the decoder with fresh caches, then sample `steps`
    tokens, one `TokenStep` each, in the model's current mode; returns them `[B, steps]`,
    PAD after a row's END. No checks: `generate` checks its arguments first.

    `sampling` and `policies` as in `TokenStep`; `grammar` None samples without rules,
    else `state` is its state after `ids` (it advances in place). `noise`: the race's
    exponential draws `[steps, B, V]` (`[steps, 1, V]` with `shared_noise`), drawn
    here from `generator`, `STOP_CHECK_EVERY` tokens at a time, when None. `allowed`:
    a bool buffer `[B, steps, V]` that receives the ids the grammar and its policies
    allowed before each token. The host stores each token and, every `STOP_CHECK_EVERY`
    tokens, stops once every row has ended (the rest is PAD); with `allowed` it runs
    every step.
    """
    b, n = ids.shape
    device = ids.device
    vocab = Vocabulary()
    cache = model.new_cache(b, n + steps)
    # Prompts hold no PAD, so no padding mask: every token is real.
    logits = model.decoder_logits(ids, None, z, None, cache)[:, -1]  # [B, V]
    step = TokenStep(
        model,
        cache,
        z,
        logits,
        ended=(ids == vocab.END).any(1),
        grammar=grammar,
        state=state,
        sampling=sampling,
        policies=policies,
        compile=compile_step,
        record_allowed=allowed is not None,
    )
    noise_rows = 1 if sampling.get("shared_noise") else b
    draws = sampling["temperature"] > 0
    out = torch.full((b, steps), vocab.PAD, dtype=torch.long, device=device)
    chunk = None

    def take(i: int) -> bool:
        """Token i of every row into `out`; True once the host has seen every row end."""
        nonlocal chunk
        k = i % STOP_CHECK_EVERY
        if k == 0 and draws and noise is None:  # the next tokens' noise, drawn in one go
            count = min(STOP_CHECK_EVERY, steps - i)
            chunk = torch.empty(count, noise_rows, vocab.size, device=device)
            chunk.exponential_(1.0, generator=generator)
        if not draws:
            out[:, i] = step(None)
        else:
            out[:, i] = step(noise[i] if noise is not None else chunk[k])
        if allowed is not None:
            allowed[:, i] = step.allowed
            return False
        return (i + 1) % STOP_CHECK_EVERY == 0 and bool(step.ended.all())

    # The first token runs under Dynamo's full guards: it compiles the step or picks the
    # compiled code for these shapes. Every later token calls it with the same tensors
    # (the noise: a view of the same shape, dtype and strides), so a compiled step checks
    # only the guards that tell its compiled entries apart (per token, the full check
    # costs about as much as a fifth of the small preset's step on a CPU).
    if steps and not take(0):
        with _guards_checked_once(step):
            for i in range(1, steps):
                if take(i):
                    break
    return out


def _guards_checked_once(step: DecodeStep):
    """For a compiled step: Dynamo checks only the guards that tell its compiled entries
    apart (`skip_guard_eval_unsafe`), for the calls that repeat one already checked in
    full. Nothing for an eager step."""
    if not step.compiled:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)


# -- interpolation -------------------------------------------------------------------------
def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points `[steps, L]` on the great circle from `a` to `b` (`[L]` each),
    endpoints included; their norms are interpolated linearly. Latents drawn from a
    Gaussian prior have nearly equal norms, so the straight line's midpoints (shorter
    than both ends) are untypical; the arc is not."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = torch.linspace(0, 1, steps, device=a.device, dtype=torch.float64)[:, None]  # [K, 1]
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    ua, ub = a64 / na.clamp(min=1e-12), b64 / nb.clamp(min=1e-12)
    omega = torch.arccos((ua * ub).sum().clamp(-1.0, 1.0))
    if float(omega) < 1e-6:  # parallel: the arc is the line
        direction = (1 - t) * ua + t * ub
    else:
        direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / omega.sin()
    return (direction * ((1 - t) * na + t * nb)).to(a.dtype)


@torch.no_grad()
def interpolate(
    model: MusicModel,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    steps: int,
    max_new_tokens: int,
    seed: int | None = 0,
    **sampling,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate along the arc between two windows' latent means (vae modes).

    `a`, `b`: token ids `[N]` of two windows (encode them at the length the encoder was
    trained on). Returns (z `[steps, L]`, ids `[steps, T]`): `slerp` from mu(a) to
    mu(b), every point decoded with the same sampling noise at each step (one draw per
    step shared by all rows), so the pieces differ only by z.
    """
    if model.encoder is None:
        raise ValueError(f"mode {model.config.mode!r} has no latent space (vae modes only)")
    device = next(model.parameters()).device
    mus = [model.encode(torch.as_tensor(x, device=device).long()[None])[0][0] for x in (a, b)]
    z = slerp(mus[0], mus[1], steps)
    ids = generate(
        model, None, max_new_tokens=max_new_tokens, z=z, seed=seed, shared_noise=True, **sampling
    )
    return z, ids
