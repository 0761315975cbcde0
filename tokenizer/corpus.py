"""`build_corpus`: MIDI files -> token shards (uint16 .npy + offsets) and a JSON manifest.

Layout of a corpus folder:

    manifest.json              vocabulary signature, config, shards, files, bad files
    shard-00000.npy            uint16 ids of many files, back to back
    shard-00000.offsets.npy    int64 [files + 1]: file j is ids[offsets[j]:offsets[j+1]]

Every file is written to a temporary name and renamed into place, and the manifest is
rewritten (also atomically) after each shard, so an interrupted build leaves a valid
corpus; running the build again skips what the manifest already holds (and removes
temporary files a killed build left). One build writes to a folder at a time.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import TokenizerConfig
from .midi import MidiError, MidiTokenizer
from .vocabulary import Vocabulary

MANIFEST = "manifest.json"
FORMAT = "stretto-corpus-v1"
MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")
DEFAULT_SHARD_TOKENS = 1 << 22  # 4 Mi ids = 8 MiB per shard


@dataclass
class CorpusReport:
    """What one `build_corpus` run did. `bad` lists (source, reason) of refused files."""

    out_dir: Path
    files: int = 0
    tokens: int = 0
    added: int = 0
    skipped: int = 0
    shards: int = 0
    seconds: float = 0.0
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files_per_second(self) -> float:
        return (self.added + len(self.bad)) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"{self.out_dir}: {self.files} files, {self.tokens} tokens in {self.shards} shards "
            f"({self.added} added, {self.skipped} already there, {len(self.bad)} refused, "
            f"{self.seconds:.1f} s)"
        ]
        lines += [f"  refused {src}: {reason}" for src, reason in self.bad]
        return "\n".join(lines)


def find_midi_files(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Folders (searched recursively for .mid/.midi/.kar/.smf) and files, sorted, unique."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(
                p.resolve()
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES
            )
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(found)


def read_manifest(corpus_dir: str | os.PathLike) -> dict:
    """The manifest of a corpus folder; ValueError when it is absent or not a corpus."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{corpus_dir} is not a token corpus: no {MANIFEST}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def check_vocabulary(manifest: dict, where: str | os.PathLike) -> None:
    """ValueError when a corpus was built with another vocabulary than this one."""
    want = Vocabulary().signature
    if manifest.get("vocabulary") != want:
        raise ValueError(
            f"{where} was tokenized with vocabulary {manifest.get('vocabulary')!r}, "
            f"this code uses {want!r}: rebuild the corpus"
        )


def build_corpus(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: bool = True,
    config: TokenizerConfig | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    shard: tuple[int, int] | None = None,
) -> CorpusReport:
    """Tokenize MIDI files into a corpus folder, in parallel processes; resumable.

    `inputs`: a folder, a file, or a list of them. `workers`: processes (None: one per
    CPU; 1: this process). Files the manifest already holds (same path, size and
    sha256) are skipped; files that cannot be tokenized, and files with no note in the
    pitch range (they would encode as START TEMPO END), are listed with their reason in
    the report and the manifest, never abort the build. A progress bar shows only on a terminal.

    `shard=(i, n)`: tokenize only part i of n of the sorted input list (contiguous
    slices `[i*F//n, (i+1)*F//n)` of the F files), so n machines can build one corpus
    and `merge_corpora` joins the parts back in the unsharded file order. The part is
    recorded in the manifest; resuming a folder with another part is refused.
    """
    start_time = time.perf_counter()
    config = config if config is not None else TokenizerConfig()
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens={shard_tokens} must be positive")
    if shard is not None:
        shard = _check_shard(shard)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(out, config)
    if shard is not None or "part" in manifest:
        _set_part(manifest, shard, out)
    for stale_tmp in out.glob(".*.tmp-*"):  # left by a build killed mid-write
        stale_tmp.unlink(missing_ok=True)
    report = CorpusReport(out_dir=out)

    known = {e["source"]: e for e in manifest["files"] + manifest["bad"]}
    todo: list[Path] = []
    for path in select_part(find_midi_files(inputs), shard):
        entry = known.get(str(path))
        if (
            entry is not None
            and entry["size"] == path.stat().st_size
            and entry["sha256"] == _sha256(path.read_bytes())
        ):
            report.skipped += 1
            continue
        todo.append(path)
    # a changed file is tokenized again; its old entry goes (its ids stay in the shard)
    stale = {str(p) for p in todo}
    manifest["files"] = [e for e in manifest["files"] if e["source"] not in stale]
    manifest["bad"] = [e for e in manifest["bad"] if e["source"] not in stale]

    writer = _ShardWriter(out, manifest, shard_tokens)
    bar = tqdm(
        total=len(todo),
        unit="file",
        desc="tokenize",
        disable=not (progress and sys.stderr.isatty()),
    )
    try:
        for result in _tokenize_all(todo, config, workers):
            if result["ids"] is None:
                writer.add_bad(result)
                report.bad.append((result["source"], result["reason"]))
            else:
                writer.add(result)
                report.added += 1
            bar.update(1)
        writer.flush(always=True)
    finally:
        bar.close()

    report.files = len(manifest["files"])
    report.tokens = sum(e["num_tokens"] for e in manifest["files"])
    report.shards = len(manifest["shards"])
    known_bad = {src for src, _ in report.bad}
    report.bad += [
        (e["source"], e["reason"]) for e in manifest["bad"] if e["source"] not in known_bad
    ]
    report.seconds = time.perf_counter() - start_time
    return report


