"""How kernel launchers allocate their outputs: uninitialised, or poisoned for tests.

`poisoned_outputs()` makes every launcher allocate its outputs filled with NaN
(integers with their minimum value) instead of uninitialised memory, so an element a
kernel forgot to write fails a comparison instead of passing by luck. The launchers
read the switch here; test support (`stretto.kernels.testing`) re-exports it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_state = threading.local()


def poisoning() -> bool:
    """True inside `poisoned_outputs()`."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within this block, `new_output` fills fresh kernel outputs with poison."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill `t` in place with NaN (floating) or the dtype's minimum (integer)."""
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(torch.iinfo(t.dtype).min)


def new_output(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Allocate a kernel output: uninitialised normally, poisoned under `poisoned_outputs()`."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    return poison_(t) if poisoning() else t
