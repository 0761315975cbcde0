"""The demo's generation step writes a WAV beside the piano roll when a General MIDI
SoundFont is installed, and without one says so in one line and goes on."""

from __future__ import annotations

import dataclasses
import wave

import pytest

from stretto.engine.cli import demo
from stretto.tokenizer import audio


@pytest.fixture
def saved_model(make_model, tmp_path):
    make_model("transformer").save(tmp_path / "transformer" / "last.pt")
    return tmp_path


def _generate(out, font, lines):
    plan = demo.DemoPlan.for_device("cpu", steps=1)
    plan = dataclasses.replace(plan, generate_tokens=96)
    return demo._generate("transformer", plan, out, lines.append, font)


def test_the_demo_writes_a_wav_beside_the_piano_roll(saved_model):
    font = audio.find_soundfont()
    if font is None:
        pytest.skip(f"no General MIDI SoundFont installed (apt install {audio.SOUNDFONT_PACKAGE})")
    lines = []
    piece = _generate(saved_model, font, lines)
    if piece["wav"] is None and any("apt install fluidsynth" in line for line in lines):
        pytest.skip(lines[-1])
    assert piece["wav"] == str(saved_model / "transformer" / "generated.wav"), lines
    assert (saved_model / "transformer" / "generated.png").is_file()
    with wave.open(piece["wav"], "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getnframes() > 0
    summary = {"seconds": 1.0, "corpus": {"tokens": "c"}, "train": [], "generate": [piece]}
    summary["audit"] = {"table": "t", "json": "j", "issues": 0}
    assert piece["wav"] in demo._summary_text(summary, saved_model)


def test_without_a_soundfont_the_demo_says_so_once_and_goes_on(saved_model, tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "SOUNDFONT_PLACES", (str(tmp_path / "none.sf2"),))
    lines = []
    font = demo._soundfont(lines.append)
    assert font is None
    assert len(lines) == 1 and "apt install fluid-soundfont-gm" in lines[0]
    piece = _generate(saved_model, font, lines)
    assert piece["wav"] is None and len(lines) == 2  # the generation line only
    assert (saved_model / "transformer" / "generated.mid").is_file()
    assert not (saved_model / "transformer" / "generated.wav").exists()
