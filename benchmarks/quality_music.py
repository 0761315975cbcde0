"""Generated music against held-out music: per-piece statistics and distances between sets.

Statistics of one piece (a decoded symusic Score, or its token ids for `validity`):

| name | kind | definition | from |
|---|---|---|---|
| `pitch_class` | histogram, 12 bins | notes per pitch class, no drums | here |
| `pitch_range` | scalar, semitones | highest minus lowest pitch, no drums | muspy |
| `polyphony` | scalar, notes | mean notes sounding where one sounds | muspy |
| `note_density` | scalar, notes/s | notes over the piece's seconds | here |
| `ioi` | histogram, IOI_EDGES | gaps between distinct onsets (s) | here |
| `duration` | histogram, DURATION_EDGES | note durations (s) | here |
| `velocity` | histogram, 32 bins | notes per velocity // 4 (the tokens') | here |
| `empty_beats` | scalar, share | beats with no note sounding | muspy |
| `validity` | scalar, share | tokens that break no grammar rule | stretto |

muspy's functions: `pitch_range`, `polyphony`, `empty_beat_rate` (a note marks the
beats from its onset's to its end's, inclusive: a quarter note on a beat marks two);
`validity` is `stretto.tokenizer.validate`.

muspy (0.5.0, installed beside torch 2.13.0 without pulling torch, whose use in muspy
is an optional extra) defines pitch range, polyphony and the empty-beat rate in ticks
on notes; it offers no histograms, no note density, no inter-onset intervals and no
distance between two sets of pieces, which are written here.

Distances between two sets of pieces (`distance`): a histogram statistic pools the
pieces' counts into one normalized histogram per set and reports the total variation
distance `1 - overlap` (overlap = sum of bin-wise minima, 1 for identical histograms)
and the symmetric KL divergence (both histograms smoothed with `KL_EPSILON` per bin);
a scalar statistic reports `|mean_a - mean_b|` in its unit and the overlap of the two
sets' per-piece value histograms on common bins. Two identical sets are at distance 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Inter-onset intervals and durations, seconds: one token step is 1/64 s, so the first
# bin holds what sounds together on the token grid, then octaves up to 8 s.
IOI_EDGES = (0.0, 0.02, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, np.inf)
DURATION_EDGES = IOI_EDGES
VELOCITY_BINS = 32
KL_EPSILON = 1e-3  # probability mass added to every bin before a KL divergence

HISTOGRAMS = ("pitch_class", "ioi", "duration", "velocity")
SCALARS = ("pitch_range", "polyphony", "note_density", "empty_beats", "validity")
STATISTICS = (
    "pitch_class",
    "pitch_range",
    "polyphony",
    "note_density",
    "ioi",
    "duration",
    "velocity",
    "empty_beats",
    "validity",
)
UNITS = {
    "pitch_range": "semitones",
    "polyphony": "notes",
    "note_density": "notes/s",
    "empty_beats": "share",
    "validity": "share",
}


def histogram_labels(name: str) -> list[str]:
    """Bin labels of a histogram statistic, for tables and plots."""
    if name == "pitch_class":
        return ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    if name == "velocity":
        return [str(4 * b + 2) for b in range(VELOCITY_BINS)]
    edges = IOI_EDGES if name == "ioi" else DURATION_EDGES
    return [f"<{hi:g}" if np.isfinite(hi) else f">={lo:g}" for lo, hi in itertools.pairwise(edges)]


def _notes(score) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(pitched tracks' note arrays, all tracks' note arrays) of a symusic Score."""
    pitched, every = [], []
    for track in score.tracks:
        notes = track.notes.numpy()
        if notes["time"].size == 0:
            continue
        every.append(notes)
        if not track.is_drum:
            pitched.append(notes)
    return pitched, every


def _cat(arrays: Sequence[dict[str, np.ndarray]], key: str) -> np.ndarray:
    if not arrays:
        return np.zeros(0)
    return np.concatenate([a[key] for a in arrays]).astype(np.float64)


def to_muspy(score):
    """A muspy Music with the Score's notes, in its own ticks and ticks per quarter."""
    import muspy

    tracks = []
    for track in score.tracks:
        n = track.notes.numpy()
        notes = [
            muspy.Note(time=int(t), pitch=int(p), duration=int(d), velocity=int(v))
            for t, p, d, v in zip(n["time"], n["pitch"], n["duration"], n["velocity"], strict=True)
        ]
        tracks.append(muspy.Track(program=int(track.program), is_drum=track.is_drum, notes=notes))
    return muspy.Music(resolution=int(score.ticks_per_quarter), tracks=tracks)


