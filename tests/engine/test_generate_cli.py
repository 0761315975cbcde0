"""`stretto generate` / `stretto interpolate` end to end, and the piano roll."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stretto.engine import ModelConfig, MusicModel
from stretto.engine.cli import main
from stretto.engine.generate import listening_sampling
from stretto.engine.grammar import DEFAULT_MAX_SILENCE_STEPS
from stretto.tokenizer import MidiTokenizer, validate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def checkpoint(make_model, tmp_path):
    def save(mode: str):
        path = tmp_path / f"{mode}.pt"
        make_model(mode).save(path)
        return path

    return save


def _coloured_pixels(path) -> int:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    rgb = imread(path)[..., :3]  # [H, W, 3] floats in [0, 1]
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100
    # Note bars are saturated colours; axes, text and background are grey or white.
    return int((rgb.max(-1) - rgb.min(-1) > 0.3).sum())


def test_generate_writes_midi_and_png(checkpoint, tmp_path, capsys):
    ck = checkpoint("transformer")
    out, png = tmp_path / "song.mid", tmp_path / "roll.png"
    args = [str(ck), "--out", str(out), "--tokens", "300", "--seed", "3", "--png", str(png)]
    assert main(["generate", *args, "--top-p", "0.95", "--temperature", "0.9"]) == 0
    assert "wrote" in capsys.readouterr().out
    tok = MidiTokenizer()
    ids = tok.encode(out)
    assert validate(ids) == []
    assert tok.decode(ids).note_num() > 0
    assert _coloured_pixels(png) > 50

    # Existing outputs are kept unless --force.
    before = out.read_bytes()
    assert main(["generate", *args, "--seed", "4"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["generate", *args, "--seed", "4", "--force"]) == 0


def test_generate_continues_a_prompt(checkpoint, midi_corpus, tmp_path):
    ck = checkpoint("vae")
    out = tmp_path / "cont.mid"
    prompt = next(p for p in midi_corpus if validate(MidiTokenizer().encode(p)[:200]) == [])
    args = ["generate", str(ck), "--out", str(out), "--prompt", str(prompt)]
    assert main([*args, "--prompt-tokens", "200", "--tokens", "60", "--top-k", "20"]) == 0
    assert MidiTokenizer().decode(MidiTokenizer().encode(out)).note_num() > 0


def test_generate_refuses_another_vocabulary(make_model, tmp_path, capsys):
    model = make_model("transformer")
    path = tmp_path / "other.pt"
    other = dataclasses.replace(model.config, vocab_signature="other-vocabulary")
    MusicModel(other).save(path)
    assert main(["generate", str(path), "--out", str(tmp_path / "x.mid")]) == 1
    err = capsys.readouterr().err
    assert "stretto generate: error:" in err and "vocab" in err
    assert not (tmp_path / "x.mid").exists()


def test_interpolate_writes_steps(checkpoint, midi_corpus, tmp_path, capsys):
    ck = checkpoint("vae_gan")
    out = tmp_path / "interp"
    a, b = (str(p) for p in midi_corpus[:2])
    args = ["interpolate", str(ck), a, b, "--steps", "3", "--out", str(out), "--tokens", "120"]
    assert main(args) == 1  # no run.json beside the checkpoint: the window must be given
    assert "pass --window N" in capsys.readouterr().err
    args += ["--window", "256"]
    assert main([*args, "--png"]) == 0
    mids = sorted(out.glob("*.mid"))
    assert [p.name for p in mids] == ["interp_00.mid", "interp_01.mid", "interp_02.mid"]
    for p in mids:
        assert MidiTokenizer().decode(MidiTokenizer().encode(p)).note_num() > 0
    assert len(list(out.glob("*.png"))) == 3
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err


def test_interpolate_needs_a_vae(checkpoint, midi_corpus, tmp_path, capsys):
    ck = checkpoint("transformer")
    a, b = (str(p) for p in midi_corpus[:2])
    assert main(["interpolate", str(ck), a, b, "--out", str(tmp_path / "i")]) == 1
    assert "needs a vae or vae_gan checkpoint" in capsys.readouterr().err


def test_piano_roll_of_an_empty_piece(tmp_path):
    from stretto.engine.cli.pianoroll import save_piano_roll

    score = MidiTokenizer().decode(np.array([0, 1]))
    path = save_piano_roll(score, tmp_path / "empty.png")
    assert _coloured_pixels(path) == 0


def test_help_has_examples(capsys):
    for command in ("generate", "interpolate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"stretto {command} runs/" in capsys.readouterr().out


def test_generation_leaves_the_model_and_autograd_alone(make_model):
    model = make_model("transformer").train()
    before = ModelConfig.from_dict(model.config.to_dict())
    model.generate(max_new_tokens=5, seed=0)
    assert model.config == before and model.training and torch.is_grad_enabled()


@pytest.fixture
def seen(monkeypatch) -> dict:
    """The keywords of the last `MusicModel.generate` call (the call still runs)."""
    kwargs_seen = {}
    original = MusicModel.generate

    def spy(self, *args, **kwargs):
        kwargs_seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MusicModel, "generate", spy)
    return kwargs_seen


def test_generate_passes_the_sampling_policies(checkpoint, tmp_path, seen, capsys):
    args = [str(checkpoint("transformer")), "--out", str(tmp_path / "a.mid"), "--tokens", "40"]
    assert main(["generate", *args]) == 0
    measured = listening_sampling("transformer")
    assert {k: seen[k] for k in measured} == measured
    policies = ["--note-off", "mask", "--at-limit", "freeze", "--note-on", "off-first"]
    assert main(["generate", *args, *policies, "--force"]) == 0
    assert (seen["note_off"], seen["at_limit"], seen["note_on"]) == ("mask", "freeze", "off-first")
    with pytest.raises(SystemExit):
        main(["generate", *args, "--note-on", "again", "--force"])
    assert "--note-on" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", *args, "--note-off", "drop", "--force"])
    assert "--note-off" in capsys.readouterr().err
    assert seen["max_silence_steps"] == DEFAULT_MAX_SILENCE_STEPS
    assert main(["generate", *args, "--max-silence-steps", "32", "--force"]) == 0
    assert seen["max_silence_steps"] == 32
    assert main(["generate", *args, "--max-silence-steps", "0", "--force"]) != 0
    err = capsys.readouterr().err
    assert "stretto generate: error:" in err and "max_silence_steps must be >= 1" in err


def test_each_mode_samples_with_its_measured_sampling(checkpoint, tmp_path, monkeypatch, seen):
    """A planted table of measured sampling per mode reaches `generate` by the
    checkpoint's mode, and every flag given overrides its entry."""
    import importlib

    gen = importlib.import_module("stretto.engine.generate")  # the module, not the function
    planted = {
        "transformer": {
            "note_off": "mask",
            "at_limit": "freeze",
            "temperature": 0.8,
            "top_p": 0.95,
            "pitch_temperature": 0.6,
        },
        "vae": {"note_off": "spread", "at_limit": "release", "temperature": 0.7, "top_p": None},
        "vae_gan": {"note_off": "spread", "at_limit": "freeze", "temperature": 0.9, "top_p": 0.9},
    }
    monkeypatch.setattr(gen, "LISTENING_SAMPLING", planted)
    for mode in ("transformer", "vae"):
        out = tmp_path / f"{mode}.mid"
        assert main(["generate", str(checkpoint(mode)), "--out", str(out), "--tokens", "20"]) == 0
        assert {k: seen[k] for k in planted[mode]} == planted[mode], mode
    given = ["--temperature", "1", "--top-p", "0.5", "--note-off", "spread", "--force"]
    out = tmp_path / "transformer.mid"
    assert main(["generate", str(checkpoint("transformer")), "--out", str(out), *given]) == 0
    assert (seen["temperature"], seen["top_p"], seen["note_off"]) == (1.0, 0.5, "spread")
    assert seen["at_limit"] == "freeze"  # not given: the measured one
    assert seen["pitch_temperature"] == 0.6
    given = ["--pitch-temperature", "0.4", "--force"]
    assert main(["generate", str(checkpoint("transformer")), "--out", str(out), *given]) == 0
    assert seen["pitch_temperature"] == 0.4
    with pytest.raises(ValueError, match="mode must be one of"):
        gen.listening_sampling("gan")


