"""Held-out measurements of a `MusicModel`: what validation logs and the audit checks.

- `nll`: next-token NLL per target token (vae modes: z = the encoder's mean, mu(x)).
- vae modes, the latent's use: `nll_other`, the NLL of each window decoded with the mu
  of a window of *another file* (windows of one file share its style, so pairs cross
  files), and `latent_gap = nll_other - nll` (nats per token: what z tells the decoder
  about its own window); `kl` (nats per sequence) and `kl_dims` (per latent dimension);
  `active_units`, the latent dimensions whose mu varies across the windows with
  variance above `ACTIVE_UNIT_VARIANCE`.
- vae_gan: the discriminator on real spans and sampled fakes: `acc_real`, `acc_fake`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import objectives

if TYPE_CHECKING:
    from .model import MusicModel

ACTIVE_UNIT_VARIANCE = 0.01  # Burda et al.'s threshold on Var_x[mu_d(x)]


def spread(n: int, count: int) -> list[int]:
    """`count` indices evenly spread over `range(n)` (all of them when n <= count)."""
    if n <= count:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, num=count).round().astype(int)]


def file_of(dataset: Any, index: int) -> int | None:
    """The source file of a window (a `TokenDataset`, or a `Subset` of one), else None."""
    if hasattr(dataset, "file_of"):
        return int(dataset.file_of(index))
    inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if inner is not None and indices is not None:
        return file_of(inner, int(indices[index]))
    return None


def held_out_batches(
    dataset: Any, *, windows: int, batch_size: int
) -> tuple[list[dict], list[int] | None]:
    """Up to `windows` windows spread over a map-style dataset, as batches, with each
    window's file (None when the dataset does not say)."""
    picks = spread(len(dataset), windows)
    files = [file_of(dataset, i) for i in picks]
    batches = []
    for at in range(0, len(picks), batch_size):
        items = [dataset[i] for i in picks[at : at + batch_size]]
        batches.append({k: torch.stack([it[k] for it in items]) for k in items[0]})
    return batches, (None if any(f is None for f in files) else files)


def partners(files: Sequence[int] | None, n: int) -> list[int]:
    """For each window, the next window (cyclically) of another file; itself when every
    window comes from one file. Without files, simply the next window."""
    if files is None:
        return [(i + 1) % n for i in range(n)]
    out = []
    for i in range(n):
        j = next((k % n for k in range(i + 1, i + n) if files[k % n] != files[i]), i)
        out.append(j)
    return out


@torch.no_grad()
def measure(
    model: MusicModel,
    batches: Sequence[dict],
    files: Sequence[int] | None = None,
    *,
    step: int = 0,
    disc_rounds: int = 1,
) -> dict[str, Any]:
    """The module docstring's measurements over `batches` (on the model's device);
    the discriminator's accuracies over `disc_rounds` passes (fresh spans and fakes in
    each: more samples, a steadier estimate)."""
    was_training = model.training
    model.eval()
    try:
        return _measure(model, batches, files, step, disc_rounds)
    finally:
        model.train(was_training)


def _measure(model, batches, files, step, disc_rounds=1) -> dict[str, Any]:
    c = model.config
    device = next(model.parameters()).device
    batches = [
        {k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask")}
        for b in batches
    ]
    masks = [model.check_inputs(b["input_ids"], b.get("attention_mask")) for b in batches]
    out: dict[str, Any] = {}
    if model.encoder is None:
        nll = tokens = 0.0
        for b, m in zip(batches, masks, strict=True):
            s, n = objectives.sequence_nll(
                model.decoder_logits(b["input_ids"], m, None, None), b["input_ids"], m, c.pad_id
            )
            nll, tokens = nll + float(s.sum()), tokens + float(n.sum())
        out["nll"] = nll / max(tokens, 1.0)
        out["tokens"] = tokens
        return out

    stats = [model.latent_stats(b["input_ids"], m) for b, m in zip(batches, masks, strict=True)]
    mu = torch.cat([s[0] for s in stats]).float()  # [W, L]
    logvar = torch.cat([s[1] for s in stats]).float()
    kl_dims = objectives.kl_per_dimension(mu, logvar)  # [W, L]
    other = mu[partners(files, mu.shape[0])]
    own_sum = other_sum = tokens = 0.0
    at = 0
    for b, m in zip(batches, masks, strict=True):
        ids, rows = b["input_ids"], b["input_ids"].shape[0]
        for z, name in ((mu[at : at + rows], "own"), (other[at : at + rows], "other")):
            z = z.to(next(model.parameters()).dtype)
            s, n = objectives.sequence_nll(model.decoder_logits(ids, m, z, None), ids, m, c.pad_id)
            if name == "own":
                own_sum, tokens = own_sum + float(s.sum()), tokens + float(n.sum())
            else:
                other_sum += float(s.sum())
        at += rows
    out["nll"] = own_sum / max(tokens, 1.0)
    out["nll_other"] = other_sum / max(tokens, 1.0)
    out["latent_gap"] = out["nll_other"] - out["nll"]
    out["tokens"] = tokens
    out["kl"] = float(kl_dims.sum(1).mean())
    out["kl_dims"] = [round(float(v), 4) for v in kl_dims.mean(0)]
    variance = mu.var(0, unbiased=False) if mu.shape[0] > 1 else torch.zeros_like(mu[0])
    out["active_units"] = int((variance > ACTIVE_UNIT_VARIANCE).sum())
    if model.discriminator is not None:
        acc_real = acc_fake = 0.0
        for _ in range(disc_rounds):
            for b in batches:
                d = objectives.discriminator_loss(model, b, step=step)
                acc_real += float(d["acc_real"]) * b["input_ids"].shape[0]
                acc_fake += float(d["acc_fake"]) * b["input_ids"].shape[0]
        out["acc_real"] = acc_real / (mu.shape[0] * disc_rounds)
        out["acc_fake"] = acc_fake / (mu.shape[0] * disc_rounds)
    return out


def unigram_nll(counts: torch.Tensor, batches: Sequence[dict], pad_id: int) -> float:
    """The unigram baseline: NLL per target token of `batches` under the token counts
    `counts` `[V]` (e.g. of the training files), add-one smoothed."""
    counts = counts.double().cpu()
    log_p = ((counts + 1) / (counts.sum() + counts.numel())).log()
    total = tokens = 0.0
    for b in batches:
        ids = b["input_ids"].cpu()
        mask = b.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
        targets = objectives.target_mask(ids, mask, pad_id)
        total -= float(log_p[ids[:, 1:].long()][targets].sum())
        tokens += float(targets.sum())
    return total / max(tokens, 1.0)
