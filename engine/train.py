"""`Trainer`: a small training loop for users without their own.

AdamW with linear warmup then cosine decay, gradient clipping, bf16/fp16 autocast on
CUDA (fp16 with a gradient scaler), gradient accumulation, vae_gan's two-step update
(generator, then discriminator on detached fakes, each with its own optimizer),
periodic validation loss, atomic checkpoints, and a loss log (`log.jsonl`) with a PNG
loss curve (`loss.png`). The progress bar shows only when stderr is a terminal.

Launched by `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK set), the same loop trains data
parallel: DistributedDataParallel by default, FSDP2 (`fully_shard`) with
`TrainConfig.strategy="fsdp"`; see `stretto.engine.distributed`. Each rank reads its own
slice of the data, logged losses are averaged over the ranks, and files (log, curve,
checkpoints) are written by rank 0 only; checkpoints hold the plain, unsharded model.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoint import check_compatible, read_checkpoint, save_checkpoint
from .model import MusicModel
from .objectives import TrainingObjective

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. `steps` counts optimizer steps; each takes `grad_accum`
    micro-batches of `batch_size` windows (per rank in a distributed run, whose global
    batch is `batch_size * grad_accum * world_size`).

    Distributed runs only: `strategy` is "ddp" (replicated weights) or "fsdp" (FSDP2,
    weights, gradients and optimizer states sharded over the ranks); `dist_timeout_s`
    bounds every collective, so a dead rank makes the others fail within it.
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    disc_lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    strategy: str = "ddp"
    dist_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)} must be >= 0")
        if self.lr <= 0 or self.disc_lr <= 0:
            raise ValueError("TrainConfig: learning rates must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig: min_lr_ratio={self.min_lr_ratio} not in [0, 1]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig: precision={self.precision!r} not in {PRECISIONS}")
        if self.grad_clip < 0:
            raise ValueError("TrainConfig: grad_clip must be >= 0 (0 disables clipping)")
        if self.strategy not in distributed.STRATEGIES:
            raise ValueError(
                f"TrainConfig: strategy={self.strategy!r} not in {distributed.STRATEGIES}"
            )
        if not self.dist_timeout_s > 0:
            raise ValueError(f"TrainConfig: dist_timeout_s={self.dist_timeout_s} must be > 0")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms, biases or 1-D gains)."""
    params = [p for p in params if p.requires_grad]
    seen, decay, no_decay = set(), [], []
    for p in params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizers(
    model: MusicModel, config: TrainConfig, *, fused: bool = False
) -> dict[str, torch.optim.Optimizer]:
    """AdamW per update: {"generator"} (no weight decay on norms, biases and gains), and
    for vae_gan {"discriminator"} (`disc_lr`, betas (0.5, 0.9), no weight decay).

    The learning rates are the base rates; callers scale them by `lr_factor` per step.
    """
    optimizers = {
        "generator": torch.optim.AdamW(
            param_groups(model.generator_parameters(), config.weight_decay),
            lr=config.lr,
            betas=config.betas,
            fused=fused,
        )
    }
    if model.discriminator is not None:
        optimizers["discriminator"] = torch.optim.AdamW(
            param_groups(model.discriminator_parameters(), 0.0),
            lr=config.disc_lr,
            betas=(0.5, 0.9),
            fused=fused,
        )
    return optimizers


