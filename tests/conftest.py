"""Test-wide settings.

Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before any
@triton.jit function is defined, so it is set here, before test modules import the kernels.
Tests use tiny shapes, where one intra-op thread is as fast as two and avoids OpenMP spin-wait
slowdowns (measured 20x for toy training) when other processes share the cores.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)


def pytest_report_header(config):
    """The transformers the run imports (`make test-transformers4` puts a 4.x first on PYTHONPATH)."""
    import transformers

    return f"transformers {transformers.__version__} ({os.path.dirname(transformers.__file__)})"
