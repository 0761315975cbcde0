"""`render_wav` and `stretto render`: real corpus files rendered with the machine's General
MIDI SoundFont, read back with the standard library's `wave`."""

from __future__ import annotations

import wave

import numpy as np
import pytest
from symusic import Score

from stretto.engine.cli import main
from stretto.tokenizer import audio
from stretto.tokenizer.audio import RendererNotFound, SoundfontNotFound, render_wav

RELEASE_TAIL_S = 5.0  # a SoundFont's release after the last note-off, at most


@pytest.fixture(scope="module")
def soundfont():
    font = audio.find_soundfont()
    if font is None:
        pytest.skip(f"no General MIDI SoundFont installed (apt install {audio.SOUNDFONT_PACKAGE})")
    return font


@pytest.fixture
def no_soundfont(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "SOUNDFONT_PLACES", (str(tmp_path / "fonts" / "default.sf2"),))


def _read_wav(path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        frames = wav.readframes(params.nframes)
    assert params.sampwidth == 2
    return params, np.frombuffer(frames, dtype="<i2").reshape(-1, params.nchannels)


def _render_or_skip(*args, **kwargs):
    try:
        return render_wav(*args, **kwargs)
    except RendererNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("seconds", [3.0, 7.5], ids=["first-3s", "first-7.5s"])
def test_a_corpus_file_renders_to_a_wav_as_long_as_its_music(
    midi_corpus, soundfont, tmp_path, seconds
):
    source = midi_corpus[1]
    out = tmp_path / "song.wav"
    rendered = _render_or_skip(source, out, soundfont=soundfont, sample_rate=22050, seconds=seconds)
    music_s = float(Score(str(source)).to("second").clip(0.0, seconds, clip_end=True).end())
    params, samples = _read_wav(out)
    assert (params.nchannels, params.framerate) == (2, 22050)
    assert (rendered.channels, rendered.sample_rate, rendered.frames) == (2, 22050, len(samples))
    wav_s = params.nframes / params.framerate
    assert music_s <= wav_s <= music_s + RELEASE_TAIL_S, (music_s, wav_s)
    # sound while the music plays, not only in the tail
    playing = samples[: int(music_s * params.framerate)]
    assert np.abs(playing.astype(np.int32)).max() > 1000
    assert np.sqrt(np.mean(playing.astype(np.float64) ** 2)) > 50


def test_render_command_writes_the_wav_and_says_so(midi_corpus, soundfont, tmp_path, capsys):
    out = tmp_path / "song.wav"
    code = main(
        ["render", str(midi_corpus[0]), str(out), "--seconds", "2", "--sample-rate", "16000"]
    )
    if code == 2:
        pytest.skip(capsys.readouterr().err.strip())
    assert code == 0
    params, samples = _read_wav(out)
    assert params.framerate == 16000 and np.abs(samples).max() > 0
    assert capsys.readouterr().out.startswith(f"{out}: ")


def test_without_a_soundfont_the_one_line_error_names_the_package(
    midi_corpus, tmp_path, capsys, no_soundfont
):
    assert audio.find_soundfont() is None
    with pytest.raises(SoundfontNotFound, match="apt install fluid-soundfont-gm"):
        render_wav(midi_corpus[0], tmp_path / "song.wav")
    assert main(["render", str(midi_corpus[0]), str(tmp_path / "song.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stretto render: error: ")
    assert "apt install fluid-soundfont-gm" in err and "--soundfont PATH" in err
    assert not (tmp_path / "song.wav").exists()


def test_without_a_synthesizer_the_error_names_fluidsynth(
    midi_corpus, soundfont, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(audio, "_symusic_renders", lambda font: False)
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    assert main(["render", str(midi_corpus[0]), str(tmp_path / "song.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt install fluidsynth" in err


def _bad_inputs(tmp_path, source):
    not_midi = tmp_path / "not.mid"
    not_midi.write_bytes(b"RIFF and then nothing a MIDI reader wants")
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(source.read_bytes()[:40])
    not_a_font = tmp_path / "font.sf2"
    not_a_font.write_bytes(b"RIFF\0\0\0\0WAVE")
    good = str(source)
    return {
        "missing-file": ([str(tmp_path / "absent.mid"), "o.wav"], "cannot read"),
        "not-midi": ([str(not_midi), "o.wav"], "no MThd header"),
        "truncated": ([str(truncated), "o.wav"], "unreadable MIDI"),
        "no-output-folder": ([good, str(tmp_path / "absent" / "o.wav")], "does not exist"),
        "soundfont-missing": (
            [good, "o.wav", "--soundfont", str(tmp_path / "x.sf2")],
            "not a file",
        ),
        "soundfont-folder": ([good, "o.wav", "--soundfont", str(tmp_path)], "not a file"),
        "soundfont-not-sf2": ([good, "o.wav", "--soundfont", str(not_a_font)], "not a SoundFont"),
        "sample-rate": ([good, "o.wav", "--sample-rate", "7"], "sample rate 7"),
        "seconds": ([good, "o.wav", "--seconds", "0"], "seconds 0"),
    }


BAD = [
    "missing-file",
    "not-midi",
    "truncated",
    "no-output-folder",
    "soundfont-missing",
    "soundfont-folder",
    "soundfont-not-sf2",
    "sample-rate",
    "seconds",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_problem(midi_corpus, tmp_path, capsys, monkeypatch, case):
    argv, reason = _bad_inputs(tmp_path, midi_corpus[0])[case]
    monkeypatch.chdir(tmp_path)
    assert main(["render", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stretto render: error: ")
    assert reason in err
    assert not (tmp_path / "o.wav").exists()


def test_music_longer_than_the_limit_is_refused(tmp_path, monkeypatch, midi_corpus):
    monkeypatch.setattr(audio, "MAX_SECONDS", 1.0)
    with pytest.raises(ValueError, match=r"lasts \d+ s, over the 1 s a WAV is rendered for"):
        render_wav(midi_corpus[0], tmp_path / "o.wav")
    assert not (tmp_path / "o.wav").exists()


def test_symusics_buffer_is_written_where_its_synthesizer_returns_one(
    midi_corpus, soundfont, tmp_path, monkeypatch
):
    """The symusic branch (symusic 0.6.0 cannot return its buffer, so a stand-in
    synthesizer returns a [channels, samples] float32 buffer, as its docs describe)."""
    asked = []

    class StandIn:
        def __init__(self, font, rate, quality):
            asked.append((font, rate, quality))

        def render(self, score, stereo):
            tone = 0.25 * np.sin(np.arange(int(score.end() * 8000)) * 0.3)
            return np.stack([tone, tone]).astype(np.float32)

    monkeypatch.setattr(audio, "_symusic_synthesizer", StandIn)
    monkeypatch.setattr(audio, "_symusic_renders", lambda font: True)
    rendered = render_wav(
        midi_corpus[1], tmp_path / "o.wav", soundfont=soundfont, sample_rate=8000, seconds=2.0
    )
    params, samples = _read_wav(tmp_path / "o.wav")
    assert rendered.renderer == "symusic" and asked == [(str(soundfont), 8000, 0)]
    assert (params.nchannels, params.framerate) == (2, 8000)
    assert 0 < params.nframes <= 16000 and 7000 < np.abs(samples).max() < 9000


def test_every_malformed_file_renders_or_is_one_line(malformed_midi, soundfont, tmp_path, capsys):
    """Broken and hostile files (a 259-hour gap, ticks-per-quarter 0, truncated chunks,
    ...): a WAV or a one-line error, never a traceback or an hour of audio."""
    refused = 0
    for i, path in enumerate(malformed_midi):
        out = tmp_path / f"{i}.wav"
        code = main(["render", str(path), str(out), "--seconds", "1", "--sample-rate", "8000"])
        captured = capsys.readouterr()
        if code == 2:
            pytest.skip(captured.err.strip())
        assert code in (0, 1), path
        if code == 1:
            refused += 1
            assert captured.err.count("\n") == 1 and str(path) in captured.err, captured.err
        else:
            params, _ = _read_wav(out)
            assert params.nframes / params.framerate <= 1.0 + RELEASE_TAIL_S, path
    assert 0 < refused < len(malformed_midi)
