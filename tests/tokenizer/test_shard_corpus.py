"""Sharded corpus builds: n parts of the sorted file list, merged back into one corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stretto.engine.cli import main as stretto
from stretto.tokenizer import TokenDataset, TokenizerConfig, build_corpus, merge_corpora
from stretto.tokenizer.corpus import (
    MANIFEST,
    parse_shard,
    read_manifest,
    select_part,
)


@pytest.fixture(scope="module")
def inputs(midi_corpus, malformed_midi):
    """Seven good files and two bad ones: odd sizes so parts are uneven."""
    return midi_corpus[:7] + malformed_midi[:2]


@pytest.fixture(scope="module")
def whole(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    build_corpus(inputs, out, workers=1, progress=False)
    return out


def _contents(corpus) -> dict[str, np.ndarray]:
    """source -> ids, read through the shard files."""
    manifest = read_manifest(corpus)
    result = {}
    for e in manifest["files"]:
        shard = manifest["shards"][e["shard"]]
        ids = np.load(corpus / shard["tokens"])
        offsets = np.load(corpus / shard["offsets"])
        result[e["source"]] = ids[offsets[e["index"]] : offsets[e["index"] + 1]]
    return result


@pytest.mark.parametrize("n", [1, 2, 3, 9, 13], ids=lambda n: f"n{n}")
def test_parts_cover_the_list_once_in_order(n):
    files = [f"f{k:02d}" for k in range(9)]
    parts = [select_part(files, (i, n)) for i in range(n)]
    assert sum(parts, []) == files
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1/0", "1", "a/b", "1/2/3"])
def test_bad_shard_text_is_refused(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_shard_none_writes_no_part(whole):
    assert "part" not in read_manifest(whole)


@pytest.mark.parametrize("n", [2, 3], ids=lambda n: f"n{n}")
def test_sharded_build_and_merge_equal_the_whole_build(inputs, whole, tmp_path, n):
    parts = []
    for i in reversed(range(n)):  # merge must restore part order itself
        out = tmp_path / f"part{i}"
        build_corpus(inputs, out, workers=1, progress=False, shard=(i, n), shard_tokens=5000)
        assert read_manifest(out)["part"] == {"index": i, "count": n}
        parts.append(out)
    merged = tmp_path / "merged"
    report = merge_corpora(parts, merged)

    want, got = read_manifest(whole), read_manifest(merged)
    assert "part" not in got
    assert [e["source"] for e in got["files"]] == [e["source"] for e in want["files"]]
    assert sorted(e["source"] for e in got["bad"]) == sorted(e["source"] for e in want["bad"])
    assert report.files == len(want["files"]) and report.bad
    a, b = _contents(whole), _contents(merged)
    assert a.keys() == b.keys()
    for source in a:
        np.testing.assert_array_equal(a[source], b[source], err_msg=source)
    assert len(TokenDataset(merged, 256)) == len(TokenDataset(whole, 256))


def test_resuming_with_another_part_is_refused(inputs, whole, tmp_path):
    build_corpus(inputs, tmp_path / "p", workers=1, progress=False, shard=(0, 2))
    with pytest.raises(ValueError, match="part 0/2"):
        build_corpus(inputs, tmp_path / "p", workers=1, progress=False, shard=(1, 2))
    with pytest.raises(ValueError, match="whole corpus"):
        build_corpus(inputs, whole, workers=1, progress=False, shard=(0, 2))


def test_mismatched_vocabulary_is_refused(whole, inputs, tmp_path):
    other = tmp_path / "other"
    build_corpus(inputs[:2], other, workers=1, progress=False)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["vocabulary"] = "0" * 16
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="vocabulary"):
        merge_corpora([whole, other], tmp_path / "merged")
    assert not (tmp_path / "merged" / MANIFEST).exists()


def test_mismatched_config_or_overlap_is_refused(whole, inputs, tmp_path):
    other = tmp_path / "other"
    config = TokenizerConfig(max_file_bytes=TokenizerConfig().max_file_bytes - 1)
    build_corpus(inputs[:2], other, workers=1, progress=False, config=config)
    with pytest.raises(ValueError, match="configs differ"):
        merge_corpora([whole, other], tmp_path / "m1")
    with pytest.raises(ValueError, match="is in both"):
        merge_corpora([whole, whole], tmp_path / "m2")
    with pytest.raises(ValueError, match="not empty"):
        merge_corpora([whole], whole)


def test_cli_shard_and_merge(inputs, whole, tmp_path, capsys):
    src = tmp_path / "midi"
    src.mkdir()
    for p in inputs:
        (src / p.name).write_bytes(p.read_bytes())
    for i in range(2):
        part = ["tokenize", str(src), str(tmp_path / f"p{i}"), "--shard", f"{i}/2"]
        assert stretto([*part, "--workers", "1"]) == 0
    parts = [str(tmp_path / "p1"), str(tmp_path / "p0")]
    assert stretto(["tokenize", "--merge", *parts, str(tmp_path / "all")]) == 0
    got = _contents(tmp_path / "all")
    want = {s.rsplit("/", 1)[-1]: ids for s, ids in _contents(whole).items()}
    assert {s.rsplit("/", 1)[-1] for s in got} == want.keys()
    for source, ids in got.items():
        np.testing.assert_array_equal(ids, want[source.rsplit("/", 1)[-1]])
    assert stretto(["tokenize", str(src), str(tmp_path / "x"), "--shard", "2/2"]) != 0
    assert "shard" in capsys.readouterr().err
