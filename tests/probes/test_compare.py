"""The family comparison (seqmodels.probes.compare*, behind recipes/compare.py): the AR-hit mask
against its definition, bigram counts, the loss split against a per-token computation, the gap
share's closed form, parameter matching of every registered causal family, and a tiny grid end
to end with resume."""
import csv
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig, SeqLM
from seqmodels.benchmark_families import count_params
from seqmodels.probes import compare
from seqmodels.probes.compare_grid import (build_grid, causal_families, family_values, fit_d_model, match_parameters,
                                           shaped_values)
from seqmodels.probes.compare_results import gap_share, result_rows
from seqmodels.probes.compare_tokens import BigramCounts, ar_hit_mask, bigram_codes, split_loss, token_groups


def brute_ar_hits(row: list[int]) -> list[bool]:
    """Target w_t (t >= 1) is an AR hit iff some j < t - 1 has w_j = w_{t-1} and w_{j+1} = w_t."""
    return [any(row[j] == row[t - 1] and row[j + 1] == row[t] for j in range(t - 1)) for t in range(1, len(row))]


@pytest.mark.parametrize("seed", range(6))
def test_ar_hit_mask_matches_the_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    vocab = [2, 3, 5, 50][seed % 4]  # small vocabularies repeat bigrams often
    windows = torch.randint(0, vocab, (5, 3 + 7 * seed), generator=gen)
    windows[0] = 7  # one token repeated: every target from t = 2 on is a hit
    windows[1, ::2] = 1  # an alternating pattern
    mask = ar_hit_mask(windows)
    assert mask.shape == (5, windows.shape[1] - 1)
    assert mask.tolist() == [brute_ar_hits(row) for row in windows.tolist()]
    assert mask[0].tolist() == [False] + [True] * (windows.shape[1] - 2)


def test_ar_hit_mask_hand_made():
    # a b a b c a b: t=3 (b after a: bigram ab at j=0) and t=6 (ab again) are hits; t=2 (ba) is not
    assert ar_hit_mask(torch.tensor([[0, 1, 0, 1, 2, 0, 1]])).tolist() == [[False, False, True, False, False, True]]
    with pytest.raises(ValueError, match="windows must be"):
        ar_hit_mask(torch.tensor([3, 4, 5]))


def test_bigram_counts_and_groups_match_a_counter():
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": w[:, :-1], "labels": w[:, 1:]} for w in torch.randint(0, 6, (3, 4, 9), generator=gen)]
    counts = BigramCounts.from_batches(batches, 8)
    reference = Counter((int(a), int(b)) for batch in batches
                        for a, b in zip(batch["input_ids"].flatten(), batch["labels"].flatten()))
    assert counts.tokens == 3 * 4 * 8
    windows = torch.randint(0, 8, (3, 12), generator=gen)  # tokens 6, 7 never occur in training: count 0
    looked_up = counts.lookup(bigram_codes(windows, 8))
    assert looked_up.tolist() == [[reference.get((a, b), 0) for a, b in zip(row[:-1], row[1:])] for row in windows.tolist()]
    groups = token_groups(windows, counts, rare_below=3)
    hits = torch.tensor([brute_ar_hits(row) for row in windows.tolist()])
    assert torch.equal(groups["ar"], hits) and torch.equal(groups["other"], ~hits)
    assert torch.equal(groups["ar_rare"], hits & (looked_up < 3))


def test_split_loss_matches_per_token_losses():
    torch.manual_seed(0)
    model = SeqLM(ModelConfig(vocab_size=5, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)).double().eval()
    windows = torch.randint(0, 5, (4, 13))
    batches = [{"input_ids": w[:, :-1], "labels": w[:, 1:]} for w in windows.split(2)]
    counts = BigramCounts.from_batches(batches[:1], 5)
    split = split_loss(model, batches, counts, rare_below=2)
    sums, tokens = Counter(), Counter()
    for row in windows:
        with torch.no_grad():
            logits = model(row[None, :-1]).logits[0]
        hits = brute_ar_hits(row.tolist())
        for t in range(1, len(row)):
            loss = float(F.cross_entropy(logits[t - 1], row[t]))
            seen = counts.lookup(torch.tensor([int(row[t - 1]) * 5 + int(row[t])]))[0]
            for group, member in (("all", True), ("ar", hits[t - 1]), ("ar_rare", hits[t - 1] and seen < 2),
                                  ("other", not hits[t - 1])):
                if member:
                    sums[group] += loss
                    tokens[group] += 1
    for group in ("all", "ar", "ar_rare", "other"):
        assert split[group]["tokens"] == tokens[group]
        assert split[group]["loss_sum"] == pytest.approx(sums[group], rel=1e-12, abs=1e-12)
    assert split["ar"]["tokens"] > 0 and split["ar"]["tokens"] + split["other"]["tokens"] == 4 * 12


