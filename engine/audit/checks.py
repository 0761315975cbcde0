"""The audit's structural checks: each a small function returning `Finding` rows.

Data (vocabulary signatures, ids, windows), the kernels against their reference, and
per model: a train step, how memory grows with the length, causality, whether a fresh
copy can learn, and whether cached decoding equals the full forward. Each can fail, and
a test plants the fault each one is for. The checks of trained models (held-out loss,
the latent's use, the discriminator, generation) are in `quality.py`.

A row's `result` is "ok" or "FAIL"; every FAIL is an issue, and a check that cannot run
(a model that does not load) is a FAIL that says why.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stretto.engine import MusicModel
from stretto.engine.checkpoint import check_compatible, read_checkpoint
from stretto.kernels import hierarchical_attention
from stretto.kernels.testing import assert_close_to_reference, poisoned_outputs
from stretto.kernels.wha import op
from stretto.tokenizer import MidiTokenizer, TokenDataset, Vocabulary
from stretto.tokenizer.corpus import check_vocabulary, read_manifest

OK, FAIL = "ok", "FAIL"
DEFAULT_LENGTHS = (512, 1024, 2048)
# learning: a fresh copy, 40 Adam steps at LEARNING_LR on one batch, must lower its loss
# by at least LEARNING_DROP of the starting value (a tiny model reaches ~60% on music).
LEARNING_STEPS, LEARNING_LR, LEARNING_DROP = 40, 1e-3, 0.3
# resources: from the shortest to the longest length, the largest tensor a train step
# allocates may grow at most this much faster than the length (attention that builds
# N x N scores grows N times faster).
GROWTH_SLACK = 1.25


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
def audit_vocabulary(
    vocab: Vocabulary,
    *,
    corpus_dir: str | os.PathLike | None = None,
    checkpoints: Sequence[str | os.PathLike] = (),
) -> list[Finding]:
    """Rows: the corpus manifest (judged by the tokenizer's own `check_vocabulary`, the
    check every dataset makes) and every checkpoint carry this vocabulary's signature,
    and a checkpoint's embedding has `vocab.size` rows (fresh models take their size
    from the same `Vocabulary`, so there is nothing to compare for them)."""
    rows = []
    if corpus_dir is not None:
        try:
            check_vocabulary(read_manifest(corpus_dir), corpus_dir)
            rows.append(_row("vocabulary", True, "corpus manifest: same signature"))
        except (ValueError, OSError) as exc:
            rows.append(_row("vocabulary", False, f"corpus manifest: {_error(exc)}"))
    for path in checkpoints:
        rows.append(_checkpoint_vocabulary(vocab, path))
    return rows


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


@contextlib.contextmanager
def _left_as_found(model: MusicModel):
    """Whatever runs inside leaves `model` as it was: its buffers (a vae's
    aggregate-posterior moments, which every training-mode encoding moves), its train or
    eval mode, and no gradients, so the checks after it (the polyphony of sampled
    pieces) see the model that was trained."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def train_step(model: MusicModel, batch: dict) -> dict[str, float]:
    """One forward, loss and backward (both losses in vae_gan, its adversarial term on);
    raises on a non-finite loss or gradient. Returns the loss terms as floats. The model
    is left as it was found (`_left_as_found`)."""
    with _left_as_found(model):
        step = model.config.adv_start_step  # every term of every mode is live from here
        model.train()
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, step=step)
        terms = {k: float(v.detach()) for k, v in out.items()}
        out["loss"].backward()
        if model.discriminator is not None:
            d = model.discriminator_loss(batch, step=step)
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
        with torch.no_grad(), _left_as_found(model):
            logits = model(batch["input_ids"], batch["attention_mask"])
        b = batch["input_ids"].shape[0]
        if tuple(logits.shape) != (b, n, model.config.vocab_size):
            raise ValueError(f"logits shape {tuple(logits.shape)}")
        terms = train_step(model, batch)
    except (ValueError, RuntimeError, FloatingPointError, TypeError) as exc:
        return _row("train step", False, _error(exc), mode, n)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in terms.items() if k in ("loss", "disc_loss"))
    return _row("train step", True, f"forward/loss/backward finite: {shown}", mode, n)


