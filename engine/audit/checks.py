"""The audit's checks: each a small function returning `Finding` rows.

Each check is a small function returning `Finding` rows, so a test can call one on a
deliberately broken input (a checkpoint of another vocabulary, a model whose attention
sees the future, a corpus with out-of-range ids) and see it reported. `run_audit`
strings them together over real files; `stretto audit` prints the table.

A row's `result` is "ok" or "FAIL"; every FAIL is an issue. Nothing is skipped
silently: a check that cannot run (generation missing from the build, a model that
does not load) is a FAIL that says why.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stretto.engine import MusicModel
from stretto.engine.checkpoint import check_compatible, read_checkpoint
from stretto.kernels import hierarchical_attention
from stretto.kernels.testing import assert_close_to_reference, poisoned_outputs
from stretto.kernels.wha import op
from stretto.tokenizer import MidiTokenizer, TokenDataset, Vocabulary, validate
from stretto.tokenizer.corpus import read_manifest

OK, FAIL = "ok", "FAIL"
DEFAULT_LENGTHS = (512, 1024, 2048)


@dataclass(frozen=True)
class Finding:
    """One row of the audit table."""

    check: str
    mode: str
    length: str
    result: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.result == OK


def _row(check: str, ok: bool, detail: str, mode: str = "-", length: int | str = "-") -> Finding:
    return Finding(check, mode, str(length), OK if ok else FAIL, detail)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- vocabulary ------------------------------------------------------------------------
def check_vocabulary(
    vocab: Vocabulary,
    *,
    corpus_dir: str | os.PathLike | None = None,
    models: dict[str, MusicModel] | None = None,
    checkpoints: Sequence[str | os.PathLike] = (),
) -> list[Finding]:
    """The tokenizer, corpus manifest, model configs and checkpoints carry one vocabulary
    signature and size; embeddings and output heads have exactly `vocab.size` rows."""
    rows = []
    want, size = vocab.signature, vocab.size
    tok_vocab = MidiTokenizer().vocab
    same = tok_vocab.signature == want and tok_vocab.size == size
    rows.append(_row("vocabulary", same, f"tokenizer: {tok_vocab.size} ids, signature {want}"))
    if corpus_dir is not None:
        try:
            got = read_manifest(corpus_dir).get("vocabulary")
            rows.append(
                _row(
                    "vocabulary",
                    got == want,
                    "corpus manifest: same signature"
                    if got == want
                    else f"corpus manifest signature {got!r} != {want!r}",
                )
            )
        except (ValueError, OSError) as exc:
            rows.append(_row("vocabulary", False, f"corpus manifest: {_error(exc)}"))
    for mode, model in (models or {}).items():
        rows.append(_model_vocabulary(vocab, model, mode))
    for path in checkpoints:
        rows.append(_checkpoint_vocabulary(vocab, path))
    return rows


def _model_vocabulary(vocab: Vocabulary, model: MusicModel, mode: str) -> Finding:
    c = model.config
    problems = []
    if c.vocab_signature != vocab.signature:
        problems.append(f"config signature {c.vocab_signature!r} != {vocab.signature!r}")
    if c.vocab_size != vocab.size:
        problems.append(f"config vocab_size {c.vocab_size} != {vocab.size}")
    tables = {"embedding": model.embed.weight, "output head": model.head.weight}
    if model.discriminator is not None:
        tables["discriminator embedding"] = model.discriminator.embed
    for name, weight in tables.items():
        if weight.shape[0] != vocab.size:
            problems.append(f"{name} has {weight.shape[0]} rows, not {vocab.size}")
    detail = "; ".join(problems) or f"config, embedding and head: {vocab.size} rows, same signature"
    return _row("vocabulary", not problems, detail, mode=mode)


def _checkpoint_vocabulary(vocab: Vocabulary, path: str | os.PathLike) -> Finding:
    name = _short(path)
    try:
        payload = read_checkpoint(path)
        config = check_compatible(payload, vocab=vocab)
        rows = {k: v.shape[0] for k, v in payload["model"].items() if k in ("embed.weight",)}
        bad = {k: n for k, n in rows.items() if n != vocab.size}
        if bad:
            raise ValueError(f"checkpoint tensor rows {bad} != vocabulary size {vocab.size}")
    except (ValueError, OSError, KeyError) as exc:
        return _row("vocabulary", False, f"checkpoint {name}: {_error(exc)}")
    return _row("vocabulary", True, f"checkpoint {name}: same signature", mode=config.mode)


def _short(path: str | os.PathLike) -> str:
    """`folder/file`: checkpoints of one run often share a file name (last.pt)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# -- data ------------------------------------------------------------------------------
