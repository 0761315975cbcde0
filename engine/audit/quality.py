"""The audit's checks of trained models, on windows of files the training never saw.

- `held-out loss`: NLL per token below the unigram baseline (the training tokens'
  unigram distribution, add-one smoothed, scored on the same targets): a model that
  learned nothing about order cannot pass.
- `latent` (vae, vae_gan): the decoder uses z: the latent gap (NLL with the mu of a
  window of another file minus NLL with the window's own mu) above `LATENT_GAP_MIN`
  nats per token, and at least one active unit.
- `discriminator` (vae_gan): its accuracy on real spans and on sampled fakes each in
  `DISCRIMINATOR_BAND` (not saturated, as a discriminator that wins outright is), with
  their mean above `DISCRIMINATOR_MIN_MEAN` (not at chance), over `DISC_ROUNDS` passes
  of the held-out windows, each with fresh spans and fakes (32 windows give 128 real
  and 128 fake spans: a discriminator at chance then reaches a mean of 0.55 with a
  probability of about 7%, against 27% with one pass).
- `polyphony`: the mean number of pitches sounding at once (muspy's measure:
  `stretto.tokenizer.statistics.polyphony`) of `POLYPHONY_PIECES` pieces sampled from
  START (grammar mask on, the mode's `listening_sampling`, as the demo samples) is at most
  `POLYPHONY_MAX_RATIO` times that of held-out windows of as many ids. A sampler that
  stops releasing notes (the grammar mask can take NOTE_OFF's probability away: SPEC,
  "Known pitfalls") piles notes up: windows of 1024 ids of twelve dev files measured
  3.9 and 4.6 pitches at once (even and odd files), the same windows without their
  NOTE_OFFs 23.1 and 18.3. The reference is the run's own held-out music, not a number
  tuned on one corpus.

Grammar validity is not a row: what the grammar mask guarantees cannot fail, and a tiny
model's unmasked samples break the grammar about as often as an untrained one's (one
missed NOTE_OFF keeps a note sounding); cached decoding, which generation runs on, is
the `decode cache` row, and the other statistics of generated music are measured
against held-out music by the benchmarks' quality suite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stretto.engine import MusicModel
from stretto.engine.evaluation import held_out_batches, unigram_nll
from stretto.engine.generate import listening_sampling
from stretto.tokenizer import MidiTokenizer, TokenDataset
from stretto.tokenizer.statistics import polyphony

from .checks import Finding, _row

LATENT_GAP_MIN = 0.01  # nats per token
DISCRIMINATOR_BAND = (0.05, 0.95)
DISCRIMINATOR_MIN_MEAN = 0.55
DISC_ROUNDS = 4
POLYPHONY_MAX_RATIO = 2.0
POLYPHONY_TOKENS = 1024  # ids per piece (capped by the model's max_seq_len)
POLYPHONY_PIECES = 4
POLYPHONY_WINDOWS = 16


def check_held_out(
    model: MusicModel, measured: dict[str, Any], counts: torch.Tensor, batches: list[dict], n: int
) -> Finding:
    """`measured["nll"]` (from `evaluation.measure`) below the unigram baseline."""
    mode = model.config.mode
    baseline = unigram_nll(counts, batches, model.config.pad_id)
    ok = measured["nll"] < baseline
    detail = (
        f"NLL {measured['nll']:.3f} nats/token on {measured['tokens']:,.0f} held-out tokens, "
        f"unigram baseline {baseline:.3f}"
    )
    return _row("held-out loss", ok, detail if ok else detail + ": not below it", mode, n)


def check_latent(model: MusicModel, measured: dict[str, Any], n: int) -> Finding:
    """The decoder uses z: latent gap above `LATENT_GAP_MIN`, active units > 0."""
    mode = model.config.mode
    gap, active = measured["latent_gap"], measured["active_units"]
    ok = gap > LATENT_GAP_MIN and active > 0
    detail = (
        f"latent gap {gap:.4f} nats/token (> {LATENT_GAP_MIN}), {active} active units of "
        f"{model.config.latent_dim}, KL {measured['kl']:.1f} nats/sequence"
    )
    return _row("latent", ok, detail if ok else detail + ": the decoder ignores z", mode, n)


def check_discriminator(model: MusicModel, measured: dict[str, Any], n: int) -> Finding:
    """Accuracy on real and on fake each inside `DISCRIMINATOR_BAND`, mean above chance."""
    lo, hi = DISCRIMINATOR_BAND
    real, fake = measured["acc_real"], measured["acc_fake"]
    mean = (real + fake) / 2
    problems = []
    if not (lo <= real <= hi and lo <= fake <= hi):
        problems.append(f"outside [{lo}, {hi}]: saturated")
    if mean < DISCRIMINATOR_MIN_MEAN:
        problems.append(f"mean below {DISCRIMINATOR_MIN_MEAN}: at chance")
    detail = f"accuracy on real {real:.2f}, on sampled fakes {fake:.2f}"
    return _row(
        "discriminator",
        not problems,
        detail + (": " + "; ".join(problems) if problems else f" (each in [{lo}, {hi}])"),
        model.config.mode,
        n,
    )


def generated_pieces(model: MusicModel, tokens: int, pieces: int, seed: int) -> list[np.ndarray]:
    """`pieces` sequences of at most `tokens` ids (START included) sampled from the model
    under the grammar mask with the mode's `listening_sampling`, as `stretto generate`
    and the demo sample."""
    sampling = listening_sampling(model.config.mode)
    ids = model.generate(max_new_tokens=tokens - 1, batch_size=pieces, seed=seed, **sampling)
    return [row.cpu().numpy() for row in ids]


def held_out_pieces(dataset: TokenDataset, windows: int) -> list[np.ndarray]:
    """Up to `windows` windows spread over `dataset` (each decodes alone: see
    `TokenDataset`), PAD included (the decoder skips it)."""
    batches, _ = held_out_batches(dataset, windows=windows, batch_size=windows)
    return [row.numpy() for batch in batches for row in batch["input_ids"]]


def mean_polyphony(pieces: Sequence[np.ndarray]) -> tuple[float, int]:
    """The mean `polyphony` of the decoded pieces that hold a pitched note, and how many
    do (NaN, 0 when none does)."""
    tok = MidiTokenizer()
    values = [polyphony(tok.decode(ids)) for ids in pieces]
    measured = [v for v in values if not math.isnan(v)]
    return (float(np.mean(measured)) if measured else math.nan), len(measured)


def check_polyphony(
    generated: Sequence[np.ndarray], held_out: Sequence[np.ndarray], mode: str, n: int
) -> Finding:
    """Mean polyphony of `generated` at most `POLYPHONY_MAX_RATIO` x that of `held_out`
    (both token id sequences of length about `n`)."""
    made, n_made = mean_polyphony(generated)
    real, n_real = mean_polyphony(held_out)
    if not n_real:
        return _row("polyphony", False, "no held-out window holds a pitched note", mode, n)
    if not n_made:
        detail = f"none of {len(generated)} generated pieces holds a pitched note"
        return _row("polyphony", False, detail, mode, n)
    limit = POLYPHONY_MAX_RATIO * real
    ok = made <= limit
    detail = (
        f"{made:.2f} pitches at once in {n_made} generated pieces, {real:.2f} in "
        f"{n_real} held-out windows (at most {POLYPHONY_MAX_RATIO:g}x: {limit:.2f})"
    )
    return _row("polyphony", ok, detail if ok else detail + ": notes pile up", mode, n)
