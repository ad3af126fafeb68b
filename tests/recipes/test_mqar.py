"""The MQAR sweep (seqmodels.probes.mqar, behind recipes/mqar.py): a tiny sweep end to end
(outputs, accuracy against a direct evaluation), resume without re-running finished runs, the accuracy metric, grid validation."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from seqmodels.data.tensors import TensorLoader
from seqmodels.probes import mqar
from seqmodels.probes.mqar_grid import build_grid
from seqmodels.train.evaluation import accuracy_counts

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def sweep(argv) -> list[dict]:
    """What recipes/mqar.py runs: the finished runs' result rows."""
    return mqar.run_sweep(mqar.parse_args(argv)).rows


def tiny_args(out_dir, name="tiny", **extra):
    args = {
        "output_dir": out_dir, "name": name,
        "grid.mixers": "[attention, [base_conv, based]]", "grid.d_models": "[16]", "grid.tasks": "[[16, 2]]",
        "grid.lrs": "[0.01]", "data.vocab_size": 32, "data.train_examples": 128, "data.test_examples": 24,
        "train.steps": 6, "train.warmup_steps": 1, "early_stop.eval_every": 3, "eval_batch_size": 10,
        "ds.train_micro_batch_size_per_gpu": 8,
    }
    args.update(extra)
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def direct_accuracy(model, input_ids, labels):
    """Per example, per answer position: argmax of the model's logits == label (no batching)."""
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for ids, lab in zip(input_ids, labels):
            logits = model(ids[None]).logits[0]
            for t in range(len(lab)):
                if lab[t] != -100:
                    hits += int(int(logits[t].argmax()) == int(lab[t]))
                    total += 1
    return hits / total


