"""`stretto train`: train a model on a token corpus (or a folder of MIDI files)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from stretto.engine import ModelConfig, MusicModel, TrainConfig, Trainer
from stretto.engine.cli.runs import RUN, parse_settings, read_run, settings_help, write_run
from stretto.engine.distributed import Launch, launch_from_env, setup
from stretto.tokenizer import FileSplit, Vocabulary
from stretto.tokenizer.corpus import MANIFEST, build_corpus

DESCRIPTION = """\
Train a Stretto model on CORPUS_DIR and write RUN_DIR/{last.pt, log.jsonl, loss.png,
config.json, train_config.json, split.json, run.json}.

CORPUS_DIR is a token corpus from `build_corpus` (a folder with manifest.json) or a
folder of MIDI files, which is tokenized first into RUN_DIR/corpus. Validation holds out
whole files (--val-fraction of them, default a tenth, at least one), never windows:
split.json names the files on each side. RUN_DIR must not exist unless --force is given
(its previous outputs are then replaced). --resume RUN_DIR continues a run from its
last.pt with its own split and settings, exactly where it stopped; --config
RUN_DIR/train_config.json reruns a logged run into a new RUN_DIR. Every field of
ModelConfig and TrainConfig can be set with --set key=value (repeatable; listed below).

examples:
  stretto train corpus/ --mode vae --seq-len 1024 --preset small --steps 2000 --out runs/vae
  stretto train corpus/ --out runs/w --set window=64 --set block=16 --set dropout=0.1
  stretto train --resume runs/vae --steps 4000      continue, up to 4000 steps in all
  stretto train --config runs/vae/train_config.json --out runs/vae-again

multi-GPU (data parallel, DDP; add --fsdp to shard a model too big for one GPU):
  {one_node}