def test_latent_flag_reaches_generate_for_a_vae_only(
    checkpoint, tmp_path, monkeypatch, seen, capsys
):
    """--latent picks where a vae's z comes from; a measured "latent" in the table is
    the default; a transformer refuses the flag in one line."""
    import importlib

    gen = importlib.import_module("stretto.engine.generate")
    planted = {mode: dict(gen.LISTENING_SAMPLING[mode]) for mode in gen.LISTENING_SAMPLING}
    planted["vae"]["latent"] = "prior"
    monkeypatch.setattr(gen, "LISTENING_SAMPLING", planted)
    out = str(tmp_path / "vae.mid")
    assert main(["generate", str(checkpoint("vae")), "--out", out, "--tokens", "8"]) == 0
    assert seen["latent"] == "prior"
    args = ["generate", str(checkpoint("vae")), "--out", out, "--tokens", "8", "--force"]
    assert main([*args, "--latent", "posterior"]) == 0
    assert seen["latent"] == "posterior"
    seen.clear()
    out = str(tmp_path / "t.mid")
    assert (
        main(["generate", str(checkpoint("transformer")), "--out", out, "--latent", "prior"]) != 0
    )
    err = capsys.readouterr().err
    assert "--latent is for vae and vae_gan checkpoints" in err and "latent" not in seen
