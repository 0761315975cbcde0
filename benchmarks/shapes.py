"""The one shape table every suite draws from.

Sequence lengths 512, 1024 and 2048 are the default sweep (the training windows);
4096 and 8192 are added to show how time and memory scale. Batch sizes keep the
number of tokens per step roughly constant on a GPU, so short sequences still fill
the device; on a CPU one sequence per step is enough to measure.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQ_LENS: tuple[int, ...] = (512, 1024, 2048)
SCALING_SEQ_LENS: tuple[int, ...] = (4096, 8192)

# Attention shape of the kernels issue: H = 8, D = 64, window 256, block 64, causal.
HEADS = 8
HEAD_DIM = 64
WINDOW = 256
BLOCK = 64

# Tokens per step (batch x sequence length) on a GPU; the CPU runs one sequence.
CUDA_ATTENTION_TOKENS = 65536
CUDA_MODEL_TOKENS = 16384

# Generated lengths of the generation issue, and the short ones a quick run uses.
GENERATE_LENGTHS: tuple[int, ...] = (2048, 8192)
QUICK_GENERATE_LENGTHS: tuple[int, ...] = (256,)


def seq_lens(*, quick: bool, scaling: bool = False) -> tuple[int, ...]:
    """Sequence lengths to sweep: the defaults, plus the scaling ones unless `quick`."""
    if scaling and not quick:
        return SEQ_LENS + SCALING_SEQ_LENS
    return SEQ_LENS


def batch_size(device: str, seq_len: int, *, kind: str = "attention") -> int:
    """Batch size for `seq_len` on `device`; `kind` is "attention" or "model"."""
    if kind not in ("attention", "model"):
        raise ValueError(f"kind must be 'attention' or 'model', got {kind!r}")
    if not device.startswith("cuda"):
        return 1
    tokens = CUDA_ATTENTION_TOKENS if kind == "attention" else CUDA_MODEL_TOKENS
    return max(1, tokens // seq_len)


def dtype_name(device: str) -> str:
    """bf16 on a GPU; float32 on a CPU, where bf16 matmuls are emulated and slow."""
    return "bfloat16" if device.startswith("cuda") else "float32"


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    window: int = WINDOW
    block: int | None = BLOCK
    causal: bool = True

    @property
    def label(self) -> str:
        """Readable id, e.g. `B32-H8-N2048-D64-w256-g64-causal`."""
        block = "none" if self.block is None else str(self.block)
        kind = "causal" if self.causal else "bidir"
        return (
            f"B{self.batch}-H{self.heads}-N{self.seq_len}-D{self.head_dim}"
            f"-w{self.window}-g{block}-{kind}"
        )


def attention_shapes(device: str, *, quick: bool, scaling: bool = False) -> list[AttentionShape]:
    """The attention sweep of the kernels issue on `device`."""
    return [
        AttentionShape(batch_size(device, n), HEADS, n, HEAD_DIM)
        for n in seq_lens(quick=quick, scaling=scaling)
    ]
