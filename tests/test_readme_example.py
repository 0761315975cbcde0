"""The README's "Embedding Stretto in your trainer" examples run as written, in order, in
one working directory whose `midi/` folder holds real MIDI files."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Embedding Stretto in your trainer"


def embedding_examples() -> list[str]:
    text = README.read_text()
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"no python code block under {HEADING!r}"
    return blocks


def embedding_example() -> str:
    return embedding_examples()[0]


def test_the_section_has_the_op_the_module_and_the_dataset():
    code = embedding_example()
    for name in ("hierarchical_attention(", "MusicModel(", "TokenDataset("):
        assert name in code


@pytest.mark.parametrize(
    ("index", "names"),
    [
        pytest.param(1, ("MusicTrainer(", "save_pretrained(", "from_pretrained("), id="hf-trainer"),
        pytest.param(2, ('attn_implementation="stretto_wha"', ".generate("), id="wha-in-llama"),
        pytest.param(3, ("MusicLightningModule(", "pl.Trainer("), id="lightning"),
    ],
)
def test_the_section_shows_each_integration(index, names):
    code = embedding_examples()[index]
    for name in names:
        assert name in code


@pytest.fixture(scope="module")
def workdir(midi_corpus, tmp_path_factory):
    """A folder with `midi/`; the blocks leave their outputs (tokens/, ...) in it."""
    root = tmp_path_factory.mktemp("readme")
    (root / "midi").mkdir()
    for path in midi_corpus[:2]:
        shutil.copy(path, root / "midi")
    return root


@pytest.mark.parametrize(
    "index", range(4), ids=["plain-loop", "hf-trainer", "wha-in-llama", "lightning"]
)
def test_each_embedding_example_runs(workdir, monkeypatch, index):
    pytest.importorskip("torch")
    blocks = embedding_examples()
    assert len(blocks) == 4, "one block per way of embedding: update the ids above"
    monkeypatch.chdir(workdir)
    if index and not (workdir / "tokens" / "manifest.json").is_file():
        exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks[index], str(README), "exec"), namespace)
    loss = namespace["loss"]
    loss = float(loss.detach() if hasattr(loss, "detach") else loss)
    assert math.isfinite(loss) and loss > 0
    if index == 0:
        assert (workdir / "tokens" / "manifest.json").is_file()
    if index == 1:
        assert {p.name for p in (workdir / "music-model").iterdir()} == {
            "config.json",
            "model.safetensors",
        }
        assert (workdir / "hf-run" / "checkpoint-3" / "model.safetensors").is_file()
    if index == 2:
        ids = namespace["ids"]  # the prompt, then up to 16 tokens (fewer if EOS comes)
        assert ids.shape[0] == 1 and 100 < ids.shape[1] <= 116