def _open_manifest(out: Path, config: TokenizerConfig) -> dict:
    if not (out / MANIFEST).is_file():
        return {
            "format": FORMAT,
            "vocabulary": Vocabulary().signature,
            "config": config.to_dict(),
            "dtype": "uint16",
            "shards": [],
            "files": [],
            "bad": [],
        }
    manifest = read_manifest(out)
    check_vocabulary(manifest, out)
    if TokenizerConfig.from_dict(manifest["config"]) != config:
        raise ValueError(
            f"{out} was built with config {manifest['config']}, not {config.to_dict()}: "
            "use another folder or the same config"
        )
    return manifest


class _ShardWriter:
    """Collects tokenized files in input order and writes a shard per `shard_tokens` ids."""

    def __init__(self, out: Path, manifest: dict, shard_tokens: int):
        self.out, self.manifest, self.shard_tokens = out, manifest, shard_tokens
        self.pending: list[dict] = []
        self.pending_bad: list[dict] = []
        self.pending_tokens = 0

    def add(self, result: dict) -> None:
        self.pending.append(result)
        self.pending_tokens += result["ids"].size
        if self.pending_tokens >= self.shard_tokens:
            self.flush()

    def add_bad(self, result: dict) -> None:
        self.pending_bad.append({k: result[k] for k in ("source", "size", "sha256", "reason")})

    def flush(self, always: bool = False) -> None:
        if not (self.pending or self.pending_bad or always):
            return
        if self.pending:
            index = len(self.manifest["shards"])
            name = f"shard-{index:05d}"
            ids = np.concatenate([r["ids"] for r in self.pending]).astype(np.uint16)
            sizes = np.array([r["ids"].size for r in self.pending], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            _atomic_save(self.out / f"{name}.npy", ids)
            _atomic_save(self.out / f"{name}.offsets.npy", offsets)
            self.manifest["shards"].append(
                {
                    "tokens": f"{name}.npy",
                    "offsets": f"{name}.offsets.npy",
                    "num_files": len(self.pending),
                    "num_tokens": int(ids.size),
                }
            )
            for j, r in enumerate(self.pending):
                self.manifest["files"].append(
                    {
                        "source": r["source"],
                        "size": r["size"],
                        "sha256": r["sha256"],
                        "shard": index,
                        "index": j,
                        "num_tokens": int(r["ids"].size),
                        "dropped_pitch": r["dropped_pitch"],
                    }
                )
        self.manifest["bad"].extend(self.pending_bad)
        _atomic_write_text(self.out / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        self.pending, self.pending_bad, self.pending_tokens = [], [], 0


def _tokenize_all(paths: list[Path], config: TokenizerConfig, workers: int | None):
    """Results in input order, from a process pool (or this process for one worker)."""
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    workers = min(workers, max(len(paths), 1))
    args = [(str(p), config.to_dict()) for p in paths]
    if workers == 1:
        yield from (_tokenize_one(a) for a in args)
        return
    methods = multiprocessing.get_all_start_methods()
    # fork starts workers in milliseconds with numba's compiled code already loaded
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(
            _tokenize_one, args, chunksize=max(1, min(16, len(args) // (8 * workers)))
        )


_WORKER_TOKENIZERS: dict[str, MidiTokenizer] = {}


def _tokenize_one(arg: tuple[str, dict]) -> dict:
    source, config_dict = arg
    key = json.dumps(config_dict, sort_keys=True)
    tok = _WORKER_TOKENIZERS.get(key)
    if tok is None:
        tok = _WORKER_TOKENIZERS[key] = MidiTokenizer(TokenizerConfig.from_dict(config_dict))
    result = {
        "source": source,
        "size": 0,
        "sha256": "",
        "ids": None,
        "reason": "",
        "dropped_pitch": 0,
    }
    try:
        size = os.path.getsize(source)
        result["size"] = size
        if size > tok.config.max_file_bytes:
            raise MidiError(
                source, f"{size} bytes, over the byte limit (TokenizerConfig.max_file_bytes)"
            )
        data = Path(source).read_bytes()
        result["sha256"] = _sha256(data)
        try:
            result["ids"] = tok.encode(data)
        except MidiError as exc:
            raise MidiError(source, exc.reason) from None
        if tok.last_encode_stats.notes == 0:
            # START TEMPO END: no music to learn from
            raise MidiError(source, "no note in the vocabulary's pitch range 21..108")
        result["dropped_pitch"] = tok.last_encode_stats.dropped_pitch
    except MidiError as exc:
        result["reason"] = exc.reason
    except OSError as exc:
        result["reason"] = f"cannot read: {exc.strerror or exc}"
    except Exception as exc:  # a crash in one file must not end the build: report it
        result["reason"] = f"unexpected {type(exc).__name__}: {exc}"
    return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- sharded builds ---------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> `(i, n)` with 0 <= i < n; ValueError naming the text otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r} is not of the form i/n (e.g. 0/4)") from None
    return _check_shard((i, n))


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard={shard!r} must be a pair (i, n)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard=({i}, {n}): need n >= 1 and 0 <= i < n")
    return i, n


def select_part(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Part i of n of a sorted file list: the contiguous slice [i*F//n, (i+1)*F//n)."""
    if shard is None:
        return files
    i, n = shard
    return files[i * len(files) // n : (i + 1) * len(files) // n]


def _set_part(manifest: dict, shard: tuple[int, int] | None, out: Path) -> None:
    part = None if shard is None else {"index": shard[0], "count": shard[1]}
    have = manifest.get("part")
    if (manifest["files"] or manifest["bad"]) and have != part:
        raise ValueError(
            f"{out} holds {_part_name(have)} of a build, not {_part_name(part)}: "
            "use another folder or the same --shard"
        )
    if part is None:
        manifest.pop("part", None)
    else:
        manifest["part"] = part


def _part_name(part: dict | None) -> str:
    return "the whole corpus" if part is None else f"part {part['index']}/{part['count']}"


def merge_corpora(
    corpus_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike
) -> CorpusReport:
    """Join corpus folders (the parts of a sharded build, or any corpora) into `out_dir`.

    All inputs must have this code's vocabulary signature and one tokenizer config;
    a file may appear in only one of them. Parts of one sharded build (manifest
    `part`) are joined in part order, whatever order they are given in, so the result
    lists files in the order an unsharded build would; other corpora keep the given
    order. Shards are copied (renumbered), then the manifest is written last and
    atomically. `out_dir` must be new or empty.
    """
    start_time = time.perf_counter()
    dirs = [Path(d) for d in corpus_dirs]
    if not dirs:
        raise ValueError("merge_corpora needs at least one corpus folder")
    manifests = []
    for d in dirs:
        m = read_manifest(d)
        check_vocabulary(m, d)
        manifests.append(m)
    first = manifests[0]
    for d, m in zip(dirs[1:], manifests[1:], strict=True):
        if m["vocabulary"] != first["vocabulary"]:
            raise ValueError(
                f"vocabulary signatures differ: {dirs[0]} has {first['vocabulary']!r}, "
                f"{d} has {m['vocabulary']!r}"
            )
        if m["config"] != first["config"]:
            raise ValueError(
                f"tokenizer configs differ: {dirs[0]} has {first['config']}, {d} has {m['config']}"
            )
        if m.get("dtype") != first.get("dtype"):
            raise ValueError(f"dtypes differ: {first.get('dtype')!r} vs {m.get('dtype')!r} in {d}")
    parts = [m.get("part") for m in manifests]
    if all(parts):
        counts = {p["count"] for p in parts}
        indices = [p["index"] for p in parts]
        if len(counts) != 1 or len(set(indices)) != len(indices):
            raise ValueError(
                "the folders are not distinct parts of one sharded build: parts "
                + ", ".join(f"{p['index']}/{p['count']}" for p in parts)
            )
        order = sorted(range(len(dirs)), key=lambda k: indices[k])
        dirs = [dirs[k] for k in order]
        manifests = [manifests[k] for k in order]

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"merge target {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    merged = {k: v for k, v in first.items() if k not in ("part", "shards", "files", "bad")}
    merged.update(shards=[], files=[], bad=[])
    seen: dict[str, Path] = {}
    report = CorpusReport(out_dir=out)
    for d, m in zip(dirs, manifests, strict=True):
        for e in m["files"] + m["bad"]:
            if e["source"] in seen:
                raise ValueError(f"{e['source']} is in both {seen[e['source']]} and {d}")
            seen[e["source"]] = d
        base = len(merged["shards"])
        for k, s in enumerate(m["shards"]):
            name = f"shard-{base + k:05d}"
            _atomic_copy(d / s["tokens"], out / f"{name}.npy")
            _atomic_copy(d / s["offsets"], out / f"{name}.offsets.npy")
            merged["shards"].append(
                {**s, "tokens": f"{name}.npy", "offsets": f"{name}.offsets.npy"}
            )
        merged["files"] += [{**e, "shard": e["shard"] + base} for e in m["files"]]
        merged["bad"] += [dict(e) for e in m["bad"]]
    _atomic_write_text(out / MANIFEST, json.dumps(merged, indent=1) + "\n")
    report.files = len(merged["files"])
    report.tokens = sum(e["num_tokens"] for e in merged["files"])
    report.shards = len(merged["shards"])
    report.added = report.files
    report.bad = [(e["source"], e["reason"]) for e in merged["bad"]]
    report.seconds = time.perf_counter() - start_time
    return report


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
