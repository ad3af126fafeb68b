"""Run recipes/pretrain.py in this process and SIGKILL it at a chosen point (for the slow tests).

    python kill_run.py after-step 7 <pretrain args...>    kill right after step 7 is logged
    python kill_run.py during-save 10 <pretrain args...>  kill half-way through writing checkpoint 10
"""
import importlib.util
import os
import signal
import sys
from pathlib import Path

import torch


def main() -> None:
    mode, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    spec = importlib.util.spec_from_file_location("pretrain", Path(__file__).resolve().parents[2] / "recipes" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    callbacks = []
    if mode == "after-step":
        callbacks.append(lambda trainer, step, loss: os.kill(os.getpid(), signal.SIGKILL) if step == at else None)
    elif mode == "during-save":
        original = torch.save

        def dying_save(obj, f, *args, **kwargs):
            if f".tmp-global_step{at}" in str(f):
                with open(f, "wb") as handle:
                    handle.write(b"\0" * 1000)  # a half-written file, then the kill
                    handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return original(obj, f, *args, **kwargs)

        torch.save = dying_save
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    pretrain.main(argv, callbacks=callbacks)


if __name__ == "__main__":
    main()
