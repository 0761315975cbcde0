"""The losses of each mode, apart from the network (`MusicModel` in `model.py`).

Units: every reported loss is in nats per target token (a target is a real, non-PAD
token after the first of its window), and the vae's ELBO keeps that one unit for both
terms: `(sum of token NLLs + beta x sum of per-sequence KL penalties) / target tokens`.
A per-token mean reconstruction next to a per-sequence KL would weigh the KL about N
times too much and collapse the latent.

- transformer: next-token cross-entropy.
- vae: the ELBO above (free bits per latent dimension), with optional word dropout on
  the decoder's inputs and an auxiliary bag-of-words loss from z (see `ModelConfig`).
- vae_gan: the vae's terms plus, from `adv_start_step` on, an adversarial term on fakes
  the generator sampled free-running, weighted adaptively, and a feature-matching term;
  `discriminator_loss` is the discriminator's own objective on the same kind of fakes.

`TrainingObjective` is the one wrapper for data-parallel training: wrappers such as DDP
hook `forward`, so the loss must be computed inside a module's `__call__`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from stretto.tokenizer.vocabulary import Vocabulary

from .generate import sample_tokens
from .grammar import Grammar

if TYPE_CHECKING:  # annotations only: model.py imports this module
    from .model import MusicModel

UNK = Vocabulary().UNK  # word dropout's stand-in token (never emitted by the encoder)


def _batch(model: MusicModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise ValueError("a batch is a dict with 'input_ids' (and optionally 'attention_mask')")
    ids = batch["input_ids"]
    mask = model.check_inputs(ids, batch.get("attention_mask"))
    if ids.shape[1] < 2:
        raise ValueError("the loss needs sequences of at least 2 tokens")
    return ids, mask


def target_mask(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """`[B, N-1]` bool: position i+1 is a target (real, not PAD, not the -100 that
    Hugging Face labels use for "ignore"), predicted at i."""
    return mask[:, 1:] & (ids[:, 1:] != pad_id) & (ids[:, 1:] >= 0)


def target_tokens(batch: dict, pad_id: int) -> int:
    """How many target tokens a batch holds (what gradient accumulation weighs by)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    return int(target_mask(ids, mask, pad_id).sum())


