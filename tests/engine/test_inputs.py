"""Bad input is a clear error, raised before any embedding lookup; configs validate."""

from __future__ import annotations

import pytest
import torch

from stretto.engine import PRESETS, ModelConfig, MusicModel

MODES = ("transformer", "vae", "vae_gan")


@pytest.mark.parametrize("bad", [774, 775, 10**6, -1], ids=lambda b: f"id{b}")
@pytest.mark.parametrize("mode", MODES)
def test_out_of_range_ids_name_value_and_vocab_size(make_model, vocab, mode, bad):
    model = make_model(mode)
    ids = torch.randint(0, vocab.size, (2, 63))
    ids[1, 40] = bad
    lookups = []
    model.embed.register_forward_hook(lambda *_: lookups.append(1))
    message = rf"token id {bad} is outside the vocabulary \[0, 774\)"
    with pytest.raises(ValueError, match=message):
        model(ids)
    with pytest.raises(ValueError, match=message):
        model.loss({"input_ids": ids})
    if mode == "vae_gan":
        with pytest.raises(ValueError, match=message):
            model.discriminator_loss({"input_ids": ids})
    assert not lookups, "the embedding was reached before the ids were checked"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_non_integer_ids_are_rejected(make_model, dtype):
    with pytest.raises(ValueError, match="integer tensor"):
        make_model("transformer")(torch.zeros(1, 8, dtype=dtype))


def test_int32_ids_are_accepted(make_model, vocab):
    model = make_model("transformer").eval()
    ids = torch.randint(0, vocab.size, (1, 33))
    torch.testing.assert_close(model(ids.int()), model(ids))


@pytest.mark.parametrize(
    "shape", [(2, 62), (1, 63), (2, 63, 1), (63,)], ids=lambda s: "x".join(map(str, s))
)
def test_mask_of_wrong_shape(make_model, vocab, shape):
    ids = torch.randint(0, vocab.size, (2, 63))
    with pytest.raises(ValueError, match=r"attention_mask has shape .* expected \[2, 63\]"):
        make_model("vae")(ids, torch.ones(shape, dtype=torch.bool))


def test_float_mask_is_rejected_and_int_mask_accepted(make_model, vocab):
    model = make_model("transformer").eval()
    ids = torch.randint(0, vocab.size, (2, 63))
    with pytest.raises(ValueError, match="attention_mask must be bool"):
        model(ids, torch.ones(2, 63))
    mask = torch.ones(2, 63, dtype=torch.bool)
    mask[0, 50:] = False
    torch.testing.assert_close(model(ids, mask.long()), model(ids, mask))


def test_other_shape_errors(make_model, vocab):
    model = make_model("vae")
    with pytest.raises(ValueError, match=r"input_ids must be \[B, N\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_seq_len 2048"):
        model(torch.zeros(1, 2049, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model.loss({"input_ids": torch.zeros(1, 1, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"z has shape \[2, 3\], expected \[2, 16\]"):
        model.decode(torch.zeros(2, 8, dtype=torch.long), z=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs z"):
        model.decode(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2, 3]])


def test_model_size_comes_from_the_vocabulary(make_model, vocab):
    for mode in MODES:
        model = make_model(mode)
        assert model.config.vocab_size == vocab.size == 774
        assert model.config.pad_id == vocab.PAD
        assert model.config.vocab_signature == vocab.signature
        assert model.embed.num_embeddings == vocab.size
        assert model.head.out_features == vocab.size
    with pytest.raises(ValueError, match="come from the Vocabulary"):
        ModelConfig.from_vocab(vocab, preset="tiny", vocab_size=387)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("mode", MODES)
def test_config_json_round_trip(vocab, mode, preset, tmp_path):
    cfg = ModelConfig.from_vocab(vocab, mode=mode, preset=preset)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    cfg.save_json(tmp_path / "c.json")
    assert ModelConfig.load_json(tmp_path / "c.json") == cfg


def test_base_preset_matches_the_issue(vocab):
    t = ModelConfig.from_vocab(vocab, mode="transformer", preset="base")
    assert (t.d_model, t.n_layers, t.n_heads, t.d_ff) == (512, 8, 8, 2048)
    assert (t.window, t.block, t.max_seq_len) == (256, 64, 2048)
    v = ModelConfig.from_vocab(vocab, mode="vae_gan", preset="base")
    assert (v.latent_dim, v.encoder_layers, v.n_layers, v.disc_layers) == (128, 6, 6, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "gan"}, "mode='gan'"),
        ({"n_heads": 3}, "not divisible by n_heads=3"),
        ({"d_model": 66, "n_heads": 6}, "must be even"),
        ({"window": 0}, "window=0"),
        ({"block": 0}, "block=0"),
        ({"gan_loss": "wasserstein"}, "gan_loss='wasserstein'"),
        ({"attention": "flash"}, "attention='flash'"),
        ({"free_bits": -1.0}, "free_bits"),
        ({"beta_schedule": "cyclical", "beta_cycle_steps": 0}, "beta_cycle_steps"),
        ({"dropout": 1.0}, "dropout"),
    ],
    ids=lambda x: "-".join(x) if isinstance(x, dict) else None,
)
def test_config_validation(vocab, change, message):
    cfg = ModelConfig.from_vocab(vocab, mode="vae_gan", preset="tiny")
    with pytest.raises(ValueError, match=message):
        cfg.replace(**change)


def test_config_unknown_fields_and_presets(vocab):
    cfg = ModelConfig.from_vocab(vocab, preset="tiny")
    with pytest.raises(ValueError, match=r"unknown fields \['heads'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "heads": 4})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ModelConfig.from_vocab(vocab, preset="huge")


def test_model_builds_from_a_config_only(vocab):
    cfg = ModelConfig.from_vocab(vocab, mode="vae", preset="tiny")
    model = MusicModel(ModelConfig.from_json(cfg.to_json()))
    assert model.config == cfg


def test_this_folder_runs_on_one_torch_thread():
    """tests/conftest.py's `_one_torch_thread`, the one fixture that sets it."""
    assert torch.get_num_threads() == 1
