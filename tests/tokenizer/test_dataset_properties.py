"""`TokenDataset` over random corpora and random window geometries (hypothesis).

Every window of every length decodes on its own, and for a stride within the
documented bound the windows of a file cover every one of its ids.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stretto.tokenizer import MidiTokenizer, TokenDataset, Vocabulary, build_corpus

from .random_scores import write_random_midi

V = Vocabulary()
TOK = MidiTokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("midi")
    write_random_midi(src, 5, seed=10)
    out = tmp_path_factory.mktemp("corpus")
    report = build_corpus(src, out, workers=1, progress=False, shard_tokens=500)
    assert report.files == 5 and not report.bad
    return out


def _longest_instant(ids: np.ndarray) -> int:
    """The most ids between two instant boundaries (TIME_SHIFTs, the file's ends)."""
    shifts = np.flatnonzero((ids >= V.TIME_SHIFT.start) & (ids < V.TIME_SHIFT.stop))
    bounds = np.concatenate([[0], shifts, [ids.size]])
    return int(np.diff(bounds).max())


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), seq_len=st.one_of(st.integers(2, 40), st.integers(41, 700)))
def test_every_window_decodes_and_windows_cover_the_files(corpus, data, seq_len):
    stride = data.draw(st.integers(1, seq_len), label="stride")
    max_prefix = data.draw(st.integers(0, seq_len - 1), label="max_prefix")
    ds = TokenDataset(corpus, seq_len, stride=stride, max_prefix=max_prefix)
    assert len(ds) == sum(-(-int(n) // stride) for n in ds.file_len)
    covered = [np.zeros(int(n), dtype=bool) for n in ds.file_len]
    for i in range(len(ds)):
        item = ds[i]
        n_real = int(item["attention_mask"].sum())
        assert item["attention_mask"][:n_real].all() and n_real >= 1
        real = item["input_ids"][:n_real].numpy()
        assert (item["input_ids"][n_real:] == V.PAD).all()
        assert real.max() < V.size
        f, start, stop, n = ds.locate(i)
        if start == 0 or min(max_prefix, seq_len - 1) >= 4:  # room for the whole state
            assert real[0] == V.START
        score = TOK.decode(real)  # alone, without the rest of its file
        assert TOK.last_decode_stats.skipped_special == 0
        for track in score.tracks:
            assert (track.notes.numpy()["duration"] >= 1).all()
        assert n == n_real and 0 <= start < stop <= ds.file_len[f]
        covered[f][start:stop] = True
    for f, cov in enumerate(covered):
        ids = ds.file_ids(f)
        if stride <= seq_len - max_prefix - _longest_instant(ids):
            event("stride within the coverage bound")
            missing = np.flatnonzero(~cov)
            assert missing.size == 0, f"file {f}: ids {missing[:10]} are in no window"
