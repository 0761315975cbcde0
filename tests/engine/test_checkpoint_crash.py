"""Crash safety: a checkpoint save killed (SIGKILL) at chosen points.

One helper process imports torch once, then forks a child per kill point; the child
arms a hook that SIGKILLs itself at that point of the real code path (part-way through
writing the temporary file, before its fsync, just before or just after an
`os.replace`) and starts the save. The points are drawn from a seeded RNG.
"""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch

from stretto.engine import ModelConfig, MusicModel, load_checkpoint
from stretto.tokenizer import Vocabulary
from tests.bounded import run_bounded
from tests.kill_points import KILL_HOOKS

if not sys.platform.startswith("linux"):
    pytest.skip("fork and SIGKILL semantics are POSIX; /proc is Linux's", allow_module_level=True)

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
