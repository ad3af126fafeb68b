"""HF `generate` with the recurrent state: one token per forward call after the prompt, equal to
SeqLM.generate; beam search with the cache equals beam search without; EOS stops generation."""
import pytest
import torch

import seqmodels  # noqa: F401  (registers the Auto classes)
from seqmodels import ModelConfig, SeqModelsConfig, SeqModelsForCausalLM, mixer_names
from seqmodels.benchmark_families import tiny_presets
from seqmodels.layers.registry import get_mixer

# one family per kind of decoding state: a KV cache, a gated-linear-attention state, a conv tail
FAMILIES = ["transformer-tiny", "gla-tiny", "base_conv-tiny"]
# every causal LM in the registry: each "-tiny" preset with an LM head, and a plain `mixer:` config for a
# causal mixer that no such preset uses
CAUSAL_MIXERS = [name for name in mixer_names() if get_mixer(name).causal]
TINY = [preset for presets in tiny_presets().values() for preset in presets
        if ModelConfig.from_preset(preset).head == "lm"]
EVERY_CAUSAL_LM = TINY + sorted(set(CAUSAL_MIXERS) - {m for p in TINY for m in ModelConfig.from_preset(p).mixer_names()})


def make_model(preset, dtype=torch.float64, **config_kwargs):
    """`preset` is a preset name, or a mixer name (a plain 2-layer config of that mixer)."""
    torch.manual_seed(0)
    if preset in mixer_names():
        cfg = ModelConfig.from_dict({"mixer": preset, "d_model": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 61})
    else:
        cfg = ModelConfig.from_preset(preset, vocab_size=61)
    return SeqModelsForCausalLM(SeqModelsConfig(cfg, **config_kwargs)).to(dtype).eval()


def test_every_causal_mixer_is_generated():
    covered = {m for name in EVERY_CAUSAL_LM for m in make_model(name).config.to_model_config().mixer_names()}
    assert covered == set(CAUSAL_MIXERS)


def record_calls(model):
    """Input lengths of every forward call of `model`."""
    lengths = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        lengths.append(ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1])

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return lengths


@pytest.mark.parametrize("preset", EVERY_CAUSAL_LM)
def test_greedy_one_token_per_call_equals_seqlm_generate(preset):
    model = make_model(preset)
    ids = torch.randint(3, 61, (2, 7))
    lengths = record_calls(model)
    out = model.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
    assert lengths == [7, 1, 1, 1, 1, 1]
    assert torch.equal(out, model.model.generate(ids, max_new_tokens=6, temperature=0))


def test_inputs_embeds_prompt_then_one_token_per_call():
    model = make_model("gla-tiny")
    ids = torch.randint(3, 61, (1, 5))
    lengths = record_calls(model)
    out = model.generate(inputs_embeds=model.model.embed(ids), max_new_tokens=4, do_sample=False)
    assert lengths == [5, 1, 1, 1]
    assert torch.equal(out, model.model.generate(ids, max_new_tokens=4, temperature=0)[:, 5:])


@pytest.mark.parametrize("preset", EVERY_CAUSAL_LM)
def test_beam_search_with_cache_equals_without(preset):
    model = make_model(preset)
    ids = torch.randint(3, 61, (2, 6))
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False, early_stopping=True,
                  output_scores=True, return_dict_in_generate=True)
    lengths = record_calls(model)
    cached = model.generate(ids, use_cache=True, **kwargs)
    assert lengths == [6, 1, 1, 1, 1]  # the beams decode from the reordered state, one token per call
    plain = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(cached.sequences_scores, plain.sequences_scores, rtol=0, atol=1e-10)


def test_generation_stops_at_eos_from_the_config():
    prompts = torch.cat([torch.randint(3, 61, (1, 5), generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)])
    free = make_model("gla-tiny").model.generate(prompts, max_new_tokens=8, temperature=0)[:, 5:]
    eos = int(free[0, 0])
    assert eos not in free[1].tolist()  # row 0 emits the EOS first, row 1 never does
    model = make_model("gla-tiny", bos_token_id=0, eos_token_id=eos, pad_token_id=2)
    assert model.generation_config.eos_token_id == eos and model.generation_config.pad_token_id == 2
    out = model.generate(prompts, max_new_tokens=8, do_sample=False)[:, 5:]
    assert out[0].tolist() == [eos] + [2] * 7  # finished: padded while row 1 runs on
    assert torch.equal(out[1], free[1])
    assert model.generate(prompts[:1], max_new_tokens=8, do_sample=False).shape[1] == 5 + 1  # stopped at once


def test_state_index_select_matches_separate_prefills():
    model = make_model("gla-tiny").model
    ids = torch.randint(3, 61, (3, 8))
    state = model(ids, return_state=True).state
    picked = state.index_select(torch.tensor([2, 0, 2]))
    token = torch.tensor([5, 6, 7])
    logits, _ = model.step(token, picked)
    for row, source in enumerate([2, 0, 2]):
        alone = model(ids[source:source + 1], return_state=True).state
        expected, _ = model.step(token[row:row + 1], alone)
        torch.testing.assert_close(logits[row:row + 1], expected, rtol=0, atol=1e-12)
    assert state.index_select(torch.tensor([True, False, True])).batch_size == 2
    with pytest.raises(ValueError, match="the state has 3 sequences"):
        state.index_select(torch.tensor([3]))


@pytest.mark.parametrize("preset", FAMILIES + ["retnet-tiny", "lizard-tiny"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(preset):
    """HF generate on a left-padded batch of prompts of different lengths: each row's new tokens and
    scores equal that prompt generated alone (pads never enter the state)."""
    model = make_model(preset, pad_token_id=0)
    torch.manual_seed(1)
    prompts = [torch.randint(3, 61, (1, n)) for n in (7, 4, 2)]
    width = max(p.shape[1] for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1]:], mask[row, width - p.shape[1]:] = p[0], 1
    kwargs = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    batch = model.generate(ids, attention_mask=mask, **kwargs)
    for row, p in enumerate(prompts):
        alone = model.generate(p, attention_mask=torch.ones_like(p), **kwargs)
        assert torch.equal(batch.sequences[row, width:], alone.sequences[0, p.shape[1]:])
        for step_batch, step_alone in zip(batch.scores, alone.scores):
            torch.testing.assert_close(step_batch[row], step_alone[0], rtol=0, atol=1e-9)
