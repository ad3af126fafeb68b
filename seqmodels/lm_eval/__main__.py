"""`python -m seqmodels.lm_eval <lm-eval arguments>`: lm-eval's command line, unchanged (same
flags, same output), after `seqmodels.lm_eval.register()`."""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run lm-eval's command line on `argv` (default: this process's arguments)."""
    from seqmodels.lm_eval import register

    register()
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    saved = sys.argv
    sys.argv = ["lm-eval", *args]  # lm-eval's parser reads sys.argv (and inserts `run` for the legacy form)
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
