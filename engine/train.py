"""`Trainer`: a small training loop for users without their own.

AdamW with linear warmup then cosine decay, gradient clipping, bf16/fp16 autocast on
CUDA (fp16 with a gradient scaler), gradient accumulation weighted by target tokens,
vae_gan's two-step update (generator, then discriminator on sampled fakes, each with its
own optimizer), held-out measurements every `eval_every` steps (`evaluation.measure`:
NLL, and the latent's and the discriminator's health), atomic checkpoints that resume
bit for bit (optimizers, scalers, every RNG, the data position), and a log
(`log.jsonl`) with a PNG of the curves (`loss.png`). The progress bar shows only when
stderr is a terminal.

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
import numbers
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from . import distributed, evaluation
from .checkpoint import check_compatible, read_checkpoint, save_checkpoint
from .data import BatchStream
from .model import MusicModel
from .objectives import TrainingObjective, target_tokens
from .plots import plot_training
from .rng import rng_state, set_rng_state

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Loggers beside log.jsonl (always written with an out_dir): "tensorboard" writes event
# files to out_dir/tensorboard/ (`pip install stretto[tensorboard]`).
LOGGERS = ("tensorboard",)
# The discriminator's balance controller: log-factor change per unit of accuracy error,
# and the smallest factor (a discriminator far ahead nearly stops, never freezes).
BALANCE_GAIN, BALANCE_FLOOR = 0.5, 1e-3
# TrainConfig's numeric fields by kind (bools are neither).
_INT_FIELDS = (
    "steps",
    "batch_size",
    "grad_accum",
    "warmup_steps",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "log_every",
    "seed",
    "num_workers",
)
_REAL_FIELDS = (
    "lr",
    "disc_lr",
    "disc_target_accuracy",
    "weight_decay",
    "min_lr_ratio",
    "grad_clip",
    "dist_timeout_s",
)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. `steps` counts optimizer steps; each takes `grad_accum`
    micro-batches of `batch_size` windows (per rank in a distributed run, whose global
    batch is `batch_size * grad_accum * world_size`).

    vae_gan: the discriminator's learning rate is `disc_lr` times a balance factor in
    (0, 1] that an integral controller moves after every step, down when the
    discriminator's accuracy on the batch is above `disc_target_accuracy` and up when
    it is below, so that it does not win the game outright (1 disables the controller).

    Validation every `eval_every` steps reads `eval_batches x batch_size` windows spread
    evenly over the validation data (the same windows every time).

    `loggers` adds writers beside `log.jsonl` (which an `out_dir` always gets):
    "tensorboard" logs every row's numbers as scalars `<split>/<name>` (lists such as
    the KL per latent dimension as histograms) to `out_dir/tensorboard/`.

    Distributed runs only: `strategy` is "ddp" (replicated weights) or "fsdp" (FSDP2,
    weights, gradients and optimizer states sharded over the ranks); `dist_timeout_s`
    bounds every collective, so a dead rank makes the others fail within it.

    JSON: `to_dict`/`from_dict` and `save_json`/`load_json` (a run's
    `train_config.json`); every reader of a stored TrainConfig goes through `from_dict`,
    which takes lists for the tuple fields and names an unknown field or a bad value in
    a one-line ValueError.
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    disc_lr: float = 3e-4
    disc_target_accuracy: float = 0.8
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
    loggers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            if not _is_int(getattr(self, name)):
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)!r} must be an int")
        for name in _REAL_FIELDS:
            if not _is_real(getattr(self, name)):
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)!r} must be a number")
        if not (
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(map(_is_real, self.betas))
        ):
            raise ValueError(f"TrainConfig: betas={self.betas!r} must be a tuple of two numbers")
        if not isinstance(self.loggers, tuple):
            raise ValueError(f"TrainConfig: loggers={self.loggers!r} must be a tuple")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)} must be >= 0")
        if self.lr <= 0 or self.disc_lr <= 0:
            raise ValueError("TrainConfig: learning rates must be > 0")
        unknown = [x for x in self.loggers if x not in LOGGERS]
        if unknown:
            raise ValueError(f"TrainConfig: loggers {unknown} not in {LOGGERS}")
        if not 0.5 < self.disc_target_accuracy <= 1:
            raise ValueError(
                f"TrainConfig: disc_target_accuracy={self.disc_target_accuracy} not in (0.5, 1]"
            )
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

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A TrainConfig from its fields as JSON or YAML give them (lists for tuples)."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"TrainConfig: expected a mapping of fields, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"TrainConfig: not JSON ({exc})") from None
        return cls.from_dict(data)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_json(Path(path).read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


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
    shuffled here, see `stretto.engine.data`) or an iterable of ready batches (cycled).
    Validation data should hold files the training never sees
    (`stretto.tokenizer.split_files`). With `out_dir`, writes `log.jsonl`, `loss.png`,
    `config.json`, `train_config.json` and checkpoints `last.pt` (every
    `checkpoint_every` steps and at the end); `resume(path)` continues a run from one.

    `self.model` stays the plain model; `self.module` is what the losses go through: a
    `TrainingObjective` over the model, inside DDP under torchrun (FSDP2 shards the
    model in place). Under torchrun every rank builds the same model and Trainer, and
    `save` and `resume` must be called on every rank. `close()` leaves the process
    group this Trainer joined.
    """

    def __init__(
        self,
        model: MusicModel,
        train_data: Any,
        val_data: Any = None,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        self.launch = distributed.launch_from_env()
        self._joined = False
        if self.launch is None:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        else:
            self._joined = not torch.distributed.is_initialized()
            self.device = distributed.setup(self.launch, device, cfg.dist_timeout_s)
        self.rank = self.launch.rank if self.launch else 0
        self.world_size = self.launch.world_size if self.launch else 1
        self.is_main = self.rank == 0
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
        self.batches = BatchStream(
            train_data,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            rank=self.rank,
            world_size=self.world_size,
        )
        self._val: tuple[list[dict], list[int] | None] | None = None
        self.step = 0
        self._resumed = False
        self.history: list[dict] = []
        self._writer = None  # the TensorBoard writer, opened by fit

        self.optimizers = build_optimizers(model, cfg, fused=self.device.type == "cuda")
        self.base_lr = {"generator": cfg.lr, "discriminator": cfg.disc_lr}
        self.disc_balance = 1.0  # the discriminator's learning-rate factor (vae_gan)

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

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- one optimizer step ----------------------------------------------------------------
    def _set_lr(self) -> float:
        cfg = self.config
        f = lr_factor(self.step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        for name, opt in self.optimizers.items():
            balance = self.disc_balance if name == "discriminator" else 1.0
            for group in opt.param_groups:
                group["lr"] = self.base_lr[name] * f * balance
        return self.base_lr["generator"] * f

    def _update(
        self, name: str, params: list, micro: list[dict], loss_fn, weights: list[float]
    ) -> dict[str, float]:
        """Backward of `sum_m weights[m] x loss(micro[m])`, then one optimizer step.

        The logged terms are the same weighted mean (weights normalized on this rank).
        """
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        norm = sum(weights) or 1.0
        totals: dict[str, float] = {}
        for i, (batch, w) in enumerate(zip(micro, weights, strict=True)):
            with self._gradient_sync(i == len(micro) - 1):
                with self._autocast():
                    out = loss_fn(batch)
                scaler.scale(out["loss"] * w).backward()
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) * w / norm
        if self.launch is not None:
            totals = distributed.all_mean(totals, self.device)
        if self.config.grad_clip > 0:
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            totals["grad_norm"] = float(grad_norm)
        scaler.step(opt)
        scaler.update()
        return totals

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
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
        return self.module(ids, mask, objective="discriminator", step=self.step)

    def _token_weights(self, micro: list[dict]) -> list[float]:
        """Each micro-batch's share of the step's target tokens (over every rank), times
        the world size that DDP's gradient averaging divides by: the step's gradient is
        then that of the mean loss per target token of the whole global batch."""
        counts = [target_tokens(b, self.model.config.pad_id) for b in micro]
        total = float(sum(counts))
        if self.launch is not None:
            total = distributed.all_mean({"t": total}, self.device)["t"] * self.world_size
        return [n * self.world_size / max(total, 1.0) for n in counts]

    def train_step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns the logged terms."""
        self.module.train()
        lr = self._set_lr()
        micro = [self._to_device(b) for b in micro_batches]
        gen_params = self.model.generator_parameters()
        weights = self._token_weights(micro)
        row = self._update("generator", gen_params, micro, self._generator_loss, weights)
        if self.gan:
            d = self._update(
                "discriminator",
                self.model.discriminator_parameters(),
                micro,
                self._discriminator_loss,
                [1.0 / len(micro)] * len(micro),
            )
            row.update({f"disc_{k}": v for k, v in d.items()})
            row["disc_balance"] = self.disc_balance
            self._balance(d)
        row["lr"] = lr
        self.step += 1
        return row

    def _balance(self, d: dict[str, float]) -> None:
        """Move the discriminator's learning-rate factor toward its target accuracy."""
        target = self.config.disc_target_accuracy
        if target >= 1.0 or "acc_real" not in d:
            return
        accuracy = (d["acc_real"] + d["acc_fake"]) / 2
        factor = self.disc_balance * math.exp(BALANCE_GAIN * (target - accuracy))
        self.disc_balance = min(1.0, max(BALANCE_FLOOR, factor))

    # -- validation --------------------------------------------------------------------------
    def _validation(self) -> tuple[list[dict], list[int] | None]:
        if self._val is None:
            cfg = self.config
            if isinstance(self.val_data, Dataset) and hasattr(self.val_data, "__len__"):
                self._val = evaluation.held_out_batches(
                    self.val_data,
                    windows=cfg.eval_batches * cfg.batch_size,
                    batch_size=cfg.batch_size,
                )
            else:
                self._val = (list(itertools.islice(self.val_data, cfg.eval_batches)), None)
        return self._val

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The generator's loss terms (token-weighted means) and `evaluation.measure`'s
        held-out measurements over the validation windows; {} without validation data.

        Every rank measures the same windows, so the numbers agree across ranks.
        """
        if self.val_data is None:
            return {}
        batches, files = self._validation()
        if not batches:
            return {}
        self.module.eval()
        sums: dict[str, float] = {}
        tokens = 0.0
        for batch in batches:
            batch = self._to_device(batch)
            n = float(target_tokens(batch, self.model.config.pad_id))
            with self._autocast():
                out = self._generator_loss(batch)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            tokens += n
        row: dict[str, Any] = {k: v / max(tokens, 1.0) for k, v in sums.items()}
        unshard = self.strategy == "fsdp"
        if unshard:  # the root unit's weights, which no forward hook gathers here
            self.model.unshard()
        try:
            with self._autocast():
                row.update(evaluation.measure(self.model, batches, files, step=self.step))
        finally:
            if unshard:
                self.model.reshard()
        self.module.train()
        return row

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train until `config.steps` optimizer steps; returns the rows logged by this call."""
        cfg = self.config
        if not self._resumed:
            # Ranks draw different dropout masks and vae samples, as different batches would.
            torch.manual_seed(cfg.seed + self.rank)
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.model.config.save_json(self.out_dir / "config.json")
            cfg.save_json(self.out_dir / "train_config.json")
        if "tensorboard" in cfg.loggers and self.out_dir is not None and self.is_main:
            self._writer = _tensorboard_writer(self.out_dir / "tensorboard")
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
        start = time.perf_counter()
        try:
            self._loop(bar, start)
        except RuntimeError as exc:
            if self.launch is None:
                raise
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size} stopped at step "
                f"{self.step}: {type(exc).__name__}: {exc} (when another rank died, this is "
                f"the collective that noticed it, within dist_timeout_s={cfg.dist_timeout_s:g})"
            ) from exc
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self.out_dir is not None:
            self.save(self.out_dir / "last.pt")
            if self.is_main:
                self.plot()
        return self.history

    def _loop(self, bar, start: float) -> None:
        cfg = self.config
        while self.step < cfg.steps:
            row = self.train_step([next(self.batches) for _ in range(cfg.grad_accum)])
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
                and step % cfg.checkpoint_every == 0
                and step < cfg.steps
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
        if self._writer is not None:
            for key, value in row.items():
                name = f"{row['split']}/{key}"
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(name, value, row["step"])
                elif isinstance(value, list) and value:
                    self._writer.add_histogram(name, torch.tensor(value), row["step"])

    def plot(self) -> Path | None:
        """Draw `loss.png` from the whole `log.jsonl` (a resumed run included)."""
        if self.out_dir is None:
            return None
        log = self.out_dir / "log.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        return plot_training(rows or self.history, self.out_dir / "loss.png")

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "data": self.batches.state_dict(),
            "scalers": {name: s.state_dict() for name, s in self.scalers.items()},
            "disc_balance": self.disc_balance,
            "rng": rng_state(),
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint of the plain model and everything `resume` needs; in a
        distributed run every rank calls this (FSDP gathers the shards), rank 0 writes,
        and all wait for the file."""
        extra = {"train_config": self.config.to_dict(), "trainer": self._state()}
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
        """Continue from a checkpoint of this model: weights, optimizer and scaler states,
        step, data position and (single process) every RNG, so that N steps, a save, a
        resume and M more steps train exactly as N + M steps in one run. A distributed
        run re-seeds each rank from (seed, rank, step): rank 0 writes the one file."""
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
        trainer = payload.get("extra", {}).get("trainer")
        if trainer is not None:
            self.batches.load_state_dict(trainer["data"])
            for name, state in trainer["scalers"].items():
                if name in self.scalers:
                    self.scalers[name].load_state_dict(state)
            self.disc_balance = float(trainer.get("disc_balance", 1.0))
            if self.launch is None:
                set_rng_state(trainer["rng"])
            else:
                torch.manual_seed(self.config.seed + self.rank + 1_000_003 * self.step)
        self._resumed = True


class _Snapshot:
    """What `save_checkpoint` needs of a model (`config`, `state_dict()`), for a state
    gathered from the ranks rather than read off one module."""

    def __init__(self, config, state: dict):
        self.config, self._state = config, state

    def state_dict(self) -> dict:
        return self._state


def _tensorboard_writer(folder: Path):
    """A TensorBoard `SummaryWriter` in `folder`, or a one-line error naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ValueError(
            "TrainConfig(loggers=('tensorboard',)) needs the tensorboard package: "
            "pip install 'stretto[tensorboard]'"
        ) from exc
    return SummaryWriter(log_dir=str(folder))
