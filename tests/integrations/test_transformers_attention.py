"""`attn_implementation="stretto_wha"` inside a transformers model (a tiny random Llama):
its logits and gradients against an attention function written from the reference
definition, training, and cached generation against a full forward per step."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the `hf` extra")

from transformers import LlamaConfig, LlamaForCausalLM, masking_utils  # noqa: E402
from transformers.models.llama.modeling_llama import repeat_kv  # noqa: E402

from stretto.integrations import transformers as wha_hf  # noqa: E402
from stretto.kernels.wha.reference import hierarchical_attention_reference  # noqa: E402

VOCAB = 97
REFERENCE = "wha_reference_for_tests"


def llama(heads: int = 4, kv_heads: int = 2, window: int = 8, block: int | None = 4):
    """A 2-layer Llama of width 64 with random weights, on stretto_wha."""
    wha_hf.register()
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        attn_implementation=wha_hf.NAME,
        wha_window=window,
        wha_block=block,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def use_reference(model, padding: torch.Tensor | None) -> None:
    """Switch `model` to an attention written from the definition: transformers' own
    `repeat_kv`, `hierarchical_attention_reference` in float64, and the key padding
    taken from the test's mask, not from what transformers passes."""

    def reference(module, query, key, value, attention_mask, scaling=None, **kwargs):
        groups = query.shape[1] // key.shape[1]
        k, v = repeat_kv(key, groups), repeat_kv(value, groups)
        o = hierarchical_attention_reference(
            query.double(),
            k.double(),
            v.double(),
            window=module.config.wha_window,
            block=module.config.wha_block,
            causal=True,
            key_padding_mask=padding,
            scale=scaling,
        )
        return o.to(query.dtype).transpose(1, 2), None

    transformers.AttentionInterface.register(REFERENCE, reference)
    model.set_attn_implementation(REFERENCE)


def inputs(batch: int = 2, n: int = 37, left_pad: int = 5):
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (batch, n))
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[1, :left_pad] = 0  # left padding, as for generation
    return ids, mask


CASES = [
    pytest.param({"heads": 4, "kv_heads": 2}, 5, id="gqa-H4-KV2-padded"),
    pytest.param({"heads": 4, "kv_heads": 1}, 0, id="mqa-H4-KV1"),
    pytest.param({"heads": 4, "kv_heads": 4, "block": None}, 5, id="mha-sliding-padded"),
    pytest.param({"heads": 2, "kv_heads": 2, "window": 3, "block": 5}, 9, id="H2-w3-g5-padded"),
]


@pytest.mark.parametrize(("shape", "left_pad"), CASES)
def test_logits_match_the_reference_definition(shape, left_pad):
    model = llama(**shape)
    ids, mask = inputs(left_pad=left_pad)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        use_reference(model, mask.bool() if left_pad else None)
        want = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("sdpa")
        dense = model(ids, attention_mask=mask).logits
    real = mask.bool()
    err = (got - want)[real].abs().max().item()
    assert err < 1e-5, f"max |stretto_wha - reference| = {err:.2e}"
    # The window and summaries matter here: full attention is far from both.
    assert (dense - want)[real].abs().max().item() > 100 * max(err, 1e-7)


