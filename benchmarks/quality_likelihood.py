"""Held-out likelihood of one transformer under three attentions, and n-gram baselines.

`train_variants` trains one model per attention variant from the same seed (identical
initial weights: the variants share every parameter) on the same batches, one
optimizer step of each variant in turn (the order rotates every step), so that the
machine's load falls on all of them alike and their step times are comparable: the
equal-wall-clock comparison is made from these side-by-side times. At fixed steps each
variant is scored on the same held-out windows (`Evaluation`).

Scores (`Score`): NLL per target token (nats), bits per token, NLL per second of music
(summed NLL over the seconds the windows span: tokens carry different amounts of time,
seconds do not), and NLL per bucket of the target's position inside the window.

Baselines on the same targets: the unigram distribution of the training tokens
(add-one smoothed, as `stretto.engine.evaluation.unigram_nll`) and a bigram model of
the training tokens, `P(b | a) = (c(a, b) + alpha P_uni(b)) / (c(a) + alpha)`, with
alpha chosen by leave-one-out likelihood on the training tokens themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stretto.tokenizer.vocabulary import STEP_SECONDS, Vocabulary

# name -> ModelConfig overrides; "wha" keeps the preset's window and block.
VARIANTS: dict[str, dict[str, Any]] = {
    "wha": {},
    # the same model without the note state (`ModelConfig.note_state`)
    "wha-no-note-state": {"note_state": False},
    # ... and without the instrument state (`ModelConfig.instrument_state`)
    "wha-no-instrument-state": {"instrument_state": False},
    # ... and with the states' gains on the logits (`ModelConfig.state_logits`)
    "wha-state-logits": {"state_logits": True},
    "sliding-window": {"block": None},
    "dense": {"attention": "dense"},
}
BUCKET_EDGES = (0, 128, 512, 1024, 2048)  # target positions inside the window
BIGRAM_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
LN2 = math.log(2.0)


def block_variants(blocks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """The variants of a block sweep: WHA with each summary block size (`wha-b<N>`),
    beside the sliding window (no summaries)."""
    variants: dict[str, dict[str, Any]] = {f"wha-b{b}": {"block": b} for b in blocks}
    return variants | {"sliding-window": {"block": None}}


def bucket_labels(seq_len: int) -> list[str]:
    """Labels of the position buckets a window of `seq_len` tokens has."""
    edges = [e for e in BUCKET_EDGES if e < seq_len] + [seq_len]
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]


# -- scoring ----------------------------------------------------------------------------


@dataclass
class Score:
    """Summed NLL and counts per target position of a set of windows `[N - 1]`, and the
    seconds of music they span. Position j holds targets at window position j + 1."""

    nll: np.ndarray
    count: np.ndarray
    seconds: float

    def per_token(self) -> float:
        return float(self.nll.sum() / max(self.count.sum(), 1))

    def per_second(self) -> float | None:
        return float(self.nll.sum() / self.seconds) if self.seconds > 0 else None

    def buckets(self) -> dict[str, float | None]:
        """NLL per token in each position bucket of `bucket_labels`."""
        n = self.nll.size + 1
        out: dict[str, float | None] = {}
        for label in bucket_labels(n):
            lo, hi = (int(x) for x in label.split("-"))
            sl = slice(max(lo, 1) - 1, hi)  # targets at positions lo..hi
            count = float(self.count[sl].sum())
            out[label] = float(self.nll[sl].sum() / count) if count else None
        return out

    def past(self, window: int) -> float | None:
        """NLL per token of the targets whose query position is at or past `window`,
        where a sliding window no longer sees the window's first token."""
        sl = slice(window, None)  # query i >= window <=> target position i + 1
        count = float(self.count[sl].sum())
        return float(self.nll[sl].sum() / count) if count else None

    def summary(self, window: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nll": self.per_token(),
            "bits": self.per_token() / LN2,
            "nll_per_second": self.per_second(),
            "buckets": self.buckets(),
            "tokens": float(self.count.sum()),
        }
        if window is not None:
            out["past_window"] = self.past(window)
        return out


def window_seconds(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Seconds of music each window `[B, N]` spans: its TIME_SHIFT steps `[B]`."""
    shifts = Vocabulary().TIME_SHIFT
    is_shift = (ids >= shifts.start) & (ids < shifts.stop) & mask
    steps = torch.where(is_shift, ids - shifts.start + 1, 0)
    return steps.sum(1).double() * STEP_SECONDS


def targets_of(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids `[B, N]`, target mask `[B, N-1]`) of a batch, as the engine's losses count."""
    from stretto.engine.objectives import target_mask

    ids = batch["input_ids"]
    mask = batch["attention_mask"].bool()
    return ids, target_mask(ids, mask, pad_id)


def score_batches(
    token_nll: Callable[[dict], torch.Tensor], batches: Sequence[dict], pad_id: int
) -> Score:
    """Sum `token_nll(batch)` (`[B, N-1]` NLL of each target) over `batches`."""
    total = count = None
    seconds = 0.0
    for batch in batches:
        ids, targets = targets_of(batch, pad_id)
        nll = token_nll(batch).double() * targets
        t = targets.double()
        total = nll.sum(0) if total is None else total + nll.sum(0)
        count = t.sum(0) if count is None else count + t.sum(0)
        seconds += float(window_seconds(ids, batch["attention_mask"].bool()).sum())
    if total is None:
        raise ValueError("no held-out batch to score")
    return Score(total.numpy(), count.numpy(), seconds)


@torch.no_grad()
def model_token_nll(model) -> Callable[[dict], torch.Tensor]:
    """NLL `[B, N-1]` of every next token under `model` (eval mode, float32)."""

    def nll(batch: dict) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                ids, mask = batch["input_ids"], batch["attention_mask"]
                logits = model(ids, mask)  # [B, N, V]
                return F.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), ids[:, 1:].long(), reduction="none"
                )  # [B, N-1]
        finally:
            model.train(was)

    return nll


