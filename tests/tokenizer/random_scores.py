"""Random short scores for the property and crash tests, written with symusic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from symusic import ControlChange, Note, Score, Tempo, Track


def random_score(rng: np.random.Generator) -> Score:
    """A short score with chords (long instants), held notes, pedals and tempo changes."""
    score = Score(480)
    qpm = rng.uniform(40, 220, 2)
    score.tempos = [Tempo(0, float(qpm[0])), Tempo(2000, float(qpm[1]))]
    for _ in range(int(rng.integers(1, 4))):
        track = Track("t", int(rng.integers(0, 128)), bool(rng.random() < 0.2))
        t = 0
        for _ in range(int(rng.integers(5, 40))):
            t += int(rng.choice([0, 0, 60, 240, 3000]))
            for p in rng.choice(np.arange(21, 109), size=int(rng.integers(1, 9)), replace=False):
                dur = int(rng.choice([0, 120, 480, 5000]))
                track.notes.append(Note(t, dur, int(p), int(rng.integers(1, 128))))
            if rng.random() < 0.3:
                track.controls.append(ControlChange(t, 64, int(rng.choice([0, 127]))))
        score.tracks.append(track)
    return score


def write_random_midi(folder: Path, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for j in range(count):
        path = folder / f"random{j:02d}.mid"
        random_score(rng).dump_midi(str(path))
        paths.append(path)
    return paths
