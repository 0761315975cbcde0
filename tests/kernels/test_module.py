"""`HierarchicalAttention` as an `nn.Module`: torch's module machinery and its arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stretto.kernels import HierarchicalAttention, hierarchical_attention


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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"window": True}, "window must be an int >= 1, got True", id="window-bool"),
        pytest.param({"window": 0}, "window must be an int >= 1, got 0", id="window-0"),
        pytest.param({"window": 4.0}, "window must be an int >= 1, got 4.0", id="window-float"),
        pytest.param({"window": 4, "block": True}, "block must be None or an int", id="block-bool"),
        pytest.param({"window": 4, "block": 0}, "block must be None or an int", id="block-0"),
        pytest.param({"window": 4, "block": 2.5}, "block must be None or an int", id="block-float"),
    ],
)
def test_constructor_rejects_what_the_op_would(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        HierarchicalAttention(32, 2, **kwargs)
    assert "\n" not in str(err.value)
    # The op itself refuses the same values on the first forward.
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=match):
        hierarchical_attention(q, q, q, **{"block": None, **kwargs})


def test_numpy_integers_build_a_working_layer():
    np = pytest.importorskip("numpy")
    layer = HierarchicalAttention(32, 2, window=np.int64(4), block=np.int32(2))
    assert layer(torch.randn(1, 7, 32)).shape == (1, 7, 32)
