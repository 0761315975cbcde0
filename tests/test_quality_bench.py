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

pytest.importorskip("muspy", reason="the quality suite needs muspy (the quality extra)")
symusic = pytest.importorskip("symusic")

from benchmarks import core, quality_bench  # noqa: E402
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
def quality_run(midi_corpus, tmp_path_factory):
    """One `quality --quick` run (shrunk to TINY) on the 20 smallest real files."""
    corpus = tmp_path_factory.mktemp("midi")
    for path in sorted(midi_corpus, key=lambda p: p.stat().st_size)[:20]:
        (corpus / path.name).symlink_to(path.resolve())
    root = tmp_path_factory.mktemp("bench") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quality_bench, "QUICK", TINY)
        mp.setattr(quality_bench, "progress", lambda msg: None)
        result = core.run_benchmarks(
            ["quality"],
            quick=True,
            device="cpu",
            results_root=root,
            options={"corpus": str(corpus)},
            log=lambda msg: None,
        )
    return result


def test_a_quick_run_writes_every_row_and_plot(quality_run):
    rows = quality_run.rows
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    nll = {r["provider"] for r in rows if r["mode"] == "held-out-nll"}
    assert nll == {"wha", "sliding-window", "dense", "unigram", "bigram"}
    music = {r["provider"] for r in rows if r["mode"] == "generated-vs-held-out"}
    assert music == {"held-out-A", "held-out-B", "transformer", "vae", "vae_gan", "unigram"}
    for row in rows:
        if row["provider"] in ("wha", "sliding-window", "dense"):
            extra = row["extra"]
            assert len(extra["nll_seeds"]) == len(TINY.seeds)
            assert set(extra["buckets"]) == set(bucket_labels(512))
            assert np.isfinite(extra["nll"]) and np.isfinite(extra["nll_equal_time"])
        if row["provider"] in ("transformer", "vae", "vae_gan"):
            assert set(row["extra"]["distance"]) == set(qm.STATISTICS)
            assert set(row["extra"]["closer_than_unigram"]) == set(qm.STATISTICS)
    out = quality_run.out_dir
    for name in (
        "quality-nll-curves.png",
        "quality-position-buckets.png",
        "quality-generated-vs-held-out.png",
    ):
        assert (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    assert "## Quality: held-out likelihood" in md
    assert "## Quality: generated music against held-out music" in md


def test_no_held_out_file_reaches_training(quality_run):
    split = json.loads((quality_run.out_dir / "split.json").read_text())
    train, held = set(split["train"]), set(split["validation"])
    assert held and train and not train & held
    assert len(train | held) == 20
