"""Crash safety: a checkpoint save or a corpus build killed (SIGKILL) at chosen points.

One helper process imports torch/numba once, then forks a child per kill point; the
child arms a hook that SIGKILLs itself at that point of the real code path (part-way
through writing the temporary file, before its fsync, just before or just after an
`os.replace`) and starts the save or build. The points are drawn from seeded RNGs.
"""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch
from bounded import run_bounded
from hardening_scores import write_random_midi

from stretto.engine import ModelConfig, MusicModel, load_checkpoint
from stretto.tokenizer import Vocabulary

if not sys.platform.startswith("linux"):
    pytest.skip("fork and SIGKILL semantics are POSIX; /proc is Linux's", allow_module_level=True)

KILL_HOOKS = """
import os, signal

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def arm(kind, at):
    '''SIGKILL this process at the `at`-th event of `kind` (counted from 0).'''
    seen = [0]

    def due():
        seen[0] += 1
        return seen[0] - 1 == at

    if kind == "write":  # after `at` bytes of the temporary file
        real_fdopen = os.fdopen

        class Killing:
            def __init__(self, f):
                self.f, self.n = f, 0
            def write(self, b):
                b = bytes(b)
                if self.n + len(b) > at:
                    self.f.write(b[: at - self.n])
                    self.f.flush()
                    die()
                self.n += len(b)
                return self.f.write(b)
            def __getattr__(self, name):
                return getattr(self.f, name)
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

        os.fdopen = lambda *a, **k: Killing(real_fdopen(*a, **k))
    if kind == "fsync":  # the temporary file written, not yet synced or renamed
        real = os.fsync
        os.fsync = lambda fd: die() if due() else real(fd)
    elif kind == "before_replace":
        real = os.replace
        os.replace = lambda a, b: die() if due() else real(a, b)
    elif kind == "after_replace":
        real = os.replace
        def replace(a, b):
            real(a, b)
            if due():
                die()
        os.replace = replace

def run_killed(kind, at, fn):
    '''fn() in a forked child armed to die at the point; True when it was killed.'''
    pid = os.fork()
    if pid == 0:
        arm(kind, at)
        fn()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
"""

# -- checkpoints ---------------------------------------------------------------------------
CHECKPOINT_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from stretto.engine import ModelConfig, MusicModel
from stretto.engine.checkpoint import save_checkpoint
from stretto.tokenizer import Vocabulary

cases = json.loads(sys.stdin.read())
cfg = ModelConfig.from_vocab(Vocabulary(), mode="transformer", preset="tiny")
torch.manual_seed(2)
new = MusicModel(cfg)
for case in cases:
    at = case["at"]
    if case["kind"] == "write":  # a fraction of a whole file's bytes
        at = int(case["frac"] * os.path.getsize(case["probe"]))
    killed = run_killed(case["kind"], at, lambda: save_checkpoint(case["path"], new, step=2))
    print(json.dumps({"path": case["path"], "killed": killed}), flush=True)
"""


def _ck_cases(tmp_path, probe) -> list[dict]:
    rng = random.Random(1234)
    cases = [{"kind": "write", "frac": f, "at": 0} for f in (0.0, rng.random(), rng.random())]
    cases += [{"kind": "write", "frac": 0.999, "at": 0}]
    cases += [{"kind": k, "at": 0} for k in ("fsync", "before_replace", "after_replace")]
    for j, case in enumerate(cases):
        case["path"] = str(tmp_path / f"run{j}" / "last.pt")
        case["probe"] = str(probe)
    return cases


def test_checkpoint_save_killed_midway_leaves_the_previous_one_loadable(tmp_path):
    vocab = Vocabulary()
    cfg = ModelConfig.from_vocab(vocab, mode="transformer", preset="tiny")
    torch.manual_seed(1)
    old = MusicModel(cfg)
    probe = tmp_path / "probe.pt"
    torch.manual_seed(2)
    MusicModel(cfg).save(probe, step=2)  # the size of the file the children write
    cases = _ck_cases(tmp_path, probe)
    for case in cases:
        (tmp_path / case["path"]).parent.mkdir()
        old.save(case["path"], step=1)
    code = KILL_HOOKS + CHECKPOINT_CHILD
    proc = run_bounded(code, stdin=json.dumps(cases), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["path"] for o in outcomes] == [c["path"] for c in cases]
    for case, outcome in zip(cases, outcomes, strict=True):
        where = f"{case['kind']} {case.get('frac', '')}"
        assert outcome["killed"], f"{where}: the child was never killed"
        path = tmp_path / case["path"]
        ck = load_checkpoint(path)
        want_step = 2 if case["kind"] == "after_replace" else 1
        assert ck.step == want_step, where
        if want_step == 1:
            for k, v in old.state_dict().items():
                assert torch.equal(ck.model.state_dict()[k], v), f"{where}: {k}"
        others = [p for p in path.parent.iterdir() if p != path]
        # what a kill leaves is a hidden temporary name, never `last.pt` or a *.pt
        for p in others:
            assert p.name.startswith(".last.pt.") and p.name.endswith(".tmp"), p.name
        if case["kind"] == "write":
            assert others, f"{where}: no temporary file (the kill came after the write?)"
            for p in others:
                with pytest.raises(ValueError, match="not a readable Stretto checkpoint"):
                    load_checkpoint(p)


# -- build_corpus ----------------------------------------------------------------------------
CORPUS_CHILD = """
import json, sys
from pathlib import Path
from stretto.tokenizer import build_corpus

args = json.loads(sys.stdin.read())
src, ref = args["src"], Path(args["ref"])
build = lambda out: build_corpus(src, out, workers=1, progress=False, shard_tokens=400)
build(Path(args["work"]) / "warm")  # numba's first compile renames its cache files
# the uninterrupted run, counting the renames it makes
real_replace, count = os.replace, [0]
def counting(a, b):
    count[0] += 1
    real_replace(a, b)
os.replace = counting
build(ref)
os.replace = real_replace
print(json.dumps({"replaces": count[0]}), flush=True)

def tree(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}

want = tree(ref)
rng = __import__("random").Random(args["seed"])
for j in range(args["kills"]):
    kind = ("before_replace", "after_replace", "fsync")[j % 3]
    at = rng.randrange(count[0])
    out = Path(args["work"]) / f"kill{j}"
    killed = run_killed(kind, at, lambda: build(out))
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    report = build(out)  # resume
    got = tree(out)
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    print(json.dumps({"kind": kind, "at": at, "killed": killed, "left": left,
                      "skipped": report.skipped, "diff": diff}), flush=True)
"""


@pytest.mark.parametrize("seed", [0, 1], ids=["seed0", "seed1"])
def test_build_corpus_killed_then_resumed_equals_an_uninterrupted_build(tmp_path, seed):
    src = tmp_path / "midi"
    src.mkdir()
    write_random_midi(src, 12, seed=seed)
    (src / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00")  # refused
    args = {"src": str(src), "ref": str(tmp_path / "ref"), "work": str(tmp_path), "seed": seed}
    args["kills"] = 6
    proc = run_bounded(KILL_HOOKS + CORPUS_CHILD, stdin=json.dumps(args), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, *runs = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["replaces"] > 6, "too few shards for kills in the middle"
    assert len(runs) == args["kills"]
    for run in runs:
        assert run["killed"], run
        assert run["diff"] == [], f"resumed build differs: {run}"
    # the kills landed both before any manifest and after some shards were recorded
    assert any(run["skipped"] > 0 for run in runs), runs