multi-node (run on every node, NODE_RANK = 0..N-1, HOST = node 0's address):
  {two_nodes}
Under torchrun, --batch-size is per GPU; rank 0 writes RUN_DIR. Tokenize the corpus
first (`stretto tokenize`, or --shard i/n on several machines then --merge).
"""

RUN_FILES = (
    "last.pt",
    "log.jsonl",
    "loss.png",
    "config.json",
    "train_config.json",
    "split.json",
    RUN,
)
# The flags that are TrainConfig fields, and the field each sets.
TRAIN_FLAGS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "lr": "lr",
    "precision": "precision",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
    "seed": "seed",
    "workers": "num_workers",
}


def torchrun_command(nproc: int = 8, nnodes: int = 1, train_args: str = "...") -> str:
    """The launch line for `stretto train` on `nnodes` machines of `nproc` GPUs each."""
    program = f"-m stretto.engine.cli train {train_args}"
    if nnodes == 1:
        return f"torchrun --standalone --nproc-per-node {nproc} {program}"
    return (
        f"torchrun --nnodes {nnodes} --nproc-per-node {nproc} --node-rank $NODE_RANK "
        f"--rdzv-backend c10d --rdzv-endpoint $HOST:29500 {program}"
    )


@dataclasses.dataclass
class Plan:
    """Everything a run needs: where, on what, with which configs."""

    out: Path
    split: FileSplit
    seq_len: int
    model: ModelConfig
    train: TrainConfig
    resume: bool


def _corpus(folder: Path, out: Path, workers: int | None) -> Path:
    if (folder / MANIFEST).is_file():
        return folder
    report = build_corpus(folder, out / "corpus", workers=workers, progress=False)
    if report.files == 0:
        raise ValueError(f"no MIDI file in {folder} could be tokenized")
    return Path(report.out_dir)


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig values given as flags on this command line (not their defaults)."""
    return {
        field: getattr(args, flag)
        for flag, field in TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }


def _new_run(args: argparse.Namespace) -> Plan:
    """Check and create RUN_DIR, tokenize if needed, split by file, build the configs."""
    logged: dict[str, Any] = {}
    if args.config is not None:
        logged = _logged_run(Path(args.config))
    if args.corpus_dir is None and "corpus" not in logged:
        raise ValueError("give CORPUS_DIR (or --config of a logged run, or --resume RUN_DIR)")
    if args.out is None:
        raise ValueError("--out RUN_DIR is required (except with --resume)")
    corpus_dir, out = Path(args.corpus_dir or logged["corpus"]), Path(args.out)
    if not corpus_dir.is_dir():
        raise ValueError(f"corpus folder {corpus_dir} does not exist")
    if out.exists():
        if not args.force:
            raise ValueError(f"run folder {out} already exists; pass --force to overwrite it")
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        # Only this command's own outputs are removed; a tokenized corpus/ is reused.
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    corpus = _corpus(corpus_dir, out, args.tokenize_workers)
    model_set, train_set = parse_settings(args.set or [])
    seq_len = args.seq_len or logged.get("seq_len") or 1024
    val_fraction = args.val_fraction if args.val_fraction is not None else 0.1
    split = FileSplit.make(
        corpus, val_fraction=logged.get("val_fraction", val_fraction), seed=logged.get("seed", 0)
    )
    if "model" in logged:
        model = ModelConfig.from_dict(logged["model"]).replace(**model_set)
    else:
        if seq_len > 2048:
            model_set.setdefault("max_seq_len", seq_len)
        model = ModelConfig.from_vocab(
            Vocabulary(),
            mode=args.mode or "transformer",
            preset=args.preset or "small",
            **model_set,
        )
    values = {**logged.get("train", {}), **_explicit(args), **train_set}
    if "train" not in logged and "warmup_steps" not in values:
        values["warmup_steps"] = min(100, max(values.get("steps", 1000) // 10, 0))
    if args.fsdp:
        values["strategy"] = "fsdp"
    if args.tensorboard:
        values["loggers"] = ("tensorboard",)
    values.setdefault("dist_timeout_s", args.dist_timeout)
    train = TrainConfig.from_dict(values)
    return Plan(out, split, seq_len, model, train, resume=False)


def _logged_run(path: Path) -> dict[str, Any]:
    """A run folder's settings from its train_config.json (and the files beside it)."""
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    folder = path.parent
    train = TrainConfig.load_json(path).to_dict()
    try:
        model = json.loads((folder / "config.json").read_text())
        run = json.loads((folder / RUN).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"--config {path}: a logged run folder holds train_config.json, config.json "
            f"and {RUN} ({exc})"
        ) from None
    return {"train": train, "model": model, **run}


def _resumed_run(args: argparse.Namespace) -> Plan:
    out = Path(args.resume)
    if not (out / "last.pt").is_file():
        raise ValueError(f"--resume {out}: no last.pt there to continue from")
    split, seq_len = read_run(out)
    model = ModelConfig.load_json(out / "config.json")
    values = TrainConfig.load_json(out / "train_config.json").to_dict()
    values.update(_explicit(args))
    return Plan(out, split, seq_len, model, TrainConfig.from_dict(values), True)


def run(args: argparse.Namespace) -> int:
    launch = launch_from_env()
    if launch is None:
        return _run(args, None)
    joined = not dist.is_initialized()
    setup(launch, args.device, args.dist_timeout)
    try:
        return _run(args, launch)
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def _plan(args: argparse.Namespace, launch: Launch | None) -> Plan:
    """The plan, made by rank 0 (which checks RUN_DIR and tokenizes) and shared."""
    make = _resumed_run if args.resume else _new_run
    if launch is None:
        return make(args)
    answer: list = [None]
    if launch.is_main:
        try:
            answer = [("ok", make(args))]
        except (ValueError, OSError) as exc:
            answer = [("error", str(exc))]
    dist.broadcast_object_list(answer, src=0)
    status, value = answer[0]
    if status == "error":
        raise ValueError(value if launch.is_main else f"rank 0: {value}")
    return value


def _run(args: argparse.Namespace, launch: Launch | None) -> int:
    plan = _plan(args, launch)
    train_set, val_set = plan.split.datasets(plan.seq_len)
    if launch is None or launch.is_main:
        write_run(plan.out, plan.split, plan.seq_len)
    torch.manual_seed(plan.train.seed)
    model = MusicModel(plan.model)
    trainer = Trainer(model, train_set, val_set, plan.train, out_dir=plan.out, device=args.device)
    if plan.resume:
        trainer.resume(plan.out / "last.pt")
        if trainer.step >= plan.train.steps:
            raise ValueError(
                f"--resume {plan.out}: the run is at step {trainer.step} of "
                f"{plan.train.steps}; pass --steps N (N > {trainer.step}) to train further"
            )
    history = trainer.fit()
    if launch is not None and not launch.is_main:
        return 0
    print(summary(trainer, history, plan, launch, len(train_set), val_set))
    return 0


def summary(trainer: Trainer, history: list[dict], plan: Plan, launch, n_train, val_set) -> str:
    """Two lines: what was trained, and the last validation's measurements."""
    last = [r for r in history if r["split"] == "train"][-1]
    where = "" if launch is None else f" x {launch.world_size} ranks ({plan.train.strategy})"
    files = f"{len(plan.split.train)} files ({n_train} windows of {plan.seq_len})"
    lines = [
        f"trained {plan.model.mode} ({plan.model.preset}){where} to step {trainer.step} on "
        f"{files}: loss {last['loss']:.4f}; outputs in {plan.out}"
    ]
    val = [r for r in history if r["split"] == "val"]
    if val:
        v = val[-1]
        held = f"validation on {len(plan.split.validation)} held-out files: NLL {v['nll']:.4f}"
        if "latent_gap" in v:
            held += f", latent gap {v['latent_gap']:.4f}, active units {v['active_units']}"
        if "acc_real" in v:
            held += f", discriminator accuracy real {v['acc_real']:.2f} / fake {v['acc_fake']:.2f}"
        lines.append(held + " (nats per token)")
    elif val_set is None:
        lines.append("no validation: the corpus has one file")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    description = DESCRIPTION.replace(
        "{one_node}", torchrun_command(8, 1, "corpus/ --out runs/big --preset base")
    ).replace("{two_nodes}", torchrun_command(8, 2, "corpus/ --out runs/big --preset base"))
    p = subparsers.add_parser(
        "train",
        help="train a model on a token corpus or a MIDI folder",
        description=description,
        epilog="settings (defaults before the preset's):\n"
        + "\n".join(textwrap.wrap(settings_help(), 88, subsequent_indent="  ")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "corpus_dir", nargs="?", metavar="CORPUS_DIR", help="token corpus or MIDI folder"
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--config", metavar="FILE", help="rerun a logged run (its train_config.json)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field")
    p.add_argument("--mode", choices=("transformer", "vae", "vae_gan"), default=None)
    p.add_argument("--preset", choices=("tiny", "small", "base"), default=None)
    p.add_argument("--seq-len", type=int, default=None, help="window length (default 1024)")
    p.add_argument("--val-fraction", type=float, default=None, help="held-out files (0.1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing RUN_DIR")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per micro-batch (8)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (1)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (3e-4)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    p.add_argument("--eval-every", type=int, default=None, help="steps between validations")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (0)")
    p.add_argument("--tokenize-workers", type=int, default=None, help="tokenizer processes")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard/")
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard weights, gradients and optimizer states (FSDP2) "
        "instead of replicating them (DDP)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="under torchrun: a collective waiting longer fails the run (default 600)",
    )
    p.set_defaults(func=run)
