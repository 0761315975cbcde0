"""Stretto inside other people's trainers: Hugging Face transformers and Lightning.

Each integration is a module of its own, imported by name, so that its framework (an
optional extra) is imported only when it is used:

- `stretto.integrations.transformers` (extra `hf`): windowed hierarchical attention as a
  transformers attention implementation, `attn_implementation="stretto_wha"`.
- `stretto.integrations.lightning` (extra `lightning`): `MusicLightningModule`.

`MusicModel` itself speaks the Hugging Face conventions (`labels`, `.loss`, `.logits`,
`save_pretrained` / `from_pretrained`) without importing transformers.
"""

if __name__ != "stretto.integrations":
    # This folder imported as a top-level `integrations` (the checkout's root is on sys.path):
    # the name goes to the installed package of that name, if any (_stretto_checkout.py).
    from _stretto_checkout import claim_bare_name

    claim_bare_name(__name__, globals())