class Trainer:
    """Train a `MusicModel` on batches of {"input_ids", "attention_mask"}.

    `train_data` / `val_data`: a map-style `Dataset` of such dicts (batched and
    shuffled here) or any iterable of ready batches (cycled). With `out_dir`, writes
    `log.jsonl`, `loss.png`, `config.json`, `train_config.json` and checkpoints
    `last.pt` (every `checkpoint_every` steps and at the end).

    `self.model` stays the plain model; `self.module` is what the losses go through: a
    `TrainingObjective` over the model, inside DDP under torchrun (FSDP2 shards the
    model in place). Under torchrun every rank builds the same model and Trainer, and
    `save` and `resume` must be called on every rank. `close()` leaves the process
    group this Trainer joined.
    """

    def __init__(
        self,
        model: MusicModel,
        train_data,
        val_data=None,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ):
        self.config = cfg = config or TrainConfig()
        self.launch = distributed.launch_from_env()
        self._joined = False
        if self.launch is None:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        else:
            self._joined = not torch.distributed.is_initialized()
            self.device = distributed.setup(self.launch, device, cfg.dist_timeout_s)
        self.is_main = self.launch is None or self.launch.is_main
        self.model = model.to(self.device)
        self.gan = model.discriminator is not None
        self.strategy = cfg.strategy if self.launch is not None else None
        objective = TrainingObjective(model)
        self.module = (
            objective
            if self.launch is None
            else distributed.wrap(objective, cfg.strategy, self.device, gan=self.gan)
        )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        self.train_data, self.val_data = train_data, val_data
        self.step = 0
        self.history: list[dict] = []

        self.optimizers = build_optimizers(model, cfg, fused=self.device.type == "cuda")
        self.base_lr = {"generator": cfg.lr, "discriminator": cfg.disc_lr}

        self.amp_dtype = self._amp_dtype(cfg.precision)
        scale = self.amp_dtype == torch.float16
        self.scalers = {
            name: torch.amp.GradScaler("cuda", enabled=scale) for name in self.optimizers
        }

    def _amp_dtype(self, precision: str) -> torch.dtype | None:
        if self.device.type != "cuda" or precision == "fp32":
            if precision in ("bf16", "fp16") and self.device.type != "cuda":
                raise ValueError(f"precision={precision!r} needs a CUDA device")
            return None
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- data -----------------------------------------------------------------------------
    def _batches(self, data, *, shuffle: bool) -> Iterator[dict]:
        if self.launch is not None:
            return distributed.rank_batches(
                data,
                batch_size=self.config.batch_size,
                shuffle=shuffle,
                seed=self.config.seed,
                num_workers=self.config.num_workers,
                rank=self.launch.rank,
                world_size=self.launch.world_size,
            )
        if isinstance(data, Dataset) and hasattr(data, "__len__"):
            if len(data) == 0:
                raise ValueError("the dataset has no windows")
            gen = torch.Generator().manual_seed(self.config.seed)
            loader = DataLoader(
                data,
                batch_size=self.config.batch_size,
                shuffle=shuffle,
                generator=gen,
                drop_last=shuffle and len(data) >= self.config.batch_size,
                num_workers=self.config.num_workers,
            )
            return (
                itertools.chain.from_iterable(itertools.repeat(loader)) if shuffle else iter(loader)
            )
        return itertools.cycle(data) if shuffle else iter(data)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- one optimizer step ----------------------------------------------------------------
    def _set_lr(self) -> float:
        cfg = self.config
        f = lr_factor(self.step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.base_lr[name] * f
        return self.base_lr["generator"] * f

    def _update(self, name: str, params: list, micro: list[dict], loss_fn) -> dict[str, float]:
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for i, batch in enumerate(micro):
            with self._gradient_sync(i == len(micro) - 1):
                with self._autocast():
                    out = loss_fn(batch)
                scaler.scale(out["loss"] / len(micro)).backward()
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / len(micro)
        if self.launch is not None:
            totals = distributed.all_mean(totals, self.device)
        if self.config.grad_clip > 0:
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
                norm = norm.full_tensor()
            totals["grad_norm"] = float(norm)
        scaler.step(opt)
        scaler.update()
        return totals

    def _gradient_sync(self, last: bool):
        """Gradients are reduced across ranks on the last micro-batch only."""
        if self.strategy == "ddp" and not last:
            return self.module.no_sync()
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # Losses go through the module's __call__ so that a DDP/FSDP wrapper sees them.
    def _generator_loss(self, batch: dict) -> dict:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        return self.module(ids, mask, objective="generator", step=self.step)

    def _discriminator_loss(self, batch: dict) -> dict:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        return self.module(ids, mask, objective="discriminator")

    def train_step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns averaged terms."""
        self.module.train()
        lr = self._set_lr()
        micro = [self._to_device(b) for b in micro_batches]
        gen_params = self.model.generator_parameters()
        row = self._update("generator", gen_params, micro, self._generator_loss)
        if self.gan:
            # The generator's backward also left gradients on the discriminator; its
            # own update starts from zeroed gradients (zero_grad in _update).
            d = self._update(
                "discriminator",
                self.model.discriminator_parameters(),
                micro,
                self._discriminator_loss,
            )
            row.update({f"disc_{k}": v for k, v in d.items()})
        row["lr"] = lr
        self.step += 1
        return row

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss terms over up to `eval_batches` validation batches."""
        if self.val_data is None:
            return {}
        self.module.eval()
        sums: dict[str, float] = {}
        n = 0
        for batch in itertools.islice(
            self._batches(self.val_data, shuffle=False), self.config.eval_batches
        ):
            with self._autocast():
                out = self._generator_loss(self._to_device(batch))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n += 1
        self.module.train()
        means = {k: v / max(n, 1) for k, v in sums.items()}
        if self.launch is not None:  # every rank ran as many batches: mean of means
            means = distributed.all_mean(means, self.device)
        return means

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train for `config.steps` optimizer steps; returns the logged rows."""
        cfg = self.config
        # Ranks draw different dropout masks and VAE samples, as different batches would.
        torch.manual_seed(cfg.seed + (self.launch.rank if self.launch else 0))
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.model.config.save_json(self.out_dir / "config.json")
            (self.out_dir / "train_config.json").write_text(
                json.dumps(asdict(cfg), indent=2) + "\n"
            )
        batches = self._batches(self.train_data, shuffle=True)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
        start = time.perf_counter()
        try:
            self._loop(batches, bar, start)
        except RuntimeError as exc:
            if self.launch is None:
                raise
            raise RuntimeError(
                f"rank {self.launch.rank} of {self.launch.world_size} stopped at step "
                f"{self.step}: {type(exc).__name__}: {exc} (when another rank died, this is "
                f"the collective that noticed it, within dist_timeout_s={cfg.dist_timeout_s:g})"
            ) from exc
        finally:
            if bar is not None:
                bar.close()
        if self.out_dir is not None:
            self.save(self.out_dir / "last.pt")
            if self.is_main:
                plot_losses(self.history, self.out_dir / "loss.png")
        return self.history

    def _loop(self, batches: Iterator[dict], bar, start: float) -> None:
        cfg = self.config
        while self.step < cfg.steps:
            row = self.train_step([next(batches) for _ in range(cfg.grad_accum)])
            step = self.step
            if step % cfg.log_every == 0 or step == cfg.steps:
                self._log({"step": step, "split": "train", **row}, start)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}")
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                val = self.evaluate()
                if val:
                    self._log({"step": step, "split": "val", **val}, start)
            if (
                self.out_dir is not None
                and cfg.checkpoint_every
                and (step % cfg.checkpoint_every == 0)
            ):
                self.save(self.out_dir / "last.pt")
            if bar is not None:
                bar.update(1)

    def _log(self, row: dict, start: float) -> None:
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        row["time_s"] = round(time.perf_counter() - start, 3)
        self.history.append(row)
        if self.out_dir is not None and self.is_main:
            with (self.out_dir / "log.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a checkpoint of the plain model; in a distributed run every rank calls
        this (FSDP gathers the shards), rank 0 writes, and all wait for the file."""
        extra = {"train_config": asdict(self.config)}
        if self.launch is None:
            self.model.save(path, optimizers=self.optimizers, step=self.step, extra=extra)
            return
        state = distributed.full_model_state(self.module, self.strategy)
        optimizers = {
            name: distributed.full_optimizer_state(self.module, opt, self.strategy)
            for name, opt in self.optimizers.items()
        }
        if self.is_main:
            snapshot = _Snapshot(self.model.config, state)
            save_checkpoint(path, snapshot, optimizers=optimizers, step=self.step, extra=extra)
        torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group if this Trainer joined it (a no-op otherwise)."""
        if self._joined and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._joined = False

    def resume(self, path: str | Path) -> None:
        """Load weights, optimizer states and step from a checkpoint of this model."""
        payload = read_checkpoint(path, map_location=self.device)
        check_compatible(payload, config=self.model.config)
        if self.launch is None:
            self.model.load_state_dict(payload["model"])
            for name, state in payload["optimizers"].items():
                if name in self.optimizers:
                    self.optimizers[name].load_state_dict(state)
        else:
            distributed.load_full_state(self.module, self.optimizers, payload, self.strategy)
        self.step = int(payload["step"])


class _Snapshot:
    """What `save_checkpoint` needs of a model (`config`, `state_dict()`), for a state
    gathered from the ranks rather than read off one module."""

    def __init__(self, config, state: dict):
        self.config, self._state = config, state

    def state_dict(self) -> dict:
        return self._state


def plot_losses(history: list[dict], path: str | Path) -> None:
    """Draw train (and validation) loss against step into a PNG (matplotlib, Agg)."""
    # A bare Figure with the Agg canvas: no pyplot, so the caller's backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for split, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in history if r["split"] == split and "loss" in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split)
        rows = [r for r in history if r["split"] == split and "disc_loss" in r]
        if rows:
            ax.plot(
                [r["step"] for r in rows],
                [r["disc_loss"] for r in rows],
                "--",
                label="discriminator",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
