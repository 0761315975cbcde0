"""MusicModel in every mode: forward, losses, gradients, causality, dependence on z."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stretto.engine import ModelConfig, MusicModel, TrainingObjective

MODES = ("transformer", "vae", "vae_gan")
LENGTHS = (512, 1024, 2048, 777)


def _assert_all_grads(named_params, what: str):
    missing, bad, zero = [], [], []
    for name, p in named_params:
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            bad.append(name)
        elif p.grad.abs().max() == 0:
            zero.append(name)
    assert not (missing or bad or zero), (
        f"{what}: no gradient {missing}, non-finite {bad}, zero {zero}"
    )


def _generator_named(model):
    return [(n, p) for n, p in model.named_parameters() if not n.startswith("discriminator.")]


@pytest.mark.parametrize("n", LENGTHS, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("mode", MODES)
def test_forward_loss_backward_on_real_windows(make_model, windows, vocab, mode, n):
    model = make_model(mode)
    ids = windows(n)  # [2, N]
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, n - n // 5 :] = False  # the second row ends in padding
    ids[1, n - n // 5 :] = vocab.PAD

    logits = model(ids, mask)
    assert logits.shape == (2, n, vocab.size)
    assert torch.isfinite(logits).all()

    out = model.loss({"input_ids": ids, "attention_mask": mask}, step=50)
    assert "loss" in out and all(torch.isfinite(v).all() for v in out.values())
    expected = {"transformer": {"recon"}, "vae": {"recon", "kl", "kl_penalty", "beta"}}
    expected["vae_gan"] = expected["vae"] | {"adv", "feature_matching"}
    assert expected[mode] <= set(out)
    out["loss"].backward()
    _assert_all_grads(_generator_named(model), f"{mode} generator")

    if mode == "vae_gan":
        model.zero_grad(set_to_none=True)
        d = model.discriminator_loss({"input_ids": ids, "attention_mask": mask})
        d["loss"].backward()
        _assert_all_grads(model.discriminator.named_parameters(), "discriminator")
        leaked = [n for n, p in _generator_named(model) if p.grad is not None]
        assert not leaked, f"discriminator loss reached generator parameters {leaked}"


@pytest.mark.parametrize("gan_loss", ["hinge", "non_saturating"])
@pytest.mark.parametrize("term", ["adv", "feature_matching"])
def test_adversarial_terms_alone_reach_every_generator_parameter(
    make_model, windows, term, gan_loss
):
    model = make_model("vae_gan", gan_loss=gan_loss)
    out = model.loss({"input_ids": windows(777)}, step=model.config.adv_start_step)
    out[term].backward()
    _assert_all_grads(_generator_named(model), f"vae_gan generator from {term!r} alone")


def test_parameter_groups_split_the_model(make_model):
    model = make_model("vae_gan")
    gen = {id(p) for p in model.generator_parameters()}
    disc = {id(p) for p in model.discriminator_parameters()}
    assert gen and disc and not gen & disc
    assert gen | disc == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="vae_gan only"):
        make_model("vae").discriminator_parameters()


def _perturb_from(ids: torch.Tensor, t: int, vocab) -> torch.Tensor:
    changed = ids.clone()
    changed[:, t:] = torch.randint(4, vocab.size, changed[:, t:].shape)
    return changed


@pytest.mark.parametrize("padded", [False, True], ids=["no-pad", "pad"])
@pytest.mark.parametrize("mode", MODES)
def test_decoder_is_causal(make_model, vocab, mode, padded):
    """Changing tokens at positions >= t never changes logits at positions < t."""
    model = make_model(mode).eval()
    n = 97  # several blocks of 16 and windows of 32, not a multiple of either
    ids = torch.randint(4, vocab.size, (2, n))
    mask = torch.ones(2, n, dtype=torch.bool)
    if padded:
        mask[0, 80:] = False  # right padding
        mask[1, :7] = False  # left padding
    z = torch.randn(2, model.config.latent_dim) if mode != "transformer" else None
    with torch.no_grad():
        base = model.decode(ids, mask, z=z)
        for t in (1, 17, 48, 64, 96):
            other = model.decode(_perturb_from(ids, t, vocab), mask, z=z)
            torch.testing.assert_close(other[:, :t], base[:, :t], rtol=0, atol=1e-5)
            # the perturbation is visible from t on, so the comparison above can fail
            assert (other[:, t:] - base[:, t:]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_masked_tokens_are_invisible(make_model, vocab, mode):
    """Tokens under attention_mask=False change no real position's logits (nor z)."""
    model = make_model(mode).eval()
    ids = torch.randint(4, vocab.size, (2, 97))
    mask = torch.ones(2, 97, dtype=torch.bool)
    mask[0, :9] = False
    mask[1, 40:45] = False
    changed = ids.clone()
    changed[~mask] = torch.randint(4, vocab.size, (int((~mask).sum()),))
    with torch.no_grad():
        a, b = model(ids, mask), model(changed, mask)
    torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-5)
    # unmasked, the same change is visible
    with torch.no_grad():
        c = model(changed)
    assert (c[mask] - a[mask]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["vae", "vae_gan"])
def test_encoder_reads_the_whole_sequence(make_model, vocab, mode):
    model = make_model(mode).eval()
    ids = torch.randint(4, vocab.size, (2, 97))
    mu, _ = model.encode(ids)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % vocab.size
    mu2, _ = model.encode(changed)
    assert (mu - mu2).abs().max() > 0


