"""Test support shared by Stretto's kernel tests and by users' own correctness suites.

`poisoned_outputs()` makes every kernel launcher allocate its outputs filled with NaN
(integers with their minimum value) instead of uninitialised memory, so an element a
kernel forgot to write fails the comparison instead of passing by luck. The switch
lives with the launchers (`stretto.kernels.outputs`); library code never imports this
module.
"""

from __future__ import annotations

import torch

from .outputs import new_output, poison_, poisoned_outputs, poisoning

__all__ = [
    "ABS_FLOOR",
    "assert_close_to_reference",
    "max_abs_error",
    "new_output",
    "poison_",
    "poisoned_outputs",
    "poisoning",
]

# Absolute error floor per dtype, relative to the reference's magnitude (max |ref|, at
# least 1). It only matters where plain torch happens to be exact (e.g. float64).
ABS_FLOOR: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}


def max_abs_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| in float64; NaN anywhere in `x` gives NaN (so comparisons fail)."""
    diff = (x.detach().to(torch.float64) - ref.detach().to(torch.float64)).abs()
    if diff.numel() == 0:
        return 0.0
    if diff.isnan().any():
        return float("nan")
    return diff.max().item()


def assert_close_to_reference(
    fast: torch.Tensor,
    plain: torch.Tensor,
    reference: torch.Tensor,
    *,
    name: str = "output",
) -> None:
    """The tolerance policy (SPEC): |fast - ref64| <= 2 |plain - ref64| + floor.

    `fast` is the path under test, `plain` the plain torch computation in the same
    dtype as `fast`, and `reference` the same computation in float64. The bound is on
    the maximum absolute error; NaN or a shape/dtype mismatch fails. Nothing here is
    ever loosened by a caller: there is no tolerance argument.
    """
    if fast.shape != reference.shape or plain.shape != reference.shape:
        raise AssertionError(
            f"{name}: shapes differ: fast {tuple(fast.shape)}, plain {tuple(plain.shape)}, "
            f"reference {tuple(reference.shape)}"
        )
    if fast.dtype != plain.dtype:
        raise AssertionError(f"{name}: fast is {fast.dtype} but plain torch is {plain.dtype}")
    scale = max(1.0, reference.detach().abs().max().item()) if reference.numel() else 1.0
    floor = ABS_FLOOR.get(fast.dtype, 1e-5) * scale
    err_fast = max_abs_error(fast, reference)
    err_plain = max_abs_error(plain, reference)
    bound = 2.0 * err_plain + floor
    if not err_fast <= bound:  # also catches NaN
        raise AssertionError(
            f"{name} ({fast.dtype}): max error {err_fast:.3e} exceeds 2 x plain torch's "
            f"{err_plain:.3e} + floor {floor:.1e} = {bound:.3e}"
        )
