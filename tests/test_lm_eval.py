"""lm-eval integration (seqmodels.lm_eval): `python -m seqmodels.lm_eval` on the shipped tasks with
a tiny exported model. Log-likelihoods equal recipes/evaluate.py's scoring of the same tokens,
batch sizes 1 and 8 give the same samples (generation included), and the task data are what
their docstrings say (held-out split = pack_corpus's, exact passkey lengths, MQAR answers)."""
import glob
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("lm_eval", reason="lm-eval is the optional `eval` extra: pip install -e '.[eval]'")

from seqmodels.config import ModelConfig  # noqa: E402
from seqmodels.data.corpus import load_corpus  # noqa: E402
from seqmodels.data.loader import PackedDataset  # noqa: E402
from seqmodels.data.mqar import mqar  # noqa: E402
from seqmodels.data.pack import pack_corpus  # noqa: E402
from seqmodels.data.tokenizer import train_bpe  # noqa: E402
from seqmodels.lm_eval import TASKS_DIR, held_out, mqar_text, passkey, register  # noqa: E402
from seqmodels.data.text import window_batches  # noqa: E402
from seqmodels.model import SeqLM  # noqa: E402
from seqmodels.train.evaluation import evaluate_lm  # noqa: E402
from seqmodels.train.export import export_hf, load_for_inference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["seqmodels_ppl", "seqmodels_passkey_256", "seqmodels_mqar"]
CONTEXT = 64  # the tiny model's max_seq_len
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """40 short text documents (seeded templated sentences)."""
    out = tmp_path_factory.mktemp("lm-eval-corpus")
    rng = random.Random(1)
    words = ["state", "gate", "key", "value", "chunk", "token", "decay", "memory"]
    for d in range(40):
        lines = [f"the {rng.choice(words)} keeps the {rng.choice(words)} {rng.randint(0, 99)}." for _ in range(12)]
        (out / f"doc{d:02d}.txt").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def model_dir(corpus_dir, tmp_path_factory):
    """A random-weight gla-tiny (context 64) exported with a 300-token BPE of the corpus; init_std
    0.2 makes greedy continuations differ from prompt to prompt (at 0.02 they are all alike)."""
    tokenizer = train_bpe(load_corpus(corpus_dir), 300)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("gla-tiny", vocab_size=len(tokenizer), max_seq_len=CONTEXT, init_std=0.2)
    return export_hf(SeqLM(config).state_dict(), config, tokenizer, tmp_path_factory.mktemp("lm-eval-model") / "hf")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def cli_args(model_dir, corpus_dir, out_dir, batch_size):
    """lm-eval arguments: every shipped kind of task, float64, the ppl task on the test corpus."""
    return ["--model", "seqmodels", "--model_args", f"pretrained={model_dir},dtype=float64,max_length=2048",
            "--tasks", ",".join(TASKS), "--limit", "8", "--device", "cpu", "--batch_size", str(batch_size),
            "--metadata", json.dumps({"corpus": str(corpus_dir), "validation_fraction": 0.2}),
            "--output_path", str(out_dir), "--log_samples"]


def read_samples(out_dir):
    """{task: [sample dicts in doc_id order]} from lm-eval's --log_samples output."""
    samples = {}
    for task in TASKS:
        (path,) = glob.glob(str(Path(out_dir) / "**" / f"samples_{task}_*.jsonl"), recursive=True)
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return samples


