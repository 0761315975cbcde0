"""Held-out data is held out by file: the split of a corpus into training and validation
files, and the `split.json` a run writes so that it can be read back.

Windows of one file overlap and share its material, so a split by window leaks; this
one never puts two windows of a file on different sides.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import read_manifest
from .dataset import TokenDataset

SPLIT_FILE = "split.json"


def split_files(
    corpus_dir: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(train, validation) file indices of a corpus (indices into its manifest's files).

    The validation side has `round(val_fraction * files)` files, at least one when the
    corpus has two or more files and `val_fraction > 0`; which files is a permutation
    drawn from `seed`, so a split is reproducible. Both lists are sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} is outside [0, 1)")
    n = len(read_manifest(Path(corpus_dir))["files"])
    if n == 0:
        raise ValueError(f"the corpus {corpus_dir} holds no file")
    n_val = 0 if n < 2 or val_fraction == 0 else min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(f) for f in order[n_val:]), sorted(int(f) for f in order[:n_val])


@dataclass(frozen=True)
class FileSplit:
    """Training and validation files of one corpus (manifest indices)."""

    corpus: Path
    train: list[int]
    validation: list[int]
    val_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def make(
        cls, corpus: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0
    ) -> FileSplit:
        train, val = split_files(corpus, val_fraction=val_fraction, seed=seed)
        return cls(Path(corpus), train, val, val_fraction, seed)

    def names(self, files: list[int]) -> list[str]:
        """The source names of manifest files `files`."""
        sources = [f["source"] for f in read_manifest(self.corpus)["files"]]
        return [sources[i] for i in files]

    def datasets(
        self, seq_len: int, *, val_stride: int | None = None
    ) -> tuple[TokenDataset, TokenDataset | None]:
        """`TokenDataset`s of the training and (None when empty) validation files; the
        validation windows step by `val_stride` (default half a window, as training)."""
        train = TokenDataset(self.corpus, seq_len, files=self.train)
        if len(train) == 0:
            raise ValueError(f"{self.corpus} holds no training windows")
        if not self.validation:
            return train, None
        val = TokenDataset(self.corpus, seq_len, files=self.validation, stride=val_stride)
        return train, val

    def write(self, path: str | os.PathLike) -> Path:
        """`split.json`: the corpus, the fraction and seed, and each side's file names."""
        path = Path(path)
        payload = {
            "corpus": str(self.corpus),
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "train": self.names(self.train),
            "validation": self.names(self.validation),
        }
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike, corpus: str | os.PathLike | None = None) -> FileSplit:
        """A written split, its names mapped onto `corpus` (default: the one it names)."""
        payload = json.loads(Path(path).read_text())
        corpus = Path(corpus or payload["corpus"])
        index = {f["source"]: i for i, f in enumerate(read_manifest(corpus)["files"])}
        missing = [n for n in payload["train"] + payload["validation"] if n not in index]
        if missing:
            raise ValueError(f"{path} names {missing[0]!r}, which {corpus} does not hold")
        return cls(
            corpus,
            sorted(index[n] for n in payload["train"]),
            sorted(index[n] for n in payload["validation"]),
            float(payload["val_fraction"]),
            int(payload["seed"]),
        )
