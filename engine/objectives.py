"""The losses of each mode, apart from the network (`MusicModel` in `model.py`).

- transformer: next-token cross-entropy, PAD ignored.
- vae: reconstruction + beta(step) x KL with free bits.
- vae_gan: the vae's terms plus an adversarial and a feature-matching term from the
  discriminator; `discriminator_loss` is the discriminator's own objective.

`TrainingObjective` is the one wrapper for data-parallel training: wrappers such as DDP
hook `forward`, so the loss must be computed inside a module's `__call__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # annotations only: model.py imports this module
    from .model import MusicModel


def _batch(model: MusicModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise ValueError("a batch is a dict with 'input_ids' (and optionally 'attention_mask')")
    ids = batch["input_ids"]
    return ids, model.check_inputs(ids, batch.get("attention_mask"))


def next_token_loss(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """Mean next-token CE: logits[:, i] against ids[:, i+1]; PAD / masked targets ignored,
    and so are -100 targets (`ids` may be labels in the Hugging Face convention)."""
    targets = ids[:, 1:].masked_fill(~mask[:, 1:] | (ids[:, 1:] == pad_id), -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),  # [B*(N-1), V]
        targets.reshape(-1).long(),
        ignore_index=-100,
    )


def generator_loss(model: MusicModel, batch: dict, *, step: int = 0) -> dict[str, torch.Tensor]:
    """Generator loss: {"loss", "recon", ...}; vae adds "kl", "kl_penalty", "beta";
    vae_gan adds "adv" and "feature_matching". `step` drives the beta schedule."""
    ids, mask = _batch(model, batch)
    return generator_terms(model, ids, mask, step=step)[0]


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
    here; PAD and padded positions ignored as always). `step=None` weighs the KL with
    `beta_max`, the schedule's full weight, for callers that count no steps.
    """
    c = model.config
    if ids.shape[1] < 2:
        raise ValueError("the loss needs sequences of at least 2 tokens")
    targets = ids if labels is None else labels
    if model.encoder is None:
        logits = model._decode(ids, mask, None, None)
        recon = next_token_loss(logits, targets, mask, c.pad_id)
        return {"loss": recon, "recon": recon}, logits

    mu, logvar = model._encode(ids, mask)
    z = model.reparameterize(mu, logvar)
    logits = model._decode(ids, mask, z, None)
    recon = next_token_loss(logits, targets, mask, c.pad_id)
    kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).float().mean(0)  # [L]
    kl = kl_dims.sum()
    kl_penalty = kl_dims.clamp(min=c.free_bits).sum()
    beta = c.beta_max if step is None else c.beta(step)
    out = {
        "recon": recon,
        "kl": kl.detach(),
        "kl_penalty": kl_penalty,
        "beta": torch.tensor(beta),
    }
    total = recon + beta * kl_penalty
    if model.discriminator is not None:
        out["adv"], out["feature_matching"] = adversarial_terms(model, logits, ids, mask)
        total = total + c.adv_weight * out["adv"]
        total = total + c.feature_matching_weight * out["feature_matching"]
    out["loss"] = total
    return out, logits


def soft_fakes(model: MusicModel, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Differentiable fake sequences `[B, N, V]`: the first token as given, then
    Gumbel-softmax samples of logits[:, :-1] (each predicting the next position)."""
    c = model.config
    soft = F.gumbel_softmax(logits[:, :-1].float(), tau=c.gumbel_temperature)
    first = F.one_hot(ids[:, :1].long(), c.vocab_size).to(soft.dtype)  # [B, 1, V]
    return torch.cat([first, soft], dim=1)  # [B, N, V]


def adversarial_terms(
    model: MusicModel, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator side: (adversarial loss, feature matching), both differentiable with
    respect to `logits`."""
    assert model.discriminator is not None
    c = model.config
    fake = soft_fakes(model, logits, ids)
    real = F.one_hot(ids.long(), c.vocab_size).float()
    scores, fake_feats = model.discriminator(fake, mask)
    with torch.no_grad():
        _, real_feats = model.discriminator(real, mask)
    adv = -scores.float().mean() if c.gan_loss == "hinge" else F.softplus(-scores.float()).mean()
    fm = sum(
        (f.float().mean(0) - r.float().mean(0)).abs().mean()
        for f, r in zip(fake_feats, real_feats, strict=True)
    ) / len(fake_feats)
    return adv, fm


def discriminator_loss(model: MusicModel, batch: dict) -> dict[str, torch.Tensor]:
    """vae_gan: the discriminator's loss on real windows against detached fakes.

    Returns {"loss", "d_real", "d_fake"} (mean scores). Gradients reach only the
    discriminator's parameters.
    """
    if model.discriminator is None:
        raise ValueError(f"mode {model.config.mode!r} has no discriminator (vae_gan only)")
    c = model.config
    ids, mask = _batch(model, batch)
    with torch.no_grad():
        mu, logvar = model._encode(ids, mask)
        logits = model._decode(ids, mask, model.reparameterize(mu, logvar), None)
        fake = soft_fakes(model, logits, ids)
    real = F.one_hot(ids.long(), c.vocab_size).to(fake.dtype)
    both = torch.cat([real, fake], dim=0)  # [2B, N, V]
    scores, _ = model.discriminator(both, torch.cat([mask, mask], dim=0))
    d_real, d_fake = scores.float().chunk(2)
    if c.gan_loss == "hinge":
        loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    else:
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    return {"loss": loss, "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}


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
            return self.model.discriminator_loss(batch)
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
