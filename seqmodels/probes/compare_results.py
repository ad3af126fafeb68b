"""The family comparison's results: one result.json per finished model, and from all of them
results.csv, results.md, loss_curves.png and ppl_split.png, each written atomically.

Gap to the baseline (attention): with S_g the summed loss of a model on group g of the held-out
tokens and B_g the baseline's on the same tokens, the gap is (S_all - B_all) / n_all nats per
token and the share of it on AR hits is (S_ar - B_ar) / (S_all - B_all), i.e. gap_AR * n_AR /
total gap (Zoology, arXiv 2312.04927 §3); likewise for the rare AR hits. A share is left empty
when the model is not behind the baseline (total gap <= 0), where it has no meaning.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

from seqmodels.atomic import atomic_write_bytes, atomic_write_text
from seqmodels.train.evaluation import perplexity
from seqmodels.train.monitor import read_metrics

RESULT_FILE = "result.json"
CSV_COLUMNS = ["model", "preset", "parameters", "non_embedding_parameters", "d_model", "tokens_trained", "steps",
               "train_loss", "loss", "ppl", "ppl_ar", "ppl_ar_rare", "ppl_other", "ar_fraction", "ar_rare_fraction",
               "gap", "ar_gap_share", "ar_rare_gap_share", "mqar_accuracy", "mqar_steps", "tokens_per_s",
               "peak_mem_gb", "state_bytes", "ms_per_token", "train_seconds", "seconds", "error"]


def read_result(model_dir: Path) -> Optional[dict]:
    path = model_dir / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_result(model_dir: Path, result: dict) -> None:
    atomic_write_text(model_dir / RESULT_FILE, json.dumps(result, indent=1))


def _mean(split: dict, group: str) -> Optional[float]:
    g = split[group]
    return g["loss_sum"] / g["tokens"] if g["tokens"] else None


def gap_share(split: dict, base: dict, group: str) -> Optional[float]:
    """(S_group - B_group) / (S_all - B_all); None when the total gap is <= 0."""
    total = split["all"]["loss_sum"] - base["all"]["loss_sum"]
    if total <= 0:
        return None
    return (split[group]["loss_sum"] - base[group]["loss_sum"]) / total


def result_rows(results: list[dict], baseline: str) -> list[dict]:
    """One row per result (CSV_COLUMNS); a failed model's row holds its error only."""
    base = next((r for r in results if r["label"] == baseline and "error" not in r), None)
    rows = []
    for r in results:
        row = {"model": r["label"], "preset": r.get("preset")}
        if "error" in r:
            rows.append({**row, "error": r["error"]})
            continue
        split = r["split"]
        loss = _mean(split, "all")
        row.update({k: r[k] for k in ("parameters", "non_embedding_parameters", "tokens_trained", "steps",
                                      "train_loss", "tokens_per_s", "peak_mem_gb", "train_seconds", "seconds")})
        row.update(d_model=r["model"]["d_model"], loss=loss, ppl=perplexity(loss),
                   ar_fraction=split["ar"]["tokens"] / split["all"]["tokens"],
                   ar_rare_fraction=split["ar_rare"]["tokens"] / split["all"]["tokens"])
        for group in ("ar", "ar_rare", "other"):
            mean = _mean(split, group)
            row[f"ppl_{group}"] = None if mean is None else perplexity(mean)
        if base is not None:
            if any(split[g]["tokens"] != base["split"][g]["tokens"] for g in split):
                raise ValueError(f"{r['label']} and {baseline} were scored on different held-out tokens; "
                                 "rerun both with the same data and eval settings")
            row["gap"] = loss - _mean(base["split"], "all")
            row["ar_gap_share"] = gap_share(split, base["split"], "ar")
            row["ar_rare_gap_share"] = gap_share(split, base["split"], "ar_rare")
        mqar, decode = r.get("mqar") or {}, r.get("decode") or {}
        row.update(mqar_accuracy=mqar.get("accuracy"), mqar_steps=mqar.get("steps"),
                   state_bytes=decode.get("state_bytes"), ms_per_token=decode.get("ms_per_token"))
        rows.append(row)
    return rows


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def results_markdown(rows: list[dict], missing: list[str], title: str, header: list[str]) -> str:
    lines = [f"# {title}", ""] + header + [
        "",
        "| model | params (non-emb.) | ppl | ppl AR hits | ppl rare AR hits | ppl other | AR hits (rare) | gap (nats/token) "
        "| gap on AR hits | gap on rare AR hits | MQAR acc. | train tok/s | peak mem (GB) | state at ctx (KB) "
        "| ms/token at ctx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row and row.get("ppl") is None:
            lines.append(f"| {row['model']} | failed: {row['error']} |" + " |" * 13)
            continue
        state_kb = None if row.get("state_bytes") is None else row["state_bytes"] / 1024
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e6:.3f}M ({row['non_embedding_parameters'] / 1e6:.3f}M) "
            f"| {row['ppl']:.2f} | {_fmt(row['ppl_ar'], '.2f')} | {_fmt(row['ppl_ar_rare'], '.2f')} "
            f"| {_fmt(row['ppl_other'], '.2f')} | {row['ar_fraction']:.1%} ({row['ar_rare_fraction']:.1%}) "
            f"| {_fmt(row.get('gap'), '+.4f')} "
            f"| {_fmt(row.get('ar_gap_share'), '.0%')} | {_fmt(row.get('ar_rare_gap_share'), '.0%')} "
            f"| {_fmt(row.get('mqar_accuracy'), '.3f')} | {row['tokens_per_s']:,.0f} | {row['peak_mem_gb']:.2f} "
            f"| {_fmt(state_kb, ',.1f')} | {_fmt(row.get('ms_per_token'), '.2f')} |")
    if missing:
        lines += ["", f"Not finished ({len(missing)}): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, labels: list[str], baseline: str, title: str, header: list[str]) -> list[dict]:
    """results.csv, results.md, loss_curves.png, ppl_split.png from the result files of `labels`."""
    results = [r for r in (read_result(out_dir / label) for label in labels) if r is not None]
    missing = [label for label in labels if read_result(out_dir / label) is None]
    rows = result_rows(results, baseline)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    atomic_write_text(out_dir / "results.md", results_markdown(rows, missing, title, header))
    trained = [r["label"] for r in results if "error" not in r]
    plot_loss_curves({label: read_metrics(out_dir / label) for label in trained}, out_dir / "loss_curves.png", title)
    plot_ppl_split([row for row in rows if row.get("ppl") is not None], out_dir / "ppl_split.png", title)
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())