def test_gradients_match_the_reference_definition():
    model = llama()
    ids, mask = inputs()
    labels = ids.masked_fill(mask == 0, -100)

    def grads():
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    got = grads()
    use_reference(model, mask.bool())
    want = grads()
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_few_training_steps_lower_the_loss():
    model = llama().train()
    ids, mask = inputs(batch=4, n=48, left_pad=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, attention_mask=mask, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts one-token decoding steps that go through the cache path."""
    calls = []
    real = wha_hf._decode_one

    def counting(*args, **kwargs):
        calls.append(args[1].shape[2])  # keys in the cache
        return real(*args, **kwargs)

    monkeypatch.setattr(wha_hf, "_decode_one", counting)
    return calls


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cached_generation_equals_a_full_forward_per_step(decode_calls, cache):
    model = llama()
    ids, mask = inputs(n=20)
    settings = {"max_new_tokens": 24, "do_sample": False, "output_logits": True}
    settings["return_dict_in_generate"] = True
    with torch.no_grad():
        full = model.generate(ids, attention_mask=mask, use_cache=False, **settings)
        assert decode_calls == []
        extra = {} if cache == "dynamic" else {"cache_implementation": "static"}
        cached = model.generate(ids, attention_mask=mask, use_cache=True, **settings, **extra)
    # one call per layer and new token after the first, reading every past key
    assert len(decode_calls) == 2 * 23 and max(decode_calls) == 20 + 23
    assert torch.equal(cached.sequences, full.sequences)
    for step, (a, b) in enumerate(zip(cached.logits, full.logits, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=f"step {step}")


def test_a_chunk_after_the_cache_equals_the_full_forward():
    model = llama()
    ids, mask = inputs(n=40)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        first = model(ids[:, :25], attention_mask=mask[:, :25], use_cache=True)
        rest = model(ids[:, 25:], attention_mask=mask, cache=first.cache)
    torch.testing.assert_close(rest.logits, full[:, 25:], rtol=0, atol=1e-5)


# -- what is refused, and why ----------------------------------------------------------------
def test_a_cache_that_dropped_keys_is_refused():
    with pytest.raises(ValueError, match="needs every past key .* dropped the first 16"):
        wha_hf.wha_padding_mask(batch_size=1, q_length=1, kv_length=32, q_offset=47, kv_offset=16)


def test_another_mask_pattern_is_refused():
    pattern = masking_utils.sliding_window_causal_mask_function(8)
    with pytest.raises(ValueError, match="cannot follow the model's mask pattern"):
        wha_hf.wha_padding_mask(batch_size=1, q_length=4, kv_length=4, mask_function=pattern)


def test_the_mask_is_the_key_padding_up_to_the_last_query():
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = wha_hf.wha_padding_mask(
        batch_size=2, q_length=1, kv_length=8, q_offset=4, attention_mask=padding
    )
    assert mask.tolist() == padding.bool().tolist()  # a static cache's 3 unused slots cut
    full = wha_hf.wha_padding_mask(batch_size=2, q_length=5, kv_length=5, attention_mask=padding)
    assert full.tolist() == padding.bool().tolist()
    assert wha_hf.wha_padding_mask(batch_size=2, q_length=5, kv_length=5) is None
    none_padded = torch.ones(2, 5, dtype=torch.long)
    assert wha_hf.wha_padding_mask(2, 5, 5, attention_mask=none_padded) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("wha_window", 0, r"config.wha_window must be an int >= 1, got 0"),
        ("wha_block", 0, r"config.wha_block must be None or an int >= 1, got 0"),
        ("wha_window", 2.5, r"config.wha_window must be an int >= 1, got 2.5"),
    ],
)
def test_bad_settings_name_the_config_field(field, value, message):
    model = llama()
    setattr(model.config, field, value)
    ids, mask = inputs()
    with pytest.raises(ValueError, match=message):
        model(ids, attention_mask=mask)


def test_defaults_without_settings():
    class Module(torch.nn.Module):
        config = None
        is_causal = True

    from stretto.kernels import hierarchical_attention

    q, k, v = (torch.randn(1, 2, 300, 16) for _ in range(3))
    o, weights = wha_hf.wha_attention_forward(Module(), q, k, v, None)
    assert weights is None and o.shape == (1, 300, 2, 16)
    want = hierarchical_attention(q, k, v, window=256, block=64)
    torch.testing.assert_close(o, want.transpose(1, 2))


def test_attention_dropout_is_refused():
    model = llama().train()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    ids, mask = inputs()
    with pytest.raises(ValueError, match="stretto_wha has no attention dropout"):
        model(ids, attention_mask=mask)
