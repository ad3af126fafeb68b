"""Layer tests use tiny shapes: one intra-op thread is as fast as two there, and avoids the
OpenMP spin-wait slowdown (20x measured for toy training) when other processes share the cores."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
