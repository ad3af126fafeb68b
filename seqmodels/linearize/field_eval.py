"""Field evaluation of a linearized model: the softmax teacher vs its students (recipes/linearize_eval.py).

Every model is scored on the same items, all on the teacher's tokenizer:
- perplexity (token-weighted, `seqmodels.train.evaluation.evaluate_lm`) on two token streams:
  code = the held-out documents of the linearize run's data settings (`held_out_documents`,
  pack_corpus's validation split) and English = the "pydoc_topics" corpus (data/corpus.py:
  CPython's `pydoc_data/topics.py`, its language-reference prose). Each stream is the documents'
  tokens each followed by EOS (the packing layout), cut to `ppl_tokens` + 1 and windowed by
  `seq_len` (`id_windows`); teacher and students see the same windows.
- passkey retrieval (`seqmodels_passkey_<L>`, seqmodels/lm_eval/passkey.py) and zero-shot MQAR
  written as numbers (`seqmodels_mqar`, mqar_text.py) through lm-eval: `--model hf` for the
  teacher, `--model seqmodels` for the students (seqmodels/lm_eval/model.py).
- decoding: state bytes and ms per token of `step` after a chunked prefill of L random ids
  (`seqmodels.decode_timing`); the teacher's state is its KV cache.
- greedy generations (temperature 0) of PROMPTS.
eval.json and eval.md (one table) are written under `out`.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from seqmodels.atomic import atomic_write_text

PROMPTS = {
    "english": "Once upon a time, in a small village by the sea, there lived",
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "question": "The capital of France is",
}
TEACHER = "teacher"


@dataclass
class EvalPlan:
    ppl_tokens: int = 20_000  # scored tokens per stream (code, English) and model
    seq_len: Optional[int] = None  # perplexity window; None: the run's data.seq_len
    passkey_contexts: list = field(default_factory=lambda: [512, 1024, 2048, 4096])
    passkey_documents: int = 4
    mqar_documents: int = 64  # the first N queries of seqmodels_mqar (4 per example)
    decode_contexts: list = field(default_factory=lambda: [1024, 4096, 16384])
    decode_steps: int = 32
    prefill_chunk: int = 1024
    new_tokens: int = 32
    batch_size: int = 1


def check_plan(plan: EvalPlan) -> None:
    """Bad settings -> ValueError naming the setting."""
    for name in ("ppl_tokens", "passkey_documents", "decode_steps", "prefill_chunk", "new_tokens", "batch_size"):
        if int(getattr(plan, name)) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(plan, name)}")
    if plan.mqar_documents < 0:
        raise ValueError(f"--mqar_documents must be >= 0 (0 skips MQAR), got {plan.mqar_documents}")
    if plan.seq_len is not None and plan.seq_len < 1:
        raise ValueError(f"--seq_len must be >= 1, got {plan.seq_len}")
    for name in ("passkey_contexts", "decode_contexts"):
        bad = [c for c in getattr(plan, name) if int(c) < 1]
        if bad:
            raise ValueError(f"--{name} must be positive token counts, got {bad}")


def parse_students(specs) -> dict:
    """["lizard=runs/a/hf", ...] -> {"lizard": Path}; each must be a seqmodels HF export."""
    students = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--student {spec!r}: expected NAME=DIR, e.g. --student lizard=runs/lizard/hf")
        if name == TEACHER or name in students:
            raise ValueError(f"--student name {name!r} is used twice or is reserved; give each student its own name")
        config = Path(path) / "config.json"
        if not config.is_file():
            raise ValueError(f"--student {spec!r}: {config} does not exist (pass the run's hf/ directory)")
        if json.loads(config.read_text()).get("model_type") != "seqmodels":
            raise ValueError(f"--student {spec!r}: {path} is not a seqmodels export (config model_type is not "
                             "'seqmodels'); pass the hf/ directory recipes/linearize.py wrote")
        students[name] = Path(path)
    if not students:
        raise ValueError("no student: pass --student NAME=DIR (the hf/ directory of a linearize run) at least once")
    return students


def run_data_settings(students: dict, data_config: Optional[str]) -> dict:
    """The linearize run's `data:` section: `data_config` (a run_config.yaml) or the first
    student's `<hf>/../run_config.yaml`, else the linearize defaults."""
    from seqmodels.linearize.pipeline import DEFAULTS

    paths = [Path(data_config)] if data_config else [p.parent / "run_config.yaml" for p in students.values()]
    for path in paths:
        if path.is_file():
            data = {**DEFAULTS["data"], **(yaml.safe_load(path.read_text()).get("data") or {})}
            data["source"] = str(path)
            return data
        if data_config:
            raise ValueError(f"--data_config {path} does not exist (pass a linearize run's run_config.yaml)")
    return {**DEFAULTS["data"], "source": "seqmodels.linearize.pipeline.DEFAULTS (no run_config.yaml found)"}


