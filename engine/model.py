"""`MusicModel`: a pre-norm rotary transformer over event tokens, in three modes.

- transformer: a causal decoder over the tokens.
- vae: a bidirectional encoder pools the sequence into mu / log-variance; z conditions
  every block of the causal decoder.
- vae_gan: the vae plus a spectral-normalized bidirectional discriminator.

The network lives here and in `layers.py`; the losses of each mode in `objectives.py`;
checkpoint files in `checkpoint.py`. There is one decoder forward: training runs it over
whole windows, generation runs the same code with one cache per block (a prefill, then
one token at a time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from stretto.kernels import HierarchicalKVCache
from stretto.tokenizer.vocabulary import Vocabulary

from . import objectives
from .checkpoint import (
    Checkpoint,
    check_compatible,
    read_checkpoint,
    read_pretrained,
    save_checkpoint,
    save_pretrained,
)
from .config import ModelConfig
from .generate import generate
from .layers import Discriminator, Stack, masked_mean
from .notes import (
    DecodeCache,
    InstrumentEmbedding,
    NoteEmbedding,
    NoteFeatures,
    NoteTracker,
    StateLogits,
    note_features,
)
from .outputs import MusicModelOutput

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
# Initial std of the z -> (scale, shift) projections, times 1/sqrt(latent_dim): large
# enough that z moves the decoder from the first step (measured in docs/engine.md's vae
# section), small enough that an untrained z does not swamp the token stream.
MODULATION_INIT_STD = 0.5
# vae modes: every encoding in training mode moves the aggregate posterior's running
# moments this far towards its batch's (as BatchNorm's running statistics), so that
# they describe the encoder of the last few dozen steps.
LATENT_MOMENTUM = 0.05


def _prior_moments(latent_dim: int) -> dict[str, torch.Tensor]:
    """The aggregate posterior's buffers holding the prior N(0, I): E[z] = 0, E[z^2] = 1."""
    return {
        "latent_mean": torch.zeros(latent_dim),
        "latent_second_moment": torch.ones(latent_dim),
    }


