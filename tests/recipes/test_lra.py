"""The LRA probe (seqmodels.probes.lra, behind recipes/lra.py): a tiny ListOps run (generator and
official-format files written here), the accuracy it reports against a direct evaluation, and its errors (unknown task, missing files)."""
import json

import pytest
import torch

from seqmodels.data.lra.listops import generate_listops
from seqmodels.probes import lra


def run(argv) -> dict:
    """What recipes/lra.py runs: the result report."""
    return lra.run_lra(lra.parse_args(argv)).report


def tiny_args(out_dir, name="tiny", **extra):
    args = {
        "output_dir": out_dir, "name": name, "task": "listops",
        "data.seq_len": 40, "data.min_length": 5, "data.max_length": 40, "data.max_depth": 3,
        "data.train_examples": 64, "data.val_examples": 16, "data.test_examples": 24,
        "model.n_layers": 1, "model.d_model": 16, "model.n_heads": 2, "model.mixer": "gla",
        "ds.train_micro_batch_size_per_gpu": 8, "train.steps": 4, "train.warmup_steps": 1, "train.eval_every": 2,
        "train.eval_batches": 2, "train.progress": "false", "eval_batch_size": 7,
    }
    args.update(extra)
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def write_listops_tsv(path, examples):
    lines = ["Source\tTarget"] + [f"{source}\t{answer}" for source, answer in examples]
    path.write_text("\n".join(lines) + "\n")


def test_listops_generated_tiny_run(tmp_path, monkeypatch):
    seen = []
    real = lra.evaluate_accuracy
    monkeypatch.setattr(lra, "evaluate_accuracy",
                        lambda model, tensors, *a: seen.append((model, tensors)) or real(model, tensors, *a))
    report = run(tiny_args(tmp_path))
    assert report["steps"] == 4 and 0.0 <= report["test_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "tiny" / "result.json").read_text())
    assert saved["test_accuracy"] == report["test_accuracy"] and saved["lra_transformer_accuracy"] == pytest.approx(0.3637)
    assert list((tmp_path / "tiny").glob("events.out.tfevents.*"))
    # the reported test accuracy, recomputed one example at a time (labels = the evaluated tree values)
    model, test = next((m, t) for m, t in seen if len(t["labels"]) == 24)
    model.eval()
    with torch.no_grad():
        hits = sum(int(model(ids[None], attention_mask=mask[None]).logits[0].argmax()) == int(label)
                   for ids, mask, label in zip(test["input_ids"], test["attention_mask"], test["labels"]))
    assert hits / 24 == pytest.approx(report["test_accuracy"], abs=1e-12)
    assert test["attention_mask"].sum(1).min() >= 1 and not test["attention_mask"][:, -1].all()  # padded


def test_listops_official_files(tmp_path):
    data_dir = tmp_path / "listops-1000"
    data_dir.mkdir()
    for i, name in enumerate(("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")):
        write_listops_tsv(data_dir / name, generate_listops(40 if i == 0 else 12, min_length=5, max_length=40,
                                                            max_depth=3, seed=10 + i))
    train, val, test = lra.load_task("listops", {**lra.DEFAULTS["data"], "source": "files",
                                                        "dir": str(data_dir), "seq_len": 40})
    assert train["input_ids"].shape == (40, 40) and val["labels"].shape == (12,)
    expected = [answer for _, answer in generate_listops(12, min_length=5, max_length=40, max_depth=3, seed=12)]
    assert test["labels"].tolist() == expected
    report = run(tiny_args(tmp_path, name="files", **{"data.source": "files", "data.dir": data_dir}))
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["train_examples"] == 40


def test_generator_labels_are_the_tree_values():
    data = {**lra.DEFAULTS["data"], "seq_len": 60, "min_length": 5, "max_length": 60, "max_depth": 3,
            "train_examples": 5, "val_examples": 3, "test_examples": 4}
    train, _, test = lra.load_task("listops", data)
    assert train["labels"].shape == (5,) and test["input_ids"].shape == (4, 60)
    assert 0 <= int(train["labels"].min()) and int(train["labels"].max()) <= 9


def test_retrieval_pairs_become_one_sequence(tmp_path):
    rows = ["1.0\ta\tb\thello\tworld", "0.0\tc\td\tfoo\tbarbaz"]
    for name in ("new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv"):
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    train, _, _ = lra.load_task("retrieval", {**lra.DEFAULTS["data"], "dir": str(tmp_path), "seq_len": 8})
    assert train["input_ids"].shape == (2, 16) and train["labels"].tolist() == [1, 0]
    assert train["input_ids"][0, :5].tolist() == [b + 1 for b in b"hello"]
    assert train["input_ids"][0, 8:13].tolist() == [b + 1 for b in b"world"]
    assert train["attention_mask"][1].tolist() == [True] * 3 + [False] * 5 + [True] * 6 + [False] * 2


def test_unknown_task(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'sudoku'; valid tasks: \['image', 'listops'"):
        run(tiny_args(tmp_path, task="sudoku"))


@pytest.mark.parametrize("task, first_file", [("listops", "basic_train.tsv"), ("text", "train.tsv"),
                                              ("retrieval", "new_aan_pairs.train.tsv"), ("image", "train.npz"),
                                              ("pathfinder", "train.npz")])
def test_missing_official_files(tmp_path, task, first_file):
    with pytest.raises(ValueError, match=rf"LRA {task} file not found: .*{first_file}; it comes from "):
        run(tiny_args(tmp_path, task=task, **{"data.source": "files", "data.dir": tmp_path / "none"}))


def test_files_task_without_dir(tmp_path):
    with pytest.raises(ValueError, match=r"task text reads its files from data.dir; expected \['train.tsv', 'test.tsv'\]"):
        run(tiny_args(tmp_path, task="text"))
    with pytest.raises(ValueError, match="data.source must be 'generate' or 'files'"):
        run(tiny_args(tmp_path, **{"data.source": "web"}))

