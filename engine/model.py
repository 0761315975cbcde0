"""`MusicModel`: a pre-norm rotary transformer over event tokens, in three modes.

- transformer: a causal decoder; loss = next-token cross-entropy (PAD ignored).
- vae: a bidirectional encoder pools the sequence into mu / log-variance; z (by
  reparameterization) is added, through one projection per decoder block, to the
  residual stream in front of every block of the causal decoder, so every layer and
  every position depends on z. Loss = reconstruction CE + beta(step) x KL (free bits).
- vae_gan: the vae plus a spectral-normalized bidirectional discriminator that reads
  token embeddings. Fakes are Gumbel-softmax soft tokens over the decoder's logits,
  multiplied into the discriminator's embedding table, so the adversarial and
  feature-matching terms reach the generator.

Attention is `stretto.kernels.hierarchical_attention` (config.attention="dense" swaps
in full SDPA attention for benchmark comparisons only). Rotary positions are applied
at explicit absolute `positions`, so a decode step at position p rotates its single
query and key exactly as the full forward does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from stretto.kernels import hierarchical_attention

from .config import ModelConfig

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


# -- rotary positions ------------------------------------------------------------------
class Rotary(nn.Module):
    """cos/sin tables for absolute positions; `apply` rotates pairs (x_i, x_{i + D/2})."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `[N]` (int) -> cos, sin `[N, D/2]` in float32."""
        # Frequencies are rebuilt in float32 on every call rather than kept as a buffer,
        # which `model.to(torch.bfloat16)` would round to 3 significant digits.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device)
        inv_freq = self.base ** (-exponents / self.head_dim)  # [D/2]
        angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [N, D/2]
        return angles.cos(), angles.sin()

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x `[B, H, N, D]`, cos/sin `[N, D/2]` -> rotated x, same dtype."""
        x1, x2 = x.float().chunk(2, dim=-1)  # [B, H, N, D/2] each
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, H, N, D]
        return out.to(x.dtype)


# -- blocks ----------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention with rotary q/k; WHA or (benchmark-only) dense SDPA."""

    def __init__(
        self, d_model: int, n_heads: int, config: ModelConfig, *, causal: bool, sn: bool = False
    ):
        super().__init__()
        wrap = spectral_norm if sn else (lambda m: m)
        self.n_heads, self.head_dim, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = wrap(nn.Linear(d_model, 3 * d_model, bias=False))
        self.out = wrap(nn.Linear(d_model, d_model, bias=False))
        self.attention, self.backend = config.attention, config.attention_backend
        self.window, self.block = config.window, config.block

    def project_qkv(self, x, cos, sin):
        """x `[B, N, C]` -> rotated q, k and v, each `[B, H, N, D]`."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim)  # [B, N, 3, H, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, D]
        return Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin), v

    def forward(self, x, cos, sin, key_padding_mask):
        b, n, c = x.shape
        q, k, v = self.project_qkv(x, cos, sin)
        if self.attention == "wha":
            o = hierarchical_attention(
                q,
                k,
                v,
                window=self.window,
                block=self.block,
                causal=self.causal,
                key_padding_mask=key_padding_mask,
                backend=self.backend,
            )
        else:
            o = _dense_attention(q, k, v, self.causal, key_padding_mask)
        return self.out(o.transpose(1, 2).reshape(b, n, c))  # [B, N, H*D]


def _dense_attention(q, k, v, causal, key_padding_mask):
    """Full SDPA attention (benchmark baseline). Every query also sees itself, so a
    padded query never produces NaN. Without padding it takes SDPA's `is_causal` path
    (no N x N mask), so the baseline is as fast as SDPA can be; the check costs one host
    sync, acceptable on this benchmark-only path."""
    if key_padding_mask is not None and bool(key_padding_mask.all()):
        key_padding_mask = None
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    n = q.shape[-2]
    idx = torch.arange(n, device=q.device)
    visible = key_padding_mask[:, None, None, :]  # [B, 1, 1, N]
    if causal:
        visible = visible & (idx[None, :] <= idx[:, None])  # [B, 1, N, N]
    visible = visible | torch.eye(n, dtype=torch.bool, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, sn: bool = False):
        super().__init__()
        wrap = spectral_norm if sn else (lambda m: m)
        self.gate_up = wrap(nn.Linear(d_model, 2 * d_ff, bias=False))
        self.down = wrap(nn.Linear(d_ff, d_model, bias=False))

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # [B, N, F] each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model, n_heads, d_ff, config: ModelConfig, *, causal, sn=False):
        super().__init__()
        self.attn_norm = nn.RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, config, causal=causal, sn=sn)
        self.mlp_norm = nn.RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, d_ff, sn=sn)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, key_padding_mask):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, key_padding_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Stack(nn.Module):
    """Blocks sharing one rotary table; optional per-block additive conditioning."""

    def __init__(
        self,
        n_layers,
        d_model,
        n_heads,
        d_ff,
        config,
        *,
        causal,
        sn=False,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.rotary = Rotary(d_model // n_heads, config.rope_base)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, config, causal=causal, sn=sn) for _ in range(n_layers)
        )
        self.cond = (
            None
            if cond_dim is None
            else nn.ModuleList(nn.Linear(cond_dim, d_model) for _ in range(n_layers))
        )
        self.norm = nn.RMSNorm(d_model)

    def forward(self, x, key_padding_mask, positions, cond=None, *, features=None):
        cos, sin = self.rotary(positions)  # [N, D/2] each
        for i, block in enumerate(self.blocks):
            if self.cond is not None:
                x = x + self.cond[i](cond)[:, None, :]  # [B, 1, C] broadcast over N
            x = block(x, cos, sin, key_padding_mask)
            if features is not None:
                features.append(x)
        return self.norm(x)


class Discriminator(nn.Module):
    """Bidirectional, spectral-normalized; reads token embeddings, one score per sequence.

    Input is a distribution over tokens per position (`[B, N, V]`, one-hot for real
    data, Gumbel-softmax for fakes) multiplied into its own embedding table.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.disc_d_model
        self.embed = nn.Parameter(torch.randn(config.vocab_size, d) * 0.02)  # [V, C]
        self.stack = Stack(
            config.disc_layers, d, config.disc_n_heads, 4 * d, config, causal=False, sn=True
        )
        self.head = spectral_norm(nn.Linear(d, 1, bias=False))  # a bias cancels out
        self.score_scale = d**-0.5

    def forward(self, soft_tokens, mask):
        """soft_tokens `[B, N, V]`, mask `[B, N]` bool -> (scores `[B]`, pooled features)."""
        x = soft_tokens.to(self.embed.dtype) @ self.embed  # [B, N, C]
        positions = torch.arange(x.shape[1], device=x.device)
        features: list[torch.Tensor] = []
        h = self.stack(x, mask, positions, features=features)
        pooled = [_masked_mean(f, mask) for f in features]  # each [B, C]
        # The pooled features have RMS 1 (final norm), so a unit-spectral-norm head could
        # score sqrt(C) at init and saturate the hinge margins before training starts.
        score = self.head(_masked_mean(h, mask)).squeeze(-1) * self.score_scale  # [B]
        return score, pooled


