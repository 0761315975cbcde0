"""`stretto audit` on real files: it passes on a few dev files with the tiny preset, and
each planted fault is reported (a non-zero exit code from the command): a checkpoint of
another vocabulary, attention that sees the future, a corpus with an out-of-range id,
non-finite gradients, a model that cannot learn, memory that grows as N x N, a decode
cache that drifts, and for trained models a model that was not trained, a vae whose
decoder ignores z, a vae_gan whose discriminator is saturated and a sampler that never
releases a note."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from stretto.engine import ModelConfig, MusicModel, cli
from stretto.engine.audit import checks as A
from stretto.engine.audit import quality as Q
from stretto.engine.audit import runner as R
from stretto.kernels import HierarchicalKVCache
from stretto.tokenizer import FileSplit, TokenDataset, Vocabulary, build_corpus

FAST = {"lengths": (512,), "sample": 2, "learning_steps": 3}
QUALITY = {"lengths": (256,), "sample": 1, "learning_steps": 2, "val_windows": 8, "quality": True}


@pytest.fixture(scope="module")
def corpus(midi_corpus, tmp_path_factory):
    """A token corpus of three dev files of at least 2048 ids (so every length has
    full windows)."""
    out = tmp_path_factory.mktemp("audit-corpus") / "corpus"
    big = sorted(midi_corpus, key=lambda p: -p.stat().st_size)[:3]
    build_corpus(big, out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def many(midi_corpus, tmp_path_factory):
    """A token corpus of twelve mid-sized dev files: enough files for a held-out split
    whose unigram baseline is representative (the quality checks compare with it)."""
    out = tmp_path_factory.mktemp("audit-many") / "corpus"
    by_size = sorted(midi_corpus, key=lambda p: p.stat().st_size)
    middle = len(by_size) // 2
    build_corpus(by_size[middle - 6 : middle + 6], out, workers=1, progress=False)
    return out


def main(argv: list[str]) -> int:
    """`stretto` with only the audit registered, so other commands' state cannot matter."""
    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ("stretto.engine.cli.audit",)
    try:
        return cli.main(argv)
    finally:
        cli.COMMAND_MODULES = saved


def failures(rows, check):
    return [r for r in rows if r.check == check and not r.ok]


def leaking(model: MusicModel) -> MusicModel:
    """The decoder's attention turned bidirectional: future tokens reach past logits."""
    for block in model.decoder.blocks:
        block.attn.causal = False
    return model


@pytest.mark.slow
def test_audit_passes_on_dev_files_tiny_preset(corpus, tmp_path, capsys):
    out = tmp_path / "audit.json"
    code = main(["audit", "--corpus", str(corpus), "--preset", "tiny", "--json", str(out)])
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("0 issues"), printed
    assert code == 0
    rows = __import__("json").loads(out.read_text())["rows"]
    seen = {(r["check"], r["mode"], r["length"]) for r in rows}
    for mode in ("transformer", "vae", "vae_gan"):
        for n in ("512", "1024", "2048"):
            assert ("train step", mode, n) in seen
        assert ("resources", mode, "512-2048") in seen
        for check in ("causality", "learning", "decode cache"):
            assert any(c == check and m == mode for c, m, _ in seen), (check, mode)
    # fresh models: the checks of trained models are not run on them
    assert not {"held-out loss", "latent", "discriminator"} & {c for c, _, _ in seen}
    assert {"kernels", "data ids", "data windows", "vocabulary"} <= {r["check"] for r in rows}


