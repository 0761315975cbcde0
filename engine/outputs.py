"""`MusicModelOutput`: what `MusicModel(input_ids, attention_mask, labels)` returns.

It follows the shape of transformers' `ModelOutput` without importing transformers: a
dict of the fields that are set, in order, readable as attributes (`out.loss`,
`out.logits`), by key (`out["loss"]`) and by position (`out[0]`, the first set field).
transformers' `Trainer` takes the loss from `outputs["loss"]` of a dict, so this is all
it needs from a model.
"""

from __future__ import annotations

import torch


class MusicModelOutput(dict):
    """`loss` (scalar, present when labels were given) and `logits` `[B, N, V]`.

    Fields that are None are left out of the dict (as in transformers' `ModelOutput`),
    so `out[0]` is the loss when there is one and the logits otherwise. It can be rebuilt
    from its own items (`MusicModelOutput(dict(out))`), as tools that map over a batch's
    outputs do.
    """

    FIELDS = ("loss", "logits")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        unknown = sorted(set(self) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"MusicModelOutput: unknown fields {unknown}; known {self.FIELDS}")
        for key in [k for k, v in self.items() if v is None]:
            del self[key]

    @property
    def loss(self) -> torch.Tensor | None:
        return self.get("loss")

    @property
    def logits(self) -> torch.Tensor | None:
        return self.get("logits")

    def __getitem__(self, key: str | int | slice):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        """The set fields in order: (loss, logits) or (logits,)."""
        return tuple(self[k] for k in self.FIELDS if k in self)