@pytest.fixture(scope="module")
def cli_samples(model_dir, corpus_dir, tmp_path_factory):
    """Samples of one run per batch size: 8 through `python -m seqmodels.lm_eval` in a fresh
    process (run from an empty folder, so the installed package is what runs), 1 through main()
    with lm-eval's own ~15,000 tasks left out of the index (building it takes 10-20 s)."""
    import lm_eval.tasks

    from seqmodels.lm_eval.__main__ import main

    runs = {}
    out8 = tmp_path_factory.mktemp("lm-eval-bs8")
    # a fresh single process: without the torch.distributed variables earlier tests set in this one
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    proc = subprocess.run([sys.executable, "-m", "seqmodels.lm_eval", *cli_args(model_dir, corpus_dir, out8, 8)],
                          cwd=out8, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seqmodels_passkey_256" in proc.stdout  # lm-eval's own results table
    runs[8] = read_samples(out8)
    out1 = tmp_path_factory.mktemp("lm-eval-bs1")
    register()

    class OnlySeqmodelsTasks(lm_eval.tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, include_defaults=False, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_eval.tasks, "TaskManager", OnlySeqmodelsTasks)
        main(cli_args(model_dir, corpus_dir, out1, 1))
    runs[1] = read_samples(out1)
    return runs


def test_batch_sizes_1_and_8_agree_on_every_task(cli_samples):
    one, eight = cli_samples[1], cli_samples[8]
    for task in TASKS:
        assert [s["doc"] for s in one[task]] == [s["doc"] for s in eight[task]]
        assert len(one[task]) == 8
    for a, b in zip(one["seqmodels_ppl"], eight["seqmodels_ppl"]):
        assert float(a["resps"][0][0]) == pytest.approx(float(b["resps"][0][0]), rel=1e-12, abs=0)
    for a, b in zip(one["seqmodels_mqar"], eight["seqmodels_mqar"]):
        (ll_a, greedy_a), (ll_b, greedy_b) = a["resps"][0][0], b["resps"][0][0]
        assert float(ll_a) == pytest.approx(float(ll_b), rel=1e-12, abs=0) and greedy_a == greedy_b
    # generation: the 8 passkey prompts are all 248 tokens, so batch 8 needs no padding
    assert [s["resps"] for s in one["seqmodels_passkey_256"]] == [s["resps"] for s in eight["seqmodels_passkey_256"]]
    assert len({s["resps"][0][0] for s in one["seqmodels_passkey_256"]}) > 1  # the prompts matter


def test_rolling_loglikelihood_equals_evaluate_recipe(cli_samples, model_dir, tokenizer):
    """Each held-out document scored by lm-eval (one window: max_length 2048) equals
    recipes/evaluate.py's scoring (seqmodels.train.evaluation.evaluate_lm) of the window [EOS] + tokens(document)."""
    model, _ = load_for_inference(model_dir, dtype=torch.float64)
    samples = cli_samples[1]["seqmodels_ppl"]
    for sample in samples:
        ids = tokenizer(sample["doc"]["text"], add_special_tokens=False)["input_ids"]
        assert len(ids) < 2048
        window = torch.tensor([tokenizer.eos_token_id, *ids])
        scored = evaluate_lm(model, window_batches([window], 1))
        assert scored.tokens == len(ids)
        nll = scored.loss * scored.tokens
        assert -float(sample["resps"][0][0]) == pytest.approx(nll, rel=0, abs=1e-9 * len(ids))
        assert sample["word_perplexity"][1] == len(re.split(r"\s+", sample["doc"]["text"]))


def test_held_out_documents_are_the_packed_validation_split(corpus_dir, tokenizer, tmp_path):
    index = pack_corpus(load_corpus(corpus_dir), tokenizer, tmp_path, seq_len=16, validation_fraction=0.2,
                        split_seed=3, progress=False)
    documents = held_out.held_out_documents(str(corpus_dir), None, 0.2, 3)
    stream = [t for doc in documents for t in tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    split = index["splits"]["validation"]
    assert split["documents"] == len(documents) == 8 and split["num_tokens"] == len(stream)
    windows = PackedDataset(tmp_path, "validation")
    packed = np.concatenate([windows[0]] + [windows[i][1:] for i in range(1, len(windows))])
    assert packed.tolist() == stream[:split["num_tokens_used"]]


def test_ppl_defaults_are_the_demo_run_data_settings():
    demo = yaml.safe_load((REPO / "recipes" / "configs" / "demo.yaml").read_text())["data"]
    assert held_out.DEMO_DATA == {"corpus": demo["corpus"], "max_bytes": demo["max_bytes"],
                                  "validation_fraction": demo["validation_fraction"],
                                  "split_seed": demo.get("split_seed", 0)}
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        held_out.held_out_documents("stdlib", 1000, 0.0, 0)


def test_passkey_prompts_have_the_exact_length_and_one_needle(tokenizer):
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for length in (256, 512):
        rows = passkey.passkey_documents(count, length, num_documents=5)
        assert rows == passkey.passkey_documents(count, length, num_documents=5)  # deterministic
        for row in rows:
            assert count(row["text"]) == length - passkey.ANSWER_TOKENS
            assert re.fullmatch(r"\d{5}", row["passkey"]) and row["text"].endswith(passkey.QUESTION)
            assert row["text"].count(row["passkey"]) == 2  # "The pass key is K. Remember it. K is the pass key."
        first, last = (passkey.NEEDLE.format(key=row["passkey"]) for row in (rows[0], rows[-1]))
        assert rows[0]["text"].startswith(passkey.INSTRUCTION + first)  # depth 0: before all filler
        tail = rows[-1]["text"].split(last)[1]  # depth 1: after all filler (then top-up units, question)
        assert tail.endswith(passkey.QUESTION) and tail[:-len(passkey.QUESTION)].strip(" .") == ""
    with pytest.raises(ValueError, match="use a longer context length"):
        passkey.passkey_documents(count, 40)
    doc = {"passkey": "12345"}
    assert passkey.process_results(doc, [" 12345. Remember"]) == {"acc": 1.0}
    assert passkey.process_results(doc, [" 1234 5"]) == {"acc": 0.0}
    assert passkey.process_results(doc, [" the grass"]) == {"acc": 0.0}


def test_mqar_documents_ask_each_query_with_its_value():
    inputs, labels = mqar(128, 64, 4, 3, seed=5)
    rows = mqar_text.mqar_documents(128, 64, 4, 3, seed=5)
    assert len(rows) == 3 * 4
    for row in rows:
        ids = [int(t) for t in row["context"].split(" ")]
        assert ids == inputs[row["example"], :row["position"] + 1].tolist()
        pairs = dict(zip(ids[0:8:2], ids[1:8:2]))  # the 4 key-value pairs open the example
        assert int(row["value"]) == pairs[ids[-1]] == labels[row["example"], row["position"]]


def test_seqmodels_model_defaults_come_from_the_config(model_dir, tokenizer, tmp_path):
    from lm_eval.api.registry import get_model

    register()
    lm = get_model("seqmodels")(pretrained=str(model_dir), device="cpu")
    assert lm.prefix_token_id == tokenizer.eos_token_id != tokenizer.bos_token_id
    assert lm.max_length == CONTEXT and lm.add_bos_token is False
    assert lm.tok_encode("the gate") == tokenizer("the gate", add_special_tokens=False)["input_ids"]
    given = get_model("seqmodels")(pretrained=str(model_dir), device="cpu", max_length=100, prefix_token_id=0)
    assert (given.max_length, given.prefix_token_id) == (100, 0)
    assert type(get_model("hf")(pretrained=str(model_dir), device="cpu").model).__name__ == "SeqModelsForCausalLM"

    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    with pytest.raises(ValueError, match="expects a seqmodels export .* got 'llama'; use --model hf"):
        get_model("seqmodels")(pretrained=str(llama), device="cpu")


def test_task_folder_joins_any_include_path(tmp_path):
    import lm_eval.tasks

    register()
    register()  # idempotent: one subclass, not a chain
    assert lm_eval.tasks.TaskManager.__mro__[1].__module__.startswith("lm_eval")
    (tmp_path / "mine.yaml").write_text((TASKS_DIR / "seqmodels_mqar.yaml").read_text().replace(
        "task: seqmodels_mqar", "task: my_mqar"))
    manager = lm_eval.tasks.TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {"my_mqar", "seqmodels_mqar", "seqmodels_ppl", "seqmodels_passkey_2048"} <= set(manager.all_tasks)
    assert {"seqmodels", "seqmodels_passkey"} <= set(manager.all_tags)
