"""`polyphony`: hand-made scores with known answers, and muspy's measure on real files."""

from __future__ import annotations

import math

import pytest
from symusic import Note, Score, Track

from stretto.tokenizer.statistics import polyphony


def _score(*tracks: tuple[bool, list[tuple[int, int, int]]], tpq: int = 480) -> Score:
    """Tracks of (is_drum, [(time, duration, pitch), ...])."""
    score = Score(tpq)
    for is_drum, notes in tracks:
        track = Track(program=0, is_drum=is_drum)
        for time, duration, pitch in notes:
            track.notes.append(Note(time, duration, pitch, 90))
        score.tracks.append(track)
    return score


@pytest.mark.parametrize(
    ("tracks", "expected"),
    [
        pytest.param([(False, [(0, 480, 60)])], 1.0, id="one-note"),
        pytest.param([(False, [(0, 480, 60), (0, 480, 64), (0, 480, 67)])], 3.0, id="chord"),
        # ticks 0-240 one pitch, 240-480 two, 480-720 one: 960 pitch-ticks over 720 ticks
        pytest.param([(False, [(0, 480, 60), (240, 480, 64)])], 4 / 3, id="overlap"),
        pytest.param([(False, [(0, 240, 60), (240, 240, 64)])], 1.0, id="touching"),
        # silence between notes does not count: two chords of 2 with a gap
        pytest.param(
            [(False, [(0, 100, 60), (0, 100, 62), (500, 100, 60), (500, 100, 62)])],
            2.0,
            id="gap-excluded",
        ),
        pytest.param(
            [(False, [(0, 480, 60)]), (False, [(0, 480, 60), (0, 480, 72)])],
            2.0,
            id="unison-counts-once",
        ),
        pytest.param(
            [(False, [(0, 480, 60)]), (True, [(0, 480, 36), (0, 480, 42)])], 1.0, id="drums"
        ),
        pytest.param([(False, [(0, 0, 60), (0, 480, 64)])], 1.0, id="zero-duration"),
    ],
)
def test_polyphony_of_hand_made_scores(tracks, expected):
    assert polyphony(_score(*tracks)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "tracks",
    [[], [(False, [])], [(True, [(0, 480, 36)])], [(False, [(0, 0, 60)])]],
    ids=["no-track", "no-note", "drums-only", "zero-duration-only"],
)
def test_polyphony_without_a_sounding_pitch_is_nan(tracks):
    assert math.isnan(polyphony(_score(*tracks)))


def test_polyphony_is_muspys_on_real_files(midi_corpus):
    muspy = pytest.importorskip("muspy")
    checked = 0
    for path in midi_corpus[::4]:
        score = Score(str(path))
        tracks = []
        for track in score.tracks:
            n = track.notes.numpy()
            notes = [
                muspy.Note(time=int(t), pitch=int(p), duration=int(d), velocity=int(v))
                for t, p, d, v in zip(
                    n["time"], n["pitch"], n["duration"], n["velocity"], strict=True
                )
            ]
            tracks.append(muspy.Track(is_drum=track.is_drum, notes=notes))
        if not any(t.notes for t in tracks):
            continue  # muspy's piano roll has no length without a note
        music = muspy.Music(resolution=int(score.ticks_per_quarter), tracks=tracks)
        expected = float(muspy.polyphony(music))
        got = polyphony(score)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected), path
        checked += 1
    assert checked >= 10
