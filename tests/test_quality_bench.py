"""The quality suite: its statistics on hand-built scores with known values, its scores
and baselines on planted NLLs, and one tiny end-to-end run on real files.

The end-to-end run trains a few steps (`QUICK` shrunk further here): it checks that
every row, table and plot is written and that nothing held out reaches training,
never what the numbers are (those are benchmarks, committed under
benchmarks/results/)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("muspy", reason="the quality suite needs muspy (the quality extra)")
symusic = pytest.importorskip("symusic")

from benchmarks import core, quality_bench  # noqa: E402
from benchmarks import quality_cause as qc  # noqa: E402
from benchmarks import quality_music as qm  # noqa: E402
from benchmarks.quality_likelihood import NGramBaselines, Score, bucket_labels  # noqa: E402

TPQ = 480
C_MAJOR = (60, 62, 64, 65, 67, 69, 71, 72)


def score_of(pitches, *, step=TPQ, duration=TPQ, velocity=80, chord=1):
    """A one-track Score at 120 bpm: `pitches` in turn, `chord` copies a semitone apart
    at each onset, `step` ticks apart."""
    score = symusic.Score(TPQ)
    track = symusic.Track("piano", 0, False)
    for i, p in enumerate(pitches):
        for k in range(chord):
            track.notes.append(symusic.Note(i * step, duration, p + k, velocity))
    score.tracks.append(track)
    return score


def test_a_c_major_scale_has_its_known_statistics():
    stats = qm.piece_statistics(score_of(C_MAJOR))  # 8 quarter notes, 0.5 s each, 4 s
    expected_classes = np.zeros(12)
    for p in C_MAJOR:
        expected_classes[p % 12] += 1
    np.testing.assert_array_equal(stats["pitch_class"], expected_classes)
    assert stats["pitch_class"][[1, 3, 6, 8, 10]].sum() == 0  # no black keys
    assert stats["pitch_range"] == 12
    assert stats["polyphony"] == pytest.approx(1.0)
    assert stats["note_density"] == pytest.approx(8 / 4.0)
    assert stats["empty_beats"] == 0
    half_second = qm.IOI_EDGES.index(0.5)  # the bin [0.5, 1.0)
    assert stats["ioi"][half_second] == 7 and stats["ioi"].sum() == 7
    assert stats["duration"][half_second] == 8 and stats["duration"].sum() == 8
    assert stats["velocity"][80 // 4] == 8 and stats["velocity"].sum() == 8


def test_chords_rests_and_velocities_change_the_statistics_they_should():
    triads = qm.piece_statistics(score_of(C_MAJOR, chord=3, velocity=40))
    assert triads["polyphony"] == pytest.approx(3.0)
    assert triads["velocity"][40 // 4] == 24
    assert triads["pitch_range"] == 14
    # a quarter note every fourth beat, 30 beats: muspy counts a note's beats up to the
    # one its end falls in (inclusive), so 2 of every 4 beats sound, 16 of 30
    sparse = qm.piece_statistics(score_of(C_MAJOR, step=4 * TPQ))
    assert sparse["empty_beats"] == pytest.approx(1 - 16 / 30)
    assert sparse["note_density"] == pytest.approx(8 / 14.5)


def test_identical_sets_are_at_distance_zero_and_a_transposed_set_is_not():
    scale = [qm.piece_statistics(score_of(C_MAJOR)) for _ in range(3)]
    same = qm.PieceSet.of(scale, [1.0, 1.0, 1.0])
    copy = qm.PieceSet.of([qm.piece_statistics(score_of(C_MAJOR))], [1.0])
    for name in qm.STATISTICS:
        d = qm.distance(same, copy, name)
        assert d["distance"] == pytest.approx(0.0, abs=1e-12), name
    up = qm.PieceSet.of([qm.piece_statistics(score_of([p + 1 for p in C_MAJOR]))], [0.5])
    moved = {name: qm.distance(up, same, name)["distance"] for name in qm.STATISTICS}
    # C# major shares only C and F (as B# and E#) with C major: 2 of 8 notes overlap
    assert moved["pitch_class"] == pytest.approx(1 - 2 / 8)
    assert qm.distance(up, same, "pitch_class")["symmetric_kl"] > 1.0
    assert moved["validity"] == pytest.approx(0.5)
    for name in ("pitch_range", "polyphony", "note_density", "ioi", "duration", "velocity"):
        assert moved[name] == pytest.approx(0.0, abs=1e-12), name


def test_histogram_distances_on_known_histograms():
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert qm.overlap(p, p) == 1.0 and qm.overlap(p, q) == 0.0
    assert qm.overlap(np.array([3.0, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.75)
    assert qm.symmetric_kl(p, p) == 0.0
    assert qm.symmetric_kl(p, q) == pytest.approx(qm.symmetric_kl(q, p))
    assert qm.symmetric_kl(p, q) > 5.0


def test_scores_split_the_nll_by_position_bucket_and_by_the_window():
    n = 1024
    nll = np.zeros(n - 1)
    nll[:127] = 1.0  # targets at positions 1..127
    nll[127:511] = 2.0  # 128..511
    nll[511:] = 3.0  # 512..1023
    score = Score(nll, np.ones(n - 1), seconds=10.0)
    assert bucket_labels(n) == ["0-127", "128-511", "512-1023"]
    assert score.buckets() == {"0-127": 1.0, "128-511": 2.0, "512-1023": 3.0}
    assert score.past(512) == 3.0
    assert score.per_second() == pytest.approx(nll.sum() / 10.0)
    assert score.summary()["bits"] == pytest.approx(score.per_token() / np.log(2))


def test_the_bigram_baseline_learns_a_planted_cycle_the_unigram_cannot():
    cycle = np.tile(np.arange(4, 12), 200)
    baselines = NGramBaselines.fit([cycle], vocab_size=16)
    ids = np.tile(np.arange(4, 12), 8)
    import torch

    batch = {"input_ids": torch.as_tensor(ids)[None], "attention_mask": torch.ones(1, ids.size)}
    uni = float(baselines.unigram_nll(batch)[0].mean())
    bi = float(baselines.bigram_nll(batch)[0].mean())
    assert uni == pytest.approx(np.log(8), abs=0.05)  # 8 equally common tokens
    assert bi < 0.1 < uni


def planted_ids(*, end: bool = True) -> list[int]:
    """A piece whose notes are known: after 1 s of silence, C4 and E4 together; C4 is
    released after 0.5 s and E4 struck again there; E4 released 0.5 s later; 2 s of
    silence; G4 sounds 1 s and is never released (closed at END)."""
    from stretto.tokenizer import Vocabulary

    v = Vocabulary()

    def on(p):
        return v.NOTE_ON.start + p - 21

    def off(p):
        return v.NOTE_OFF.start + p - 21

    def shift(steps):
        return v.TIME_SHIFT.start + steps - 1

    ids = [v.START, v.VELOCITY.start + 20, shift(64), on(60), on(64), shift(32), off(60)]
    ids += [on(64), shift(32), off(64), shift(128), on(67), shift(64)]
    return ids + ([v.END, on(72), shift(64)] if end else [])  # what follows END is ignored


def test_note_statistics_of_a_planted_piece():
    for ids in (planted_ids(), planted_ids(end=False)):
        notes = qm.note_endings(ids)
        np.testing.assert_array_equal(notes["onset"], [64, 64, 96, 256])
        np.testing.assert_array_equal(notes["end"], [96, 96, 128, 320])
        kinds = [qm.ENDINGS[k] for k in notes["ending"]]
        assert kinds == ["note_off", "restruck", "note_off", "at_end"]
        stats = qm.note_statistics(ids)
        assert stats["closed_by_model"] == pytest.approx(0.5)
        assert stats["duration_mean"] == pytest.approx((0.5 * 3 + 1.0) / 4)
        assert stats["duration_p95"] == pytest.approx(np.percentile([0.5, 0.5, 0.5, 1.0], 95))
        assert stats["lead_silence"] == pytest.approx(1.0)
        assert stats["longest_silence"] == pytest.approx(2.0)
        assert stats["instruments"] == 1.0
        np.testing.assert_array_equal(stats["endings"], [2, 1, 1, 0])
    # a NOTE_OFF at or past the length limit is the limit's, not the model's
    limited = qm.note_statistics(planted_ids(), max_note_steps=32)
    np.testing.assert_array_equal(limited["endings"], [0, 1, 1, 2])
    assert limited["closed_by_model"] == 0.0


def test_instruments_counts_the_instruments_that_strike_a_note():
    from stretto.tokenizer import Vocabulary

    v = Vocabulary()
    ids = planted_ids(end=False)
    g4 = len(ids) - 2  # G4's NOTE_ON, then its TIME_SHIFT
    ids = ids[:g4] + [v.INSTRUMENT.start + 5] + ids[g4:] + [v.INSTRUMENT.start + 7]
    stats = qm.note_statistics(ids)
    assert stats["instruments"] == 2.0  # instrument 7 strikes nothing
    np.testing.assert_array_equal(qm.note_endings(ids)["instrument"], [0, 0, 0, 5])


def test_note_endings_agree_with_the_decoder():
    from stretto.tokenizer._decode import decode_ids

    ids = planted_ids()
    decoded = decode_ids(np.asarray(ids, dtype=np.int64), 0)
    notes = qm.note_endings(ids)
    np.testing.assert_array_equal(decoded[2], notes["onset"])
    np.testing.assert_array_equal(decoded[3], notes["end"])


def test_a_piece_without_notes_has_no_note_statistics():
    stats = qm.note_statistics(planted_ids()[:3])
    assert all(np.isnan(stats[k]) for k in qm.NOTE_STATISTICS)
    assert stats["endings"].sum() == 0


@pytest.mark.parametrize(
    ("share", "kept"), [(0.0, 2), (0.5, 1), (1.0, 0)], ids=["none", "half", "all"]
)
def test_deleting_note_offs_drops_that_share_of_them(share, kept):
    from stretto.tokenizer import Vocabulary

    offs = Vocabulary().NOTE_OFF
    ids = planted_ids()
    dropped = qm.drop_note_offs(ids, share, np.random.default_rng(0))
    assert sum(t in offs for t in dropped) == kept
    assert [t for t in dropped if t not in offs] == [t for t in ids if t not in offs]
    endings = qm.note_statistics(dropped)["endings"]
    assert endings[qm.NOTE_OFF] == kept and endings.sum() == 4


def test_deleting_note_offs_raises_polyphony():
    from stretto.tokenizer import MidiTokenizer

    with pytest.raises(ValueError, match="share"):
        qm.drop_note_offs(planted_ids(), 1.5, np.random.default_rng(0))
    out = qc.deletion_sensitivity([planted_ids()], MidiTokenizer().decode, shares=(0.0, 1.0))
    assert out["0"]["closed_by_model"] == pytest.approx(0.5)
    assert out["1"]["closed_by_model"] == 0.0
    assert out["1"]["polyphony"] > out["0"]["polyphony"]


def test_note_off_targets_measure_the_distance_from_the_note_on():
    assert qc.note_off_targets(planted_ids()) == [(6, 3), (9, 2)]
    labels = qc.distance_labels()
    assert labels[0] == "1-8" and labels[-1] == "257+"
    assert [labels[qc.distance_bucket(d)] for d in (1, 8, 9, 32, 33, 256, 257, 5000)] == [
        "1-8",
        "1-8",
        "9-16",
        "17-32",
        "33-64",
        "129-256",
        "257+",
        "257+",
    ]


def planted_instruments() -> list[int]:
    """A piece naming instruments 3, 5, 3, 5, 3 (5 strikes its first note after its
    second naming), then END and an instrument that is not read."""
    from stretto.tokenizer import Vocabulary

    v = Vocabulary()

    def inst(k):
        return v.INSTRUMENT.start + k

    def on(p):
        return v.NOTE_ON.start + p - 21

    ids = [v.START, inst(3), on(60), v.TIME_SHIFT.start + 7, inst(5), inst(3), on(62)]
    return ids + [inst(5), on(64), inst(3), v.END, inst(7)]


def test_instrument_targets_name_the_instruments_played_before_each():
    assert qc.instrument_targets(planted_instruments()) == [
        (1, frozenset()),
        (4, frozenset({3})),
        (5, frozenset({3})),
        (7, frozenset({3})),
        (9, frozenset({3, 5})),
    ]
    assert qc.position_labels() == ["0-31", "32-127", "128-255", "256+"]


def test_new_instrument_probability_of_a_model_that_names_every_instrument_alike():
    """Uniform over the 16 instruments, P(not yet played) is the unplayed share: at
    positions 1, 4, 5, 7 and 9, 16, 15, 15, 15 and 14 of 16; three of the five name an
    instrument not yet played."""

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids, attention_mask=None):
            return torch.zeros(*ids.shape, 774)

    from stretto.tokenizer import Vocabulary

    out = qc.new_instrument_probability(Uniform(), [planted_instruments()], pad=Vocabulary().PAD)
    assert out["0-31"]["count"] == 5
    assert out["0-31"]["real"] == pytest.approx(3 / 5)
    assert out["0-31"]["model"] == pytest.approx((16 + 15 + 15 + 15 + 14) / 16 / 5)
    assert out["256+"] == {"real": None, "model": None, "count": 0}


def test_the_distance_multiple_column_reads_real_against_real():
    from benchmarks.report import music_table

    assert qm.distance_multiple(0.3, 0.1) == pytest.approx(3.0)
    assert qm.distance_multiple(0.3, 0.0) is None
    assert qm.distance_multiple(None, 0.1) is None

    def row(provider, polyphony, multiple=None):
        extra = {
            "distance": {"polyphony": {"distance": polyphony}},
            "distance_multiple": {"polyphony": multiple},
        }
        return {
            "suite": "quality",
            "mode": "generated-vs-held-out",
            "provider": provider,
            "extra": extra,
        }

    table = music_table([row("held-out-A", 0.5, 1.0), row("transformer", 1.5, 3.0)])
    line = next(x for x in table.splitlines() if x.startswith("| polyphony |"))
    assert line.endswith("| 0.500 | 1.500 (3.0x) |")


def test_the_sampler_comparison_needs_the_sampler_settings():
    def old(*, max_new_tokens, temperature=1.0, top_p=None):
        return None

    def older(*, max_new_tokens, temperature=1.0, top_p=None, note_off="spread", at_limit="freeze"):
        return None

    def new(*, max_new_tokens, note_off="spread", at_limit="release", note_on="restrike"):
        return None

    assert "note_off" in qc.sampler_support(old) and "at_limit" in qc.sampler_support(old)
    assert qc.sampler_support(older) == "generate() takes no note_on (one fixed grammar mask)"
    assert qc.sampler_support(new) is None
    # the library's own: the suite asks the function `MusicModel.generate` forwards to
    from stretto.engine import generate

    assert qc.sampler_support(generate) is None
    variants = dict(qc.sampler_variants("spread", dict(qc.SAMPLERS)["spread"]))
    assert len(variants) == len(qc.TEMPERATURES) * len(qc.TOP_PS) - 1
    assert all(v["note_off"] == "spread" for v in variants.values())
    pairs = {(v["temperature"], v["top_p"]) for v in variants.values()}
    assert (1.0, None) not in pairs and (0.9, 0.95) in pairs and len(pairs) == len(variants)


def test_a_vae_is_sampled_with_z_from_the_posterior_and_from_the_prior():
    plain = qc.samplers(latent=False)
    assert plain == list(qc.SAMPLERS)
    both = qc.samplers(latent=True)
    assert len(both) == 2 * len(plain)
    n = len(plain)
    assert [s["latent"] for _, s in both] == ["posterior"] * n + ["prior"] * n
    assert [name for name, _ in both[n:]] == [name + qc.PRIOR_SUFFIX for name, _ in plain]
    # each keeps its policy, and the variants keep the best's latent
    assert all({k: s[k] for k in p} == p for (_, s), (_, p) in zip(both, plain * 2, strict=True))
    variants = qc.sampler_variants("spread, prior z", both[n + 1][1])
    assert {v["latent"] for _, v in variants} == {"prior"}


class SamplerStub:
    """A model whose `generate` takes the sampler settings and returns the planted
    piece, its NOTE_OFFs deleted under the "mask" setting."""

    def __init__(self):
        self.calls = []

    def generate(
        self, *, max_new_tokens, batch_size, seed, constrained, note_off, at_limit, **sampling
    ):
        import torch

        if constrained:  # each setting samples with the mask, then without it
            self.calls.append(dict(sampling, note_off=note_off, at_limit=at_limit))
        ids = planted_ids(end=False)
        if note_off == "mask":
            ids = qm.drop_note_offs(ids, 1.0, np.random.default_rng(0))
        return torch.as_tensor([ids] * batch_size)


def _sampler_rows(half_a: list[int], half_b: list[int]):
    """The sampler comparison of `SamplerStub` with those pieces as held-out halves."""
    from stretto.tokenizer import MidiTokenizer, Vocabulary

    tokenizer = MidiTokenizer()

    def piece_set(pieces, free=None):
        assert free in (None, pieces)  # the stub samples alike with and without the mask
        stats = [qm.piece_statistics(tokenizer.decode(p)) | qm.note_statistics(p) for p in pieces]
        return qm.PieceSet.of(stats, [1.0] * len(pieces))

    far = qm.PieceSet.of([qm.piece_statistics(score_of([p + 1 for p in C_MAJOR]))], [0.0])
    halves = {"A": piece_set([half_a]), "B": piece_set([half_b])}
    asked = []

    def unigram(settings):  # the baseline, asked once per setting
        asked.append(settings)
        return far

    run = object.__new__(quality_bench.QualityRun)
    run.budget, run.vocab, run.what = TINY, Vocabulary(), {}
    models = [SamplerStub() for _ in TINY.seeds]  # one per seed, as the music table's
    model = models[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quality_bench, "progress", lambda msg: None)
        # real against real; 1 where the halves agree exactly, so every multiple counts
        real = {
            k: qm.distance(halves["A"], halves["B"], k)["distance"] or 1.0 for k in qm.STATISTICS
        }
        rows, pick, (masked, free, seconds) = run._samplers(
            models, "vae", 16, 2, piece_set, halves, real, unigram
        )
    assert asked == [r["extra"]["settings"] for r in rows]
    assert all(r["extra"]["model_mode"] == "vae" for r in rows)
    assert all(r["extra"]["seeds"] == list(TINY.seeds) for r in rows)
    # every setting sampled every seed's model
    assert models[1].calls == models[0].calls
    # the pick's settings and pieces (every seed's), for the music table
    (picked,) = [r for r in rows if r["extra"].get("pick")]
    assert pick == picked["extra"]["settings"] and seconds > 0
    assert masked == free and len(masked) == 2 * len(TINY.seeds)
    pieces = 2 * len(TINY.seeds)  # every seed's pieces, sampled with and without the mask
    for r in rows:
        assert r["shape"].endswith(f"-P{pieces}"), r["shape"]
        assert r["tokens_per_s"] == pytest.approx(2 * pieces * 16 / (r["median_ms"] / 1e3))
    return rows, model


def test_the_sampler_comparison_runs_each_setting_then_varies_the_best():
    rows, model = _sampler_rows(planted_ids(), planted_ids())
    names = [r["provider"] for r in rows]
    n = len(qc.SAMPLERS)
    assert names[:n] == [name for name, _ in qc.SAMPLERS]
    by_name = {r["provider"]: r["extra"] for r in rows}
    assert by_name["mask"]["closed_by_model"] == 0.0
    assert by_name["spread"]["closed_by_model"] == pytest.approx(0.5)
    assert by_name["mask"]["polyphony"] > by_name["spread"]["polyphony"]
    best = [r["provider"] for r in rows if r["extra"].get("best")]
    assert best == ["spread"]  # ties with the other spreads: the first wins
    variants = qc.sampler_variants("spread", dict(qc.SAMPLERS)["spread"])
    m = n + len(variants)
    assert names[n:m] == [name for name, _ in variants]
    assert model.calls[n:m] == [settings for _, settings in variants]
    # then the pitch temperatures of the pick so far (the first of the tie on half A)
    first = min(rows[:m], key=lambda r: r["extra"]["mean_multiple_a"])
    pitches = qc.pitch_variants(first["provider"], first["extra"]["settings"])
    assert names[m:] == [name for name, _ in pitches]
    assert model.calls[m:] == [settings for _, settings in pitches]
    assert {c["pitch_temperature"] for c in model.calls[m:]} == set(qc.PITCH_TEMPERATURES)
    assert sum(1 for r in rows if r["extra"].get("pick")) == 1


def test_the_sampler_comparison_chooses_on_half_a_and_reports_on_half_b():
    """Half A holds music without NOTE_OFFs (what the stub's "mask" setting makes),
    half B the planted piece: the choice follows A, the reported figures B."""
    masked = qm.drop_note_offs(planted_ids(end=False), 1.0, np.random.default_rng(0))
    rows, _ = _sampler_rows(masked, planted_ids())
    best = [r["provider"] for r in rows if r["extra"].get("best")]
    assert best == ["mask"]
    by_name = {r["provider"]: r["extra"] for r in rows}
    # against B the mask is the worse setting, and the rows say so
    assert by_name["mask"]["polyphony_distance"] > by_name["spread"]["polyphony_distance"]
    assert by_name["mask"]["mean_multiple"] > by_name["spread"]["mean_multiple"]


def test_the_sampler_table_says_whether_it_pooled_the_seeds():
    """A run that records the seeds of its sampler rows pooled them (even one seed);
    older runs sampled the first seed's model alone, and their table says so."""
    from benchmarks import report

    def rows(**extra):
        return [{"suite": "quality", "mode": "sampler", "extra": {"model_mode": "vae", **extra}}]

    assert report._sampler_note(rows(seeds=[0])) == report.SAMPLER_NOTE_SEEDS
    assert report._sampler_note(rows(seeds=[0, 1])) == report.SAMPLER_NOTE_SEEDS
    assert report._sampler_note(rows()) == report.SAMPLER_NOTE


def test_the_sampler_comparison_is_a_skipped_row_without_the_settings(monkeypatch):
    import stretto.engine

    run = object.__new__(quality_bench.QualityRun)
    run.budget = TINY

    def old(model, prompt=None, *, max_new_tokens, batch_size, seed, temperature=1.0):
        raise AssertionError("not to be called")

    monkeypatch.setattr(stretto.engine, "generate", old)
    monkeypatch.setattr(run, "_sample", lambda model, settings, length, count, seed: ([], [], 0.0))
    models = [None] * len(TINY.seeds)
    (row,), pick, _ = run._samplers(models, "vae", 16, 2, None, None, None, None)
    assert row["mode"] == "sampler" and row["status"].startswith("skipped: sampler comparison")
    assert "note_off" in row["status"] and row["provider"] == "vae"
    assert pick == {}  # generate's own sampling


TINY = dataclasses.replace(
    quality_bench.QUICK,
    seq_lens=(512,),
    steps=3,
    evals=1,
    eval_windows=4,
    warmup_steps=1,
    generation_length=48,
    pieces=3,
)


@pytest.fixture(scope="module")
def small_corpus(midi_corpus, tmp_path_factory):
    """The 20 smallest real files."""
    corpus = tmp_path_factory.mktemp("midi")
    for path in sorted(midi_corpus, key=lambda p: p.stat().st_size)[:20]:
        (corpus / path.name).symlink_to(path.resolve())
    return corpus


def quick_run(corpus, root, **options):
    """A `quality --quick` run, shrunk to TINY, on `corpus`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quality_bench, "QUICK", TINY)
        mp.setattr(quality_bench, "progress", lambda msg: None)
        return core.run_benchmarks(
            ["quality"],
            quick=True,
            device="cpu",
            results_root=root,
            options={"corpus": str(corpus), **options},
            log=lambda msg: None,
        )


@pytest.fixture(scope="module")
def quality_run(small_corpus, tmp_path_factory):
    return quick_run(small_corpus, tmp_path_factory.mktemp("bench") / "results")


def test_a_quick_run_writes_every_row_and_plot(quality_run):
    rows = quality_run.rows
    status = [r["status"] for r in rows if r["mode"] != "sampler"]
    assert all(s == "ok" for s in status), status
    nll = {r["provider"] for r in rows if r["mode"] == "held-out-nll"}
    variants = {
        "wha",
        "wha-no-note-state",
        "wha-no-instrument-state",
        "wha-state-logits",
        "sliding-window",
        "dense",
    }
    assert nll == variants | {"unigram", "bigram"}
    music = {r["provider"] for r in rows if r["mode"] == "generated-vs-held-out"}
    models = {"transformer", "vae", "vae_gan"}
    models |= {
        "transformer-no-note-state",
        "transformer-no-instrument-state",
        "transformer-state-logits",
    }
    assert music == {"held-out-A", "held-out-B", "unigram"} | models
    for row in rows:
        if row["provider"] in variants:
            extra = row["extra"]
            assert len(extra["nll_seeds"]) == len(TINY.seeds)
            assert set(extra["buckets"]) == set(bucket_labels(512))
            assert np.isfinite(extra["nll"]) and np.isfinite(extra["nll_equal_time"])
        music_row = row["mode"] == "generated-vs-held-out"
        if music_row and row["provider"] in models | {"unigram"}:
            # every seed's model (or unigram draw) adds its pieces to the source's set
            assert row["extra"]["seeds"] == list(TINY.seeds)
            assert row["extra"]["summary"]["pieces"] == TINY.pieces * len(TINY.seeds)
        if music_row and row["provider"] in models:
            assert len(row["extra"]["held_out_seeds"]) == len(TINY.seeds)
            assert set(row["extra"]["distance"]) == set(qm.STATISTICS + qm.NOTE_STATISTICS)
            assert set(row["extra"]["closer_than_unigram"]) == set(qm.STATISTICS)
        if music_row:
            assert set(row["extra"]["distance_multiple"]) == set(qm.STATISTICS + qm.NOTE_STATISTICS)
            assert set(row["extra"]["summary"]["endings"]) == set(qm.ENDINGS)
    cause = {r["mode"]: r for r in rows if r["mode"].startswith("note-off")}
    assert set(cause["note-off-probability"]["extra"]["buckets"]) == set(qc.distance_labels())
    assert set(cause["note-off-deletion"]["extra"]["shares"]) == {"0", "0.1", "0.25", "0.5"}
    new = {r["provider"]: r["extra"]["buckets"] for r in rows if r["mode"] == "new-instrument"}
    assert new.keys() == {"transformer", *quality_bench.OTHER_STATES}
    for buckets in new.values():
        assert list(buckets) == qc.position_labels()
        assert all(0 <= b["model"] <= 1 for b in buckets.values() if b["count"])
    samplers = [r for r in rows if r["mode"] == "sampler"]
    assert samplers and all(
        r["status"] == "ok" or r["status"].startswith("skipped: sampler comparison")
        for r in samplers
    )
    # each mode's music row holds its pick's pieces: the same models, seeds and draws
    music_rows = {r["provider"]: r for r in rows if r["mode"] == "generated-vs-held-out"}
    for r in samplers:
        if r["status"] == "ok" and r["extra"].get("pick"):
            mode = r["extra"]["model_mode"]
            assert r["extra"]["seeds"] == list(TINY.seeds)
            summary = music_rows[mode]["extra"]["summary"]
            assert summary["polyphony"]["mean"] == r["extra"]["polyphony"], mode
            assert summary["closed_by_model"]["mean"] == r["extra"]["closed_by_model"], mode
    out = quality_run.out_dir
    for name in (
        "quality-nll-curves.png",
        "quality-position-buckets.png",
        "quality-generated-vs-held-out.png",
        "quality-note-off.png",
    ):
        assert (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    assert "## Quality: held-out likelihood" in md
    assert "## Quality: generated music against held-out music" in md
    assert "pools the pieces of models trained from seeds 0, 1" in md
    assert "## Quality: why generated notes do not end" in md
    titles = ("How notes end", "Teacher-forced NOTE_OFF probability", "Samplers")
    for title in (*titles, "Instruments not yet played"):
        assert f"### {title}" in md, title


def test_no_held_out_file_reaches_training(quality_run):
    split = json.loads((quality_run.out_dir / "split.json").read_text())
    train, held = set(split["train"]), set(split["validation"])
    assert held and train and not train & held
    assert len(train | held) == 20


def test_a_block_sweep_is_the_likelihood_part_alone(small_corpus, tmp_path):
    from benchmarks.__main__ import build_parser

    blocks = build_parser().parse_args(["quality", "--block", "64", "--block", "16"]).block
    result = quick_run(small_corpus, tmp_path / "results", blocks=blocks)
    assert all(r["status"] == "ok" and r["mode"] == "held-out-nll" for r in result.rows)
    got = {r["provider"]: r["extra"].get("block") for r in result.rows}
    sweep = {"wha-b16": 16, "wha-b64": 64, "sliding-window": None}
    assert got == sweep | {"unigram": None, "bigram": None}
    assert result.meta["options"]["blocks"] == [64, 16]
    md = (result.out_dir / "results.md").read_text()
    assert "blocks [64, 16]" in md
    models = [line.split(" | ")[1] for line in md.splitlines() if line.startswith("| 512 |")]
    assert models[:3] == ["wha-b16 (w32, b16)", "wha-b64 (w32, b64)", "sliding-window (w32)"]
    assert models[3:] == ["unigram", "bigram"]
    assert (result.out_dir / "quality-nll-curves.png").is_file()
    assert not (result.out_dir / "quality-generated-vs-held-out.png").exists()


def test_the_silence_verdict_flags_a_piece_that_opens_longer_than_held_out_music():
    from benchmarks.report import silence_verdicts

    def row(provider: str, kind: str, lead: list[float], inside: list[float]) -> dict:
        summary = {"lead_silence": {"values": lead}, "longest_silence": {"values": inside}}
        extra = {"kind": kind, "summary": summary}
        music = {"suite": "quality", "mode": "generated-vs-held-out"}
        return music | {"provider": provider, "extra": extra}

    rows = [
        row("held-out-A", "held-out", [0.0, 0.5], [2.0, 1.0]),
        row("held-out-B", "held-out", [0.1, 0.0], [0.3, 0.2]),
        row("quiet", "model", [0.2, 1.9], [0.4, 1.0]),
        row("late", "model", [0.0, 14.2], [0.4, 0.1]),  # planted: opens with 14.2 s
    ]
    by_source = {line.split(":")[0][2:]: line for line in silence_verdicts(rows)}
    assert set(by_source) == {"quiet", "late"}
    assert by_source["quiet"].endswith("within it.") and "2.000 s" in by_source["quiet"]
    assert by_source["late"].endswith("longer.")


def test_the_unigram_baseline_samples_with_the_settings_it_is_given():
    import types

    import torch

    from stretto.engine import Grammar
    from stretto.tokenizer import Vocabulary

    v = Vocabulary()
    log_p = torch.randn(v.size, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    baselines = types.SimpleNamespace(unigram_log_p=log_p)
    run = object.__new__(quality_bench.QualityRun)
    run.budget, run.vocab = TINY, v
    grammar = Grammar(v)

    def walk(**settings):
        return run._unigram_samples(baselines, 2, 40, grammar, settings)

    greedy = walk(temperature=0.0)
    assert greedy == walk(temperature=1.0, top_p=1e-6) and greedy[0] == greedy[1]
    # by hand: the grammar and generate's default policies on the unigram, the argmax
    defaults = dict(note_off="spread", at_limit="release", note_on="off-first")
    state = grammar.initial_state(1, "cpu")
    grammar.advance(state, torch.tensor([v.START]))
    ids = [v.START]
    for _ in range(39):
        z = grammar.sampling_logits(state, log_p[None], **defaults)
        ids.append(int(z.argmax(-1)))
        grammar.advance(state, torch.tensor(ids[-1:]))
    assert greedy[0] == ids
    assert walk(temperature=1.0, top_p=None) != greedy


def test_the_listening_sampling_is_each_modes_pick_in_the_committed_run():
    """`LISTENING_SAMPLING` holds, for every mode, the settings the sampler comparison
    of the run it names picked, a setting the pick leaves out at `generate`'s default
    (a table changed without a run fails here)."""
    import inspect
    import json
    from pathlib import Path

    from stretto.engine import generate
    from stretto.engine.generate import LISTENING_SAMPLING

    defaults = {
        k: inspect.signature(generate).parameters[k].default
        for k in ("temperature", "top_p", "pitch_temperature")
    }
    run = Path(__file__).resolve().parents[1] / "benchmarks/results/cpu-amd-epyc/2026-12-07-d50b1b6"
    rows = json.loads((run / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    picks = {
        r["extra"]["model_mode"]: r["extra"]["settings"]
        for r in rows
        if r["mode"] == "sampler" and r["extra"].get("pick")
    }
    assert picks.keys() == LISTENING_SAMPLING.keys() == set(quality_bench.MODES)
    for mode, settings in picks.items():
        assert LISTENING_SAMPLING[mode] == defaults | settings, mode
