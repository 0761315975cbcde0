"""Properties of the tokenizer over random scores and random ids (hypothesis).

Round trips hold the SPEC's tolerances on scores nobody wrote by hand (out-of-range
pitches, overlaps, zero lengths, long gaps, tempo changes, CC64), encoding is a fixed
point after one decode, and decode is total on in-range ids.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from symusic import ControlChange, Note, Score, Tempo, Track

from stretto.tokenizer import MidiError, MidiTokenizer, Vocabulary

from .midi_reference import assert_round_trip, sustain_instruments

V = Vocabulary()
TOK = MidiTokenizer()
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- random scores -----------------------------------------------------------------------
ticks = st.one_of(st.integers(0, 4000), st.integers(0, 400_000))  # some long gaps
notes = st.lists(
    st.tuples(
        ticks,
        st.one_of(st.just(0), st.integers(0, 2000)),  # zero lengths
        st.integers(0, 127),  # pitches outside 21..108 included
        st.integers(1, 127),
    ),
    max_size=40,
)
pedals = st.lists(st.tuples(ticks, st.integers(0, 127)), max_size=6)
tracks = st.lists(
    st.tuples(st.integers(0, 127), st.booleans(), notes, pedals, st.sampled_from([0, 64, 1])),
    min_size=1,
    max_size=4,
)
tempos = st.lists(st.tuples(ticks, st.floats(20.0, 400.0)), max_size=5)


@st.composite
def scores(draw) -> Score:
    score = Score(draw(st.sampled_from([24, 96, 480, 960])))
    score.tempos = [Tempo(t, qpm) for t, qpm in sorted(draw(tempos))]
    for program, drum, track_notes, track_pedals, other_cc in draw(tracks):
        track = Track("t", program, drum)
        for t, dur, pitch, vel in track_notes:
            track.notes.append(Note(t, dur, pitch, vel))
        # CC64 plus another controller the tokenizer must ignore
        controls = [(t, 64, v) for t, v in track_pedals] + [(0, other_cc, 100)]
        for t, num, v in sorted(controls):
            track.controls.append(ControlChange(t, num, v))
        score.tracks.append(track)
    return score


def _tokenized_end_seconds(score: Score) -> float:
    """When the last event the tokenizer reads happens: a note of pitch 21..108 ends, a
    CC64 or the tempo changes. Other pitches are dropped and other controls ignored, so
    they do not count against the duration limit."""
    seconds = score.to("second")
    ends = [float(t.time) for t in seconds.tempos]
    for track in seconds.tracks:
        notes = track.notes.numpy()
        kept = (notes["pitch"] >= 21) & (notes["pitch"] <= 108)
        ends += (notes["time"][kept] + notes["duration"][kept]).tolist()
        controls = track.controls.numpy()
        ends += controls["time"][controls["number"] == 64].tolist()
    return max(ends, default=0.0)


def _dropped_note_past_the_limit() -> Score:
    """A note of pitch 10 (dropped) ending 4 h 0.1 s in, at 20 BPM: the file is kept."""
    score = Score(24)
    score.tempos = [Tempo(0, 20.0)]
    track = Track("t", 0, False)
    track.notes.append(Note(0, 10, 60, 64))
    track.notes.append(Note(100, 115_101, 10, 64))
    score.tracks.append(track)
    return score


@SETTINGS
@given(score=scores())
@example(score=_dropped_note_past_the_limit())
def test_round_trip_within_tolerances_and_encoding_is_a_fixed_point(score):
    # Long gaps at 20 BPM can pass the duration limit: then the one clear error.
    end_s = _tokenized_end_seconds(score)
    limit = TOK.config.max_seconds
    assume(abs(end_s - limit) > 2 / 64)  # within two steps, rounding may go either way
    if end_s > limit:
        with pytest.raises(MidiError, match="limit"):
            TOK.encode_score(score)
        return
    ids = TOK.encode_score(score)
    assert ids[0] == V.START and ids[-1] == V.END
    assert ids.min() >= 0 and ids.max() < V.size
    assert not np.isin(ids[1:-1], [V.START, V.END, V.PAD, V.UNK]).any()
    decoded = TOK.decode(ids)
    assert_round_trip(score, decoded)
    assert sustain_instruments(decoded) <= sustain_instruments(score)
    again = TOK.encode_score(decoded)
    np.testing.assert_array_equal(again, ids)
    # through MIDI bytes too: what is written is what is read, except that symusic's
    # reader drops tracks without notes (a pedal-only track's CC64 goes with them)
    for j in reversed(range(len(decoded.tracks))):
        if len(decoded.tracks[j].notes) == 0:
            del decoded.tracks[j]
    with_notes = TOK.encode_score(decoded)
    np.testing.assert_array_equal(TOK.encode(decoded.dumps_midi()), with_notes)


# -- decode is total ---------------------------------------------------------------------
# ids drawn per family, so that sequences with structure (not only noise) come up
families = [
    st.integers(0, 3),
    st.integers(V.NOTE_ON.start, V.NOTE_ON.stop - 1),
    st.integers(V.NOTE_OFF.start, V.NOTE_OFF.stop - 1),
    st.integers(V.TIME_SHIFT.start, V.TIME_SHIFT.stop - 1),
    st.integers(V.VELOCITY.start, V.VELOCITY.stop - 1),
    st.integers(V.SUSTAIN_ON, V.SUSTAIN_OFF),
    st.integers(V.TEMPO.start, V.TEMPO.stop - 1),
    st.integers(V.INSTRUMENT.start, V.INSTRUMENT.stop - 1),
    st.integers(0, V.size - 1),
]
in_range_ids = st.lists(st.one_of(*families), max_size=400)


def _check_valid_score(score: Score) -> None:
    assert score.ticks_per_quarter > 0
    for track in score.tracks:
        n = track.notes.numpy()
        assert (n["time"] >= 0).all() and (n["duration"] >= 1).all()
        assert ((n["pitch"] >= 21) & (n["pitch"] <= 108)).all()
        assert ((n["velocity"] >= 1) & (n["velocity"] <= 127)).all()
        c = track.controls.numpy()
        assert (c["number"] == 64).all() and np.isin(c["value"], [0, 127]).all()
    t = score.tempos.numpy()
    assert (np.diff(t["time"]) >= 0).all() and (t["mspq"] > 0).all()


@SETTINGS
@given(ids=in_range_ids, dtype=st.sampled_from([np.int16, np.int64, np.uint16]))
def test_decode_is_total_on_in_range_ids(ids, dtype):
    score = TOK.decode(np.array(ids, dtype=dtype))
    _check_valid_score(score)
    reread = Score.from_midi(score.dumps_midi())
    assert sum(len(t.notes) for t in reread.tracks) == sum(len(t.notes) for t in score.tracks)
    # whatever a model emits encodes again, and is a fixed point from there
    once = TOK.encode_score(score)
    np.testing.assert_array_equal(TOK.encode_score(TOK.decode(once)), once)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    ids=st.lists(st.integers(0, V.size - 1), max_size=50),
    bad=st.one_of(st.integers(-(2**40), -1), st.integers(V.size, 2**40)),
    where=st.integers(0, 50),
)
def test_out_of_range_ids_raise_value_error_naming_the_value(ids, bad, where):
    ids.insert(min(where, len(ids)), bad)
    with pytest.raises(ValueError, match=f"token id {bad} "):
        TOK.decode(np.array(ids, dtype=np.int64))
