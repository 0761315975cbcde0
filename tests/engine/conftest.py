"""Fixtures for the engine tests: the vocabulary, tiny configs, windows of real music."""

from __future__ import annotations

import pytest
import torch

from stretto.engine import ModelConfig, MusicModel
from stretto.tokenizer import Vocabulary


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return Vocabulary()


@pytest.fixture
def make_model(vocab):
    """`make_model(mode, **overrides)`: a tiny-preset model with blocks of 16 (the
    preset's are 128), so that the short windows of tests cross many blocks and
    attend to summaries; seeded by the autouse fixture."""

    def make(mode: str, **overrides) -> MusicModel:
        overrides = {"block": 16, **overrides}
        return MusicModel(ModelConfig.from_vocab(vocab, mode=mode, preset="tiny", **overrides))

    return make


@pytest.fixture(scope="session")
def corpus_ids(midi_corpus, vocab) -> list[torch.Tensor]:
    """Token ids of the first two real corpus files with at least 2048 ids each."""
    from stretto.tokenizer import MidiTokenizer

    tok = MidiTokenizer()
    pieces = []
    for path in midi_corpus:
        ids = torch.as_tensor(tok.encode(path), dtype=torch.long)
        if ids.numel() >= 2048:
            assert int(ids.min()) >= 0 and int(ids.max()) < vocab.size, path.name
            pieces.append(ids)
        if len(pieces) == 2:
            return pieces
    pytest.skip("the corpus has fewer than two files of 2048 tokens")


@pytest.fixture(scope="session")
def windows(corpus_ids):
    """`windows(n)`: a `[2, n]` batch, one window of real music from each of two files."""

    def cut(n: int, start: int = 0) -> torch.Tensor:
        return torch.stack([ids[start : start + n] for ids in corpus_ids])  # [2, N]

    return cut
