"""Fixtures for the integration tests: the vocabulary, a token corpus of real music."""

from __future__ import annotations

import shutil

import pytest
import torch

from stretto.tokenizer import Vocabulary


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread (as in tests/engine): tiny models on a small shared CPU run
    faster without torch's thread pool; restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary()


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
