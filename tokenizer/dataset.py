"""`TokenDataset`: fixed-length windows over a token corpus, each decodable on its own."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ._windows import build_window, snap_to_boundary
from .corpus import check_vocabulary, read_manifest
from .vocabulary import Vocabulary


class TokenDataset(Dataset):
    """Windows of `seq_len` ids over the memory-mapped shards of a `build_corpus` folder.

    Item i is `{"input_ids": LongTensor[seq_len], "attention_mask": BoolTensor[seq_len]}`,
    right-padded with PAD (mask False on padding).

    Windows and coverage: window k of a file of n ids starts at the last instant
    boundary (a TIME_SHIFT, or the file start) at or before `k * stride`, so it never
    cuts an event or an instant in two. Except for the file's first window it opens
    with a state prefix that restores, at time 0, what the decoder would know there:
    START, the tempo, SUSTAIN_ON of pedals held down, NOTE_ON of notes still sounding
    (re-struck, oldest first, as many as `max_prefix` allows) and the current
    INSTRUMENT and VELOCITY; then come the file's ids from the start, as many as fit,
    never ending on a dangling INSTRUMENT/VELOCITY. Every window therefore decodes
    alone into the notes it shows. A file gives `ceil(n / stride)` windows. With
    `stride <= seq_len - max_prefix - (longest instant)`, every id of every file lies in
    some window; the default `stride = seq_len // 2` satisfies this on real music.

    Files: `files` (indices into the corpus manifest's file list, e.g. one side of
    `split_files`) restricts the windows to those files; `self.files` holds the indices
    kept and `self.sources` their source names, in the same order.

    Memory: the shards are memory-mapped (opened lazily, per DataLoader worker) and the
    index holds three int64 numbers per file, never one per window.
    """

    def __init__(
        self,
        corpus_dir: str | os.PathLike,
        seq_len: int,
        *,
        stride: int | None = None,
        max_prefix: int | None = None,
        files: Sequence[int] | None = None,
    ):
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be at least 2")
        stride = seq_len // 2 if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride={stride} must be at least 1")
        max_prefix = max(8, seq_len // 4) if max_prefix is None else max_prefix
        if not 0 <= max_prefix < seq_len:
            raise ValueError(f"max_prefix={max_prefix} is outside 0..{seq_len - 1}")
        self.corpus_dir = Path(corpus_dir)
        manifest = read_manifest(self.corpus_dir)
        check_vocabulary(manifest, self.corpus_dir)
        self.seq_len, self.stride, self.max_prefix = seq_len, stride, max_prefix
        self.pad = Vocabulary().PAD
        self._shard_paths = [self.corpus_dir / s["tokens"] for s in manifest["shards"]]
        offsets = [np.load(self.corpus_dir / s["offsets"]) for s in manifest["shards"]]
        every = manifest["files"]
        if files is None:
            files = range(len(every))
        self.files = [int(f) for f in files]
        bad = [f for f in self.files if not 0 <= f < len(every)]
        if bad:
            raise ValueError(f"file index {bad[0]} is outside the corpus's 0..{len(every) - 1}")
        files = [every[f] for f in self.files]
        self.file_shard = np.array([f["shard"] for f in files], dtype=np.int64)
        self.file_start = np.array(
            [offsets[f["shard"]][f["index"]] for f in files], dtype=np.int64
        ).reshape(-1)
        self.file_len = np.array([f["num_tokens"] for f in files], dtype=np.int64).reshape(-1)
        self.sources = [f["source"] for f in files]
        per_file = -(-self.file_len // stride)  # ceil
        self.cum_windows = np.concatenate([[0], np.cumsum(per_file)]).astype(np.int64)
        self._shards: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.cum_windows[-1])

    def _position(self, index: int) -> tuple[int, int]:
        """(f, k): window `index` (negative counts from the end) is window k of file f,
        f a position in `self.files`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} is outside 0..{len(self) - 1}")
        index %= len(self)
        f = int(np.searchsorted(self.cum_windows, index, side="right") - 1)
        return f, index - int(self.cum_windows[f])

    def _window(self, index: int) -> tuple[int, int, np.ndarray, int, int]:
        """(f, start, window ids, n_real, stop) of window `index`."""
        f, k = self._position(index)
        ids = self.file_ids(f)
        start = int(snap_to_boundary(ids, k * self.stride))
        window, n_real, stop = build_window(ids, start, self.seq_len, self.max_prefix, self.pad)
        return f, start, window, int(n_real), int(stop)

    def file_of(self, index: int) -> int:
        """The manifest index of the file window `index` comes from."""
        return self.files[self._position(index)[0]]

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in this dataset's files: int64 `[vocabulary size]`."""
        counts = np.zeros(Vocabulary().size, dtype=np.int64)
        for f in range(len(self.files)):
            counts += np.bincount(self.file_ids(f), minlength=counts.size)
        return counts

    def file_ids(self, f: int) -> np.ndarray:
        """The uint16 ids of file `f` (a view into its memory-mapped shard)."""
        if self._shards is None:
            self._shards = [np.load(p, mmap_mode="r") for p in self._shard_paths]
        start = self.file_start[f]
        return np.asarray(self._shards[self.file_shard[f]][start : start + self.file_len[f]])

    def locate(self, index: int) -> tuple[int, int, int, int]:
        """(file, start, stop, n_real) of window `index`: it copies ids[start:stop] of that
        file after a prefix, n_real ids in all. `file` is a position in `self.files` (the
        argument of `file_ids`), not a manifest index (see `file_of`)."""
        f, start, _, n_real, stop = self._window(index)
        return f, start, stop, n_real

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        _, _, window, n_real, _ = self._window(index)
        mask = np.arange(self.seq_len) < n_real
        return {"input_ids": torch.from_numpy(window), "attention_mask": torch.from_numpy(mask)}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = None  # each DataLoader worker maps the shards itself
        return state
