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

How notes end (`note_statistics`, from the ids read through the tokenizer's token-state
machine, `stretto.tokenizer._state.advance`, so a note is what the decoder makes of
it): each note ends by a NOTE_OFF (`note_off`), by a NOTE_ON on its sounding pitch
(`restruck`), by a NOTE_OFF at or past the length limit (`at_limit`, `max_note_steps`
after its onset: what a sampler's mask forced), or not at all, closed by the decoder at
END or at the end of the ids (`at_end`). Its statistics, outside the nine above (they
are reported beside them, not counted in "closer than unigram on N of 9"):

| name | kind | definition |
|---|---|---|
| `closed_by_model` | scalar, share | notes ended by a NOTE_OFF before the limit |
| `duration_mean` | scalar, s | mean note duration (as decoded) |
| `duration_p95` | scalar, s | 95th percentile of the note durations |
| `lead_silence` | scalar, s | time before the first onset |
| `longest_silence` | scalar, s | longest time inside the piece with no note sounding |
| `instruments` | scalar, instruments | instruments (families, drums one) that strike a note |

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
NOTE_STATISTICS = (
    "closed_by_model",
    "duration_mean",
    "duration_p95",
    "lead_silence",
    "longest_silence",
    "instruments",
)
ENDINGS = ("note_off", "restruck", "at_end", "at_limit")
NOTE_OFF, RESTRUCK, AT_END, AT_LIMIT = range(len(ENDINGS))
UNITS = {
    "closed_by_model": "share",
    "duration_mean": "s",
    "duration_p95": "s",
    "lead_silence": "s",
    "longest_silence": "s",
    "instruments": "instruments",
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


def note_endings(ids: Sequence[int], max_note_steps: int | None = None) -> dict[str, np.ndarray]:
    """Every note of a sequence as the decoder reads it: {"onset", "end" (steps),
    "ending" (index into `ENDINGS`), "instrument"}, in the order the notes start.

    `max_note_steps` (default: the grammar's, `DEFAULT_MAX_NOTE_STEPS`): a NOTE_OFF
    that ends a note this many steps or more after its onset counts as `at_limit`.
    """
    from stretto.tokenizer import _state as st
    from stretto.tokenizer.vocabulary import DEFAULT_MAX_NOTE_STEPS

    limit = DEFAULT_MAX_NOTE_STEPS if max_note_steps is None else max_note_steps
    s, sustain, notes = st.new_state()
    onset: list[int] = []
    end: list[int] = []
    ending: list[int] = []
    instrument: list[int] = []
    for t in ids:
        did = st.advance(s, sustain, notes, int(t))
        now, j = int(s[st.NOW]), int(s[st.CLOSED])
        if did == st.DID_END:
            break
        if did == st.DID_NOTE_ON:
            if j >= 0:
                end[j], ending[j] = now, RESTRUCK
            onset.append(now)
            end.append(-1)
            ending.append(AT_END)
            instrument.append(max(int(s[st.INST]), 0))
        elif did == st.DID_NOTE_OFF:
            end[j] = max(now, onset[j] + 1)  # a zero-length note lasts one step
            ending[j] = AT_LIMIT if now - onset[j] >= limit else NOTE_OFF
    now = int(s[st.NOW])
    for j, e in enumerate(end):
        if e < 0:  # still sounding: the decoder closes it at the end
            end[j] = max(now, onset[j] + 1)
    return {
        "onset": np.asarray(onset, dtype=np.int64),
        "end": np.asarray(end, dtype=np.int64),
        "ending": np.asarray(ending, dtype=np.int64),
        "instrument": np.asarray(instrument, dtype=np.int64),
    }


def note_statistics(ids: Sequence[int], max_note_steps: int | None = None) -> dict[str, Any]:
    """`NOTE_STATISTICS` of one sequence (NaN where it has no note) and `endings`, the
    count of its notes per kind of ending (`ENDINGS` order); see `note_endings`."""
    from stretto.tokenizer.vocabulary import STEP_SECONDS

    notes = note_endings(ids, max_note_steps)
    onset, end = notes["onset"], notes["end"]
    endings = np.bincount(notes["ending"], minlength=len(ENDINGS)).astype(np.float64)
    if onset.size == 0:
        nan = float("nan")
        return dict.fromkeys(NOTE_STATISTICS, nan) | {"endings": endings}
    durations = (end - onset) * STEP_SECONDS
    order = np.argsort(onset, kind="stable")
    reached = np.maximum.accumulate(end[order])  # the last end so far, in onset order
    gaps = onset[order][1:] - reached[:-1]
    return {
        "closed_by_model": float(endings[NOTE_OFF] / onset.size),
        "duration_mean": float(durations.mean()),
        "duration_p95": float(np.percentile(durations, 95)),
        "lead_silence": float(onset.min() * STEP_SECONDS),
        "longest_silence": float(max(gaps.max(initial=0), 0) * STEP_SECONDS),
        "instruments": float(np.unique(notes["instrument"]).size),
        "endings": endings,
    }


def drop_note_offs(ids: Sequence[int], share: float, rng: np.random.Generator) -> list[int]:
    """`ids` without `round(share * count)` of its NOTE_OFF ids, chosen by `rng`: how
    far the statistics move when a model forgets to release notes."""
    from stretto.tokenizer.vocabulary import Vocabulary

    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    offs = Vocabulary().NOTE_OFF
    ids = [int(t) for t in ids]
    positions = [i for i, t in enumerate(ids) if t in offs]
    k = round(share * len(positions))
    dropped = set(rng.choice(positions, size=k, replace=False).tolist()) if k else set()
    return [t for i, t in enumerate(ids) if i not in dropped]


def distance_multiple(value: float | None, reference: float | None) -> float | None:
    """`value` as a multiple of the real-against-real `reference` distance (None when
    either is missing or the reference is 0)."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def _histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.histogram(values, bins=np.asarray(edges, dtype=np.float64))[0].astype(np.float64)


@dataclass
class PieceSet:
    """Statistics of a set of pieces: pooled histogram counts and per-piece scalars."""

    pieces: int
    histograms: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray]
    endings: np.ndarray | None = None  # notes per kind of ending (`ENDINGS`), summed

    @classmethod
    def of(
        cls, stats: Sequence[dict[str, Any]], validity: Sequence[float] | None = None
    ) -> PieceSet:
        """From `piece_statistics` of each piece (merged with its `note_statistics`,
        when given) and, optionally, `token_validity` values (of the same pieces, or of
        another sample of the same source)."""
        if not stats:
            raise ValueError("a set of pieces needs at least one piece")
        histograms = {name: np.sum([s[name] for s in stats], axis=0) for name in HISTOGRAMS}
        scalars = {
            name: np.array([s[name] for s in stats], dtype=np.float64)
            for name in SCALARS + NOTE_STATISTICS
            if name != "validity" and name in stats[0]
        }
        if validity is not None:
            scalars["validity"] = np.asarray(validity, dtype=np.float64)
        endings = None
        if "endings" in stats[0]:
            endings = np.sum([s["endings"] for s in stats], axis=0)
        return cls(len(stats), histograms, scalars, endings)

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
        if self.endings is not None:
            out["endings"] = {k: float(c) for k, c in zip(ENDINGS, self.endings, strict=True)}
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
