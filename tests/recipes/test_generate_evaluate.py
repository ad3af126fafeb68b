"""generate and evaluate recipes on the base run's outputs: greedy text equals SeqLM.generate,
state bytes are reported, perplexity equals the mean cross-entropy computed directly."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from seqmodels.data.loader import PackedDataset
from seqmodels.train.distributed import init_distributed
from seqmodels.train.export import load_for_inference
from seqmodels.train.text_data import PackedTextData, TextDataSettings


def test_generate_greedy_matches_seqlm_generate(base_run, recipe):
    run_dir = base_run[0]
    generate = recipe("generate")
    result = generate.main(["--model", str(run_dir / "hf"), "--prompt", "the cat", "--max_new_tokens", "12",
                            "--temperature", "0"])
    model, tok = load_for_inference(run_dir / "checkpoints")
    ids = torch.tensor([tok("the cat", add_special_tokens=False)["input_ids"]])
    expected = model.generate(ids, 12, temperature=0)
    assert result["text"] == tok.decode(expected[0].tolist())
    assert result["new_tokens"] == 12 and result["decode_tokens_per_s"] > 0
    with torch.no_grad():  # the Transformer's KV cache grows with the tokens seen
        assert result["state_bytes_prompt"] == model(ids, return_state=True).state.nbytes()
        assert result["state_bytes_end"] == model(expected[:, :-1], return_state=True).state.nbytes()
    assert result["state_bytes_end"] > result["state_bytes_prompt"]


def direct_loss(model, windows):
    with torch.no_grad():
        nll = sum(F.cross_entropy(model(w[None, :-1]).logits[0].double(), w[1:], reduction="sum") for w in windows)
    return float(nll) / sum(len(w) - 1 for w in windows)


def test_evaluate_packed_validation(base_run, recipe, tmp_path):
    run_dir = base_run[0]
    settings = yaml.safe_load((run_dir / "run_config.yaml").read_text())["data"]
    data = PackedTextData(TextDataSettings.from_dict(settings), init_distributed())  # the run's shards
    out = tmp_path / "eval.json"
    result = recipe("evaluate").main(["--model", str(run_dir / "hf"), "--packed", str(data.path),
                                      "--batch_size", "3", "--out", str(out)])
    model, _ = load_for_inference(run_dir / "hf")
    dataset = PackedDataset(data.path, "validation")
    windows = [torch.from_numpy(dataset[i]) for i in range(len(dataset))]
    expected = direct_loss(model, windows)
    assert result["loss"] == pytest.approx(expected, rel=1e-6)  # float32 logits, float64 sums
    assert result["ppl"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert result["tokens"] == len(windows) * data.seq_len
    assert json.loads(out.read_text())["loss"] == result["loss"]


def test_evaluate_text_file_windows(base_run, recipe, tmp_path):
    run_dir = base_run[0]
    text = tmp_path / "notes.txt"
    text.write_text("the cat sees the gate 7.\nmy model mixes one chunk 12.\n" * 5)
    result = recipe("evaluate").main(["--model", str(run_dir / "hf"), "--text", str(text), "--seq_len", "16"])
    model, tok = load_for_inference(run_dir / "hf")
    ids = torch.tensor(tok(text.read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    windows = [ids[s:s + 17] for s in range(0, len(ids) - 1, 16)]
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(direct_loss(model, windows), rel=1e-6)
    with pytest.raises(ValueError, match="exactly one of --packed"):
        recipe("evaluate").main(["--model", str(run_dir / "hf")])
