"""`validate`: each rule caught on hand-made sequences, its inputs, real music, and ids
read as the decoder reads them. tests/engine/test_generate_grammar.py holds the mask
(`stretto.engine.Grammar`) to the same answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stretto.tokenizer import MidiTokenizer, Violation, Vocabulary, validate
from stretto.tokenizer._windows import build_window, snap_to_boundary
from stretto.tokenizer.grammar import RULES, longest_note, longest_silence

V = Vocabulary()
S, E, PAD = V.START, V.END, V.PAD
I0, VEL, ON60, OFF60 = V.instrument(0), V.velocity(64), V.note_on(60), V.note_off(60)
SHIFT = V.time_shift  # steps -> id


def _bad(rule, position, *ids):
    return pytest.param(list(ids), position, rule, id=f"{rule}-at-{position}")


BAD = [
    _bad("start", 0, I0, VEL, ON60),
    _bad("special", 2, S, I0, PAD, VEL, ON60),
    _bad("special", 1, S, V.UNK),
    _bad("special", 3, S, I0, VEL, S),
    _bad("after_end", 5, S, I0, VEL, ON60, E, ON60),
    _bad("instrument_first", 2, S, VEL, ON60),
    _bad("instrument_first", 1, S, V.SUSTAIN_ON),
    _bad("instrument_first", 1, S, OFF60),
    _bad("velocity_first", 2, S, I0, ON60),
    _bad("orphan_note_off", 4, S, I0, VEL, ON60, OFF60 + 1),
    # the note sounds in instrument 0, the NOTE_OFF acts on instrument 1
    _bad("orphan_note_off", 5, S, I0, VEL, ON60, V.instrument(1), OFF60),
    _bad("orphan_note_off", 6, S, I0, VEL, ON60, SHIFT(4), OFF60, OFF60),
]


@pytest.mark.parametrize("ids,position,rule", BAD)
def test_validate_catches_each_rule(ids, position, rule):
    found = validate(ids)
    assert [(v.position, v.rule) for v in found] == [(position, rule)]
    assert found[0].token == ids[position]


def test_every_rule_has_a_bad_example():
    assert {p.values[2] for p in BAD} == set(RULES)


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param([S], id="start-only"),
        pytest.param([S, I0, VEL, ON60, SHIFT(16), OFF60, E], id="one-note"),
        pytest.param([S, I0, VEL, ON60, SHIFT(16), E, PAD, PAD], id="open-note-at-end-padded"),
        pytest.param([S, V.tempo(120), I0, V.SUSTAIN_ON, VEL, ON60, ON60], id="restrike"),
        # a note's length is no rule: data holds notes of any length
        pytest.param([S, I0, VEL, ON60, *[SHIFT(512)] * 20, OFF60, E], id="160s-note"),
    ],
)
def test_validate_accepts(ids):
    assert validate(ids) == []


def test_validate_rejects_out_of_range():
    with pytest.raises(ValueError, match="774"):
        validate([S, 774])


def test_a_broken_token_acts_as_the_decoder_reads_it():
    """A NOTE_ON before any INSTRUMENT breaks `instrument_first` and sounds on
    instrument 0, where decoding puts it: a later NOTE_OFF there releases it."""
    ids = [S, VEL, ON60, I0, SHIFT(4), OFF60, E]
    assert [(v.position, v.rule) for v in validate(ids)] == [(2, "instrument_first")]
    tok = MidiTokenizer()
    (track,) = tok.decode(np.array(ids)).tracks
    assert track.program == 0 and len(track.notes) == 1
    assert tok.last_decode_stats.orphan_note_off == 0


def test_messages_name_the_token_and_the_state():
    ids = [S, V.instrument(3), VEL, ON60, OFF60 + 1, SHIFT(8), SHIFT(8), SHIFT(2), E]
    assert validate(ids) == [
        Violation(4, "orphan_note_off", OFF60 + 1, "NOTE_OFF(61): pitch not sounding in 3"),
    ]


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(list, id="list"),
        pytest.param(lambda x: np.array(x, dtype=np.int16), id="numpy-int16"),
        pytest.param(lambda x: np.array(x, dtype=np.uint16), id="numpy-uint16"),
        pytest.param(torch.tensor, id="torch"),
    ],
)
def test_validate_takes_sequences_arrays_and_tensors(form):
    ids = [S, I0, ON60, SHIFT(20), S, E]
    assert [(v.position, v.rule) for v in validate(form(ids))] == [
        (2, "velocity_first"),
        (4, "special"),
    ]
    assert longest_note(form(ids)) == 20


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [
        pytest.param([[S, I0]], {}, "one sequence", id="2-D"),
        pytest.param([S, -1], {}, "token id -1 ", id="negative"),
        pytest.param([S, 0.5], {}, "integer", id="float"),
    ],
)
def test_validate_refuses_bad_input(ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate(ids, **kwargs)


@pytest.mark.parametrize(
    "ids, steps",
    [
        pytest.param([S], 0, id="nothing"),
        pytest.param([S, I0, VEL, ON60, SHIFT(16), OFF60, SHIFT(100), E], 16, id="closed"),
        pytest.param([S, I0, VEL, ON60, SHIFT(16), E, SHIFT(90)], 16, id="closed-by-end"),
        pytest.param([S, I0, VEL, ON60, SHIFT(5), ON60, SHIFT(7)], 7, id="restruck"),
        pytest.param([S, I0, VEL, ON60, SHIFT(5), V.instrument(1), ON60, SHIFT(7)], 12, id="two"),
        pytest.param([S, VEL, ON60, SHIFT(512), SHIFT(3)], 515, id="open-at-the-last-id"),
    ],
)
def test_longest_note_counts_steps_as_the_decoder_reads_them(ids, steps):
    assert longest_note(ids) == steps


@pytest.mark.parametrize(
    "ids, steps",
    [
        pytest.param([S, I0, VEL, ON60, SHIFT(16), OFF60], 0, id="never-silent"),
        pytest.param([S, SHIFT(30), SHIFT(4), I0, VEL, ON60, SHIFT(90)], 34, id="opening"),
        pytest.param([S, I0, VEL, ON60, SHIFT(5), OFF60, SHIFT(7), SHIFT(2), ON60], 9, id="inside"),
        # a NOTE_OFF under the pedal still ends the note as the state machine reads it
        pytest.param([S, I0, VEL, ON60, V.SUSTAIN_ON, OFF60, SHIFT(12)], 12, id="pedal"),
        pytest.param(
            [S, I0, VEL, ON60, OFF60, SHIFT(3), ON60, SHIFT(1), OFF60, SHIFT(8)], 8, id="last"
        ),
        pytest.param([S, I0, VEL, SHIFT(6), E, SHIFT(40)], 6, id="stops-at-end"),
    ],
)
def test_longest_silence_counts_steps_with_nothing_sounding(ids, steps):
    assert longest_silence(ids) == steps


def test_encoded_real_music_keeps_every_rule(midi_corpus):
    """docs/engine.md: encoded music passes every rule, notes of any length included (one file of
    the dev corpus holds a note over 8 s), and so does a file with no note in range,
    START TEMPO END (the corpus builder refuses it: nothing to learn from)."""
    tok = MidiTokenizer()
    longest = 0
    for path in midi_corpus:
        ids = tok.encode(path)
        assert validate(ids) == [], path.name
        longest = max(longest, longest_note(ids))
    assert longest > 512


@pytest.mark.parametrize("seq_len", [512, 1024, 2048])
def test_every_window_of_real_music_validates(midi_corpus, seq_len):
    """Every window `TokenDataset` makes of every real file with a note (its geometry:
    stride seq_len // 2, prefix at most seq_len // 4) keeps every rule, a window with no
    NOTE_ON at all (a tail of silence, pedal and END) included."""
    tok = MidiTokenizer()
    stride, max_prefix = seq_len // 2, max(8, seq_len // 4)
    windows = noteless = 0
    for path in midi_corpus:
        ids = tok.encode(path)
        if tok.last_encode_stats.notes == 0:
            continue
        for k in range(-(-len(ids) // stride)):
            start = snap_to_boundary(ids, k * stride)
            window, n_real, _ = build_window(ids, start, seq_len, max_prefix, PAD)
            window = window[:n_real]
            broken = {v.rule for v in validate(window)}
            windows += 1
            noteless += not ((window >= V.NOTE_ON.start) & (window < V.NOTE_ON.stop)).any()
            assert broken == set(), (path.name, k, broken)
    assert windows > 1000 and noteless < windows