class _LargestTensor(TorchDispatchMode):
    """The element count of the largest tensor any op returns inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_tensor(model: MusicModel, batch: dict) -> tuple[int, float]:
    """(elements of the largest tensor a train step allocates, the step's seconds)."""
    start = time.perf_counter()
    with _LargestTensor() as mode:
        train_step(model, batch)
    return mode.largest, time.perf_counter() - start


def check_resources(model: MusicModel, batches: dict[int, dict]) -> Finding:
    """Memory grows linearly with the length: from the shortest to the longest length,
    the largest tensor of a train step grows at most `GROWTH_SLACK` x the length ratio
    (a dense N x N score matrix grows N times faster). Also reports tokens/s."""
    mode = model.config.mode
    lengths = sorted(batches)
    if len(lengths) < 2:
        return _row("resources", True, "one length only: growth not measured", mode, lengths[0])
    lo, hi = lengths[0], lengths[-1]
    try:
        small, _ = largest_tensor(model, batches[lo])
        big, seconds = largest_tensor(model, batches[hi])
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        return _row("resources", False, _error(exc), mode, hi)
    growth, allowed = big / max(small, 1), GROWTH_SLACK * hi / lo
    tokens = int(batches[hi]["attention_mask"].sum())
    detail = (
        f"largest tensor {small:,} -> {big:,} elements from {lo} to {hi} tokens "
        f"(x{growth:.2f}, at most x{allowed:.2f}); {tokens / seconds:,.0f} tokens/s"
    )
    if growth > allowed:
        detail += ": memory grows faster than the length"
    return _row("resources", growth <= allowed, detail, mode, f"{lo}-{hi}")


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


def check_learning(model: MusicModel, batch: dict, *, steps: int = LEARNING_STEPS) -> Finding:
    """A fresh copy of the model (same config, re-initialized from a fixed seed) fits one
    real batch: `steps` Adam steps at `LEARNING_LR` lower its loss by at least
    `LEARNING_DROP`, measured with the same noise before and after. Deterministic; the
    audited model itself is left untouched."""
    mode, n = model.config.mode, batch["input_ids"].shape[1]
    try:
        with _fixed_seed(0):
            fresh = type(model)(model.config).to(batch["input_ids"].device)
        fresh.train()

        def loss() -> float:
            with torch.no_grad(), _fixed_seed(1234):
                return float(fresh.loss(batch, step=0)["recon"])

        before = loss()
        opt = torch.optim.Adam(fresh.generator_parameters(), lr=LEARNING_LR)
        with _fixed_seed(7):
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                fresh.loss(batch, step=0)["loss"].backward()
                opt.step()
        after = loss()
    except (ValueError, RuntimeError) as exc:
        return _row("learning", False, _error(exc), mode, n)
    drop = 1 - after / before if before > 0 else 0.0
    ok = drop >= LEARNING_DROP
    detail = (
        f"a fresh copy fits one batch: loss {before:.3f} -> {after:.3f} in {steps} steps "
        f"(-{drop:.0%}, at least -{LEARNING_DROP:.0%})"
    )
    return _row("learning", ok, detail if ok else detail + ": it does not learn", mode, n)


@contextlib.contextmanager
def _fixed_seed(seed: int) -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def check_decode_cache(model: MusicModel, ids: torch.Tensor, *, prompt: int = 8) -> Finding:
    """Cached decoding (a prefill of `prompt` tokens, then one token per call through
    each block's cache) gives the full forward's logits on a real window, under the
    tolerance policy: its float32 error against the float64 full forward is at most
    twice the float32 full forward's, plus the floor."""
    mode, n = model.config.mode, ids.shape[1]
    try:
        ids = ids[:1]
        z = None
        if model.encoder is not None:
            with torch.no_grad():
                z = model.encode(ids)[0]
        fast = _cached_logits(model, ids, z, prompt)
        plain = _full_logits(model, ids, z)
        ref_model = copy.deepcopy(model).double()
        ref = _full_logits(ref_model, ids, None if z is None else z.double())
        assert_close_to_reference(fast, plain, ref, name="logits")
    except (AssertionError, ValueError, RuntimeError) as exc:
        return _row("decode cache", False, f"{_error(exc)}", mode, n)
    err = float((fast.double() - ref).abs().max())
    detail = f"{n - prompt} cached steps after a {prompt}-token prefill equal the full forward"
    return _row("decode cache", True, f"{detail} (max error {err:.1e})", mode, n)


@torch.no_grad()
def _full_logits(model: MusicModel, ids: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    model.eval()
    return model.decode(ids, torch.ones_like(ids, dtype=torch.bool), z=z)


@torch.no_grad()
def _cached_logits(
    model: MusicModel, ids: torch.Tensor, z: torch.Tensor | None, prompt: int
) -> torch.Tensor:
    model.eval()
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    out = [model.decode(ids[:, :prompt], z=z, cache=cache)]
    for i in range(prompt, ids.shape[1]):
        out.append(model.decode(ids[:, i : i + 1], z=z, cache=cache))
    return torch.cat(out, dim=1)


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
