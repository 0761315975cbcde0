"""Why generated notes do not end: three cheap measurements beside the music table.

- `note_off_probability`: the probability a model gives, teacher-forced, to each
  NOTE_OFF of held-out windows that ends a sounding note, bucketed by the distance in
  tokens from that note's NOTE_ON (a note sounding when the window starts: from its
  NOTE_ON in the window's state prefix). A drop where the distance passes the model's
  attention window says the release is lost with the context; low everywhere says the
  model has not learnt it.
- `new_instrument_probability`: the probability a model gives, teacher-forced, to an
  instrument that has not struck a note yet, where held-out windows name an instrument
  (normalized over the INSTRUMENT tokens), against how often they do, by position in
  the window: a piece that keeps to its instruments names a new one at its start only.
- `deletion_sensitivity`: polyphony (and the share of notes closed by a NOTE_OFF) of
  real windows with a share of their NOTE_OFFs deleted: how far the statistic moves
  when a model forgets that many releases.
- `samplers` and `sampler_variants`: the settings of `generate` that the sampler
  comparison runs (the NOTE_OFF mask, what happens at the note-length limit and to a
  NOTE_ON of a sounding pitch, for a vae each with z from the aggregate posterior and
  from the prior, then temperature and top-p on the best of them, then the pitch
  temperature on the pick of those: `pitch_variants`); `sampler_support` says whether
  this `generate` takes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Distance buckets (tokens from the NOTE_ON): [lo, next lo); the last is open.
DISTANCE_EDGES = (1, 9, 17, 33, 65, 129, 257)
DELETION_SHARES = (0.0, 0.1, 0.25, 0.5)
# Position buckets of `new_instrument_probability`: [lo, next lo); the last is open.
POSITION_EDGES = (0, 32, 128, 256)

# (name, keyword arguments of `generate`): the grammar mask as it was (a NOTE_OFF
# only where the model put it, time frozen at the length limit), the NOTE_OFF family's
# probability spread over the sounding pitches, that with notes released at the limit
# instead of freezing time, and both of those with a sounding pitch's NOTE_ON turned
# into its NOTE_OFF ("off-first": the data never strikes a sounding pitch again).
SAMPLERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mask", {"note_off": "mask", "at_limit": "freeze", "note_on": "restrike"}),
    ("spread", {"note_off": "spread", "at_limit": "freeze", "note_on": "restrike"}),
    ("spread+release", {"note_off": "spread", "at_limit": "release", "note_on": "restrike"}),
    ("spread+off-first", {"note_off": "spread", "at_limit": "freeze", "note_on": "off-first"}),
    (
        "spread+release+off-first",
        {"note_off": "spread", "at_limit": "release", "note_on": "off-first"},
    ),
)
# vae modes: z from the aggregate posterior (`generate`'s default) or the prior.
PRIOR_SUFFIX = ", prior z"
TEMPERATURES = (1.0, 0.9, 0.8, 0.7)
TOP_PS = (None, 0.95, 0.9)
# `generate(pitch_temperature=...)`: the choice of pitch sharpened, the rate of notes kept
PITCH_TEMPERATURES = (0.8, 0.6, 0.4)


def _labels(edges: Sequence[int]) -> list[str]:
    """Labels "lo-hi" of the buckets [lo, next lo) of `edges`, then "last+"."""
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return labels + [f"{edges[-1]}+"]


def _bucket(edges: Sequence[int], value: int) -> int:
    """Index into `_labels(edges)` of a value >= edges[0]."""
    return int(np.searchsorted(edges, value, side="right")) - 1


def distance_labels() -> list[str]:
    return _labels(DISTANCE_EDGES)


def distance_bucket(distance: int) -> int:
    """Index into `distance_labels()` of a distance >= 1."""
    return _bucket(DISTANCE_EDGES, distance)


def position_labels() -> list[str]:
    return _labels(POSITION_EDGES)


def note_off_targets(ids: Sequence[int]) -> list[tuple[int, int]]:
    """(position, distance in tokens from the NOTE_ON of the note it ends) of every
    NOTE_OFF of `ids` that ends a sounding note, read through the token-state machine."""
    from stretto.tokenizer import _state as st
    from stretto.tokenizer.vocabulary import Vocabulary

    off0 = Vocabulary().NOTE_OFF.start
    s, sustain, notes = st.new_state()
    out = []
    for pos, t in enumerate(ids):
        t = int(t)
        did = st.advance(s, sustain, notes, t)
        if did == st.DID_END:
            break
        if did == st.DID_NOTE_OFF:
            inst = max(int(s[st.INST]), 0)
            out.append((pos, pos - int(notes[inst, t - off0, st.NOTE_POS])))
    return out


def note_off_probability(
    model, pieces: Sequence[Sequence[int]], *, pad: int, batch_size: int = 8
) -> dict[str, dict[str, float | None]]:
    """Per distance bucket: {"p": mean teacher-forced probability of the correct
    NOTE_OFF, "count": NOTE_OFFs in the bucket} over `pieces` (ids from START)."""
    labels = distance_labels()
    total = np.zeros(len(labels))
    count = np.zeros(len(labels))
    for p, probs in _teacher_forced(model, pieces, pad=pad, batch_size=batch_size):
        for pos, dist in note_off_targets(p):
            if pos == 0:
                continue
            b = distance_bucket(dist)
            total[b] += float(probs[pos - 1, p[pos]])
            count[b] += 1
    return {
        label: {"p": float(total[i] / count[i]) if count[i] else None, "count": int(count[i])}
        for i, label in enumerate(labels)
    }


def instrument_targets(ids: Sequence[int]) -> list[tuple[int, frozenset[int]]]:
    """(position, the instruments that have struck a note before it) of every INSTRUMENT
    id of `ids`, read through the token-state machine (up to END)."""
    from stretto.tokenizer import _state as st
    from stretto.tokenizer.vocabulary import Vocabulary

    family = Vocabulary().INSTRUMENT
    played: set[int] = set()
    s, sustain, notes = st.new_state()
    out = []
    for pos, t in enumerate(ids):
        t = int(t)
        if t in family:
            out.append((pos, frozenset(played)))
        did = st.advance(s, sustain, notes, t)
        if did == st.DID_END:
            break
        if did in (st.DID_NOTE_ON, st.DID_REPLACE):
            played.add(max(int(s[st.INST]), 0))
    return out


def new_instrument_probability(
    model, pieces: Sequence[Sequence[int]], *, pad: int, batch_size: int = 8
) -> dict[str, dict[str, float | None]]:
    """Per position bucket (`position_labels`) of the INSTRUMENT ids of `pieces`: {"real":
    the share naming an instrument that has struck no note yet, "model": the model's mean
    teacher-forced probability of such an instrument, out of its probability of any
    INSTRUMENT, "count": the INSTRUMENT ids}."""
    from stretto.tokenizer.vocabulary import Vocabulary

    family = Vocabulary().INSTRUMENT
    labels = position_labels()
    real, believed, count = (np.zeros(len(labels)) for _ in range(3))
    for p, probs in _teacher_forced(model, pieces, pad=pad, batch_size=batch_size):
        for pos, played in instrument_targets(p):
            if pos == 0:
                continue
            b = _bucket(POSITION_EDGES, pos)
            chance = probs[pos - 1, family.start : family.stop].double()
            unplayed = [k for k in range(len(family)) if k not in played]
            believed[b] += float(chance[unplayed].sum() / chance.sum())
            real[b] += p[pos] - family.start not in played
            count[b] += 1
    return {
        label: {
            "real": float(real[i] / count[i]) if count[i] else None,
            "model": float(believed[i] / count[i]) if count[i] else None,
            "count": int(count[i]),
        }
        for i, label in enumerate(labels)
    }


def deletion_sensitivity(
    pieces: Sequence[Sequence[int]],
    decode: Callable[[list[int]], Any],
    *,
    shares: Sequence[float] = DELETION_SHARES,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """Per share of NOTE_OFFs deleted (as "0.25"): the mean per piece of polyphony
    (muspy's, as the music table) and of `closed_by_model`, over `pieces`."""
    import muspy

    from benchmarks.quality_music import drop_note_offs, note_statistics, to_muspy

    out = {}
    for share in shares:
        rng = np.random.default_rng(seed)
        poly, closed = [], []
        for ids in pieces:
            kept = drop_note_offs(ids, share, rng)
            music = to_muspy(decode(kept))
            if any(track.notes for track in music.tracks):
                poly.append(float(muspy.polyphony(music)))
            closed.append(note_statistics(kept)["closed_by_model"])
        out[f"{share:g}"] = {"polyphony": _mean(poly), "closed_by_model": _mean(closed)}
    return out


def sampler_support(generate: Callable[..., Any]) -> str | None:
    """None when `generate` takes every keyword of `SAMPLERS`, else why not."""
    params = inspect.signature(generate).parameters
    missing = sorted({k for _, kw in SAMPLERS for k in kw} - set(params))
    if missing:
        return f"generate() takes no {', '.join(missing)} (one fixed grammar mask)"
    return None


def samplers(latent: bool) -> list[tuple[str, dict[str, Any]]]:
    """`SAMPLERS`; with a `latent` (vae modes), each with z from the aggregate posterior
    (`latent="posterior"`, same name) and again from the prior (name + `PRIOR_SUFFIX`)."""
    if not latent:
        return list(SAMPLERS)
    posterior = [(name, dict(kw, latent="posterior")) for name, kw in SAMPLERS]
    prior = [(name + PRIOR_SUFFIX, dict(kw, latent="prior")) for name, kw in SAMPLERS]
    return posterior + prior


def sampler_variants(best: str, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The temperature and top-p variants of sampler `best`, whose settings are `base`
    (not its plain setting)."""
    out = []
    for t in TEMPERATURES:
        for top_p in TOP_PS:
            if t == 1.0 and top_p is None:
                continue
            name = f"{best} T{t:g}" + (f" top-p {top_p:g}" if top_p else "")
            out.append((name, dict(base, temperature=t, top_p=top_p)))
    return out


def pitch_variants(pick: str, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The pitch-temperature variants of sampler `pick`, whose settings are `base`."""
    return [(f"{pick} pitch T{t:g}", dict(base, pitch_temperature=t)) for t in PITCH_TEMPERATURES]


def _teacher_forced(model, pieces: Sequence[Sequence[int]], *, pad: int, batch_size: int):
    """(ids as a list, next-token probabilities `[N, V]` on the CPU) of each of `pieces`,
    run through `model` in padded batches."""
    import torch

    device = next(model.parameters()).device
    for first in range(0, len(pieces), batch_size):
        chunk = [list(map(int, p)) for p in pieces[first : first + batch_size]]
        n = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.bool)
        for row, p in enumerate(chunk):
            ids[row, : len(p)] = torch.as_tensor(p)
            mask[row, : len(p)] = True
        with torch.inference_mode():
            logits = model(ids.to(device), attention_mask=mask.to(device))
            probs = torch.softmax(logits.float(), dim=-1).cpu()  # [B, N, V]
        for row, p in enumerate(chunk):
            yield p, probs[row]


def _mean(values: Sequence[float]) -> float | None:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None