# -- n-gram baselines -------------------------------------------------------------------


@dataclass
class NGramBaselines:
    """Unigram and bigram models of the training files' tokens."""

    unigram_log_p: torch.Tensor  # [V]
    bigram_log_p: torch.Tensor  # [V, V]: row a is log P(. | a)
    alpha: float
    training_tokens: int
    loo_nll: dict[float, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, files: Sequence[np.ndarray], vocab_size: int) -> NGramBaselines:
        """From the token ids of each training file (bigrams never cross files)."""
        uni = np.zeros(vocab_size, dtype=np.float64)
        pairs = np.zeros((vocab_size, vocab_size), dtype=np.float64)
        for ids in files:
            ids = np.asarray(ids, dtype=np.int64)
            uni += np.bincount(ids, minlength=vocab_size)
            if ids.size > 1:
                np.add.at(pairs, (ids[:-1], ids[1:]), 1.0)
        p_uni = (uni + 1.0) / (uni.sum() + vocab_size)
        loo = _leave_one_out(pairs, p_uni)
        alpha = min(loo, key=loo.get)
        rows = pairs.sum(1, keepdims=True)
        p_bi = (pairs + alpha * p_uni[None, :]) / (rows + alpha)
        return cls(
            torch.from_numpy(np.log(p_uni)),
            torch.from_numpy(np.log(p_bi)),
            float(alpha),
            int(uni.sum()),
            loo,
        )

    def unigram_nll(self, batch: dict) -> torch.Tensor:
        return -self.unigram_log_p[batch["input_ids"][:, 1:].long()]

    def bigram_nll(self, batch: dict) -> torch.Tensor:
        ids = batch["input_ids"].long()
        return -self.bigram_log_p[ids[:, :-1], ids[:, 1:]]


def _leave_one_out(pairs: np.ndarray, p_uni: np.ndarray) -> dict[float, float]:
    """Mean NLL per training bigram with its own count removed, for each alpha."""
    a, b = np.nonzero(pairs)
    c = pairs[a, b]
    rows = pairs.sum(1)[a]
    total = c.sum()
    out = {}
    for alpha in BIGRAM_ALPHAS:
        p = (c - 1.0 + alpha * p_uni[b]) / (rows - 1.0 + alpha)
        out[alpha] = float(-(c * np.log(p)).sum() / total)
    return out


# -- training side by side --------------------------------------------------------------


@dataclass
class Curve:
    """One variant's held-out NLL at its evaluation steps, with its training time."""

    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    final: Score | None = None

    def at_time(self, t: float) -> float | None:
        """Held-out NLL after `t` seconds of training, linear between evaluations."""
        if not self.seconds or t > self.seconds[-1] + 1e-9:
            return None
        return float(np.interp(t, self.seconds, self.nll))

    def at_step(self, step: int) -> float | None:
        return self.nll[self.steps.index(step)] if step in self.steps else None


def eval_steps(steps: int, evals: int) -> list[int]:
    """`evals` evaluation points from step 0 to `steps`, both included."""
    return sorted({round(steps * k / evals) for k in range(evals + 1)})


def train_variants(
    trainers: dict[str, Any],
    batches: Iterator[dict],
    *,
    steps: int,
    evals: int,
    evaluate: Callable[[Any], Score],
    seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Curve]:
    """Train each `Trainer` in `trainers` on the same `batches`, interleaved.

    Each step draws one batch and runs every variant's `train_step` on it, in an order
    that rotates every step. Evaluations (`evaluate(model) -> Score`, untimed) at
    `eval_steps(steps, evals)`. With `seconds`, a variant stops stepping once its
    training time reaches it (the others go on, up to `steps`), and is evaluated there.
    """
    names = list(trainers)
    curves = {name: Curve() for name in names}
    active = set(names)
    points = set(eval_steps(steps, evals))

    def record(name: str, step: int) -> None:
        c = curves[name]
        score = evaluate(trainers[name].model)
        c.steps.append(step)
        c.seconds.append(float(sum(c.step_times)))
        c.nll.append(score.per_token())
        c.final = score

    for name in names:
        record(name, 0)
    for step in range(1, steps + 1):
        if not active:
            break
        batch = next(batches)
        order = names[step % len(names) :] + names[: step % len(names)]
        for name in order:
            if name not in active:
                continue
            start = time.perf_counter()
            trainers[name].train_step([batch])
            curves[name].step_times.append(time.perf_counter() - start)
            out_of_time = seconds is not None and sum(curves[name].step_times) >= seconds
            if step in points or out_of_time or step == steps:
                record(name, step)
            if out_of_time:
                active.discard(name)
        if log and step in points:
            log(
                f"[quality]   step {step}: "
                + ", ".join(f"{n} {curves[n].nll[-1]:.3f}" for n in names)
            )
    return curves
