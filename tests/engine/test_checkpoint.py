"""Checkpoints: exact round trip, atomic writes, clear errors on a mismatch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stretto.engine import ModelConfig, MusicModel, load_checkpoint

MODES = ("transformer", "vae", "vae_gan")


def _train_a_little(model, ids):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model.loss({"input_ids": ids})["loss"].backward()
        opt.step()
    return opt


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_is_exact(make_model, vocab, mode, tmp_path):
    model = make_model(mode)
    ids = torch.randint(0, vocab.size, (2, 77))
    opt = _train_a_little(model, ids)
    path = tmp_path / "ck.pt"
    model.save(path, optimizers={"generator": opt}, step=7, extra={"note": "x"})

    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.extra == {"note": "x"}
    assert ck.model.config == model.config
    mine, theirs = model.state_dict(), ck.model.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    opt2 = torch.optim.AdamW(ck.model.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizers["generator"])
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"])
    model.eval()
    ck.model.eval()
    assert torch.equal(model(ids), MusicModel.load(path).eval()(ids))
    assert list(tmp_path.iterdir()) == [path], "a temporary file was left behind"


@dataclasses.dataclass(frozen=True)
class _OtherVocabulary:
    size: int = 774
    PAD: int = 2
    signature: str = "stretto-vocab-v1-0000000000000000"


def test_checkpoint_from_another_vocabulary(make_model, tmp_path):
    path = tmp_path / "ck.pt"
    make_model("transformer").save(path)
    with pytest.raises(ValueError, match="vocabulary differs: vocab_signature"):
        MusicModel.load(path, vocab=_OtherVocabulary())
    payload = torch.load(path, weights_only=True)
    payload["vocab_signature"] = "stretto-vocab-v0-387ids"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="'stretto-vocab-v0-387ids'"):
        MusicModel.load(path)


def test_checkpoint_with_another_config_names_the_field(make_model, tmp_path):
    path = tmp_path / "ck.pt"
    model = make_model("vae")
    model.save(path)
    expected = model.config.replace(window=64, latent_dim=8)
    with pytest.raises(ValueError, match=r"window: 64 != 32.*latent_dim: 8 != 16"):
        MusicModel.load(path, config=expected)
    assert MusicModel.load(path, config=model.config).config == model.config


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable Stretto checkpoint"):
        MusicModel.load(bad)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a Stretto checkpoint"):
        MusicModel.load(bad)
    with pytest.raises(FileNotFoundError):
        MusicModel.load(tmp_path / "missing.pt")


def test_failed_save_keeps_the_previous_file(make_model, tmp_path):
    path = tmp_path / "ck.pt"
    model = make_model("transformer")
    model.save(path, step=1)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (pickling a lambda fails, type varies)
        model.save(path, step=2, extra={"bad": lambda: None})
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_config_differences_lists_every_field(vocab):
    a = ModelConfig.from_vocab(vocab, preset="tiny")
    b = a.replace(d_ff=256, dropout=0.1)
    assert a.differences(b) == ["d_ff: 128 != 256", "dropout: 0.0 != 0.1"]


def test_save_removes_stale_temp_files_of_killed_saves(make_model, tmp_path):
    import os
    import time

    from stretto.engine import checkpoint

    path = tmp_path / "ck.pt"
    stale = tmp_path / ".ck.pt.abc123.tmp"  # what a save killed mid-write leaves
    fresh = tmp_path / ".ck.pt.def456.tmp"  # a save still writing in another process
    other = tmp_path / ".other.pt.abc123.tmp"  # another checkpoint's temp file
    for f in (stale, fresh, other):
        f.write_bytes(b"partial")
    old = time.time() - checkpoint.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    make_model("transformer").save(path, step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, fresh.name, other.name])
