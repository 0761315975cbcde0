"""`MusicModel` in the Hugging Face conventions: `labels` -> `.loss` / `.logits`,
`save_pretrained` / `from_pretrained`, and training under transformers' `Trainer`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from stretto.engine import ModelConfig, MusicModel, MusicModelOutput

MODES = ("transformer", "vae", "vae_gan")


def _model(vocab, mode: str, **overrides) -> MusicModel:
    return MusicModel(ModelConfig.from_vocab(vocab, mode=mode, preset="tiny", **overrides))


def _batch(vocab, b: int = 2, n: int = 33) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids `[B, N]` with the second row right-padded, and its mask."""
    ids = torch.randint(4, vocab.size, (b, n))
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, n - 7 :] = False
    return ids.masked_fill(~mask, vocab.PAD), mask


# -- labels -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_labels_loss_is_the_modes_generator_loss(vocab, mode):
    model = _model(vocab, mode).eval()  # eval: spectral norm does not step between calls
    ids, mask = _batch(vocab)
    labels = ids.masked_fill(~mask, -100)
    torch.manual_seed(1)
    out = model(ids, mask, labels, step=7)
    torch.manual_seed(1)
    expected = model.loss({"input_ids": ids, "attention_mask": mask}, step=7)["loss"]
    assert isinstance(out, MusicModelOutput)
    assert out.loss.ndim == 0 and torch.equal(out.loss, expected)
    assert out.logits.shape == (2, 33, vocab.size)


def test_transformer_labels_are_shifted_inside_and_minus_100_ignored(vocab):
    model = _model(vocab, "transformer")
    ids, mask = _batch(vocab)
    labels = torch.randint(0, vocab.size, ids.shape)  # any targets, as a causal LM takes
    labels[0, 5:12] = -100
    labels = labels.masked_fill(~mask, -100)
    out = model(ids, mask, labels=labels)
    logits = model(ids, mask)
    assert torch.equal(out.logits, logits)
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab.size), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)


def test_vae_without_step_weighs_the_kl_with_beta_max(vocab):
    model = _model(vocab, "vae", beta_max=0.5, beta_warmup_steps=100)
    ids, mask = _batch(vocab)
    torch.manual_seed(3)
    default = model(ids, mask, labels=ids).loss
    torch.manual_seed(3)
    terms = model.loss({"input_ids": ids, "attention_mask": mask}, step=0)
    torch.manual_seed(3)
    unscheduled = model(ids, mask, labels=ids, step=None).loss
    torch.testing.assert_close(default, unscheduled)
    torch.manual_seed(3)
    at_step_zero = model(ids, mask, labels=ids, step=0).loss
    torch.testing.assert_close(at_step_zero, terms["recon"])  # linear schedule: beta(0) = 0
    # one unit, nats per target token: the batch's KL is spread over its targets
    from stretto.engine.objectives import target_tokens

    per_token = ids.shape[0] / target_tokens({"input_ids": ids, "attention_mask": mask}, 2)
    kl = 0.5 * terms["kl_penalty"] * per_token
    torch.testing.assert_close(unscheduled, terms["recon"] + kl)


def test_without_labels_the_forward_returns_logits(vocab):
    model = _model(vocab, "transformer")
    ids, mask = _batch(vocab)
    assert isinstance(model(ids, mask), torch.Tensor)


def test_the_output_reads_like_a_model_output(vocab):
    model = _model(vocab, "transformer")
    ids, _ = _batch(vocab)
    out = model(ids, labels=ids)
    assert list(out) == ["loss", "logits"]
    assert out["loss"] is out.loss and out[0] is out.loss and out[1] is out.logits
    assert out.to_tuple() == (out.loss, out.logits)
    rebuilt = MusicModelOutput({k: v for k, v in out.items()})
    assert rebuilt.loss is out.loss
    only_logits = MusicModelOutput(loss=None, logits=out.logits)
    assert list(only_logits) == ["logits"] and only_logits[0] is out.logits
    assert only_logits.loss is None


@pytest.mark.parametrize(
    ("mode", "make_labels", "message"),
    [
        pytest.param(
            "transformer",
            lambda ids: ids[:, :-1],
            r"^labels has shape \[2, 32\], expected \[2, 33\] like input_ids \[B, N\]$",
            id="short",
        ),
        pytest.param(
            "transformer",
            lambda ids: ids[None],
            r"^labels has shape \[1, 2, 33\], expected \[2, 33\]",
            id="rank-3",
        ),
        pytest.param(
            "transformer",
            lambda ids: ids.float(),
            r"^labels must be an integer tensor, got dtype torch.float32$",
            id="float",
        ),
        pytest.param(
            "transformer",
            lambda ids: ids.index_fill(1, torch.tensor([3]), 774),
            r"^label 774 is neither -100 \(ignored\) nor a token id in \[0, 774\)$",
            id="out-of-vocab",
        ),
        pytest.param(
            "transformer",
            lambda ids: ids.index_fill(1, torch.tensor([3]), -1),
            r"^label -1 is neither -100",
            id="negative",
        ),
        pytest.param(
            "vae",
            lambda ids: torch.where(ids == 100, 101, 100),
            r"^mode 'vae' reconstructs its input: labels must equal input_ids where not -100, "
            r"but labels\[0, 0\] = \d+ != input_ids\[0, 0\] = \d+$",
            id="vae-other-targets",
        ),
    ],
)
def test_bad_labels_are_one_line_errors(vocab, mode, make_labels, message):
    model = _model(vocab, mode)
    ids, mask = _batch(vocab)
    with pytest.raises(ValueError, match=message) as err:
        model(ids, mask, labels=make_labels(ids))
    assert "\n" not in str(err.value)