def test_accuracy_counts_hand_made():
    # B=1, T=4, V=3: answers at t=1 (label 2) and t=3 (label 0); the argmaxes are 2 and 1.
    logits = torch.tensor([[[9.0, 0, 0], [0, 1, 5], [0, 9, 0], [0, 3, 2]]])
    labels = torch.tensor([[-100, 2, -100, 0]])
    assert accuracy_counts(logits, labels) == (1, 2)
    # classification form: logits [B, C], labels [B]
    assert accuracy_counts(torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]), torch.tensor([1, 1, 1])) == (2, 3)
    with pytest.raises(ValueError, match="disagree"):
        accuracy_counts(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_tensor_loader_resumes_exactly():
    data = {"x": torch.arange(20)}
    full = TensorLoader(data, 3, seed=5)
    seen = [b["x"].tolist() for _ in range(2) for b in full]  # two epochs of 6 batches
    part = TensorLoader(data, 3, seed=5)
    it = iter(part)
    first = [next(it)["x"].tolist() for _ in range(4)]
    resumed = TensorLoader(data, 3, seed=5)
    resumed.load_state_dict(part.state_dict())
    rest = [b["x"].tolist() for b in resumed] + [b["x"].tolist() for b in resumed]
    assert first + rest[:8] == seen
    assert sorted(sum(seen[:6], [])) == sorted(set(sum(seen[:6], [])))  # no repeats within an epoch


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch):
    evaluated = []
    real = mqar.evaluate_accuracy

    def spy(model, tensors, batch_size, device=None):
        value = real(model, tensors, batch_size, device)
        evaluated.append((model, tensors, value))
        return value

    monkeypatch.setattr(mqar, "evaluate_accuracy", spy)
    rows = sweep(tiny_args(tmp_path))
    out = tmp_path / "tiny"
    for name in ("results.csv", "results.md", "results.png", "run_config.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["mixer"] for r in table] == ["attention", "base_conv+based"]
    assert len(rows) == 2
    for row in table:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and row["best_lr"] == "1"
        assert list((out / "cells").glob(f"{row['mixer']}_*/events.out.tfevents.*"))  # TensorBoard per run
    md = (out / "results.md").read_text()
    assert "| attention |" in md and "| base_conv+based |" in md and "seq_len 16, 2 key-value pairs" in md
    # the last evaluation of each run is its reported accuracy; recompute it example by example
    finals = [e for i, e in enumerate(evaluated) if i + 1 == len(evaluated) or evaluated[i + 1][0] is not e[0]]
    assert len(finals) == 2
    for (model, test, value), row in zip(finals, table):
        assert float(row["accuracy"]) == value
        assert direct_accuracy(model, test["input_ids"], test["labels"]) == pytest.approx(value, abs=1e-12)


def test_skip_solved_lrs_skips_later_lrs_of_a_solved_cell(tmp_path, monkeypatch):
    """A per-mixer lr list with skip_solved_lrs: once a cell's first lr reaches early_stop.accuracy
    its later lrs are not trained, and results.md lists them as skipped, not as unfinished. With
    target 0.0 every first lr solves its cell; with 1.01 none can, so every lr trains."""
    calls = []
    real = mqar.train_run
    monkeypatch.setattr(mqar, "train_run", lambda run, *a: calls.append(run["id"]) or real(run, *a))
    grid = {"grid.mixers": "[{mixer: attention, lrs: [0.01, 0.003]}]", "skip_solved_lrs": "true"}
    sweep(tiny_args(tmp_path, name="solved", **grid, **{"early_stop.accuracy": 0.0}))
    assert calls == ["attention_T16_kv2_d16_lr0.01"]
    md = (tmp_path / "solved" / "results.md").read_text()
    assert "Not run, another lr of the cell reached the target" in md and "attention_T16_kv2_d16_lr0.003" in md
    assert "Not finished" not in md
    calls.clear()
    sweep(tiny_args(tmp_path, name="unsolved", **grid, **{"early_stop.accuracy": 1.01}))
    assert calls == ["attention_T16_kv2_d16_lr0.01", "attention_T16_kv2_d16_lr0.003"]
    assert "Not run" not in (tmp_path / "unsolved" / "results.md").read_text()


def test_sweep_resumes_without_rerunning(tmp_path, monkeypatch):
    calls = []
    real = mqar.train_run
    monkeypatch.setattr(mqar, "train_run", lambda run, *a: calls.append(run["id"]) or real(run, *a))
    sweep(tiny_args(tmp_path, name="res"))
    assert len(calls) == 2
    cells = tmp_path / "res" / "cells"
    stamps = {p: p.stat().st_mtime_ns for p in cells.glob("*/result.json")}
    calls.clear()
    sweep(tiny_args(tmp_path, name="res"))
    assert calls == [] and {p: p.stat().st_mtime_ns for p in cells.glob("*/result.json")} == stamps
    # a lost result (an interrupted run) is trained again, alone; a wider grid runs only the new cell
    (cells / "attention_T16_kv2_d16_lr0.01" / "result.json").unlink()
    sweep(tiny_args(tmp_path, name="res", **{"grid.lrs": "[0.01, 0.02]"}))
    assert sorted(calls) == ["attention_T16_kv2_d16_lr0.01", "attention_T16_kv2_d16_lr0.02",
                             "base_conv+based_T16_kv2_d16_lr0.02"]
    with open(tmp_path / "res" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.parametrize("override, message", [
    ({"grid.mixers": "[]"}, "grid.mixers must be a non-empty list"),
    ({"grid.d_models": "[]"}, "grid.d_models must be a non-empty list"),
    ({"grid.lrs": "[]"}, "grid.lrs must be a non-empty list"),
    ({"grid.tasks": "[]"}, "grid.tasks must be a non-empty list"),
    ({"grid.d_models": "[18]", "model.n_heads": 4}, r"mixer=attention d_model=18: d_model=18 is not divisible by n_heads=4"),
    ({"grid.tasks": "[[16, 5]]"}, r"seq_len must be >= 4 \* num_kv_pairs = 20"),
    ({"grid.tasks": "[[16]]"}, r"each task is \[seq_len, num_kv_pairs\]"),
    ({"grid.lrs": "[-1]"}, "grid.lrs: -1 is not a positive number"),
    ({"grid.mixers": "[nosuchmixer]"}, "mixer=nosuchmixer"),
    ({"data.vocab_size": 16}, "data.vocab_size=16 must be > seq_len=16"),
    ({"grid.mixers": "[gla, gla]"}, "labels must be distinct"),
    ({"grid.mixers": "[{mixer: gla, lrs: [0]}]"}, r"grid.mixers\[gla\].lrs: 0 is not a positive number"),
])
def test_invalid_grid_values(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        sweep(tiny_args(tmp_path, **override))
    assert not (tmp_path / "tiny" / "cells").exists()  # validated before anything is written


@pytest.mark.slow
def test_two_ranks_split_the_grid(tmp_path):
    """Two launcher-style processes (RANK/WORLD_SIZE/MASTER_*) share the runs through a work queue: every
    run is trained exactly once, by one rank; rank 0 writes the combined table after both finished."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "recipes" / "mqar.py"),
                                       *tiny_args(tmp_path, name="ranks", **{"grid.lrs": "[0.01, 0.02]"})],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    with open(tmp_path / "ranks" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    trained = [line.split()[5] for log in logs for line in log.splitlines()
               if line.startswith("[mqar] rank") and " run " in line and "accuracy" in line]
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 4, logs  # each run once, by one rank
    for run_dir in (tmp_path / "ranks" / "cells").iterdir():
        assert json.loads((run_dir / "result.json").read_text())["steps"] >= 1


def test_early_stop_ends_the_run_at_the_target(tmp_path):
    """Target accuracy 0: the first check (step 3 of 6) stops the run; its checkpoint is kept on request."""
    sweep(tiny_args(tmp_path, name="stop", **{"early_stop.accuracy": 0.0, "grid.mixers": "[attention]",
                                                          "keep_checkpoints": "true"}))
    run_dir = tmp_path / "stop" / "cells" / "attention_T16_kv2_d16_lr0.01"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 3 and result["early_stopped"] is True
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [3]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "global_step3"


def test_grid_entries():
    cfg = {**mqar.DEFAULTS, "grid": {"mixers": ["gla", ["base_conv", "based"],
                                                       {"label": "attn4", "mixer": "attention", "n_heads": 4,
                                                        "lrs": [3e-3]}],
                                            "d_models": [32], "tasks": [[64, 4], [128, 8]], "lrs": [1e-3, 1e-2]}}
    runs = build_grid(cfg)
    assert len(runs) == (2 * 2 + 1) * 2  # attn4 has its own single lr
    assert {r["lr"] for r in runs if r["mixer"] == "attn4"} == {3e-3}
    assert {r["lr"] for r in runs if r["mixer"] == "gla"} == {1e-3, 1e-2}
    labels = {r["mixer"] for r in runs}
    assert labels == {"gla", "base_conv+based", "attn4"}
    attn = next(r for r in runs if r["mixer"] == "attn4")
    assert attn["model"]["n_heads"] == 4 and attn["model"]["max_seq_len"] == 128 and attn["model"]["mlp"] == "none"
    hybrid = next(r for r in runs if r["mixer"] == "base_conv+based")
    assert hybrid["model"]["layers"] == ["base_conv", "based"] and hybrid["model"]["n_layers"] == 2
    # order: first lrs before second lrs, longest sequence first within them
    assert runs[0]["id"] == "gla_T128_kv8_d32_lr0.001"
    assert [r["lr_index"] for r in runs] == sorted(r["lr_index"] for r in runs)
    first_pass = [r["seq_len"] for r in runs if r["lr_index"] == 0]
    assert first_pass == sorted(first_pass, reverse=True)
