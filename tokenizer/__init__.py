"""MIDI <-> token ids for Stretto: vocabulary, tokenizer, corpus builder and dataset."""

from .vocabulary import Vocabulary

__all__ = ["Vocabulary"]