def piece_statistics(score) -> dict[str, Any]:
    """The module docstring's statistics of one piece, a symusic Score in ticks, but
    `validity` (see `token_validity`).

    Histograms come back as raw counts (`np.ndarray`), scalars as floats (NaN where
    the piece has no note to measure).
    """
    import muspy

    seconds = score.to("second")
    pitched, every = _notes(seconds)
    pitches = _cat(pitched, "pitch").astype(np.int64)
    onsets = _cat(every, "time")
    durations = _cat(every, "duration")
    velocities = _cat(every, "velocity").astype(np.int64)
    music = to_muspy(score)
    length_s = float(seconds.end()) if every else 0.0
    distinct = np.unique(np.round(onsets, 6))
    out: dict[str, Any] = {
        "pitch_class": np.bincount(pitches % 12, minlength=12).astype(np.float64),
        "pitch_range": float(muspy.pitch_range(music)) if pitches.size else np.nan,
        "polyphony": float(muspy.polyphony(music)) if onsets.size else np.nan,
        "note_density": onsets.size / length_s if length_s > 0 else np.nan,
        "ioi": _histogram(np.diff(distinct), IOI_EDGES),
        "duration": _histogram(durations, DURATION_EDGES),
        "velocity": np.bincount(
            np.clip(velocities // 4, 0, VELOCITY_BINS - 1), minlength=VELOCITY_BINS
        ).astype(np.float64),
        "empty_beats": float(muspy.empty_beat_rate(music)) if onsets.size else np.nan,
    }
    return out


def token_validity(ids: Sequence[int], validate: Callable[[list[int]], list]) -> float:
    """The share of a sequence's tokens that break no grammar rule (`validate` returns
    one violation per offending position)."""
    ids = [int(t) for t in ids]
    return 1.0 - len(validate(ids)) / max(len(ids), 1)


def _histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.histogram(values, bins=np.asarray(edges, dtype=np.float64))[0].astype(np.float64)


@dataclass
class PieceSet:
    """Statistics of a set of pieces: pooled histogram counts and per-piece scalars."""

    pieces: int
    histograms: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray]

    @classmethod
    def of(
        cls, stats: Sequence[dict[str, Any]], validity: Sequence[float] | None = None
    ) -> PieceSet:
        """From `piece_statistics` of each piece and, optionally, `token_validity` values
        (of the same pieces, or of another sample of the same source)."""
        if not stats:
            raise ValueError("a set of pieces needs at least one piece")
        histograms = {name: np.sum([s[name] for s in stats], axis=0) for name in HISTOGRAMS}
        scalars = {
            name: np.array([s[name] for s in stats], dtype=np.float64)
            for name in SCALARS
            if name != "validity"
        }
        if validity is not None:
            scalars["validity"] = np.asarray(validity, dtype=np.float64)
        return cls(len(stats), histograms, scalars)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: normalized pooled histograms, per-piece scalars and their means."""
        out: dict[str, Any] = {"pieces": self.pieces}
        for name, counts in self.histograms.items():
            out[name] = {
                "histogram": [round(float(p), 6) for p in normalized(counts)],
                "count": float(counts.sum()),
            }
        for name, values in self.scalars.items():
            finite = values[np.isfinite(values)]
            out[name] = {
                "mean": float(finite.mean()) if finite.size else None,
                "values": [None if not np.isfinite(v) else round(float(v), 6) for v in values],
            }
        return out


def normalized(counts: np.ndarray) -> np.ndarray:
    total = float(np.sum(counts))
    if total <= 0:
        return np.full(len(counts), 1.0 / len(counts))
    return np.asarray(counts, dtype=np.float64) / total


def overlap(p: np.ndarray, q: np.ndarray) -> float:
    """Overlapping area of two histograms (normalized first): 1 when identical."""
    return float(np.minimum(normalized(p), normalized(q)).sum())


def symmetric_kl(p: np.ndarray, q: np.ndarray, epsilon: float = KL_EPSILON) -> float:
    """KL(p || q) + KL(q || p) in nats, each histogram smoothed by `epsilon` per bin."""
    p = normalized(normalized(p) + epsilon)
    q = normalized(normalized(q) + epsilon)
    return float(np.sum((p - q) * (np.log(p) - np.log(q))))


def _scalar_overlap(a: np.ndarray, b: np.ndarray, bins: int = 10) -> float | None:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return None
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    if hi <= lo:
        return 1.0
    edges = np.linspace(lo, hi, bins + 1)
    return overlap(np.histogram(a, edges)[0], np.histogram(b, edges)[0])


def distance(a: PieceSet, b: PieceSet, name: str) -> dict[str, float | None]:
    """How far set `a` is from set `b` on statistic `name` (see the module docstring):
    {"distance" (the one the targets read), "overlap", "symmetric_kl" (histograms)}."""
    if name in HISTOGRAMS:
        p, q = a.histograms[name], b.histograms[name]
        shared = overlap(p, q)
        return {"distance": 1.0 - shared, "overlap": shared, "symmetric_kl": symmetric_kl(p, q)}
    x, y = a.scalars.get(name), b.scalars.get(name)
    if x is None or y is None:
        return {"distance": None, "overlap": None}
    fx, fy = x[np.isfinite(x)], y[np.isfinite(y)]
    if fx.size == 0 or fy.size == 0:
        return {"distance": None, "overlap": None}
    return {"distance": abs(float(fx.mean()) - float(fy.mean())), "overlap": _scalar_overlap(x, y)}
