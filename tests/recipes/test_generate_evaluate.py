"""generate and evaluate on the base run's outputs: greedy text equals SeqLM.generate, state bytes
are reported, perplexity equals the mean cross-entropy computed directly (seqmodels.generate,
seqmodels.train.evaluation; recipes/evaluate.py end to end as a subprocess)."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from seqmodels.data.loader import PackedDataset
from seqmodels.data.text import PackedTextData, TextDataSettings, packed_windows, text_windows, window_batches
from seqmodels.generate import generate_text
from seqmodels.train.distributed import init_distributed
from seqmodels.train.evaluation import evaluate_lm
from seqmodels.train.export import load_for_inference

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_generate_greedy_matches_seqlm_generate(base_run):
    run_dir = base_run[0]
    hf_model, hf_tok = load_for_inference(run_dir / "hf")
    result = generate_text(hf_model, hf_tok, "the cat", 12, temperature=0, top_k=50, top_p=None, seed=0)
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


def evaluate_recipe(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_evaluate_packed_validation(base_run, tmp_path):
    run_dir = base_run[0]
    settings = yaml.safe_load((run_dir / "run_config.yaml").read_text())["data"]
    data = PackedTextData(TextDataSettings.from_dict(settings), init_distributed())  # the run's shards
    model, tok = load_for_inference(run_dir / "hf")
    result = vars(evaluate_lm(model, window_batches(packed_windows(data.path, "validation", tok), 3)))
    dataset = PackedDataset(data.path, "validation")
    windows = [torch.from_numpy(dataset[i]) for i in range(len(dataset))]
    expected = direct_loss(model, windows)
    assert result["loss"] == pytest.approx(expected, rel=1e-6)  # float32 logits, float64 sums
    assert result["ppl"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert result["tokens"] == len(windows) * data.seq_len
    # the recipe end to end: the same numbers in its --out file
    out = tmp_path / "eval.json"
    done = evaluate_recipe("--model", run_dir / "hf", "--packed", data.path, "--batch_size", 3, "--out", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["loss"] == pytest.approx(result["loss"], rel=1e-12)


def test_evaluate_text_file_windows(base_run, tmp_path):
    run_dir = base_run[0]
    text = tmp_path / "notes.txt"
    text.write_text("the cat sees the gate 7.\nmy model mixes one chunk 12.\n" * 5)
    model, tok = load_for_inference(run_dir / "hf")
    result = vars(evaluate_lm(model, window_batches(text_windows(tok, text, 16), 8)))
    ids = torch.tensor(tok(text.read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    windows = [ids[s:s + 17] for s in range(0, len(ids) - 1, 16)]
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(direct_loss(model, windows), rel=1e-6)
    done = evaluate_recipe("--model", run_dir / "hf")
    assert done.returncode == 1 and "[evaluate] error: give exactly one of --packed" in done.stderr