def check_corpus_ids(corpus_dir: str | os.PathLike, vocab: Vocabulary) -> Finding:
    """Every id of every shard lies in `[0, vocab.size)` (a scan of the raw shards, so a
    bad id is found even where no sampled window reaches it)."""
    try:
        manifest = read_manifest(corpus_dir)
        total, worst = 0, None
        for shard in manifest["shards"]:
            ids = np.load(Path(corpus_dir) / shard["tokens"], mmap_mode="r")
            total += ids.size
            if ids.size:
                hi = int(ids.max())
                lo = int(ids.min())
                if hi >= vocab.size or lo < 0:
                    worst = (shard["tokens"], hi if hi >= vocab.size else lo)
                    break
    except (ValueError, OSError, KeyError) as exc:
        return _row("data ids", False, _error(exc))
    if worst is not None:
        return _row("data ids", False, f"{worst[0]} holds id {worst[1]} outside [0, {vocab.size})")
    if total == 0:
        return _row("data ids", False, "the corpus holds no tokens")
    files = len(manifest["files"])
    return _row("data ids", True, f"{total} ids in {files} files, all in [0, {vocab.size})")


def check_windows(
    dataset: TokenDataset, vocab: Vocabulary, *, sample: int = 4, out_dir: Path | None = None
) -> Finding:
    """A sample of windows: shape `[N]`, dtypes long/bool, ids in range, each decodes to a
    MIDI file (written to `out_dir`, or a temporary folder)."""
    n = dataset.seq_len
    if len(dataset) == 0:
        return _row("data windows", False, "no windows", length=n)
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(sample, len(dataset))).astype(int))
    tok = MidiTokenizer()
    notes = 0
    with contextlib.ExitStack() as stack:
        folder = out_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for i in picks:
            try:
                item = dataset[int(i)]
                ids, mask = item["input_ids"], item["attention_mask"]
                if tuple(ids.shape) != (n,) or tuple(mask.shape) != (n,):
                    raise ValueError(f"shape {tuple(ids.shape)}, expected ({n},)")
                if ids.dtype != torch.long or mask.dtype != torch.bool:
                    raise ValueError(f"dtypes {ids.dtype}/{mask.dtype}, expected int64/bool")
                lo, hi = int(ids.min()), int(ids.max())
                if lo < 0 or hi >= vocab.size:
                    raise ValueError(f"id {hi if hi >= vocab.size else lo} outside the vocabulary")
                path = tok.decode_to_file(ids[mask].numpy(), folder / f"window-{n}-{i}.mid")
                if path.stat().st_size == 0:
                    raise ValueError("decoded to an empty file")
                notes += tok.decode(ids[mask].numpy()).note_num()
            except (ValueError, IndexError, OSError, RuntimeError) as exc:
                return _row("data windows", False, f"window {i}: {_error(exc)}", length=n)
    return _row(
        "data windows",
        True,
        f"{len(picks)} of {len(dataset)} windows: [{n}] int64, decode to MIDI ({notes} notes)",
        length=n,
    )


def pick_batch(dataset: TokenDataset, batch_size: int, *, sample: int = 16) -> dict:
    """The `batch_size` fullest of up to `sample` evenly spaced windows: `[B, N]` tensors."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(sample, len(dataset))).astype(int))
    items = [dataset[int(i)] for i in picks]
    items.sort(key=lambda it: -int(it["attention_mask"].sum()))
    items = items[:batch_size]
    return {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "attention_mask")}


# -- model checks ----------------------------------------------------------------------
def _finite_grads(model: MusicModel) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def train_step(model: MusicModel, batch: dict, step: int = 0) -> dict[str, float]:
    """One forward, loss and backward (both losses in vae_gan); raises on a non-finite
    loss or gradient. Returns the loss terms as floats."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model.loss(batch, step=step)
    terms = {k: float(v.detach()) for k, v in out.items()}
    out["loss"].backward()
    if model.discriminator is not None:
        d = model.discriminator_loss(batch)
        terms["disc_loss"] = float(d["loss"].detach())
        d["loss"].backward()
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite loss terms {bad}")
    name = _finite_grads(model)
    if name is not None:
        raise FloatingPointError(f"non-finite gradient in {name}")
    return terms


