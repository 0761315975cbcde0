"""MIDI <-> token ids for Stretto: vocabulary, tokenizer, corpus builder and dataset."""

from .config import TokenizerConfig
from .midi import MidiError, MidiTokenizer
from .vocabulary import Vocabulary

__all__ = ["MidiError", "MidiTokenizer", "TokenizerConfig", "Vocabulary"]
