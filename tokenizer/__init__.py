"""MIDI <-> token ids for Stretto: vocabulary, tokenizer, corpus builder and dataset.

The names below are imported on first use, so that `stretto.tokenizer.vocabulary` (all
the engine needs) imports without symusic or numba.
"""

from typing import TYPE_CHECKING

__all__ = [
    "CorpusReport",
    "FileSplit",
    "MidiError",
    "MidiTokenizer",
    "TokenDataset",
    "TokenizerConfig",
    "Violation",
    "Vocabulary",
    "build_corpus",
    "merge_corpora",
    "split_files",
    "validate",
]

if __name__ != "stretto.tokenizer":
    # This folder imported as a top-level `tokenizer` (the checkout's root is on sys.path):
    # the name goes to the installed package of that name, if any (_stretto_checkout.py).
    from _stretto_checkout import claim_bare_name

    claim_bare_name(__name__, globals())
else:
    import importlib

    # public name -> the module of this package that defines it
    _WHERE = {
        "CorpusReport": "corpus",
        "FileSplit": "split",
        "MidiError": "midi",
        "MidiTokenizer": "midi",
        "TokenDataset": "dataset",
        "TokenizerConfig": "config",
        "Violation": "grammar",
        "Vocabulary": "vocabulary",
        "build_corpus": "corpus",
        "merge_corpora": "corpus",
        "split_files": "split",
        "validate": "grammar",
    }

    def __getattr__(name: str):
        if name not in _WHERE:
            raise AttributeError(f"module 'stretto.tokenizer' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .config import TokenizerConfig
    from .corpus import CorpusReport, build_corpus, merge_corpora
    from .dataset import TokenDataset
    from .grammar import Violation, validate
    from .midi import MidiError, MidiTokenizer
    from .split import FileSplit, split_files
    from .vocabulary import Vocabulary
