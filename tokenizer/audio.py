"""MIDI -> WAV through a General MIDI SoundFont, to listen to what a model wrote.

The synthesizer is symusic's own (`symusic.Synthesizer`) where it can hand its buffer
back to Python. symusic 0.6.0 cannot: its `render` computes the audio and then fails
converting the `Eigen::Array` it returns (`TypeError: Unable to convert function return
value`), so there the FluidSynth program (Debian: `fluidsynth`) renders the same score
with the same SoundFont. Which one works is probed once per process on a one-note score.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from symusic import Note, Score, Track
from symusic import Synthesizer as _symusic_synthesizer
from symusic import dump_wav as _symusic_dump_wav

from .midi import MidiTokenizer

# Where Debian's fluid-soundfont-gm (and distributions that follow its layout) put a
# General MIDI SoundFont; the first readable file wins.
SOUNDFONT_PLACES: tuple[str, ...] = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf3",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)
SOUNDFONT_PACKAGE = "fluid-soundfont-gm"
RENDERER_PACKAGE = "fluidsynth"
DEFAULT_SAMPLE_RATE = 44100
SAMPLE_RATE_RANGE = (8000, 192000)
FLUIDSYNTH_GAIN = 0.5  # its default 0.2 is quiet; 0.5 leaves headroom for dense chords
FLUIDSYNTH_TIMEOUT_S = 600
MAX_SECONDS = 3600.0  # an hour of 44.1 kHz stereo PCM16 is 635 MB


class SoundfontNotFound(LookupError):
    """No General MIDI SoundFont in `places`; `fluid-soundfont-gm` installs one."""

    def __init__(self, places: Sequence[str]):
        super().__init__(
            f"no General MIDI SoundFont found (looked in {', '.join(places)}); "
            f"install one: apt install {SOUNDFONT_PACKAGE}"
        )
        self.places = tuple(places)


class RendererNotFound(LookupError):
    """Neither symusic's synthesizer nor the FluidSynth program can render here."""


@dataclass(frozen=True)
class RenderedAudio:
    """A WAV file written by `render_wav`: 16-bit PCM, `channels` x `frames` samples."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    renderer: str  # "symusic" or "fluidsynth"
    soundfont: Path

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def find_soundfont(places: Sequence[str] | None = None) -> Path | None:
    """The first readable file among `places` (default `SOUNDFONT_PLACES`), else None."""
    for place in SOUNDFONT_PLACES if places is None else places:
        path = Path(place)
        if path.is_file() and os.access(path, os.R_OK):
            return path
    return None


def render_wav(
    midi: str | os.PathLike | bytes | Score,
    out: str | os.PathLike,
    *,
    soundfont: str | os.PathLike | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    seconds: float | None = None,
) -> RenderedAudio:
    """Render `midi` (a path, bytes or symusic Score) to a 16-bit stereo WAV at `out`.

    `soundfont`: an .sf2/.sf3 file; None searches `SOUNDFONT_PLACES` and raises
    `SoundfontNotFound` (which names the package to install) when none is there.
    `seconds`: render only the first `seconds` of the music (notes still sounding then
    are cut there); the WAV also holds the instruments' release tail. Music longer than
    `MAX_SECONDS` is refused. Unreadable MIDI raises `MidiError`; a bad `sample_rate`,
    `seconds` or soundfont path, or an output folder that does not exist, raises
    `ValueError` naming the value; `RendererNotFound` when no synthesizer works here.
    """
    lo, hi = SAMPLE_RATE_RANGE
    if not isinstance(sample_rate, int) or not lo <= sample_rate <= hi:
        raise ValueError(f"sample rate {sample_rate!r} is not a whole number in [{lo}, {hi}] Hz")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds {seconds!r} is not positive")
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"output folder {out.parent} does not exist")
    score = MidiTokenizer().read(midi).to("second")
    if seconds is not None:
        score = score.clip(0.0, float(seconds), clip_end=True)
    end = float(score.end())
    if not end <= MAX_SECONDS:  # NaN and inf included
        raise ValueError(
            f"{_name(midi)} lasts {end:.0f} s, over the {MAX_SECONDS:.0f} s a WAV is "
            "rendered for: render its beginning only (`seconds`; `stretto render --seconds`)"
        )
    font = _soundfont(soundfont)
    if _symusic_renders(font):
        audio = _symusic_synthesizer(str(font), sample_rate, 0).render(score, True)
        _symusic_dump_wav(str(out), np.asfortranarray(audio, dtype=np.float32), sample_rate)
        renderer = "symusic"
    elif shutil.which(RENDERER_PACKAGE):
        _fluidsynth(score, out, font, sample_rate)
        renderer = "fluidsynth"
    else:
        raise RendererNotFound(
            "symusic's Synthesizer cannot return audio here (symusic 0.6.0 fails converting "
            f"its buffer) and the FluidSynth program is missing: apt install {RENDERER_PACKAGE}"
        )
    with wave.open(str(out), "rb") as wav:
        channels, frames, rate = wav.getnchannels(), wav.getnframes(), wav.getframerate()
    return RenderedAudio(out, rate, channels, frames, renderer, font)


def _name(midi) -> str:
    return os.fspath(midi) if isinstance(midi, str | os.PathLike) else "the score"


def _soundfont(soundfont: str | os.PathLike | None) -> Path:
    if soundfont is None:
        found = find_soundfont()
        if found is None:
            raise SoundfontNotFound(SOUNDFONT_PLACES)
        return found
    path = Path(soundfont)
    if not path.is_file():
        raise ValueError(f"soundfont {path}: not a file")
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError as exc:
        raise ValueError(f"soundfont {path}: cannot read: {exc.strerror or exc}") from exc
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise ValueError(f"soundfont {path}: not a SoundFont (no RIFF sfbk header)")
    return path


@functools.cache
def _symusic_renders(font: Path) -> bool:
    """Whether symusic's `Synthesizer.render` returns a buffer on this install (a
    one-note probe with `font`)."""
    probe = Score(480)
    track = Track(program=0)
    track.notes.append(Note(0, 240, 60, 100))
    probe.tracks.append(track)
    try:
        _symusic_synthesizer(str(font), 8000, 0).render(probe, True)
    except (TypeError, RuntimeError):
        return False
    return True


def _fluidsynth(score: Score, out: Path, font: Path, sample_rate: int) -> None:
    with tempfile.TemporaryDirectory(prefix="stretto-render-") as tmp:
        midi = Path(tmp) / "score.mid"
        score.to("tick").dump_midi(str(midi))
        command = [
            RENDERER_PACKAGE,
            "-ni",  # no MIDI input driver, no shell
            "-q",
            "-g",
            str(FLUIDSYNTH_GAIN),
            "-r",
            str(sample_rate),
            "-T",
            "wav",
            "-O",
            "s16",
            "-F",
            str(out),
            str(font),
            str(midi),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=FLUIDSYNTH_TIMEOUT_S, check=False
        )
    if done.returncode != 0 or not out.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"fluidsynth exited with {done.returncode}: {last[0][:200]}")
