"""MidiTokenizer: layout, round trips on real files, edge cases, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from symusic import (
    ControlChange,
    KeySignature,
    Note,
    Pedal,
    PitchBend,
    Score,
    Tempo,
    TextMeta,
    TimeSignature,
    Track,
)

from stretto.tokenizer import MidiError, MidiTokenizer, TokenizerConfig, Vocabulary
from stretto.tokenizer._buffer import score_layout
from stretto.tokenizer._sort import stable_sort
from stretto.tokenizer.vocabulary import tempo_bin

from .midi_reference import (
    STEP,
    TIME_EPS,
    assert_round_trip,
    corpus_names,
    smf,
    sorted_notes,
    sustain_instruments,
)

DEV_NAMES = corpus_names("STRETTO_TEST_CORPUS", "dev")
MALFORMED_NAMES = corpus_names("STRETTO_TEST_MALFORMED", "malformed")
V = Vocabulary()


@pytest.fixture(scope="module")
def tok() -> MidiTokenizer:
    return MidiTokenizer()


def _pick(files, name):
    by_name = {p.name: p for p in files}
    if name not in by_name:
        pytest.skip(f"{name} is not in the corpus fixture's folder")
    return by_name[name]


# -- layout (SPEC table) ---------------------------------------------------------------
@pytest.mark.parametrize(
    "family, first, last",
    [
        pytest.param("NOTE_ON", 4, 91, id="NOTE_ON-4-91"),
        pytest.param("NOTE_OFF", 92, 179, id="NOTE_OFF-92-179"),
        pytest.param("TIME_SHIFT", 180, 691, id="TIME_SHIFT-180-691"),
        pytest.param("VELOCITY", 692, 723, id="VELOCITY-692-723"),
        pytest.param("SUSTAIN", 724, 725, id="SUSTAIN-724-725"),
        pytest.param("TEMPO", 726, 757, id="TEMPO-726-757"),
        pytest.param("INSTRUMENT", 758, 773, id="INSTRUMENT-758-773"),
    ],
)
def test_layout_family_ranges(family, first, last):
    r = V.families[family]
    assert (r.start, r.stop - 1) == (first, last)


def test_layout_size_and_specials():
    assert V.size == 774
    assert (V.START, V.END, V.PAD, V.UNK) == (0, 1, 2, 3)
    assert (V.note_on(21), V.note_on(108), V.note_off(21), V.note_off(108)) == (4, 91, 92, 179)
    assert (V.time_shift(1), V.time_shift(512)) == (180, 691)
    assert (V.velocity(1), V.velocity(127)) == (692, 723)
    assert (V.instrument(0), V.instrument(15)) == (758, 773)


# -- real files ------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEV_NAMES)
def test_round_trip_corpus_file(tok, midi_corpus, corpus_manifest, name):
    path = _pick(midi_corpus, name)
    original = Score(str(path))
    ids = tok.encode(path)
    stats = tok.last_encode_stats
    assert ids[0] == V.START and ids[-1] == V.END
    assert ids.min() >= 0 and ids.max() < V.size
    assert not np.isin(ids, [V.PAD, V.UNK]).any()
    row = corpus_manifest.get(name)
    if row is not None:
        assert stats.notes + stats.dropped_pitch + stats.replaced_same_onset == int(row["notes"])
    decoded = tok.decode(ids)
    assert_round_trip(original, decoded)
    assert sustain_instruments(decoded) == sustain_instruments(original)
    again = tok.encode(decoded)
    np.testing.assert_array_equal(again, ids)


@pytest.mark.parametrize("name", DEV_NAMES[:12])
def test_encode_accepts_path_bytes_and_score(tok, midi_corpus, name):
    path = _pick(midi_corpus, name)
    from_path = tok.encode(path)
    np.testing.assert_array_equal(tok.encode(str(path)), from_path)
    np.testing.assert_array_equal(tok.encode(path.read_bytes()), from_path)
    np.testing.assert_array_equal(tok.encode(Score(str(path))), from_path)


@pytest.mark.parametrize("name", MALFORMED_NAMES)
def test_malformed_file_tokenizes_or_raises_midi_error(tok, malformed_midi, name):
    path = _pick(malformed_midi, name)
    try:
        ids = tok.encode(path)
    except MidiError as exc:
        assert str(path) in str(exc)
        assert exc.reason and exc.source == str(path)
        return
    assert ids[0] == V.START and ids[-1] == V.END
    tok.encode(tok.decode(ids))  # what tokenized also decodes and re-encodes


@pytest.mark.parametrize(
    "name, reason",
    [
        pytest.param("craft_division0_from_m21_test01.mid", "ticks-per-quarter is 0", id="tpq0"),
        pytest.param(
            "craft_hugedelta_0FFFFFFF_from_pbst_LavendersBlue.mid", "max_seconds", id="259h-gap"
        ),
        pytest.param("craft_riff_rmid_from_pbst_FrereJacques.mid", "RIFF", id="rmid"),
        pytest.param("jdk_MidiSMPTE_30fps_120tpf.mid", "SMPTE", id="smpte"),
        pytest.param("jazz_empty-file.mid", "too short", id="zero-bytes"),
        pytest.param("jazz_not-a-midi-file.mid", "no MThd", id="not-midi"),
        pytest.param("craft_truncated60pct_from_pm_example.mid", "unreadable", id="truncated"),
    ],
)
def test_malformed_refusal_reason(tok, malformed_midi, name, reason):
    with pytest.raises(MidiError, match=reason):
        tok.encode(_pick(malformed_midi, name))


def test_kar_extension_is_read_by_content(tok, malformed_midi):
    ids = tok.encode(_pick(malformed_midi, "mma_twinkle-kar.kar"))
    assert np.isin(ids, V.NOTE_ON).sum() > 100


# -- edge cases written here -----------------------------------------------------------
def _score(*tracks: Track, tpq: int = 480, tempos=((0, 500000),)) -> Score:
    s = Score(tpq)
    for t in tracks:
        s.tracks.append(t)
    s.tempos = Tempo.from_numpy(
        np.array([t for t, _ in tempos], np.int32), np.array([m for _, m in tempos], np.int32)
    )
    return s


def _track(notes, program=0, drum=False, controls=()) -> Track:
    """notes: (tick, duration, pitch, velocity) rows."""
    t = Track("t", program, drum)
    a = np.array(notes, dtype=np.int64).reshape(-1, 4)
    t.notes = Note.from_numpy(
        a[:, 0].astype(np.int32),
        a[:, 1].astype(np.int32),
        a[:, 2].astype(np.int8),
        a[:, 3].astype(np.int8),
    )
    if controls:
        c = np.array(controls, dtype=np.int64).reshape(-1, 3)
        t.controls = ControlChange.from_numpy(
            c[:, 0].astype(np.int32), c[:, 1].astype(np.uint8), c[:, 2].astype(np.uint8)
        )
    return t


def _via_file(score: Score) -> bytes:
    return score.dumps_midi()


def test_empty_file(tok):
    ids = tok.encode(_via_file(_score()))
    assert tok.tokens(ids) == ["START", V.describe(V.tempo(120.0)), "END"]
    assert tok.decode(ids).note_num() == 0


def test_only_drums(tok, tmp_path):
    score = _score(_track([(0, 120, 36, 100), (240, 120, 38, 90), (480, 60, 42, 70)], drum=True))
    ids = tok.encode(_via_file(score))
    assert np.isin(ids, V.INSTRUMENT).sum() == 1 and V.instrument(15) in ids
    path = tok.decode_to_file(ids, tmp_path / "drums.mid")
    reread = Score(str(path))
    assert [t.is_drum for t in reread.tracks] == [True]
    assert_round_trip(score, reread)


def test_pitches_outside_piano_range_are_dropped_and_counted(tok):
    notes = [
        (0, 480, 20, 80),
        (0, 480, 21, 80),
        (0, 480, 108, 80),
        (0, 480, 109, 80),
        (480, 480, 0, 80),
        (480, 480, 127, 80),
    ]
    score = _score(_track(notes))
    ids = tok.encode(score)
    assert tok.last_encode_stats.dropped_pitch == 4
    assert sorted(tok.tokens(ids[np.isin(ids, V.NOTE_ON)])) == ["NOTE_ON(108)", "NOTE_ON(21)"]
    assert_round_trip(score, tok.decode(ids))


@pytest.mark.parametrize(
    "notes, want",
    [
        # (tick, duration, pitch, velocity) at 120 BPM, tpq 480: 480 ticks = 0.5 s
        pytest.param(
            [(0, 960, 60, 80), (480, 960, 60, 90)],
            [(0.0, 0.5), (0.5, 1.5)],
            id="later-cuts-earlier",
        ),
        pytest.param([(0, 480, 60, 80), (0, 960, 60, 90)], [(0.0, 1.0)], id="same-onset-longest"),
        pytest.param(
            [(0, 2000, 60, 80), (100, 10, 60, 90), (960, 480, 60, 70)],
            [(0.0, 100 / 960), (100 / 960, 110 / 960), (1.0, 1.5)],
            id="three-nested",
        ),
    ],
)
def test_same_pitch_overlaps(tok, notes, want):
    score = _score(_track(notes))
    got = sorted_notes(tok.decode(tok.encode(score)))
    assert got["on"].size == len(want)
    np.testing.assert_allclose(got["on"], [w[0] for w in want], atol=STEP / 2 + TIME_EPS)
    np.testing.assert_allclose(got["off"], [w[1] for w in want], atol=STEP + TIME_EPS)
    assert_round_trip(score, tok.decode(tok.encode(score)))


def test_zero_length_notes_last_one_step(tok):
    score = _score(_track([(0, 0, 60, 80), (480, 0, 62, 80), (481, 0, 64, 80)]))
    ids = tok.encode(score)
    got = sorted_notes(tok.decode(ids))
    assert got["on"].size == 3
    np.testing.assert_allclose(got["off"] - got["on"], STEP, atol=TIME_EPS)
    np.testing.assert_array_equal(tok.encode(tok.decode(ids)), ids)


@pytest.mark.parametrize(
    "gap_s", [8.0, 8.015625, 60.0, 1234.5], ids=["8s", "8s+1step", "60s", "20min"]
)
def test_long_gaps_use_several_time_shifts(tok, gap_s):
    ticks = round(gap_s * 960)  # 120 BPM, tpq 480: 960 ticks per second
    score = _score(_track([(0, 480, 60, 80), (ticks, 480, 62, 80)]))
    ids = tok.encode(score)
    shifts = ids[np.isin(ids, V.TIME_SHIFT)] - V.TIME_SHIFT.start + 1
    assert shifts.sum() * STEP == pytest.approx(gap_s + 0.5, abs=STEP / 2)
    assert (shifts[:-1] == 512).sum() >= int(gap_s // 8) - 1
    got = sorted_notes(tok.decode(ids))
    assert got["on"][1] == pytest.approx(gap_s, abs=STEP / 2 + TIME_EPS)


def test_tempo_changes(tok):
    # 60 BPM for one quarter (1 s), 180 BPM for three (1 s), then 150 BPM
    score = _score(
        _track([(0, 480, 60, 80), (480, 480, 62, 80), (960, 480, 64, 80), (2400, 480, 65, 80)]),
        tempos=((0, 1_000_000), (480, 333_333), (1920, 400_000)),
    )
    ids = tok.encode(score)
    tempos = [t for t in tok.tokens(ids) if t.startswith("TEMPO")]
    assert tempos == [V.describe(V.tempo(b)) for b in (60.0, 180.0, 150.0)]
    decoded = tok.decode(ids)
    assert_round_trip(score, decoded)
    got = sorted_notes(decoded)
    np.testing.assert_allclose(got["on"], [0.0, 1.0, 1 + 1 / 3, 2.4], atol=STEP / 2 + TIME_EPS)
    assert [tempo_bin(t.qpm) for t in decoded.tempos] == [tempo_bin(b) for b in (60, 180, 150)]


def test_tempo_order_at_one_instant(tok):
    # at 0.5 s: a tempo change, a note ending, a pedal, a note starting -> SPEC order
    score = _score(
        _track([(0, 480, 60, 80), (480, 480, 62, 80)], controls=[(480, 64, 127)]),
        tempos=((0, 500000), (480, 400000)),
    )
    toks = tok.tokens(tok.encode(score))
    i = toks.index("TIME_SHIFT(500.0ms)")
    assert toks[i + 1 :] == [
        V.describe(V.tempo(150.0)),
        "NOTE_OFF(60)",
        "SUSTAIN_ON",
        "NOTE_ON(62)",
        "TIME_SHIFT(406.25ms)",
        "NOTE_OFF(62)",
        "END",
    ]


@pytest.mark.parametrize("channel", [0, 2, 9, 15], ids=["ch1", "ch3", "ch10-drums", "ch16"])
def test_sustain_from_cc64_on_any_channel(tok, channel):
    # pedal down at 1 s and up at 2 s; symusic's `pedals` would misplace the first one
    on, off = 0x90 | channel, 0x80 | channel
    cc = 0xB0 | channel
    pc = [(0, bytes([0xC0 | channel, 0]))] if channel != 9 else []
    events = pc + [
        (0, bytes([on, 60, 80])),
        (960, bytes([cc, 64, 100])),
        (480, bytes([off, 60, 0])),
        (480, bytes([cc, 64, 10])),
        (0, bytes([on, 62, 80])),
        (480, bytes([off, 62, 0])),
    ]
    ids = tok.encode(smf([events]))
    toks = tok.tokens(ids)
    assert toks.count("SUSTAIN_ON") == 1 and toks.count("SUSTAIN_OFF") == 1
    steps = np.cumsum(np.where(np.isin(ids, V.TIME_SHIFT), ids - V.TIME_SHIFT.start + 1, 0))
    assert steps[toks.index("SUSTAIN_ON")] * STEP == pytest.approx(1.0)
    assert steps[toks.index("SUSTAIN_OFF")] * STEP == pytest.approx(2.0)
    decoded = tok.decode(ids)
    c = decoded.to("second").tracks[0].controls.numpy()
    np.testing.assert_allclose(c["time"], [1.0, 2.0], atol=TIME_EPS)
    np.testing.assert_array_equal(c["value"], [127, 0])


def test_programs_map_to_families(tok):
    tracks = [_track([(0, 480, 60, 80)], program=p) for p in (0, 7, 8, 33, 119, 120, 127)]
    ids = tok.encode(_score(*tracks))
    insts = sorted({t for t in tok.tokens(ids) if t.startswith("INSTRUMENT")})
    assert insts == ["INSTRUMENT(0)", "INSTRUMENT(1)", "INSTRUMENT(14)", "INSTRUMENT(4)"]
    decoded = tok.decode(ids)
    assert [t.program for t in decoded.tracks] == [0, 8, 32, 112]


def test_note_off_names_its_instrument(tok):
    # the same pitch sounding on two instruments, ending at different times
    score = _score(_track([(0, 960, 60, 80)], program=0), _track([(0, 480, 60, 80)], program=40))
    decoded = tok.decode(tok.encode(score))
    assert_round_trip(score, decoded)


# -- decode is total -------------------------------------------------------------------
@pytest.mark.parametrize(
    "seed, length",
    [(0, 1), (1, 63), (2, 77), (3, 513), (4, 4096)],
    ids=["len1", "len63", "len77", "len513", "len4096"],
)
def test_decode_is_total_on_random_ids(tok, seed, length):
    ids = np.random.default_rng(seed).integers(0, V.size, size=length)
    score = tok.decode(ids)
    reread = Score.from_midi(score.dumps_midi())
    assert reread.note_num() == score.note_num() == tok.last_decode_stats.notes
    tok.encode(reread)


def test_decode_skips_what_breaks_the_grammar(tok):
    ids = [
        V.START,
        V.PAD,
        V.note_off(60),
        V.UNK,
        V.note_on(60),
        V.time_shift(4),
        V.note_on(62),
        V.END,
        V.note_on(64),
    ]
    got = sorted_notes(tok.decode(ids))
    stats = tok.last_decode_stats
    assert (stats.skipped_special, stats.orphan_note_off, stats.after_end) == (2, 1, 1)
    np.testing.assert_array_equal(got["pitch"], [60, 62])
    np.testing.assert_allclose(got["off"], [4 * STEP, 5 * STEP], atol=TIME_EPS)


@pytest.mark.parametrize("bad", [-1, 774, 70000], ids=["minus1", "774", "70000"])
def test_decode_rejects_out_of_range_ids(tok, bad):
    with pytest.raises(ValueError, match=str(bad)):
        tok.decode([V.START, bad, V.END])


def test_config_round_trips_through_json():
    cfg = TokenizerConfig(max_seconds=60.0)
    assert TokenizerConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="max_seconds"):
        TokenizerConfig(max_seconds=-1)


def test_max_seconds_bound_is_configurable():
    score = _score(_track([(0, 480, 60, 80), (960 * 120, 480, 62, 80)]))  # ends at 120.5 s
    with pytest.raises(MidiError, match="120.5 s"):
        MidiTokenizer(TokenizerConfig(max_seconds=60.0)).encode(score)


# -- the serialized score the encoder reads -----------------------------------------------
_NOTE_BYTES = np.dtype(
    [("time", "<i4"), ("duration", "<i4"), ("pitch", "i1"), ("velocity", "i1"), ("pad", "V2")]
)
_CONTROL_BYTES = np.dtype([("time", "<i4"), ("number", "u1"), ("value", "u1"), ("pad", "V2")])
_TEMPO_BYTES = np.dtype([("time", "<i4"), ("mspq", "<i4")])


def _every_event_kind() -> Score:
    """A score with every list symusic serializes, names and texts of odd lengths."""
    s = _score(
        _track([(0, 480, 60, 80), (480, 240, 64, 90)], program=33, controls=[(5, 64, 100)]),
        _track([(3, 7, 36, 127)], drum=True, controls=[(2, 7, 1), (9, 64, 0)]),
        tempos=((0, 500000), (960, 400000)),
    )
    s.tracks[0].name = "Fretless bass, left"
    s.tracks[0].pitch_bends.append(PitchBend(10, -200))
    s.tracks[0].pedals.append(Pedal(11, 400))
    s.tracks[0].lyrics.append(TextMeta(12, "la"))
    s.tracks[1].lyrics.append(TextMeta(13, "odd length"))
    s.time_signatures.append(TimeSignature(0, 3, 4))
    s.key_signatures.append(KeySignature(0, -2, 1))
    s.markers.append(TextMeta(14, "Verse"))
    return s


def _assert_layout_finds_symusic_tables(score):
    state = np.frombuffer(score.__getstate__(), dtype=np.uint8)
    tpq, tracks, tempos_at, n_tempos, start = score_layout(state)
    assert (tpq, start) == (score.ticks_per_quarter, score.start())
    assert len(tracks) == len(score.tracks)
    for row, track in zip(tracks, score.tracks, strict=True):
        inst, notes_at, n_notes, controls_at, n_controls = (int(v) for v in row)
        assert inst == (15 if track.is_drum else min(track.program // 8, 14))
        for at, n, dtype, table in (
            (notes_at, n_notes, _NOTE_BYTES, track.notes),
            (controls_at, n_controls, _CONTROL_BYTES, track.controls),
        ):
            assert n == len(table)
            if n:
                got = np.frombuffer(state, dtype=dtype, count=n, offset=at)
                for column, want in table.numpy().items():
                    np.testing.assert_array_equal(got[column], want)
    got = np.frombuffer(state, dtype=_TEMPO_BYTES, count=n_tempos, offset=tempos_at)
    for column, want in score.tempos.numpy().items():
        np.testing.assert_array_equal(got[column], want)


def test_layout_reads_every_event_kind():
    _assert_layout_finds_symusic_tables(_every_event_kind())


@pytest.mark.parametrize("name", DEV_NAMES[::7])
def test_layout_matches_symusic_tables_on_corpus(midi_corpus, name):
    # the encoder reads symusic's internal serialization: it must find what numpy() gives
    _assert_layout_finds_symusic_tables(Score(_pick(midi_corpus, name)))


@pytest.mark.parametrize(
    "n, runs, high",
    [
        pytest.param(0, 1, 4, id="n0"),
        pytest.param(1, 1, 4, id="n1"),
        pytest.param(63, 1, 4, id="n63-sorted"),
        pytest.param(77, 3, 1000, id="n77-3runs"),
        pytest.param(513, 7, 50, id="n513-7runs"),
        pytest.param(4096, 40, 8, id="n4096-40runs"),
        pytest.param(4097, 1, 2**40, id="n4097-random"),
    ],
)
def test_stable_sort_matches_numpy_stable_argsort(n, runs, high):
    rng = np.random.default_rng(n)
    # concatenated sorted runs with many ties, like tracks in time order
    keys = np.concatenate(
        [np.sort(rng.integers(0, high, size=len(c))) for c in np.array_split(np.arange(n), runs)]
    ).astype(np.int64)
    if n == 4097:
        keys = rng.integers(-high, high, size=n)
    want = np.argsort(keys, kind="stable")
    sorted_keys, order = keys.copy(), np.arange(n)
    stable_sort(sorted_keys, order)
    np.testing.assert_array_equal(order, want)
    np.testing.assert_array_equal(sorted_keys, keys[want])