def _masked_mean(x, mask):
    """x `[B, N, C]`, mask `[B, N]` -> `[B, C]` mean over real positions."""
    w = mask.to(x.dtype)[..., None]  # [B, N, 1]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


# -- the model -------------------------------------------------------------------------
class MusicModel(nn.Module):
    """The music model. Build it with `MusicModel(ModelConfig.from_vocab(vocab, ...))`.

    `model(input_ids, attention_mask=None, *, z=None, positions=None)` -> logits
    `[B, N, V]`, where logits[:, i] predicts token i + 1. `input_ids` is `[B, N]`
    integer with every id in `[0, vocab_size)`; `attention_mask` `[B, N]` bool (True =
    real token) defaults to `input_ids != PAD`. In the vae modes z defaults to the
    encoder's sample (training) or its mean (eval). With `objective="generator"` (or
    `"discriminator"`) the call returns `loss(...)` (or `discriminator_loss(...)`)
    instead, for wrappers such as DDP that hook `forward`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        is_vae = c.mode in ("vae", "vae_gan")
        self.decoder = Stack(
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.d_ff,
            c,
            causal=True,
            cond_dim=c.latent_dim if is_vae else None,
        )
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.embed.weight
        self.encoder = None
        if is_vae:
            self.encoder = Stack(c.encoder_layers, c.d_model, c.n_heads, c.d_ff, c, causal=False)
            self.to_stats = nn.Linear(c.d_model, 2 * c.latent_dim)  # -> [mu ; logvar]
        self.discriminator = Discriminator(c) if c.mode == "vae_gan" else None
        self._init_weights()

    def _init_weights(self):
        depth_scale = 1.0 / math.sqrt(2 * max(self.config.n_layers, 1))
        for name, p in self.named_parameters():
            if name.startswith("discriminator"):
                continue  # spectral norm keeps its own scale
            if p.dim() == 2:
                std = 0.02 * (depth_scale if name.endswith(("out.weight", "down.weight")) else 1)
                if ".cond." in name:  # z ~ N(0, I): keep its first push near embedding scale
                    std = 0.02 / math.sqrt(self.config.latent_dim)
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    # -- parameter groups ---------------------------------------------------------------
    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminator (all parameters outside vae_gan)."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        if self.discriminator is None:
            raise ValueError(f"mode {self.config.mode!r} has no discriminator (vae_gan only)")
        return list(self.discriminator.parameters())

    # -- input checks -------------------------------------------------------------------
    def check_inputs(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Validate ids and mask before any lookup; returns the bool mask `[B, N]`."""
        c = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dtype not in _INT_DTYPES:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, N] with N >= 1, got {list(input_ids.shape)}")
        if input_ids.shape[1] > c.max_seq_len:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_seq_len {c.max_seq_len}"
            )
        if not torch.compiler.is_compiling() and input_ids.numel():
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one host sync
            bad = lo if lo < 0 else hi if hi >= c.vocab_size else None
            if bad is not None:
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {c.vocab_size}) "
                    f"(vocab size {c.vocab_size})"
                )
        if attention_mask is None:
            return input_ids != c.pad_id
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError("attention_mask must be a torch.Tensor or None")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {list(attention_mask.shape)}, expected "
                f"{list(input_ids.shape)} like input_ids [B, N]"
            )
        if attention_mask.dtype != torch.bool:
            if attention_mask.dtype not in _INT_DTYPES:
                raise ValueError(
                    f"attention_mask must be bool (True = real token), got {attention_mask.dtype}"
                )
            attention_mask = attention_mask != 0
        return attention_mask.to(input_ids.device)

    # -- pieces -------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """vae modes: (mu, logvar), each `[B, latent_dim]`."""
        if self.encoder is None:
            raise ValueError(f"mode {self.config.mode!r} has no encoder (vae modes only)")
        mask = self.check_inputs(input_ids, attention_mask)
        return self._encode(input_ids, mask)

    def _encode(self, input_ids, mask):
        x = self.embed(input_ids)  # [B, N, C]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.encoder(x, mask, positions)
        mu, logvar = self.to_stats(_masked_mean(h, mask)).chunk(2, dim=-1)  # [B, L] each
        return mu, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def reparameterize(mu, logvar):
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    def decode(self, input_ids, attention_mask=None, *, z=None, positions=None):
        """The causal decoder alone: logits `[B, N, V]`; z `[B, latent_dim]` in vae modes.

        `positions` `[N]` are the absolute positions of `input_ids` (default 0..N-1).
        """
        mask = self.check_inputs(input_ids, attention_mask)
        return self._decode(input_ids, mask, z, positions)

    def _decode(self, input_ids, mask, z, positions):
        c = self.config
        if self.encoder is not None:
            if z is None:
                raise ValueError("the vae decoder needs z [B, latent_dim]")
            if z.shape != (input_ids.shape[0], c.latent_dim):
                raise ValueError(
                    f"z has shape {list(z.shape)}, expected [{input_ids.shape[0]}, {c.latent_dim}]"
                )
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids)  # [B, N, C]
        h = self.decoder(x, mask, positions, cond=z)
        return self.head(h)  # [B, N, V]

    def forward(
        self, input_ids, attention_mask=None, *, z=None, positions=None, objective=None, step=0
    ):
        if objective is not None:
            # Losses through __call__, so wrappers that hook forward (DDP, FSDP) see them.
            batch = {"input_ids": input_ids, "attention_mask": attention_mask}
            if objective == "generator":
                return self.loss(batch, step=step)
            if objective == "discriminator":
                return self.discriminator_loss(batch)
            raise ValueError(f"objective={objective!r} is not 'generator' or 'discriminator'")
        mask = self.check_inputs(input_ids, attention_mask)
        if self.encoder is not None and z is None:
            mu, logvar = self._encode(input_ids, mask)
            z = self.reparameterize(mu, logvar) if self.training else mu
        return self._decode(input_ids, mask, z, positions)

    # -- losses -------------------------------------------------------------------------
    def _batch(self, batch):
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise ValueError("a batch is a dict with 'input_ids' (and optionally 'attention_mask')")
        ids = batch["input_ids"]
        return ids, self.check_inputs(ids, batch.get("attention_mask"))

    def _recon(self, logits, ids, mask):
        """Next-token CE: logits[:, i] against ids[:, i+1]; PAD / masked targets ignored."""
        targets = ids[:, 1:].masked_fill(~mask[:, 1:] | (ids[:, 1:] == self.config.pad_id), -100)
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),  # [B*(N-1), V]
            targets.reshape(-1).long(),
            ignore_index=-100,
        )

    def loss(self, batch: dict, *, step: int = 0) -> dict[str, torch.Tensor]:
        """Generator loss: {"loss", "recon", ...}; vae adds "kl", "kl_penalty", "beta";
        vae_gan adds "adv" and "feature_matching". `step` drives the beta schedule."""
        c = self.config
        ids, mask = self._batch(batch)
        if ids.shape[1] < 2:
            raise ValueError("the loss needs sequences of at least 2 tokens")
        if self.encoder is None:
            recon = self._recon(self._decode(ids, mask, None, None), ids, mask)
            return {"loss": recon, "recon": recon}

        mu, logvar = self._encode(ids, mask)
        z = self.reparameterize(mu, logvar)
        logits = self._decode(ids, mask, z, None)
        recon = self._recon(logits, ids, mask)
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).float().mean(0)  # [L]
        kl = kl_dims.sum()
        kl_penalty = kl_dims.clamp(min=c.free_bits).sum()
        beta = c.beta(step)
        out = {
            "recon": recon,
            "kl": kl.detach(),
            "kl_penalty": kl_penalty,
            "beta": torch.tensor(beta),
        }
        total = recon + beta * kl_penalty
        if self.discriminator is not None:
            out["adv"], out["feature_matching"] = self.adversarial_terms(logits, ids, mask)
            total = total + c.adv_weight * out["adv"]
            total = total + c.feature_matching_weight * out["feature_matching"]
        out["loss"] = total
        return out

    def soft_fakes(self, logits, ids):
        """Differentiable fake sequences `[B, N, V]`: the first token as given, then
        Gumbel-softmax samples of logits[:, :-1] (each predicting the next position)."""
        soft = F.gumbel_softmax(logits[:, :-1].float(), tau=self.config.gumbel_temperature)
        first = F.one_hot(ids[:, :1].long(), self.config.vocab_size).to(soft.dtype)  # [B, 1, V]
        return torch.cat([first, soft], dim=1)  # [B, N, V]

    def adversarial_terms(self, logits, ids, mask):
        """Generator side: (adversarial loss, feature matching), both differentiable
        with respect to `logits`."""
        fake = self.soft_fakes(logits, ids)
        real = F.one_hot(ids.long(), self.config.vocab_size).float()
        scores, fake_feats = self.discriminator(fake, mask)
        with torch.no_grad():
            _, real_feats = self.discriminator(real, mask)
        if self.config.gan_loss == "hinge":
            adv = -scores.float().mean()
        else:
            adv = F.softplus(-scores.float()).mean()
        fm = sum(
            (f.float().mean(0) - r.float().mean(0)).abs().mean()
            for f, r in zip(fake_feats, real_feats, strict=True)
        ) / len(fake_feats)
        return adv, fm

    def discriminator_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """vae_gan: the discriminator's loss on real windows against detached fakes.

        Returns {"loss", "d_real", "d_fake"} (mean scores). Gradients reach only the
        discriminator's parameters.
        """
        if self.discriminator is None:
            raise ValueError(f"mode {self.config.mode!r} has no discriminator (vae_gan only)")
        ids, mask = self._batch(batch)
        with torch.no_grad():
            mu, logvar = self._encode(ids, mask)
            logits = self._decode(ids, mask, self.reparameterize(mu, logvar), None)
            fake = self.soft_fakes(logits, ids)
        real = F.one_hot(ids.long(), self.config.vocab_size).to(fake.dtype)
        both = torch.cat([real, fake], dim=0)  # [2B, N, V]
        scores, _ = self.discriminator(both, torch.cat([mask, mask], dim=0))
        d_real, d_fake = scores.float().chunk(2)
        if self.config.gan_loss == "hinge":
            loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        else:
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        return {"loss": loss, "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}

    # -- generation ---------------------------------------------------------------------
    def generate(
        self,
        prompt=None,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        z=None,
        constrained: bool = True,
        max_note_steps: int = 512,
    ) -> torch.Tensor:
        """Sample continuations; returns LongTensor `[B, N + T]` (prompt, then new tokens).

        `prompt`: ids `[N]` or `[B, N]` (default `[START]`), N <= max_seq_len, prefilled
        once; then up to `max_new_tokens` tokens are decoded one at a time through a
        bounded per-layer `HierarchicalKVCache` (see `stretto.engine.generate`). A row
        that emits END is padded with PAD afterwards; the output is cut after the last
        END when every row has ended. vae modes: `z` `[latent_dim]` or `[B, latent_dim]`,
        sampled from N(0, I) when None. Sampling: `temperature` (0 = greedy), `top_k`
        (larger than the vocabulary keeps all), `top_p` (1.0 keeps all); `seed` makes it
        reproducible on one device. `constrained` masks the logits with the grammar of
        `stretto.engine.grammar` (notes at most `max_note_steps` x 15.625 ms), so the
        output passes `validate`; the prompt must then pass it too.
        """
        from .generate import generate

        return generate(
            self,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            z=z,
            constrained=constrained,
            max_note_steps=max_note_steps,
        )

    # -- checkpoints --------------------------------------------------------------------
    def save(
        self,
        path: str | Path,
        *,
        optimizers: dict | None = None,
        step: int = 0,
        extra: dict | None = None,
    ) -> None:
        """Write config, vocabulary signature, weights, optimizer states and step
        atomically (see `stretto.engine.checkpoint`)."""
        from .checkpoint import save_checkpoint

        save_checkpoint(path, self, optimizers=optimizers, step=step, extra=extra)

    @classmethod
    def load(
        cls, path: str | Path, *, vocab=None, config: ModelConfig | None = None, map_location="cpu"
    ) -> MusicModel:
        """A model from a checkpoint; ValueError naming the field when the checkpoint's
        vocabulary signature (against `vocab`, default `Vocabulary()`) or its config
        (against `config`, when given) differs."""
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, vocab=vocab, config=config, map_location=map_location).model
