"""Quality: what windowed hierarchical attention costs in modelling music, and what the
trained models generate, on files the training never saw.

The corpus (`--corpus DIR`, a folder of MIDI files or a built token corpus; default:
the demo's 48 Bach chorales, which need music21) is tokenized and split by file
(`FileSplit.make(val_fraction=0.1, seed=0)`; the run writes `split.json` beside its
results). Everything below trains on the training files and is scored on windows of
the validation files.

1. Likelihood (`quality_likelihood`). One transformer-mode model of the preset (default
   `tiny`), trained from the same seed on the same batches in six variants: WHA with
   the preset's window and block, the same without the note state (`note_state=False`;
   it still scans the ids for the instrument state, so its step time holds the scan),
   without the instrument state (`instrument_state=False`) and with the states' gains
   on the logits (`state_logits=True`), WHA without summaries (`block=None`,
   sliding window) and dense causal SDPA, interleaved step by step so their step
   times are measured side by side. For each length and seed, held-out NLL per token,
   bits per token, NLL per second of music, NLL per position bucket and past the
   window; at equal steps (the budget's last step) and at equal wall-clock (each
   variant's curve, linear between evaluations, read at the training time the fastest
   variant took for the whole budget).
   Baselines on the same targets: unigram and bigram models of the
   training tokens. Rows: `mode="held-out-nll"`, one per (length, variant or baseline);
   median_ms/p20/p80 are the variant's training step times over every seed, extra
   holds the NLLs (median over seeds, each seed's value, the curves).
2. Generated music (`quality_music`). Each mode (transformer, vae, vae_gan) of the
   preset with WHA is trained with `Trainer` for the budget's steps on windows of the
   generation length, once from each of the budget's seeds (and the transformer once
   more with each state switch turned: `note_state=False`, source
   `transformer-no-note-state`, `instrument_state=False`, source
   `transformer-no-instrument-state`, and `state_logits=True`, source
   `transformer-state-logits`); each model
   samples as many pieces as half A of the held-out set has (from START,
   `constrained=True`, its training seed as the sampling seed), and as many again
   without the grammar mask for the `validity` statistic, with the sampling its
   mode's sampler comparison (part 3, on the same models) picks on half A (the
   transformers without a state with the transformer's pick; what `stretto generate` and
   the demo use is `stretto.engine.generate.LISTENING_SAMPLING`, set from these
   picks); a source's set pools its seeds' pieces. The unigram model samples the same
   way, with as many seeds (one token at a time under the same grammar mask and
   sampling, and without the mask for `validity`): each mode's verdicts are against
   the unigram sampled with that mode's pick, the table's unigram column with the
   transformer's. Every set is compared with half B of the held-out
   pieces (windows of the generation length from the other half of the validation
   files); half A against half B is the reference distance, real against real. Rows:
   `mode="generated-vs-held-out"`, one per source; extra holds each statistic's
   summary, its distance to half B, the reference distance, and whether it is closer
   than the unigram model's samples. The same rows hold how each set's notes end and
   the note statistics of `quality_music.NOTE_STATISTICS` (durations, silences, the
   share of notes a NOTE_OFF closed), each distance also as a multiple of real against
   real.
3. The cause (`quality_cause`), on the transformer model of part 2: the teacher-forced
   probability of each held-out NOTE_OFF by its distance from the NOTE_ON
   (`mode="note-off-probability"`, the first seed's model) and polyphony of held-out
   pieces with a share of their NOTE_OFFs deleted (`mode="note-off-deletion"`); the
   teacher-forced probability of an instrument not yet played where held-out pieces
   name an instrument, against how often they do, by position, for the first seed's
   model of each transformer source (`mode="new-instrument"`); and,
   for each mode, its models' pieces under each sampler setting (`mode="sampler"`:
   the grammar's policies, then temperature and top-p on the best, then the pitch
   temperature on the pick of those; every seed's model sampled with its seed and the
   pieces pooled, as in the music table; a skipped row
   when `generate` takes no such settings), each against the unigram model sampled
   with the same settings and as many seeds. The best policy and the pick among its
   variants are chosen against held-out half A and reported against half B, which the
   choice never saw; the music table of part 2 holds each mode's pick's pieces.

Budget: `FULL` (default; about 15-25 minutes on a 2-core CPU) and `QUICK` (`--quick`,
under 5), or `--steps N` (training steps per run) and `--seconds S` (a cap on each
variant's training time), `--seq-len N` (lengths) and `--preset NAME`.

Block sweep (`--block N`, repeatable): part 1 alone, its variants WHA with each of
these summary block sizes (`wha-b<N>`, the preset's window) beside the sliding window,
with the same baselines; parts 2 and 3 are not run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.schema import REPO_ROOT, SuiteUnavailable, progress, skipped_row

SUITE = "quality"
MODES = ("transformer", "vae", "vae_gan")
# the transformer with one state switch turned, sampled with the transformer's pick
OTHER_STATES = {
    "transformer-no-note-state": {"note_state": False},
    "transformer-no-instrument-state": {"instrument_state": False},
    "transformer-state-logits": {"state_logits": True},
}
DEMO_CORPUS_CACHE = REPO_ROOT / "data" / "demo-corpus"


@dataclass(frozen=True)
class Budget:
    """What one run trains, scores and samples."""

    preset: str = "tiny"
    seq_lens: tuple[int, ...] = (512, 1024, 2048)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 400  # optimizer steps per training run
    seconds: float | None = None  # cap on each attention variant's training time
    evals: int = 6  # held-out evaluations per run (plus step 0)
    tokens_per_batch: int = 4096  # batch = tokens_per_batch // length windows
    eval_windows: int = 48  # held-out windows per length
    lr: float = 2e-3
    warmup_steps: int = 30
    generation_length: int = 512  # tokens per generated and held-out piece
    pieces: int = 24  # held-out pieces per half, and pieces sampled per source
    val_fraction: float = 0.1
    split_seed: int = 0
    blocks: tuple[int, ...] = ()  # a block sweep's summary block sizes (part 1 alone)


FULL = Budget()
QUICK = Budget(
    seq_lens=(512, 1024),
    steps=60,
    evals=3,
    eval_windows=16,
    warmup_steps=10,
    generation_length=256,
    pieces=8,
)


def run(
    *,
    quick: bool,
    device: str,
    seq_lens: Sequence[int] | None = None,
    presets: Sequence[str] | None = None,
    corpus: str | None = None,
    steps: int | None = None,
    seconds: float | None = None,
    blocks: Sequence[int] | None = None,
    out_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Rows of every part, or of the block sweep (see the module docstring)."""
    budget = QUICK if quick else FULL
    changes: dict[str, Any] = {}
    if seq_lens:
        changes["seq_lens"] = tuple(sorted(set(seq_lens)))
    if presets:
        if len(presets) > 1:
            raise ValueError(f"the quality suite runs one preset, got {list(presets)}")
        changes["preset"] = presets[0]
    if steps is not None:
        changes["steps"] = steps
    if seconds is not None:
        changes["seconds"] = seconds
    if blocks:
        changes["blocks"] = tuple(sorted(set(blocks)))
    budget = dataclasses.replace(budget, **changes)
    midi = Path(corpus) if corpus else demo_corpus()
    with tempfile.TemporaryDirectory(prefix="stretto-quality-") as tmp:
        tokens = token_corpus(midi, Path(tmp) / "corpus")
        return QualityRun(budget, tokens, midi, device, out_dir).rows()


