"""Rank-0 run logging: TensorBoard scalars, a tqdm progress bar and metrics.jsonl.

TensorBoard gets train/{loss,ppl,lr,grad_norm,tokens_per_s,mem_gb} and eval/{loss,ppl} under the
run directory; metrics.jsonl gets one exact (float64) record per optimizer step and per eval,
for tests and scripts. On resume the TensorBoard writer purges events after the resumed step,
so a killed run's tail does not duplicate the curve. Other ranks get a no-op monitor.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

METRICS_FILE = "metrics.jsonl"


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 80.0))


class Monitor:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool, total_steps: int, start_step: int = 0,
                 progress: bool = True):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.metrics = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(run_dir), purge_step=start_step + 1 if start_step else None)
        self.metrics = open(run_dir / METRICS_FILE, "a")
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True)

    def _record(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def train_step(self, step: int, loss: float, lr: float, grad_norm: Optional[float], tokens_per_s: float,
                   mem_gb: float, write_scalars: bool) -> None:
        if not self.enabled:
            return
        self._record({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                      "mem_gb": mem_gb})
        if write_scalars:
            scalars = {"loss": loss, "ppl": perplexity(loss), "lr": lr, "tokens_per_s": tokens_per_s, "mem_gb": mem_gb}
            if grad_norm is not None:
                scalars["grad_norm"] = grad_norm
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")

    def eval(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        self._record({"step": step, "eval_loss": loss})
        self.writer.add_scalar("eval/loss", loss, step)
        self.writer.add_scalar("eval/ppl", perplexity(loss), step)
        self.bar.write(f"step {step}: eval loss {loss:.4f}  ppl {perplexity(loss):.2f}")

    def scalars(self, step: int, prefix: str, values: dict) -> None:
        """Extra scalars from a recipe (e.g. eval/accuracy): TensorBoard `prefix/name` and metrics.jsonl."""
        if not self.enabled:
            return
        self._record({"step": step, **{f"{prefix}_{name}": value for name, value in values.items()}})
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        if not self.enabled:
            return
        self.writer.flush()
        self.writer.close()
        self.bar.close()
        self.metrics.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of metrics.jsonl; a resumed run appends, later records of a step win."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
