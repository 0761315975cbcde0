"""build_corpus over real good and bad files: kept, refused, resumable, atomic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from stretto.tokenizer import MidiError, MidiTokenizer, TokenizerConfig, Vocabulary, build_corpus
from stretto.tokenizer import corpus as corpus_module
from stretto.tokenizer.corpus import read_manifest


@pytest.fixture(scope="module")
def mixed_inputs(midi_corpus, malformed_midi):
    """A third of the dev corpus and every malformed file, with what encode says of each."""
    files = midi_corpus[::3] + malformed_midi
    tok = MidiTokenizer()
    good, bad = {}, set()
    for p in files:
        try:
            good[str(p.resolve())] = tok.encode(p)
        except MidiError:
            bad.add(str(p.resolve()))
    assert good and bad
    return files, good, bad


def _shard_ids(out, manifest, entry) -> np.ndarray:
    shard = manifest["shards"][entry["shard"]]
    ids = np.load(out / shard["tokens"])
    offsets = np.load(out / shard["offsets"])
    return ids[offsets[entry["index"]] : offsets[entry["index"] + 1]]


@pytest.mark.parametrize("workers", [1, 2], ids=["workers1", "workers2"])
def test_mixed_folder_keeps_good_and_lists_bad(tmp_path, mixed_inputs, workers):
    files, good, bad = mixed_inputs
    out = tmp_path / "corpus"
    report = build_corpus(files, out, workers=workers, progress=False, shard_tokens=100_000)
    assert report.added == report.files == len(good)
    assert {src for src, _ in report.bad} == bad
    assert all(reason for _, reason in report.bad)
    manifest = read_manifest(out)
    assert manifest["vocabulary"] == Vocabulary().signature
    assert TokenizerConfig.from_dict(manifest["config"]) == TokenizerConfig()
    assert len(manifest["shards"]) > 1
    assert {e["source"] for e in manifest["files"]} == set(good)
    for entry in manifest["files"]:
        data = Path(entry["source"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        ids = _shard_ids(out, manifest, entry)
        assert ids.dtype == np.uint16
        np.testing.assert_array_equal(ids, good[entry["source"]])
    assert not list(out.glob(".*tmp*"))


def test_workers_do_not_change_the_output(tmp_path, mixed_inputs):
    files, _, _ = mixed_inputs
    build_corpus(files, tmp_path / "a", workers=1, progress=False, shard_tokens=100_000)
    build_corpus(files, tmp_path / "b", workers=2, progress=False, shard_tokens=100_000)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_second_run_skips_everything(tmp_path, mixed_inputs):
    files, good, bad = mixed_inputs
    out = tmp_path / "corpus"
    build_corpus(files, out, workers=2, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    report = build_corpus(files, out, workers=2, progress=False)
    assert (report.added, report.skipped) == (0, len(files))
    assert report.files == len(good) and {src for src, _ in report.bad} == bad
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_interrupted_build_resumes_to_the_same_corpus(tmp_path, mixed_inputs, monkeypatch):
    files, _, _ = mixed_inputs
    build_corpus(files, tmp_path / "whole", workers=1, progress=False, shard_tokens=100_000)

    real_save, calls = corpus_module._atomic_save, []

    def save_then_die(path, array):
        calls.append(path)
        if len(calls) == 5:  # mid-way through the third shard
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(corpus_module, "_atomic_save", save_then_die)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_corpus(files, out, workers=1, progress=False, shard_tokens=100_000)
    assert len(read_manifest(out)["shards"]) == 2  # what was written is a valid corpus
    (out / ".shard-00002.npy.tmp-99999").write_bytes(b"half a shard")  # a kill mid-write
    monkeypatch.setattr(corpus_module, "_atomic_save", real_save)
    report = build_corpus(files, out, workers=1, progress=False, shard_tokens=100_000)
    assert report.skipped > 0
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert sorted(p.name for p in out.iterdir()) == whole
    for name in whole:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_changed_config_is_refused(tmp_path, mixed_inputs):
    files, _, _ = mixed_inputs
    build_corpus(files[:2], tmp_path, workers=1, progress=False)
    with pytest.raises(ValueError, match="config"):
        build_corpus(files[:2], tmp_path, config=TokenizerConfig(max_seconds=60.0))


def test_empty_folder_gives_an_empty_corpus(tmp_path):
    (tmp_path / "in").mkdir()
    report = build_corpus(tmp_path / "in", tmp_path / "out", progress=False)
    assert (report.files, report.bad) == (0, [])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["files"] == []


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_corpus(tmp_path / "nowhere", tmp_path / "out", progress=False)