def demo_corpus() -> Path:
    """The demo's chorales rendered to MIDI under data/ (needs music21)."""
    try:
        from stretto.engine.cli.demo_corpus import music21_version, render_corpus
    except ImportError as exc:
        raise SuiteUnavailable(f"stretto.engine is not importable ({exc})") from exc
    if music21_version() is None:
        raise SuiteUnavailable(
            "the default corpus (the demo's chorales) needs music21: "
            "pip install -e '.[demo]', or pass --corpus DIR"
        )
    render_corpus(DEMO_CORPUS_CACHE, log=progress)
    return DEMO_CORPUS_CACHE


def token_corpus(source: Path, scratch: Path) -> Path:
    """`source` itself when it is a token corpus (holds manifest.json), else its MIDI
    files tokenized into `scratch`."""
    from stretto.tokenizer import build_corpus

    if (source / "manifest.json").is_file():
        return source
    if not source.is_dir():
        raise ValueError(f"--corpus {source} is not a folder")
    report = build_corpus(source, scratch, workers=2, progress=False)
    if report.files < 2:
        raise ValueError(f"{source}: {report.files} usable MIDI files, at least 2 are needed")
    progress(f"[quality] corpus: {report.summary().splitlines()[0]}")
    return scratch


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(statistics.median(kept)) if kept else None


def _spread(values: Sequence[float | None]) -> list[float] | None:
    kept = [v for v in values if v is not None]
    return [min(kept), max(kept)] if kept else None


