"""`stretto train`: train a model on a token corpus (or a folder of MIDI files)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from stretto.engine import ModelConfig, MusicModel, TrainConfig, Trainer
from stretto.engine.distributed import launch_from_env, setup
from stretto.tokenizer import TokenDataset, Vocabulary
from stretto.tokenizer.corpus import MANIFEST, build_corpus

DESCRIPTION = """\
Train a Stretto model on CORPUS_DIR and write RUN_DIR/{last.pt, log.jsonl, loss.png,
config.json, train_config.json}.

CORPUS_DIR is a token corpus from `build_corpus` (a folder with manifest.json) or a
folder of MIDI files, which is tokenized first into RUN_DIR/corpus. A tenth of the
windows (at most 256) is held out for the validation loss. RUN_DIR must not exist
unless --force is given (its previous outputs are then replaced).

example:
  stretto train corpus/ --mode vae --seq-len 1024 --preset small --steps 2000 --out runs/vae

multi-GPU (data parallel, DDP; add --fsdp to shard a model too big for one GPU):
  {one_node}
multi-node (run on every node, NODE_RANK = 0..N-1, HOST = node 0's address):
  {two_nodes}
Under torchrun, --batch-size is per GPU; rank 0 writes RUN_DIR. Tokenize the corpus
first (`stretto tokenize`, or --shard i/n on several machines then --merge).
"""

RUN_FILES = ("last.pt", "log.jsonl", "loss.png", "config.json", "train_config.json")


def torchrun_command(nproc: int = 8, nnodes: int = 1, train_args: str = "...") -> str:
    """The launch line for `stretto train` on `nnodes` machines of `nproc` GPUs each."""
    program = f"-m stretto.engine.cli train {train_args}"
    if nnodes == 1:
        return f"torchrun --standalone --nproc-per-node {nproc} {program}"
    return (
        f"torchrun --nnodes {nnodes} --nproc-per-node {nproc} --node-rank $NODE_RANK "
        f"--rdzv-backend c10d --rdzv-endpoint $HOST:29500 {program}"
    )


def _split(dataset, seed: int):
    from torch.utils.data import Subset

    n = len(dataset)
    n_val = min(256, n // 10)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    train = Subset(dataset, order[n_val:])
    return train, (Subset(dataset, order[:n_val]) if n_val else None)


def _corpus(folder: Path, out: Path, workers: int | None) -> Path:

    if (folder / MANIFEST).is_file():
        return folder
    report = build_corpus(folder, out / "corpus", workers=workers, progress=False)
    return Path(report.out_dir)


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


def _prepare(args: argparse.Namespace) -> Path:
    """Check and create RUN_DIR; the token corpus to train on (tokenized if needed)."""
    corpus_dir, out = Path(args.corpus_dir), Path(args.out)
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
    return _corpus(corpus_dir, out, args.workers)


def _run(args: argparse.Namespace, launch) -> int:
    out = Path(args.out)
    if launch is None:
        corpus = _prepare(args)
    else:
        # Rank 0 checks RUN_DIR and tokenizes; the others wait and share its answer.

        answer: list = [None]
        if launch.is_main:
            try:
                answer = [("ok", str(_prepare(args)))]
            except (ValueError, OSError) as exc:
                answer = [("error", str(exc))]
        dist.broadcast_object_list(answer, src=0)
        status, text = answer[0]
        if status == "error":
            raise ValueError(text if launch.is_main else f"rank 0: {text}")
        corpus = Path(text)

    dataset = TokenDataset(corpus, args.seq_len)
    if len(dataset) == 0:
        raise ValueError(f"{corpus} holds no token windows")
    train_set, val_set = _split(dataset, args.seed)

    overrides = {}
    if args.seq_len > 2048:
        overrides["max_seq_len"] = args.seq_len
    config = ModelConfig.from_vocab(Vocabulary(), mode=args.mode, preset=args.preset, **overrides)
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=min(args.warmup, max(args.steps // 10, 0)),
        precision=args.precision,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        strategy="fsdp" if args.fsdp else "ddp",
        dist_timeout_s=args.dist_timeout,
    )

    torch.manual_seed(args.seed)
    model = MusicModel(config)
    trainer = Trainer(model, train_set, val_set, train_config, out_dir=out, device=args.device)
    history = trainer.fit()
    if launch is not None and not launch.is_main:
        return 0
    last = [r for r in history if r["split"] == "train"][-1]
    where = "" if launch is None else f" x {launch.world_size} ranks ({train_config.strategy})"
    print(
        f"trained {args.mode} ({args.preset}){where} for {trainer.step} steps on {len(train_set)} "
        f"windows of {args.seq_len}: loss {last['loss']:.4f}; outputs in {out}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a token corpus or a MIDI folder",
        description=DESCRIPTION.replace(
            "{one_node}", torchrun_command(8, 1, "corpus/ --out runs/big --preset base")
        ).replace("{two_nodes}", torchrun_command(8, 2, "corpus/ --out runs/big --preset base")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("corpus_dir", metavar="CORPUS_DIR", help="token corpus or MIDI folder")
    p.add_argument("--mode", choices=("transformer", "vae", "vae_gan"), default="transformer")
    p.add_argument("--seq-len", type=int, default=1024, help="window length (default 1024)")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create")
    p.add_argument("--force", action="store_true", help="overwrite an existing RUN_DIR")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100, help="warmup steps (at most steps/10)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--eval-every", type=int, default=200, help="steps between validations")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes")
    p.add_argument("--seed", type=int, default=0)
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
