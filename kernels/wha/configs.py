"""Tile configurations of the fused kernels: one pinned config per kernel, dtype and head dim.

Every config here was compiled ahead of time for sm_90 and sm_80 by
`gpu/compile_table.py` (run by `tests/kernels/test_compile_table.py`), and the
pinned ones were chosen from those compiles: no register spills in 16-bit and TF32
variants, shared memory within the target's limit. The table it writes is committed
under `benchmarks/results/compile/`.

Autotuning costs a compile per config and shape key (0.3-2 s each, up to 20 s for an
fp32 "ieee" one), so it is off by default: `STRETTO_AUTOTUNE=1` tunes over the few
`candidates` of each kernel (the pinned config first), and Triton caches the choice
on disk, so later processes reuse it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

KERNELS = ("fwd", "dq", "dkv", "dsum")
# Operand kinds: bf16/fp16 ("16bit"), fp32 on TF32 tensor cores ("tf32"), fp32 with
# full-precision FMA dots ("ieee", torch's default when TF32 is off).
KINDS = ("16bit", "tf32", "ieee")
HEAD_DIM_BUCKETS = (16, 32, 64, 128)
MAX_CANDIDATES = 4
# Query rows per program of the summary-gradient kernel: its partial sums over a
# split are added by the key programs, so each program walks a bounded number of
# query tiles (no long tail). A multiple of every BLOCK_M.
SPLIT_ROWS = 512
INTERPRET_SPLIT_ROWS = 32  # small, so the interpreter tests cross splits


@dataclass(frozen=True)
class TileConfig:
    """BLOCK_M query rows x BLOCK_N keys per step (BLOCK_S summaries per summary step)."""

    block_m: int
    block_n: int
    block_s: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_s"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1) or value > 256:
                raise ValueError(f"{name} must be a power of two in [16, 256], got {value}")
        if SPLIT_ROWS % self.block_m:
            raise ValueError(f"block_m={self.block_m} must divide SPLIT_ROWS={SPLIT_ROWS}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if not 1 <= self.num_stages <= 5:
            raise ValueError(f"num_stages must be in [1, 5], got {self.num_stages}")

    def meta(self) -> dict[str, int]:
        """Launch keywords: the block sizes plus num_warps and num_stages."""
        return dict(
            BLOCK_M=self.block_m,
            BLOCK_N=self.block_n,
            BLOCK_S=self.block_s,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )

    def label(self) -> str:
        return f"m{self.block_m}n{self.block_n}s{self.block_s}w{self.num_warps}st{self.num_stages}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TileConfig:
        return cls(**json.loads(text))


def _c(m: int, n: int, s: int, w: int, st: int) -> TileConfig:
    return TileConfig(block_m=m, block_n=n, block_s=s, num_warps=w, num_stages=st)


INTERPRET = _c(16, 16, 16, 1, 1)

# (kernel, kind, BLOCK_D) -> candidates, the pinned config first. For the key-major
# kernels (dkv, dsum) BLOCK_N is the key/summary tile and BLOCK_M the query tile
# walked; dsum's summary tile is BLOCK_S.
_CANDIDATES: dict[tuple[str, str, int], tuple[TileConfig, ...]] = {}


def _set(kernel: str, kind: str, buckets, *configs: TileConfig) -> None:
    for bucket in buckets:
        _CANDIDATES[(kernel, kind, bucket)] = configs


SMALL, LARGE = (16, 32, 64), (128,)
# -- bf16 / fp16: wgmma tiles; BLOCK_M 128 forward rows need 8 warps at D=128 --
_set("fwd", "16bit", SMALL, _c(128, 64, 16, 8, 2), _c(64, 64, 16, 4, 2), _c(128, 128, 32, 8, 2),
     _c(64, 64, 16, 4, 3))  # fmt: skip
_set("fwd", "16bit", LARGE, _c(128, 64, 16, 8, 2), _c(64, 64, 16, 4, 2), _c(128, 32, 16, 8, 2),
     _c(64, 32, 16, 4, 3))  # fmt: skip
_set("dq", "16bit", SMALL, _c(64, 64, 16, 4, 2), _c(128, 64, 16, 8, 2), _c(64, 32, 16, 4, 2),
     _c(64, 64, 16, 4, 3))  # fmt: skip
_set("dq", "16bit", LARGE, _c(64, 64, 16, 8, 2), _c(64, 32, 16, 4, 2), _c(128, 64, 16, 8, 2),
     _c(64, 64, 16, 8, 3))  # fmt: skip
_set("dkv", "16bit", SMALL, _c(64, 64, 16, 4, 2), _c(64, 128, 16, 8, 2), _c(32, 64, 16, 4, 2),
     _c(64, 64, 16, 4, 3))  # fmt: skip
_set("dkv", "16bit", LARGE, _c(64, 64, 16, 8, 2), _c(32, 64, 16, 4, 2), _c(64, 128, 16, 8, 2),
     _c(32, 64, 16, 4, 3))  # fmt: skip
_set("dsum", "16bit", (32, 64, 128), _c(64, 16, 16, 4, 2), _c(32, 16, 16, 4, 2),
     _c(128, 16, 16, 4, 2), _c(64, 16, 32, 4, 2))  # fmt: skip
_set("dsum", "16bit", (16,), _c(32, 16, 16, 4, 2), _c(64, 16, 16, 4, 1))  # 64 spills (3.6)
# -- fp32 on TF32 tensor cores: operands twice as large, so half the tiles --
_set("fwd", "tf32", SMALL, _c(64, 64, 16, 4, 2), _c(64, 32, 16, 4, 2), _c(128, 32, 16, 8, 2))
_set("fwd", "tf32", LARGE, _c(64, 32, 16, 4, 2), _c(32, 32, 16, 4, 2), _c(64, 32, 16, 8, 2))
_set("dq", "tf32", SMALL, _c(64, 32, 16, 4, 2), _c(32, 32, 16, 4, 2), _c(64, 64, 16, 4, 2))
_set("dq", "tf32", LARGE, _c(32, 32, 16, 4, 2), _c(64, 32, 16, 8, 2), _c(32, 32, 16, 4, 1))
_set("dkv", "tf32", SMALL, _c(32, 64, 16, 4, 2), _c(32, 32, 16, 4, 2), _c(64, 64, 16, 4, 2))
_set("dkv", "tf32", LARGE, _c(32, 32, 16, 4, 2), _c(32, 64, 16, 8, 2), _c(32, 32, 16, 4, 1))
_set("dsum", "tf32", SMALL + LARGE, _c(32, 16, 16, 4, 2), _c(64, 16, 16, 4, 2))
# -- fp32 "ieee": FMA dots keep whole tiles in registers; small tiles do not spill --
_set("fwd", "ieee", (16, 32), _c(16, 32, 16, 4, 1), _c(32, 32, 16, 4, 1), _c(32, 16, 16, 4, 1))
_set("fwd", "ieee", (64,), _c(16, 32, 16, 4, 1), _c(32, 32, 16, 4, 1), _c(16, 16, 16, 4, 1))
_set("fwd", "ieee", LARGE, _c(16, 16, 16, 4, 1), _c(16, 32, 16, 8, 1))
_set("dq", "ieee", (16, 32), _c(16, 32, 16, 4, 1), _c(16, 16, 16, 4, 1))
_set("dq", "ieee", (64,), _c(32, 16, 16, 4, 1), _c(16, 32, 16, 4, 1), _c(16, 16, 16, 4, 1))
_set("dq", "ieee", LARGE, _c(16, 16, 16, 8, 1), _c(16, 16, 16, 4, 1))
_set("dkv", "ieee", (16, 32), _c(16, 32, 16, 4, 1), _c(16, 16, 16, 4, 1), _c(32, 16, 16, 4, 1))
_set("dkv", "ieee", (64,), _c(16, 16, 16, 4, 1), _c(16, 32, 16, 4, 1))
_set("dkv", "ieee", LARGE, _c(16, 16, 16, 4, 1), _c(16, 16, 16, 2, 1))
_set("dsum", "ieee", SMALL + LARGE, _c(16, 16, 16, 4, 1), _c(32, 16, 16, 4, 1))


# Before Hopper (mma.sync instead of wgmma) some tiles spill: these replace the sm_90
# candidates on devices of compute capability below 9.0 (checked on sm_80).
_PRE_HOPPER: dict[tuple[str, str, int], tuple[TileConfig, ...]] = {}
for _bucket in SMALL:
    _PRE_HOPPER[("dq", "16bit", _bucket)] = (_c(32, 64, 16, 4, 2), _c(64, 32, 16, 8, 2))
    _PRE_HOPPER[("dkv", "16bit", _bucket)] = (_c(64, 32, 16, 8, 2), _c(64, 32, 16, 4, 2))
    _PRE_HOPPER[("fwd", "tf32", _bucket)] = (_c(32, 32, 16, 4, 2), _c(64, 32, 16, 4, 2))
    _PRE_HOPPER[("dkv", "tf32", _bucket)] = (_c(32, 32, 16, 4, 2), _c(32, 32, 16, 4, 1))
    _PRE_HOPPER[("dkv", "ieee", _bucket)] = (_c(16, 16, 16, 4, 1), _c(16, 16, 16, 2, 1))
_PRE_HOPPER[("fwd", "16bit", 128)] = (_c(128, 32, 16, 8, 2), _c(64, 32, 16, 4, 2))
_PRE_HOPPER[("dkv", "16bit", 128)] = (_c(64, 32, 16, 8, 2), _c(32, 64, 16, 8, 2))


def head_dim_bucket(head_dim: int) -> int:
    """BLOCK_D: the head dim rounded up to a power of two, at least 16."""
    return max(16, 1 << max(0, head_dim - 1).bit_length())


def candidates(kernel: str, kind: str, head_dim: int, arch: int = 90) -> tuple[TileConfig, ...]:
    """The autotuning candidates of `kernel` (at most MAX_CANDIDATES), pinned one first,
    for a device of compute capability `arch` (major * 10 + minor)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    key = (kernel, kind, head_dim_bucket(head_dim))
    if arch < 90 and key in _PRE_HOPPER:
        return _PRE_HOPPER[key]
    return _CANDIDATES[key]


def pinned(kernel: str, kind: str, head_dim: int, arch: int = 90) -> TileConfig:
    """The config launched by default."""
    return candidates(kernel, kind, head_dim, arch)[0]


def autotune_enabled() -> bool:
    return os.environ.get("STRETTO_AUTOTUNE") == "1"