class QualityRun:
    def __init__(
        self, budget: Budget, corpus: Path, source: Path, device: str, out_dir: Path | None
    ) -> None:
        from stretto.tokenizer import FileSplit, Vocabulary

        self.budget, self.corpus, self.source, self.device = budget, corpus, source, device
        self.vocab = Vocabulary()
        self.split = FileSplit.make(
            corpus, val_fraction=budget.val_fraction, seed=budget.split_seed
        )
        if not self.split.validation:
            raise ValueError(f"{source}: too few files for a held-out split")
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            self.split.write(Path(out_dir) / "split.json")
        self.what = {
            "corpus": str(source),
            "train_files": len(self.split.train),
            "validation_files": len(self.split.validation),
            "preset": budget.preset,
        }

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        baselines = self._baselines()
        for n in self.budget.seq_lens:
            rows += self._likelihood(n, baselines)
        if not self.budget.blocks:  # a block sweep is part 1 alone
            rows += self._music(baselines)
        return rows

    # -- part 1 ---------------------------------------------------------------------------
    def _baselines(self):
        from benchmarks.quality_likelihood import NGramBaselines
        from stretto.tokenizer import TokenDataset

        train = TokenDataset(self.corpus, 64, files=self.split.train)  # for its files only
        files = [train.file_ids(f) for f in range(len(train.files))]
        return NGramBaselines.fit(files, self.vocab.size)

    def _config(self, mode: str, seq_len: int, **overrides):
        from stretto.engine import ModelConfig

        return ModelConfig.from_vocab(
            self.vocab,
            mode=mode,
            preset=self.budget.preset,
            max_seq_len=max(seq_len, 2048),
            **overrides,
        )

    def _trainer(self, model, batch: int, seed: int, steps: int):
        from stretto.engine import TrainConfig, Trainer

        b = self.budget
        config = TrainConfig(
            steps=steps,
            batch_size=batch,
            lr=b.lr,
            warmup_steps=b.warmup_steps,
            min_lr_ratio=1.0,  # constant after warmup: a curve can be read at any step
            eval_every=0,
            checkpoint_every=0,
            seed=seed,
        )
        return Trainer(model, [], config=config, device=self.device, progress=False)

    def _likelihood(self, n: int, baselines) -> list[dict[str, Any]]:
        import numpy as np
        import torch

        from benchmarks.quality_likelihood import (
            VARIANTS,
            block_variants,
            model_token_nll,
            score_batches,
            train_variants,
        )
        from stretto.engine import MusicModel
        from stretto.engine.data import BatchStream
        from stretto.engine.evaluation import held_out_batches

        b = self.budget
        batch = max(1, b.tokens_per_batch // n)
        train, val = self.split.datasets(n, val_stride=n)
        held, _ = held_out_batches(val, windows=b.eval_windows, batch_size=max(batch, 8))
        pad = self.vocab.PAD
        variants = block_variants(b.blocks) if b.blocks else VARIANTS
        configs = {name: self._config("transformer", n, **o) for name, o in variants.items()}
        window = configs["sliding-window"].window
        shape = f"{b.preset}-B{batch}-N{n}"
        per_seed: dict[str, list] = {name: [] for name in variants}
        for seed in b.seeds:
            progress(
                f"[quality] likelihood: {n} tokens, seed {seed}, {b.steps} steps side by side "
                f"(window {window}): "
                + ", ".join(f"{name} (block {c.block})" for name, c in configs.items())
            )
            trainers = {}
            for name, config in configs.items():
                torch.manual_seed(seed)  # the same initial weights for every variant
                trainers[name] = self._trainer(MusicModel(config), batch, seed, b.steps)
            stream = BatchStream(train, batch_size=batch, shuffle=True, seed=seed)
            curves = train_variants(
                trainers,
                iter(stream),
                steps=b.steps,
                evals=b.evals,
                evaluate=lambda model: score_batches(model_token_nll(model), held, pad),
                seconds=b.seconds,
                log=progress,
            )
            budget_s = min(c.seconds[-1] for c in curves.values())
            common = min(c.steps[-1] for c in curves.values())
            for name, curve in curves.items():
                per_seed[name].append(
                    {
                        "seed": seed,
                        "score": curve.final.summary(window),
                        "final_step": curve.steps[-1],
                        "nll_equal_steps": curve.at_step(common),
                        "equal_steps": common,
                        "nll_equal_time": curve.at_time(budget_s),
                        "equal_time_s": budget_s,
                        "steps_at_equal_time": float(
                            np.interp(budget_s, curve.seconds, curve.steps)
                        ),
                        "curve": {
                            "step": curve.steps,
                            "seconds": [round(s, 3) for s in curve.seconds],
                            "nll": [round(v, 5) for v in curve.nll],
                        },
                        "step_times": curve.step_times,
                    }
                )
        rows = []
        base = {
            "suite": SUITE,
            "mode": "held-out-nll",
            "shape": shape,
            "seq_len": n,
            "dtype": "float32",
        }
        for name, runs in per_seed.items():
            times_ms = np.array([t for r in runs for t in r["step_times"]]) * 1e3
            median = float(np.median(times_ms))
            rows.append(
                dict(
                    base,
                    provider=name,
                    median_ms=median,
                    p20_ms=float(np.percentile(times_ms, 20)),
                    p80_ms=float(np.percentile(times_ms, 80)),
                    tokens_per_s=batch * n / (median / 1e3),
                    extra=self._likelihood_extra(name, configs[name], runs, batch, len(held)),
                )
            )
        for name, fn in (("unigram", baselines.unigram_nll), ("bigram", baselines.bigram_nll)):
            score = score_batches(fn, held, pad).summary(window)
            extra = dict(self.what, kind="baseline", **score)
            extra["nll_equal_steps"] = extra["nll_equal_time"] = score["nll"]
            if name == "bigram":
                extra["alpha"] = baselines.alpha
            extra["training_tokens"] = baselines.training_tokens
            rows.append(dict(base, provider=name, extra=extra))
        return rows

    def _likelihood_extra(self, name, config, runs, batch, held_batches) -> dict[str, Any]:
        scores = [r["score"] for r in runs]
        extra: dict[str, Any] = dict(
            self.what,
            kind="attention",
            attention=config.attention,
            note_state=config.note_state,
            instrument_state=config.instrument_state,
            state_logits=config.state_logits,
            window=config.window,
            block=config.block,
            batch=batch,
            steps=self.budget.steps,
            seconds_cap=self.budget.seconds,
            lr=self.budget.lr,
            seeds=[r["seed"] for r in runs],
            eval_tokens=scores[0]["tokens"],
        )
        for key in ("nll", "bits", "nll_per_second", "past_window"):
            values = [s[key] for s in scores]
            extra[key] = _median(values)
            extra[f"{key}_seeds"] = values
        extra["nll_spread"] = _spread([s["nll"] for s in scores])
        labels = list(scores[0]["buckets"])
        extra["buckets"] = {k: _median([s["buckets"][k] for s in scores]) for k in labels}
        extra["buckets_seeds"] = [s["buckets"] for s in scores]
        for key in ("nll_equal_steps", "nll_equal_time"):
            values = [r[key] for r in runs]
            extra[key] = _median(values)
            extra[f"{key}_seeds"] = values
        extra["equal_steps"] = [r["equal_steps"] for r in runs]
        extra["equal_time_s"] = [round(r["equal_time_s"], 3) for r in runs]
        extra["steps_at_equal_time"] = [round(r["steps_at_equal_time"], 1) for r in runs]
        extra["final_step"] = [r["final_step"] for r in runs]
        extra["curves"] = [dict(r["curve"], seed=r["seed"]) for r in runs]
        return extra

    # -- part 2 ---------------------------------------------------------------------------
    def _held_out_pieces(self, length: int) -> tuple[list[list[int]], list[list[int]]]:
        """Windows of `length` tokens from each half of the validation files (split by
        file), up to `pieces` per half, spread over the half's windows."""
        import numpy as np

        from stretto.engine.evaluation import spread
        from stretto.tokenizer import TokenDataset

        files = list(self.split.validation)
        order = np.random.default_rng(self.budget.split_seed).permutation(len(files))
        half = max(1, len(files) // 2)
        halves = [sorted(files[i] for i in order[:half]), sorted(files[i] for i in order[half:])]
        if not halves[1]:
            raise ValueError("the held-out set needs two files to be split in halves")
        out = []
        for part in halves:
            ds = TokenDataset(self.corpus, length, files=part, stride=length)
            pieces = []
            for i in spread(len(ds), self.budget.pieces):
                item = ds[i]
                n_real = int(item["attention_mask"].sum())
                pieces.append(item["input_ids"][:n_real].tolist())
            out.append(pieces)
        return out[0], out[1]

    def _music(self, baselines) -> list[dict[str, Any]]:
        from benchmarks import quality_music as qm
        from stretto.engine import Grammar
        from stretto.tokenizer import MidiTokenizer, validate

        b = self.budget
        length = b.generation_length
        grammar = Grammar(self.vocab)
        tokenizer = MidiTokenizer()
        real_a, real_b = self._held_out_pieces(length)
        count = len(real_a)
        progress(
            f"[quality] music: {count} + {len(real_b)} held-out pieces of {length} tokens, "
            f"{count} samples per source and seed (seeds {', '.join(map(str, b.seeds))})"
        )

        def piece_set(masked: list[list[int]], free: list[list[int]] | list[float]):
            stats = [
                qm.piece_statistics(tokenizer.decode(ids)) | qm.note_statistics(ids)
                for ids in masked
            ]
            validity = [v if isinstance(v, float) else qm.token_validity(v, validate) for v in free]
            return qm.PieceSet.of(stats, validity)

        sets: dict[str, Any] = {}
        info: dict[str, dict[str, Any]] = {}
        sets["held-out-B"] = piece_set(real_b, real_b)
        sets["held-out-A"] = piece_set(real_a, real_a)
        info["held-out-A"] = info["held-out-B"] = {"kind": "held-out"}
        reference, selection = sets["held-out-B"], sets["held-out-A"]
        real_distance = {k: qm.distance(selection, reference, k)["distance"] for k in qm.STATISTICS}
        unigrams: dict[str, tuple[Any, float]] = {}  # by settings: (pieces, seconds)

        def unigram_key(settings: dict[str, Any]) -> str:
            settings = {k: v for k, v in settings.items() if k != "latent"}  # it has no z
            return json.dumps(settings, sort_keys=True)

        def unigram(settings: dict[str, Any]):
            """The unigram model sampled with `settings` (with and without the grammar
            mask, for `validity`), `count` pieces per seed of the budget pooled, as a
            model source is; once per settings."""
            key = unigram_key(settings)
            if key not in unigrams:
                start = time.perf_counter()
                masked, free = [], []
                for seed in b.seeds:
                    masked += self._unigram_samples(
                        baselines, count, length, grammar, settings, seed=seed
                    )
                    free += self._unigram_samples(
                        baselines, count, length, None, settings, seed=seed
                    )
                pieces = piece_set(_strip(masked, self.vocab), _strip(free, self.vocab))
                unigrams[key] = pieces, time.perf_counter() - start
            return unigrams[key][0]

        def record(name: str, trained: list, pieces, settings: dict) -> None:
            """`sets[name]` and `info[name]`: the pieces (masked, free, seconds) that
            the models `trained` (one (model, extra) per seed of the budget) sampled
            with `settings`, pooled."""
            masked, free, seconds = pieces
            extra = trained[0][1]
            sets[name] = piece_set(masked, free)
            info[name] = dict(
                extra,
                sampling=settings,
                sample_s=seconds,
                seeds=list(b.seeds),
                held_out_seeds=[more["held_out"] for _, more in trained],
                train_s=sum(more["train_s"] for _, more in trained),
            )

        models, picks, sampler_rows = {}, {}, []
        for mode in MODES:
            trained = [self._train_mode(mode, length, seed=seed) for seed in b.seeds]
            models[mode] = trained[0][0]
            rows, picks[mode], pieces = self._samplers(
                [model for model, _ in trained],
                mode,
                length,
                count,
                piece_set,
                {"A": selection, "B": reference},
                real_distance,
                unigram,
            )
            sampler_rows += rows
            record(mode, trained, pieces, picks[mode])
        for name, turned in OTHER_STATES.items():
            trained = [self._train_mode("transformer", length, seed=s, **turned) for s in b.seeds]
            others = [m for m, _ in trained]
            models[name] = others[0]
            pieces = self._sample_seeds(others, picks["transformer"], length, count)
            record(name, trained, pieces, picks["transformer"])
        # the music table's unigram column: sampled as the transformer (each mode's
        # verdicts are against the unigram sampled with that mode's settings), as many
        # pieces as a model source
        sets["unigram"] = unigram(picks["transformer"])
        info["unigram"] = {
            "kind": "baseline",
            "sampling": picks["transformer"],
            "sample_s": unigrams[unigram_key(picks["transformer"])][1],
            "seeds": list(b.seeds),
        }

        every = qm.STATISTICS + qm.NOTE_STATISTICS
        distances = {
            name: {stat: qm.distance(s, reference, stat) for stat in every}
            for name, s in sets.items()
        }
        real = distances["held-out-A"]
        rows = []
        for name, s in sets.items():
            extra = dict(self.what, **info[name])
            extra["summary"] = s.summary()
            extra["distance"] = distances[name]
            extra["reference_distance"] = {k: v["distance"] for k, v in real.items()}
            extra["distance_multiple"] = {
                k: qm.distance_multiple(distances[name][k]["distance"], real[k]["distance"])
                for k in every
            }
            if info[name].get("kind") == "model":
                uni = unigram(info[name]["sampling"])
                uni_distance = {k: qm.distance(uni, reference, k) for k in every}
                extra["closer_than_unigram"] = _closer(distances[name], uni_distance)
                extra["as_close_as_real"] = {
                    k: _less(distances[name][k]["distance"], real[k]["distance"], strict=False)
                    for k in qm.STATISTICS
                }
            row = {
                "suite": SUITE,
                "provider": name,
                "mode": "generated-vs-held-out",
                "shape": f"{b.preset}-T{length}-P{s.pieces}",
                "seq_len": length,
                "dtype": "float32",
                "extra": extra,
            }
            seconds = info[name].get("sample_s")
            if seconds:
                row.update(
                    median_ms=seconds * 1e3,
                    p20_ms=seconds * 1e3,
                    p80_ms=seconds * 1e3,
                    tokens_per_s=2 * s.pieces * length / seconds,
                )
            rows.append(row)
        transformers = {n: models[n] for n in ("transformer", *OTHER_STATES)}
        rows += self._cause(transformers, real_a + real_b, tokenizer)
        return rows + sampler_rows

    # -- part 3 ---------------------------------------------------------------------------
    def _cause(self, models: dict, pieces: list[list[int]], tokenizer) -> list[dict[str, Any]]:
        """Part 3's rows but the samplers': on `pieces`, the NOTE_OFF probability of
        `models["transformer"]`, the deletion sensitivity, and the new-instrument
        probability of every one of `models` (the first seed's model of each source)."""
        from benchmarks import quality_cause as qc

        b = self.budget
        length = b.generation_length
        model = models["transformer"]
        progress(f"[quality] cause: NOTE_OFF probability and deletion on {len(pieces)} pieces")
        start = time.perf_counter()
        probability = qc.note_off_probability(model, pieces, pad=self.vocab.PAD)
        probability_s = time.perf_counter() - start
        start = time.perf_counter()
        deletion = qc.deletion_sensitivity(pieces, tokenizer.decode, seed=b.split_seed)
        deletion_s = time.perf_counter() - start
        base = {
            "suite": SUITE,
            "shape": f"{b.preset}-T{length}-P{len(pieces)}",
            "seq_len": length,
            "dtype": "float32",
        }
        return [
            dict(
                base,
                provider="transformer",
                mode="note-off-probability",
                median_ms=probability_s * 1e3,
                extra=dict(
                    self.what,
                    window=model.config.window,
                    pieces=len(pieces),
                    buckets=probability,
                ),
            ),
            dict(
                base,
                provider="held-out",
                mode="note-off-deletion",
                median_ms=deletion_s * 1e3,
                extra=dict(self.what, pieces=len(pieces), shares=deletion),
            ),
        ] + [self._new_instruments(name, m, pieces, base) for name, m in models.items()]

    def _new_instruments(self, name: str, model, pieces, base: dict) -> dict[str, Any]:
        from benchmarks import quality_cause as qc

        start = time.perf_counter()
        buckets = qc.new_instrument_probability(model, pieces, pad=self.vocab.PAD)
        return dict(
            base,
            provider=name,
            mode="new-instrument",
            median_ms=(time.perf_counter() - start) * 1e3,
            extra=dict(self.what, pieces=len(pieces), buckets=buckets),
        )

    def _samplers(
        self, models, mode, length, count, piece_set, halves, real, unigram
    ) -> tuple[list[dict[str, Any]], dict[str, Any], tuple[list, list, float]]:
        """The sampler comparison of one mode's `models` (one per seed of the budget,
        each sampled with its seed and the pieces pooled; see
        `quality_cause.SAMPLERS`): its rows, the settings it picks, and the pieces
        sampled with them (masked, free, seconds) for the music table. `piece_set(masked,
        free)` measures pieces;
        `halves`: the held-out halves' piece sets ("A", "B"); `real`: their distance per
        statistic (real against real); `unigram(settings)`: the unigram model's samples
        under the same settings, the baseline of each row. The choices are made on half
        A (the best policy, then the pick among its temperature and top-p variants, then
        among those and the pick's pitch-temperature variants: the smallest mean
        distance to A as a multiple of real against real, over the
        statistics whose real distance is not 0) and every row is reported against
        half B, so the reported figures are of music the choice never saw."""
        import inspect

        from benchmarks import quality_cause as qc
        from benchmarks import quality_music as qm
        from stretto.engine import generate

        b = self.budget
        shape = f"{b.preset}-T{length}-P{count * len(models)}"  # every seed's pieces
        why = qc.sampler_support(generate)  # model.generate forwards its options to it
        if why is not None:
            row = skipped_row(
                SUITE,
                f"skipped: sampler comparison: {why}",
                provider=mode,
                mode="sampler",
                shape=shape,
                seq_len=length,
                dtype="float32",
            )
            return [row], {}, self._sample_seeds(models, {}, length, count)

        def distances(pieces, held) -> dict[str, dict]:
            return {k: qm.distance(pieces, held, k) for k in qm.STATISTICS}

        def mean_multiple(d: dict[str, dict]) -> float:
            """The distances as multiples of real against real, averaged (the statistics
            whose real distance is 0 left out)."""
            multiples = [qm.distance_multiple(d[k]["distance"], real[k]) for k in d]
            kept = [m for m in multiples if m is not None]
            return sum(kept) / len(kept) if kept else float("inf")

        samples = {}

        def measure(name: str, settings: dict[str, Any]) -> dict[str, Any]:
            progress(f"[quality] sampler: {mode}, {name}")
            masked, free, seconds = samples[name] = self._sample_seeds(
                models, settings, length, count
            )
            s = piece_set(masked, free)
            distance = distances(s, halves["B"])
            closer = _closer(distance, distances(unigram(settings), halves["B"]))
            as_real = sum(
                1 for k in qm.STATISTICS if _less(distance[k]["distance"], real[k], strict=False)
            )
            summary = s.summary()
            extra = dict(
                self.what,
                model_mode=mode,
                seeds=list(b.seeds),
                settings=settings,
                polyphony=summary["polyphony"]["mean"],
                closed_by_model=summary["closed_by_model"]["mean"],
                endings=summary.get("endings"),
                closer_than_unigram=closer,
                closer_count=sum(1 for ok in closer.values() if ok),
                as_close_as_real_count=as_real,
                mean_multiple=mean_multiple(distance),
                polyphony_distance=distance["polyphony"]["distance"],
                mean_multiple_a=mean_multiple(distances(s, halves["A"])),
            )
            return {
                "suite": SUITE,
                "provider": name,
                "mode": "sampler",
                "shape": shape,
                "seq_len": length,
                "dtype": "float32",
                "median_ms": seconds * 1e3,
                "tokens_per_s": 2 * s.pieces * length / seconds,  # with and without the mask
                "extra": extra,
            }

        def chosen(candidates: list[dict[str, Any]]) -> dict[str, Any]:
            """On half A: the smallest mean distance multiple (the first of a tie)."""
            return min(candidates, key=lambda r: r["extra"]["mean_multiple_a"])

        # a vae's z from the aggregate posterior and from the prior, where generate has both
        takes_latent = "latent" in inspect.signature(generate).parameters
        latent = takes_latent and getattr(models[0], "encoder", None) is not None
        rows = [measure(name, settings) for name, settings in qc.samplers(latent)]
        best = chosen(rows)
        best["extra"]["best"] = True
        variants = qc.sampler_variants(best["provider"], best["extra"]["settings"])
        rows += [measure(n, s) for n, s in variants]
        pick = chosen(rows)
        if "pitch_temperature" in inspect.signature(generate).parameters:
            rows += [
                measure(n, s)
                for n, s in qc.pitch_variants(pick["provider"], pick["extra"]["settings"])
            ]
            pick = chosen(rows)
        pick["extra"]["pick"] = True
        return rows, pick["extra"]["settings"], samples[pick["provider"]]

    def _seed(self, seed: int | None) -> int:
        """`seed`, or the budget's first when None."""
        return self.budget.seeds[0] if seed is None else seed

    def _train_mode(self, mode: str, length: int, seed: int | None = None, **overrides):
        """A model of `mode` (the preset with `overrides`) trained for the budget's steps
        on windows of `length` tokens from `seed` (default: the budget's first), in eval
        mode, and what its row records."""
        import torch

        from stretto.engine import MusicModel
        from stretto.engine.data import BatchStream
        from stretto.engine.evaluation import held_out_batches, measure

        b = self.budget
        seed = self._seed(seed)
        batch = max(1, b.tokens_per_batch // length)
        train, val = self.split.datasets(length, val_stride=length)
        what = mode + "".join(f", {k}={v}" for k, v in overrides.items())
        progress(
            f"[quality] music: training {what} for {b.steps} steps on {length} tokens, seed {seed}"
        )
        torch.manual_seed(seed)
        config = self._config(mode, length, **overrides)
        trainer = self._trainer(MusicModel(config), batch, seed, b.steps)
        stream = iter(BatchStream(train, batch_size=batch, shuffle=True, seed=seed))
        start = time.perf_counter()
        for _ in range(b.steps):
            trainer.train_step([next(stream)])
        train_s = time.perf_counter() - start
        model = trainer.model.eval()
        held, files = held_out_batches(val, windows=b.eval_windows, batch_size=8)
        measured = measure(model, held, files, step=b.steps)
        extra = {
            "kind": "model",
            "model_mode": mode,
            "note_state": config.note_state,
            "instrument_state": config.instrument_state,
            "state_logits": config.state_logits,
            "state_gains": _state_gains(model),
            "steps": b.steps,
            "seed": seed,
            "train_s": train_s,
            "held_out": {k: v for k, v in measured.items() if k != "kl_dims"},
        }
        return model, extra

    def _sample(
        self, model, settings: dict[str, Any], length: int, count: int, seed: int | None = None
    ):
        """`count` pieces of `length` tokens from START with `settings` and sampling
        `seed` (default: the budget's first), under the grammar mask and without it (for
        `validity`), PAD and END stripped: (masked, free, seconds)."""
        import torch

        start = time.perf_counter()
        with torch.inference_mode():
            kw = dict(max_new_tokens=length - 1, batch_size=count, seed=self._seed(seed))
            masked = model.generate(constrained=True, **kw, **settings)
            free = model.generate(constrained=False, **kw, **settings)
        seconds = time.perf_counter() - start
        return _strip(masked.tolist(), self.vocab), _strip(free.tolist(), self.vocab), seconds

    def _sample_seeds(self, models, settings: dict[str, Any], length: int, count: int):
        """`_sample` of each of `models` (one per seed of the budget) with its seed,
        pooled: (masked, free, seconds)."""
        masked, free, seconds = [], [], 0.0
        for model, seed in zip(models, self.budget.seeds, strict=True):
            more_masked, more_free, more_s = self._sample(model, settings, length, count, seed)
            masked, free, seconds = masked + more_masked, free + more_free, seconds + more_s
        return masked, free, seconds

    def _unigram_samples(
        self,
        baselines,
        count: int,
        length: int,
        grammar,
        settings: dict | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """`count` sequences of `length` tokens from START, i.i.d. from the training
        unigram distribution, under `grammar`'s rules when given, sampled as a model is
        by `generate` with `settings` (default: `generate`'s own temperature, top-p,
        pitch temperature and policies): the temperature, then the grammar and its
        policies, then the pitch temperature, then top-p; the draws from `seed` (default:
        the budget's first)."""
        import inspect

        import torch

        from stretto.engine import generate, sample
        from stretto.engine.generate import policy_logits

        defaults = inspect.signature(generate).parameters
        policy_names = ("note_off", "at_limit", "note_on")
        sampling_names = ("temperature", "top_p", "pitch_temperature")
        chosen = {k: defaults[k].default for k in (*policy_names, *sampling_names)}
        chosen |= settings or {}
        policies = {k: chosen[k] for k in policy_names}
        temperature, top_p, pitch_t = (chosen[k] for k in sampling_names)

        generator = torch.Generator().manual_seed(self._seed(seed))
        v = self.vocab
        ids = torch.full((count, 1), v.START, dtype=torch.long)
        log_p = baselines.unigram_log_p.float()
        state = None
        if grammar is not None:
            state = grammar.initial_state(count, "cpu")
            grammar.advance(state, ids[:, 0])
        out = [ids[:, 0]]
        for _ in range(length - 1):
            logits = policy_logits(
                log_p.expand(count, -1), temperature, grammar, state, policies, pitch_t
            )
            token = sample(
                logits, generator=generator, temperature=float(temperature > 0), top_p=top_p
            )
            if state is not None:
                grammar.advance(state, token)
            out.append(token)
        return torch.stack(out, 1).tolist()


def _state_gains(model) -> dict[str, float]:
    """The mean of each of `model`'s state gains (`StateLogits`), in nats; {} without."""
    from stretto.engine.notes import STATE_LOGIT_SCALE

    if model.state_logits is None:
        return {}
    return {
        name: float(gain.detach().mean()) * STATE_LOGIT_SCALE
        for name, gain in model.state_logits.named_parameters()
    }


def _strip(sequences: list[list[int]], vocab) -> list[list[int]]:
    """Sequences without the PAD that follows END in a batch."""
    out = []
    for ids in sequences:
        end = len(ids)
        while end > 1 and ids[end - 1] == vocab.PAD:
            end -= 1
        out.append(ids[:end])
    return out


def _closer(distances: dict[str, dict], unigram: dict[str, dict]) -> dict[str, bool | None]:
    """Per statistic of `quality_music.STATISTICS`: closer to held-out than the unigram."""
    from benchmarks.quality_music import STATISTICS

    return {k: _less(distances[k]["distance"], unigram[k]["distance"]) for k in STATISTICS}


def _less(a: float | None, b: float | None, *, strict: bool = True) -> bool | None:
    if a is None or b is None:
        return None
    return a < b if strict else a <= b