def check_train_step(model: MusicModel, batch: dict) -> Finding:
    """Forward, loss and backward succeed with finite losses and gradients."""
    mode, n = model.config.mode, batch["input_ids"].shape[1]
    try:
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"])
        b = batch["input_ids"].shape[0]
        if tuple(logits.shape) != (b, n, model.config.vocab_size):
            raise ValueError(f"logits shape {tuple(logits.shape)}")
        terms = train_step(model, batch)
    except (ValueError, RuntimeError, FloatingPointError, TypeError) as exc:
        return _row("train step", False, _error(exc), mode, n)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in terms.items() if k in ("loss", "disc_loss"))
    return _row("train step", True, f"forward/loss/backward finite: {shown}", mode, n)


def _leak(model: MusicModel, ids: torch.Tensor, z: torch.Tensor | None, cut: int) -> float:
    """max |logits[:, :cut] change| when every token from `cut` on is replaced."""
    vocab = Vocabulary()
    changed = ids.clone()
    g = torch.Generator().manual_seed(1)
    # Replacements from the NOTE_ON family: real tokens, never PAD.
    repl = torch.randint(
        vocab.NOTE_ON.start, vocab.NOTE_ON.stop, changed[:, cut:].shape, generator=g
    )
    changed[:, cut:] = repl.to(ids.device, ids.dtype)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        a = model(ids, mask, z=z)
        b = model(changed, mask, z=z)
    return float((a[:, :cut] - b[:, :cut]).abs().max()), float(
        (a[:, cut:] - b[:, cut:]).abs().max()
    )


def check_causality(model: MusicModel, ids: torch.Tensor, *, tol: float = 1e-4) -> Finding:
    """Changing the tokens from position N/2 on leaves the logits before it unchanged.

    The vae modes are checked with a fixed z: their encoder reads the whole sequence by
    design, the decoder (what generation runs) must be causal given z.
    """
    mode, n = model.config.mode, ids.shape[1]
    model.eval()
    z = None
    if model.encoder is not None:
        z = torch.randn(
            ids.shape[0], model.config.latent_dim, generator=torch.Generator().manual_seed(0)
        )
        z = z.to(ids.device)
    cut = n // 2
    try:
        past, future = _leak(model, ids, z, cut)
    except (ValueError, RuntimeError) as exc:
        return _row("causality", False, _error(exc), mode, n)
    if not past <= tol:  # also catches NaN
        return _row(
            "causality",
            False,
            f"tokens from {cut} on change earlier logits by {past:.2e} (> {tol:g}): "
            "attention sees the future",
            mode,
            n,
        )
    if future == 0.0:
        return _row("causality", False, "changed tokens did not change any logit", mode, n)
    return _row("causality", True, f"logits before {cut} unchanged (max diff {past:.1e})", mode, n)


