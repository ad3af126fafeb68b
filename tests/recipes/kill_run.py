"""Run a pretrain run (seqmodels.train.pretrain, what recipes/pretrain.py runs) in this process and
SIGKILL it at a chosen point (for the slow tests).

    python kill_run.py after-step 7 <pretrain args...>    kill right after step 7 is logged
    python kill_run.py during-save 10 <pretrain args...>  kill half-way through writing checkpoint 10
"""
import os
import signal
import sys

import torch

from seqmodels.train.pretrain import parse_args, pretrain


def main() -> None:
    mode, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
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
    pretrain(parse_args(argv), callbacks=callbacks)


if __name__ == "__main__":
    main()
