"""`ModelConfig`: the music model's shape, attention, mode and loss settings.

A frozen dataclass validated in `__post_init__`, with named presets and a JSON round
trip. The vocabulary size is never typed by hand: `ModelConfig.from_vocab` takes it
from a `Vocabulary`, and the vocabulary's signature travels with the config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stretto.tokenizer.vocabulary import Vocabulary

MODES = ("transformer", "vae", "vae_gan")
ATTENTIONS = ("wha", "dense")
GAN_LOSSES = ("hinge", "non_saturating")
BETA_SCHEDULES = ("constant", "linear", "cyclical")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides a `MusicModel`'s parameters and losses.

    Shapes: `d_model` split over `n_heads` heads of `d_model // n_heads` (even, for
    rotary positions). `n_layers` decoder blocks; in the vae modes `encoder_layers`
    bidirectional blocks produce `latent_dim`-wide mu and log-variance; vae_gan adds a
    `disc_layers`-block discriminator of width `disc_d_model`.

    Note state: with `note_state` the decoder is told at every position which pitches
    sound on the current instrument, how many notes sound and how long the oldest has
    lasted, read from the ids before it (`stretto.engine.notes`); with
    `instrument_state`, which instrument is current and which instruments the piece has
    struck a note on so far; with `state_logits` (off by default) as well, learned
    gains add that state straight to the logits of the tokens it governs (`StateLogits`:
    NOTE_OFF and NOTE_ON of sounding pitches, INSTRUMENT of instruments played). The
    vocabulary is the same either way.

    Attention: `attention="wha"` calls `stretto.kernels.hierarchical_attention` with
    `window`, `block` (None = plain sliding window) and `attention_backend`;
    `attention="dense"` is full SDPA attention, kept only as a benchmark baseline.

    Losses (see `stretto.engine.objectives`). transformer: next-token cross-entropy per
    target token (PAD ignored). vae: the ELBO in one unit, nats per target token:
    `(sum of the sequences' token NLLs + beta(step) x sum of their KL penalties) /
    target tokens`, where a sequence's KL penalty is its KL summed over the
    `latent_dim` dimensions, each dimension's batch-mean KL floored at `free_bits` nats
    (free bits per dimension: a dimension below the floor costs the floor, so the
    encoder has `latent_dim x free_bits` nats per sequence to spend for free).
    `beta(step)` follows `beta_schedule` up to `beta_max` over `beta_warmup_steps`
    (cyclical: restarts every `beta_cycle_steps`). z conditions every decoder block
    through adaptive norms (scale and shift of both pre-norms, from z). Two aids
    against posterior collapse: `word_dropout` replaces that fraction of the decoder's
    input tokens with UNK while training (the targets stay), and `bow_weight` weighs an
    auxiliary bag-of-words loss, the NLL of the window's target tokens under one
    distribution predicted from z alone.

    vae_gan adds a discriminator that reads hard one-hot sequences: reals are the first
    `gan_prefix + gan_span` tokens of a window, fakes the same `gan_prefix` real tokens
    followed by `gan_span` tokens the generator sampled free-running (straight-through
    Gumbel at a temperature annealed from `gumbel_tau_start` to `gumbel_tau_end` over
    `gumbel_anneal_steps`). The discriminator trains from step 0; the generator's
    adversarial term (`gan_loss`) turns on at `adv_start_step`, weighted adaptively
    by the ratio of the reconstruction's and the adversarial term's gradient norms at
    the last decoder block, clipped to `adv_weight_max`; `feature_matching_weight`
    weighs an L1 distance between the discriminator's mean features on reals and fakes.
    """

    vocab_size: int
    pad_id: int
    vocab_signature: str
    mode: str = "transformer"
    # -- shape ------------------------------------------------------------------------
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 8
    d_ff: int = 2048
    max_seq_len: int = 2048
    dropout: float = 0.0
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    # the decoder reads the note state at every position (`stretto.engine.notes`)
    note_state: bool = True
    # ... and the current instrument and the instruments played so far
    instrument_state: bool = True
    # ... and adds them to the logits of NOTE_OFF, NOTE_ON and INSTRUMENT by learned gains
    # (off by default: docs/engine.md, "The model", says what it gains and costs)
    state_logits: bool = False
    # -- attention --------------------------------------------------------------------
    attention: str = "wha"
    attention_backend: str = "auto"
    window: int = 256
    block: int | None = 64
    # -- vae --------------------------------------------------------------------------
    encoder_layers: int = 6
    latent_dim: int = 128
    # -- discriminator (vae_gan) ------------------------------------------------------
    disc_layers: int = 4
    disc_d_model: int = 256
    disc_n_heads: int = 4
    # -- losses -----------------------------------------------------------------------
    beta_schedule: str = "linear"
    beta_max: float = 1.0
    beta_warmup_steps: int = 2000
    beta_cycle_steps: int = 0
    free_bits: float = 0.5
    word_dropout: float = 0.5
    word_dropout_rows: float = 1.0
    bow_weight: float = 0.0
    gan_loss: str = "hinge"
    gan_prefix: int = 32
    gan_span: int = 64
    gumbel_tau_start: float = 1.0
    gumbel_tau_end: float = 0.5
    gumbel_anneal_steps: int = 2000
    adv_start_step: int = 500
    adv_weight_max: float = 0.1
    feature_matching_weight: float = 1.0
    preset: str = field(default="custom", compare=False)
    # Not a field: transformers' Trainer sets `model.config.use_cache` on every model it
    # is given (see `_accept_use_cache` below); decoding caches here are explicit arguments.
    use_cache: ClassVar[bool] = False

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig: {message}")

        need(self.mode in MODES, f"mode={self.mode!r} is not one of {MODES}")
        need(self.attention in ATTENTIONS, f"attention={self.attention!r} not in {ATTENTIONS}")
        need(self.gan_loss in GAN_LOSSES, f"gan_loss={self.gan_loss!r} not in {GAN_LOSSES}")
        need(
            self.beta_schedule in BETA_SCHEDULES,
            f"beta_schedule={self.beta_schedule!r} not in {BETA_SCHEDULES}",
        )
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, f"{name} must be >= 1")
        need(0 <= self.pad_id < self.vocab_size, f"pad_id={self.pad_id} not in [0, vocab_size)")
        need(
            self.d_model % self.n_heads == 0,
            f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}",
        )
        need(
            (self.d_model // self.n_heads) % 2 == 0,
            f"head dim {self.d_model // self.n_heads} must be even for rotary positions",
        )
        need(_is_int(self.window) and self.window >= 1, f"window={self.window} must be >= 1")
        need(
            self.block is None or (_is_int(self.block) and self.block >= 1),
            f"block={self.block} must be None or >= 1",
        )
        for name in ("note_state", "instrument_state", "state_logits"):
            value = getattr(self, name)
            need(isinstance(value, bool), f"{name}={value!r} must be a bool")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} not in [0, 1)")
        need(self.rope_base > 1.0, f"rope_base={self.rope_base} must be > 1")
        if self.mode != "transformer":
            need(self.encoder_layers >= 1, "encoder_layers must be >= 1 in the vae modes")
            need(self.latent_dim >= 1, "latent_dim must be >= 1 in the vae modes")
        if self.mode == "vae_gan":
            need(self.disc_layers >= 1, "disc_layers must be >= 1 in vae_gan mode")
            need(
                self.disc_d_model % self.disc_n_heads == 0
                and (self.disc_d_model // self.disc_n_heads) % 2 == 0,
                f"disc_d_model={self.disc_d_model} must split into disc_n_heads="
                f"{self.disc_n_heads} heads of even size",
            )
        need(self.beta_max >= 0, f"beta_max={self.beta_max} must be >= 0")
        need(self.beta_warmup_steps >= 0, "beta_warmup_steps must be >= 0")
        need(
            self.beta_schedule != "cyclical" or self.beta_cycle_steps > 0,
            "beta_schedule='cyclical' needs beta_cycle_steps > 0",
        )
        need(self.free_bits >= 0, f"free_bits={self.free_bits} must be >= 0")
        need(0.0 <= self.word_dropout < 1.0, f"word_dropout={self.word_dropout} not in [0, 1)")
        need(
            0.0 <= self.word_dropout_rows <= 1.0,
            f"word_dropout_rows={self.word_dropout_rows} not in [0, 1]",
        )
        need(self.bow_weight >= 0, f"bow_weight={self.bow_weight} must be >= 0")
        need(
            self.gumbel_tau_start > 0 and self.gumbel_tau_end > 0,
            "gumbel_tau_start and gumbel_tau_end must be > 0",
        )
        for name in ("gumbel_anneal_steps", "adv_start_step"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, f"{name} must be >= 0")
        need(
            self.adv_weight_max >= 0 and self.feature_matching_weight >= 0,
            "adv_weight_max and feature_matching_weight must be >= 0",
        )
        if self.mode == "vae_gan":
            need(
                _is_int(self.gan_prefix) and self.gan_prefix >= 1,
                f"gan_prefix={self.gan_prefix} must be >= 1",
            )
            need(_is_int(self.gan_span) and self.gan_span >= 1, f"gan_span={self.gan_span} >= 1")
            need(
                self.gan_prefix + self.gan_span <= self.max_seq_len,
                f"gan_prefix + gan_span = {self.gan_prefix + self.gan_span} exceeds "
                f"max_seq_len={self.max_seq_len}",
            )

    # -- derived -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def gumbel_tau(self, step: int) -> float:
        """The straight-through Gumbel temperature at optimizer step `step` (vae_gan)."""
        if self.gumbel_anneal_steps == 0:
            return self.gumbel_tau_end
        f = min(1.0, max(step, 0) / self.gumbel_anneal_steps)
        return self.gumbel_tau_start + f * (self.gumbel_tau_end - self.gumbel_tau_start)

    def beta(self, step: int) -> float:
        """The KL weight at optimizer step `step`."""
        if self.beta_schedule == "constant" or self.beta_warmup_steps == 0:
            return self.beta_max
        if self.beta_schedule == "cyclical":
            step = step % self.beta_cycle_steps
        return self.beta_max * min(1.0, max(step, 0) / self.beta_warmup_steps)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_vocab(
        cls, vocab: Vocabulary, *, mode: str = "transformer", preset: str = "base", **overrides
    ) -> ModelConfig:
        """A preset (`tiny`, `small`, `base`) for `mode`, sized by `vocab`.

        `overrides` replace any preset field, e.g. `window=128`; the vocabulary fields
        cannot be overridden.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}")
        fixed = {"vocab_size", "pad_id", "vocab_signature"} & overrides.keys()
        if fixed:
            raise ValueError(f"{sorted(fixed)} come from the Vocabulary and cannot be overridden")
        values = dict(MODE_DEFAULTS.get(mode, {}))
        values.update(PRESETS[preset])
        values.update(values.pop(f"{mode}_overrides", {}))
        for other in MODES:
            values.pop(f"{other}_overrides", None)
        values.update(overrides)
        return cls(
            vocab_size=vocab.size,
            pad_id=vocab.PAD,
            vocab_signature=vocab.signature,
            mode=mode,
            preset=preset,
            **values,
        )

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {unknown}")
        # A config written before a state switch existed describes a model without it.
        return cls(
            **{"note_state": False, "instrument_state": False, "state_logits": False, **data}
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> ModelConfig:
        return cls.from_json(Path(path).read_text())

    def differences(self, other: ModelConfig) -> list[str]:
        """`field: mine != theirs` for every compared field that differs."""
        out = []
        for f in dataclasses.fields(self):
            if f.compare and getattr(self, f.name) != getattr(other, f.name):
                out.append(f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}")
        return out


_frozen_setattr = ModelConfig.__setattr__


def _accept_use_cache(self: ModelConfig, name: str, value: Any) -> None:
    """Frozen, except for the one attribute transformers' Trainer writes on any model's
    config: `use_cache` is kept on the instance (it is no field, so it changes neither
    equality nor the JSON) and every other assignment still raises."""
    if name == "use_cache":
        object.__setattr__(self, name, value)
        return
    _frozen_setattr(self, name, value)


ModelConfig.__setattr__ = _accept_use_cache  # dataclass(frozen=True) forbids defining it inside


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# Per mode, before the preset: vae_gan keeps word dropout to half of the sequences, so
# that the decoder is also trained on whole inputs, the regime its free-running samples
# (and the adversarial term) live in; with dropout on every sequence the adversarial
# term pulls that regime away from the data (held-out NLL 3.6 -> 4.6 in 250 steps).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {"vae_gan": {"word_dropout_rows": 0.5}}

# Per preset: the shared shape, then per-mode overrides (the vae splits its depth
# between encoder and decoder).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "d_model": 64,
        "n_heads": 2,
        "n_layers": 2,
        "d_ff": 128,
        "max_seq_len": 2048,
        "window": 32,
        # block 128, not 16: on held-out files of the dev corpus (quality suite, 400
        # steps, 2 seeds) block 16 trails the plain sliding window at 2048 tokens
        # (NLL 4.249 against 4.156) and block 128 leads it (4.129); see
        # benchmarks/results/cpu-amd-epyc/2026-11-28-block-size/
        "block": 128,
        "encoder_layers": 2,
        "latent_dim": 16,
        "disc_layers": 2,
        "disc_d_model": 32,
        "disc_n_heads": 2,
        "beta_warmup_steps": 100,
        "gan_prefix": 16,
        "gan_span": 32,
        "gumbel_anneal_steps": 200,
        "adv_start_step": 300,
    },
    "small": {
        "d_model": 256,
        "n_heads": 4,
        "n_layers": 6,
        "d_ff": 1024,
        "max_seq_len": 2048,
        "window": 128,
        "block": 32,
        "encoder_layers": 3,
        "latent_dim": 64,
        "disc_layers": 3,
        "disc_d_model": 128,
        "disc_n_heads": 2,
        "vae_overrides": {"n_layers": 3},
        "vae_gan_overrides": {"n_layers": 3},
    },
    "base": {
        "d_model": 512,
        "n_heads": 8,
        "n_layers": 8,
        "d_ff": 2048,
        "max_seq_len": 2048,
        "window": 256,
        "block": 64,
        "dropout": 0.1,
        "encoder_layers": 6,
        "latent_dim": 128,
        "disc_layers": 4,
        "disc_d_model": 256,
        "disc_n_heads": 4,
        "vae_overrides": {"n_layers": 6},
        "vae_gan_overrides": {"n_layers": 6},
    },
}
