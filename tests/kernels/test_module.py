"""`HierarchicalAttention` as an `nn.Module`: torch's module machinery and its arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stretto.kernels import HierarchicalAttention


def _visit_every_module(module: nn.Module) -> None:
    seen: list[nn.Module] = []
    assert module.apply(seen.append) is module
    assert {id(m) for m in seen} == {id(m) for m in module.modules()}


@pytest.mark.parametrize("rotary", [True, False], ids=["rotary", "norotary"])
def test_apply_reaches_every_submodule(rotary):
    layer = HierarchicalAttention(32, 2, window=8, block=4, rotary=rotary)
    _visit_every_module(layer)
    layer.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert not layer.qkv.weight.any() and not layer.out.weight.any()
    out = layer(torch.randn(1, 5, 32))
    assert out.shape == (1, 5, 32) and not out.any()
