"""seqmodels.linearize.field_eval (behind recipes/linearize_eval.py) on a tiny random Llama teacher and a
Lizard student assembled from it (no training): perplexity equals a direct float64 computation, the
passkey accuracy lm-eval reports is the mean of the scoring rule over the model's own greedy answers,
the teacher's decode state is its KV cache (closed form) and the student's does not grow, eval.json /
eval.md hold those numbers, and bad command lines fail with one error line."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lm_eval", reason="lm-eval is the optional `eval` extra: pip install -e '.[eval]'")

import seqmodels  # noqa: E402,F401  (registers the Auto classes)
from seqmodels.data.corpus import PYDOC_TOPICS, load_corpus  # noqa: E402
from seqmodels.data.tokenizer import train_bpe  # noqa: E402
from seqmodels.linearize import assemble_student, build_student_mixers, load_teacher  # noqa: E402
from seqmodels.linearize import field_eval as fe  # noqa: E402
from seqmodels.lm_eval import passkey  # noqa: E402
from seqmodels.train.export import export_hf, load_for_inference  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VOCAB, CONTEXT, WINDOW = 300, 512, 4
TINY = dict(ppl_tokens=300, seq_len=32, passkey_contexts=[256], passkey_documents=2, mqar_documents=8,
            decode_contexts=[40, 120], decode_steps=20, prefill_chunk=32, new_tokens=5)


@pytest.fixture(scope="module")
def models(tmp_path_factory, corpus_dir):
    """(teacher dir, {"lizard": student hf dir}): a 2-layer GQA Llama (context 512, BPE of the test
    corpus) and a Lizard student (window 4) assembled from it, exported with a run_config.yaml whose
    data section names the test corpus."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("field-eval")
    teacher_dir = root / "teacher"
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=CONTEXT, tie_word_embeddings=False, initializer_range=0.2)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(teacher_dir))
    tokenizer = train_bpe([p.read_text() for p in sorted(corpus_dir.glob("*.txt"))], VOCAB, teacher_dir)
    teacher = load_teacher(teacher_dir)
    student = assemble_student(teacher, build_student_mixers(teacher, "lizard", {"window": WINDOW, "n_meta": 2}))
    hf = export_hf(student.state_dict(), student.cfg, tokenizer, root / "lizard" / "hf")
    data = {"corpus": str(corpus_dir), "max_bytes": None, "validation_fraction": 0.2, "split_seed": 1, "seq_len": 32}
    (root / "lizard" / "run_config.yaml").write_text(yaml.safe_dump({"name": "lizard", "data": data}))
    return teacher_dir, {"lizard": hf}


