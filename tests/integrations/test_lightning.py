"""`MusicLightningModule` fitted by Lightning's Trainer on CPU: each mode, the schedule of
`stretto.engine.Trainer`, vae_gan's two updates, logging and checkpoints."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch", reason="the `lightning` extra")

from stretto.engine import ModelConfig, MusicModel, TrainConfig, Trainer  # noqa: E402
from stretto.integrations.lightning import MusicLightningModule  # noqa: E402
from stretto.tokenizer import TokenDataset  # noqa: E402

MODES = ("transformer", "vae", "vae_gan")


def fit(module, data, steps: int, tmp_path, **trainer_args) -> list[dict]:
    """Fit for `steps` Lightning steps; returns the rows of the CSV logger."""
    logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    settings = {
        "max_steps": steps,
        "logger": logger,
        "accelerator": "cpu",
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    settings.update(trainer_args)
    trainer = pl.Trainer(**settings)
    trainer.fit(module, *data)
    with (Path(logger.log_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


@pytest.fixture
def windows(token_corpus):
    return TokenDataset(token_corpus, 48)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_fits_with_the_engines_schedule(vocab, windows, mode, tmp_path):
    config = ModelConfig.from_vocab(vocab, mode=mode, preset="tiny")
    train_config = TrainConfig(steps=6, lr=2e-3, disc_lr=1e-3, warmup_steps=2, min_lr_ratio=0.2)
    module = MusicLightningModule(config, train_config)
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    # Lightning counts each optimizer's step: two per vae_gan batch.
    per_update = 2 if mode == "vae_gan" else 1
    train = DataLoader(windows, batch_size=2, shuffle=True)
    val = DataLoader(torch.utils.data.Subset(windows, range(4)), batch_size=2)
    rows = fit(module, (train, val), 6 * per_update, tmp_path, val_check_interval=3)

    assert int(module.updates) == 6
    losses = column(rows, "train/loss")
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert column(rows, "val/loss"), "no validation loss was logged"
    if mode != "transformer":
        assert len(column(rows, "train/kl")) == 6
    if mode == "vae_gan":
        assert len(column(rows, "train/disc_loss")) == 6
    moved = {n for n, p in module.model.named_parameters() if not torch.equal(p, start[n])}
    assert any(n.startswith("decoder.") for n in moved)
    assert any(n.startswith("discriminator.") for n in moved) == (mode == "vae_gan")

    # The learning rate of every step is the one stretto.engine.Trainer sets.
    batch = next(iter(DataLoader(windows, batch_size=2)))
    engine = Trainer(MusicModel(config), [batch], config=train_config, device="cpu", progress=False)
    engine_lr = [engine.train_step([batch])["lr"] for _ in range(6)]
    assert column(rows, "train/lr") == pytest.approx(engine_lr, rel=1e-6)
    assert len(set(engine_lr)) > 3  # warm-up and cosine, not a constant
    if mode == "vae_gan":
        disc_lr = [lr * train_config.disc_lr / train_config.lr for lr in engine_lr]
        assert column(rows, "train/disc_lr") == pytest.approx(disc_lr, rel=1e-6)


def test_the_loss_falls_on_a_fixed_batch(vocab, windows, tmp_path):
    config = ModelConfig.from_vocab(vocab, mode="transformer", preset="tiny")
    module = MusicLightningModule(config, TrainConfig(steps=30, lr=3e-3, warmup_steps=3))
    batch = next(iter(DataLoader(windows, batch_size=4)))
    with torch.no_grad():
        before = float(module.model.loss(batch)["loss"])
    fit(module, (DataLoader([batch] * 30, batch_size=None),), 30, tmp_path)
    with torch.no_grad():
        after = float(module.model.loss(batch)["loss"])
    assert after < before - 1.0, f"{before:.3f} -> {after:.3f}"


def test_the_kl_step_counts_updates_not_accumulated_batches(vocab, windows, tmp_path):
    config = ModelConfig.from_vocab(vocab, mode="vae", preset="tiny")
    module = MusicLightningModule(config, TrainConfig(steps=3))
    steps = []
    real = module.model.loss
    module.model.loss = lambda batch, step=0: steps.append(step) or real(batch, step=step)
    data = DataLoader(windows, batch_size=2)
    fit(module, (data,), 3, tmp_path, accumulate_grad_batches=2)
    assert steps == [0, 0, 1, 1, 2, 2] and int(module.updates) == 3


def test_gradients_are_clipped_to_grad_clip(vocab, windows, tmp_path, monkeypatch):
    clipped = []
    real = pl.LightningModule.clip_gradients

    def spy(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clipped.append((gradient_clip_val, gradient_clip_algorithm))
        return real(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    monkeypatch.setattr(pl.LightningModule, "clip_gradients", spy)
    for mode, per_step in (("transformer", 1), ("vae_gan", 2)):
        clipped.clear()
        config = ModelConfig.from_vocab(vocab, mode=mode, preset="tiny")
        module = MusicLightningModule(config, TrainConfig(steps=2, grad_clip=0.5))
        fit(module, (DataLoader(windows, batch_size=2),), 2 * per_step, tmp_path / mode)
        assert clipped == [(0.5, "norm")] * 2 * per_step, mode


def test_a_lightning_checkpoint_rebuilds_the_module(vocab, windows, tmp_path):
    config = ModelConfig.from_vocab(vocab, mode="vae", preset="tiny")
    module = MusicLightningModule(config, TrainConfig(steps=2, betas=(0.8, 0.9)))
    fit(module, (DataLoader(windows, batch_size=2),), 2, tmp_path, enable_checkpointing=True)
    (path,) = Path(tmp_path).rglob("*.ckpt")
    loaded = MusicLightningModule.load_from_checkpoint(path)
    assert loaded.model.config == config
    assert loaded.train_config == module.train_config
    assert int(loaded.updates) == 2
    for (name, a), b in zip(
        module.model.state_dict().items(), loaded.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bad_configs_are_refused(vocab):
    with pytest.raises(TypeError, match="config must be a ModelConfig, got str"):
        MusicLightningModule("tiny")
    config = ModelConfig.from_vocab(vocab, preset="tiny")
    with pytest.raises(TypeError, match="train_config must be a TrainConfig, got int"):
        MusicLightningModule(config, 3)
    with pytest.raises(ValueError, match="TrainConfig: learning rates must be > 0"):
        MusicLightningModule(config, {"lr": -1.0})


def _train_command_readings(run: Path, monkeypatch) -> list[TrainConfig]:
    """The TrainConfig `stretto train` reads from RUN_DIR/train_config.json, by --resume
    and by --config (the split and the corpus are not what this is about)."""
    from stretto.engine.cli import train as train_cli
    from stretto.engine.cli.runs import RUN

    (run / "last.pt").touch()
    (run / RUN).write_text("{}")
    monkeypatch.setattr(train_cli, "read_run", lambda out: (None, 64))
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    resumed = train_cli._resumed_run(parser.parse_args(["train", "--resume", str(run)])).train
    logged = train_cli._logged_run(run / "train_config.json")["train"]
    return [resumed, TrainConfig.from_dict(logged)]


def test_train_config_json_reads_the_same_in_lightning_and_the_train_command(
    vocab, tmp_path, monkeypatch
):
    fields = {
        "steps": 7,
        "batch_size": 3,
        "lr": 1e-3,
        "betas": [0.8, 0.9],
        "loggers": ["tensorboard"],
        "precision": "fp32",
        "seed": 5,
    }
    (tmp_path / "train_config.json").write_text(json.dumps(fields))
    config = ModelConfig.from_vocab(vocab, preset="tiny")
    config.save_json(tmp_path / "config.json")
    lightning = MusicLightningModule(config, json.loads(json.dumps(fields))).train_config
    want = TrainConfig(
        steps=7,
        batch_size=3,
        lr=1e-3,
        betas=(0.8, 0.9),
        loggers=("tensorboard",),
        precision="fp32",
        seed=5,
    )
    assert lightning == want
    assert _train_command_readings(tmp_path, monkeypatch) == [want, want]
    assert TrainConfig.from_json(want.to_json()) == want


@pytest.mark.parametrize(
    "fields, message",
    [
        pytest.param({"stepz": 3}, "TrainConfig: unknown fields ['stepz']", id="unknown"),
        pytest.param({"steps": "10"}, "TrainConfig: steps='10' must be an int", id="steps-str"),
        pytest.param({"steps": True}, "TrainConfig: steps=True must be an int", id="steps-bool"),
        pytest.param({"lr": "fast"}, "TrainConfig: lr='fast' must be a number", id="lr-str"),
        pytest.param({"betas": [0.9]}, "betas=(0.9,) must be a tuple of two", id="betas-one"),
        pytest.param(
            {"loggers": "tensorboard"}, "loggers='tensorboard' must be a tuple", id="loggers-str"
        ),
    ],
)
def test_a_bad_train_config_field_is_one_line_in_both_readers(
    vocab, tmp_path, monkeypatch, fields, message
):
    (tmp_path / "train_config.json").write_text(json.dumps(fields))
    ModelConfig.from_vocab(vocab, preset="tiny").save_json(tmp_path / "config.json")
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        MusicLightningModule(ModelConfig.from_vocab(vocab, preset="tiny"), fields)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        _train_command_readings(tmp_path, monkeypatch)
    assert "\n" not in str(err.value) and "train_config.json" in str(err.value)