def _result(label, sums, tokens=(100, 20, 5, 80)):
    groups = ("all", "ar", "ar_rare", "other")
    split = {g: {"loss_sum": s, "tokens": n} for g, s, n in zip(groups, sums, tokens)}
    return {"label": label, "preset": None, "model": {"d_model": 8}, "parameters": 10, "non_embedding_parameters": 5,
            "tokens_trained": 64, "steps": 2, "train_loss": 1.0, "tokens_per_s": 1.0, "peak_mem_gb": 0.1,
            "train_seconds": 1.0, "seconds": 2.0, "split": split}


def test_gap_share_closed_form():
    base = _result("attention", (200.0, 30.0, 10.0, 170.0))
    worse = _result("gla", (230.0, 54.0, 16.0, 176.0))  # total gap 30, of which 24 on AR hits, 6 on rare ones
    better = _result("based", (190.0, 29.0, 9.0, 161.0))
    rows = {r["model"]: r for r in result_rows([base, worse, better, {"label": "mega", "error": "boom"}], "attention")}
    assert rows["gla"]["ar_gap_share"] == pytest.approx(24 / 30, abs=1e-15)
    assert rows["gla"]["ar_rare_gap_share"] == pytest.approx(6 / 30, abs=1e-15)
    assert rows["gla"]["gap"] == pytest.approx(0.3, abs=1e-15) and rows["attention"]["gap"] == 0
    assert rows["based"]["ar_gap_share"] is None and rows["attention"]["ar_gap_share"] is None
    assert rows["gla"]["ppl_ar"] == pytest.approx(math.exp(54.0 / 20), rel=1e-15)
    assert rows["mega"] == {"model": "mega", "preset": None, "error": "boom"}
    assert gap_share(worse["split"], base["split"], "other") == pytest.approx(6 / 30, abs=1e-15)
    with pytest.raises(ValueError, match="different held-out tokens"):
        result_rows([base, _result("gla", (1.0, 1.0, 1.0, 1.0), tokens=(99, 20, 5, 79))], "attention")


SHAPE = {"d_model": 32, "n_layers": 2, "tolerance": 0.05}


def test_every_causal_family_is_matched_within_tolerance():
    families, left_out = causal_families()
    assert "attention" in families and left_out == ["vig: bidirectional (no causal LM form)"]
    cfg = {"shape": SHAPE, "baseline": "attention", "model": {},
           "grid": {"families": "all", "hybrids": [["base_conv", "based"], ["gla", "attention"]]}}
    models, notes = build_grid(cfg, 300, 64)
    expected = ["attention"] + [f for f in families if f != "attention"] + ["base_conv+based", "gla+attention"]
    assert [m["label"] for m in models] == expected and notes == left_out  # the baseline first
    target = SeqLM(ModelConfig.from_preset("transformer-tiny", d_model=32, n_layers=2, vocab_size=300,
                                           max_seq_len=64)).num_parameters()
    for m in models:
        model = SeqLM(ModelConfig.from_dict(m["model"]))  # a real build, not the meta-device count
        count = model.num_parameters()
        assert count == m["parameters"] and m["target"] == target, m["label"]
        assert abs(count / target - 1) <= 0.05, (m["label"], count, target)
        assert m["non_embedding_parameters"] == count - 300 * model.cfg.d_model, m["label"]  # tied embeddings
        assert m["model"]["n_layers"] == 2 and m["model"]["max_seq_len"] == 64


def test_mlp_width_is_the_closest_and_deterministic():
    base, preset = family_values("chela")
    assert preset == "chela-tiny"
    target = 40_000
    values, count = match_parameters(base, 32, 2, 300, 64, target, 0.05)
    assert match_parameters(base, 32, 2, 300, 64, target, 0.05) == (values, count)
    width = values["mlp_hidden_dim"]
    assert width % 8 == 0
    for other in (width - 8, width + 8):
        if other > 0:
            neighbour = count_params(ModelConfig.from_dict(shaped_values(base, 32, 2, 300, 64, other)))
            assert abs(neighbour - target) >= abs(count - target)


def test_d_model_fit_without_mlp_is_the_closest():
    base, preset = family_values("mega")
    assert preset == "mega-tiny" and base["mlp"] == "none"
    target = 50_000
    values, count = match_parameters(base, 32, 2, 300, 64, target, 0.05)
    d = values["d_model"]
    for other in (d - 2, d + 2):
        neighbour = count_params(ModelConfig.from_dict(shaped_values(base, other, 2, 300, 64)))
        assert abs(neighbour - target) >= abs(count - target)
    assert fit_d_model(lambda x: shaped_values(base, x, 2, 300, 64), 32, target)[0] == count
    with pytest.raises(ValueError, match="cannot match 5,000,000 parameters within 5%"):
        match_parameters(base, 32, 2, 300, 64, 5_000_000, 0.05)


