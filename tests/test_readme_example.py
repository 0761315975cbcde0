"""The README's "Embedding Stretto in your trainer" example runs as written, on real
MIDI files copied into a `midi/` folder of a temporary working directory."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Embedding Stretto in your trainer"


def embedding_example() -> str:
    text = README.read_text()
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"no python code block under {HEADING!r}"
    return blocks[0]


def test_the_section_has_the_op_the_module_and_the_dataset():
    code = embedding_example()
    for name in ("hierarchical_attention(", "MusicModel(", "TokenDataset("):
        assert name in code


def test_the_embedding_example_runs(midi_corpus, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    midi = tmp_path / "midi"
    midi.mkdir()
    for path in midi_corpus[:2]:
        shutil.copy(path, midi)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(embedding_example(), str(README), "exec"), namespace)
    loss = namespace["loss"]
    assert loss.ndim == 0 and bool(loss.isfinite())
    assert (tmp_path / "tokens" / "manifest.json").is_file()