@pytest.mark.parametrize("mode", ["vae", "vae_gan"])
def test_decoder_output_depends_on_z(make_model, windows, mode):
    model = make_model(mode).eval()
    ids = windows(128)
    z1 = torch.randn(2, model.config.latent_dim)
    z2 = torch.randn(2, model.config.latent_dim)
    with torch.no_grad():
        a = model.decode(ids, z=z1)
        b = model.decode(ids, z=z2)
        again = model.decode(ids, z=z1)
    torch.testing.assert_close(again, a)
    # every position moves, the first one included (z enters every block)
    assert ((a - b).abs().amax(dim=-1) > 1e-4).all()


def test_vae_forward_uses_posterior_mean_in_eval(make_model, windows):
    model = make_model("vae").eval()
    ids = windows(64)
    mu, _ = model.encode(ids)
    torch.testing.assert_close(model(ids), model.decode(ids, z=mu))


def test_transformer_loss_is_shifted_next_token_ce_without_pad(make_model, windows, vocab):
    model = make_model("transformer")
    ids = windows(64)
    ids[0, 50:] = vocab.PAD
    logits = model(ids)
    targets = ids[:, 1:].clone()
    targets[targets == vocab.PAD] = -100
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, vocab.size), targets.reshape(-1))
    torch.testing.assert_close(model.loss({"input_ids": ids})["loss"], manual)
    unshifted = F.cross_entropy(logits.reshape(-1, vocab.size), ids.reshape(-1))
    assert abs(float(unshifted.detach()) - float(manual.detach())) > 1e-4


def test_kl_free_bits_and_beta_schedule(make_model, windows):
    model = make_model("vae", free_bits=0.5, beta_max=2.0, beta_warmup_steps=10)
    cfg = model.config
    assert [cfg.beta(s) for s in (0, 5, 10, 1000)] == [0.0, 1.0, 2.0, 2.0]
    out = model.loss({"input_ids": windows(64)}, step=5)
    out = {k: v.detach() for k, v in out.items()}
    assert float(out["kl_penalty"]) >= cfg.latent_dim * 0.5 - 1e-6
    assert float(out["kl_penalty"]) >= float(out["kl"])
    # one unit, nats per target token: 2 sequences of 63 targets each carry their KL
    torch.testing.assert_close(out["loss"], out["recon"] + 1.0 * out["kl_penalty"] * 2 / 126)
    cyc = cfg.replace(beta_schedule="cyclical", beta_cycle_steps=20)
    assert cyc.beta(25) == cyc.beta(5) == 1.0


def test_rotary_positions_offset_matches_full_sequence(make_model, vocab):
    """A suffix decoded at its absolute positions gets the same rotated q/k as in the
    full sequence (what a decode step with a cache relies on)."""
    model = make_model("transformer")
    attn = model.decoder.blocks[0].attn
    x = torch.randn(1, 40, model.config.d_model)
    q, k, _ = attn.project(x, torch.arange(40))
    q2, k2, _ = attn.project(x[:, 30:], torch.arange(30, 40))
    torch.testing.assert_close(q2, q[:, :, 30:])
    torch.testing.assert_close(k2, k[:, :, 30:])


@pytest.mark.parametrize("mode", MODES)
def test_dense_attention_option_runs(make_model, windows, mode):
    model = make_model(mode, attention="dense")
    out = model.loss({"input_ids": windows(128)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("mode", MODES)
def test_losses_through_call_match_the_methods(make_model, windows, mode):
    """`TrainingObjective(model)(..., objective=...)` (what a DDP wrapper calls) equals
    loss()/discriminator_loss()."""
    model = make_model(mode).eval()  # eval: spectral norm's power iteration stays put
    ids = windows(64)
    batch = {"input_ids": ids, "attention_mask": None}
    torch.manual_seed(1)
    direct = model.loss(batch, step=30)
    torch.manual_seed(1)
    wrapper = TrainingObjective(model)
    called = wrapper(ids, objective="generator", step=30)
    assert direct.keys() == called.keys()
    for k in direct:
        torch.testing.assert_close(called[k], direct[k])
    if mode == "vae_gan":
        torch.manual_seed(1)
        d = model.discriminator_loss(batch)
        torch.manual_seed(1)
        torch.testing.assert_close(wrapper(ids, objective="discriminator")["loss"], d["loss"])
    with pytest.raises(ValueError, match="objective='critic'"):
        wrapper(ids, objective="critic")
    with pytest.raises(ValueError, match="a batch is a dict with 'input_ids'"):
        model.loss(ids)


def test_bfloat16_model_keeps_float32_rotary_phases(make_model, vocab):
    model = make_model("transformer")
    cos, sin = model.decoder.blocks[0].attn.rotary(torch.arange(2000, 2048))
    half = make_model("transformer").to(torch.bfloat16)
    cos16, sin16 = half.decoder.blocks[0].attn.rotary(torch.arange(2000, 2048))
    assert cos16.dtype == torch.float32
    torch.testing.assert_close(cos16, cos)
    torch.testing.assert_close(sin16, sin)
    logits = half(torch.randint(0, vocab.size, (1, 100)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
@pytest.mark.parametrize("mode", ["transformer", "vae", "vae_gan"])
def test_apply_reaches_every_submodule_of_every_preset(vocab, mode, preset):
    # On the meta device: the base preset's shapes without its memory or init time.
    with torch.device("meta"):
        model = MusicModel(ModelConfig.from_vocab(vocab, mode=mode, preset=preset))
    seen: list[torch.nn.Module] = []
    assert model.apply(seen.append) is model
    assert {id(m) for m in seen} == {id(m) for m in model.modules()}
    assert any(type(m).__name__ == "Rotary" for m in seen)