def test_vae_labels_may_ignore_positions(vocab):
    model = _model(vocab, "vae")
    ids, mask = _batch(vocab)
    labels = ids.clone()
    labels[:, :10] = -100
    assert model(ids, mask, labels=labels).loss.isfinite()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z": torch.zeros(2, 16)}, "z cannot be given too"),
        ({"positions": torch.arange(33)}, "positions cannot be given too"),
    ],
)
def test_labels_take_no_decoding_arguments(vocab, kwargs, message):
    model = _model(vocab, "vae")
    ids, _ = _batch(vocab)
    with pytest.raises(ValueError, match=message):
        model(ids, labels=ids, **kwargs)


def test_step_without_labels_is_refused(vocab):
    model = _model(vocab, "vae")
    ids, _ = _batch(vocab)
    with pytest.raises(ValueError, match="step drives the loss's beta schedule: it needs labels"):
        model(ids, step=3)


# -- save_pretrained / from_pretrained ------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_pretrained_round_trip_is_exact(vocab, mode, tmp_path):
    from safetensors import safe_open

    model = _model(vocab, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids, mask = _batch(vocab)
    model.loss({"input_ids": ids, "attention_mask": mask})["loss"].backward()
    opt.step()  # weights away from their initial values
    model.save_pretrained(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text()) == model.config.to_dict()
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == "pt"
    assert keys == set(model.state_dict()) - {"head.weight"}  # tied: stored once

    loaded = MusicModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.head.weight is loaded.embed.weight
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    model.eval()
    loaded.eval()
    assert torch.equal(model(ids, mask), loaded(ids, mask))


def test_untied_head_is_stored(vocab, tmp_path):
    from safetensors import safe_open

    model = _model(vocab, "transformer", tie_embeddings=False)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "head.weight" in set(f.keys())
    loaded = MusicModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert loaded.head.weight is not loaded.embed.weight


@dataclasses.dataclass(frozen=True)
class _OtherVocabulary:
    size: int = 774
    PAD: int = 2
    signature: str = "stretto-vocab-v1-0000000000000000"


def test_a_folder_from_another_vocabulary_is_refused(vocab, tmp_path):
    _model(vocab, "transformer").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocabulary differs: vocab_signature") as err:
        MusicModel.from_pretrained(tmp_path, vocab=_OtherVocabulary())
    assert "\n" not in str(err.value)


def test_a_folder_of_another_config_names_the_field(vocab, tmp_path):
    _model(vocab, "transformer").save_pretrained(tmp_path)
    expected = ModelConfig.from_vocab(vocab, preset="tiny", window=64)
    with pytest.raises(ValueError, match="window: 64 != 32"):
        MusicModel.from_pretrained(tmp_path, config=expected)


def test_broken_folders_are_clear_errors(vocab, tmp_path):
    with pytest.raises(FileNotFoundError, match="no pretrained model folder"):
        MusicModel.from_pretrained(tmp_path / "missing")
    _model(vocab, "transformer").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        MusicModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"d_model": 64}')
    with pytest.raises(ValueError, match="is not a Stretto model config"):
        MusicModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        MusicModel.from_pretrained(tmp_path)


# -- transformers' Trainer -------------------------------------------------------------------
def _training_args(out_dir, steps: int, **overrides):
    transformers = pytest.importorskip("transformers", reason="the `hf` extra")
    settings = {
        "output_dir": str(out_dir),
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "log_level": "error",
        "seed": 0,
    }
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def test_transformers_trainer_trains_a_music_model(vocab, token_corpus, tmp_path):
    transformers = pytest.importorskip("transformers", reason="the `hf` extra")
    from stretto.integrations.transformers import collate_with_labels
    from stretto.tokenizer import TokenDataset

    data = TokenDataset(token_corpus, 64)
    held = torch.utils.data.Subset(data, range(16))
    model = _model(vocab, "transformer")
    trainer = transformers.Trainer(
        model=model,
        args=_training_args(tmp_path, steps=12),
        train_dataset=data,
        eval_dataset=held,
        data_collator=collate_with_labels,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 12
    assert after < before - 0.3, f"held-out loss {before:.3f} -> {after:.3f}"
    # The Trainer's loss is the model's: the same number on a batch it collates.
    batch = collate_with_labels([data[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        direct = model.loss(batch)["loss"]
        torch.testing.assert_close(model(**batch).loss, direct)


def test_music_trainer_checkpoints_resume_exactly(vocab, token_corpus, tmp_path):
    transformers = pytest.importorskip("transformers", reason="the `hf` extra")
    from stretto.integrations.transformers import MusicTrainer, collate_with_labels
    from stretto.tokenizer import TokenDataset

    data = TokenDataset(token_corpus, 32)

    def run(resume=None) -> MusicModel:
        torch.manual_seed(0)
        model = _model(vocab, "transformer")
        args = _training_args(tmp_path, steps=4, save_strategy="steps", save_steps=2)
        trainer = MusicTrainer(
            model=model, args=args, train_dataset=data, data_collator=collate_with_labels
        )
        trainer.train(resume_from_checkpoint=resume)
        return model

    straight = run()
    checkpoint = tmp_path / "checkpoint-2"
    assert {"config.json", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert transformers.trainer_utils.get_last_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    resumed = run(resume=str(checkpoint))
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert MusicModel.from_pretrained(tmp_path / "checkpoint-4").config == straight.config