@pytest.mark.parametrize("grid, message", [
    ({"families": ["nosuchmixer"]}, "unknown mixer 'nosuchmixer'; registered mixers"),
    ({"families": "some"}, "grid.families must be 'all' or a list of mixer names"),
    ({"families": ["gla"], "hybrids": ["gla"]}, "grid.hybrids: each entry is a list of mixer names"),
    ({"families": ["gla", "gla"]}, "the grid lists a model twice"),
])
def test_bad_grid_values(grid, message):
    with pytest.raises(ValueError, match=message):
        build_grid({"shape": SHAPE, "baseline": "attention", "model": {}, "grid": grid}, 300, 64)


def tiny_args(out_dir, cache_dir, name="tiny", **extra):
    args = {
        "output_dir": out_dir, "name": name, "grid.families": "[attention, gla]", "grid.hybrids": "[]",
        "shape.d_model": 16, "shape.n_layers": 2,
        "data.corpus": "stdlib", "data.max_bytes": 60000, "data.vocab_size": 280, "data.seq_len": 32,
        "data.validation_fraction": 0.1, "data.cache_dir": cache_dir,
        "ds.train_micro_batch_size_per_gpu": 4, "train.steps": 4, "train.warmup_steps": 1, "train.log_every": 1,
        "train.eval_every": 2, "train.eval_batches": 2, "train.save_every": 2, "train.progress": "false",
        "eval.windows": 6, "eval.batch_size": 4, "eval.rare_below": 3,
        "mqar.steps": 2, "mqar.eval_every": 2, "mqar.seq_len": 16, "mqar.num_kv_pairs": 2, "mqar.vocab_size": 32,
        "mqar.train_examples": 64, "mqar.test_examples": 16, "mqar.batch_size": 8,
        "decode.context": 48, "decode.tokens": 20, "decode.step_budget_s": 0.5, "decode.prefill_chunk": 16,
        "torch_threads": 1,
    }
    args.update(extra)
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def _table(path):
    with open(path) as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def test_tiny_grid_end_to_end_and_resume(tmp_path, monkeypatch):
    trained = []
    real = compare.run_model
    monkeypatch.setattr(compare, "run_model", lambda entry, *a: trained.append(entry["label"]) or real(entry, *a))
    argv = tiny_args(tmp_path, tmp_path / "cache")
    compare.run_compare(compare.parse_args(argv))
    out = tmp_path / "tiny"
    assert trained == ["attention", "gla"]
    for name in ("results.csv", "results.md", "loss_curves.png", "ppl_split.png", "run_config.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "ppl_split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = _table(out / "results.csv")
    assert set(first) == {"attention", "gla"}
    for label in first:
        result = json.loads((out / label / "result.json").read_text())
        assert result["steps"] == 4 and result["tokens_trained"] == 4 * 4 * 32
        assert list((out / label).glob("events.out.tfevents.*")) and (out / label / "hf" / "config.json").is_file()
        assert not (out / label / "checkpoints").exists()  # keep_checkpoints: false
        split = result["split"]
        assert split["all"]["tokens"] == 6 * 32 == split["ar"]["tokens"] + split["other"]["tokens"]
        assert 0 <= result["mqar"]["accuracy"] <= 1 and result["decode"]["state_bytes"] > 0
    assert float(first["attention"]["gap"]) == 0.0
    # a rerun trains nothing; after losing gla's directory only gla trains again, to the same numbers
    trained.clear()
    compare.run_compare(compare.parse_args(argv))
    assert trained == []
    import shutil

    shutil.rmtree(out / "gla")
    compare.run_compare(compare.parse_args(argv))
    assert trained == ["gla"]
    second = _table(out / "results.csv")
    assert second["attention"] == first["attention"]
    for key in ("parameters", "loss", "ppl_ar", "train_loss", "mqar_accuracy", "state_bytes"):
        assert second["gla"][key] == first["gla"][key], key


@pytest.mark.slow
def test_two_ranks_share_the_grid(tmp_path):
    """Two launcher-style processes (RANK/WORLD_SIZE/MASTER_*) take the models from the work queue:
    each model is trained once, by one rank; rank 0 writes the table of both after both finished."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(repo / "recipes" / "compare.py"),
                                       *tiny_args(tmp_path, tmp_path / "cache", name="ranks")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert set(_table(tmp_path / "ranks" / "results.csv")) == {"attention", "gla"}
    trained = [line.split()[5].rstrip(":") for log in logs for line in log.splitlines()
               if line.startswith("[compare] rank") and "held-out loss" in line]
    assert sorted(trained) == ["attention", "gla"], logs  # each model once, by one rank
