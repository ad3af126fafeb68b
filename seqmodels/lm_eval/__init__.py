"""lm-evaluation-harness integration: the `seqmodels` model type and offline tasks.

    python -m seqmodels.lm_eval --model seqmodels --model_args pretrained=runs/demo/hf \
        --tasks seqmodels_ppl,seqmodels_passkey_256,seqmodels_mqar --device cpu

`register()` makes lm-eval see what seqmodels provides, in this process: the Hugging Face
classes (model_type "seqmodels" for `--model hf`), the `--model seqmodels` LM (model.py) and
the task folder `TASKS_DIR` (tasks/*.yaml, data built by documents.py), searched in addition to
lm-eval's own tasks and any `--include_path`. `python -m seqmodels.lm_eval` registers, then runs
lm-eval's own command line with the given arguments (__main__.py). Needs the `eval` extra
(`pip install -e .[eval]`).
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def _with_seqmodels_tasks(task_manager_cls):
    """A TaskManager subclass whose include_path always starts with TASKS_DIR."""

    class SeqModelsTaskManager(task_manager_cls):
        def __init__(self, verbosity=None, include_path=None, *args, **kwargs):
            if include_path is None:
                extra = []
            elif isinstance(include_path, (list, tuple)):
                extra = list(include_path)
            else:
                extra = [include_path]
            super().__init__(verbosity, [TASKS_DIR, *extra], *args, **kwargs)

    SeqModelsTaskManager._seqmodels_tasks = True
    return SeqModelsTaskManager


def register() -> None:
    """Register the HF classes, the `seqmodels` LM and TASKS_DIR with lm-eval (idempotent).

    lm-eval's command line builds its task index with `lm_eval.tasks.TaskManager`, looked up
    when a command runs, so TASKS_DIR is added by replacing that name with a subclass that
    prepends it to include_path."""
    try:
        import lm_eval.tasks
    except ImportError as exc:
        raise ImportError(f"lm-eval is not installed ({exc}); install the eval extra: pip install -e '.[eval]'") from exc
    import seqmodels  # noqa: F401  (AutoConfig / AutoModelForCausalLM learn model_type "seqmodels")
    import seqmodels.lm_eval.model  # noqa: F401  (@register_model("seqmodels"))

    if not getattr(lm_eval.tasks.TaskManager, "_seqmodels_tasks", False):
        lm_eval.tasks.TaskManager = _with_seqmodels_tasks(lm_eval.tasks.TaskManager)
