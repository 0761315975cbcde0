"""Data-parallel training on 2 gloo ranks (CPU, loopback only): DDP and FSDP2 keep the
ranks identical, match a single process on the same global batch, write checkpoints
that load in one process, and a dead rank makes the survivor fail in bounded time.

Ranks are plain subprocesses started with the variables torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): unlike torchrun's agent, nothing
kills the survivor when a rank dies, so the process-group timeout is what is tested.
Run as a script, this file is the worker: `python test_distributed.py SPEC.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import torch

WORLD = 2
PROCESS_TIMEOUT_S = 120  # a test can never hang longer than this per launch


# -- the worker (one rank) ------------------------------------------------------------------
def _param_digest(model) -> str:
    """sha256 of every full parameter (FSDP shards are gathered: a collective)."""
    h = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker(spec: dict) -> None:
    from stretto.engine import ModelConfig, MusicModel, TrainConfig, Trainer
    from stretto.tokenizer import Vocabulary

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    # blocks of 16, as the `make_model` fixture of the single-process reference
    model = MusicModel(
        ModelConfig.from_vocab(Vocabulary(), mode=spec["mode"], preset="tiny", block=16)
    )
    batches = torch.load(spec["batches"])
    digests: list[str] = []

    class Recording(Trainer):
        def train_step(self, micro):
            if rank == spec.get("die_rank") and self.step == spec.get("die_step"):
                if spec.get("hang"):  # alive, but never joins the next collective
                    threading.Event().wait()
                os._exit(7)  # a crash: no cleanup, no goodbye to the process group
            row = super().train_step(micro)
            digests.append(_param_digest(self.module))
            return row

    config = TrainConfig(**spec["config"])
    trainer = Recording(model, batches, config=config, out_dir=spec["out"], device="cpu")
    if spec.get("resume"):
        trainer.resume(spec["resume"])
    history = trainer.fit()
    Path(spec["out"], f"rank{rank}.json").write_text(
        json.dumps({"digests": digests, "history": history})
    )
    trainer.close()


# -- the launcher ------------------------------------------------------------------------
def _free_port() -> int:
    """A free port for the rendezvous, from below the kernel's ephemeral range.

    Rank 0 binds it seconds after the launcher picked it (once torch is imported). A
    port from the ephemeral range may be handed to another socket meanwhile: the gloo
    ranks of tests running beside this one bind ephemeral ports all the time, and a
    rank that reaches a stranger's socket can wait in silence until the launcher's
    timeout. Below that range only a port picked the same way can collide."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 0
    rng = random.Random()  # seeded from the OS: each worker of the run draws its own
    for _ in range(64 if low > 20_000 else 0):
        port = rng.randrange(20_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no range known (or none free below it): the kernel's pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(spec: dict, tmp_path: Path, wait=range(WORLD)) -> list[subprocess.CompletedProcess]:
    """Start the ranks, wait for those in `wait` (bounded), then kill any still running."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(spec_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = {}
    try:
        for rank in wait:
            out, err = procs[rank].communicate(timeout=PROCESS_TIMEOUT_S)
            results[rank] = subprocess.CompletedProcess(
                procs[rank].args, procs[rank].returncode, out, err
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for rank, p in enumerate(procs):
            if rank not in results:
                out, err = p.communicate()
                results[rank] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return [results[rank] for rank in range(WORLD)]


if __name__ == "__main__":
    _worker(json.loads(Path(sys.argv[1]).read_text()))
    # The rank's results are written and it has left the process group: exit without the
    # interpreter's teardown, where torch's gloo threads now and then abort the process
    # ("terminate called without an active exception", SIGABRT) after a clean run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the tests -------------------------------------------------------------------------------
import pytest  # noqa: E402

from stretto.engine import MusicModel, TrainConfig, Trainer  # noqa: E402
from stretto.engine.cli.train import torchrun_command  # noqa: E402
from stretto.engine.data import rank_batches  # noqa: E402
from stretto.engine.distributed import launch_from_env  # noqa: E402

STEPS = 3
CONFIG = {
    "steps": STEPS,
    "lr": 3e-3,
    "warmup_steps": 1,
    "eval_every": 0,
    "log_every": 1,
    "checkpoint_every": 0,
    "dist_timeout_s": 30.0,
}


@pytest.fixture(autouse=True)
def _no_launch_env(monkeypatch):
    """The single-process reference runs must not see a launch of their own."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def global_batches(windows, tmp_path):
    """Two global batches of 4 windows of real music (2 per rank), saved for the ranks."""
    batches = []
    for start in (0, 128):
        ids = torch.cat([windows(64, start=start), windows(64, start=start + 64)])  # [4, 64]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)})
    path = tmp_path / "batches.pt"
    torch.save(batches, path)
    return batches, path


def _reference(make_model, mode, batches, steps=STEPS, out_dir=None, grad_accum=1):
    torch.manual_seed(0)
    model = make_model(mode)
    config = TrainConfig(**{**CONFIG, "steps": steps, "grad_accum": grad_accum})
    trainer = Trainer(model, batches, config=config, device="cpu", out_dir=out_dir, progress=False)
    digests = []
    history = []
    drawn = 0
    for _ in range(steps):  # the loop of fit, one step at a time, recording weights
        micro = [batches[(drawn + j) % len(batches)] for j in range(grad_accum)]
        drawn += grad_accum
        history.append(trainer.train_step(micro))
        digests.append(_param_digest(model))
    return trainer, history


def _check_ok(results):
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} failed:\n{r.stderr[-4000:]}"


