"""HF wrapper features: resize_token_embeddings, gradient checkpointing, hidden states, inputs_embeds,
AutoModel (the trunk), _init_weights for new modules, the standard config fields."""
import json
import os
import resource
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import seqmodels  # noqa: F401  (registers the Auto classes)
from seqmodels import ModelConfig, SeqLM, SeqModelsConfig, SeqModelsForCausalLM
from seqmodels.hf import SeqModelsModel, dtype_kwargs


FLOAT64 = dtype_kwargs(torch.float64)  # from_pretrained's dtype keyword on transformers 4.x and 5.x


def make_model(preset="gla-tiny", dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, **{"vocab_size": 61, **overrides})
    return SeqModelsForCausalLM(SeqModelsConfig(cfg)).to(dtype)


def test_wrapper_keeps_seqlm_init():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gla-tiny", vocab_size=61)
    plain = SeqLM(cfg)
    torch.manual_seed(0)
    wrapped = SeqModelsForCausalLM(SeqModelsConfig(cfg)).model
    for (name, a), (_, b) in zip(plain.state_dict().items(), wrapped.state_dict().items()):
        assert torch.equal(a, b), name  # post_init draws nothing again


def test_config_standard_fields(tmp_path):
    cfg = ModelConfig.from_preset("transformer-tiny", vocab_size=61, n_kv_heads=2, max_seq_len=96)
    config = SeqModelsConfig(cfg, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    expected = {"hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
                "num_key_value_heads": 2, "max_position_embeddings": 96, "vocab_size": 61,
                "tie_word_embeddings": True, "initializer_range": cfg.init_std, "use_cache": True,
                "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
    SeqModelsForCausalLM(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved.get(k) for k in expected} == expected
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (0, 1, 2)
    # a standard field set by a user edits model_config (the one source)
    loaded = AutoConfig.from_pretrained(tmp_path, num_hidden_layers=3)
    assert loaded.model_config["n_layers"] == 3 and loaded.to_model_config().n_layers == 3
    with pytest.raises(ValueError):
        loaded.num_attention_heads = 5  # d_model 64 is not divisible by 5: ModelConfig's own check


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("mean_resizing", [True, False])
def test_resize_token_embeddings(tied, mean_resizing):
    model = make_model(tie_embeddings=tied)
    old_embed = model.model.embed.weight.detach().clone()
    old_head = model.model.lm_head.weight.detach().clone()
    torch.manual_seed(1)
    model.resize_token_embeddings(75, mean_resizing=mean_resizing)
    embed, head = model.model.embed.weight, model.model.lm_head.weight
    assert embed.shape == (75, 64) and head.shape == (75, 64)
    assert (head is embed) == tied
    assert model.config.vocab_size == 75 and model.config.model_config["vocab_size"] == 75
    assert model.model.cfg.vocab_size == 75 and model.config.to_model_config().vocab_size == 75
    assert torch.equal(embed[:61], old_embed) and torch.equal(head[:61], old_head if not tied else old_embed)
    std = model.model.cfg.init_std
    for new_rows, old_rows in ((embed[61:], old_embed), (head[61:], old_head)):
        new_rows = new_rows.detach()
        assert bool(torch.isfinite(new_rows).all())
        if mean_resizing:  # HF's choice: near the old rows' mean
            assert float((new_rows - old_rows.mean(0)).abs().max()) < 0.1 * std
        else:  # SeqLM's: normal(0, init_std), 14 x 64 draws
            assert 0.8 * std < float(new_rows.std()) < 1.2 * std and float(new_rows.mean().abs()) < 0.1 * std
    ids = torch.tensor([[3, 70, 74, 5]])
    out = model(ids, labels=ids)  # the new ids are accepted and train
    out.loss.backward()
    assert float(embed.grad[70].abs().sum()) > 0


def test_resize_shrinks():
    model = make_model(tie_embeddings=False)
    model.resize_token_embeddings(50)
    assert model.model.lm_head.weight.shape == (50, 64) and model.model.cfg.vocab_size == 50
    with pytest.raises(ValueError, match="vocab_size is 50"):
        model(torch.tensor([[55]]))


@pytest.mark.parametrize("preset", ["lightning-tiny", "mega-tiny", "chela-tiny"])
def test_init_weights_for_a_layer_added_by_an_edited_config(tmp_path, preset):
    make_model(preset, dtype=torch.float32).save_pretrained(tmp_path)
    torch.manual_seed(5)
    grown = AutoModelForCausalLM.from_pretrained(tmp_path, num_hidden_layers=3)
    assert len(grown.model.blocks) == 3
    torch.manual_seed(0)
    reference = SeqLM(ModelConfig.from_preset(preset, vocab_size=61, n_layers=3))
    cfg = reference.cfg
    new = dict(grown.model.blocks[2].named_parameters())
    for name, value in reference.blocks[2].named_parameters():
        got, value = new[name].detach(), value.detach()
        assert bool(torch.isfinite(got).all()), name
        if float(value.std()) == 0 or value.numel() == 1 or name.endswith("lrpe_theta"):
            assert torch.equal(got, value.detach()), name  # constants (norm gains, LRPE angles) exactly
        else:
            expected_std = float(value.std())  # a fresh layer's scale, residual projections included
            assert 0.75 * expected_std < float(got.std()) < 1.25 * expected_std, name
    assert cfg.n_layers == 3
    old = make_model(preset, dtype=torch.float32)
    for name, value in old.model.blocks[0].named_parameters():  # loaded layers are untouched
        assert torch.equal(dict(grown.model.blocks[0].named_parameters())[name], value), name


def test_gradient_checkpointing_same_loss_and_grads():
    model = make_model("gla-tiny", n_layers=3).train()
    ids = torch.randint(0, 61, (2, 33), generator=torch.Generator().manual_seed(0))

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    with warnings.catch_warnings():  # transformers 5 renames it activation_checkpointing_enable
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()
    assert model.model.activation_checkpointing and model.is_activation_checkpointing
    recomputed = []
    hook = model.model.blocks[1].register_forward_pre_hook(lambda *args: recomputed.append(1))
    loss_ckpt, grads_ckpt = loss_and_grads()
    hook.remove()
    assert len(recomputed) == 2  # the forward, then again in the backward
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-10)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=0, atol=1e-10, msg=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_disable()
    assert not model.model.activation_checkpointing


@pytest.mark.parametrize("preset", ["transformer-tiny", "gla-tiny"])
def test_hidden_states_and_inputs_embeds(preset):
    model = make_model(preset).eval()
    ids = torch.randint(0, 61, (2, 9))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[0], model.model.embed(ids), rtol=0, atol=0)
    h, _, _ = model.model.hidden_states(ids)
    torch.testing.assert_close(out.hidden_states[-1], h, rtol=0, atol=0)  # the last one is the final-norm output
    block0, _ = model.model.blocks[0](out.hidden_states[0])
    torch.testing.assert_close(out.hidden_states[1], block0, rtol=0, atol=1e-12)
    by_embeds = model(inputs_embeds=model.model.embed(ids), output_hidden_states=True)
    torch.testing.assert_close(by_embeds.logits, out.logits, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(ids, inputs_embeds=model.model.embed(ids))
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)