def token_stream(tokenizer, documents, max_tokens: int) -> list:
    """tokens(doc) + [EOS] for each document in order, cut to max_tokens + 1 ids (max_tokens targets)."""
    eos = tokenizer.eos_token_id
    ids: list = []
    for doc in documents:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(ids) > max_tokens:
            break
    return ids[:max_tokens + 1]


def stream_perplexity(model, ids: list, seq_len: int, batch_size: int = 1):
    """evaluate_lm over `id_windows(ids, seq_len)` (every id after the first scored once)."""
    from seqmodels.data.text import id_windows, window_batches
    from seqmodels.train.evaluation import evaluate_lm

    if len(ids) < 2:
        raise ValueError(f"the token stream has {len(ids)} id(s); perplexity needs at least 2")
    return evaluate_lm(model, window_batches(id_windows(ids, seq_len), batch_size))


def corpora(data: dict, tokenizer, ppl_tokens: int) -> dict:
    """{"code": ids, "english": ids} plus what they are ({"<name>_source"}): see module docstring."""
    from seqmodels.data.corpus import PYDOC_TOPICS, load_corpus
    from seqmodels.lm_eval.held_out import held_out_documents

    code_docs = held_out_documents(data["corpus"], data["max_bytes"], float(data["validation_fraction"]),
                                   int(data.get("split_seed", 0)))
    import pydoc_data.topics

    english_docs = list(load_corpus(PYDOC_TOPICS)["text"])
    topics_file = Path(pydoc_data.topics.__file__).read_text(encoding="utf-8")
    trained = set(load_corpus(data["corpus"], max_bytes=data["max_bytes"])["text"]) - set(code_docs)
    return {
        "code": token_stream(tokenizer, code_docs, ppl_tokens),
        "english": token_stream(tokenizer, english_docs, ppl_tokens),
        "code_source": f"held-out split of corpus {data['corpus']!r} (max_bytes {data['max_bytes']}, "
                       f"validation_fraction {data['validation_fraction']}, split_seed {data.get('split_seed', 0)}; "
                       f"settings from {data['source']}): {len(code_docs)} documents",
        "english_source": f"{PYDOC_TOPICS}: pydoc_data/topics.py of this Python, {len(english_docs)} topics in "
                          f"sorted order; pydoc_data/topics.py is a document of the students' training split: "
                          f"{topics_file in trained}",
    }


def lm_eval_results(kind: str, pretrained: Path, tasks: list, metadata: dict, limit, batch_size: int,
                    log_samples: bool = False) -> dict:
    """lm-eval's simple_evaluate on CPU (only seqmodels' task folder indexed, float32); `metadata`
    reaches the tasks' datasets (e.g. {"num_documents": 4} for the passkey tasks)."""
    from seqmodels.lm_eval import register

    register()
    import lm_eval
    import lm_eval.tasks

    model_args = f"pretrained={pretrained},dtype=float32"
    manager = lm_eval.tasks.TaskManager(include_defaults=False,
                                        metadata={"pretrained": str(pretrained), **metadata})
    return lm_eval.simple_evaluate(model=kind, model_args=model_args, tasks=tasks, limit=limit, batch_size=batch_size,
                                   device="cpu", task_manager=manager, log_samples=log_samples)


