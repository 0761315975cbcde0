"""The vae modes do what their names promise, measured on files the training never saw:
a short vae run uses its latent (the latent gap on held-out windows clears the audit's
threshold, and interpolation endpoints reconstruct their own inputs better than the
other end's), and a short vae_gan run leaves its discriminator unsaturated."""

from __future__ import annotations

import pytest
import torch

from stretto.engine import ModelConfig, MusicModel, TrainConfig, Trainer
from stretto.engine.audit.quality import DISCRIMINATOR_BAND, LATENT_GAP_MIN
from stretto.engine.evaluation import held_out_batches
from stretto.engine.generate import interpolate, slerp
from stretto.engine.objectives import sequence_nll
from stretto.tokenizer import FileSplit, Vocabulary, build_corpus

pytestmark = pytest.mark.slow
SEQ_LEN = 256


@pytest.fixture(scope="module")
def split(midi_corpus, tmp_path_factory):
    """Thirty dev files split by file: a tenth held out."""
    out = tmp_path_factory.mktemp("latent") / "corpus"
    build_corpus(midi_corpus[:30], out, workers=1, progress=False)
    return FileSplit.make(out)


def _train(split, mode: str, steps: int) -> tuple[MusicModel, list[dict]]:
    train, val = split.datasets(SEQ_LEN)
    torch.manual_seed(0)
    model = MusicModel(ModelConfig.from_vocab(Vocabulary(), mode=mode, preset="tiny"))
    config = TrainConfig(
        steps=steps, batch_size=4, lr=1e-3, warmup_steps=10, eval_every=steps,
        eval_batches=8, log_every=50,
    )  # fmt: skip
    history = Trainer(model, train, val, config, device="cpu", progress=False).fit()
    return model.eval(), history


@pytest.fixture(scope="module")
def vae(split):
    return _train(split, "vae", 600)


def test_a_short_vae_run_uses_its_latent_on_unseen_files(vae):
    _, history = vae
    val = [r for r in history if r["split"] == "val"][-1]
    assert val["latent_gap"] > LATENT_GAP_MIN, val
    assert val["active_units"] > 0, val


def test_interpolation_endpoints_reconstruct_their_own_input(vae, split):
    model, _ = vae
    _, val = split.datasets(SEQ_LEN)
    batches, files = held_out_batches(val, windows=8, batch_size=8)
    ids = batches[0]["input_ids"]
    a, b = ids[0], next(ids[i] for i in range(1, len(ids)) if files[i] != files[0])
    z, pieces = interpolate(model, a, b, steps=3, max_new_tokens=16, temperature=0)
    assert z.shape == (3, model.config.latent_dim) and pieces.shape[0] == 3
    with torch.no_grad():
        mu_a, mu_b = (model.encode(x[None])[0][0] for x in (a, b))
    torch.testing.assert_close(z[0], mu_a)
    torch.testing.assert_close(z[-1], mu_b)

    def nll(x, zz):
        x = x[None]
        mask = x != model.config.pad_id
        s, n = sequence_nll(model.decode(x, mask, z=zz[None]), x, mask, model.config.pad_id)
        return float(s / n)

    with torch.no_grad():
        assert nll(a, z[0]) < nll(a, z[-1])
        assert nll(b, z[-1]) < nll(b, z[0])


def test_slerp_keeps_the_arc():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    mid = slerp(a, b, 3)[1]
    torch.testing.assert_close(mid.norm(), torch.tensor(3.0))  # the line's midpoint: 2.12
    torch.testing.assert_close(mid, torch.tensor([3 / 2**0.5, 3 / 2**0.5]))


def test_a_short_vae_gan_run_leaves_the_discriminator_unsaturated(split):
    model, history = _train(split, "vae_gan", 300)
    val = [r for r in history if r["split"] == "val"][-1]
    lo, hi = DISCRIMINATOR_BAND
    assert lo <= val["acc_real"] <= hi and lo <= val["acc_fake"] <= hi, val
    train = [r for r in history if r["split"] == "train"]
    assert any(r.get("adv_weight", 0) > 0 for r in train), "the adversarial term never ran"