def test_audit_on_a_midi_folder_tokenizes_it(midi_corpus, tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    shutil.copy(midi_corpus[0], folder)
    cfg = R.AuditConfig(corpus=folder, modes=("transformer",), lengths=(64,), sample=2)
    rows = R.run_audit(cfg)
    assert R.issues(rows) == 0, R.format_table(rows)


def test_a_corpus_of_another_vocabulary_reads_as_the_dataset_refuses_it(corpus, tmp_path):
    import json
    import shutil

    from stretto.tokenizer import TokenDataset

    other = tmp_path / "other"
    shutil.copytree(corpus, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["vocabulary"] = "stretto-vocab-v0-elsewhere"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as refused:
        TokenDataset(other, 64)
    (row,) = A.audit_vocabulary(Vocabulary(), corpus_dir=other)
    assert not row.ok and str(refused.value) in row.detail and "elsewhere" in row.detail
    (row,) = A.audit_vocabulary(Vocabulary(), corpus_dir=corpus)
    assert row.ok


def test_checkpoint_with_another_vocabulary_is_reported(corpus, tmp_path, capsys):
    vocab = Vocabulary()
    config = ModelConfig.from_vocab(vocab, mode="transformer", preset="tiny")
    path = tmp_path / "other.pt"
    MusicModel(config.replace(vocab_signature="stretto-vocab-v0-elsewhere")).save(path)

    row = A.audit_vocabulary(vocab, checkpoints=[path])[-1]
    assert not row.ok and "vocab_signature" in row.detail and "elsewhere" in row.detail

    code = main(
        [
            "audit",
            "--corpus",
            str(corpus),
            "--checkpoint",
            str(path),
            "--modes",
            "transformer",
            "--lengths",
            "512",
            "--sample",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert code != 0
    assert "stretto-vocab-v0-elsewhere" in printed
    assert not printed.rstrip().endswith(" 0 issues")


@pytest.mark.parametrize("mode", ["transformer", "vae", "vae_gan"])
def test_attention_that_sees_the_future_is_reported(corpus, make_model, mode):
    model = leaking(make_model(mode))
    cfg = R.AuditConfig(corpus=corpus, modes=(mode,), **FAST)
    rows = R.run_audit(cfg, models={mode: model})
    bad = failures(rows, "causality")
    assert len(bad) == 1 and "sees the future" in bad[0].detail, R.format_table(rows)
    assert bad[0].mode == mode


def test_causal_model_passes_the_causality_check(corpus, make_model):
    ids = A.pick_batch(A.TokenDataset(corpus, 256), 2)["input_ids"]
    for mode in ("transformer", "vae"):
        assert A.check_causality(make_model(mode), ids).ok
        assert not A.check_causality(leaking(make_model(mode)), ids).ok


def test_corpus_with_out_of_range_ids_is_reported(corpus, tmp_path, capsys):
    bad = tmp_path / "bad-corpus"
    shutil.copytree(corpus, bad)
    shard = bad / "shard-00000.npy"
    ids = np.load(shard)
    ids[5] = Vocabulary().size  # 774: one past the last id
    np.save(shard, ids)

    row = A.check_corpus_ids(bad, Vocabulary())
    assert not row.ok and "774" in row.detail

    code = main(
        [
            "audit",
            "--corpus",
            str(bad),
            "--modes",
            "transformer",
            "--lengths",
            "512",
            "--sample",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert code != 0
    assert "holds id 774 outside [0, 774)" in printed


def test_non_finite_gradients_are_reported(corpus, make_model):
    model = make_model("transformer")
    batch = A.pick_batch(A.TokenDataset(corpus, 128), 2)
    with torch.no_grad():
        model.decoder.blocks[0].mlp.down.weight.fill_(float("inf"))
    row = A.check_train_step(model, batch)
    assert not row.ok and "non-finite" in row.detail


@pytest.mark.parametrize("training", [True, False], ids=["as-loaded", "eval"])
@pytest.mark.parametrize("mode", ["vae", "vae_gan"])
def test_the_structural_checks_leave_the_model_as_they_found_it(corpus, make_model, mode, training):
    """The train-step and resource checks run training-mode encodings, which move a
    vae's aggregate-posterior moments; the audit's later checks sample with them, so
    they must come back as they were (and the mode and gradients with them). A loaded
    checkpoint is in training mode, so the train-step check's plain forward counts too."""
    model = make_model(mode).train(training)
    batches = {n: A.pick_batch(A.TokenDataset(corpus, n), 2) for n in (128, 256)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert A.check_train_step(model, batches[128]).ok
    assert A.check_resources(model, batches).ok
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [
        k for k in before if not torch.equal(before[k], after[k])
    ]
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    # what it guards against: a training-mode encoding moves the moments
    model.train()
    model.loss(batches[128])
    assert not torch.equal(model.latent_mean, before["latent_mean"])


def test_a_model_that_does_not_learn_is_reported(corpus, make_model, monkeypatch):
    batch = A.pick_batch(A.TokenDataset(corpus, 128), 2)
    row = A.check_learning(make_model("transformer"), batch)
    assert row.ok, row.detail
    again = A.check_learning(make_model("transformer"), batch)
    assert again.detail == row.detail  # a fresh copy from a fixed seed: deterministic
    monkeypatch.setattr(A, "LEARNING_LR", 1e-12)  # an optimizer that cannot move it
    bad = A.check_learning(make_model("transformer"), batch)
    assert not bad.ok and "does not learn" in bad.detail


def test_memory_that_grows_as_n_squared_is_reported(corpus, make_model):
    batches = {n: A.pick_batch(A.TokenDataset(corpus, n), 1) for n in (256, 1024)}
    assert A.check_resources(make_model("transformer"), batches).ok
    for batch in batches.values():  # padding makes dense attention build its N x N mask
        batch["attention_mask"][:, -3:] = False
    row = A.check_resources(make_model("transformer", attention="dense"), batches)
    assert not row.ok and "faster than the length" in row.detail


@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_a_decode_cache_that_drifts_is_reported(corpus, make_model, monkeypatch, mode):
    ids = A.pick_batch(A.TokenDataset(corpus, 128), 1)["input_ids"]
    assert A.check_decode_cache(make_model(mode), ids).ok
    attend = HierarchicalKVCache.attend
    monkeypatch.setattr(
        HierarchicalKVCache, "attend", lambda self, q, **kw: attend(self, q) * 1.001
    )
    row = A.check_decode_cache(make_model(mode), ids)
    assert not row.ok and "exceeds" in row.detail


def test_kernel_check_reports_a_wrong_backend(monkeypatch):
    assert A.check_kernels("cpu").ok
    from stretto.kernels.wha import interface

    real = interface.op.attention_core

    def off_by_a_bit(*args, **kwargs):
        return real(*args, **kwargs) * 1.01

    monkeypatch.setattr(interface.op, "attention_core", off_by_a_bit)
    row = A.check_kernels("cpu")
    assert not row.ok and "exceeds" in row.detail


def test_table_ends_with_the_issue_count():
    rows = [
        A.Finding("kernels", "-", "-", "ok", "fine"),
        A.Finding("data ids", "-", "-", "FAIL", "x"),
    ]
    text = R.format_table(rows)
    assert text.splitlines()[-1] == "1 issue"
    assert text.splitlines()[0].split()[:5] == ["check", "mode", "length", "result", "detail"]


# -- the demo (the full job is too slow for the suite; `make demo` runs it) ------------
def test_demo_help_has_an_example(capsys):
    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ("stretto.engine.cli.demo",)
    try:
        with pytest.raises(SystemExit):
            cli.main(["demo", "--help"])
    finally:
        cli.COMMAND_MODULES = saved
    text = capsys.readouterr().out
    assert "examples:" in text and "STRETTO_CORPUS" in text and "--force" in text


def test_demo_refuses_an_existing_output_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ("stretto.engine.cli.demo",)
    try:
        assert cli.main(["demo", "--out", str(out)]) == 1
    finally:
        cli.COMMAND_MODULES = saved
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_demo_corpus_renders_music21_chorales_once(tmp_path):
    pytest.importorskip("music21", reason="music21 is the `demo` extra (make demo installs it)")
    from stretto.engine.cli.demo_corpus import render_corpus
    from stretto.tokenizer import MidiTokenizer

    paths = render_corpus(tmp_path / "cache", pieces=2, workers=1)
    assert len(paths) == 2 and all(p.suffix == ".mid" for p in paths)
    tok = MidiTokenizer()
    for p in paths:
        assert tok.decode(tok.encode(p)).note_num() > 50, p.name
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert render_corpus(tmp_path / "cache", pieces=2, workers=1) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # cached, not rendered again


def test_audit_keeps_an_existing_json_file_unless_forced(corpus, tmp_path, capsys):
    out = tmp_path / "audit.json"
    out.write_text("earlier run")
    assert main(["audit", "--corpus", str(corpus), "--json", str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "earlier run"


# -- trained models: each planted fault of the quality checks is reported -----------------
def _audit_trained(many, mode, model):
    cfg = R.AuditConfig(corpus=many, modes=(mode,), **QUALITY)
    return R.run_audit(cfg, models={mode: model})


@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_a_model_that_was_not_trained_is_reported(many, make_model, tmp_path, mode):
    """A fresh model saved as a checkpoint: its held-out NLL is no better than unigram."""
    path = tmp_path / mode / "last.pt"
    make_model(mode).save(path)
    cfg = R.AuditConfig(
        corpus=many,
        modes=(mode,),
        checkpoints=(str(path),),
        **{k: v for k, v in QUALITY.items() if k != "quality"},
    )
    rows = R.run_audit(cfg)
    bad = failures(rows, "held-out loss")
    assert len(bad) == 1 and "not below it" in bad[0].detail, R.format_table(rows)
    assert {"held-out loss", "polyphony"} <= {r.check for r in rows if r.mode == mode}


def test_a_vae_whose_decoder_ignores_z_is_reported(many, make_model):
    model = make_model("vae")
    with torch.no_grad():  # z reaches the decoder only through the adaptive norms
        for block in model.decoder.blocks:
            block.modulation.weight.zero_()
    rows = _audit_trained(many, "vae", model)
    bad = failures(rows, "latent")
    assert len(bad) == 1 and "ignores z" in bad[0].detail, R.format_table(rows)
    assert "latent gap 0.0000" in bad[0].detail


def test_latent_check_passes_when_z_carries_the_window(make_model):
    """The same check on measurements of a decoder that uses z."""
    model = make_model("vae")
    row = Q.check_latent(model, {"latent_gap": 0.05, "active_units": 3, "kl": 6.0}, 512)
    assert row.ok
    assert not Q.check_latent(model, {"latent_gap": 0.05, "active_units": 0, "kl": 0.1}, 512).ok


def test_a_saturated_discriminator_is_reported(many, make_model, vocab):
    """A generator that emits UNK everywhere and a discriminator that spots it: both
    accuracies reach 1.0, the discriminator wins outright."""
    model = make_model("vae_gan")
    with torch.no_grad():
        model.embed.weight[vocab.UNK].fill_(50.0)  # tied head: UNK wins every logit

    class Spotter(torch.nn.Module):
        def forward(self, onehot, mask):
            unk = onehot[..., vocab.UNK].float().mean(1)  # [B]
            return 1.0 - 10.0 * unk, [unk[:, None]]

    model.discriminator.forward = Spotter().forward
    rows = _audit_trained(many, "vae_gan", model)
    bad = failures(rows, "discriminator")
    assert len(bad) == 1 and "saturated" in bad[0].detail, R.format_table(rows)


def test_discriminator_band(make_model):
    model = make_model("vae_gan")
    assert Q.check_discriminator(model, {"acc_real": 0.7, "acc_fake": 0.6}, 512).ok
    assert not Q.check_discriminator(model, {"acc_real": 1.0, "acc_fake": 0.9}, 512).ok
    assert not Q.check_discriminator(model, {"acc_real": 0.5, "acc_fake": 0.5}, 512).ok


# -- generated polyphony ----------------------------------------------------------------
def never_released(ids: np.ndarray) -> np.ndarray:
    """What a sampler that never emits NOTE_OFF plays of real music: the ids without
    their NOTE_OFFs (each note then sounds until the same pitch is struck again)."""
    v = Vocabulary()
    return ids[(ids < v.NOTE_OFF.start) | (ids >= v.NOTE_OFF.stop)]


@pytest.fixture(scope="module")
def two_halves(many):
    """Windows of `POLYPHONY_TOKENS` ids of `many`'s even and of its odd files."""
    n = Q.POLYPHONY_TOKENS
    files = range(len(TokenDataset(many, n).files))
    halves = []
    for parity in (0, 1):
        dataset = TokenDataset(many, n, stride=n // 4, files=[f for f in files if f % 2 == parity])
        halves.append(Q.held_out_pieces(dataset, Q.POLYPHONY_WINDOWS))
    return halves


def test_polyphony_passes_on_real_music_against_real_music(two_halves):
    even, odd = two_halves
    for made, real in [(even, odd), (odd, even)]:
        row = Q.check_polyphony(made, real, "transformer", Q.POLYPHONY_TOKENS)
        assert row.ok, row.detail
        assert f"{len(made)} generated pieces" in row.detail


def test_a_sampler_that_never_releases_notes_is_reported(two_halves):
    even, odd = two_halves
    for made, real in [(even, odd), (odd, even)]:
        row = Q.check_polyphony([never_released(w) for w in made], real, "vae", 1024)
        assert not row.ok and row.detail.endswith("notes pile up"), row.detail


def test_the_audit_samples_pieces_for_the_polyphony_row(many, make_model, monkeypatch):
    """The runner's row on the run's held-out windows, with the sampler replaced: real
    training windows pass, the held-out windows without NOTE_OFFs fail."""
    split = FileSplit.make(many)
    n = Q.POLYPHONY_TOKENS
    train, val = split.datasets(n, val_stride=n // 4)
    cfg = R.AuditConfig(corpus=many, **QUALITY)
    asked = []

    def sampler(pieces):
        def generate(model, tokens, count, seed):
            asked.append((tokens, count, seed))
            return pieces

        return generate

    monkeypatch.setattr(R, "generated_pieces", sampler(Q.held_out_pieces(train, 8)))
    row = R._polyphony(cfg, split, make_model("transformer"))
    assert row.ok and row.check == "polyphony" and row.length == str(n), row.detail
    released = [never_released(w) for w in Q.held_out_pieces(val, 8)]
    monkeypatch.setattr(R, "generated_pieces", sampler(released))
    row = R._polyphony(cfg, split, make_model("transformer"))
    assert not row.ok and "notes pile up" in row.detail, row.detail
    assert asked == [(n, Q.POLYPHONY_PIECES, cfg.seed)] * 2


def test_a_model_that_emits_no_note_fails_the_polyphony_row(two_halves):
    start_end = [np.array([0, 1]), np.array([0, 180, 1])]
    row = Q.check_polyphony(start_end, two_halves[0], "transformer", 1024)
    assert not row.ok and "none of 2 generated pieces" in row.detail