def lm_eval_accuracy(kind: str, pretrained: Path, tasks: list, metadata: dict, limit, batch_size: int) -> dict:
    """{task: acc} of lm_eval_results."""
    results = lm_eval_results(kind, pretrained, tasks, metadata, limit, batch_size)
    return {task: float(results["results"][task]["acc,none"]) for task in tasks}


@torch.no_grad()
def decode_cost(model, context: int, steps: int, chunk: int, seed: int = 0) -> dict:
    """Prefill `context` random ids (chunked), then time `steps` greedy `step` calls:
    {"state_bytes" (after the prefill, batch 1), "prefill_s", "ms_per_token" (median)}."""
    from seqmodels.decode_timing import prefill, step_times

    ids = torch.randint(0, model.cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    state = prefill(model, ids, chunk)
    prefill_s = time.perf_counter() - start
    state_bytes = state.nbytes()
    times = step_times(model, {context: state}, steps, 1, model.cfg.vocab_size, torch.device("cpu"), 1e9)
    return {"state_bytes": state_bytes, "prefill_s": prefill_s,
            "ms_per_token": 1e3 * statistics.median(times[context]), "timed_steps": len(times[context])}


@torch.no_grad()
def greedy_generations(model, tokenizer, prompts: dict, new_tokens: int) -> dict:
    """{prompt name: the new text} of greedy decoding (temperature 0, no EOS stop)."""
    out = {}
    for name, prompt in prompts.items():
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        generated = model.generate(ids, new_tokens, temperature=0.0)
        out[name] = tokenizer.decode(generated[0, ids.shape[1]:].tolist())
    return out


def planned_tokens(plan: EvalPlan, n_models: int) -> dict:
    """Token counts per model (forwarded tokens) and in all, printed before anything runs."""
    per_model = {
        "perplexity (code + English)": 2 * plan.ppl_tokens,
        "passkey": sum(int(c) * plan.passkey_documents for c in plan.passkey_contexts),
        "mqar (estimate: ~200 tokens per query)": 200 * plan.mqar_documents,
        "decode prefill + steps": sum(int(c) + plan.decode_steps + 2 for c in plan.decode_contexts),
        "generations": len(PROMPTS) * (plan.new_tokens + 16),
    }
    return {"per_model": per_model, "models": n_models, "total": n_models * sum(per_model.values())}


def field_eval(teacher_dir: str, students: dict, out: str, plan: EvalPlan, data_config: Optional[str] = None,
               dry_run: bool = False, log: Callable[[str], None] = print) -> dict:
    """Teacher and students on every item of the module docstring; writes out/eval.json, out/eval.md."""
    from seqmodels.linearize.teacher import load_teacher
    from seqmodels.train.export import load_for_inference
    from transformers import AutoTokenizer

    check_plan(plan)
    if not (Path(teacher_dir) / "config.json").is_file():
        raise ValueError(f"--teacher {teacher_dir}: no config.json there (pass a Llama-family HF directory)")
    cost = planned_tokens(plan, 1 + len(students))
    log(f"[linearize_eval] planned tokens per model: {cost['per_model']}; {cost['models']} models, "
        f"{cost['total']:,} tokens in all")
    if dry_run:
        return {"plan": asdict(plan), "planned_tokens": cost}
    data = run_data_settings(students, data_config)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    texts = corpora(data, tokenizer, plan.ppl_tokens)
    seq_len = int(plan.seq_len or data["seq_len"])
    result = {"teacher_dir": str(teacher_dir), "students": {k: str(v) for k, v in students.items()},
              "plan": asdict(plan), "planned_tokens": cost, "seq_len": seq_len,
              "code_source": texts["code_source"], "english_source": texts["english_source"],
              "ppl_tokens": {k: len(texts[k]) - 1 for k in ("code", "english")}, "prompts": PROMPTS,
              "mqar_source": "lm-eval seqmodels_mqar (token ids written as decimal numbers), zero-shot", "models": {}}
    passkey_tasks = [f"seqmodels_passkey_{int(c)}" for c in plan.passkey_contexts]
    for name, path in {TEACHER: Path(teacher_dir), **students}.items():
        log(f"[linearize_eval] {name}: {path}")
        model = load_teacher(path) if name == TEACHER else load_for_inference(path)[0]
        row, timings = {}, {}
        start = time.perf_counter()
        row["ppl"] = {k: stream_perplexity(model, texts[k], seq_len, plan.batch_size).ppl for k in ("code", "english")}
        timings["ppl_s"] = time.perf_counter() - start
        kind = "hf" if name == TEACHER else "seqmodels"
        start = time.perf_counter()
        acc = lm_eval_accuracy(kind, path, passkey_tasks, {"num_documents": plan.passkey_documents}, None,
                               plan.batch_size)
        row["passkey"] = {str(int(c)): acc[t] for c, t in zip(plan.passkey_contexts, passkey_tasks)}
        timings["passkey_s"] = time.perf_counter() - start
        start = time.perf_counter()
        row["mqar"] = (lm_eval_accuracy(kind, path, ["seqmodels_mqar"], {}, plan.mqar_documents, plan.batch_size)
                       ["seqmodels_mqar"] if plan.mqar_documents else None)
        timings["mqar_s"] = time.perf_counter() - start
        row["decode"] = {}
        for context in plan.decode_contexts:
            row["decode"][str(int(context))] = decode_cost(model, int(context), plan.decode_steps, plan.prefill_chunk)
            log(f"[linearize_eval] {name} decode at {int(context)}: {row['decode'][str(int(context))]}")
        start = time.perf_counter()
        row["generations"] = greedy_generations(model, tokenizer, PROMPTS, plan.new_tokens)
        timings["generations_s"] = time.perf_counter() - start
        row["timings_s"] = timings
        result["models"][name] = row
        log(f"[linearize_eval] {name}: {json.dumps({k: row[k] for k in ('ppl', 'passkey', 'mqar', 'timings_s')})}")
        del model
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "eval.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "eval.md", eval_markdown(result))
    return result


def eval_markdown(result: dict) -> str:
    names = list(result["models"])
    rows = result["models"]

    def line(label, cell):
        return f"| {label} | " + " | ".join(cell(rows[n]) for n in names) + " |"

    lines = [f"# Field evaluation: teacher vs students", "",
             f"teacher: `{result['teacher_dir']}`; students: "
             + ", ".join(f"{k} `{v}`" for k, v in result["students"].items()), "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             line(f"perplexity, code ({result['ppl_tokens']['code']:,} tokens)", lambda r: f"{r['ppl']['code']:.3f}"),
             line(f"perplexity, English ({result['ppl_tokens']['english']:,} tokens)",
                  lambda r: f"{r['ppl']['english']:.3f}")]
    docs = result["plan"]["passkey_documents"]
    for c in result["plan"]["passkey_contexts"]:
        lines.append(line(f"passkey accuracy, {int(c)} tokens ({docs} documents)",
                          lambda r, c=c: f"{r['passkey'][str(int(c))]:.3f}"))
    if result["plan"]["mqar_documents"]:
        lines.append(line(f"MQAR accuracy, zero-shot ({result['plan']['mqar_documents']} queries)",
                          lambda r: f"{r['mqar']:.3f}"))
    for c in result["plan"]["decode_contexts"]:
        key = str(int(c))
        lines.append(line(f"decode ms/token at {key}", lambda r, k=key: f"{r['decode'][k]['ms_per_token']:.2f}"))
        lines.append(line(f"decode state bytes at {key}", lambda r, k=key: f"{r['decode'][k]['state_bytes']:,}"))
    lines += ["", f"code: {result['code_source']}", f"English: {result['english_source']}",
              f"MQAR: {result['mqar_source']}; perplexity windows of {result['seq_len']} tokens", "",
              f"## Greedy generations ({result['plan']['new_tokens']} new tokens)", ""]
    for prompt_name, prompt in result["prompts"].items():
        lines += [f"### {prompt_name}: {prompt!r}", ""]
        lines += [f"- {n}: {rows[n]['generations'][prompt_name]!r}" for n in names] + [""]
    return "\n".join(lines)
