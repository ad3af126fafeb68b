"""Softmax Transformer (docs/architecture.md §5.1): parallel forward == KV-cache decoding == prefill + continuation."""
import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.testing import assert_rel_close

TOL64 = 1e-10


def tiny(**overrides):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("transformer-tiny", vocab_size=97, **overrides)
    return SeqLM(cfg).double()


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_forward_equals_token_by_token_step(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 97, (2, 11))
    full = model(ids).logits
    state = model.init_state(2)
    stepped = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        stepped.append(logits)
    assert_rel_close(torch.stack(stepped, 1), full, TOL64, "step vs forward")
    assert state.seen_tokens == 11 and state.layers[0].seen_tokens == 11


def test_prefill_then_continuation():
    model = tiny(n_kv_heads=2)
    ids = torch.randint(0, 97, (3, 17))
    full = model(ids).logits
    first = model(ids[:, :6], return_state=True)
    second = model(ids[:, 6:], state=first.state, return_state=True)
    assert_rel_close(torch.cat([first.logits, second.logits], 1), full, TOL64, "prefill + continuation")
    assert second.state.seen_tokens == 17


def test_gqa_matches_repeated_heads():
    """GQA with n_kv_heads=2 equals full multi-head attention whose k/v heads are repeated."""
    gqa = tiny(n_kv_heads=2)
    mha = tiny()
    shared = {k: v for k, v in gqa.state_dict().items() if "k_proj" not in k and "v_proj" not in k}
    mha.load_state_dict(shared, strict=False)
    for block_gqa, block_mha in zip(gqa.blocks, mha.blocks):
        for name in ("k_proj", "v_proj"):
            w = getattr(block_gqa.mixer, name).weight.view(2, 16, 64)
            getattr(block_mha.mixer, name).weight.data = w.repeat_interleave(2, dim=0).reshape(64, 64)
    ids = torch.randint(0, 97, (2, 9))
    assert_rel_close(gqa(ids).logits, mha(ids).logits, TOL64, "GQA vs repeated MHA")


def test_causality_and_gradients():
    model = tiny()
    ids = torch.randint(0, 97, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 97
    a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])
    out = model(ids, labels=ids)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_loss_is_mean_ce_over_labels():
    model = tiny()
    ids = torch.randint(0, 97, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = 4, 7
    out = model(ids, labels=labels)
    logp = out.logits.log_softmax(-1)
    expected = -(logp[0, 3, 4] + logp[1, 5, 7]) / 2
    assert_rel_close(out.loss, expected, 1e-12, "loss")


def test_generate_greedy_equals_repeated_argmax():
    model = tiny()
    ids = torch.randint(0, 97, (2, 5))
    generated = model.generate(ids, max_new_tokens=6, temperature=0)
    seq = ids
    for _ in range(6):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)


def test_generate_top_k_1_is_greedy_and_seeded_sampling_repeats():
    model = tiny()
    ids = torch.randint(0, 97, (1, 4))
    greedy = model.generate(ids, 5, temperature=0)
    assert torch.equal(model.generate(ids, 5, temperature=1.0, top_k=1), greedy)
    a = model.generate(ids, 5, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, 5, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match=r"token ids in \[0, 200\] but vocab_size is 97"):
        model(torch.tensor([[0, 200]]))
    with pytest.raises(ValueError, match=r"expected \[batch, time\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels has shape \(1, 2\); expected \(1, 3\)"):
        model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"must hold integer token ids"):
        model(torch.zeros(1, 3))


def test_classification_head_pools_non_pad_tokens():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("transformer-tiny", vocab_size=97, head="classify", num_classes=3)
    model = SeqLM(cfg).double()
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    out = model(ids, labels=torch.tensor([0, 2]), attention_mask=mask)
    assert out.logits.shape == (2, 3)
    # a causal model's pooled features over the first 6 tokens do not depend on the padding
    alone = model(ids[1:, :6]).logits
    assert_rel_close(out.logits[1:], alone, TOL64, "pooled logits with padding")


def test_attention_mixer_contract_and_toy_training():
    """The shared contract checks (seqmodels.testing) on the baseline mixer; its state is a KV
    cache, so the constant-state invariant does not apply."""
    from seqmodels.testing import check_generate_matches_forward, check_mixer_contract, train_toy_sequence

    cfg = ModelConfig.from_preset("transformer-tiny", vocab_size=37, n_kv_heads=2)
    check_mixer_contract(cfg, constant_state=False)
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert last < 0.2 * first, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 37, (2, 5)))
