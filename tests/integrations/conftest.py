"""Fixtures for the integration tests: the vocabulary, a token corpus of real music."""

from __future__ import annotations

import shutil

import pytest

# the engine tests' vocabulary fixture
from tests.engine.conftest import vocab  # noqa: F401


@pytest.fixture(scope="session")
def token_corpus(midi_corpus, tmp_path_factory):
    """A `build_corpus` folder of the first two real MIDI files."""
    from stretto.tokenizer import build_corpus

    root = tmp_path_factory.mktemp("corpus")
    midi = root / "midi"
    midi.mkdir()
    for path in midi_corpus[:2]:
        shutil.copy(path, midi)
    build_corpus(midi, root / "tokens", workers=1, progress=False)
    return root / "tokens"