class MusicModel(nn.Module):
    """The music model. Build it with `MusicModel(ModelConfig.from_vocab(vocab, ...))`.

    `model(input_ids, attention_mask=None, *, z=None, positions=None, cache=None)` ->
    logits `[B, N, V]`, where logits[:, i] predicts token i + 1. `input_ids` is
    `[B, N]` integer with every id in `[0, vocab_size)`; `attention_mask` `[B, N]` bool
    (True = real token) defaults to `input_ids != PAD`. In the vae modes z defaults to
    the encoder's sample (training) or its mean (eval); `latent_distribution()` is the
    aggregate posterior that `generate` draws z from. Losses: `loss(batch, step=)` and
    `discriminator_loss(batch)` (see `stretto.engine.objectives`).

    Hugging Face conventions: `model(input_ids, attention_mask, labels)` returns a
    `MusicModelOutput` with `.loss` and `.logits` (see `forward`);
    `save_pretrained(dir)` / `MusicModel.from_pretrained(dir)` write and read
    `model.safetensors` + `config.json`.
    """

    def __init__(self, config: ModelConfig) -> None:
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
        self.encoder: Stack | None = None
        if is_vae:
            self.encoder = Stack(c.encoder_layers, c.d_model, c.n_heads, c.d_ff, c, causal=False)
            self.to_stats = nn.Linear(c.d_model, 2 * c.latent_dim)  # -> [mu ; logvar]
            # the aggregate posterior's running moments, E[mu] and E[mu^2 + sigma^2] over
            # training windows; N(0, I) until the first training step
            for name, value in _prior_moments(c.latent_dim).items():
                self.register_buffer(name, value)
        # vae: the auxiliary bag-of-words head, one token distribution from z alone
        self.bow_head = (
            nn.Linear(c.latent_dim, c.vocab_size) if is_vae and c.bow_weight > 0 else None
        )
        self.discriminator = Discriminator(c) if c.mode == "vae_gan" else None
        self.notes: NoteEmbedding | None = None
        self.instruments: InstrumentEmbedding | None = None
        self.state_logits: StateLogits | None = None
        self._init_weights()
        # Built last, each from its own generator seeded by one draw: models with and
        # without either state, from the same seed, start with the same weights
        # everywhere else.
        seed = int(torch.randint(2**62, (), device="cpu"))
        self.notes = NoteEmbedding(c.d_model) if c.note_state else None
        self.instruments = InstrumentEmbedding(c.d_model) if c.instrument_state else None
        for offset, state in enumerate((self.notes, self.instruments)):
            if state is None:
                continue
            generator = torch.Generator(device="cpu").manual_seed(seed + offset)
            with torch.no_grad():  # drawn on the CPU, whatever the default device
                for p in state.parameters():
                    p.copy_(0.02 * torch.randn(p.shape, generator=generator, device="cpu"))
        if c.state_logits and (c.note_state or c.instrument_state):  # gains start at 0
            self.state_logits = StateLogits(c.note_state, c.instrument_state)

    def _init_weights(self) -> None:
        depth_scale = 1.0 / math.sqrt(2 * max(self.config.n_layers, 1))
        for name, p in self.named_parameters():
            if name.startswith("discriminator"):
                continue  # spectral norm keeps its own scale
            if p.dim() == 2:
                std = 0.02 * (depth_scale if name.endswith(("out.weight", "down.weight")) else 1)
                if ".modulation." in name:  # z ~ N(0, I): scale and shift start near 0
                    std = MODULATION_INIT_STD / math.sqrt(self.config.latent_dim)
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    # -- parameter groups ---------------------------------------------------------------
    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminator (all parameters outside vae_gan)."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The discriminator's parameters (vae_gan only)."""
        if self.discriminator is None:
            raise ValueError(f"mode {self.config.mode!r} has no discriminator (vae_gan only)")
        return list(self.discriminator.parameters())

    # -- input checks -------------------------------------------------------------------
    def check_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
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

    def check_latent(self, z: torch.Tensor | None, batch: int) -> None:
        """vae modes: z must be `[batch, latent_dim]`."""
        if self.encoder is None:
            if z is not None:
                raise ValueError(f"mode {self.config.mode!r} takes no z (vae modes only)")
            return
        if z is None:
            raise ValueError("the vae decoder needs z [B, latent_dim]")
        if z.shape != (batch, self.config.latent_dim):
            raise ValueError(
                f"z has shape {list(z.shape)}, expected [{batch}, {self.config.latent_dim}]"
            )

    # -- pieces -------------------------------------------------------------------------
    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """vae modes: (mu, logvar), each `[B, latent_dim]`."""
        if self.encoder is None:
            raise ValueError(f"mode {self.config.mode!r} has no encoder (vae modes only)")
        mask = self.check_inputs(input_ids, attention_mask)
        return self.latent_stats(input_ids, mask)

    def latent_stats(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` for inputs already checked (`check_inputs`: ids in range, `mask` a
        bool `[B, N]`): (mu, logvar). What the losses and evaluation call per batch."""
        if self.encoder is None:
            raise ValueError(f"mode {self.config.mode!r} has no encoder (vae modes only)")
        x = self.embed(input_ids)  # [B, N, C]
        h = self.encoder(x, mask)
        mu, logvar = self.to_stats(masked_mean(h, mask)).chunk(2, dim=-1)  # [B, L] each
        logvar = logvar.clamp(-30.0, 20.0)
        if self.training:
            self._track_latent(mu, logvar)
        return mu, logvar

    @torch.no_grad()
    def _track_latent(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Move the aggregate posterior's running moments `LATENT_MOMENTUM` of the way
        to this batch's."""
        mean = mu.float().mean(0)
        second = (mu.float().square() + logvar.float().exp()).mean(0)
        self.latent_mean.lerp_(mean.to(self.latent_mean.dtype), LATENT_MOMENTUM)
        self.latent_second_moment.lerp_(second.to(self.latent_second_moment.dtype), LATENT_MOMENTUM)

    def latent_distribution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """vae modes: (mean, std) `[latent_dim]` each of the aggregate posterior, the
        diagonal Gaussian with the moments of q(z|x) over the training windows (running
        estimates, updated by every encoding in training mode). A model never trained
        returns the prior's (0, 1). What `generate` samples z from by default: a KL
        that the free bits and beta schedule keep small leaves the posteriors far
        inside the prior (docs/engine.md, "Where z comes from")."""
        if self.encoder is None:
            raise ValueError(f"mode {self.config.mode!r} has no latent (vae modes only)")
        mean = self.latent_mean.float()
        var = (self.latent_second_moment.float() - mean.square()).clamp(min=1e-8)
        return mean, var.sqrt()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A vae saved before the aggregate posterior was tracked loads with the prior.
        if self.encoder is not None:
            for name, value in _prior_moments(self.config.latent_dim).items():
                state_dict.setdefault(prefix + name, value.to(self.latent_mean))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    def new_cache(self, batch: int, max_length: int) -> DecodeCache:
        """Empty decoding caches (one per decoder block, and the states' tracker)
        for `batch` rows of up to `max_length` tokens: pass them to `decode(..., cache=)`."""
        layers = self.decoder.new_caches(batch, max_length)
        notes = None
        if self.notes is not None or self.instruments is not None:
            notes = NoteTracker(batch, next(self.parameters()).device)
        return DecodeCache(layers, notes)

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        z: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: list[HierarchicalKVCache] | None = None,
    ) -> torch.Tensor:
        """The causal decoder alone: logits `[B, N, V]`; z `[B, latent_dim]` in vae modes.

        `positions` `[N]` are the absolute positions of `input_ids` (default 0..N-1, or
        the cache's length onwards). With `cache` (from `new_cache`): empty caches are
        filled from the prompt `input_ids`; filled ones take one token per call.
        """
        mask = self.check_inputs(input_ids, attention_mask)
        return self.decoder_logits(input_ids, mask, z, positions, cache)

    def decoder_logits(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None,
        z: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: DecodeCache | None = None,
        *,
        state_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`decode` for inputs already checked (`check_inputs`; `mask` None = every token
        real): logits `[B, N, V]`. What the losses, evaluation and generation call per
        batch or token. `state_ids` (default `input_ids`): the ids the note state is read
        from, where the decoder's input hides some (word dropout)."""
        self.check_latent(z, input_ids.shape[0])
        x = self.embed(input_ids)  # [B, N, C]
        f = None
        if self.notes is not None or self.instruments is not None:
            f = self._note_features(input_ids if state_ids is None else state_ids, mask, cache)
            for embedding in (self.notes, self.instruments):
                if embedding is not None:
                    x = x + embedding(f)
        h = self.decoder(x, mask, positions, cond=z, caches=cache)
        logits = self.head(h)  # [B, N, V]
        if self.state_logits is not None:  # built only with a state, so f is read
            logits = self.state_logits(logits, f)
        return logits

    def _note_features(self, ids: torch.Tensor, mask, cache) -> NoteFeatures:
        """The note state after each of `ids`: from `ids` alone without a cache; with
        one, as the attention treats it: one id advances the cache's tracker, a prompt
        (an empty cache) is read into it whole."""
        if cache is None:
            return note_features(ids, mask)
        notes = getattr(cache, "notes", None)
        if notes is None:
            raise ValueError(
                "this model reads the note or instrument state: make its caches with new_cache"
            )
        if ids.shape[1] == 1:
            return notes.advance(ids[:, 0], None if mask is None else mask[:, 0])
        return notes.load(ids, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        z: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: list[HierarchicalKVCache] | None = None,
        step: int | None = None,
    ) -> torch.Tensor | MusicModelOutput:
        """Logits `[B, N, V]`; with `labels`, a `MusicModelOutput` (`.loss`, `.logits`).

        `labels` `[B, N]` follow transformers' causal LMs: token ids, -100 ignored,
        shifted here (logits[:, i] is scored against labels[:, i + 1]); targets at padded
        positions (`attention_mask` False) or equal to PAD are ignored too, as in
        `loss()`. `.loss` is the mode's generator loss, `loss(batch, step=step)["loss"]`
        with the labels as targets: the transformer's next-token cross-entropy; in the
        vae modes reconstruction + beta x KL (+ the adversarial terms in vae_gan), with
        z drawn from the encoder, so the labels must be the input ids wherever they are
        not -100. `step` drives the beta schedule; None (a trainer that passes no step)
        takes `beta_max`. vae_gan's discriminator is not trained by this loss: give a
        single-optimizer trainer `generator_parameters()` only (see
        `discriminator_loss`). With labels, z, positions and cache are not taken.
        """
        if labels is not None:
            return self._labelled_forward(
                input_ids, attention_mask, labels, z, positions, cache, step
            )
        if step is not None:
            raise ValueError("step drives the loss's beta schedule: it needs labels")
        mask = self.check_inputs(input_ids, attention_mask)
        if self.encoder is not None and z is None:
            mu, logvar = self.latent_stats(input_ids, mask)
            z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decoder_logits(input_ids, mask, z, positions, cache)

    def _labelled_forward(self, input_ids, attention_mask, labels, z, positions, cache, step):
        given = [
            n for n, x in (("z", z), ("positions", positions), ("cache", cache)) if x is not None
        ]
        if given:
            raise ValueError(
                f"with labels the forward computes the training loss over whole windows, "
                f"drawing z itself: {', '.join(given)} cannot be given too"
            )
        mask = self.check_inputs(input_ids, attention_mask)
        labels = self.check_labels(labels, input_ids)
        terms, logits = objectives.generator_terms(self, input_ids, mask, step=step, labels=labels)
        return MusicModelOutput(loss=terms["loss"], logits=logits)

    def check_labels(self, labels: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Validate `labels` `[B, N]` (ids in the vocabulary or -100) against checked
        `input_ids`; in the vae modes they must equal the input ids where not -100."""
        c = self.config
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"labels has shape {list(labels.shape)}, expected {list(input_ids.shape)} "
                "like input_ids [B, N]"
            )
        if labels.dtype not in _INT_DTYPES:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        labels = labels.to(input_ids.device)
        if torch.compiler.is_compiling():
            return labels
        bad = (labels != -100) & ((labels < 0) | (labels >= c.vocab_size))
        if bool(bad.any()):
            value = int(labels[bad][0])
            raise ValueError(
                f"label {value} is neither -100 (ignored) nor a token id in [0, {c.vocab_size})"
            )
        if self.encoder is not None:
            differs = (labels != -100) & (labels != input_ids)
            if bool(differs.any()):
                b, i = (int(x) for x in differs.nonzero()[0])
                raise ValueError(
                    f"mode {c.mode!r} reconstructs its input: labels must equal input_ids "
                    f"where not -100, but labels[{b}, {i}] = {int(labels[b, i])} != "
                    f"input_ids[{b}, {i}] = {int(input_ids[b, i])}"
                )
        return labels

    # -- losses (see objectives.py) -----------------------------------------------------
    def loss(self, batch: dict, *, step: int = 0) -> dict[str, torch.Tensor]:
        """The mode's generator loss: {"loss", "recon", ...}; see `objectives.generator_loss`."""
        return objectives.generator_loss(self, batch, step=step)

    def discriminator_loss(self, batch: dict, *, step: int = 0) -> dict[str, torch.Tensor]:
        """vae_gan: the discriminator's loss; see `objectives.discriminator_loss`."""
        return objectives.discriminator_loss(self, batch, step=step)

    # -- generation ---------------------------------------------------------------------
    def generate(
        self, prompt: torch.Tensor | Sequence[int] | None = None, **options
    ) -> torch.Tensor:
        """Sample continuations: `stretto.engine.generate(self, prompt, **options)`, where
        the options (sampling, grammar policies, batch, latent, compiling) are documented."""
        return generate(self, prompt, **options)

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
        save_checkpoint(path, self, optimizers=optimizers, step=step, extra=extra)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        vocab: Vocabulary | None = None,
        config: ModelConfig | None = None,
        map_location: str | torch.device = "cpu",
    ) -> MusicModel:
        """A model from a checkpoint; ValueError naming the field when the checkpoint's
        vocabulary signature (against `vocab`, default `Vocabulary()`) or its config
        (against `config`, when given) differs."""
        return load_checkpoint(path, vocab=vocab, config=config, map_location=map_location).model

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `directory/model.safetensors` (weights only; tied weights stored once) and
        `directory/config.json` (the `ModelConfig`, vocabulary signature included)."""
        return save_pretrained(directory, self)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        vocab: Vocabulary | None = None,
        config: ModelConfig | None = None,
        map_location: str | torch.device = "cpu",
    ) -> MusicModel:
        """A model from a `save_pretrained` folder (a local path). ValueError naming the
        field, as for checkpoints, when its vocabulary signature (against `vocab`,
        default `Vocabulary()`) or its config (against `config`, when given) differs."""
        saved, state = read_pretrained(
            directory, vocab=vocab, config=config, map_location=map_location
        )
        model = cls(saved)
        model.load_state_dict(state)
        return model.to(map_location)


def load_checkpoint(
    path: str | Path,
    *,
    vocab: Vocabulary | None = None,
    config: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Rebuild the model from `path` and return it with its step and optimizer states."""
    payload = read_checkpoint(path, map_location)
    saved = check_compatible(payload, vocab=vocab, config=config)
    model = MusicModel(saved)
    model.load_state_dict(payload["model"])
    return Checkpoint(
        model=model,
        step=int(payload["step"]),
        optimizers=payload.get("optimizers", {}),
        extra=payload.get("extra", {}),
    )
