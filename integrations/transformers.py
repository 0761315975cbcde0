"""Windowed hierarchical attention inside any Hugging Face transformers model.

    from stretto.integrations.transformers import register

    register()  # once per process: adds "stretto_wha" to transformers' registries
    config = LlamaConfig(..., wha_window=256, wha_block=64)
    model = LlamaForCausalLM(config, attn_implementation="stretto_wha")

`register()` adds two entries under the name "stretto_wha": the attention function
(`wha_attention_forward`, in `transformers.AttentionInterface`) and the function that
builds what it is given as `attention_mask` (`wha_padding_mask`, in
`transformers.AttentionMaskInterface`): the `[B, N]` key padding mask, never an N x N
mask. Nothing changes at import time.

Settings, read from the model config on every call:

- `wha_window` (default 256): local keys of query i are `i - window < t <= i`
  (decoders) or `|i - t| < window` (bidirectional modules).
- `wha_block` (default 64; None for a plain sliding window): the summary block size.
- `wha_backend` (default "auto"): as in `stretto.kernels.hierarchical_attention`.

Causal for modules whose `is_causal` is True (every decoder), as transformers' own
attention functions decide. Grouped-query heads: the key/value heads are repeated as
transformers' `repeat_kv` does. The model's own pattern is replaced, not combined:
models that ask for another pattern (sliding-window or chunked layers, packed
sequences) are refused with the reason.

Cached decoding (`generate`) is exact: block summaries are means of past keys, and
transformers' `DynamicCache` (the default) and `StaticCache` hold every past key, so
each step computes exactly the full forward's row at its position (one new token:
the bounded-cache decode of `stretto.kernels`; several: the full op over all keys).
A cache that has dropped old keys (sliding-window layers) is refused with an error:
the summaries of the dropped blocks can no longer be formed.

For training a `MusicModel` with transformers' `Trainer`: `collate_with_labels` (a
`data_collator` for `TokenDataset` items that adds `labels`) and `MusicTrainer` (the
Trainer, with checkpoints written by `MusicModel.save_pretrained`).

This module's name follows transformers' own `integrations/` modules; `import
transformers` inside it is an absolute import of the real package.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import transformers
from transformers import masking_utils

from stretto.engine import MusicModel
from stretto.kernels import HierarchicalKVCache, hierarchical_attention

NAME = "stretto_wha"
DEFAULT_WINDOW = 256
DEFAULT_BLOCK = 64
DEFAULT_BACKEND = "auto"


def register() -> str:
    """Register "stretto_wha" with transformers (idempotent); returns the name, for
    `attn_implementation=`."""
    transformers.AttentionInterface.register(NAME, wha_attention_forward)
    masking_utils.AttentionMaskInterface.register(NAME, wha_padding_mask)
    return NAME


def wha_settings(config) -> tuple[int, int | None, str]:
    """(window, block, backend) from a model config's `wha_window`, `wha_block` and
    `wha_backend` (defaults 256, 64, "auto"), validated."""
    window = getattr(config, "wha_window", DEFAULT_WINDOW)
    block = getattr(config, "wha_block", DEFAULT_BLOCK)
    backend = getattr(config, "wha_backend", DEFAULT_BACKEND)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"config.wha_window must be an int >= 1, got {window!r}")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ValueError(f"config.wha_block must be None or an int >= 1, got {block!r}")
    return window, block, backend


# -- the mask transformers hands to the attention ------------------------------------------
_PLAIN_PATTERNS = (masking_utils.causal_mask_function, masking_utils.bidirectional_mask_function)


def wha_padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable = masking_utils.causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """The mask function for "stretto_wha": a `[B, M]` bool key padding mask (True =
    real token), or None when every key is real.

    M counts the keys up to the last query (`q_offset + q_length`): the attention
    function attends over the first M keys, the queries being the last of them. That
    is the whole cache for a `DynamicCache`; a `StaticCache` also holds unused slots
    after it, which are cut. Raises ValueError when the keys do not start at position
    0 (a cache that dropped keys) or when the model asks for a pattern other than
    plain causal or bidirectional attention.
    """
    if mask_function not in _PLAIN_PATTERNS:
        name = getattr(mask_function, "__qualname__", repr(mask_function))
        raise ValueError(
            f"{NAME} computes its own window and block summaries and cannot follow the "
            f"model's mask pattern {name} (sliding-window or chunked layers, packed "
            "sequences); use it on models with plain causal or bidirectional attention"
        )
    if kv_offset:
        raise ValueError(
            f"{NAME} needs every past key (block summaries are means over all earlier "
            f"blocks), but this cache dropped the first {int(kv_offset)}: use a "
            "DynamicCache without sliding-window layers"
        )
    keys = int(q_offset) + int(q_length)  # keys up to and including the last query
    if keys > kv_length:
        raise ValueError(f"{keys} keys expected up to the last query, the cache has {kv_length}")
    if attention_mask is None:
        if keys == kv_length:
            return None
        return torch.ones(batch_size, keys, dtype=torch.bool, device=kwargs.get("device", "cpu"))
    mask = attention_mask.to(torch.bool)
    if mask.shape[-1] < keys:  # as transformers does: keys past the 2D mask are not real
        mask = torch.nn.functional.pad(mask, (0, keys - mask.shape[-1]))
    mask = mask[:, :keys]
    if keys == kv_length and bool(mask.all()):
        return None
    return mask


# -- the attention ---------------------------------------------------------------------------
def wha_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface over `hierarchical_attention`.

    query `[B, H, Nq, D]`, key and value `[B, Hkv, Nk, D]` (H a multiple of Hkv; with a
    cache, Nk counts the past keys too), `attention_mask` the `[B, M]` bool key padding
    mask from `wha_padding_mask` (or None). Returns (`[B, Nq, H, D]`, None): no
    attention weights are materialized.
    """
    config = getattr(module, "config", None)
    window, block, backend = wha_settings(config)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if dropout:
        raise ValueError(f"{NAME} has no attention dropout: set attention_dropout=0, got {dropout}")
    b, h, nq, d = query.shape
    hkv = key.shape[1]
    if h % hkv:
        raise ValueError(f"{h} query heads do not split into groups over {hkv} key/value heads")
    if hkv != h:  # grouped-query heads: query head j reads key/value head j // (h // hkv)
        key = key.repeat_interleave(h // hkv, dim=1)
        value = value.repeat_interleave(h // hkv, dim=1)
    mask = attention_mask
    if mask is not None:
        if mask.dim() != 2 or mask.dtype != torch.bool or mask.shape[0] != b:
            raise ValueError(
                f"{NAME} takes the [B, N] bool padding mask of its registered mask function, "
                f"got {mask.dtype} {list(mask.shape)} (was the model given a 4D mask?)"
            )
        key, value = key[:, :, : mask.shape[1]], value[:, :, : mask.shape[1]]
    nk = key.shape[2]
    common = {"window": window, "block": block, "key_padding_mask": mask, "scale": scaling}
    if nq == nk:
        o = hierarchical_attention(query, key, value, causal=causal, backend=backend, **common)
    elif not causal or nq > nk:
        raise ValueError(
            f"{NAME}: {nq} queries over {nk} keys; only causal attention reads a cache "
            "(the queries being the last keys)"
        )
    elif nq == 1:
        o = _decode_one(query, key, value, window=window, block=block, mask=mask, scale=scaling)
    else:  # a chunk after a cache: the full op over all keys, the earlier rows unused
        pad = query.new_zeros(b, h, nk - nq, d)
        q = torch.cat([pad, query], dim=2)  # [B, H, Nk, D]
        o = hierarchical_attention(q, key, value, causal=True, backend=backend, **common)
        o = o[:, :, nk - nq :]
    return o.transpose(1, 2).contiguous(), None  # [B, Nq, H, D]


def _decode_one(query, key, value, *, window, block, mask, scale) -> torch.Tensor:
    """The last position's row `[B, H, 1, D]` through `HierarchicalKVCache`, whose
    block sums are filled from all the keys once (O(Nk) per step, as the cache read)."""
    b, h, nk, d = key.shape
    cache = HierarchicalKVCache(
        b, h, d, window=window, block=block, max_length=nk, dtype=key.dtype, device=key.device
    )
    cache.prefill(key, value, mask)
    return cache.attend(query[:, :, 0], scale=scale).unsqueeze(2)


# -- training a MusicModel with transformers' Trainer -----------------------------------------
def collate_with_labels(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A `data_collator` for `TokenDataset` items: stacks `input_ids` and
    `attention_mask` (`[B, N]`) and adds `labels`, the input ids with -100 on padding,
    so that transformers' `Trainer` gets a loss from `MusicModel`."""
    ids = torch.stack([item["input_ids"] for item in items])
    mask = torch.stack([item["attention_mask"] for item in items]).to(torch.bool)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(~mask, -100)}


class MusicTrainer(transformers.Trainer):
    """`transformers.Trainer` whose checkpoints of a `MusicModel` are
    `save_pretrained` folders (`model.safetensors` + `config.json`).

    The plain Trainer saves a model that is not a transformers `PreTrainedModel` by
    handing its whole state dict to safetensors, which refuses the embedding and head
    weights that `tie_embeddings` makes one tensor; `save_pretrained` stores it once.
    `resume_from_checkpoint` and `load_best_model_at_end` read these folders back with
    `MusicModel.from_pretrained`'s checks (vocabulary, then every config field). Other
    models are saved and loaded as the plain Trainer does.
    """

    def _music_model(self, model: torch.nn.Module | None = None) -> MusicModel | None:
        model = self.accelerator.unwrap_model(self.model if model is None else model)
        return model if isinstance(model, MusicModel) else None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._music_model()
        if model is None:
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        target = self._music_model(model)
        if target is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        _load_weights(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        target = self._music_model()
        if target is None:
            super()._load_best_model()
            return
        _load_weights(target, self.state.best_model_checkpoint)


def _load_weights(model: MusicModel, directory: str) -> None:
    saved = MusicModel.from_pretrained(directory, config=model.config)
    model.load_state_dict(saved.state_dict())