# (mode, strategy, loss tolerance). The vae modes sample z per rank from a per-rank
# seed, so their losses match a single process only up to that sampling noise.
# vae_gan covers the vae path plus the two-optimizer step; the transformer cases take
# two micro-batches per step (gradients reduced on the second only).
CASES = [
    pytest.param("transformer", "ddp", 2, 1e-5, id="transformer-ddp-accum2"),
    pytest.param("vae_gan", "ddp", 1, 5e-2, id="vae_gan-ddp"),
    pytest.param("transformer", "fsdp", 2, 1e-5, id="transformer-fsdp-accum2"),
    pytest.param("vae_gan", "fsdp", 1, 5e-2, id="vae_gan-fsdp"),
]


@pytest.mark.parametrize(("mode", "strategy", "accum", "tol"), CASES)
def test_two_ranks_train_like_one_process(
    make_model, global_batches, tmp_path, mode, strategy, accum, tol
):
    batches, path = global_batches
    out = tmp_path / "run"
    spec = {
        "mode": mode,
        "batches": str(path),
        "out": str(out),
        "config": {**CONFIG, "strategy": strategy, "grad_accum": accum},
    }
    _check_ok(_launch(spec, tmp_path))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert len(ranks[0]["digests"]) == STEPS
    assert ranks[0]["digests"] == ranks[1]["digests"], "ranks diverged"

    _, ref = _reference(make_model, mode, batches, grad_accum=accum)
    got = [r for r in ranks[0]["history"] if r["split"] == "train"]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for step, (a, b) in enumerate(zip(got, ref, strict=True), start=1):
        assert a["loss"] == pytest.approx(b["loss"], rel=tol, abs=1e-5), f"loss at step {step}"
        if mode == "vae_gan":
            # the discriminator scores fakes each rank samples with its own noise: on two
            # windows per rank that is a coarser estimate than the generator's loss
            d = pytest.approx(b["disc_loss"], rel=4 * tol)
            assert a["disc_loss"] == d, f"disc_loss at step {step}"

    # rank 0 wrote the files, and its checkpoint loads in a plain process
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    loaded = MusicModel.load(out / "last.pt")
    assert _param_digest(loaded) == ranks[0]["digests"][-1]
    single = Trainer(make_model(mode), batches, config=TrainConfig(**CONFIG), device="cpu")
    single.resume(out / "last.pt")
    assert single.step == STEPS
    assert set(single.optimizers) == (
        {"generator", "discriminator"} if mode == "vae_gan" else {"generator"}
    )
    assert single.optimizers["generator"].state_dict()["state"], "optimizer state was lost"


def test_single_process_checkpoint_resumes_on_two_ranks(make_model, global_batches, tmp_path):
    """Resume at step 2 of a plain run on 2 FSDP ranks (the harder way: the state is
    sharded on load): the weights at step 4 match those of the plain run going on
    (optimizer moments included, or they would not). DDP loads the plain state as is."""
    strategy = "fsdp"
    batches, path = global_batches
    half, _ = _reference(make_model, "transformer", batches, steps=2, out_dir=tmp_path / "a")
    half.save(tmp_path / "a" / "last.pt")
    full, _ = _reference(make_model, "transformer", batches, steps=4)
    out = tmp_path / "run"
    spec = {
        "mode": "transformer",
        "batches": str(path),
        "out": str(out),
        "resume": str(tmp_path / "a" / "last.pt"),
        "config": {**CONFIG, "steps": 4, "strategy": strategy},
    }
    _check_ok(_launch(spec, tmp_path))
    resumed = MusicModel.load(out / "last.pt")
    want = full.model.state_dict()
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("hang", [False, True], ids=["crashed", "hung"])
def test_dead_rank_makes_the_other_fail_in_bounded_time(global_batches, tmp_path, hang):
    """A crashed rank closes its sockets (the survivor's next collective fails at once);
    a hung one does not, and only the process-group timeout ends the wait."""
    _, path = global_batches
    spec = {
        "mode": "transformer",
        "batches": str(path),
        "out": str(tmp_path / "run"),
        "die_rank": 1,
        "die_step": 1,
        "hang": hang,
        "config": {**CONFIG, "dist_timeout_s": 15.0 if hang else 20.0},
    }
    survivor, dead = _launch(spec, tmp_path, wait=[0])  # bounded by PROCESS_TIMEOUT_S
    assert dead.returncode == (-9 if hang else 7)
    assert survivor.returncode != 0
    assert "rank 0 of 2 stopped at step 1" in survivor.stderr, survivor.stderr[-4000:]