def loss_curve(records: list[dict]) -> tuple[list[int], list[float]]:
    """(steps, train loss) of a run's metrics records, the last record of a step winning (a
    resumed run appends), then a running mean over ~2% of the steps."""
    by_step = {r["step"]: r["loss"] for r in records if "loss" in r}
    steps = sorted(by_step)
    width = max(1, len(steps) // 50)
    losses = [by_step[s] for s in steps]
    smooth = [sum(losses[max(0, i - width + 1):i + 1]) / (i + 1 - max(0, i - width + 1)) for i in range(len(losses))]
    return steps, smooth


def plot_loss_curves(metrics: dict[str, list[dict]], path: Path, title: str) -> None:
    """Training loss vs step of every model on one chart, held-out evals as dots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, records in metrics.items():
        steps, losses = loss_curve(records)
        line, = ax.plot(steps, losses, label=label, linewidth=1)
        evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
        if evals:
            ax.plot(sorted(evals), [evals[s] for s in sorted(evals)], "o", color=line.get_color(), markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (nats/token; dots: held-out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_ppl_split(rows: list[dict], path: Path, title: str) -> None:
    """Held-out perplexity per model: overall, on AR hits, on rare AR hits and on the other tokens."""
    plt = _pyplot()
    groups = [("ppl", "all tokens"), ("ppl_ar", "AR hits"), ("ppl_ar_rare", "rare AR hits"), ("ppl_other", "other")]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4.5))
    width = 0.8 / len(groups)
    for k, (key, name) in enumerate(groups):
        xs = [i + (k - (len(groups) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [row.get(key) or 0 for row in rows], width, label=name)
    ax.set_xticks(range(len(rows)), [row["model"] for row in rows], rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