@pytest.mark.parametrize("tied", [True, False])
def test_auto_model_loads_the_trunk(tmp_path, tied):
    causal = make_model("transformer-tiny", tie_embeddings=tied).eval()
    causal.save_pretrained(tmp_path)
    trunk = AutoModel.from_pretrained(tmp_path, **FLOAT64).eval()
    assert isinstance(trunk, SeqModelsModel) and trunk.model.lm_head is None
    ids = torch.randint(0, 61, (2, 8))
    out = trunk(ids, use_cache=True)
    h, state, _ = causal.model.hidden_states(ids, return_state=True)
    torch.testing.assert_close(out.last_hidden_state, h, rtol=0, atol=0)
    assert out[1].seen_tokens == 8 and torch.equal(out[1].layers[0].key, state.layers[0].key)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, **FLOAT64).eval()
    torch.testing.assert_close(reloaded(ids).logits, causal(ids).logits, rtol=0, atol=0)
    assert (reloaded.model.lm_head.weight is reloaded.model.embed.weight) == tied


def _peak_rss_mib(model, ids, checkpointing: bool) -> float:
    """Resident-memory high-water mark of one forward + backward above the level it starts from, in a
    forked child (a fresh high-water mark; the allocator keeps nothing from an earlier run)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report, exit without running pytest's teardown
        try:
            model.set_activation_checkpointing(checkpointing)
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            model(ids, labels=ids).loss.backward()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            os.write(write_end, f"{(peak - base) / 1024}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as answer:
        return float(answer.read())


def test_activation_checkpointing_lowers_peak_memory():
    """Peak resident memory of one forward + backward (4 gla layers, d_model 128, 2 x 1024 tokens, float32):
    measured 231 MiB without checkpointing, 126 MiB with (this test with -s, CPU, 2026-12-02)."""
    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("gla-tiny", vocab_size=256, d_model=128, n_layers=4, max_seq_len=1024)).train()
    ids = torch.randint(0, 256, (2, 1024))
    with torch.no_grad():
        model(ids[:, :8])  # kernels and allocator warmed up in the parent, before the children fork
    peaks = {setting: _peak_rss_mib(model, ids, setting) for setting in (False, True)}
    print(f"peak MiB above the start, checkpointing off/on: {peaks[False]:.0f} / {peaks[True]:.0f}")
    assert peaks[True] < 0.6 * peaks[False]


def test_export_carries_the_tokenizer_ids_and_context(tmp_path):
    from transformers import AutoTokenizer

    from seqmodels.data.tokenizer import train_bpe
    from seqmodels.train.export import export_hf, load_for_inference

    tokenizer = train_bpe(["def main():\n    return 1\n"] * 20, vocab_size=270)
    cfg = ModelConfig.from_preset("gla-tiny", vocab_size=len(tokenizer), max_seq_len=96)
    torch.manual_seed(0)
    weights = SeqLM(cfg).state_dict()
    export_hf(weights, cfg, tokenizer, tmp_path / "hf")
    assert tokenizer.model_max_length > 10**20  # the caller's tokenizer is left as it was
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == ids == (0, 1, 2)
    assert config["max_position_embeddings"] == 96 and config["hidden_size"] == cfg.d_model
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 1
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").model_max_length == 96
    model, loaded_tokenizer = load_for_inference(tmp_path / "hf")
    assert loaded_tokenizer.model_max_length == 96
    for name, value in weights.items():
        assert torch.equal(model.state_dict()[name], value), name