def sequence_nll(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token NLL per sequence `[B]`, target tokens per sequence `[B]`):
    logits[:, i] against ids[:, i+1], PAD and masked targets left out."""
    targets = target_mask(ids, mask, pad_id)  # [B, N-1]
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2),  # [B, V, N-1]
        ids[:, 1:].long(),
        reduction="none",
    )  # [B, N-1]
    return (nll * targets).sum(1), targets.sum(1)


def next_token_loss(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """Mean next-token NLL per target token over the batch."""
    nll, count = sequence_nll(logits, ids, mask, pad_id)
    return nll.sum() / count.sum().clamp(min=1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sequence and latent dimension `[B, L]`, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).float()


def word_dropout(
    ids: torch.Tensor, mask: torch.Tensor, rate: float, rows: float = 1.0
) -> torch.Tensor:
    """`ids` with a `rate` fraction of the real tokens after the first replaced by UNK, in
    a `rows` share of the sequences (the others keep every token)."""
    if rate <= 0 or rows <= 0:
        return ids
    drop = (torch.rand(ids.shape, device=ids.device) < rate) & mask
    drop &= torch.rand(ids.shape[0], 1, device=ids.device) < rows
    drop[:, 0] = False
    return ids.masked_fill(drop, UNK)


def generator_loss(model: MusicModel, batch: dict, *, step: int = 0) -> dict[str, torch.Tensor]:
    """The mode's generator loss, in nats per target token.

    Returns {"loss", "recon"} (transformer); vae adds "kl" (mean per sequence, nats),
    "kl_penalty" (the same with free bits), "beta" and, with `bow_weight`, "bow";
    vae_gan adds "adv", "adv_weight" and "feature_matching" once `step` reaches
    `adv_start_step` (zeros before). `step` drives the beta, temperature and
    adversarial schedules.
    """
    ids, mask = _batch(model, batch)
    return generator_terms(model, ids, mask, step=step)[0]


def schedules_end(model: MusicModel) -> int:
    """A step past every schedule (beta warm-up, adversarial start, temperature)."""
    c = model.config
    return max(c.beta_warmup_steps, c.adv_start_step, c.gumbel_anneal_steps)


def generator_terms(
    model: MusicModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    step: int | None,
    labels: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`generator_loss`'s terms and the logits `[B, N, V]` they were computed from, for
    checked ids and mask `[B, N]`.

    `labels` `[B, N]` replaces `ids` as the reconstruction targets (-100 ignored, shifted
    here; PAD and padded positions ignored as always). `step=None`, for callers that
    count no steps, is a step past every schedule (`schedules_end`): the KL at
    `beta_max`, the adversarial term on.
    """
    c = model.config
    if ids.shape[1] < 2:
        raise ValueError("the loss needs sequences of at least 2 tokens")
    step = schedules_end(model) if step is None else step
    targets = ids if labels is None else labels
    if model.encoder is None:
        logits = model.decoder_logits(ids, mask, None, None)
        recon = next_token_loss(logits, targets, mask, c.pad_id)
        return {"loss": recon, "recon": recon}, logits

    mu, logvar = model.latent_stats(ids, mask)
    z = model.reparameterize(mu, logvar)
    dec_ids = (
        word_dropout(ids, mask, c.word_dropout, c.word_dropout_rows) if model.training else ids
    )
    logits = model.decoder_logits(dec_ids, mask, z, None, state_ids=ids)
    nll, count = sequence_nll(logits, targets, mask, c.pad_id)
    tokens = count.sum().clamp(min=1)
    kl_dims = kl_per_dimension(mu, logvar)  # [B, L]
    # free bits per dimension, on the batch mean: a dimension below the floor costs it
    kl_penalty = kl_dims.mean(0).clamp(min=c.free_bits).sum()  # nats per sequence
    beta = c.beta(step)
    b = ids.shape[0]
    recon = nll.sum() / tokens
    total = (nll.sum() + beta * kl_penalty * b) / tokens
    out = {
        "recon": recon,
        "kl": kl_dims.sum(1).mean().detach(),
        "kl_penalty": kl_penalty,
        "beta": torch.tensor(beta),
    }
    if model.bow_head is not None:
        out["bow"] = bag_of_words_loss(model, z, targets, mask)
        total = total + c.bow_weight * out["bow"]
    if model.discriminator is not None:
        adv, weight, fm = adversarial_terms(model, ids, mask, z, recon, step)
        out.update(adv=adv, adv_weight=weight, feature_matching=fm)
        total = total + weight * adv + c.feature_matching_weight * fm
    out["loss"] = total
    return out, logits


