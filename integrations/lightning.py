"""`MusicLightningModule`: a `MusicModel` trained by Lightning's `Trainer`.

    module = MusicLightningModule(ModelConfig.from_vocab(vocab, mode="vae", preset="tiny"),
                                  TrainConfig(steps=1000, lr=3e-4))
    lightning.Trainer(max_steps=1000).fit(module, DataLoader(TokenDataset(...), batch_size=8))

The optimisation is `stretto.engine.Trainer`'s, from the same pieces: the optimizers of
`build_optimizers` (AdamW, no weight decay on norms and biases; vae_gan's discriminator
with its own), and every learning rate scaled per optimizer step by `lr_factor` (linear
warm-up over `warmup_steps`, cosine down to `min_lr_ratio` at `steps`). The losses are
the model's own (`model.loss`, `model.discriminator_loss`); `step` for the KL schedule
counts optimizer updates of the generator.

transformer and vae: Lightning's automatic optimization (so `accumulate_grad_batches`,
precision plugins and the rest apply); gradients are clipped to `grad_clip` unless the
Trainer is given its own `gradient_clip_val`. vae_gan: manual optimization, as in
`stretto.engine.Trainer`: per batch the generator's update, then the discriminator's on
detached fakes from zeroed gradients, each clipped to `grad_clip`. Lightning counts
every optimizer's step in `global_step`, so a vae_gan batch advances it by two:
`Trainer(max_steps=2 * steps)` makes `steps` updates of each. `module.updates` counts
generator updates in every mode; it is the KL schedule's step.

Logged through Lightning's logger (`self.log`): `train/<term>` for every term of the
losses (`loss`, `recon`, `kl`, ...; vae_gan adds `train/disc_<term>`), `train/lr` (and
`train/disc_lr`), and `val/<term>` averaged over the validation epoch. From
`TrainConfig` this module uses `steps`, `lr`, `disc_lr`, `weight_decay`, `betas`,
`warmup_steps`, `min_lr_ratio` and `grad_clip`; batch size, precision, validation and
checkpoint intervals are the data loader's and Lightning Trainer's settings.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from stretto.engine import ModelConfig, MusicModel, TrainConfig
from stretto.engine.train import build_optimizers, lr_factor


class MusicLightningModule(pl.LightningModule):
    """A `MusicModel` (`self.model`) with its losses and schedule as a LightningModule.

    `config` and `train_config` may also be their dicts (`to_dict()` / `asdict`): that is
    how they are stored as hyperparameters, so `load_from_checkpoint` rebuilds the
    module. Batches are `{"input_ids", "attention_mask"}` `[B, N]`, as `TokenDataset`
    items batched by a `DataLoader`.
    """

    def __init__(
        self,
        config: ModelConfig | dict[str, Any],
        train_config: TrainConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if isinstance(train_config, dict):
            train_config = TrainConfig.from_dict(train_config)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        train_config = train_config or TrainConfig()
        if not isinstance(train_config, TrainConfig):
            raise TypeError(
                f"train_config must be a TrainConfig, got {type(train_config).__name__}"
            )
        self.save_hyperparameters(
            {"config": config.to_dict(), "train_config": train_config.to_dict()}
        )
        self.train_config = train_config
        self.model = MusicModel(config)
        self.gan = self.model.discriminator is not None
        self.automatic_optimization = not self.gan
        # Generator updates so far: the KL schedule's step. Lightning's global_step counts
        # every optimizer's steps under manual optimization (two per vae_gan batch).
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    # -- optimizers ----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.train_config
        optimizers = build_optimizers(self.model, cfg)

        def factor(step: int) -> float:
            return lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)

        out = []
        for opt in optimizers.values():
            scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            schedule = {"scheduler": scheduler, "interval": "step"}
            out.append({"optimizer": opt, "lr_scheduler": schedule})
        return out[0] if len(out) == 1 else out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.automatic_optimization:  # once per update, after accumulated batches too
            self.updates += 1

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        value = self.train_config.grad_clip if gradient_clip_val is None else gradient_clip_val
        if value:
            self.clip_gradients(optimizer, value, gradient_clip_algorithm or "norm")

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        step = int(self.updates)
        if not self.gan:
            out = self.model.loss(batch, step=step)
            self._log_terms("train", out, len(batch["input_ids"]))
            self.log("train/lr", self._lr(0), on_step=True)
            return out["loss"]  # `updates` advances in on_before_optimizer_step

        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        self.log("train/lr", self._lr(0), on_step=True)
        self.log("train/disc_lr", self._lr(1), on_step=True)
        out = self._manual_update(opt_g, lambda: self.model.loss(batch, step=step))
        self._log_terms("train", out, len(batch["input_ids"]))
        # The generator's backward also left gradients on the discriminator: its own
        # update starts from zeroed gradients (as in stretto.engine.Trainer).
        d = self._manual_update(opt_d, lambda: self.model.discriminator_loss(batch))
        self._log_terms("train", {f"disc_{k}": v for k, v in d.items()}, len(batch["input_ids"]))
        sched_g.step()
        sched_d.step()
        self.updates += 1
        return None

    def _manual_update(self, opt, loss_fn) -> dict[str, torch.Tensor]:
        opt.zero_grad(set_to_none=True)
        out = loss_fn()
        self.manual_backward(out["loss"])
        if self.train_config.grad_clip:
            self.clip_gradients(opt, self.train_config.grad_clip, "norm")
        opt.step()
        return out

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model.loss(batch, step=int(self.updates))
        self._log_terms("val", out, len(batch["input_ids"]))
        return out["loss"]

    def _log_terms(self, split: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = split == "train"
        for name, value in terms.items():
            self.log(
                f"{split}/{name}",
                value.detach().float(),
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=name == "loss",
                batch_size=batch_size,
            )

    def _lr(self, index: int) -> float:
        opts = self.optimizers()
        opt = opts[index] if isinstance(opts, list) else opts
        return float(opt.param_groups[0]["lr"])
