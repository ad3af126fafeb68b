"""StepTally across ranks without processes: each rank's packet is built by the real `read`, and
the all-reduce is replaced by the elementwise sum of all ranks' packets (what gloo/NCCL give)."""
import math

import pytest
import torch

from seqmodels.train import step_tally
from seqmodels.train.distributed import DistInfo
from seqmodels.train.step_tally import StepTally

# losses[rank][micro]; float32 like a model's loss
LOSSES = [[2.5, 3.25], [1.1, float("nan")], [0.7, float("inf")]]
TOKENS = [16, 16, 12]


def tallies():
    out = []
    for rank, losses in enumerate(LOSSES):
        tally = StepTally("cpu", DistInfo(rank, len(LOSSES), rank))
        for loss in losses:
            tally.add(torch.tensor(loss, dtype=torch.float32), TOKENS[rank])
        out.append(tally)
    return out


def read_all(monkeypatch, tallies, grad_norm=None):
    packets = []
    monkeypatch.setattr(step_tally, "all_reduce_sum_", lambda t: packets.append(t.clone()) or t)
    for tally in tallies:
        tally.read()
    total = torch.stack(packets).sum(0)
    monkeypatch.setattr(step_tally, "all_reduce_sum_", lambda t: t.copy_(total))
    return [tally.read(grad_norm) for tally in tallies]


def test_nonfinite_flags_name_every_bad_rank_per_micro_batch(monkeypatch):
    readings = read_all(monkeypatch, tallies(), grad_norm=torch.tensor(0.5))
    for reading in readings:
        assert reading.nonfinite == [(1, [1, 2])]
        assert reading.tokens == sum(TOKENS) * 2
        assert reading.grad_norm == 0.5
        assert math.isnan(reading.loss)


def test_loss_is_the_mean_over_ranks_of_each_ranks_micro_batch_mean(monkeypatch):
    """Bit for bit what float() per micro-batch, a Python mean and a float64 sum over ranks gave."""
    finite = [StepTally("cpu", DistInfo(rank, 3, rank)) for rank in range(3)]
    values = [[0.1, 0.2, 0.7], [1 / 3, 2 / 3, 1.0], [3.0, 5e-8, 2.0]]
    for tally, losses in zip(finite, values):
        for loss in losses:
            tally.add(torch.tensor(loss, dtype=torch.float32), 4)
    readings = read_all(monkeypatch, finite)
    micro_floats = [[float(torch.tensor(v, dtype=torch.float32)) for v in losses] for losses in values]
    means = torch.tensor([sum(losses) / len(losses) for losses in micro_floats], dtype=torch.float64)
    expected = float(means.sum()) / 3
    assert [r.loss for r in readings] == [expected] * 3
    assert all(r.nonfinite == [] and r.grad_norm is None for r in readings)


def test_one_rank_reads_its_own_flags():
    tally = StepTally("cpu", DistInfo(0, 1, 0))
    tally.add(torch.tensor(1.5), 8)
    tally.add(torch.tensor(float("nan")), 8)
    reading = tally.read(torch.tensor(2.0))
    assert reading.nonfinite == [(1, [0])] and reading.tokens == 16 and reading.grad_norm == pytest.approx(2.0)