def bag_of_words_loss(
    model: MusicModel, z: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """NLL per target token of the window's targets under one distribution from z."""
    assert model.bow_head is not None
    log_p = model.bow_head(z).float().log_softmax(-1)  # [B, V]
    targets = target_mask(ids, mask, model.config.pad_id)  # [B, N-1]
    picked = log_p.gather(1, ids[:, 1:].long())  # [B, N-1]
    return -(picked * targets).sum() / targets.sum().clamp(min=1)


# -- vae_gan ------------------------------------------------------------------------------
@torch.no_grad()
def rollout(
    model: MusicModel, ids: torch.Tensor, z: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Free-running samples after a real prefix, through `generate`'s sampling loop.

    Returns (tokens `[B, P + K]`: the first `gan_prefix` real tokens then `gan_span`
    sampled ones, each conditioned on the sampled tokens before it; the Gumbel noise
    `[B, K, V]` that chose them, -inf on the tokens the grammar forbade there, so that
    a differentiable forward can rebuild the samples). The loop samples at temperature
    1 under the grammar and the note limit (`note_off="mask"` and `note_on="restrike"`:
    the allowed tokens keep the model's own logits), by the exponential race against
    draws E; with G = -log E that is argmax(logits + G) over the allowed tokens, so G is
    the Gumbel noise. The fakes are grammatical, and the discriminator has to judge the music.
    """
    c = model.config
    p, k = c.gan_prefix, c.gan_span
    b = ids.shape[0]
    grammar = _grammar()
    state = grammar.initial_state(b, ids.device)
    for t in range(p):  # real windows keep the grammar; read on the device, unchecked
        grammar.advance(state, ids[:, t])
    draws = torch.empty(k, b, c.vocab_size, device=ids.device).exponential_()  # E
    allowed = torch.empty(b, k, c.vocab_size, dtype=torch.bool, device=ids.device)
    tokens = sample_tokens(
        model,
        ids[:, :p],
        z,
        k,
        sampling={"temperature": 1.0, "top_k": None, "top_p": None},
        policies={"note_off": "mask", "at_limit": "release", "note_on": "restrike"},
        grammar=grammar,
        state=state,
        noise=draws,
        allowed=allowed,
    )
    gumbel = -draws.log().transpose(0, 1)  # [B, K, V]
    return torch.cat([ids[:, :p], tokens], dim=1), gumbel.masked_fill(~allowed, float("-inf"))


@functools.cache
def _grammar() -> Grammar:
    return Grammar(Vocabulary())


def straight_through_fakes(
    model: MusicModel, tokens: torch.Tensor, noise: torch.Tensor, z: torch.Tensor, tau: float
) -> torch.Tensor:
    """Fakes `[B, P + K, V]` whose forward is one-hot (the sampled tokens) and whose
    gradient is that of the Gumbel-softmax at temperature `tau`, recomputed by one
    teacher-forced forward over the sampled sequence (same logits as the rollout)."""
    c = model.config
    p, k = c.gan_prefix, c.gan_span
    logits = model.decoder_logits(tokens, None, z, None)[:, p - 1 : p + k - 1].float()  # [B, K, V]
    soft = ((logits + noise) / tau).softmax(-1)
    hard = F.one_hot(tokens[:, p:].long(), c.vocab_size).to(soft.dtype)
    sampled = hard + soft - soft.detach()
    prefix = F.one_hot(tokens[:, :p].long(), c.vocab_size).to(soft.dtype)
    return torch.cat([prefix, sampled], dim=1)


def gan_rows(model: MusicModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B]` bool: the windows whose first `gan_prefix + gan_span` tokens are all real
    (the ones the adversarial game reads; a short or padded window sits it out)."""
    span = model.config.gan_prefix + model.config.gan_span
    if ids.shape[1] < span:
        return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    return mask[:, :span].all(1)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """`module`'s parameters take no gradient inside the block (restored after)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def adversarial_terms(
    model: MusicModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    z: torch.Tensor,
    recon: torch.Tensor,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generator side: (adversarial loss, its adaptive weight, feature matching).

    Zeros before `adv_start_step` (the discriminator warms up alone). The weight is
    `||grad recon|| / ||grad adv||` at the last decoder block's output projection,
    clipped to `[0, adv_weight_max]` and detached; the discriminator's parameters are
    frozen while the generator's terms are built.
    """
    c = model.config
    zero = recon.new_zeros(())
    if step < c.adv_start_step or c.adv_weight_max == 0:
        return zero, zero, zero
    assert model.discriminator is not None
    rows = gan_rows(model, ids, mask)
    if not bool(rows.any()):
        return zero, zero, zero
    real_ids, z = ids[rows, : c.gan_prefix + c.gan_span], z[rows]
    tokens, noise = rollout(model, real_ids, z.detach(), step)
    fake = straight_through_fakes(model, tokens, noise, z, c.gumbel_tau(step))
    real = F.one_hot(real_ids.long(), c.vocab_size).to(fake.dtype)
    span_mask = torch.ones(real_ids.shape, dtype=torch.bool, device=ids.device)
    with frozen(model.discriminator):
        scores, fake_feats = model.discriminator(fake, span_mask)
        with torch.no_grad():
            _, real_feats = model.discriminator(real, span_mask)
    scores = scores.float()
    adv = -scores.mean() if c.gan_loss == "hinge" else F.softplus(-scores).mean()
    fm = sum(
        (f.float().mean(0) - r.float().mean(0)).abs().mean()
        for f, r in zip(fake_feats, real_feats, strict=True)
    ) / len(fake_feats)
    weight = adaptive_weight(model, recon, adv, c.adv_weight_max)
    return adv, weight, fm


def adaptive_weight(
    model: MusicModel, recon: torch.Tensor, adv: torch.Tensor, limit: float
) -> torch.Tensor:
    """`||d recon / dW|| / (||d adv / dW|| + 1e-4)` at the last decoder block's output
    projection W, clipped to `[0, limit]`: the adversarial term pulls about as hard as
    the reconstruction does (VQGAN's balancing), whatever their raw scales."""
    if not (torch.is_grad_enabled() and recon.requires_grad and adv.requires_grad):
        return adv.new_zeros(())
    weight = model.decoder.blocks[-1].mlp.down.weight
    g_rec = torch.autograd.grad(recon, weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, weight, retain_graph=True, allow_unused=True)[0]
    if g_adv is None:
        return adv.new_zeros(())
    ratio = g_rec.norm() / (g_adv.norm() + 1e-4)
    return ratio.clamp(0.0, limit).detach()


def discriminator_loss(model: MusicModel, batch: dict, *, step: int = 0) -> dict[str, torch.Tensor]:
    """vae_gan: the discriminator's loss on real spans against sampled fakes.

    Reals are the first `gan_prefix + gan_span` tokens of each window, fakes the same
    prefix followed by `gan_span` free-running samples from the generator (z from the
    window's posterior), both as hard one-hot sequences. Returns {"loss", "d_real",
    "d_fake" (mean scores), "acc_real", "acc_fake" (share of reals scored > 0, of
    fakes scored < 0)}. Gradients reach only the discriminator's parameters.
    """
    if model.discriminator is None:
        raise ValueError(f"mode {model.config.mode!r} has no discriminator (vae_gan only)")
    c = model.config
    ids, mask = _batch(model, batch)
    rows = gan_rows(model, ids, mask)
    if not bool(rows.any()):
        zero = model.discriminator.embed.sum() * 0.0  # no window long enough: no step
        return {k: zero.detach() for k in ("d_real", "d_fake", "acc_real", "acc_fake")} | {
            "loss": zero
        }
    ids, mask = ids[rows], mask[rows]
    real_ids = ids[:, : c.gan_prefix + c.gan_span]
    with torch.no_grad():
        mu, logvar = model.latent_stats(ids, mask)
        tokens, _ = rollout(model, real_ids, model.reparameterize(mu, logvar), step)
    both = torch.cat([real_ids, tokens], dim=0)  # [2B, P + K]
    onehot = F.one_hot(both.long(), c.vocab_size).to(model.discriminator.embed.dtype)
    scores, _ = model.discriminator(onehot, torch.ones_like(both, dtype=torch.bool))
    d_real, d_fake = scores.float().chunk(2)
    if c.gan_loss == "hinge":
        loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    else:
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    return {
        "loss": loss,
        "d_real": d_real.mean().detach(),
        "d_fake": d_fake.mean().detach(),
        "acc_real": (d_real > 0).float().mean(),
        "acc_fake": (d_fake < 0).float().mean(),
    }


OBJECTIVES = ("generator", "discriminator")


class TrainingObjective(nn.Module):
    """`model`'s losses as a module's forward, for wrappers that hook `forward` (DDP).

    `TrainingObjective(model)(input_ids, attention_mask, objective="generator", step=s)`
    returns `model.loss(...)`; `objective="discriminator"` returns
    `model.discriminator_loss(...)`. Its parameters are the model's (state-dict names
    prefixed with `model.`); checkpoints are written from the model itself.
    """

    def __init__(self, model: MusicModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        objective: str = "generator",
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if objective == "generator":
            return self.model.loss(batch, step=step)
        if objective == "discriminator":
            return self.model.discriminator_loss(batch, step=step)
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
