"""MIDI <-> token ids for Stretto: vocabulary, tokenizer, corpus builder and dataset."""
