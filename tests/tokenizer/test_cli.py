"""`stretto tokenize` and `stretto tokens` on small files written here."""

from __future__ import annotations

import numpy as np
import pytest
from symusic import Note, Score, Track

from stretto.engine.cli import main
from stretto.tokenizer import MidiTokenizer
from stretto.tokenizer.corpus import read_manifest


def _write_song(path, pitches) -> None:
    score = Score(480)
    track = Track("piano", 0, False)
    n = len(pitches)
    track.notes = Note.from_numpy(
        (np.arange(n) * 240).astype(np.int32),
        np.full(n, 200, np.int32),
        np.array(pitches, np.int8),
        np.full(n, 90, np.int8),
    )
    score.tracks.append(track)
    score.dump_midi(str(path))


def test_tokens_prints_one_token_per_line(tmp_path, capsys):
    _write_song(tmp_path / "a.mid", [60, 64, 67])
    assert main(["tokens", str(tmp_path / "a.mid")]) == 0
    lines = capsys.readouterr().out.splitlines()
    tok = MidiTokenizer()
    assert lines == tok.tokens(tok.encode(tmp_path / "a.mid"))
    assert lines[0] == "START" and "NOTE_ON(64)" in lines and lines[-1] == "END"


def test_tokens_error_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"this is not midi at all")
    assert main(["tokens", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "MThd" in err


def test_tokenize_folder_lists_bad_files(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _write_song(src / "a.mid", [60, 62])
    _write_song(src / "sub" / "b.midi", [40, 41, 42])
    (src / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x05\x01\xe0MTrk\xff")
    assert main(["tokenize", str(src), str(tmp_path / "out"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 files" in out and "refused" in out and "broken.mid" in out
    manifest = read_manifest(tmp_path / "out")
    assert sorted(e["source"].rsplit("/", 1)[-1] for e in manifest["files"]) == ["a.mid", "b.midi"]


@pytest.mark.parametrize("command", ["tokenize", "tokens"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "example:" in capsys.readouterr().out
