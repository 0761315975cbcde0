"""Trainer and `stretto train`: each mode learns, outputs are written, runs are safe."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from stretto.engine import MusicModel, TrainConfig, Trainer
from stretto.engine.cli import main as stretto
from stretto.engine.train import lr_factor


@pytest.fixture
def fixed_batch(windows):
    ids = torch.cat([windows(64, start=0), windows(64, start=64)])  # [4, 64] of real music
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}


@pytest.mark.parametrize(("mode", "steps"), [("transformer", 100), ("vae", 150), ("vae_gan", 150)])
def test_each_mode_overfits_a_fixed_batch(make_model, fixed_batch, mode, steps):
    model = make_model(mode)
    with torch.no_grad():
        start = float(model.loss(fixed_batch)["recon"])
    config = TrainConfig(
        steps=steps, lr=3e-3, warmup_steps=10, min_lr_ratio=1.0, weight_decay=0.0,
        eval_every=0, log_every=10,
    )  # fmt: skip
    history = Trainer(model, [fixed_batch], config=config, device="cpu", progress=False).fit()
    end = history[-1]["recon"]
    assert history[-1]["step"] == steps
    assert end < 0.3 * start, f"{mode}: recon {start:.3f} -> {end:.3f}"
    if mode == "vae_gan":
        assert all("disc_loss" in r for r in history)


def test_trainer_writes_log_curve_and_checkpoint(make_model, fixed_batch, tmp_path):
    model = make_model("vae")
    config = TrainConfig(steps=6, eval_every=3, log_every=2, checkpoint_every=3, eval_batches=1)
    trainer = Trainer(model, [fixed_batch], [fixed_batch], config, out_dir=tmp_path, device="cpu")
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6]
    assert [r["step"] for r in rows if r["split"] == "val"] == [3, 6]
    assert all({"loss", "recon", "kl", "beta"} <= r.keys() for r in rows)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text()) == model.config.to_dict()

    resumed = Trainer(make_model("vae"), [fixed_batch], config=config, device="cpu")
    resumed.resume(tmp_path / "last.pt")
    assert resumed.step == 6
    theirs = resumed.model.state_dict()
    for name, a in model.state_dict().items():
        assert torch.equal(a, theirs[name]), name
    assert MusicModel.load(tmp_path / "last.pt").config == model.config


def test_resume_refuses_another_config(make_model, fixed_batch, tmp_path):
    trainer = Trainer(make_model("transformer"), [fixed_batch], config=TrainConfig(steps=1))
    trainer.save(tmp_path / "ck.pt")
    other = Trainer(make_model("transformer", d_ff=64), [fixed_batch], config=TrainConfig(steps=1))
    with pytest.raises(ValueError, match="d_ff: 64 != 128"):
        other.resume(tmp_path / "ck.pt")


def test_gradient_accumulation_matches_one_big_batch(make_model, fixed_batch):
    """Two micro-batches of 2 give the gradient of one batch of 4 (no padding)."""
    halves = [{k: v[i : i + 2] for k, v in fixed_batch.items()} for i in (0, 2)]
    grads = []
    for micro, accum in ((halves, 2), ([fixed_batch], 1)):
        config = TrainConfig(steps=1, grad_accum=accum, grad_clip=0.0, lr=1e-9)
        torch.manual_seed(0)  # the same initial weights both times
        trainer = Trainer(make_model("transformer"), micro, config=config, device="cpu")
        trainer.train_step(micro)
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_learning_rate_schedule():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_train_config_validation_and_cpu_precision(make_model, fixed_batch):
    with pytest.raises(ValueError, match="grad_accum=0"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="precision='fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Trainer(make_model("transformer"), [fixed_batch], config=TrainConfig(precision="bf16"),
                device="cpu")  # fmt: skip


def test_train_command_on_real_midi(midi_corpus, tmp_path, capsys):
    midi = tmp_path / "midi"
    midi.mkdir()
    for path in midi_corpus[:2]:
        shutil.copy(path, midi / path.name)
    run = tmp_path / "run"
    args = ["train", str(midi), "--mode", "vae_gan", "--seq-len", "64", "--preset", "tiny",
            "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--log-every", "1",
            "--workers", "1", "--out", str(run)]  # fmt: skip
    assert stretto(args) == 0
    assert {"last.pt", "log.jsonl", "loss.png", "config.json"} <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (2, "train"), (2, "val")]
    assert MusicModel.load(run / "last.pt").config.mode == "vae_gan"

    capsys.readouterr()
    assert stretto(args) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert stretto([*args, "--force"]) == 0
    rows = (run / "log.jsonl").read_text().splitlines()
    assert len(rows) == 3, "--force must replace the old log, not append to it"
