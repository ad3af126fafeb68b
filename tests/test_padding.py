"""Padding through the whole model and the Hugging Face clients (docs/architecture.md §4.1).

SeqLM, float64: a left-padded batch gives each row's real tokens the logits of the row alone
(<= 1e-9 relative) and greedy `generate` continues each row as it would alone; a right-padded
batch with labels = -100 at pads has the loss of the rows' tokens. Bad masks fail with one clear
line. `transformers.Trainer` with the standard padding collator trains on ragged data, its first
loss equal to a manual per-row computation.
"""
import math

import pytest
import torch
import transformers
from packaging.version import Version

from seqmodels import ModelConfig, SeqLM
from seqmodels.testing import assert_rel_close

TOL = 1e-9
VOCAB = 50
# a pure model, a hybrid (conv + linear attention + window), and the softmax baseline
PRESETS = [("gla-tiny", {}), ("transformer-tiny", {}), ("zoology-mqar", {"d_model": 32}), ("retnet-tiny", {})]


def model_for(preset, overrides, seed=0):
    torch.manual_seed(seed)
    return SeqLM(ModelConfig.from_preset(preset, vocab_size=VOCAB, chunk_size=8, **overrides)).double().eval()


def ragged(lengths, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=generator) for n in lengths]


def pad(rows, left: bool, pad_id: int = 0):
    time = max(len(r) for r in rows)
    ids = torch.full((len(rows), time), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), time, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(time - len(row), time) if left else slice(0, len(row))
        ids[b, span], mask[b, span] = row, 1
    return ids, mask


@pytest.mark.parametrize("preset, overrides", PRESETS, ids=[p for p, _ in PRESETS])
def test_left_padded_prompts_decode_as_alone(preset, overrides):
    model = model_for(preset, overrides)
    rows = ragged([13, 7, 10])
    ids, mask = pad(rows, left=True, pad_id=3)  # a real token id as pad: only the mask may tell them apart
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for b, row in enumerate(rows):
            assert_rel_close(logits[b, ids.shape[1] - len(row):], model(row[None]).logits[0], TOL, f"row {b}")
        generated = model.generate(ids, max_new_tokens=5, temperature=0, attention_mask=mask)
        for b, row in enumerate(rows):
            alone = model.generate(row[None], max_new_tokens=5, temperature=0)
            assert torch.equal(generated[b, -5:], alone[0, -5:]), (b, generated[b].tolist(), alone[0].tolist())


@pytest.mark.parametrize("preset, overrides", PRESETS, ids=[p for p, _ in PRESETS])
def test_right_padded_loss_is_the_rows_loss(preset, overrides):
    model = model_for(preset, overrides)
    rows = ragged([11, 4, 9])
    ids, mask = pad(rows, left=False)
    labels = torch.full_like(ids, -100)
    total, count = 0.0, 0
    with torch.no_grad():
        for b, row in enumerate(rows):
            labels[b, : len(row) - 1] = row[1:]
            logits = model(row[None]).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, row[1:], reduction="sum").item()
            count += len(row) - 1
        loss = model(ids, labels=labels, attention_mask=mask).loss.item()
    assert abs(loss - total / count) <= TOL * total / count


def test_bad_masks_fail_with_one_line():
    model = model_for("gla-tiny", {})
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(ValueError, match=r"attention_mask row 1 has pads between real tokens"):
        model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\); expected \(2, 6\)"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"right-padded batch would leave pads at the end of the decoding state"):
        model(ids, return_state=True, attention_mask=torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]))
    state = model(ids, return_state=True).state
    with pytest.raises(ValueError, match=r"pads in a continuation chunk"):
        model(ids, state=state, attention_mask=torch.tensor([[1] * 6, [0, 1, 1, 1, 1, 1]]))


def test_refusing_family_refuses_at_the_model():
    model = model_for("titans-tiny", {})
    ids, mask = pad(ragged([6, 4]), left=True)
    with pytest.raises(ValueError, match=r"mixer 'titans_memory': left-padded batches .*use batch size 1"):
        model(ids, attention_mask=mask)
    ids, mask = pad(ragged([6, 4]), left=False)  # right padding is exact for free: accepted
    assert torch.isfinite(model(ids, attention_mask=mask).logits).all()


def _word_tokenizer(vocab_size: int):
    """A PreTrainedTokenizerFast over words 'w0'..'w{n-1}' with a pad token (id vocab_size - 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)}
    vocab["<pad>"] = vocab_size - 1
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")


def test_trainer_with_padding_collator_on_ragged_data(tmp_path):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from seqmodels import SeqModelsConfig, SeqModelsForCausalLM

    tokenizer = _word_tokenizer(VOCAB)
    rows = ragged([12, 5, 9, 7], seed=2)
    dataset = [{"input_ids": row.tolist()} for row in rows]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("zoology-mqar", vocab_size=VOCAB, d_model=32, chunk_size=8)
    model = SeqModelsForCausalLM(SeqModelsConfig(cfg))

    batch = collator(dataset)  # right-padded, labels -100 at pads
    assert batch["attention_mask"].sum().item() == sum(len(r) for r in rows)
    with torch.no_grad():  # manual: each row alone, next-token cross-entropy over all rows' tokens
        total = sum(torch.nn.functional.cross_entropy(model.model(r[None]).logits[0, :-1], r[1:], reduction="sum")
                    for r in rows)
        manual = (total / sum(len(r) - 1 for r in rows)).item()
        padded = model(**batch).loss.item()
    assert abs(padded - manual) <= 1e-5 * manual

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), max_steps=3,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    # The Trainer divides the summed loss by its num_items_in_batch: 5.x counts the shifted labels (the
    # manual mean); 4.x counts every label, position 0 included (one more per row than are predicted).
    if Version(transformers.__version__) < Version("5"):
        manual *= sum(len(r) - 1 for r in rows) / sum(len(r) for r in rows)
    assert abs(losses[0] - manual) <= 1e-3 * manual, (losses[0], manual)  # the log rounds to 4 digits
