"""MIDI <-> token ids for Stretto: vocabulary, tokenizer, corpus builder and dataset."""

from .config import TokenizerConfig
from .corpus import CorpusReport, build_corpus, merge_corpora
from .dataset import TokenDataset
from .grammar import Violation, validate
from .midi import MidiError, MidiTokenizer
from .split import FileSplit, split_files
from .vocabulary import Vocabulary

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
