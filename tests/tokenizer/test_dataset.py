"""TokenDataset: every window of a real corpus decodes alone, into the notes it covers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stretto.tokenizer import TokenDataset, Vocabulary, build_corpus
from stretto.tokenizer._decode import SKIP_REPLACED_ON, decode_ids

V = Vocabulary()


@pytest.fixture(scope="module")
def corpus_dir(midi_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    # small shards so that windows are read across several memory-mapped files
    report = build_corpus(midi_corpus, out, workers=2, progress=False, shard_tokens=300_000)
    # the dev corpus holds files with no note in range: refused with their reason
    reasons = {reason for _, reason in report.bad}
    assert reasons <= {"no note in the vocabulary's pitch range 21..108"}, reasons
    assert report.files + len(report.bad) == len(midi_corpus)
    assert all(f"refused {src}: " in report.summary() for src, _ in report.bad)
    return out


def _file_notes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole file decoded: note rows (inst, pitch, on, off, vel) in NOTE_ON order, the
    position of each NOTE_ON, and the time in steps before each position."""
    ids = np.asarray(ids, dtype=np.int64)
    inst, pitch, on, off, vel, *_, skipped = decode_ids(ids, 16)
    assert skipped[SKIP_REPLACED_ON] == 0  # so note j comes from the j-th NOTE_ON
    rows = np.stack([inst, pitch, on, off, vel], axis=1).astype(np.int64)
    on_pos = np.flatnonzero((ids >= V.NOTE_ON.start) & (ids < V.NOTE_ON.stop))
    return rows, on_pos, _steps_before(ids)


def _notes(ids: np.ndarray) -> np.ndarray:
    """Decoded notes as rows (inst, pitch, on_step, off_step, vel_bin), sorted."""
    inst, pitch, on, off, vel, *_ = decode_ids(np.asarray(ids, dtype=np.int64), 16)
    rows = np.stack([inst, pitch, on, off, vel], axis=1).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def _steps_before(ids: np.ndarray) -> np.ndarray:
    """Time in steps reached before each position."""
    shift = np.where(
        (ids >= V.TIME_SHIFT.start) & (ids < V.TIME_SHIFT.stop), ids - V.TIME_SHIFT.start + 1, 0
    )
    return np.concatenate([[0], np.cumsum(shift)])


@pytest.mark.parametrize("seq_len", [512, 1024, 2048], ids=["L512", "L1024", "L2048"])
def test_every_window_decodes_to_the_notes_it_covers(corpus_dir, seq_len):
    ds = TokenDataset(corpus_dir, seq_len)
    file_notes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (seq_len,)
        assert item["attention_mask"].dtype == torch.bool
        real = item["input_ids"][item["attention_mask"]].numpy()
        n_real = int(item["attention_mask"].sum())
        assert item["attention_mask"][:n_real].all()  # right padding only
        assert (item["input_ids"][n_real:] == V.PAD).all()
        assert real[0] == V.START

        f, start, stop, _ = ds.locate(i)
        if f not in file_notes:
            file_notes[f] = _file_notes(ds.file_ids(f))
        notes, on_pos, steps = file_notes[f]
        # the file decoded up to the window's end, seen from the window's start: notes
        # struck before `stop`, cut at its time t1; those still sounding at t0 (the
        # window's start) are re-struck at time 0
        t0, t1 = steps[start], steps[stop]
        keep = (on_pos < stop) & ((notes[:, 3] > t0) | (start == 0))
        want = notes[keep].copy()
        want[:, 3] = np.maximum(np.minimum(want[:, 3], t1), want[:, 2] + 1)
        want[:, 2:4] = np.maximum(want[:, 2:4] - t0, 0)
        got = _notes(real)
        want = want[np.lexsort(want.T[::-1])]
        assert got.shape == want.shape, f"window {i} (file {f}, ids {start}:{stop})"
        np.testing.assert_array_equal(got, want, err_msg=f"window {i}")


