"""The MQAR sweep's results: one result.json per finished (cell, lr) run, and from all of them
results.csv (every finished run; best_lr marks the best lr of its cell), results.md (a table per
task) and results.png (accuracy vs d_model), each written atomically."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

from seqmodels.atomic import atomic_write_bytes, atomic_write_text

RESULT_FILE = "result.json"
CSV_COLUMNS = ["mixer", "seq_len", "num_kv_pairs", "d_model", "lr", "accuracy", "best_seen_accuracy", "steps",
               "early_stopped", "diverged", "seconds", "parameters", "best_lr"]


def read_result(run_dir: Path) -> Optional[dict]:
    path = run_dir / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_result(run_dir: Path, result: dict) -> None:
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=1))


def cell_key(row: dict) -> tuple:
    """(mixer, seq_len, num_kv_pairs, d_model): the grid cell of a run or a result row."""
    return row["mixer"], row["seq_len"], row["num_kv_pairs"], row["d_model"]


def best_per_cell(rows: list[dict]) -> dict:
    """{(mixer, seq_len, kv, d_model): the row with the highest accuracy (ties: lower lr)}."""
    best = {}
    for row in sorted(rows, key=lambda r: r["lr"]):
        key = cell_key(row)
        if key not in best or row["accuracy"] > best[key]["accuracy"]:
            best[key] = row
    return best


def write_outputs(out_dir: Path, runs: list[dict], cells_dir: Path, title: str,
                  solved_target: Optional[float] = None) -> list[dict]:
    """results.csv (every finished run, best_lr marks the best of its cell), results.md, results.png.

    solved_target: with skip_solved_lrs, the accuracy that solves a cell; a run without a result
    whose cell another lr solved is listed as skipped, not as unfinished."""
    results = {run["id"]: read_result(cells_dir / run["id"]) for run in runs}
    rows = [r for r in results.values() if r is not None]
    best = best_per_cell(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "best_lr": int(best[cell_key(row)] is row)})
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    missing, skipped = [], []
    for run in runs:
        if results[run["id"]] is None:
            cell_best = best.get(cell_key(run))
            solved = solved_target is not None and cell_best is not None and cell_best["accuracy"] >= solved_target
            (skipped if solved else missing).append(run["id"])
    atomic_write_text(out_dir / "results.md", results_markdown(runs, best, missing, title, skipped))
    plot_results(runs, best, out_dir / "results.png", title)
    return rows


def _axes(runs: list[dict]):
    tasks = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in runs})
    mixers = list(dict.fromkeys(r["mixer"] for r in runs))
    d_models = sorted({r["d_model"] for r in runs})
    return tasks, mixers, d_models


def results_markdown(runs: list[dict], best: dict, missing: list[str], title: str,
                     skipped: Sequence[str] = ()) -> str:
    tasks, mixers, d_models = _axes(runs)
    lines = [f"# {title}", "", "Test accuracy (fraction of answer tokens predicted exactly) of the best lr per cell; "
             "in brackets: that lr and the optimizer steps it took (early stop at the target accuracy).", ""]
    for seq_len, pairs in tasks:
        lines += [f"## seq_len {seq_len}, {pairs} key-value pairs", "",
                  "| mixer | " + " | ".join(f"d_model {d}" for d in d_models) + " |",
                  "|---|" + "---|" * len(d_models)]
        for mixer in mixers:
            cells = []
            for d in d_models:
                row = best.get((mixer, seq_len, pairs, d))
                cells.append("—" if row is None else f"{row['accuracy']:.3f} (lr {row['lr']:g}, {row['steps']} steps)")
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
    if skipped:
        lines += [f"Not run, another lr of the cell reached the target (skip_solved_lrs; {len(skipped)} runs): "
                  + ", ".join(skipped), ""]
    if missing:
        lines += [f"Not finished ({len(missing)} runs): " + ", ".join(missing), ""]
    return "\n".join(lines)


def plot_results(runs: list[dict], best: dict, path: Path, title: str) -> None:
    """Accuracy vs d_model, one panel per (seq_len, kv pairs), one line per mixer (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, mixers, d_models = _axes(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False, sharey=True)
    for ax, (seq_len, pairs) in zip(axes[0], tasks):
        for mixer in mixers:
            points = [(d, best[(mixer, seq_len, pairs, d)]["accuracy"]) for d in d_models
                      if (mixer, seq_len, pairs, d) in best]
            if points:
                ax.plot(*zip(*points), marker="o", label=mixer)
        ax.set_xscale("log", base=2)
        ax.set_xticks(d_models, [str(d) for d in d_models])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"seq_len {seq_len}, {pairs} kv pairs", fontsize=9)
        ax.set_xlabel("d_model")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
