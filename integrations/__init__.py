"""Stretto inside other people's trainers: Hugging Face transformers and Lightning.

Each integration is a module of its own, imported by name, so that its framework (an
optional extra) is imported only when it is used:

- `stretto.integrations.transformers` (extra `hf`): windowed hierarchical attention as a
  transformers attention implementation, `attn_implementation="stretto_wha"`.
- `stretto.integrations.lightning` (extra `lightning`): `MusicLightningModule`.

`MusicModel` itself speaks the Hugging Face conventions (`labels`, `.loss`, `.logits`,
`save_pretrained` / `from_pretrained`) without importing transformers.
"""