@pytest.mark.parametrize(
    "seq_len, stride",
    [(256, None), (512, None), (1024, 512), (2048, 700)],
    ids=["L256-default", "L512-default", "L1024-s512", "L2048-s700"],
)
def test_windows_cover_every_id(corpus_dir, seq_len, stride):
    ds = TokenDataset(corpus_dir, seq_len, stride=stride)
    spans: dict[int, list[tuple[int, int]]] = {}
    for i in range(len(ds)):
        f, start, stop, _ = ds.locate(i)
        spans.setdefault(f, []).append((start, stop))
    assert sorted(spans) == list(range(len(ds.file_len)))
    for f, s in spans.items():
        assert len(s) == -(-int(ds.file_len[f]) // ds.stride)
        reach = 0
        for start, stop in s:
            assert start <= reach, f"file {f}: ids {reach}:{start} are in no window"
            reach = max(reach, stop)
        assert reach == ds.file_len[f]


def test_refuses_other_vocabulary(corpus_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    manifest["vocabulary"] = "stretto-vocab-v0-0000"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="stretto-vocab-v0-0000"):
        TokenDataset(other, 512)


def test_refuses_folder_without_corpus(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        TokenDataset(tmp_path, 512)


@pytest.mark.parametrize(
    "kwargs",
    [{"seq_len": 1}, {"seq_len": 64, "stride": 0}, {"seq_len": 64, "max_prefix": 64}],
    ids=["seq1", "stride0", "prefix-too-long"],
)
def test_rejects_bad_arguments(corpus_dir, kwargs):
    with pytest.raises(ValueError):
        TokenDataset(corpus_dir, **kwargs)


def test_index_is_per_file_not_per_window(corpus_dir):
    ds = TokenDataset(corpus_dir, 64, stride=1)
    assert len(ds) == int(ds.file_len.sum())
    index_bytes = sum(a.nbytes for a in (ds.cum_windows, ds.file_start, ds.file_len, ds.file_shard))
    assert index_bytes <= 40 * (len(ds.file_len) + 1)


def test_dataloader_workers_map_shards_themselves(corpus_dir):
    ds = TokenDataset(corpus_dir, 256)
    ds[0]  # maps shards in this process; pickling must not copy them
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 256)
    torch.testing.assert_close(batch["input_ids"][1], ds[1]["input_ids"])


# -- held out by file ---------------------------------------------------------------
def test_split_files_holds_out_whole_files(corpus_dir):
    from stretto.tokenizer import split_files

    train, val = split_files(corpus_dir, val_fraction=0.25, seed=3)
    n = len(TokenDataset(corpus_dir, 256).sources)
    assert sorted(train + val) == list(range(n)) and not set(train) & set(val)
    assert len(val) == max(1, round(0.25 * n))
    assert split_files(corpus_dir, val_fraction=0.25, seed=3) == (train, val)  # reproducible
    tr, va = TokenDataset(corpus_dir, 256, files=train), TokenDataset(corpus_dir, 256, files=val)
    assert set(tr.sources).isdisjoint(va.sources)
    full = TokenDataset(corpus_dir, 256)
    assert len(tr) + len(va) == len(full)
    # the windows of a restricted dataset are the windows of those files, unchanged
    f = val[0]
    first = sum(int(-(-full.file_len[i] // full.stride)) for i in range(f))
    torch.testing.assert_close(va[0]["input_ids"], full[first]["input_ids"])


def test_split_files_rejects_bad_fractions_and_indices(corpus_dir):
    from stretto.tokenizer import split_files

    with pytest.raises(ValueError, match="val_fraction=1.5"):
        split_files(corpus_dir, val_fraction=1.5)
    with pytest.raises(ValueError, match="file index 10000 is outside"):
        TokenDataset(corpus_dir, 256, files=[10000])


@pytest.mark.parametrize("files", [None, [5, 0, 3]], ids=["all-files", "files-5-0-3"])
def test_locate_file_of_and_getitem_agree_on_every_index(corpus_dir, files):
    ds = TokenDataset(corpus_dir, 256, files=files)
    n = len(ds)
    assert n == sum(-(-int(length) // ds.stride) for length in ds.file_len)
    expected_file, expected_k = 0, 0
    for i in range(n):
        f, start, stop, n_real = ds.locate(i)
        # windows run through the files in order, `ceil(len / stride)` of them per file
        if expected_k == -(-int(ds.file_len[expected_file]) // ds.stride):
            expected_file, expected_k = expected_file + 1, 0
        assert f == expected_file, f"window {i}"
        expected_k += 1
        assert ds.file_of(i) == ds.files[f]
        item = ds[i]
        ids = item["input_ids"].numpy()
        assert int(item["attention_mask"].sum()) == n_real
        # the window ends with the file's ids[start:stop], after its prefix
        np.testing.assert_array_equal(
            ids[n_real - (stop - start) : n_real], ds.file_ids(f)[start:stop]
        )
        # a negative index names the same window
        assert ds.locate(i - n) == (f, start, stop, n_real) and ds.file_of(i - n) == ds.files[f]
        torch.testing.assert_close(ds[i - n]["input_ids"], item["input_ids"])
    assert expected_file == len(ds.files) - 1  # the last index is the last file's window
    assert ds.locate(n - 1)[2] == ds.file_len[-1]  # and reaches that file's end
    for outside in (n, -n - 1):
        for read in (ds.locate, ds.file_of, ds.__getitem__):
            with pytest.raises(IndexError, match=f"window {outside} is outside 0..{n - 1}"):
                read(outside)