class _Windows(torch.utils.data.Dataset):
    """n items {"x": i}: which windows a rank read."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor(i)}


def _rows(n: int, rank: int, epochs: int) -> list[list[int]]:
    it = rank_batches(
        _Windows(n), batch_size=1, shuffle=True, seed=3, num_workers=0, rank=rank, world_size=2
    )
    return [[int(next(it)["x"]) for _ in range(n // 2)] for _ in range(epochs)]


@pytest.mark.parametrize("n", [7, 10, 63], ids=lambda n: f"windows{n}")
def test_rank_slices_are_disjoint_and_reshuffled_per_epoch(n):
    a, b = _rows(n, 0, 3), _rows(n, 1, 3)
    for e in range(3):
        assert not set(a[e]) & set(b[e])
        assert len(set(a[e] + b[e])) == 2 * (n // 2)
    assert len({tuple(a[e] + b[e]) for e in range(3)}) == 3, "not reshuffled per epoch"


def test_too_few_windows_for_the_ranks():
    batches = rank_batches(
        _Windows(1), batch_size=1, shuffle=True, seed=3, num_workers=0, rank=0, world_size=2
    )
    with pytest.raises(ValueError, match="1 windows for 2 ranks"):
        next(batches)


def test_ready_batches_split_by_rows():
    batch = {"x": torch.arange(6).view(6, 1)}
    kwargs = {"batch_size": 1, "shuffle": True, "seed": 0, "num_workers": 0}
    rows = [
        next(rank_batches([batch], rank=r, world_size=2, **kwargs))["x"].flatten().tolist()
        for r in (0, 1)
    ]
    assert rows == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="does not split"):
        next(rank_batches([batch], rank=0, world_size=4, **kwargs))


@pytest.mark.parametrize(
    ("env", "want"),
    [
        pytest.param({}, None, id="plain"),
        pytest.param({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2, 1), id="rank1"),
    ],
)
def test_launch_from_env(env, want):
    launch = launch_from_env(env)
    assert (None if launch is None else (launch.rank, launch.world_size, launch.local_rank)) == want


def test_launch_env_is_validated():
    with pytest.raises(ValueError, match="outside"):
        launch_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="integers"):
        launch_from_env({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(strategy="zero3")


def test_train_help_prints_the_torchrun_command(capsys):
    from stretto.engine.cli import main as stretto

    with pytest.raises(SystemExit):
        stretto(["train", "--help"])
    text = capsys.readouterr().out
    assert torchrun_command(8, 1, "corpus/ --out runs/big --preset base") in text
    assert "--nnodes 2 --nproc-per-node 8" in text
    assert "--fsdp" in text


def test_stretto_train_under_torchrun(midi_corpus, tmp_path):
    """The command from the help, on 2 gloo ranks: rank 0 tokenizes and writes the run."""
    from stretto.tokenizer import build_corpus

    build_corpus(midi_corpus[:3], tmp_path / "corpus", workers=1, progress=False)
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    cmd += ["--nproc-per-node", str(WORLD), "--rdzv-backend", "c10d"]
    cmd += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1"]
    cmd += ["-m", "stretto.engine.cli", "train", str(tmp_path / "corpus")]
    cmd += ["--out", str(tmp_path / "run"), "--preset", "tiny", "--seq-len", "64"]
    cmd += ["--steps", "2", "--batch-size", "2", "--log-every", "1"]
    cmd += ["--device", "cpu", "--dist-timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("trained transformer (tiny) x 2 ranks (ddp) to step 2") == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    assert MusicModel.load(tmp_path / "run" / "last.pt").config.mode == "transformer"
