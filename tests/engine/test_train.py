"""Trainer and `stretto train`: each mode learns, outputs are written, runs are safe."""

from __future__ import annotations

import json
import shutil
import sys

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
        steps=steps,
        lr=3e-3,
        warmup_steps=10,
        min_lr_ratio=1.0,
        weight_decay=0.0,
        eval_every=0,
        log_every=10,
    )
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
        Trainer(
            make_model("transformer"),
            [fixed_batch],
            config=TrainConfig(precision="bf16"),
            device="cpu",
        )


def test_train_command_on_real_midi(midi_corpus, tmp_path, capsys):
    midi = tmp_path / "midi"
    midi.mkdir()
    for path in midi_corpus[:2]:
        shutil.copy(path, midi / path.name)
    run = tmp_path / "run"
    args = ["train", str(midi), "--mode", "vae_gan", "--seq-len", "64", "--preset", "tiny"]
    args += ["--steps", "2", "--batch-size", "2", "--eval-every", "2", "--log-every", "1"]
    args += ["--workers", "1", "--out", str(run)]
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


# -- resume, token weighting, optional plotting ------------------------------------------
class _Windows(torch.utils.data.Dataset):
    """A map-style dataset of real windows, with padding in some of them."""

    def __init__(self, windows, n: int = 10, length: int = 64):
        self.items = []
        for i in range(n):
            ids = windows(length, start=length * (i // 2))[i % 2].clone()
            mask = torch.ones(length, dtype=torch.bool)
            if i % 3 == 0:
                mask[length // 2 :] = False
                ids[length // 2 :] = 2  # PAD
            self.items.append({"input_ids": ids, "attention_mask": mask})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("mode", ["transformer", "vae", "vae_gan"])
def test_resume_continues_bit_for_bit(make_model, windows, tmp_path, monkeypatch, mode):
    """2 steps, a checkpoint, a resume and 2 more steps train exactly as 4 steps do:
    same weights bit for bit (fp32 on the CPU), so the optimizer states, every RNG
    (dropout, the vae's noise, word dropout, Gumbel noise) and the data position all
    came back."""
    data = _Windows(windows)
    config = TrainConfig(
        steps=4,
        batch_size=3,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=2,
        log_every=1,
    )
    overrides = {"dropout": 0.1, "word_dropout": 0.2, "adv_start_step": 0}
    overrides = {k: v for k, v in overrides.items() if mode != "transformer" or k == "dropout"}
    torch.manual_seed(5)
    whole = Trainer(make_model(mode, **overrides), data, config=config, out_dir=tmp_path / "a")
    saved = whole.save

    def keep_step_two(path):
        saved(path)
        if whole.step == 2:
            shutil.copy(path, tmp_path / "step2.pt")

    monkeypatch.setattr(whole, "save", keep_step_two)
    whole.fit()
    torch.manual_seed(123)  # whatever state the process is in, resume restores its own
    resumed = Trainer(make_model(mode, **overrides), data, config=config, out_dir=tmp_path / "b")
    resumed.resume(tmp_path / "step2.pt")
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == 4
    theirs = resumed.model.state_dict()
    for name, a in whole.model.state_dict().items():
        assert torch.equal(a, theirs[name]), name


def test_a_resume_without_the_rng_drifts(make_model, windows, tmp_path, monkeypatch):
    """The same check with the RNG left out of the checkpoint fails: the test above can."""
    from stretto.engine import train as train_module

    data = _Windows(windows)
    config = TrainConfig(steps=3, batch_size=3, eval_every=0, checkpoint_every=1, log_every=1)
    torch.manual_seed(5)
    whole = Trainer(make_model("vae"), data, config=config)
    torch.manual_seed(0)
    for _ in range(1):
        whole.train_step([next(whole.batches)])
    whole.save(tmp_path / "one.pt")
    whole.fit()
    monkeypatch.setattr(train_module, "set_rng_state", lambda state: None)
    torch.manual_seed(99)
    resumed = Trainer(make_model("vae"), data, config=config)
    resumed.resume(tmp_path / "one.pt")
    resumed.fit()
    differ = [
        n
        for n, a in whole.model.state_dict().items()
        if not torch.equal(a, resumed.model.state_dict()[n])
    ]
    assert differ, "a resume that loses the RNG state must not reproduce the run"


def test_gradient_accumulation_weighs_micro_batches_by_target_tokens(make_model, windows):
    """Micro-batches with different amounts of padding give the gradient of one batch
    holding them all: the mean NLL per target token of the whole step."""
    data = _Windows(windows, n=4)
    rows = [data[i] for i in range(4)]  # rows 0 and 3 are half padding
    full = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    micro = [{k: v[:1] for k, v in full.items()}, {k: v[1:] for k, v in full.items()}]
    grads = []
    for batches, accum in ((micro, 2), ([full], 1)):
        config = TrainConfig(steps=1, grad_accum=accum, grad_clip=0.0, lr=1e-9)
        torch.manual_seed(0)
        trainer = Trainer(make_model("transformer"), batches, config=config, device="cpu")
        trainer.train_step(batches)
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # equal weights per micro-batch would not match: the rows hold 31 and 63+63+31 targets
    assert abs(31 / 188 - 1 / 2) > 0.3


def test_training_writes_its_outputs_without_matplotlib(
    make_model, fixed_batch, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    config = TrainConfig(steps=2, eval_every=0, log_every=1)
    Trainer(make_model("transformer"), [fixed_batch], config=config, out_dir=tmp_path).fit()
    assert (tmp_path / "log.jsonl").is_file() and (tmp_path / "last.pt").is_file()
    assert not (tmp_path / "loss.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().err


# -- stretto train: the split by file, --set, --config, --resume ---------------------------
def _tiny_run(midi_corpus, tmp_path, *extra):
    midi = tmp_path / "midi"
    midi.mkdir(exist_ok=True)
    for path in midi_corpus[:4]:
        shutil.copy(path, midi / path.name)
    run = tmp_path / "run"
    args = ["train", str(midi), "--mode", "vae", "--seq-len", "64", "--preset", "tiny"]
    args += ["--steps", "2", "--batch-size", "2", "--eval-every", "2", "--log-every", "1"]
    args += ["--out", str(run), *extra]
    return args, run


def test_train_command_holds_out_whole_files(midi_corpus, tmp_path, capsys):
    args, run = _tiny_run(midi_corpus, tmp_path)
    assert stretto(args) == 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["validation"]) == 1 and len(split["train"]) == 3
    assert not set(split["train"]) & set(split["validation"])
    out = capsys.readouterr().out
    assert "validation on 1 held-out files: NLL" in out and "latent gap" in out


def test_set_overrides_any_field_and_names_bad_ones(midi_corpus, tmp_path, capsys):
    args, run = _tiny_run(midi_corpus, tmp_path, "--set", "window=8", "--set", "weight_decay=0")
    assert stretto([*args, "--set", "dropout=0.2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["window"], config["dropout"]) == (8, 0.2)
    assert json.loads((run / "train_config.json").read_text())["weight_decay"] == 0.0
    capsys.readouterr()
    for bad, message in (
        ("windw=8", "--set windw: no such setting; ModelConfig and TrainConfig fields are"),
        ("window=big", "--set window=big: window takes int"),
        ("tie_embeddings=maybe", "tie_embeddings takes true or false"),
        ("block=3", None),
    ):
        code = stretto([*args, "--force", "--set", bad])
        err = capsys.readouterr().err
        if message is None:
            assert code == 0
            continue
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_resume_continues_a_run_and_config_reruns_it(midi_corpus, tmp_path, capsys):
    args, run = _tiny_run(midi_corpus, tmp_path)
    assert stretto(args) == 0
    assert stretto(["train", "--resume", str(run), "--steps", "4"]) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert MusicModel.load(run / "last.pt").config.mode == "vae"
    capsys.readouterr()
    assert stretto(["train", "--resume", str(run)]) == 1  # already at its last step
    assert "pass --steps N" in capsys.readouterr().err

    again = tmp_path / "again"
    config = str(run / "train_config.json")
    assert stretto(["train", "--config", config, "--out", str(again)]) == 0
    assert (again / "config.json").read_text() == (run / "config.json").read_text()
    assert (
        json.loads((again / "split.json").read_text())["validation"]
        == json.loads((run / "split.json").read_text())["validation"]
    )


def test_discriminator_balance_follows_its_accuracy(make_model, fixed_batch):
    """The discriminator's learning-rate factor falls while it wins and recovers when it
    loses, within (0, 1]; 1.0 as the target turns the controller off."""
    trainer = Trainer(make_model("vae_gan"), [fixed_batch], config=TrainConfig(steps=1))
    for _ in range(40):
        trainer._balance({"acc_real": 1.0, "acc_fake": 1.0})
    low = trainer.disc_balance
    assert 0 < low < 0.1
    trainer._balance({"acc_real": 0.5, "acc_fake": 0.5})
    assert trainer.disc_balance > low
    for _ in range(50):
        trainer._balance({"acc_real": 0.0, "acc_fake": 0.0})
    assert trainer.disc_balance == 1.0
    off = Trainer(
        make_model("vae_gan"), [fixed_batch], config=TrainConfig(steps=1, disc_target_accuracy=1.0)
    )
    off._balance({"acc_real": 1.0, "acc_fake": 1.0})
    assert off.disc_balance == 1.0
    row = trainer.train_step([fixed_batch])
    assert {"disc_balance", "disc_acc_real", "disc_acc_fake", "adv_weight"} <= row.keys()


def test_tensorboard_logs_the_rows(make_model, fixed_batch, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(steps=4, eval_every=2, log_every=1, loggers=("tensorboard",))
    trainer = Trainer(make_model("vae"), [fixed_batch], [fixed_batch], config, out_dir=tmp_path)
    history = trainer.fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "val/latent_gap"} <= set(scalars)
    logged = [e.value for e in events.Scalars("train/loss")]
    want = [r["loss"] for r in history if r["split"] == "train"]
    assert logged == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="loggers"):
        TrainConfig(loggers=("wandb",))
