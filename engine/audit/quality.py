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

Generation is not a row here: what the grammar mask guarantees cannot fail, and a tiny
model's unmasked samples break the grammar about as often as an untrained one's (one
missed NOTE_OFF keeps a note sounding); cached decoding, which generation runs on, is
the `decode cache` row, and the music generated is measured against held-out music by
the benchmarks' quality suite.
"""

from __future__ import annotations

from typing import Any

import torch

from stretto.engine import MusicModel
from stretto.engine.evaluation import unigram_nll

from .checks import Finding, _row

LATENT_GAP_MIN = 0.01  # nats per token
DISCRIMINATOR_BAND = (0.05, 0.95)
DISCRIMINATOR_MIN_MEAN = 0.55
DISC_ROUNDS = 4


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