@torch.no_grad()
def direct_ppl(model, ids, seq_len) -> float:
    """exp(mean -log p(next id)) over windows of seq_len inputs, written out in float64."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, seq_len):
        window = torch.tensor(ids[start:start + seq_len + 1])
        logp = model(window[None, :-1]).logits[0].double().log_softmax(-1)
        total -= float(logp.gather(-1, window[1:, None]).sum())
        count += len(window) - 1
    assert count == len(ids) - 1
    return math.exp(total / count)


def test_token_stream_is_documents_then_eos_cut_to_the_budget(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models[0]))
    docs = ["the gate keeps the key.", "a dog sees every key 12.", "unused"]
    encoded = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
    budget = len(encoded[0]) + 3
    assert fe.token_stream(tok, docs, budget) == (encoded[0] + encoded[1])[:budget + 1]
    assert fe.token_stream(tok, docs, 10_000) == encoded[0] + encoded[1] + encoded[2]


def test_perplexity_equals_direct_float64_computation(models):
    from transformers import AutoTokenizer

    teacher_dir, students = models
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    english = fe.token_stream(tok, load_corpus(PYDOC_TOPICS)["text"], 150)
    assert len(english) == 151
    for model in (load_teacher(teacher_dir, torch.float64), load_for_inference(students["lizard"], dtype=torch.float64)[0]):
        for batch_size in (1, 3):
            got = fe.stream_perplexity(model, english, 32, batch_size)
            assert got.tokens == 150
            assert got.ppl == pytest.approx(direct_ppl(model, english, 32), rel=1e-12)


def test_passkey_accuracy_is_the_scoring_rule_over_greedy_answers(models):
    """lm-eval's per-document answer equals SeqLM greedy decoding of the same prompt (cut at the
    first newline), its acc is passkey.process_results of that answer, the task's acc their mean;
    the scoring rule itself on hand-built answers."""
    teacher_dir, students = models
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    results = fe.lm_eval_results("seqmodels", students["lizard"], ["seqmodels_passkey_256"], {"num_documents": 3},
                                 None, 1, log_samples=True)
    samples = sorted(results["samples"]["seqmodels_passkey_256"], key=lambda s: s["doc_id"])
    rows = passkey.passkey_documents(count, 256, 3)
    assert [s["doc"] for s in samples] == rows and [r["depth"] for r in rows] == [0.0, 0.5, 1.0]
    model, _ = load_for_inference(students["lizard"], dtype=torch.float32)
    accs = []
    for sample, row in zip(samples, rows):
        ids = torch.tensor([tok(row["text"], add_special_tokens=False)["input_ids"]])
        assert ids.shape[1] == 256 - passkey.ANSWER_TOKENS
        new = model.generate(ids, passkey.ANSWER_TOKENS, temperature=0.0)[0, ids.shape[1]:].tolist()
        new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new  # generation stops at EOS
        answer = tok.decode(new)
        assert sample["resps"][0][0] == answer.split("\n")[0]
        accs.append(passkey.process_results(row, [answer])["acc"])
        assert sample["acc"] == accs[-1]
    assert results["results"]["seqmodels_passkey_256"]["acc,none"] == pytest.approx(sum(accs) / 3)
    one = passkey.passkey_documents(count, 256, 1)
    assert one[0]["depth"] == 0.5 and count(one[0]["text"]) == 248
    key = one[0]["passkey"]
    assert passkey.process_results(one[0], [f" {key}. Remember"]) == {"acc": 1.0}
    assert passkey.process_results(one[0], [f" {key[:4]} {key[4]}"]) == {"acc": 0.0}


def test_decode_state_is_the_kv_cache_for_the_teacher_and_constant_for_the_student(models):
    teacher_dir, students = models
    teacher = load_teacher(teacher_dir, torch.float64)
    student = load_for_inference(students["lizard"], dtype=torch.float64)[0]
    layers, kv_heads, head_dim = 2, 2, 32 // 4
    for context in (40, 120):
        cost = fe.decode_cost(teacher, context, 20, 32)
        assert cost["state_bytes"] == layers * 2 * context * kv_heads * head_dim * 8  # keys + values, float64
        assert cost["timed_steps"] == 20 and cost["ms_per_token"] > 0
    assert fe.decode_cost(student, 40, 20, 32)["state_bytes"] == fe.decode_cost(student, 120, 20, 32)["state_bytes"]


@pytest.mark.slow
def test_field_eval_writes_the_table_of_every_model(models, tmp_path):
    teacher_dir, students = models
    logged = []
    result = fe.field_eval(str(teacher_dir), students, str(tmp_path), fe.EvalPlan(**TINY), log=logged.append)
    assert logged[0].startswith("[linearize_eval] planned tokens per model")
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["models"].keys() == {"teacher", "lizard"} and saved == json.loads(json.dumps(result))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    data = yaml.safe_load((students["lizard"].parent / "run_config.yaml").read_text())["data"]
    code = fe.corpora({**data, "source": "test"}, tok, 300)["code"]
    teacher = load_teacher(teacher_dir, torch.float64)
    assert saved["models"]["teacher"]["ppl"]["code"] == pytest.approx(direct_ppl(teacher, code, 32), rel=1e-5)
    assert saved["ppl_tokens"] == {"code": 300, "english": 300}
    for row in saved["models"].values():
        assert set(row["passkey"]) == {"256"} and 0 <= row["mqar"] <= 1
        assert set(row["generations"]) == set(fe.PROMPTS)
    kv = {c: 2 * 2 * c * 2 * 8 * 4 for c in (40, 120)}  # layers x (k, v) x tokens x kv heads x head_dim x float32
    assert {int(c): d["state_bytes"] for c, d in saved["models"]["teacher"]["decode"].items()} == kv
    table = (tmp_path / "eval.md").read_text()
    assert "| | teacher | lizard |" in table and f"| decode state bytes at 120 | {kv[120]:,} |" in table
    assert "pydoc_topics" in saved["english_source"] and str(data["corpus"]) in saved["code_source"]


def test_bad_inputs_are_one_line_errors(models, tmp_path):
    teacher_dir, students = models
    with pytest.raises(ValueError, match="expected NAME=DIR"):
        fe.parse_students(["runs/x/hf"])
    with pytest.raises(ValueError, match="config.json does not exist"):
        fe.parse_students([f"lizard={tmp_path}"])
    with pytest.raises(ValueError, match="is not a seqmodels export"):
        fe.parse_students([f"llama={teacher_dir}"])
    with pytest.raises(ValueError, match="used twice or is reserved"):
        fe.parse_students([f"teacher={students['lizard']}"])
    with pytest.raises(ValueError, match="--passkey_documents must be >= 1"):
        fe.check_plan(fe.EvalPlan(passkey_documents=0))
    with pytest.raises(ValueError, match="--decode_contexts must be positive"):
        fe.check_plan(fe.EvalPlan(decode_contexts=[1024, 0]))
    with pytest.raises(ValueError, match="--data_config .* does not exist"):
        fe.run_data_settings(students, str(tmp_path / "none.yaml"))


@pytest.mark.slow
def test_recipe_without_a_student_is_one_error_line(models, tmp_path):
    teacher_dir, _ = models
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "linearize_eval.py"), "--teacher", str(teacher_dir),
                           "--out", str(tmp_path), "--dry_run"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("[linearize_eval] error: no student: pass --student NAME=DIR")
