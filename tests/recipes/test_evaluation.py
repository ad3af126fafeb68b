"""Token-weighted evaluation (seqmodels.train.evaluation) against closed forms, and the atomic
writes (seqmodels.atomic) every output goes through."""
import math

import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig, SeqLM
from seqmodels.atomic import TMP_PREFIX, atomic_replace_dir, atomic_write_bytes, atomic_write_text
from seqmodels.data.text import window_batches
from seqmodels.train.evaluation import (
    MAX_LOG_PERPLEXITY,
    TokenWeightedMean,
    evaluate_lm,
    perplexity,
    scored_tokens,
)


def test_token_weighted_mean_weighs_batches_by_their_tokens():
    # batch means 1.0 over 3 tokens and 4.0 over 1 token: (3*1 + 1*4) / 4 = 1.75 (a per-batch mean gives 2.5)
    mean = TokenWeightedMean()
    mean.add(torch.tensor(1.0), 3)
    mean.add(torch.tensor(4.0), 1)
    assert mean.local() == 1.75 and mean.all_ranks() == 1.75
    assert TokenWeightedMean().local() is None and TokenWeightedMean().all_ranks() is None


def test_scored_tokens_counts_labels_not_ignored():
    labels = torch.tensor([[-100, 3, 4], [5, -100, -100]])
    assert scored_tokens({"input_ids": torch.zeros(2, 3), "labels": labels}) == 3
    assert scored_tokens({"input_ids": torch.zeros(2, 3), "labels": torch.tensor([1, 0])}) == 2  # class labels
    assert scored_tokens({"input_ids": torch.zeros(2, 3)}) == 6


def test_perplexity_is_exp_of_the_mean_loss_capped():
    assert perplexity(math.log(7.5)) == pytest.approx(7.5, rel=1e-15)
    assert perplexity(1e6) == math.exp(MAX_LOG_PERPLEXITY)


def test_evaluate_lm_matches_a_direct_float64_sum():
    """Ragged batches (a short last window, ignored labels): loss = Σ per-token CE / scored tokens."""
    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("transformer-tiny", vocab_size=50, d_model=16, n_heads=2, n_layers=1))
    windows = [torch.randint(0, 50, (9,)) for _ in range(5)] + [torch.randint(0, 50, (4,))]
    batches = list(window_batches(windows, 2))
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (2, 8), (1, 8), (1, 3)]
    batches[0]["labels"] = batches[0]["labels"].clone()  # a view of the windows, as input_ids is
    batches[0]["labels"][0, :5] = -100
    model.train()
    result = evaluate_lm(model, batches)
    assert model.training  # the mode is restored
    with torch.no_grad():
        model.eval()
        total = sum(F.cross_entropy(model(b["input_ids"]).logits.double().flatten(0, 1), b["labels"].flatten(),
                                    ignore_index=-100, reduction="sum") for b in batches)
    tokens = 5 * 8 + 3 - 5
    assert result.tokens == tokens and result.batches == 4
    assert result.loss == pytest.approx(float(total) / tokens, rel=1e-12)
    assert result.ppl == pytest.approx(math.exp(result.loss), rel=1e-12)
    assert evaluate_lm(model, batches, max_batches=1).tokens == 16 - 5
    with pytest.raises(ValueError, match="nothing to score"):
        evaluate_lm(model, [{"input_ids": torch.zeros(1, 2, dtype=torch.long),
                             "labels": torch.full((1, 2), -100)}])


def test_atomic_writes(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"

    class Unencodable(str):
        def encode(self, *args):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_text(target, Unencodable("third"))
    assert target.read_text() == "second"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(TMP_PREFIX)]  # no leftover


def test_atomic_replace_dir(tmp_path):
    final = tmp_path / "hf"
    for content in ("old", "new"):
        tmp = tmp_path / f"{TMP_PREFIX}hf"
        tmp.mkdir()
        (tmp / "weights").write_text(content)
        atomic_replace_dir(tmp, final)
        assert (final / "weights").read_text() == content and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # the old copy is gone