def check_learning(model: MusicModel, batch: dict, *, steps: int = 6, lr: float = 3e-3) -> Finding:
    """A few Adam steps on one real batch lower its loss (same noise before and after)."""
    mode, n = model.config.mode, batch["input_ids"].shape[1]

    def loss() -> float:
        with torch.no_grad(), _fixed_seed(1234):
            return float(model.loss(batch, step=0)["loss"])

    try:
        model.train()
        before = loss()
        opt = torch.optim.Adam(model.generator_parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            model.loss(batch, step=0)["loss"].backward()
            opt.step()
        after = loss()
    except (ValueError, RuntimeError) as exc:
        return _row("learning", False, _error(exc), mode, n)
    ok = after < before
    detail = f"loss {before:.3f} -> {after:.3f} after {steps} steps"
    return _row("learning", ok, detail if ok else detail + ": did not decrease", mode, n)


@contextlib.contextmanager
def _fixed_seed(seed: int) -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


# -- generation ------------------------------------------------------------------------
def check_generation(
    model: MusicModel, *, max_new_tokens: int = 256, out_dir: Path | None = None
) -> Finding:
    """The model generates a sequence that passes `validate` and decodes to a MIDI file
    with notes."""
    mode = model.config.mode
    try:
        model.eval()
        ids = _generate_ids(model, max_new_tokens)
        problems = validate(ids)
        if problems:
            first = problems[0] if isinstance(problems, list | tuple) else problems
            return _row("generation", False, f"{len(ids)} ids fail validate: {first}", mode)
        tok = MidiTokenizer()
        with contextlib.ExitStack() as stack:
            folder = out_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            path = tok.decode_to_file(ids, folder / f"generated-{mode}.mid")
            notes = MidiTokenizer().decode(ids).note_num()
            if notes == 0:
                return _row("generation", False, f"{len(ids)} ids decode to no notes", mode)
            size = path.stat().st_size
    except (ValueError, RuntimeError, TypeError) as exc:
        return _row("generation", False, _error(exc), mode)
    return _row("generation", True, f"{len(ids)} ids, valid, {notes} notes ({size} B MIDI)", mode)


def _generate_ids(model: MusicModel, max_new_tokens: int) -> np.ndarray:
    out = model.generate(max_new_tokens=max_new_tokens, seed=0)
    if isinstance(out, dict):
        out = out.get("ids", out.get("input_ids"))
    out = torch.as_tensor(out)
    if out.dim() == 2:
        out = out[0]
    return out.detach().cpu().numpy().astype(np.int64)


# -- kernels ---------------------------------------------------------------------------
def check_kernels(device: torch.device | str, backend: str = "auto") -> Finding:
    """The active attention backend against the float64 reference on one small random
    case (B1 H2 N77 D16, window 8, block 4, causal, padded tail), output and gradients,
    under `stretto.kernels.testing.assert_close_to_reference`."""

    device = torch.device(device)
    active = backend
    if backend == "auto":
        active = "triton" if device.type == "cuda" and op.fused_import_error() is None else "torch"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 77, 16, generator=g) for _ in range(3))
    up = torch.randn(1, 2, 77, 16, generator=g)
    mask = torch.ones(1, 77, dtype=torch.bool)
    mask[0, 70:] = False

    def run(name: str, dtype: torch.dtype):
        xs = [x.to(device, dtype).detach().clone().requires_grad_(True) for x in (q, k, v)]
        o = hierarchical_attention(
            *xs, window=8, block=4, key_padding_mask=mask.to(device), backend=name
        )
        o.backward(up.to(device, dtype))
        return [o.detach()] + [x.grad for x in xs]

    try:
        with poisoned_outputs():
            fast = run(active, torch.float32)
        plain = run("reference", torch.float32)
        ref = run("reference", torch.float64)
        for name, f, p, r in zip(("o", "dq", "dk", "dv"), fast, plain, ref, strict=True):
            assert_close_to_reference(f, p, r, name=name)
    except (AssertionError, ValueError, RuntimeError, NotImplementedError) as exc:
        return _row("kernels", False, f"backend {active} on {device.type}: {_error(exc)}")
    return _row(
        "kernels", True, f"backend {active} on {device.type}: o, dq, dk, dv within tolerance"
    )


# -- resources -------------------------------------------------------------------------
class _PeakRss:
    """Peak resident memory above the start, sampled every millisecond from /proc (Linux);
    elsewhere the process high-water mark from getrusage (0 when it did not rise)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").is_file()
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        if self._proc:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> _PeakRss:
        _release_free_heap()
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)


def _release_free_heap() -> None:
    """Hand glibc's cached free memory back to the OS, so the RSS rise that follows is
    this step's own and not hidden by pages an earlier step left mapped."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_train_step(model: MusicModel, batch: dict) -> dict[str, float]:
    """Measured peak memory (bytes) and tokens/s of one train step of `model` on `batch`:
    `torch.cuda.max_memory_allocated` above the start on CUDA, peak RSS above the start
    on a CPU."""
    device = batch["input_ids"].device
    tokens = int(batch["attention_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        train_step(model, batch)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with _PeakRss() as rss:
            start = time.perf_counter()
            train_step(model, batch)
            seconds = time.perf_counter() - start
        peak = rss.delta
    return {"peak_bytes": float(peak), "seconds": seconds, "tokens_per_s": tokens / seconds}


def check_resources(model: MusicModel, batch: dict) -> Finding:
    mode, n = model.config.mode, batch["input_ids"].shape[1]
    try:
        m = measure_train_step(model, batch)
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        return _row("resources", False, _error(exc), mode, n)
    where = "CUDA allocated" if batch["input_ids"].is_cuda else "RSS"
    detail = (
        f"train step {m['seconds'] * 1e3:.0f} ms, {m['tokens_per_s']:,.0f} tokens/s, "
        f"peak {where} +{m['peak_bytes'] / 2**20:.1f} MiB"
    )
    return _row("resources", True, detail, mode, n)
