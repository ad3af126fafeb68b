"""The linearization report: teacher vs student held-out perplexity (token-weighted,
seqmodels.train.evaluation), MQAR accuracy, decode-state bytes, tokens per stage, per-layer
transfer MSE, KL and the branch ablation (measure.py), as report.json and report.md."""
from __future__ import annotations

import json
from pathlib import Path

from seqmodels.atomic import atomic_write_text
from seqmodels.linearize.measure import decode_state_bytes, linear_branch_disabled, mqar_accuracy
from seqmodels.train.evaluation import evaluate_lm


def build_report(cfg, teacher, student, ppl_stage1, eval_batches, n_eval, mse_before, mse_after, kl_before,
                 kl_after, tokens1, tokens2) -> dict:
    teacher_eval = evaluate_lm(teacher, eval_batches(), n_eval)
    student_ppl = evaluate_lm(student, eval_batches(), n_eval).ppl
    mq = cfg["report"]["mqar"]
    contexts = cfg["report"]["state_contexts"]
    report = {
        "name": cfg["name"], "teacher_dir": str(cfg["teacher"]), "student_mixer": cfg["student"]["mixer"],
        "student_options": student.cfg.mixer_options.get(cfg["student"]["mixer"], {}),
        "teacher": {"ppl": teacher_eval.ppl, "eval_tokens": teacher_eval.tokens,
                    "mqar_accuracy": mqar_accuracy(teacher, **mq)},
        "student": {"ppl_stage1": ppl_stage1, "ppl": student_ppl, "mqar_accuracy": mqar_accuracy(student, **mq)},
        "state_bytes": {"teacher": {str(c): decode_state_bytes(teacher, c) for c in contexts},
                        "student": {str(c): decode_state_bytes(student, c) for c in contexts}},
        "stage1": {"tokens": tokens1, "layer_mse_before": mse_before, "layer_mse_after": mse_after},
        "stage2": {"tokens": tokens2, "kl_before": kl_before, "kl_after": kl_after},
        "mqar": mq,
        "ablation": None,
    }
    if cfg["report"]["ablation"]:
        with linear_branch_disabled(student):
            ablated = evaluate_lm(student, eval_batches(), n_eval).ppl
        report["ablation"] = {"ppl_without_linear": ablated, "raises_ppl": ablated > student_ppl}
    return report


def report_markdown(report: dict) -> str:
    t, s = report["teacher"], report["student"]
    lines = [f"# Linearization report: {report['name']}", "",
             f"teacher: `{report['teacher_dir']}`; student mixer: `{report['student_mixer']}` "
             f"{report['student_options']}", "",
             "| | teacher | student after stage 1 | student after stage 2 |", "|---|---|---|---|",
             f"| held-out perplexity ({t['eval_tokens']} tokens) | {t['ppl']:.3f} | {s['ppl_stage1']:.3f} | "
             f"{s['ppl']:.3f} |",
             f"| MQAR accuracy | {t['mqar_accuracy']:.3f} | | {s['mqar_accuracy']:.3f} |", "",
             f"student / teacher perplexity: {s['ppl'] / t['ppl']:.3f}", "",
             "| decode state bytes (batch 1) | teacher | student |", "|---|---|---|"]
    for ctx in report["state_bytes"]["teacher"]:
        lines.append(f"| {ctx} tokens | {report['state_bytes']['teacher'][ctx]:,} | "
                     f"{report['state_bytes']['student'][ctx]:,} |")
    st1, st2 = report["stage1"], report["stage2"]
    lines += ["", f"stage 1: {st1['tokens']:,} tokens; eval MSE per layer before "
              f"{[round(m, 6) for m in st1['layer_mse_before']]} after {[round(m, 6) for m in st1['layer_mse_after']]}",
              f"stage 2: {st2['tokens']:,} tokens; eval KL(teacher ‖ student) {st2['kl_before']:.4f} -> "
              f"{st2['kl_after']:.4f}"]
    if report.get("ablation"):
        a = report["ablation"]
        lines += ["", f"branch ablation (linear branch zeroed): student perplexity {a['ppl_without_linear']:.3f} "
                  f"vs {s['ppl']:.3f} -> {'raises perplexity (ok)' if a['raises_ppl'] else 'DOES NOT raise perplexity'}"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, report: dict) -> None:
    """report.json and report.md, each written atomically."""
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run_dir / "report.md", report_markdown(report))
