"""The test harness itself: Triton under the interpreter, poisoning, the real corpus."""

from __future__ import annotations

import pytest
import torch

from stretto.kernels import testing as kernel_testing


def _scaled_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    import triton
    import triton.language as tl

    @triton.jit
    def scaled_add_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        keep = offs < n
        x = tl.load(x_ptr + offs, mask=keep)
        y = tl.load(y_ptr + offs, mask=keep)
        tl.store(out_ptr + offs, x + alpha * y, mask=keep)

    out = kernel_testing.new_output(*x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    scaled_add_kernel[(triton.cdiv(n, 64),)](x, y, out, n, alpha, BLOCK=64)
    return out


@pytest.mark.parametrize("n", [1, 63, 64, 77, 513], ids=lambda n: f"N{n}")
def test_triton_kernel_runs_where_tests_run(kernel_device, poisoned, n):
    x = torch.randn(n, device=kernel_device)
    y = torch.randn(n, device=kernel_device)
    out = _scaled_add(x, y, 0.5)
    assert not out.isnan().any(), "kernel left elements unwritten"
    torch.testing.assert_close(out, x + 0.5 * y)


def test_poisoning_fills_fresh_outputs():
    with kernel_testing.poisoned_outputs():
        assert kernel_testing.new_output(3, 5, dtype=torch.float16, device="cpu").isnan().all()
        ints = kernel_testing.new_output(4, dtype=torch.int32, device="cpu")
        assert (ints == torch.iinfo(torch.int32).min).all()
    assert not kernel_testing.poisoning()


def test_poisoning_catches_an_unwritten_element(kernel_device, poisoned):
    """A launcher that skips the last element must be caught by the NaN poison."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy_all_but_last(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n - 1), mask=offs < n - 1)

    x = torch.randn(9, device=kernel_device)
    out = kernel_testing.new_output(9, dtype=x.dtype, device=x.device)
    copy_all_but_last[(1,)](x, out, 9, BLOCK=16)
    assert out[:-1].eq(x[:-1]).all()
    assert out[-1].isnan()


def test_every_corpus_file_loads_with_symusic(midi_corpus, corpus_manifest):
    import symusic

    assert len(midi_corpus) > 0
    checked = 0
    for path in midi_corpus:
        score = symusic.Score(str(path))
        notes = sum(len(track.notes) for track in score.tracks)
        row = corpus_manifest.get(path.name)
        if row is not None and row["symusic"] == "ok":
            assert notes == int(row["notes"]), path.name
            assert score.ticks_per_quarter == int(row["tpq"]), path.name
            checked += 1
    assert checked > 0, "no corpus file was found in the manifest"
